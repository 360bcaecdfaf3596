"""The fused predictor as ONE scikit-learn estimator: imaging score + clinical variables -> LR.

``FusionModel`` holds the whole chain the paper describes (selected imaging features -> imaging
score = linear predictor of the imaging LR -> logistic fusion with age, sex, WHO grade and VASARI
score), so the object saved to the model registry is the object that serves, explains
(``contributions``: nomogram points) and stratifies (``risk_group``).

Why the fusion LR is fitted on OUT-OF-FOLD imaging scores. The imaging model chooses ~16 of
thousands of features on the training rows and fits its LR on them; its in-sample linear
predictor separates the training rows almost perfectly (training AUC ~1.0). A fusion LR fitted
on those in-sample scores learns that the imaging score alone explains everything: it gives it a
huge coefficient, ignores the clinical variables, and is badly over-confident on new patients.
So ``fit`` cross-fits: for each of ``cv`` stratified folds the whole imaging pipeline (scaling and
selection included) is refitted on the other folds and scores the held-out fold; the fusion LR
learns from these out-of-fold scores, which behave like the scores of unseen patients. The final
imaging pipeline is then refitted on all training rows and is the one that scores new patients.
Everything is fitted on the rows passed to ``fit`` only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from training.evaluation import Nomogram, youden_cutoff
from training.models import (
    CLINICAL_COLUMNS,
    INTERCEPT,
    coefficients,
    make_fusion_pipeline,
    make_imaging_pipeline,
    raw_coefficients,
)

__all__ = [
    "IMAGING_SCORE",
    "Columns",
    "CrossFit",
    "FusionModel",
    "clinical_values",
    "cross_fit",
    "encode_clinical",
]

IMAGING_SCORE = "imaging_score"
SEX_CODES: dict[str, int] = {"female": 0, "male": 1}

#: what a fitted model predicts from: a frame, or its columns as equal-length 1-D arrays (serving's
#: one-row request skips pandas, whose frame construction cost more than the model's arithmetic)
Columns = pd.DataFrame | Mapping[str, np.ndarray]


def _n_rows(X: Columns) -> int:
    if isinstance(X, pd.DataFrame):
        return len(X)
    return len(next(iter(X.values()))) if X else 0


def _float_column(X: Columns, name: str) -> np.ndarray:
    if isinstance(X, pd.DataFrame):
        return X[name].to_numpy(dtype=np.float64)
    return np.asarray(X[name], dtype=np.float64)


def _check_columns(X: object) -> None:
    if not isinstance(X, pd.DataFrame | Mapping):
        raise TypeError(f"FusionModel needs a pandas DataFrame or a mapping of columns, got "
                        f"{type(X).__name__}")


def encode_clinical(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The clinical ``columns`` as float64, with ``sex`` as 0 = female, 1 = male.

    Accepts ``sex`` already coded 0/1 or as the strings the clinical view stores, so the same
    model takes the training matrix and raw online features alike. Unknown values become NaN.
    """
    return pd.DataFrame(dict(zip(columns, clinical_values(frame, columns).T, strict=True)),
                        index=frame.index, columns=list(columns))


