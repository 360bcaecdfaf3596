"""A fusion model trained on harmonised features, fed raw features: what is registered and served.

The protocol fits on ComBat-harmonised columns (:mod:`training.harmonise`); the registry, the
promotion check and serving hold raw feature values. :class:`HarmonisedModel` applies exactly the
training run's transform (the estimates of the model's own features, per center) before the
fitted :class:`training.fusion.FusionModel`, so an online prediction equals the in-process one.

A row's center is its ``center`` column, else the center of its ``patient_id`` pseudonym; a row
without either is an error, as is a center without estimates (:class:`UnknownCenter`).
"""

from __future__ import annotations

import pandas as pd

from atrx.errors import InputError
from atrx.pseudonym import Pseudonym
from training.fusion import FusionModel
from training.harmonise import Harmoniser
from training.wrapped import TransformedModel

__all__ = ["HarmonisedModel", "centers_of"]


def centers_of(X: pd.DataFrame) -> list[str]:
    """Each row's center: its ``center`` column, else its ``patient_id``'s pseudonym center."""
    if "center" in X.columns:
        return X["center"].astype(str).tolist()
    if "patient_id" in X.columns:
        return [Pseudonym.parse(str(p)).center for p in X["patient_id"]]
    raise InputError(
        "this model harmonises features per center, and the rows carry neither a 'center' nor a "
        "'patient_id' column",
        fix="pass the patient id (its pseudonym names the center) or a 'center' column",
    )


class HarmonisedModel(TransformedModel):
    """``harmoniser`` then ``model`` (see the module docstring); the registry's estimator."""

    needs_center = True

    def __init__(self, model: FusionModel, harmoniser: Harmoniser) -> None:
        self.model = model
        self.harmoniser = harmoniser

    def _transformed(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.harmoniser.transform(X, centers_of(X))

    def describe(self) -> dict[str, object]:
        return {**self.model.describe(), "harmonisation": self.harmoniser.describe()}
