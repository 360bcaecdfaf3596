"""The first-order baseline: z-score + L2 logistic regression on the original-image first-order
statistics of a few radiomics views, with no feature selection (not in the paper).

Why. On a new center, a plain LR on first-order statistics beat the protocol's best imaging model
and its fusion by 0.2 AUC (issue 12), and nothing in the paper's tables would have shown it.
Fitted beside the paper's models on the same training rows and scored on the same sets (Tables
2-3, DeLong, random and leave-one-center-out CV), it tells a user at once when the selection
chain underperforms a model that has nothing to overfit but ~18 features per view.

The study file's ``baseline`` section sets it: ``views`` (radiomics views), ``lr_c`` (L2 strength
on the z-scores), ``enabled``. Its columns are the views' ``original_firstorder`` features, whose
canonical names contain ``__original__firstorder__`` (:func:`atrx.names.radiomics_feature_name`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from training.fusion import CrossFit, cross_fit
from training.models import coefficients
from training.ranking import CrossValidated, LocoFit, loco_fit
from training.study import StudyConfig

__all__ = [
    "BASELINE",
    "FIRSTORDER",
    "BaselineResult",
    "baseline_problem",
    "firstorder_columns",
    "fit_baseline",
    "make_baseline_pipeline",
]

BASELINE = "First-order baseline"
#: the part of a canonical radiomics name that marks an original-image first-order feature
FIRSTORDER = "__original__firstorder__"


def firstorder_columns(columns: Iterable[str], views: Sequence[str]) -> list[str]:
    """The original-image first-order columns of ``views``, view by view in ``views``' order."""
    cols = list(columns)
    return [c for v in views for c in cols if c.startswith(f"{v}{FIRSTORDER}")]


def baseline_problem(columns: Iterable[str], study: StudyConfig) -> str | None:
    """Why the study's baseline cannot be fitted on a frame with ``columns`` (None: it can)."""
    if not study.baseline.enabled:
        return "disabled in the study file (baseline.enabled: false)"
    cols = list(columns)
    missing = [v for v in study.baseline.views if not firstorder_columns(cols, [v])]
    if missing:
        return (f"the training frame has no original_firstorder features of {missing} (views not "
                "registered with Feast, or computed without the original image type); register "
                "them with `atrx features`, or set baseline.views / baseline.enabled: false")
    return None


def make_baseline_pipeline(lr_c: float = 1.0) -> Pipeline:
    """StandardScaler -> L2 LogisticRegression(C=``lr_c``); step names ``scale``, ``clf``."""
    return Pipeline(
        [("scale", StandardScaler()), ("clf", LogisticRegression(C=lr_c, max_iter=10_000))]
    )


@dataclass
class BaselineResult(CrossValidated):
    """The fitted baseline: its columns, random and LOCO cross-fits, and its final fit."""

    views: list[str]
    columns: list[str]
    lr_c: float
    cross: CrossFit = field(repr=False)
    final: Pipeline = field(repr=False)
    loco: LocoFit | None = field(default=None, repr=False)
    seconds: float = 0.0
    label: str = BASELINE

    def summary(self) -> dict[str, Any]:
        return {
            "fitted": True,
            "label": self.label,
            "views": list(self.views),
            "n_features": len(self.columns),
            "features": list(self.columns),
            "lr_c": self.lr_c,
            "coefficients": coefficients(self.final),
            **self.cv_summary(),
            "seconds": round(self.seconds, 2),
        }


def fit_baseline(
    train: pd.DataFrame,
    y: ArrayLike,
    study: StudyConfig,
    groups: ArrayLike | None = None,
) -> BaselineResult:
    """Fit the baseline on the training rows ``train`` only: random CV with the study's folds and
    seed (the same folds as the imaging models), LOCO CV when ``groups`` (each row's center) is
    given, and the final fit on all of ``train``."""
    t0 = time.perf_counter()
    cfg = study.baseline
    cols = firstorder_columns(train.columns, cfg.views)
    if not cols:
        raise ValueError(f"no original_firstorder columns of {cfg.views} in the training rows")
    template = make_baseline_pipeline(cfg.lr_c)
    y01 = np.asarray(y).ravel().astype(np.int64)
    X = train[cols]
    crossed = cross_fit(template, X, y01, folds=study.imaging.cv_folds,
                        random_state=study.seeds.cv)
    loco = loco_fit(template, X, y01, groups) if groups is not None else None
    final = clone(template).fit(X, y01)
    return BaselineResult(list(cfg.views), cols, cfg.lr_c, crossed, final, loco,
                          time.perf_counter() - t0)
