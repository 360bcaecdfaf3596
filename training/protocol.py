"""The study protocol of Liu et al. 2024 on one training matrix: nine imaging models, the best
one's imaging score, the clinical model, the fusion model, and the paper's whole evaluation.

Steps (all fitting on the training rows only; validation and test rows are only scored):

1. each imaging model (feature type x ROI, both sequences): the selection chain + LR, cross-fitted
   with ``cv_folds`` stratified folds on the training rows (:func:`training.fusion.cross_fit`) and
   refitted on all of them; the mean fold AUC ranks the models (the paper's criterion);
2. on the best model's folds, LR, RF and SVM are compared by CV AUC on the selected features
   (recorded, as the paper reports; the imaging score is the LR's linear predictor whatever wins);
3. the clinical LR, and the fusion LR on the best model's out-of-fold imaging score + clinical
   variables (:class:`training.fusion.FusionModel`), with its risk cutoff;
4. every model on every set with :func:`training.evaluation.binary_metrics` (cutoffs fixed on
   the training rows), DeLong tests, calibration, decision curves, clinical impact and the
   fusion nomogram.

Training-set metrics: imaging models are scored out-of-fold (the paper's Table 2 reports 5-fold
cross-validation on the training set; in-sample scores of a selected model are ~1.0 and say
nothing); the fusion model on its out-of-fold imaging scores; the 4-variable clinical LR in-sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from training.dataset import LABEL, Split
from training.evaluation import (
    BinaryMetrics,
    binary_metrics,
    calibration,
    clinical_impact,
    decision_curve,
    delong_table,
    youden_cutoff,
)
from training.fusion import CrossFit, FusionModel, cross_fit
from training.models import (
    coefficients,
    make_clinical_pipeline,
    make_fusion_pipeline,
    make_imaging_pipeline,
    selected_features,
)
from training.study import ImagingModelSpec, StudyConfig

__all__ = [
    "CLINICAL",
    "FUSION",
    "SETS",
    "ImagingModelResult",
    "ProtocolResult",
    "imaging_columns",
    "imaging_template",
    "run_protocol",
]

log = logging.getLogger(__name__)

FUSION = "Fusion"
CLINICAL = "Clinical"
SETS: tuple[str, ...] = ("train", "validation", "test")
ProgressFn = Callable[[str], None]


@dataclass
class ImagingModelResult:
    """One imaging model: its columns, cross-fit on the training rows and final fit."""

    spec: ImagingModelSpec
    columns: list[str]
    cross: CrossFit = field(repr=False)
    final: Pipeline = field(repr=False)
    seconds: float = 0.0

    @property
    def cv_auc(self) -> float:
        return self.cross.mean_auc

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "label": self.spec.label,
            "views": list(self.spec.views),
            "n_input_features": len(self.columns),
            "selected_features": selected_features(self.final),
            "coefficients": coefficients(self.final),
            "cv_auc_mean": self.cv_auc,
            "cv_auc_folds": list(self.cross.fold_aucs),
            "seconds": round(self.seconds, 2),
        }


@dataclass
class ProtocolResult:
    """Everything the protocol fitted and measured; ``to_json()`` is the run's metrics."""

    imaging: list[ImagingModelResult]
    best: ImagingModelResult
    classifier_comparison: list[dict[str, Any]]
    fusion: FusionModel
    clinical: Pipeline
    y: dict[str, np.ndarray]
    probabilities: dict[str, dict[str, np.ndarray]]  # set -> model label -> P(mutant)
    cutoffs: dict[str, float]
    metrics: dict[str, dict[str, BinaryMetrics]]  # model label -> set -> metrics
    delong: list[dict[str, Any]]
    delong_imaging: list[dict[str, Any]]
    calibration: dict[str, dict[str, Any]]
    decision_curve: dict[str, dict[str, Any]]
    clinical_impact: dict[str, Any]
    imaging_score_scale: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def model_order(self) -> list[str]:
        """Table order: the imaging models, then clinical, then fusion (as Tables 2-3)."""
        return [r.spec.label for r in self.imaging] + [CLINICAL, FUSION]

    def auc(self, model: str, set_name: str) -> float | None:
        return self.metrics[model][set_name]["auc"]

    def headline(self) -> list[str]:
        """The three models the paper compares: fusion, best imaging, clinical."""
        return [FUSION, self.best.spec.label, CLINICAL]

    def to_json(self) -> dict[str, Any]:
        return {
            "models": {m: self.metrics[m] for m in self.model_order},
            "cutoffs": self.cutoffs,
            "imaging_models": [r.summary() for r in self.imaging],
            "best_imaging_model": {
                "name": self.best.spec.name,
                "label": self.best.spec.label,
                "cv_auc_mean": self.best.cv_auc,
            },
            "classifier_comparison": self.classifier_comparison,
            "clinical_model": {"coefficients": coefficients(self.clinical)},
            "fusion_model": self.fusion.describe(),
            "delong": self.delong,
            "delong_imaging": self.delong_imaging,
            "calibration": self.calibration,
            "decision_curve": self.decision_curve,
            "clinical_impact": self.clinical_impact,
            "imaging_score_scale": self.imaging_score_scale,
            "nomogram": self.fusion.nomogram_.to_dict(),
            "seconds": round(self.seconds, 2),
        }


