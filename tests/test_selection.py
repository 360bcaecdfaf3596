"""Selectors (sklearn conformance, behaviour) and the imaging/clinical pipelines built from them."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.svm import l1_min_c
from sklearn.utils.estimator_checks import parametrize_with_checks

from training.models import (
    coefficients,
    cv_auc,
    imaging_score,
    make_clinical_pipeline,
    make_fusion_pipeline,
    make_imaging_pipeline,
    raw_coefficients,
    selected_features,
)
from training.selection import (
    BackwardAICSelector,
    InvalidParameterError,
    LassoCVSelector,
    TTestSelector,
)

# No check is marked as an expected failure: all three selectors pass every check. They accept a
# binary target only and declare it with ClassifierTags(multi_class=False), which makes the checks
# feed binary targets. LassoCVSelector runs with a smaller grid here only to keep the suite fast.


@parametrize_with_checks(
    [TTestSelector(), LassoCVSelector(cv=5, Cs=8), BackwardAICSelector()],
    expected_failed_checks=lambda estimator: {},
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def _planted(
    n: int = 150, p: int = 300, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Noise columns plus three planted informative ones with different scales and offsets."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) * rng.uniform(0.5, 50, p) + rng.uniform(-100, 100, p)
    z = rng.normal(size=(n, 3))
    lp = 1.3 * z[:, 0] - 1.1 * z[:, 1] + 0.9 * z[:, 2]
    y = (rng.random(n) < 1 / (1 + np.exp(-lp))).astype(int)
    names = [f"rad_f{i:04d}" for i in range(p)]
    planted = ["rad_f0007", "rad_f0123", "rad_f0250"]
    for j, name in enumerate(planted):
        X[:, names.index(name)] = 30 * z[:, j] + 500
    return pd.DataFrame(X, columns=names), y, planted


@pytest.fixture(scope="module")
def planted():
    return _planted()


@pytest.fixture(scope="module")
def fitted_lr(planted):
    X, y, _ = planted
    return make_imaging_pipeline("lr", random_state=0).fit(X, y)


# --- parameters and targets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("estimator", "message"),
    [
        (
            TTestSelector(alpha=2),
            "The 'alpha' parameter of TTestSelector must be a float in (0, 1). Got 2 instead.",
        ),
        (
            TTestSelector(min_features=-1),
            "The 'min_features' parameter of TTestSelector must be an int in [0, inf). Got -1 instead.",
        ),
        (
            LassoCVSelector(cv=1),
            "The 'cv' parameter of LassoCVSelector must be an int in [2, inf). Got 1 instead.",
        ),
        (LassoCVSelector(Cs=[0.1, -1]), "The 'Cs' parameter of LassoCVSelector must be"),
        (
            LassoCVSelector(max_features=0),
            "The 'max_features' parameter of LassoCVSelector must be an int in [1, inf) or None.",
        ),
        (
            LassoCVSelector(lambda_min_ratio=1.5),
            "The 'lambda_min_ratio' parameter of LassoCVSelector must be a float in (0, 1) or None.",
        ),
        (
            BackwardAICSelector(max_features=0.5),
            "The 'max_features' parameter of BackwardAICSelector must be an int in [1, inf). Got 0.5 instead.",
        ),
        (
            BackwardAICSelector(ridge=0),
            "The 'ridge' parameter of BackwardAICSelector must be a float in (0, inf). Got 0 instead.",
        ),
    ],
)
def test_invalid_parameters_fail_in_fit_with_sklearn_message(estimator, message):
    X, y = make_classification(n_samples=40, n_features=4, random_state=0)
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        estimator.fit(X, y)
    assert issubclass(InvalidParameterError, ValueError) and issubclass(
        InvalidParameterError, TypeError
    )


@pytest.mark.parametrize(
    "selector", [TTestSelector(), LassoCVSelector(cv=3, Cs=3), BackwardAICSelector()]
)
def test_multiclass_target_is_refused(selector):
    X, y = make_classification(
        n_samples=60, n_features=4, n_informative=3, n_redundant=0, n_classes=3, random_state=0
    )
    with pytest.raises(ValueError, match="binary target with two classes; got 3 classes"):
        selector.fit(X, y)


# --- TTestSelector ----------------------------------------------------------------------------


def test_ttest_matches_scipy_welch_and_never_keeps_constant_columns():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(30, int), np.zeros(40, int)]
    X = rng.normal(size=(70, 6))
    X[:30, 0] += 1.5
    X[:, 1] = 3.0  # constant
    X[:30, 2] *= 4  # unequal variances, same mean
    sel = TTestSelector().fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy on the constant column
        t, p = stats.ttest_ind(X[y == 1], X[y == 0], equal_var=False)
        p_pooled = stats.ttest_ind(X[y == 1], X[y == 0])[1]
    ok = np.arange(6) != 1
    assert np.allclose(sel.pvalues_[ok], p[ok]) and np.allclose(sel.scores_[ok], t[ok])
    assert sel.pvalues_[1] == 1.0 and sel.scores_[1] == 0.0
    assert sel.get_support()[0] and not sel.get_support()[1]
    assert sel.get_support().sum() == int(np.sum(p[ok] < 0.05))
    pooled = TTestSelector(equal_var=True).fit(X, y)
    assert np.allclose(pooled.pvalues_[ok], p_pooled[ok])


def test_ttest_min_features_fallback_keeps_smallest_p():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(60, 8)), rng.integers(0, 2, 60)
    X[:, 3] = 0.0
    sel = TTestSelector(alpha=1e-9, min_features=3).fit(X, y)
    assert sel.used_fallback_
    expected = np.argsort(np.where(np.arange(8) == 3, np.inf, sel.pvalues_))[:3]
    assert sorted(sel.get_support(indices=True)) == sorted(expected)
    assert TTestSelector(alpha=1e-9, min_features=0).fit(X, y).get_support().sum() == 0


def test_selectors_keep_pandas_names_with_set_output(planted):
    X, y, planted_names = planted
    out = TTestSelector().set_output(transform="pandas").fit_transform(X, y)
    assert isinstance(out, pd.DataFrame)
    assert set(planted_names) <= set(out.columns)
    assert list(out.columns) == list(TTestSelector().fit(X, y).get_feature_names_out())


# --- LassoCVSelector --------------------------------------------------------------------------


def test_lasso_keeps_nonzero_coefficients_and_can_cap(planted):
    X, y, planted_names = planted
    sel = LassoCVSelector(cv=5, Cs=10).fit(X[planted_names + ["rad_f0001", "rad_f0002"]], y)
    assert np.array_equal(sel.get_support(), sel.coef_ != 0)
    assert sel.C_ in sel.Cs_ and sel.cv_scores_.shape == sel.Cs_.shape
    capped = LassoCVSelector(cv=5, Cs=10, max_features=2).fit(X[planted_names + ["rad_f0001"]], y)
    assert capped.get_support().sum() == 2


def test_lasso_grid_follows_glmnet_lambda_path(planted):
    X, y, planted_names = planted  # 150 rows x 300 columns: fewer rows than features
    Xz = (X - X.mean()) / X.std()
    sel = LassoCVSelector(cv=5, Cs=6).fit(Xz, y)
    assert sel.Cs_ == pytest.approx(c_min_of(Xz, y) * np.logspace(0, 2, 6))  # lambda.min.ratio 0.01
    tall = Xz.iloc[:, :20]  # more rows than features: glmnet's 1e-4
    assert LassoCVSelector(cv=5, Cs=3).fit(tall, y).Cs_[-1] / c_min_of(tall, y) == pytest.approx(1e4)
    own = LassoCVSelector(cv=5, Cs=3, lambda_min_ratio=0.1).fit(tall, y)
    assert own.Cs_[-1] / own.Cs_[0] == pytest.approx(10.0)
    # the search never reaches the unpenalised end, where an L1 fit on 150 rows keeps hundreds
    # of noise columns: the survivors are fewer than the rows and include the planted ones
    assert sel.get_support().sum() < len(y) / 2
    assert set(planted_names) <= set(sel.get_feature_names_out())


def c_min_of(X: pd.DataFrame, y: np.ndarray) -> float:
    return float(l1_min_c(X.to_numpy(), y, loss="log", fit_intercept=True))


def test_lasso_all_zero_falls_back_to_one_feature():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(60, 5)), rng.integers(0, 2, 60)
    X[:, 2] += 2 * y
    # a constant score ties every C, so the strongest penalty (all coefficients zero) is chosen
    sel = LassoCVSelector(cv=3, Cs=[1e-4, 1e-3, 10.0], scoring=lambda est, X, y: 0.0).fit(X, y)
    assert sel.C_ == pytest.approx(1e-4) and not np.any(sel.coef_)
    assert sel.used_fallback_ and list(sel.get_support(indices=True)) == [2]


def test_lasso_reduces_folds_for_a_small_class():
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(30, 3)), np.r_[np.ones(4, int), np.zeros(26, int)]
    with pytest.warns(UserWarning, match="using 4 folds"):
        sel = LassoCVSelector(cv=10, Cs=4).fit(X, y)
    assert sel.n_splits_ == 4


# --- BackwardAICSelector ----------------------------------------------------------------------


def test_backward_aic_first_step_matches_statsmodels():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, 5))
    y = (rng.random(200) < 1 / (1 + np.exp(-(1.5 * X[:, 0] - X[:, 1])))).astype(int)
    sel = BackwardAICSelector(max_features=19).fit(X, y)
    full = sm.Logit(y, sm.add_constant(X)).fit(disp=0).aic
    drops = [
        sm.Logit(y, sm.add_constant(np.delete(X, j, axis=1))).fit(disp=0).aic for j in range(5)
    ]
    assert sel.aic_path_[0]["removed"] == int(np.argmin(drops))
    assert sel.aic_path_[0]["aic"] == pytest.approx(min(drops), rel=1e-6)
    assert min(drops) < full and not sel.aic_path_[0]["forced"]
    assert {0, 1} <= set(sel.get_support(indices=True))
    assert sel.n_ridge_fits_ == 0


def test_backward_aic_forces_removal_down_to_max_features():
    X, y = make_classification(
        n_samples=300, n_features=12, n_informative=10, n_redundant=0, random_state=0
    )
    sel = BackwardAICSelector(max_features=4).fit(X, y)
    assert sel.get_support().sum() <= 4
    assert any(step["forced"] for step in sel.aic_path_)


def test_backward_aic_survives_separation_collinearity_and_constants():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(40, 7))
    y = (X[:, 0] > 0).astype(int)  # perfectly separated by column 0
    X[:, 4] = X[:, 3]  # duplicate
    X[:, 5] = 1.0  # constant
    X[:, 6] = X[:, 1] - 2 * X[:, 2]  # exact linear combination
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and without leaking warnings
        sel = BackwardAICSelector(max_features=3).fit(X, y)
    support = sel.get_support(indices=True)
    assert 0 in support and 5 not in support and len(support) <= 3
    assert sel.n_ridge_fits_ > 0 and np.isfinite(sel.aic_)


def test_backward_aic_more_columns_than_rows():
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(25, 40)), np.r_[np.ones(12, int), np.zeros(13, int)]
    sel = BackwardAICSelector(max_features=5).fit(X, y)
    assert 1 <= sel.get_support().sum() <= 5


# --- pipelines --------------------------------------------------------------------------------


def test_chain_keeps_planted_features_and_ends_below_20(fitted_lr, planted):
    _, _, planted_names = planted
    chosen = selected_features(fitted_lr)
    assert set(planted_names) <= set(chosen)
    assert 1 <= len(chosen) < 20
    coefs = coefficients(fitted_lr)
    assert list(coefs) == [*chosen, "intercept"]
    assert all(isinstance(v, float) for v in coefs.values())


def test_imaging_score_is_the_linear_predictor(fitted_lr, planted):
    X, _, _ = planted
    coefs = coefficients(fitted_lr)
    intercept = coefs.pop("intercept")
    scaler = fitted_lr.named_steps["scale"]
    Z = pd.DataFrame(scaler.transform(X), columns=X.columns)[list(coefs)]
    expected = Z.to_numpy() @ np.array(list(coefs.values())) + intercept
    score = imaging_score(fitted_lr, X)
    assert np.allclose(score, expected)
    assert np.allclose(1 / (1 + np.exp(-score)), fitted_lr.predict_proba(X)[:, 1])
    raw = raw_coefficients(fitted_lr)
    b0 = raw.pop("intercept")
    assert np.allclose(X[list(raw)].to_numpy() @ np.array(list(raw.values())) + b0, score)


def test_no_leakage_from_held_out_rows(planted):
    X, y, _ = planted
    train = np.arange(y.size) < 110
    first = make_imaging_pipeline("lr", random_state=0).fit(X[train], y[train])
    scaler = first.named_steps["scale"]
    assert np.allclose(scaler.mean_, X[train].mean().to_numpy())
    assert np.allclose(scaler.scale_, X[train].std(ddof=0).to_numpy())
    # held-out labels permuted: the fit on the training rows is bit-for-bit identical
    rng = np.random.default_rng(0)
    y2 = y.copy()
    y2[~train] = rng.permutation(y2[~train])
    second = make_imaging_pipeline("lr", random_state=0).fit(X[train], y2[train])
    assert selected_features(first) == selected_features(second)
    assert coefficients(first) == coefficients(second)
    for name in ("ttest", "lasso", "aic"):
        assert np.array_equal(first.named_steps[name].support_, second.named_steps[name].support_)
    # held-out features shuffled too: same selection, same fit (up to memory-layout rounding)
    X3 = X.copy()
    X3.loc[~train] = rng.permutation(X3.loc[~train].to_numpy())
    third = make_imaging_pipeline("lr", random_state=0).fit(X3[train], y2[train])
    assert selected_features(third) == selected_features(first)
    assert np.allclose(
        list(coefficients(third).values()), list(coefficients(first).values()), rtol=1e-10
    )


def test_cv_auc_refits_per_fold(planted):
    X, y, planted_names = planted
    small = X[planted_names + [f"rad_f{i:04d}" for i in range(20, 60)]]
    mean, folds = cv_auc(
        make_imaging_pipeline("lr", random_state=0, lasso_cv=5, lasso_Cs=8), small, y, folds=3
    )
    assert len(folds) == 3 and mean == pytest.approx(np.mean(folds))
    assert mean > 0.75


@pytest.mark.parametrize("kind", ["rf", "svm"])
def test_other_classifiers(planted, kind):
    X, y, planted_names = planted
    small = X[planted_names + [f"rad_f{i:04d}" for i in range(20, 40)]]
    pipe = make_imaging_pipeline(kind, random_state=0, lasso_cv=5, lasso_Cs=8).fit(small, y)
    prob = pipe.predict_proba(small)[:, 1]
    assert prob.shape == (y.size,) and np.all((prob >= 0) & (prob <= 1))
    assert set(planted_names) <= set(selected_features(pipe))
    with pytest.raises(TypeError, match="LogisticRegression"):
        imaging_score(pipe, small)


def test_unknown_classifier():
    with pytest.raises(ValueError, match="The 'classifier' parameter of make_imaging_pipeline"):
        make_imaging_pipeline("xgb")


def test_clinical_and_fusion_pipelines_scale_inside_and_ignore_other_columns():
    rng = np.random.default_rng(8)
    n = 120
    df = pd.DataFrame(
        {
            "age": rng.normal(45, 12, n),
            "sex": rng.integers(0, 2, n),
            "who_grade": rng.choice([3, 4], n),
            "vasari_score": rng.normal(10, 3, n),
            "imaging_score": rng.normal(0, 2, n),
            "patient_id": np.arange(n),
        }
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-df["imaging_score"]))).astype(int)
    clinical = make_clinical_pipeline().fit(df, y)
    fusion = make_fusion_pipeline().fit(df, y)
    assert selected_features(clinical) == ["age", "sex", "who_grade", "vasari_score"]
    assert selected_features(fusion) == ["imaging_score", "age", "sex", "who_grade", "vasari_score"]
    raw = raw_coefficients(fusion)
    b0 = raw.pop("intercept")
    assert np.allclose(
        df[list(raw)].to_numpy() @ np.array(list(raw.values())) + b0, fusion.decision_function(df)
    )
    # near-unpenalised: matches an unpenalised fit on the raw columns
    ref = LogisticRegression(C=np.inf, max_iter=10_000).fit(df[list(raw)], y)
    assert np.allclose(list(raw.values()), ref.coef_.ravel(), rtol=1e-2, atol=1e-3)
