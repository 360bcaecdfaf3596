"""Evaluation of the paper: discrimination, calibration, decision curves, clinical impact, nomogram.

Every function is pure and returns plain Python floats, ints, lists and dicts (``None`` where a
quantity is not estimable), so results can be written to JSON and rendered without numpy.
Probabilities are of the positive class (ATRX mutant = the larger label, usually 1).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import statsmodels.api as sm
from numpy.typing import ArrayLike
from scipy.special import expit, logit
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from training.delong import delong_ci, delong_test

__all__ = [
    "BinaryMetrics",
    "Nomogram",
    "binary_metrics",
    "calibration",
    "clinical_impact",
    "decision_curve",
    "delong_table",
    "roc_curve_data",
    "youden_cutoff",
]

_EPS = 1e-8


class BinaryMetrics(TypedDict):
    """One row of the paper's Tables 2-3 for one model on one data set."""

    sensitivity: float | None
    specificity: float | None
    accuracy: float
    auc: float | None
    auc_lo: float | None
    auc_hi: float | None
    cutoff: float
    n: int
    n_pos: int


def _xy(y: ArrayLike, prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y_arr.size != p.size:
        raise ValueError(f"y and prob have different lengths: {y_arr.size} != {p.size}.")
    if y_arr.size == 0:
        raise ValueError("y and prob are empty.")
    if not np.all(np.isfinite(p)):
        raise ValueError("prob contains NaN or infinity.")
    labels = np.unique(y_arr)
    if labels.size > 2:
        raise ValueError(f"y must be binary; got {labels.size} classes.")
    if set(labels.tolist()) <= {0, 1} or set(labels.tolist()) <= {False, True}:
        y01 = y_arr.astype(np.int64)
    else:
        if labels.size != 2:
            raise ValueError("with labels other than 0/1 both classes must be present.")
        y01 = (y_arr == labels[1]).astype(np.int64)
    return y01, p


def _probabilities(p: np.ndarray) -> None:
    if np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("prob must hold probabilities in [0, 1].")


def _thresholds(thresholds: ArrayLike | None) -> np.ndarray:
    if thresholds is None:
        return np.round(np.arange(0.01, 1.0, 0.01), 2)
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    if t.size == 0 or np.any((t < 0.0) | (t >= 1.0)) or not np.all(np.isfinite(t)):
        raise ValueError("thresholds must be a non-empty sequence of probabilities in [0, 1).")
    return t


def youden_cutoff(y: ArrayLike, prob: ArrayLike) -> float:
    """Cutoff maximising Youden's J = sensitivity + specificity - 1 (predict positive if >= cutoff).

    Ties go to the highest cutoff, i.e. the fewest positive calls.
    """
    y01, p = _xy(y, prob)
    if np.unique(y01).size != 2:
        raise ValueError("youden_cutoff needs both classes in y.")
    fpr, tpr, thr = roc_curve(y01, p, drop_intermediate=False)
    finite = np.isfinite(thr)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thr[int(np.argmax(j))])


def binary_metrics(y: ArrayLike, prob: ArrayLike, cutoff: float) -> BinaryMetrics:
    """Sensitivity, specificity and accuracy at ``cutoff`` (positive if ``prob >= cutoff``), AUC with DeLong 95% CI.

    Cutoffs are fixed on the training set (e.g. :func:`youden_cutoff`) and reused on validation
    and test sets, as the paper does. Sensitivity (specificity) is ``None`` without positives
    (negatives); the AUC and CI are ``None`` unless both classes are present, the CI also needs
    two cases of each class.
    """
    y01, p = _xy(y, prob)
    if not math.isfinite(float(cutoff)):
        raise ValueError(f"cutoff must be a finite float; got {cutoff!r}.")
    pred = p >= float(cutoff)
    pos, neg = y01 == 1, y01 == 0
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    auc = lo = hi = None
    if n_pos >= 2 and n_neg >= 2:
        auc, lo, hi = delong_ci(y01, p, 0.95)
    elif n_pos and n_neg:
        auc = float(roc_auc_score(y01, p))
    return BinaryMetrics(
        sensitivity=float(np.mean(pred[pos])) if n_pos else None,
        specificity=float(np.mean(~pred[neg])) if n_neg else None,
        accuracy=float(np.mean(pred == pos)),
        auc=auc,
        auc_lo=lo,
        auc_hi=hi,
        cutoff=float(cutoff),
        n=int(y01.size),
        n_pos=n_pos,
    )


def roc_curve_data(y: ArrayLike, scores: ArrayLike) -> dict[str, Any]:
    """ROC points and AUC with DeLong 95% CI, as plain lists for :func:`training.figures.plot_roc`."""
    y01, s = _xy(y, scores)
    fpr, tpr, _ = roc_curve(y01, s)
    auc, lo, hi = delong_ci(y01, s, 0.95)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc, "auc_lo": lo, "auc_hi": hi}


