"""DeLong AUC variance, CI and paired test against hand-derived values and the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from training.delong import delong_auc_variance, delong_ci, delong_covariance, delong_test

# Worked example, structural components by hand (psi = 1 if pos > neg, 1/2 if tied, 0 otherwise):
# positives 0.9, 0.8, 0.4; negatives 0.7, 0.3, 0.2
#   V10 (per positive) = 1, 1, 2/3     V01 (per negative) = 2/3, 1, 1
#   AUC = 8/9;  S10 = S01 = sample variance of (1, 1, 2/3) = (1/81 + 1/81 + 4/81) / 2 = 1/27
#   Var = S10/3 + S01/3 = 2/81
# With the tie: negatives 0.4, 0.3, 0.2
#   V10 = 1, 1, 5/6     V01 = 5/6, 1, 1     AUC = 17/18
#   S10 = S01 = (1/324 + 1/324 + 4/324) / 2 = 1/108;  Var = 2/324 = 1/162
Y6 = np.array([1, 1, 1, 0, 0, 0])


@pytest.mark.parametrize(
    ("scores", "auc", "var"),
    [
        ([0.9, 0.8, 0.4, 0.7, 0.3, 0.2], 8 / 9, 2 / 81),
        ([0.9, 0.8, 0.4, 0.4, 0.3, 0.2], 17 / 18, 1 / 162),
    ],
)
def test_worked_example(scores, auc, var):
    got_auc, got_var = delong_auc_variance(Y6, scores)
    assert got_auc == pytest.approx(auc, abs=1e-12)
    assert got_var == pytest.approx(var, abs=1e-12)


def test_worked_example_ci_is_clipped():
    auc, lo, hi = delong_ci(Y6, [0.9, 0.8, 0.4, 0.4, 0.3, 0.2])
    half = stats.norm.ppf(0.975) * np.sqrt(1 / 162)
    assert auc == pytest.approx(17 / 18)
    assert lo == pytest.approx(17 / 18 - half)
    assert hi == 1.0


def test_perfect_separation_has_zero_width():
    assert delong_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0, 1.0)


def _data(rng, m=80, n=120, shift=1.0):
    y = np.r_[np.ones(m, int), np.zeros(n, int)]
    signal = np.r_[rng.normal(shift, 1, m), rng.normal(0, 1, n)]
    return y, signal


def test_auc_matches_sklearn():
    rng = np.random.default_rng(1)
    y, s = _data(rng)
    s = np.round(s, 1)  # ties
    assert delong_auc_variance(y, s)[0] == pytest.approx(roc_auc_score(y, s))
    perm = rng.permutation(y.size)
    assert delong_auc_variance(y[perm], s[perm])[0] == pytest.approx(roc_auc_score(y, s))


def _auc_rows(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each row of ``scores`` (resamples x cases) by the rank-sum formula."""
    m, n = int(y.sum()), int((1 - y).sum())
    ranks = rankdata(scores, axis=1)
    return (ranks[:, y == 1].sum(axis=1) - m * (m + 1) / 2) / (m * n)


def test_variance_and_paired_covariance_match_bootstrap():
    rng = np.random.default_rng(2024)
    y, signal = _data(rng)
    a = signal + rng.normal(0, 0.5, y.size)
    b = signal + rng.normal(0, 1.0, y.size)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boot = np.concatenate(
        [rng.choice(pos, (2000, pos.size)), rng.choice(neg, (2000, neg.size))], axis=1
    )  # stratified resamples, as pROC does; positives first in every row
    yb = np.r_[np.ones(pos.size, int), np.zeros(neg.size, int)]
    auc_a, auc_b = _auc_rows(yb, a[boot]), _auc_rows(yb, b[boot])
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    assert aucs == pytest.approx([roc_auc_score(y, a), roc_auc_score(y, b)])
    assert cov[0, 0] == pytest.approx(np.var(auc_a, ddof=1), rel=0.15)
    assert cov[1, 1] == pytest.approx(np.var(auc_b, ddof=1), rel=0.15)
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert var_diff == pytest.approx(np.var(auc_a - auc_b, ddof=1), rel=0.15)


def test_identical_scores_give_p_one():
    rng = np.random.default_rng(3)
    y, s = _data(rng, 30, 40)
    assert delong_test(y, s, s) == (0.0, 1.0)
    assert delong_test(y, s, 2 * s + 1) == (0.0, 1.0)  # same ranks, same AUC


def test_test_is_antisymmetric():
    rng = np.random.default_rng(4)
    y, s = _data(rng, 30, 40)
    other = s + rng.normal(0, 1, s.size)
    z1, p1 = delong_test(y, s, other)
    z2, p2 = delong_test(y, other, s)
    assert z1 == pytest.approx(-z2)
    assert p1 == pytest.approx(p2)
    assert 0.0 <= p1 <= 1.0


def test_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(5)
    pvalues = []
    for _ in range(400):
        y, signal = _data(rng, 40, 60, shift=0.8)
        # two equally good, correlated markers: equal true AUC
        pvalues.append(
            delong_test(y, signal + rng.normal(0, 1, y.size), signal + rng.normal(0, 1, y.size))[1]
        )
    pvalues = np.asarray(pvalues)
    assert 0.02 <= np.mean(pvalues < 0.05) <= 0.09
    assert stats.kstest(pvalues, "uniform").pvalue > 0.01


def test_power_against_a_better_marker():
    rng = np.random.default_rng(6)
    y, signal = _data(rng, 100, 100, shift=1.5)
    z, p = delong_test(y, signal, rng.normal(0, 1, y.size))
    assert z > 0 and p < 1e-6


@pytest.mark.parametrize(
    ("y", "scores", "match"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "both classes"),
        ([1, 0, 1, 0], [0.1, np.nan, 0.3, 0.4], "NaN"),
        ([1, 0, 1, 0], [0.1, 0.2, 0.3], "shape"),
        ([1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], "at least 2 positives"),
    ],
)
def test_bad_input(y, scores, match):
    with pytest.raises(ValueError, match=match):
        delong_auc_variance(y, scores)


def test_ci_level_is_validated():
    with pytest.raises(
        ValueError, match=r"The 'alpha' parameter of delong_ci must be a float in \(0, 1\)"
    ):
        delong_ci(Y6, [0.9, 0.8, 0.4, 0.7, 0.3, 0.2], alpha=95)
