"""Does the chain transfer to a new center? Per-center feature shift and selection stability.

Two pure computations on the training frame and its split (not in the paper; issue 12):

* :func:`feature_shift`: for each feature, its distribution per center, the standardised mean
  difference (pooled SD) and the two-sample Kolmogorov-Smirnov statistic of each center against
  the training rows of the *other* centers (for a test center: every training row), sorted by the
  largest shift on a test center. A feature the model relies on whose test-center values sit
  elsewhere than its training values is the first thing to look at when the test AUC falls.
* :func:`selection_stability`: how often each feature is chosen when the model's selection chain
  (scaling -> t-test -> LASSO -> backward AIC) is refitted on stratified bootstrap resamples of
  the **training rows only**. A selection that changes with every resample is fitted to noise.

:func:`diagnose` runs both for a protocol result (the best imaging model's features and the
fusion's inputs) and returns one :class:`Diagnostics` record, JSON-ready through ``to_json``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from training.dataset import LABEL, Split
from training.models import selected_features

if TYPE_CHECKING:
    from training.protocol import ProtocolResult
    from training.study import StudyConfig

__all__ = [
    "CenterShift",
    "Diagnostics",
    "FeatureShift",
    "ShiftResult",
    "StabilityResult",
    "diagnose",
    "feature_shift",
    "selection_stability",
]

#: features chosen in at least this share of the resamples are reported even if not final
MIN_FREQUENCY = 0.2
IMAGING_SCORE = "imaging_score"
ProgressFn = Callable[[str], None]


def _clean(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _box(values: np.ndarray) -> dict[str, float]:
    """Tukey box statistics (whiskers at the most extreme values within 1.5 IQR), the plain data
    ``matplotlib``'s ``Axes.bxp`` draws, so the figure needs no raw values."""
    q1, med, q3 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    iqr = q3 - q1
    inside = values[(values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr)]
    return {"whislo": float(inside.min()), "q1": q1, "med": med, "q3": q3,
            "whishi": float(inside.max())}


def _smd(a: np.ndarray, ref: np.ndarray) -> float | None:
    """Standardised mean difference ``(mean_a - mean_ref) / pooled SD`` (None when undefined)."""
    if a.size < 2 or ref.size < 2:
        return None
    pooled = math.sqrt((np.var(a, ddof=1) + np.var(ref, ddof=1)) / 2.0)
    diff = float(np.mean(a) - np.mean(ref))
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else None
    return diff / pooled


@dataclass(frozen=True)
class CenterShift:
    """One feature on one center: its distribution and its shift from the reference rows."""

    center: str
    role: str  # "development" (holds training rows) or "test"
    n: int
    mean: float
    sd: float
    box: dict[str, float]
    n_reference: int  # training rows of the other centers
    smd: float | None
    ks: float | None
    ks_p: float | None

    def to_json(self) -> dict[str, Any]:
        return {"center": self.center, "role": self.role, "n": self.n, "mean": _clean(self.mean),
                "sd": _clean(self.sd), "box": self.box, "n_reference": self.n_reference,
                "smd": _clean(self.smd), "ks": _clean(self.ks), "ks_p": _clean(self.ks_p)}


@dataclass(frozen=True)
class FeatureShift:
    """One feature: training rows' mean and SD, and every center's shift."""

    feature: str
    source: str  # what uses it: "imaging" (the best imaging model) or "fusion" (a fusion input)
    train_mean: float
    train_sd: float
    centers: list[CenterShift]

    @property
    def shift(self) -> float | None:
        """The largest |SMD| on a test center (on any center when there is no test center)."""
        test = [c for c in self.centers if c.role == "test"] or self.centers
        values = [abs(c.smd) for c in test if c.smd is not None]
        return max(values) if values else None

    def to_json(self) -> dict[str, Any]:
        return {"feature": self.feature, "source": self.source, "shift": _clean(self.shift),
                "train_mean": _clean(self.train_mean), "train_sd": _clean(self.train_sd),
                "centers": [c.to_json() for c in self.centers]}


