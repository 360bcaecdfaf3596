"""Which imaging model wins: leave-one-center-out (LOCO) or random k-fold CV on the training rows.

Why LOCO (not in the paper). The paper ranks its imaging models by stratified 5-fold CV AUC on
the training rows, whose folds mix the development centers: a model that has learnt one center's
scanner scores well on rows of that same center and then fails on a new one (issue 12: CV AUC
0.875, 0.601 on a new center). Holding out one development center at a time scores each model
as it will be used, on a center that none of its fitted statistics (z-score, selection, LR) has
seen. The LOCO AUC is the mean of the per-center AUCs (each center ranks its own patients); the
pooled out-of-fold AUC is kept beside it.

``imaging.ranking: auto`` ranks by LOCO when the training rows span two or more centers, else by
random CV; ``random`` / ``loco`` force one. Both are computed whenever they can be, and
:class:`RankingChoice` records which one ranked and why, for ``metrics.json`` and the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import LeaveOneGroupOut
from sklearn.pipeline import Pipeline

from atrx.errors import InputError
from training.fusion import CrossFit
from training.models import coefficients, selected_features
from training.study import ImagingModelSpec

__all__ = [
    "CENTER",
    "LOCO",
    "RANDOM",
    "CrossValidated",
    "ImagingModelResult",
    "LocoFit",
    "RankingChoice",
    "choose_ranking",
    "compare_classifiers",
    "loco_fit",
    "loco_problem",
    "pick_best",
]

CENTER = "center"
RANDOM, LOCO = "random", "loco"


def _auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """AUC, or None when the rows hold one class only (a center can be all mutant)."""
    if np.unique(y).size < 2:
        return None
    return float(roc_auc_score(y, scores))


def _fit_compared(clf: Any, X: Any, y: np.ndarray) -> Any | None:
    """``clf`` fitted on (X, y), or None when it cannot be: a calibrated SVM gets as many
    calibration folds as its rarer class has rows (at most its own, 5), and none below 2."""
    if isinstance(clf, CalibratedClassifierCV) and isinstance(clf.cv, int):
        _, counts = np.unique(y, return_counts=True)
        rarer = int(counts.min()) if counts.size == 2 else 0
        if rarer < 2:
            return None
        clf.set_params(cv=min(clf.cv, rarer))
    return clf.fit(X, y)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _scores(model: Any, X: Any, proba_first: bool = False) -> np.ndarray:
    """Scores for an AUC: the linear predictor (what the fusion uses) or, with ``proba_first``
    (the compared classifiers: RF has no decision function), P(mutant)."""
    if hasattr(model, "predict_proba") and (proba_first or not hasattr(model, "decision_function")):
        return np.asarray(model.predict_proba(X), dtype=np.float64)[:, 1]
    return np.asarray(model.decision_function(X), dtype=np.float64)


@dataclass
class LocoFit:
    """Leave-one-center-out predictions of a pipeline on its training rows.

    ``folds[i]`` = (rows of every other center, rows of ``centers[i]``); ``fold_models[i]`` was
    fitted on the first part only.
    """

    centers: list[str]
    center_aucs: dict[str, float | None]
    pooled_auc: float | None
    oof_scores: np.ndarray = field(repr=False)
    folds: list[tuple[np.ndarray, np.ndarray]] = field(repr=False)
    fold_models: list[Pipeline] = field(repr=False)

    @property
    def mean_auc(self) -> float | None:
        """Mean per-center AUC over the centers that hold both classes."""
        aucs = [a for a in self.center_aucs.values() if a is not None]
        return float(np.mean(aucs)) if aucs else None

    def summary(self) -> dict[str, Any]:
        return {
            "loco_auc_mean": self.mean_auc,
            "loco_auc_pooled": self.pooled_auc,
            "loco_auc_centers": dict(self.center_aucs),
        }


def loco_fit(pipeline: Pipeline, X: pd.DataFrame, y: ArrayLike, groups: ArrayLike) -> LocoFit:
    """Refit a clone of ``pipeline`` once per center on the other centers' rows; score the center.

    ``groups`` is each row's center. Everything a fold model learns (scaling, selection,
    coefficients) comes from the other centers, so a held-out center is a new center to it.
    """
    y01 = np.asarray(y).ravel().astype(np.int64)
    g = np.asarray(groups).astype(str)
    oof = np.full(y01.size, np.nan)
    centers: list[str] = []
    aucs: dict[str, float | None] = {}
    folds: list[tuple[np.ndarray, np.ndarray]] = []
    models: list[Pipeline] = []
    for train, test in LeaveOneGroupOut().split(np.zeros(y01.size), y01, g):
        center = str(g[test[0]])
        model = clone(pipeline).fit(X.iloc[train], y01[train])
        oof[test] = _scores(model, X.iloc[test])
        centers.append(center)
        aucs[center] = _auc(y01[test], oof[test])
        folds.append((train, test))
        models.append(model)
    return LocoFit(centers, aucs, _auc(y01, oof), oof, folds, models)


def loco_problem(groups: ArrayLike, y: ArrayLike) -> str | None:
    """Why leave-one-center-out CV cannot run on these rows, or None when it can."""
    g, y01 = np.asarray(groups).astype(str), np.asarray(y).ravel()
    centers = sorted(set(g))
    if len(centers) < 2:
        where = f"one center ({centers[0]})" if centers else "no center"
        return f"the training rows come from {where}"
    for c in centers:  # the selection chain needs two rows of each class to be fitted
        rest = y01[g != c]
        if min(int(np.sum(rest == 1)), int(np.sum(rest == 0))) < 2:
            return f"without center {c} the training rows hold fewer than 2 of an ATRX class"
    if not any(np.unique(y01[g == c]).size == 2 for c in centers):
        return "no development center holds both ATRX classes"
    return None


@dataclass(frozen=True)
class RankingChoice:
    """How the imaging models were ranked: ``strategy`` (``loco`` or ``random``) and why."""

    requested: str  # the study's imaging.ranking: auto | random | loco
    strategy: str  # what ranked: loco | random
    reason: str
    centers: tuple[str, ...]  # the centers of the training rows
    cv_folds: int
    loco_possible: bool

    @property
    def criterion(self) -> str:
        """The ranking criterion in words, for the report."""
        if self.strategy == LOCO:
            return (f"mean per-center AUC of leave-one-center-out CV over "
                    f"{len(self.centers)} development centers ({', '.join(self.centers)})")
        return f"mean AUC of stratified {self.cv_folds}-fold CV on the training rows"

    def to_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "strategy": self.strategy,
            "reason": self.reason,
            "criterion": self.criterion,
            "centers": list(self.centers),
            "cv_folds": self.cv_folds,
            "loco_computed": self.loco_possible,
        }


def choose_ranking(requested: str, groups: ArrayLike, y: ArrayLike, cv_folds: int) -> RankingChoice:
    """Pick the ranking strategy for the study's ``imaging.ranking`` on the training rows.

    ``loco`` that cannot run (one center, or a center whose absence leaves one class) is an
    ``InputError`` naming the key; ``auto`` falls back to random CV and says why.
    """
    problem = loco_problem(groups, y)
    centers = tuple(sorted(set(np.asarray(groups).astype(str))))
    paper = f"stratified {cv_folds}-fold CV, the paper's"
    if requested == RANDOM:
        strategy, reason = RANDOM, f"random: imaging.ranking is 'random' ({paper})"
    elif problem is None:
        strategy = LOCO
        reason = (f"loco: {len(centers)} development centers in the training rows "
                  f"({', '.join(centers)})")
        if requested == LOCO:
            reason += "; imaging.ranking is 'loco'"
    elif requested == LOCO:
        raise InputError(
            f"imaging.ranking is 'loco' (leave-one-center-out CV), but {problem}",
            fix="set imaging.ranking: auto or random in the study file, or give "
                "split.development_centers two or more centers with labelled patients",
        )
    else:
        strategy, reason = RANDOM, f"random: {problem} ({paper})"
    return RankingChoice(requested, strategy, reason, centers, cv_folds, problem is None)


class CrossValidated:
    """The two CV AUCs of a fitted model result with ``cross`` (random folds) and ``loco``."""

    cross: CrossFit
    loco: LocoFit | None

    @property
    def cv_auc(self) -> float:
        """Mean AUC of the random stratified k-fold CV (the paper's criterion)."""
        return self.cross.mean_auc

    @property
    def loco_auc(self) -> float | None:
        """Mean per-center AUC of leave-one-center-out CV; None when it was not computed."""
        return None if self.loco is None else self.loco.mean_auc

    def cv_summary(self) -> dict[str, Any]:
        """``cv_auc_mean``, ``cv_auc_folds`` and the ``loco_auc_*`` keys (None: not computed)."""
        loco = (self.loco.summary() if self.loco is not None else
                {"loco_auc_mean": None, "loco_auc_pooled": None, "loco_auc_centers": {}})
        return {"cv_auc_mean": self.cv_auc, "cv_auc_folds": list(self.cross.fold_aucs), **loco}


@dataclass
class ImagingModelResult(CrossValidated):
    """One imaging model: its columns, its random and LOCO cross-fits, and its final fit."""

    spec: ImagingModelSpec
    columns: list[str]
    cross: CrossFit = field(repr=False)
    final: Pipeline = field(repr=False)
    seconds: float = 0.0
    loco: LocoFit | None = field(default=None, repr=False)
    ranked_by: str = RANDOM

    @property
    def ranking_auc(self) -> float:
        """The AUC the models were ranked by (``ranked_by``)."""
        if self.ranked_by == LOCO:
            if self.loco_auc is None:
                raise ValueError(f"{self.spec.name}: ranked by LOCO but has no LOCO AUC")
            return self.loco_auc
        return self.cv_auc

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "label": self.spec.label,
            "views": list(self.spec.views),
            "n_input_features": len(self.columns),
            "selected_features": selected_features(self.final),
            "coefficients": coefficients(self.final),
            **self.cv_summary(),
            "ranked_by": self.ranked_by,
            "ranking_auc": self.ranking_auc,
            "seconds": round(self.seconds, 2),
        }