def delong_table(
    y: ArrayLike, scores: Mapping[str, ArrayLike], set_name: str = "test"
) -> list[dict[str, Any]]:
    """Pairwise DeLong tests between every two models scored on the same cases of one set."""
    rows = []
    for a, b in itertools.combinations(list(scores), 2):
        y01, sa = _xy(y, scores[a])
        _, sb = _xy(y, scores[b])
        z, p = delong_test(y01, sa, sb)
        rows.append(
            {
                "set": set_name,
                "model_a": a,
                "model_b": b,
                "auc_a": float(roc_auc_score(y01, sa)),
                "auc_b": float(roc_auc_score(y01, sb)),
                "z": z if math.isfinite(z) else None,
                "p": p,
            }
        )
    return rows


def _logistic_params(
    y01: np.ndarray, exog: np.ndarray, offset: np.ndarray | None = None
) -> np.ndarray | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sm.GLM(y01, exog, family=sm.families.Binomial(), offset=offset).fit()
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError):
        return None
    params = np.asarray(res.params, dtype=np.float64)
    if not res.converged or not np.all(np.isfinite(params)) or np.max(np.abs(params)) > 1e3:
        return None
    return params


def calibration(
    y: ArrayLike, prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform"
) -> dict[str, Any]:
    """Brier score, calibration slope and intercept, and the binned calibration curve.

    - ``slope``: coefficient of ``logit(prob)`` in a logistic regression of ``y`` on it (logistic
      recalibration); 1 is ideal, < 1 means overfitted (too extreme) predictions.
    - ``intercept``: calibration-in-the-large, the intercept of a logistic model with
      ``logit(prob)`` as an offset (slope fixed at 1); 0 is ideal, > 0 means risks are
      under-estimated on average. This is the convention of ``rms::val.prob``'s "Intercept".
    - ``curve``: mean predicted probability and observed event fraction per non-empty bin
      (binned as ``sklearn.calibration.calibration_curve``; ``strategy`` "uniform" or
      "quantile"), with the number of cases per bin.

    Slope and intercept are ``None`` when not estimable (one class only, separation).
    Probabilities are clipped to [1e-8, 1 - 1e-8] before the logit.
    """
    y01, p = _xy(y, prob)
    _probabilities(p)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}.")
    lp = logit(np.clip(p, _EPS, 1.0 - _EPS))
    slope = intercept = None
    if np.unique(y01).size == 2:
        fitted = _logistic_params(y01, sm.add_constant(lp, has_constant="add"))
        if fitted is not None:
            slope = float(fitted[1])
        citl = _logistic_params(y01, np.ones((y01.size, 1)), offset=lp)
        if citl is not None:
            intercept = float(citl[0])
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(p, np.linspace(0.0, 100.0, n_bins + 1))
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile'; got {strategy!r}.")
    # same binning as sklearn.calibration.calibration_curve, keeping the bin counts
    bins = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(bins, minlength=n_bins)
    filled = counts > 0
    mean_pred = np.bincount(bins, weights=p, minlength=n_bins)[filled] / counts[filled]
    frac = np.bincount(bins, weights=y01, minlength=n_bins)[filled] / counts[filled]
    return {
        "brier": float(brier_score_loss(y01, p)),
        "slope": slope,
        "intercept": intercept,
        "n": int(y01.size),
        "curve": {
            "mean_predicted": mean_pred.tolist(),
            "fraction_positive": frac.tolist(),
            "count": [int(c) for c in counts[filled]],
        },
    }


def decision_curve(
    y: ArrayLike, prob: ArrayLike, thresholds: ArrayLike | None = None
) -> dict[str, list[float]]:
    """Net benefit of the model, of treating all and of treating none across threshold probabilities.

    Net benefit at threshold ``pt`` = TP/n - FP/n * pt / (1 - pt), calling positive if
    ``prob >= pt`` (Vickers & Elkin 2006). Default thresholds: 0.01, 0.02, ..., 0.99.
    """
    y01, p = _xy(y, prob)
    _probabilities(p)
    t = _thresholds(thresholds)
    n = y01.size
    prevalence = float(y01.mean())
    odds = t / (1.0 - t)
    calls = p[np.newaxis, :] >= t[:, np.newaxis]
    tp = (calls & (y01 == 1)).sum(axis=1) / n
    fp = (calls & (y01 == 0)).sum(axis=1) / n
    return {
        "thresholds": t.tolist(),
        "net_benefit_model": (tp - fp * odds).tolist(),
        "net_benefit_all": (prevalence - (1.0 - prevalence) * odds).tolist(),
        "net_benefit_none": [0.0] * t.size,
    }