@dataclass(frozen=True)
class ShiftResult:
    """Per-center shift of a list of features, sorted by :attr:`FeatureShift.shift`, largest first."""

    features: list[FeatureShift]
    centers: list[str]
    test_centers: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"centers": self.centers, "test_centers": self.test_centers,
                "reference": "training rows of the other centers",
                "features": [f.to_json() for f in self.features]}


def feature_shift(
    frame: pd.DataFrame,
    split: Split,
    features: Sequence[str],
    *,
    sources: Mapping[str, str] | None = None,
    center_column: str = "center",
) -> ShiftResult:
    """The per-center distribution of each of ``features`` and its shift (see the module doc).

    Rows of the split's three sets take part, grouped by ``center_column``; a center is a test
    center when it holds test rows. Each center is compared with the training rows of the other
    centers, so a development center is not compared with itself. Uses no labels.
    """
    missing = [f for f in (center_column, *features) if f not in frame.columns]
    if missing:
        raise ValueError(f"the frame lacks column(s) {missing[:5]}")
    rows = np.concatenate([split.train, split.validation, split.test])
    centers = frame[center_column].astype(str).to_numpy()
    test_centers = sorted(set(centers[split.test]))
    names = sorted(set(centers[rows]), key=lambda c: (c in test_centers, c))
    in_train = np.zeros(len(frame), dtype=bool)
    in_train[split.train] = True
    used = np.zeros(len(frame), dtype=bool)
    used[rows] = True
    out = []
    for feature in features:
        x = frame[feature].to_numpy(dtype=np.float64)
        per_center = []
        for c in names:
            a = x[used & (centers == c)]
            ref = x[in_train & (centers != c)]
            ks = stats.ks_2samp(a, ref) if a.size and ref.size else None
            per_center.append(CenterShift(
                center=c, role="test" if c in test_centers else "development", n=int(a.size),
                mean=float(np.mean(a)), sd=float(np.std(a, ddof=1)) if a.size > 1 else math.nan,
                box=_box(a), n_reference=int(ref.size), smd=_smd(a, ref),
                ks=None if ks is None else float(ks.statistic),
                ks_p=None if ks is None else float(ks.pvalue),
            ))
        xt = x[in_train]
        out.append(FeatureShift(
            feature=feature, source=(sources or {}).get(feature, "imaging"),
            train_mean=float(np.mean(xt)), train_sd=float(np.std(xt, ddof=1)),
            centers=per_center,
        ))
    out.sort(key=lambda f: -1.0 if f.shift is None else f.shift, reverse=True)
    return ShiftResult(out, names, test_centers)


