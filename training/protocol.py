"""The study protocol of Liu et al. 2024 on one training matrix: nine imaging models, the best
one's imaging score, the clinical model, the fusion model, and the paper's whole evaluation.

Steps (all fitting on the training rows only; validation and test rows are only scored):

1. each imaging model (feature type x ROI, both sequences): the selection chain + LR, cross-fitted
   with ``cv_folds`` stratified folds on the training rows (:func:`training.fusion.cross_fit`),
   and leave-one-center-out when the training rows span two or more centers
   (:func:`training.ranking.loco_fit`), then refitted on all of them; ``imaging.ranking`` says
   which mean AUC ranks the models (:func:`training.ranking.choose_ranking`; auto: LOCO with two
   or more centers, else the paper's random CV);
2. on the best model's folds, LR, RF and SVM are compared by CV AUC on the selected features
   (recorded, as the paper reports; the imaging score is the LR's linear predictor whatever wins);
3. the clinical LR, the first-order baseline (:mod:`training.baseline`, not in the paper), and
   the fusion LR on the best model's out-of-fold imaging score + clinical variables
   (:class:`training.fusion.FusionModel`), with its risk cutoff;
4. every model on every set with :func:`training.evaluation.binary_metrics` (cutoffs fixed on
   the training rows), DeLong tests, calibration, decision curves, clinical impact and the
   fusion nomogram.

Training-set metrics: imaging models and the baseline are scored out-of-fold (random folds; the
paper's Table 2 reports 5-fold cross-validation on the training set; in-sample scores of a
selected model are ~1.0 and say nothing); the fusion model on its out-of-fold imaging scores; the
4-variable clinical LR in-sample.
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
from sklearn.pipeline import Pipeline

from training.baseline import BASELINE, BaselineResult, baseline_problem, fit_baseline
from training.clinical_selection import ClinicalSelection, select_clinical
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
from training.fusion import FusionModel, cross_fit, encode_clinical
from training.models import (
    coefficients,
    make_clinical_pipeline,
    make_fusion_pipeline,
    make_imaging_pipeline,
    selected_features,
)
from training.ranking import (
    CENTER,
    ImagingModelResult,
    RankingChoice,
    choose_ranking,
    compare_classifiers,
    loco_fit,
    pick_best,
)
from training.study import ImagingModelSpec, StudyConfig

__all__ = [
    "BASELINE",
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
    ranking: RankingChoice
    imaging_score_scale: dict[str, float] = field(default_factory=dict)
    baseline: BaselineResult | None = None
    baseline_note: str | None = None  # why there is no baseline, when there is none
    clinical_selection: ClinicalSelection | None = None  # the fusion's clinical variables
    seconds: float = 0.0

    @property
    def model_order(self) -> list[str]:
        """Table order: the imaging models, the first-order baseline (an imaging model too, when
        fitted), then clinical and fusion, which close Tables 2-3 as in the paper."""
        base = [BASELINE] if self.baseline is not None else []
        return [r.spec.label for r in self.imaging] + base + [CLINICAL, FUSION]

    def auc(self, model: str, set_name: str) -> float | None:
        return self.metrics[model][set_name]["auc"]

    def headline(self) -> list[str]:
        """The three models the paper compares: fusion, best imaging, clinical."""
        return [FUSION, self.best.spec.label, CLINICAL]

    def compared(self) -> list[str]:
        """The headline models plus the baseline: DeLong tests, calibration, decision curves."""
        return self.headline() + ([BASELINE] if self.baseline is not None else [])

    def to_json(self) -> dict[str, Any]:
        return {
            "models": {m: self.metrics[m] for m in self.model_order},
            "cutoffs": self.cutoffs,
            "imaging_models": [r.summary() for r in self.imaging],
            "best_imaging_model": {
                "name": self.best.spec.name,
                "label": self.best.spec.label,
                "cv_auc_mean": self.best.cv_auc,
                "loco_auc_mean": self.best.loco_auc,
                "ranked_by": self.best.ranked_by,
                "ranking_auc": self.best.ranking_auc,
            },
            "ranking": self.ranking.to_json(),
            "baseline": (self.baseline.summary() if self.baseline is not None
                         else {"fitted": False, "label": BASELINE, "reason": self.baseline_note}),
            "classifier_comparison": self.classifier_comparison,
            "clinical_model": {"coefficients": coefficients(self.clinical)},
            "fusion_model": self.fusion.describe(),
            "fusion_clinical_selection": (None if self.clinical_selection is None
                                          else self.clinical_selection.to_json()),
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


def _centers(train: pd.DataFrame) -> np.ndarray:
    """Each training row's center (one pseudo-center when the frame has no ``center`` column)."""
    if CENTER not in train.columns:
        return np.full(len(train), "unknown")
    return train[CENTER].astype(str).to_numpy()


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
    centers = _centers(train)
    ranking = choose_ranking(study.imaging.ranking, centers, y["train"], study.imaging.cv_folds)
    loco_groups = centers if ranking.loco_possible else None

    # 1. the imaging models: random CV, LOCO CV when possible, final fit; ranked per `ranking`
    imaging: list[ImagingModelResult] = []
    specs = study.imaging_models()
    for i, spec in enumerate(specs, start=1):
        t = time.perf_counter()
        cols = imaging_columns(frame, spec)
        crossed = cross_fit(
            template, train[cols], y["train"], folds=study.imaging.cv_folds,
            random_state=study.seeds.cv,
        )
        loco = None if loco_groups is None else loco_fit(template, train[cols], y["train"],
                                                          loco_groups)
        final = clone(template).fit(train[cols], y["train"])
        result = ImagingModelResult(spec, cols, crossed, final, time.perf_counter() - t, loco,
                                    ranking.strategy)
        imaging.append(result)
        kept = len(selected_features(final))
        loco_text = "" if result.loco_auc is None else f", LOCO AUC {result.loco_auc:.3f}"
        log.info("imaging model %s: CV AUC %.3f%s (%d features in, %d selected, %.1fs)",
                 spec.label, result.cv_auc, loco_text, len(cols), kept, result.seconds)
        say(f"imaging model {i}/{len(specs)} {spec.label}: mean CV AUC {result.cv_auc:.3f}"
            f"{loco_text}, {kept} of {len(cols)} features kept ({result.seconds:.0f} s)")
    best = pick_best(imaging)

    # 2. classifiers compared on the best feature set
    comparison = compare_classifiers(
        best, train[best.columns], y["train"], parts["validation"][best.columns], y["validation"],
        {name: imaging_template(study, name)[-1] for name in study.imaging.compare_classifiers},
    )

    # 3. clinical, first-order baseline and fusion models
    clinical_cols = list(study.clinical_variables)
    clinical_model = make_clinical_pipeline(clinical_cols).fit(train[clinical_cols], y["train"])
    baseline, baseline_note = None, baseline_problem(frame.columns, study)
    if baseline_note is None:
        baseline = fit_baseline(train, y["train"], study, loco_groups)
        loco_text = "" if baseline.loco_auc is None else f", LOCO AUC {baseline.loco_auc:.3f}"
        say(f"{BASELINE}: {len(baseline.columns)} features, mean CV AUC {baseline.cv_auc:.3f}"
            f"{loco_text}")
    elif study.baseline.enabled:
        log.warning("no first-order baseline: %s", baseline_note)
    chosen = select_clinical(study.fusion.clinical_selection, best.cross.oof_scores,
                             encode_clinical(train, clinical_cols), y["train"], loco_groups)
    if chosen.method != "none":
        say(f"fusion clinical variables: {', '.join(chosen.kept) or 'none'} ({chosen.note})")
    fusion = FusionModel(
        imaging_pipeline=template,
        fusion_pipeline=make_fusion_pipeline(("imaging_score", *chosen.kept)),
        imaging_features=best.columns,
        clinical_columns=chosen.kept,
        cutoff=study.cutoff.value if study.cutoff.policy == "fixed" else None,
        cv=study.imaging.cv_folds,
        random_state=study.seeds.cv,
    ).fit_from_cross_fit(train, y["train"], best.cross, best.final)
    say(f"best imaging model {best.spec.label} (ranked by {ranking.reason}); classifiers "
        "compared; clinical and fusion models fitted")
    scale = _score_scale(best.cross.oof_scores, fusion.imaging_score(train))

    # 4. probabilities of every model on every set
    probs: dict[str, dict[str, np.ndarray]] = {s: {} for s in SETS}
    scored: list[tuple[str, Any, list[str]]] = [(r.spec.label, r, r.columns) for r in imaging]
    scored += [(BASELINE, baseline, baseline.columns)] if baseline is not None else []
    for label, r, cols in scored:  # out-of-fold on the training rows, as the paper's Table 2
        probs["train"][label] = expit(r.cross.oof_scores)
        for s in ("validation", "test"):
            probs[s][label] = r.final.predict_proba(parts[s][cols])[:, 1]
    for s in SETS:
        probs[s][CLINICAL] = clinical_model.predict_proba(parts[s][clinical_cols])[:, 1]
        probs[s][FUSION] = (
            fusion.predict_proba(train, imaging_score=best.cross.oof_scores)[:, 1]
            if s == "train"
            else fusion.predict_proba(parts[s])[:, 1]
        )
    models = [label for label, _, _ in scored] + [CLINICAL, FUSION]
    cutoffs = {m: youden_cutoff(y["train"], probs["train"][m]) for m in models if m != FUSION}
    cutoffs[FUSION] = fusion.cutoff_
    metrics = {m: {s: binary_metrics(y[s], probs[s][m], cutoffs[m]) for s in SETS} for m in models}

    compared = [FUSION, best.spec.label, CLINICAL] + ([BASELINE] if baseline is not None else [])
    delong = [
        row for s in SETS for row in _delong(y[s], {m: probs[s][m] for m in compared}, s)
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
        calibration={m: {s: calibration(y[s], probs[s][m]) for s in SETS} for m in compared},
        decision_curve={m: {s: decision_curve(y[s], probs[s][m]) for s in SETS} for m in compared},
        clinical_impact={s: clinical_impact(y[s], probs[s][FUSION]) for s in ("validation", "test")},
        ranking=ranking,
        imaging_score_scale=scale,
        baseline=baseline,
        baseline_note=baseline_note,
        clinical_selection=chosen,
    )
    result.seconds = time.perf_counter() - t0
    return result
