"""DeLong AUC variance, confidence interval and paired test (fast midrank algorithm).

The paper reports every AUC with a DeLong 95% CI and compares models with DeLong's paired test;
this module reproduces both with the O(n log n) algorithm of Sun & Xu (2014), "Fast
implementation of DeLong's algorithm for comparing the areas under correlated receiver operating
characteristic curves", IEEE Signal Processing Letters 21(11), using the unbiased (ddof=1)
structural-component covariances, as pROC does.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata

__all__ = ["delong_auc_variance", "delong_ci", "delong_covariance", "delong_test"]


def _binary_labels(y_true: ArrayLike) -> np.ndarray:
    y = np.asarray(y_true).ravel()
    classes = np.unique(y)
    if classes.size != 2:
        raise ValueError(
            f"DeLong needs a binary target with both classes present; got {classes.size} class(es)."
        )
    # the larger label is the positive class, as in sklearn's roc_auc_score for {0, 1}
    return y == classes[1]


def _score_matrix(scores: ArrayLike, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    if s.ndim == 1:
        s = s[np.newaxis, :]
    if s.ndim != 2 or s.shape[1] != n:
        raise ValueError(
            f"scores must have shape (n_samples,) or (n_models, n_samples) with n_samples={n}; got {s.shape}."
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity.")
    return s


def delong_covariance(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for one or several score vectors on the same cases.

    ``scores`` is ``(n_samples,)`` or ``(n_models, n_samples)``; returns ``(aucs, cov)`` with shapes
    ``(n_models,)`` and ``(n_models, n_models)``.
    """
    pos = _binary_labels(y_true)
    s = _score_matrix(scores, pos.size)
    x, yneg = s[:, pos], s[:, ~pos]
    m, n = x.shape[1], yneg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(
            f"DeLong variance needs at least 2 positives and 2 negatives; got {m} and {n}."
        )
    tx = rankdata(x, axis=1)  # midranks within positives
    ty = rankdata(yneg, axis=1)  # midranks within negatives
    tz = rankdata(np.concatenate([x, yneg], axis=1), axis=1)  # midranks in the pooled sample
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives scored below it (ties = 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives scored above it
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def delong_auc_variance(y_true: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """Return ``(auc, variance)`` of one score vector by DeLong's method."""
    aucs, cov = delong_covariance(y_true, scores)
    if aucs.size != 1:
        raise ValueError(
            "delong_auc_variance takes one score vector; use delong_covariance for several."
        )
    return float(aucs[0]), float(cov[0, 0])


def delong_ci(
    y_true: ArrayLike, scores: ArrayLike, alpha: float = 0.95
) -> tuple[float, float, float]:
    """Return ``(auc, lower, upper)``: the ``alpha`` (e.g. 0.95) DeLong CI, clipped to [0, 1].

    ``alpha`` is the confidence level, not the error rate, to match how the paper states its CIs.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(
            f"The 'alpha' parameter of delong_ci must be a float in (0, 1). Got {alpha!r} instead."
        )
    auc, var = delong_auc_variance(y_true, scores)
    half = float(norm.ppf(0.5 + alpha / 2.0)) * np.sqrt(max(var, 0.0))
    return auc, float(max(0.0, auc - half)), float(min(1.0, auc + half))


def delong_test(y_true: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> tuple[float, float]:
    """Paired two-sided DeLong test of AUC(a) = AUC(b) on the same cases; returns ``(z, p)``.

    When the difference has zero variance (e.g. identical or rank-identical scores) and zero
    difference, the test is uninformative and ``(0.0, 1.0)`` is returned.
    """
    aucs, cov = delong_covariance(
        y_true, np.vstack([np.asarray(scores_a, float), np.asarray(scores_b, float)])
    )
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var <= 1e-15:
        if abs(diff) <= 1e-12:
            return 0.0, 1.0
        return float(np.sign(diff) * np.inf), 0.0
    z = diff / np.sqrt(var)
    return float(z), float(2.0 * norm.sf(abs(z)))