@dataclass
class StabilityResult:
    """Selection frequencies over bootstrap refits of a selection chain."""

    n_resamples: int
    seed: int
    n_rows: int
    final_features: list[str]
    selections: list[list[str]] = field(repr=False)
    seconds: float = 0.0
    min_frequency: float = MIN_FREQUENCY

    @property
    def frequency(self) -> dict[str, float]:
        """Feature -> share of the resamples that chose it (every feature chosen at least once,
        and every final feature), most frequent first."""
        counts = Counter(f for sel in self.selections for f in set(sel))
        freq = {f: counts.get(f, 0) / self.n_resamples for f in {*counts, *self.final_features}}
        return dict(sorted(freq.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def jaccard(self) -> list[float]:
        """Jaccard similarity of each resample's selected set to the final one."""
        final = set(self.final_features)
        return [len(final & set(s)) / len(final | set(s)) if final | set(s) else 1.0
                for s in self.selections]

    def reported(self) -> list[dict[str, Any]]:
        """The final features and any feature chosen in >= ``min_frequency`` of the resamples."""
        final = set(self.final_features)
        return [{"feature": f, "frequency": p, "final": f in final}
                for f, p in self.frequency.items() if f in final or p >= self.min_frequency]

    def summary(self) -> dict[str, Any]:
        sizes = [len(s) for s in self.selections]
        return {"n_resamples": self.n_resamples, "seed": self.seed, "n_rows": self.n_rows,
                "n_final": len(self.final_features),
                "mean_jaccard": float(np.mean(self.jaccard)),
                "mean_selected": float(np.mean(sizes)),
                "final_mean_frequency": float(np.mean(
                    [self.frequency[f] for f in self.final_features])) if self.final_features
                else None,
                "seconds": round(self.seconds, 2)}

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "min_frequency": self.min_frequency,
                "features": self.reported(), "jaccard": self.jaccard}


def _stratified_bootstrap(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row positions drawn with replacement within each class, keeping the class sizes."""
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == k), size=int(np.sum(y == k)))
                                   for k in np.unique(y)]))


def _selection_chain(template: Pipeline) -> Pipeline:
    """An unfitted copy of the pipeline's steps before its classifier (the selection chain)."""
    return Pipeline(clone(template).steps[:-1])


def selection_stability(
    template: Pipeline,
    frame: pd.DataFrame,
    split: Split,
    columns: Sequence[str],
    final_features: Sequence[str],
    n_resamples: int,
    seed: int = 0,
) -> StabilityResult:
    """Refit ``template``'s selection chain (every step but the classifier; fitted or not, it is
    cloned) on ``n_resamples`` bootstrap resamples of the split's training rows, stratified by
    the label and seeded by ``seed``, on ``columns``. Validation and test rows never enter."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    t0 = time.perf_counter()
    X = frame.iloc[split.train][list(columns)].reset_index(drop=True)
    y = frame.iloc[split.train][LABEL].to_numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    selections = []
    for _ in range(n_resamples):
        idx = _stratified_bootstrap(y, rng)
        chain = _selection_chain(template).fit(X.iloc[idx], y[idx])
        selections.append([str(n) for n in chain.get_feature_names_out()])
    return StabilityResult(n_resamples, seed, int(y.size), list(final_features), selections,
                           seconds=time.perf_counter() - t0)


@dataclass
class Diagnostics:
    """The transfer diagnostics of one run: the model they are about, shift and stability."""

    model: str
    shift: ShiftResult
    stability: StabilityResult | None  # None when the study's diagnostics.bootstrap is 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "shift": self.shift.to_json(),
                "stability": None if self.stability is None else self.stability.to_json(),
                "seconds": round(self.seconds, 2)}


def diagnose(
    frame: pd.DataFrame,
    split: Split,
    result: ProtocolResult,
    study: StudyConfig,
    progress: ProgressFn | None = None,
) -> Diagnostics:
    """Shift of the best imaging model's selected features and of the fusion's inputs (imaging
    score, clinical variables), and the stability of that model's selection chain."""
    t0 = time.perf_counter()
    best = result.best
    chosen = selected_features(best.final)
    fusion_inputs = [IMAGING_SCORE, *result.fusion.clinical_columns]
    work = frame.assign(**{IMAGING_SCORE: result.fusion.imaging_score(frame)})
    sources = {**dict.fromkeys(chosen, "imaging"), **dict.fromkeys(fusion_inputs, "fusion")}
    shift = feature_shift(work, split, [*chosen, *fusion_inputs], sources=sources)
    stability = None
    if study.diagnostics.bootstrap:
        stability = selection_stability(best.final, frame, split, best.columns, chosen,
                                        study.diagnostics.bootstrap, study.diagnostics.seed)
        s = stability.summary()
        if progress:
            progress(f"selection stability of {best.spec.label}: {s['n_resamples']} bootstrap "
                     f"refits of its selection chain, mean Jaccard {s['mean_jaccard']:.2f} to "
                     f"its {s['n_final']} features ({stability.seconds:.0f} s)")
    return Diagnostics(best.spec.label, shift, stability, time.perf_counter() - t0)
