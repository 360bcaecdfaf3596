"""Model factories of the Liu et al. 2024 protocol and helpers to read fitted models.

Every model is one scikit-learn ``Pipeline`` whose scaling and feature selection sit inside it, so
``fit`` on training rows learns everything from those rows only, and cross-validation refits the
whole chain per fold.

Expected columns of the clinical and fusion models (numeric, encoded by the caller):

- ``age``: years at diagnosis;
- ``sex``: 0 = female, 1 = male;
- ``who_grade``: 3 or 4 (CNS WHO grade of the IDH-mutant astrocytoma);
- ``vasari_score``: the VASARI-derived score used by the paper;
- ``imaging_score`` (fusion only): the linear predictor of the best imaging model, see
  :func:`imaging_score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from training.selection import BackwardAICSelector, LassoCVSelector, TTestSelector

__all__ = [
    "CLINICAL_COLUMNS",
    "FUSION_COLUMNS",
    "coefficients",
    "cv_auc",
    "imaging_score",
    "make_clinical_pipeline",
    "make_fusion_pipeline",
    "make_imaging_pipeline",
    "raw_coefficients",
    "selected_features",
]

Classifier = Literal["lr", "rf", "svm"]

CLINICAL_COLUMNS: tuple[str, ...] = ("age", "sex", "who_grade", "vasari_score")
FUSION_COLUMNS: tuple[str, ...] = ("imaging_score", *CLINICAL_COLUMNS)
INTERCEPT = "intercept"

# Clinical and fusion LRs (4-5 variables, ~150 rows) are well posed: a weak L2 penalty only keeps
# lbfgs finite should a column separate the classes, without shrinking their coefficients.
_LR_C = 1e4
# The imaging LR sits on up to 19 AIC-selected features: on ~120-row CV folds its classes are often
# (quasi-)separated, where an unpenalised fit has no MLE and its scores reach +-100 in one fold and
# +-10 in the next. The imaging score must keep one scale across folds and the final fit, since the
# fusion LR learns its weight on the out-of-fold scores; sklearn's default C=1 on z-scores does that.
IMAGING_LR_C = 1.0


def _logistic(C: float = _LR_C) -> LogisticRegression:
    return LogisticRegression(C=C, max_iter=10_000)


def make_imaging_pipeline(
    classifier: Classifier = "lr",
    random_state: int = 0,
    *,
    alpha: float = 0.05,
    lasso_cv: int = 10,
    lasso_Cs: int | Sequence[float] = 20,
    lasso_min_ratio: float | None = None,
    max_features: int = 19,
    lr_c: float = IMAGING_LR_C,
) -> Pipeline:
    """StandardScaler -> Welch t-test -> LASSO (CV AUC) -> backward AIC -> classifier.

    ``classifier``: ``"lr"`` (logistic regression, L2 strength ``lr_c`` on the z-scored
    selected features; see ``IMAGING_LR_C``), ``"rf"`` (random forest,
    500 trees) or ``"svm"`` (RBF SVC with Platt-scaled probabilities: scikit-learn 1.9 deprecates
    ``SVC(probability=True)``, and ``CalibratedClassifierCV(SVC(), ensemble=False)`` with 5-fold
    sigmoid calibration is its documented equivalent). Step names: ``scale``, ``ttest``,
    ``lasso``, ``aic``, ``clf``.
    """
    if classifier == "lr":
        clf = _logistic(lr_c)
    elif classifier == "rf":
        clf = RandomForestClassifier(n_estimators=500, random_state=random_state)
    elif classifier == "svm":
        clf = CalibratedClassifierCV(SVC(kernel="rbf"), method="sigmoid", cv=5, ensemble=False)
    else:
        raise ValueError(
            f"The 'classifier' parameter of make_imaging_pipeline must be a str among "
            f"{{'lr', 'rf', 'svm'}}. Got {classifier!r} instead."
        )
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("ttest", TTestSelector(alpha=alpha)),
            ("lasso", LassoCVSelector(
                cv=lasso_cv, Cs=lasso_Cs, random_state=random_state,
                lambda_min_ratio=lasso_min_ratio,
            )),
            ("aic", BackwardAICSelector(max_features=max_features)),
            ("clf", clf),
        ]
    )


def _columns_pipeline(columns: Sequence[str]) -> Pipeline:
    if isinstance(columns, str) or len(columns) == 0:
        raise ValueError(f"columns must be a non-empty sequence of column names; got {columns!r}.")
    select = ColumnTransformer(
        [("scale", StandardScaler(), list(columns))],
        remainder="drop",
        verbose_feature_names_out=False,
    )
    return Pipeline([("columns", select), ("clf", _logistic())])


def make_clinical_pipeline(columns: Sequence[str] = CLINICAL_COLUMNS) -> Pipeline:
    """Logistic regression on the clinical columns (see the module docstring), scaled inside.

    Fit and predict with a DataFrame that holds at least ``columns``; other columns are ignored.
    """
    return _columns_pipeline(columns)


def make_fusion_pipeline(columns: Sequence[str] = FUSION_COLUMNS) -> Pipeline:
    """Logistic regression on the imaging score plus the clinical columns, scaled inside.

    The ``imaging_score`` column should come from an imaging model fitted on the same training
    rows; scores of the training rows are then in-sample (as in the paper), which favours the
    imaging term; out-of-fold scores are the stricter choice.
    """
    return _columns_pipeline(columns)


def _final_logistic(pipeline: Pipeline) -> LogisticRegression:
    clf = pipeline[-1]
    if not isinstance(clf, LogisticRegression):
        raise TypeError(
            f"expected a pipeline ending in LogisticRegression; got {type(clf).__name__}. "
            "The imaging score and coefficients exist for the logistic model only."
        )
    if not hasattr(clf, "coef_"):
        raise ValueError("the pipeline is not fitted yet; call fit first.")
    return clf


def imaging_score(pipeline: Pipeline, X: ArrayLike) -> np.ndarray:
    """Linear predictor (log-odds of ATRX mutation) of a fitted logistic imaging pipeline."""
    _final_logistic(pipeline)
    return np.asarray(pipeline.decision_function(X), dtype=np.float64)


def selected_features(pipeline: Pipeline) -> list[str]:
    """Names of the columns that reach the final classifier of a fitted pipeline.

    Names are the input column names when the pipeline was fitted on a DataFrame, ``x0, x1, ...``
    otherwise.
    """
    return [str(name) for name in pipeline[:-1].get_feature_names_out()]


def coefficients(pipeline: Pipeline) -> dict[str, float]:
    """Coefficients of the final logistic regression per selected feature, plus ``intercept``.

    They are on the standardised scale (per SD of the training rows), as the scaler sits inside.
    """
    clf = _final_logistic(pipeline)
    out = {
        name: float(c)
        for name, c in zip(selected_features(pipeline), clf.coef_.ravel(), strict=True)
    }
    out[INTERCEPT] = float(clf.intercept_[0])
    return out


def _scaler_of(pipeline: Pipeline) -> tuple[StandardScaler, list[str]]:
    first = pipeline[0]
    if isinstance(first, StandardScaler):
        return first, [str(n) for n in first.get_feature_names_out()]
    if isinstance(first, ColumnTransformer) and "scale" in first.named_transformers_:
        scaler = first.named_transformers_["scale"]
        return scaler, [str(n) for n in scaler.get_feature_names_out()]
    raise TypeError(
        "expected a pipeline from make_imaging/clinical/fusion_pipeline with a StandardScaler first."
    )


def raw_coefficients(pipeline: Pipeline) -> dict[str, float]:
    """Coefficients of a fitted logistic pipeline per unit of the raw input columns, plus ``intercept``.

    This undoes the pipeline's scaling (``b_raw = b / sd``, intercept shifted by ``sum(b * mean / sd)``)
    so that a nomogram can be drawn on the original units (years, grade, score).
    """
    std = coefficients(pipeline)
    scaler, names = _scaler_of(pipeline)
    index = {name: i for i, name in enumerate(names)}
    out: dict[str, float] = {}
    intercept = std.pop(INTERCEPT)
    for name, b in std.items():
        i = index[name]
        out[name] = b / float(scaler.scale_[i])
        intercept -= b * float(scaler.mean_[i]) / float(scaler.scale_[i])
    out[INTERCEPT] = float(intercept)
    return out


def _positive_scores(model: Pipeline, X: ArrayLike) -> np.ndarray:
    if hasattr(model, "decision_function"):
        return np.asarray(model.decision_function(X), dtype=np.float64)
    return np.asarray(model.predict_proba(X), dtype=np.float64)[:, 1]


def _take(data: ArrayLike, idx: np.ndarray) -> ArrayLike:
    return data.iloc[idx] if hasattr(data, "iloc") else np.asarray(data)[idx]


def cv_auc(
    pipeline: Pipeline, X: ArrayLike, y: ArrayLike, folds: int = 5, random_state: int = 0
) -> tuple[float, list[float]]:
    """Stratified k-fold AUC of ``pipeline``; each fold refits a clone of the whole pipeline.

    Returns ``(mean AUC, per-fold AUCs)``. Because scaling and selection are pipeline steps, no
    statistic of a held-out fold reaches the model fitted for it.
    """
    y_arr = np.asarray(y).ravel()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    aucs: list[float] = []
    for train, test in splitter.split(np.zeros(y_arr.size), y_arr):
        model = clone(pipeline).fit(_take(X, train), y_arr[train])
        aucs.append(float(roc_auc_score(y_arr[test], _positive_scores(model, _take(X, test)))))
    return float(np.mean(aucs)), aucs