def clinical_values(frame: Columns, columns: Sequence[str]) -> np.ndarray:
    """:func:`encode_clinical` as a ``(rows, columns)`` float64 array (serving's per-request path)."""
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"the frame lacks clinical column(s) {missing}")
    out = np.empty((_n_rows(frame), len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        values = frame[name]  # a Series or an array: both have the dtype to_numeric needs
        if name == "sex" and not pd.api.types.is_numeric_dtype(values.dtype):
            out[:, j] = [SEX_CODES.get(v.strip().lower(), np.nan) if isinstance(v, str) else np.nan
                         for v in np.asarray(values)]
        else:
            out[:, j] = pd.to_numeric(values, errors="coerce")
    return out


def _binary_y(y: ArrayLike) -> np.ndarray:
    arr = np.asarray(y).ravel()
    if not np.isin(arr, (0, 1)).all():
        raise ValueError("y must be 0/1 (1 = ATRX mutant)")
    if np.unique(arr).size != 2:
        raise ValueError("y needs both classes (ATRX mutant and wild type)")
    return arr.astype(np.int64)


@dataclass
class CrossFit:
    """Out-of-fold linear predictors of an imaging pipeline on its training rows."""

    oof_scores: np.ndarray
    fold_aucs: list[float]
    folds: list[tuple[np.ndarray, np.ndarray]] = field(repr=False)
    fold_models: list[Pipeline] = field(repr=False)

    @property
    def mean_auc(self) -> float:
        return float(np.mean(self.fold_aucs))


def cross_fit(
    pipeline: Pipeline, X: pd.DataFrame, y: ArrayLike, folds: int = 5, random_state: int = 0
) -> CrossFit:
    """Refit a clone of ``pipeline`` per stratified fold; score each held-out fold.

    The fold AUCs are those of :func:`training.models.cv_auc` (same splitter and seed), and the
    out-of-fold scores are what the fusion LR is fitted on.
    """
    y01 = _binary_y(y)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    oof = np.full(y01.size, np.nan)
    aucs: list[float] = []
    splits: list[tuple[np.ndarray, np.ndarray]] = []
    models: list[Pipeline] = []
    for train, test in splitter.split(np.zeros(y01.size), y01):
        model = clone(pipeline).fit(X.iloc[train], y01[train])
        scores = np.asarray(model.decision_function(X.iloc[test]), dtype=np.float64)
        oof[test] = scores
        aucs.append(float(roc_auc_score(y01[test], scores)))
        splits.append((train, test))
        models.append(model)
    return CrossFit(oof, aucs, splits, models)


class FusionModel(ClassifierMixin, BaseEstimator):
    """Imaging pipeline + clinical variables fused by a logistic regression; one estimator.

    Parameters
    ----------
    imaging_pipeline: unfitted imaging pipeline ending in a ``LogisticRegression`` (default
        :func:`training.models.make_imaging_pipeline`); its linear predictor is the imaging score.
    fusion_pipeline: unfitted LR pipeline on ``imaging_score`` + ``clinical_columns`` (default
        :func:`training.models.make_fusion_pipeline`).
    imaging_features: the imaging columns the imaging pipeline is fitted on (all columns of its
        feature views); after fitting only ``selected_imaging_features_`` are needed.
    clinical_columns: clinical variables of the fusion LR.
    cutoff: probability cutoff of the high-risk group; ``None`` = Youden on the training rows'
        out-of-fold fused probabilities.
    cv, random_state: the cross-fitting folds (see the module docstring).

    Fitted attributes: ``imaging_pipeline_``, ``fusion_pipeline_``, ``selected_imaging_features_``,
    ``imaging_coef_`` / ``imaging_intercept_`` (imaging score per raw feature unit),
    ``imaging_cv_auc_``, ``cutoff_``, ``nomogram_``, ``classes_``, ``n_training_rows_``.
    """

    def __init__(
        self,
        imaging_pipeline: Pipeline | None = None,
        fusion_pipeline: Pipeline | None = None,
        imaging_features: Sequence[str] = (),
        clinical_columns: Sequence[str] = CLINICAL_COLUMNS,
        cutoff: float | None = None,
        cv: int = 5,
        random_state: int = 0,
    ) -> None:
        self.imaging_pipeline = imaging_pipeline
        self.fusion_pipeline = fusion_pipeline
        self.imaging_features = imaging_features
        self.clinical_columns = clinical_columns
        self.cutoff = cutoff
        self.cv = cv
        self.random_state = random_state

    # fitting -----------------------------------------------------------------------------------
    def _templates(self) -> tuple[Pipeline, Pipeline]:
        imaging = self.imaging_pipeline if self.imaging_pipeline is not None else make_imaging_pipeline()
        fusion = (
            self.fusion_pipeline
            if self.fusion_pipeline is not None
            else make_fusion_pipeline((IMAGING_SCORE, *self.clinical_columns))
        )
        return imaging, fusion

    def _imaging_frame(self, X: pd.DataFrame) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"FusionModel needs a pandas DataFrame, got {type(X).__name__}")
        features = list(self.imaging_features)
        if not features:
            raise ValueError("imaging_features is empty; name the imaging columns to fit on")
        missing = [c for c in features if c not in X.columns]
        if missing:
            raise ValueError(f"X lacks {len(missing)} imaging feature(s), e.g. {missing[:3]}")
        return X[features]

    def fit(self, X: pd.DataFrame, y: ArrayLike) -> FusionModel:
        """Cross-fit the imaging pipeline, refit it on all rows, fit the fusion LR (see module doc)."""
        imaging, _ = self._templates()
        Xi = self._imaging_frame(X)
        crossed = cross_fit(imaging, Xi, y, folds=self.cv, random_state=self.random_state)
        final = clone(imaging).fit(Xi, _binary_y(y))
        return self.fit_from_cross_fit(X, y, crossed, final)

    def fit_from_cross_fit(
        self, X: pd.DataFrame, y: ArrayLike, crossed: CrossFit, imaging_fitted: Pipeline
    ) -> FusionModel:
        """Fit the fusion stage from an imaging cross-fit already computed on the same rows.

        ``fit`` is ``cross_fit`` + refit on all rows + this; the protocol cross-fits all nine
        imaging models to rank them and reuses the winner's work here instead of fitting it twice.
        ``imaging_fitted`` must be ``imaging_pipeline`` fitted on exactly ``X``'s rows.
        """
        y01 = _binary_y(y)
        Xi = self._imaging_frame(X)
        if crossed.oof_scores.shape != (len(X),) or np.isnan(crossed.oof_scores).any():
            raise ValueError("crossed.oof_scores must hold one out-of-fold score per row of X")
        fitted_on = list(getattr(imaging_fitted, "feature_names_in_", []))
        if fitted_on != list(Xi.columns):
            raise ValueError("imaging_fitted was not fitted on this model's imaging_features")
        _, fusion = self._templates()

        raw = raw_coefficients(imaging_fitted)
        self.imaging_intercept_ = float(raw.pop(INTERCEPT))
        self.imaging_coef_ = pd.Series(raw, dtype=np.float64)
        self.selected_imaging_features_ = list(raw)
        self.imaging_pipeline_ = imaging_fitted
        self.imaging_cv_auc_ = list(crossed.fold_aucs)

        design = self._design(X, crossed.oof_scores)
        self.__dict__.pop("_linear_cache", None)
        self.fusion_pipeline_ = clone(fusion).fit(design, y01)
        self.classes_ = np.array([0, 1])
        train_prob = self.fusion_pipeline_.predict_proba(design)[:, 1]
        if self.cutoff is None:
            self.cutoff_ = float(youden_cutoff(y01, train_prob))
        else:
            cutoff = float(self.cutoff)
            if not 0.0 < cutoff < 1.0:
                raise ValueError(f"cutoff must be a probability in (0, 1); got {self.cutoff!r}")
            self.cutoff_ = cutoff
        self.nomogram_ = self._nomogram(design)
        self.n_training_rows_ = int(len(X))
        return self

    def _design(self, X: pd.DataFrame, imaging_score: ArrayLike) -> pd.DataFrame:
        columns = [IMAGING_SCORE, *self.clinical_columns]
        return pd.DataFrame(self._design_values(X, imaging_score), index=X.index, columns=columns)

    def _design_values(self, X: Columns, imaging_score: ArrayLike) -> np.ndarray:
        """``[imaging_score, *clinical_columns]`` per row, float64."""
        clinical = clinical_values(X, list(self.clinical_columns))
        bad = [c for c, nan in zip(self.clinical_columns, np.isnan(clinical).any(axis=0), strict=True) if nan]
        if bad:
            raise ValueError(f"clinical column(s) {bad} have missing or unknown values")
        score = np.asarray(imaging_score, dtype=np.float64).ravel()
        if score.size != _n_rows(X):
            raise ValueError(f"imaging_score has {score.size} values for {_n_rows(X)} rows")
        return np.column_stack([score, clinical])

    def _linear(self) -> tuple[np.ndarray, float] | None:
        """The fitted fusion LR per raw unit of ``[imaging_score, *clinical_columns]``.

        Why: a request scores one row, and the ColumnTransformer + scaler + LR of
        ``fusion_pipeline_`` on a one-row DataFrame cost more than the online lookup; the same
        linear predictor in numpy agrees with it to rounding (tests hold 1e-12). None when the
        pipeline is not a scaled LR on exactly those columns (then the pipeline scores).
        """
        if "_linear_cache" not in self.__dict__:
            try:
                raw = raw_coefficients(self.fusion_pipeline_)
                names = [IMAGING_SCORE, *self.clinical_columns]
                linear = (np.array([raw[n] for n in names], dtype=np.float64), float(raw[INTERCEPT]))
                if len(raw) != len(names) + 1:
                    linear = None
            except (TypeError, ValueError, KeyError, AttributeError):
                linear = None
            self.__dict__["_linear_cache"] = linear
        return self.__dict__["_linear_cache"]

    def _fused(self, design: np.ndarray) -> np.ndarray:
        linear = self._linear()
        if linear is None:
            columns = [IMAGING_SCORE, *self.clinical_columns]
            return np.asarray(self.fusion_pipeline_.decision_function(
                pd.DataFrame(design, columns=columns)), dtype=np.float64)
        coef, intercept = linear
        return design @ coef + intercept

    def _nomogram(self, design: pd.DataFrame) -> Nomogram:
        coefs = raw_coefficients(self.fusion_pipeline_)
        intercept = coefs.pop(INTERCEPT)
        ranges = {}
        for name in coefs:
            lo, hi = float(design[name].min()), float(design[name].max())
            if not hi > lo:  # a constant training column: give the axis some width
                lo, hi = lo - 0.5, hi + 0.5
            ranges[name] = (lo, hi)
        return Nomogram.from_logistic(coefs, intercept, ranges)

    # prediction --------------------------------------------------------------------------------
    @property
    def required_features(self) -> list[str]:
        """Exact feature names serving must look up: the selected imaging features, then clinical."""
        check_is_fitted(self, "imaging_coef_")
        return [*self.selected_imaging_features_, *self.clinical_columns]

    def imaging_score(self, X: Columns) -> np.ndarray:
        """The imaging score (log-odds of the imaging LR) from the selected features only.

        Equal to ``imaging_pipeline_.decision_function`` on the full feature frame: the scaling is
        folded into ``imaging_coef_`` so serving needs ~16 features, not every view column.
        """
        check_is_fitted(self, "imaging_coef_")
        _check_columns(X)
        names = self.selected_imaging_features_
        missing = [c for c in names if c not in X]
        if missing:
            raise ValueError(f"X lacks selected imaging feature(s) {missing[:5]}")
        # column by column: ``X[names]`` builds a frame first, 10x the cost on a one-row request
        values = np.column_stack([_float_column(X, c) for c in names]) if names \
            else np.empty((_n_rows(X), 0))
        if np.isnan(values).any():
            bad = [n for n, col in zip(names, np.isnan(values).any(axis=0), strict=True) if col]
            raise ValueError(f"imaging feature(s) {bad[:5]} have missing values")
        return values @ self.imaging_coef_.to_numpy() + self.imaging_intercept_

    def decision_function(self, X: pd.DataFrame, imaging_score: ArrayLike | None = None) -> np.ndarray:
        """Linear predictor (log-odds of ATRX mutation) of the fusion LR."""
        check_is_fitted(self, "fusion_pipeline_")
        score = self.imaging_score(X) if imaging_score is None else imaging_score
        return self._fused(self._design_values(X, score))

    def predict_proba(self, X: pd.DataFrame, imaging_score: ArrayLike | None = None) -> np.ndarray:
        """``(n, 2)`` probabilities of wild type and ATRX mutant.

        ``imaging_score`` overrides the computed score (the protocol passes the out-of-fold scores
        of the training rows to report honest training metrics).
        """
        p = expit(self.decision_function(X, imaging_score))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """1 (ATRX mutant, high risk) where the probability reaches ``cutoff_``, else 0."""
        return (self.predict_proba(X)[:, 1] >= self.cutoff_).astype(np.int64)

    def risk_group(self, prob: ArrayLike) -> np.ndarray:
        """``"high"`` where ``prob >= cutoff_``, else ``"low"``."""
        check_is_fitted(self, "cutoff_")
        p = np.asarray(prob, dtype=np.float64)
        return np.where(p >= self.cutoff_, "high", "low")

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Nomogram points per variable, total points, linear predictor and probability per row."""
        check_is_fitted(self, "nomogram_")
        return pd.DataFrame(self._points(self._design_values(X, self.imaging_score(X))),
                            index=X.index)

    def explain(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """``(probability of mutant, imaging score, contributions)`` per row from ONE design matrix.

        Equal to ``predict_proba(X)[:, 1]``, ``imaging_score(X)`` and ``contributions(X)`` (same
        arithmetic, bit for bit), at a third of their cost.
        """
        prob, score, points = self.explain_columns(X)
        return prob, score, pd.DataFrame(points, index=X.index)

    def explain_columns(self, X: Columns) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """:meth:`explain` with the contributions as one array per column, from a frame or from
        columns: what serving answers per request, with no pandas object built."""
        check_is_fitted(self, "nomogram_")
        score = self.imaging_score(X)
        design = self._design_values(X, score)
        prob = expit(self._fused(design))
        return prob, score, self._points(design)

    def _points(self, design: np.ndarray) -> dict[str, np.ndarray]:
        nomo = self.nomogram_
        position = {n: i for i, n in enumerate([IMAGING_SCORE, *self.clinical_columns])}
        names = list(nomo.coefs)
        points = {name: nomo.variable_points(name, design[:, position[name]]) for name in names}
        total = np.sum([points[n] for n in names], axis=0)
        lp = nomo.linear_predictor(total)
        return {**points, "total_points": total, "linear_predictor": lp, "probability": expit(lp)}

    # description -------------------------------------------------------------------------------
    def describe(self) -> dict[str, object]:
        """Plain-data summary (JSON-ready) for the registry metadata and the run's metrics."""
        check_is_fitted(self, "fusion_pipeline_")
        fusion_raw = raw_coefficients(self.fusion_pipeline_)
        return {
            "required_features": self.required_features,
            "imaging_score": {
                "features": self.selected_imaging_features_,
                "coefficients": {k: _clean(v) for k, v in self.imaging_coef_.items()},
                "intercept": _clean(self.imaging_intercept_),
                "standardised_coefficients": {
                    k: _clean(v) for k, v in coefficients(self.imaging_pipeline_).items()
                },
            },
            "fusion": {
                "coefficients": {k: _clean(v) for k, v in fusion_raw.items()},
                "standardised_coefficients": {
                    k: _clean(v) for k, v in coefficients(self.fusion_pipeline_).items()
                },
            },
            "cutoff": _clean(self.cutoff_),
            "cutoff_policy": "youden" if self.cutoff is None else "fixed",
            "imaging_cv_auc": [_clean(a) for a in self.imaging_cv_auc_],
            "n_training_rows": self.n_training_rows_,
        }


def _clean(value: float) -> float | None:
    x = float(value)
    return x if math.isfinite(x) else None