def _check_split(frame: pd.DataFrame, split: Split) -> None:
    """Leakage guard: the three sets are disjoint, in range, and the training set is not empty."""
    sets = split.sets()
    n = len(frame)
    for name, idx in sets.items():
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"split.{name} has indices outside the frame's {n} rows")
        if np.unique(idx).size != idx.size:
            raise ValueError(f"split.{name} repeats rows")
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = np.intersect1d(sets[a], sets[b])
            if both.size:
                raise ValueError(f"{both.size} row(s) are in both the {a} and {b} sets (leakage)")
    if split.train.size == 0:
        raise ValueError("the training set is empty")


def imaging_template(study: StudyConfig, classifier: str = "lr") -> Pipeline:
    """The unfitted imaging pipeline (selection chain + ``classifier``) as ``study`` sets it up."""
    sel = study.selection
    return make_imaging_pipeline(
        classifier,
        random_state=study.seeds.selection,
        alpha=sel.alpha,
        lasso_cv=sel.lasso_cv,
        lasso_Cs=sel.lasso_cs,
        lasso_min_ratio=sel.lasso_min_ratio,
        max_features=sel.max_features,
        lr_c=study.imaging.lr_c,
    ).set_params(lasso__max_features=sel.lasso_max_features)


def imaging_columns(frame: pd.DataFrame, spec: ImagingModelSpec) -> list[str]:
    """The frame's feature columns of the imaging model's views."""
    cols = [c for c in frame.columns if any(c.startswith(f"{v}__") for v in spec.views)]
    if not cols:
        raise ValueError(f"imaging model {spec.name}: the frame has no columns of views {spec.views}")
    return cols


def _positive_scores(model: Any, X: Any) -> np.ndarray:
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(X), dtype=np.float64)[:, 1]
    return np.asarray(model.decision_function(X), dtype=np.float64)


def _compare_classifiers(
    best: ImagingModelResult,
    Xtr: pd.DataFrame,
    ytr: np.ndarray,
    Xval: pd.DataFrame,
    yval: np.ndarray,
    study: StudyConfig,
) -> list[dict[str, Any]]:
    """CV AUC of each classifier on the best model's per-fold selected features (and, for the
    record only, its validation AUC when fitted on the final selection)."""
    out = []
    select_final = best.final[:-1]
    for name in study.imaging.compare_classifiers:
        template = imaging_template(study, name)[-1]
        if name == "lr":
            aucs = list(best.cross.fold_aucs)
        else:
            aucs = []
            for (train, test), fold_model in zip(best.cross.folds, best.cross.fold_models, strict=True):
                select = fold_model[:-1]
                clf = clone(template).fit(select.transform(Xtr.iloc[train]), ytr[train])
                scores = _positive_scores(clf, select.transform(Xtr.iloc[test]))
                aucs.append(float(roc_auc_score(ytr[test], scores)))
        clf = clone(template).fit(select_final.transform(Xtr), ytr)
        val_auc = None
        if np.unique(yval).size == 2:
            val_auc = float(roc_auc_score(yval, _positive_scores(clf, select_final.transform(Xval))))
        out.append(
            {
                "classifier": name,
                "cv_auc_mean": float(np.mean(aucs)),
                "cv_auc_folds": aucs,
                "validation_auc": val_auc,
                "used_for_imaging_score": name == "lr",
            }
        )
    return out


def _delong(y: np.ndarray, scores: dict[str, np.ndarray], set_name: str) -> list[dict[str, Any]]:
    """Pairwise DeLong tests, or none when a set has fewer than 2 cases of a class."""
    if min(int(np.sum(y == 1)), int(np.sum(y == 0))) < 2:
        log.warning("no DeLong tests on the %s set: fewer than 2 cases of a class", set_name)
        return []
    return delong_table(y, scores, set_name)


# out-of-fold / final-fit SD of the imaging score beyond which the fusion weight is untrustworthy
SCORE_SCALE_LIMITS = (0.5, 2.0)


def _score_scale(oof: np.ndarray, final: np.ndarray) -> dict[str, float]:
    """Compare the spread of the out-of-fold imaging scores (what the fusion LR learns its weight
    on) with that of the final imaging model's scores (what it is applied to), on the same rows.

    The final fit's in-sample scores are if anything wider than honest ones, so a ratio well above
    1 means the fold models were unstable (separation) and the fusion will under-weight imaging.
    """
    oof_sd, final_sd = float(np.std(oof)), float(np.std(final))
    ratio = oof_sd / final_sd if final_sd > 0 else float("inf")
    lo, hi = SCORE_SCALE_LIMITS
    if not lo <= ratio <= hi:
        log.warning(
            "the out-of-fold imaging scores spread %.1fx as wide as the final imaging model's "
            "(SD %.2f vs %.2f): the fusion weight of the imaging score will not fit new patients; "
            "lower imaging.lr_c in the study file to regularise the imaging LR", ratio, oof_sd,
            final_sd,
        )
    return {"oof_sd": oof_sd, "final_sd": final_sd, "ratio": ratio}