def clinical_impact(
    y: ArrayLike, prob: ArrayLike, thresholds: ArrayLike | None = None, population: int = 1000
) -> dict[str, list[float]]:
    """Clinical impact curve: of ``population`` patients, how many the model calls high risk and how
    many of those have the event, at each threshold probability (Kerr et al. 2016)."""
    y01, p = _xy(y, prob)
    _probabilities(p)
    if population <= 0:
        raise ValueError(f"population must be > 0; got {population}.")
    t = _thresholds(thresholds)
    calls = p[np.newaxis, :] >= t[:, np.newaxis]
    return {
        "thresholds": t.tolist(),
        "n_high_risk": (population * calls.mean(axis=1)).tolist(),
        "n_high_risk_with_event": (population * (calls & (y01 == 1)).mean(axis=1)).tolist(),
    }


@dataclass(frozen=True)
class Nomogram:
    """Points nomogram of a logistic model, as in the paper's fusion-model figure.

    Each variable's points are linear in its value, 0 at the end of its range with the lowest
    contribution to the linear predictor; the variable with the widest effect range
    (|coef| x (max - min)) spans 0-100 points, the others proportionally. Total points map back to
    the linear predictor exactly, so :meth:`probability` of the total equals the model's predicted
    probability. Coefficients must be on the units of the values (see
    :func:`training.models.raw_coefficients`).
    """

    coefs: dict[str, float]
    intercept: float
    ranges: dict[str, tuple[float, float]]
    points_per_lp: float = field(repr=False)
    lp_at_zero_points: float = field(repr=False)

    @classmethod
    def from_logistic(
        cls, coefs: Mapping[str, float], intercept: float, ranges: Mapping[str, Sequence[float]]
    ) -> Nomogram:
        """Build from per-unit coefficients, the intercept and each variable's (min, max)."""
        if not coefs:
            raise ValueError("coefs is empty.")
        clean_ranges: dict[str, tuple[float, float]] = {}
        for name in coefs:
            if name not in ranges:
                raise ValueError(
                    f"no range given for variable {name!r} (pass the intercept separately, "
                    "not inside coefs)."
                )
            lo, hi = (float(v) for v in ranges[name])
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
                raise ValueError(
                    f"range of {name!r} must be finite with min < max; got {ranges[name]!r}."
                )
            clean_ranges[name] = (lo, hi)
        clean = {name: float(c) for name, c in coefs.items()}
        widest = max(abs(c) * (clean_ranges[n][1] - clean_ranges[n][0]) for n, c in clean.items())
        if not widest > 0:
            raise ValueError("every coefficient is zero; a nomogram needs at least one effect.")
        base = float(intercept) + sum(
            min(c * clean_ranges[n][0], c * clean_ranges[n][1]) for n, c in clean.items()
        )
        return cls(clean, float(intercept), clean_ranges, 100.0 / widest, base)

    def variable_points(self, name: str, value: float | np.ndarray) -> float | np.ndarray:
        """Points of one variable at ``value`` (values outside its range extrapolate); an array
        of values gives an array (serving scores a request's rows at once)."""
        c = self.coefs[name]
        lo, hi = self.ranges[name]
        points = (c * np.asarray(value, dtype=np.float64) - min(c * lo, c * hi)) * self.points_per_lp
        return float(points) if points.ndim == 0 else points

    def points(self, values: Mapping[str, float]) -> dict[str, float]:
        """Points of each variable at ``values``."""
        missing = set(self.coefs) - set(values)
        if missing:
            raise ValueError(f"values lack variable(s) {sorted(missing)}.")
        return {name: self.variable_points(name, values[name]) for name in self.coefs}

    def total_points(self, values: Mapping[str, float]) -> float:
        """Sum of the variables' points at ``values``."""
        return float(sum(self.points(values).values()))

    def linear_predictor(self, total_points: float | np.ndarray) -> float | np.ndarray:
        """Log-odds corresponding to ``total_points`` (an array gives an array)."""
        lp = self.lp_at_zero_points + np.asarray(total_points, dtype=np.float64) / self.points_per_lp
        return float(lp) if lp.ndim == 0 else lp

    def probability(self, total_points: float) -> float:
        """Predicted probability corresponding to ``total_points``."""
        return float(expit(self.linear_predictor(total_points)))

    def total_points_for_probability(self, probability: float) -> float:
        """Inverse of :meth:`probability`, to place probability ticks on the total-points axis."""
        if not 0.0 < probability < 1.0:
            raise ValueError(f"probability must be in (0, 1); got {probability!r}.")
        return float((logit(probability) - self.lp_at_zero_points) * self.points_per_lp)

    def max_total_points(self) -> float:
        """Total points with every variable at its highest-contribution end."""
        return float(
            sum(abs(c) * (self.ranges[n][1] - self.ranges[n][0]) for n, c in self.coefs.items())
            * self.points_per_lp
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON and for :func:`training.figures.plot_nomogram`."""
        return {
            "coefs": dict(self.coefs),
            "intercept": self.intercept,
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "points_per_lp": self.points_per_lp,
            "lp_at_zero_points": self.lp_at_zero_points,
        }