def pick_best(results: list[ImagingModelResult]) -> ImagingModelResult:
    """The model with the highest ranking AUC; the first of equals (the table order decides)."""
    return max(results, key=lambda r: r.ranking_auc)


def compare_classifiers(
    best: ImagingModelResult,
    Xtr: pd.DataFrame,
    ytr: np.ndarray,
    Xval: pd.DataFrame,
    yval: np.ndarray,
    classifiers: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """CV AUC of each classifier (name -> unfitted estimator) on the best model's per-fold
    selected features, random folds and, when computed, LOCO folds (and, for the record only,
    its validation AUC when fitted on the final selection). LR makes the imaging score."""
    out = []
    select_final = best.final[:-1]

    def fold_aucs(name: str, folds: list, models: list, given: list[float | None]) -> list:
        if name == "lr":
            return list(given)
        aucs: list[float | None] = []
        for (train, test), fold_model in zip(folds, models, strict=True):
            select = fold_model[:-1]
            clf = _fit_compared(clone(classifiers[name]), select.transform(Xtr.iloc[train]), ytr[train])
            aucs.append(None if clf is None else _auc(ytr[test], _scores(clf, select.transform(Xtr.iloc[test]), True)))
        return aucs

    for name in classifiers:
        aucs = fold_aucs(name, best.cross.folds, best.cross.fold_models, best.cross.fold_aucs)
        loco = None
        if best.loco is not None:
            given = [best.loco.center_aucs[c] for c in best.loco.centers]
            loco = _mean(fold_aucs(name, best.loco.folds, best.loco.fold_models, given))
        clf = _fit_compared(clone(classifiers[name]), select_final.transform(Xtr), ytr)
        val_auc = _auc(yval, _scores(clf, select_final.transform(Xval), True)) if len(yval) and clf else None
        out.append(
            {
                "classifier": name,
                "cv_auc_mean": _mean(aucs),
                "cv_auc_folds": aucs,
                "loco_auc_mean": loco,
                "validation_auc": val_auc,
                "used_for_imaging_score": name == "lr",
            }
        )
    return out