def run_protocol(
    frame: pd.DataFrame,
    split: Split,
    study: StudyConfig,
    progress: ProgressFn | None = None,
) -> ProtocolResult:
    """Fit and evaluate every model of the study (see the module docstring)."""
    t0 = time.perf_counter()
    _check_split(frame, split)
    say = progress or (lambda _msg: None)
    y_all = frame[LABEL].to_numpy().astype(np.int64)
    rows = split.sets()
    parts = {s: frame.iloc[idx].reset_index(drop=True) for s, idx in rows.items()}
    y = {s: y_all[idx] for s, idx in rows.items()}
    train = parts["train"]
    template = imaging_template(study)

    # 1. the imaging models, ranked by mean CV AUC on the training rows
    imaging: list[ImagingModelResult] = []
    specs = study.imaging_models()
    for i, spec in enumerate(specs, start=1):
        t = time.perf_counter()
        cols = imaging_columns(frame, spec)
        crossed = cross_fit(
            template, train[cols], y["train"], folds=study.imaging.cv_folds,
            random_state=study.seeds.cv,
        )
        final = clone(template).fit(train[cols], y["train"])
        result = ImagingModelResult(spec, cols, crossed, final, time.perf_counter() - t)
        imaging.append(result)
        log.info("imaging model %s: CV AUC %.3f (%d features in, %d selected, %.1fs)",
                 spec.label, result.cv_auc, len(cols), len(selected_features(final)), result.seconds)
        say(f"imaging model {i}/{len(specs)} {spec.label}: mean CV AUC {result.cv_auc:.3f}, "
            f"{len(selected_features(final))} of {len(cols)} features kept ({result.seconds:.0f} s)")
    best = max(imaging, key=lambda r: r.cv_auc)  # first of equals: the table order decides ties

    # 2. classifiers compared on the best feature set
    comparison = _compare_classifiers(
        best, train[best.columns], y["train"], parts["validation"][best.columns], y["validation"],
        study,
    )

    # 3. clinical and fusion models
    clinical_cols = list(study.clinical_variables)
    clinical_model = make_clinical_pipeline(clinical_cols).fit(train[clinical_cols], y["train"])
    fusion = FusionModel(
        imaging_pipeline=template,
        fusion_pipeline=make_fusion_pipeline(("imaging_score", *clinical_cols)),
        imaging_features=best.columns,
        clinical_columns=clinical_cols,
        cutoff=study.cutoff.value if study.cutoff.policy == "fixed" else None,
        cv=study.imaging.cv_folds,
        random_state=study.seeds.cv,
    ).fit_from_cross_fit(train, y["train"], best.cross, best.final)
    say(f"best imaging model {best.spec.label}; classifiers compared; clinical and fusion "
        "models fitted")
    scale = _score_scale(best.cross.oof_scores, fusion.imaging_score(train))

    # 4. probabilities of every model on every set
    probs: dict[str, dict[str, np.ndarray]] = {s: {} for s in SETS}
    for r in imaging:
        probs["train"][r.spec.label] = expit(r.cross.oof_scores)
        for s in ("validation", "test"):
            probs[s][r.spec.label] = r.final.predict_proba(parts[s][r.columns])[:, 1]
    for s in SETS:
        probs[s][CLINICAL] = clinical_model.predict_proba(parts[s][clinical_cols])[:, 1]
        probs[s][FUSION] = (
            fusion.predict_proba(train, imaging_score=best.cross.oof_scores)[:, 1]
            if s == "train"
            else fusion.predict_proba(parts[s])[:, 1]
        )
    models = [r.spec.label for r in imaging] + [CLINICAL, FUSION]
    cutoffs = {m: youden_cutoff(y["train"], probs["train"][m]) for m in models if m != FUSION}
    cutoffs[FUSION] = fusion.cutoff_
    metrics = {m: {s: binary_metrics(y[s], probs[s][m], cutoffs[m]) for s in SETS} for m in models}

    headline = [FUSION, best.spec.label, CLINICAL]
    delong = [
        row for s in SETS for row in _delong(y[s], {m: probs[s][m] for m in headline}, s)
    ]
    delong_imaging = [
        row
        for s in ("validation", "test")
        for row in _delong(y[s], {r.spec.label: probs[s][r.spec.label] for r in imaging}, s)
    ]
    result = ProtocolResult(
        imaging=imaging,
        best=best,
        classifier_comparison=comparison,
        fusion=fusion,
        clinical=clinical_model,
        y=y,
        probabilities=probs,
        cutoffs=cutoffs,
        metrics=metrics,
        delong=delong,
        delong_imaging=delong_imaging,
        calibration={m: {s: calibration(y[s], probs[s][m]) for s in SETS} for m in headline},
        decision_curve={m: {s: decision_curve(y[s], probs[s][m]) for s in SETS} for m in headline},
        clinical_impact={s: clinical_impact(y[s], probs[s][FUSION]) for s in ("validation", "test")},
        imaging_score_scale=scale,
    )
    result.seconds = time.perf_counter() - t0
    return result
