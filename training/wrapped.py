"""A fitted fusion model behind a transform of its input: the shape of every registered model
that serving feeds raw online features (ComBat harmonisation, reference-tissue normalisation).

Subclasses give ``_transformed(X)``; every prediction method applies it and hands the result to
the wrapped ``model``, and the attributes serving, promotion and the report read pass through.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

__all__ = ["TransformedModel"]


class TransformedModel(ABC, BaseEstimator):
    """``_transformed`` then ``self.model`` (a :class:`training.fusion.FusionModel` or another
    TransformedModel)."""

    model: Any

    @abstractmethod
    def _transformed(self, X: pd.DataFrame) -> pd.DataFrame:
        """The frame ``self.model`` predicts from (raw online features in, the run's transform applied)."""

    # what serving, promotion and the report use ----------------------------------------------
    @property
    def required_features(self) -> list[str]:
        return list(self.model.required_features)

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
        return self.model.imaging_score(self._transformed(X))

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.decision_function(self._transformed(X))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(self._transformed(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict(self._transformed(X))

    def risk_group(self, prob: Any) -> np.ndarray:
        return self.model.risk_group(prob)

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.model.contributions(self._transformed(X))

    def explain(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        return self.model.explain(self._transformed(X))

    def describe(self) -> dict[str, object]:
        return self.model.describe()
