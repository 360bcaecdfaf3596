"""A fusion model trained on harmonised features, fed raw features: what is registered and served.

The protocol fits on ComBat-harmonised columns (:mod:`training.harmonise`); the registry, the
promotion check and serving hold raw feature values. :class:`HarmonisedModel` applies exactly the
training run's transform (the estimates of the model's own features, per center) before the
fitted :class:`training.fusion.FusionModel`, so an online prediction equals the in-process one.

A row's center is its ``center`` column, else the center of its ``patient_id`` pseudonym; a row
without either is an error, as is a center without estimates (:class:`UnknownCenter`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from atrx.errors import InputError
from atrx.pseudonym import Pseudonym
from training.fusion import FusionModel
from training.harmonise import Harmoniser

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


class HarmonisedModel(BaseEstimator):
    """``harmoniser`` then ``model`` (see the module docstring); the registry's estimator."""

    needs_center = True

    def __init__(self, model: FusionModel, harmoniser: Harmoniser) -> None:
        self.model = model
        self.harmoniser = harmoniser

    def _harmonised(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.harmoniser.transform(X, centers_of(X))

    # what serving, promotion and the report use ----------------------------------------------
    @property
    def required_features(self) -> list[str]:
        return self.model.required_features

    @property
    def cutoff_(self) -> float:
        return self.model.cutoff_

    @property
    def nomogram_(self) -> Any:
        return self.model.nomogram_

    @property
    def clinical_columns(self) -> Any:
        return self.model.clinical_columns

    @property
    def selected_imaging_features_(self) -> list[str]:
        return self.model.selected_imaging_features_

    def imaging_score(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.imaging_score(self._harmonised(X))

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.decision_function(self._harmonised(X))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(self._harmonised(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict(self._harmonised(X))

    def risk_group(self, prob: Any) -> np.ndarray:
        return self.model.risk_group(prob)

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.model.contributions(self._harmonised(X))

    def explain(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        return self.model.explain(self._harmonised(X))

    def describe(self) -> dict[str, object]:
        return {**self.model.describe(), "harmonisation": self.harmoniser.describe()}
