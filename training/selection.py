"""Feature selectors of the Liu et al. 2024 protocol, as scikit-learn estimators.

The paper's chain is: Welch t-test (p < 0.05) -> LASSO logistic regression with the penalty chosen
by 10-fold CV on AUC -> backward stepwise AIC until fewer than 20 features remain. Each step is a
``SelectorMixin`` so the whole chain lives in one ``Pipeline`` and is refitted on training rows
only (no leakage through cross-validation), and each supports ``set_output(transform="pandas")``.
All three need a binary target.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import statsmodels.api as sm
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectorMixin
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import l1_min_c
from sklearn.utils import ClassifierTags
from sklearn.utils.validation import check_is_fitted, validate_data
from statsmodels.tools.sm_exceptions import (
    ConvergenceWarning as SMConvergenceWarning,
)
from statsmodels.tools.sm_exceptions import (
    PerfectSeparationError,
    PerfectSeparationWarning,
)
from threadpoolctl import threadpool_limits

from training._logit import loglik, ridge_logit
from training._validation import (
    BOOL,
    CALLABLE_OR_STR,
    INT_OR_NONE,
    POSITIVE_REAL,
    InvalidParameterError,
    Rule,
    binary_target,
    check_params,
    int_at_least,
    is_int,
    optional,
    positive_grid,
    real_between,
)

__all__ = ["BackwardAICSelector", "InvalidParameterError", "LassoCVSelector", "TTestSelector"]


class _BinarySelector(SelectorMixin, BaseEstimator):
    """Shared plumbing: parameter and input validation, tags and the support mask."""

    #: parameter -> rule, checked in this order by ``fit`` (``__init__`` only stores)
    _param_rules: ClassVar[dict[str, Rule]] = {}

    def _check_params(self) -> None:
        check_params(self, self._param_rules)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        # the target is a binary class label; this tag also makes sklearn's estimator checks feed
        # binary targets and check that a multiclass target is refused with a ValueError
        tags.classifier_tags = ClassifierTags(multi_class=False)
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags

    def _validate_xy(self, X: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], ensure_min_samples=2)
        classes, y01 = binary_target(self, y)
        self.classes_ = classes
        return X, y, y01

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "support_")
        return self.support_


class TTestSelector(_BinarySelector):
    """Keep columns whose two-sample t-test between classes has ``p < alpha``.

    The default is Welch's test (``equal_var=False``), as the paper screens features whose means
    differ between ATRX-mutant and wild-type without assuming equal variances. Columns with zero
    variance in the training rows never pass. If fewer than ``min_features`` columns pass, the
    ``min_features`` columns with the smallest p-values (among non-constant columns) are kept
    instead, so that a weak training fold still hands something to the next step.

    Attributes: ``scores_`` (t statistics, positive when the larger label has the larger mean),
    ``pvalues_`` (1.0 where the test is undefined), ``support_``, ``used_fallback_``.
    """

    _param_rules: ClassVar[dict[str, Rule]] = {
        "alpha": real_between(0.0, 1.0),
        "equal_var": BOOL,
        "min_features": int_at_least(0),
    }

    def __init__(self, alpha: float = 0.05, equal_var: bool = False, min_features: int = 1) -> None:
        self.alpha = alpha
        self.equal_var = equal_var
        self.min_features = min_features

    def fit(self, X: ArrayLike, y: ArrayLike) -> TTestSelector:
        """Compute per-column t-tests on the training rows and the support mask."""
        self._check_params()
        X, _, y01 = self._validate_xy(X, y)
        pos, neg = X[y01 == 1.0], X[y01 == 0.0]
        constant = np.ptp(X, axis=0) == 0
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t, p = stats.ttest_ind(pos, neg, axis=0, equal_var=bool(self.equal_var))
        t = np.asarray(t, dtype=np.float64)
        p = np.asarray(p, dtype=np.float64)
        undefined = constant | ~np.isfinite(p)
        p = np.where(undefined, 1.0, p)
        t = np.where(constant | np.isnan(t), 0.0, t)
        support = (p < self.alpha) & ~undefined
        self.used_fallback_ = bool(support.sum() < self.min_features)
        if self.used_fallback_:
            eligible = np.flatnonzero(~undefined)
            order = eligible[np.argsort(p[eligible], kind="stable")]
            support = np.zeros_like(support)
            support[order[: self.min_features]] = True
        self.scores_, self.pvalues_, self.support_ = t, p, support
        return self


class LassoCVSelector(_BinarySelector):
    """Keep the non-zero coefficients of an L1 logistic regression whose C is chosen by CV AUC.

    ``LogisticRegressionCV`` (liblinear, pure L1) searches ``Cs`` with ``cv`` stratified, shuffled
    folds seeded by ``random_state`` and refits at the best C. An int ``Cs`` is a log grid laid
    out like R glmnet's lambda path (the paper's analyses ran in R): from ``l1_min_c``, where the
    first feature enters, to ``1 / lambda_min_ratio`` times it; ``lambda_min_ratio=None`` is
    glmnet's default, 0.01 when there are fewer rows than features and 1e-4 otherwise. (liblinear's
    C is 1 / (n lambda), so ratios of C and of lambda match.) Without that lower bound on the
    penalty, CV AUC on ~150 rows and ~500 t-test survivors is often flat or highest at the weakest
    penalty, where the "LASSO" keeps hundreds of features and selects nothing. A sequence ``Cs``
    is used as given. When a class has fewer members than
    ``cv``, the number of folds drops to that size (at least 2) with a warning rather than failing
    on small training folds. Convergence warnings from the weakest penalties of the grid are
    silenced: those C values are rarely chosen and the warning says nothing about the chosen one.

    If the chosen C zeroes every coefficient, the selector walks up the C grid to the first, less
    strict, C that leaves a non-zero coefficient and keeps the single feature with the largest
    |coef| there (``used_fallback_``), so that the chain always goes on with one feature. If
    ``max_features`` is set, only that many features with the largest |coef| are kept.

    Attributes: ``C_``, ``coef_`` (at ``C_``), ``cv_scores_`` (mean CV score per C in ``Cs_``),
    ``Cs_``, ``n_splits_``, ``support_``, ``used_fallback_``.
    """

    _param_rules: ClassVar[dict[str, Rule]] = {
        "cv": int_at_least(2),
        "Cs": positive_grid(1),
        "scoring": CALLABLE_OR_STR,
        "random_state": INT_OR_NONE,
        "max_features": optional(int_at_least(1)),
        "lambda_min_ratio": optional(real_between(0.0, 1.0)),
    }

    def __init__(
        self,
        cv: int = 10,
        Cs: int | Sequence[float] = 20,
        scoring: str = "roc_auc",
        random_state: int | None = 0,
        max_features: int | None = None,
        lambda_min_ratio: float | None = None,
    ) -> None:
        self.cv = cv
        self.Cs = Cs
        self.scoring = scoring
        self.random_state = random_state
        self.max_features = max_features
        self.lambda_min_ratio = lambda_min_ratio

    def _grid(self, X: np.ndarray, y01: np.ndarray) -> int | np.ndarray:
        """The C values to search: glmnet's lambda path for an int ``Cs`` (see the class doc)."""
        if not is_int(self.Cs):
            return np.asarray(self.Cs, dtype=np.float64)
        ratio = self.lambda_min_ratio
        if ratio is None:
            ratio = 0.01 if X.shape[0] < X.shape[1] else 1e-4
        c_min = l1_min_c(X, y01, loss="log", fit_intercept=True)
        return c_min * np.logspace(0.0, np.log10(1.0 / ratio), int(self.Cs))

    def fit(self, X: ArrayLike, y: ArrayLike) -> LassoCVSelector:
        """Choose C by cross-validated score and keep the non-zero coefficients at that C."""
        self._check_params()
        X, y, y01 = self._validate_xy(X, y)
        smallest = int(min(np.sum(y01 == 1.0), np.sum(y01 == 0.0)))
        if smallest < 2:
            raise ValueError(
                f"LassoCVSelector needs at least 2 samples of each class for cross-validation; got {smallest}."
            )
        n_splits = min(int(self.cv), smallest)
        if n_splits < self.cv:
            warnings.warn(
                f"LassoCVSelector: the smallest class has {smallest} members; using {n_splits} folds "
                f"instead of cv={self.cv}.",
                UserWarning,
                stacklevel=2,
            )
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=self.random_state)
        search = LogisticRegressionCV(
            Cs=self._grid(X, y01),
            l1_ratios=(1.0,),
            solver="liblinear",
            cv=folds,
            scoring=self.scoring,
            random_state=self.random_state,
            max_iter=1000,
            use_legacy_attributes=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(X, y01)
        coef = search.coef_.ravel().astype(np.float64)
        self.Cs_ = np.asarray(search.Cs_, dtype=np.float64)
        self.cv_scores_ = (
            np.asarray(search.scores_, dtype=np.float64).reshape(n_splits, -1).mean(axis=0)
        )
        self.C_ = float(search.C_)
        self.n_splits_ = n_splits
        self.coef_ = coef
        support = coef != 0.0
        self.used_fallback_ = not support.any()
        if self.used_fallback_:
            support = self._fallback_support(X, y01)
        elif self.max_features is not None and support.sum() > self.max_features:
            keep = np.argsort(-np.abs(coef), kind="stable")[: self.max_features]
            support = np.zeros_like(support)
            support[keep] = True
        self.support_ = support
        return self

    def _fallback_support(self, X: np.ndarray, y01: np.ndarray) -> np.ndarray:
        support = np.zeros(X.shape[1], dtype=bool)
        coef = np.zeros(X.shape[1])
        for c in np.sort(self.Cs_[self.Cs_ > self.C_]):
            model = LogisticRegression(
                C=float(c),
                l1_ratio=1.0,
                solver="liblinear",
                max_iter=1000,
                random_state=self.random_state,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                coef = model.fit(X, y01).coef_.ravel()
            if np.any(coef != 0.0):
                break
        support[int(np.argmax(np.abs(coef)))] = True
        return support


_LOGLIK_FLOOR = -1e300
# |coefficient| per SD beyond which a Logit fit is treated as diverging (odds ratio > e^15)
_MAX_STANDARDISED_COEF = 15.0


class BackwardAICSelector(_BinarySelector):
    """Backward stepwise elimination of a logistic model by AIC, ending below ``max_features + 1``.

    Each step refits the model without each remaining feature and drops the one whose removal
    gives the lowest AIC. Removal continues while it lowers the AIC; while more than
    ``max_features`` features remain, the least useful (lowest AIC after removal) is dropped even if
    the AIC rises, which is the paper's "fewer than 20 features" rule with the default 19. The last
    feature is never removed.

    AIC = 2 (k + 1) - 2 log L of the maximum-likelihood fit from statsmodels ``Logit`` (Newton),
    on internally standardised columns (AIC does not depend on that scaling). Each model is
    first fitted with an L2 penalty ``ridge`` on the standardised coefficients (fast, warm-started
    from the parent model), which also starts the Newton iterations. When the MLE does not exist
    or cannot be trusted - the penalised fit already classifies every row correctly (complete
    separation), quasi-separation (|coef| beyond 15 per SD), a singular Hessian, no convergence,
    more parameters than rows - the model is scored by its unpenalised log-likelihood at the
    penalised estimate, with the nominal parameter count. Zero-variance columns are dropped
    before the search (no information, singular design). BLAS runs single-threaded during the
    search: it is thousands of small fits, where threads only add contention.

    Attributes: ``support_``, ``aic_`` (of the final model), ``aic_path_`` (one dict per step:
    removed feature index, AIC after removal, whether the removal was forced), ``n_ridge_fits_``
    (how many fits needed the penalised fallback).
    """

    _param_rules: ClassVar[dict[str, Rule]] = {
        "max_features": int_at_least(1),
        "ridge": POSITIVE_REAL,
    }

    def __init__(self, max_features: int = 19, ridge: float = 1.0) -> None:
        self.max_features = max_features
        self.ridge = ridge

    def _aic(
        self, Z: np.ndarray, y01: np.ndarray, cols: list[int], start: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        """AIC of the model on ``cols`` and its penalised estimate (to warm-start the sub-models)."""
        X1 = np.column_stack([np.ones(Z.shape[0]), Z[:, cols]])
        ridge_beta = ridge_logit(X1, y01, float(self.ridge), start=start)
        # A penalised fit that already classifies every row correctly proves complete separation:
        # the MLE does not exist, so skip the (slow, diverging) unpenalised attempt.
        separated = bool(np.all((X1 @ ridge_beta > 0) == (y01 == 1.0)))
        llf = None
        if not separated and X1.shape[1] < X1.shape[0]:
            llf = self._statsmodels_llf(X1, y01, ridge_beta)
        if llf is None:
            self.n_ridge_fits_ += 1
            llf = max(loglik(X1, y01, ridge_beta), _LOGLIK_FLOOR)
        return 2.0 * X1.shape[1] - 2.0 * llf, ridge_beta

    @staticmethod
    def _statsmodels_llf(X1: np.ndarray, y01: np.ndarray, start: np.ndarray) -> float | None:
        """Log-likelihood of the statsmodels ``Logit`` MLE, or None when that fit is not usable."""
        model = sm.Logit(y01, X1, check_rank=False)

        def stop_diverging(params: np.ndarray) -> None:
            # stop at the first sign of (quasi-)separation instead of iterating towards infinity
            if not np.all(np.abs(params) < _MAX_STANDARDISED_COEF):
                raise PerfectSeparationError("coefficients diverge (quasi-separation)")

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", PerfectSeparationWarning)
                warnings.simplefilter("ignore", SMConvergenceWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                res = model.fit(
                    start_params=start, method="newton", maxiter=35, disp=0, callback=stop_diverging
                )
        except (
            PerfectSeparationError,
            PerfectSeparationWarning,
            np.linalg.LinAlgError,
            ValueError,
        ):
            return None
        if not res.mle_retvals.get("converged", False) or not np.isfinite(res.llf):
            return None
        return float(res.llf)

    def fit(self, X: ArrayLike, y: ArrayLike) -> BackwardAICSelector:
        """Run the backward elimination on the training rows."""
        self._check_params()
        X, _, y01 = self._validate_xy(X, y)
        self.n_ridge_fits_ = 0
        sd = X.std(axis=0).astype(np.float64)
        active = [int(j) for j in np.flatnonzero(sd > 0)]
        support = np.zeros(X.shape[1], dtype=bool)
        self.aic_path_: list[dict[str, float | int | bool]] = []
        if not active:
            # nothing informative: keep the first column so downstream steps still get an input
            support[0] = True
            self.support_, self.aic_ = support, float("nan")
            return self
        Z = np.zeros_like(X, dtype=np.float64)
        Z[:, active] = (X[:, active] - X[:, active].mean(axis=0)) / sd[active]
        # thousands of fits on matrices of ~150 x 100: multithreaded BLAS only adds contention
        with threadpool_limits(limits=1, user_api="blas"):
            active, current = self._eliminate(Z, y01, active)
        support[active] = True
        self.support_, self.aic_ = support, float(current)
        return self

    def _eliminate(
        self, Z: np.ndarray, y01: np.ndarray, active: list[int]
    ) -> tuple[list[int], float]:
        current, beta = self._aic(Z, y01, active)
        while len(active) > 1:
            trials = []
            for i, j in enumerate(active):
                rest = active[:i] + active[i + 1 :]
                aic, sub_beta = self._aic(Z, y01, rest, start=np.delete(beta, i + 1))
                trials.append((aic, j, sub_beta))
            best_aic, drop, best_beta = min(trials, key=lambda t: (t[0], t[1]))
            improves = best_aic < current
            if not improves and len(active) <= self.max_features:
                break
            active.remove(drop)
            current, beta = best_aic, best_beta
            self.aic_path_.append({"removed": drop, "aic": float(best_aic), "forced": not improves})
        return active, current
