"""Logistic regression by Newton-Raphson with a ridge penalty, and its log-likelihood.

The backward AIC search of :class:`training.selection.BackwardAICSelector` fits thousands of small
logistic models; these pure functions are its numerical core, kept apart from the estimator.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

__all__ = ["loglik", "ridge_logit"]


def loglik(X1: np.ndarray, y: np.ndarray, beta: np.ndarray) -> float:
    """Bernoulli log-likelihood of a logistic model with design ``X1`` (intercept column first)."""
    eta = X1 @ beta
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def ridge_logit(
    X1: np.ndarray,
    y: np.ndarray,
    ridge: float,
    start: np.ndarray | None = None,
    max_iter: int = 100,
) -> np.ndarray:
    """Newton-Raphson for logistic regression with an L2 penalty on all but the intercept (column 0).

    The penalty keeps estimates finite under perfect separation and makes the Hessian positive
    definite when columns are collinear or outnumber the rows.
    """
    k = X1.shape[1]
    pen = np.full(k, ridge)
    pen[0] = 0.0
    if start is None:
        beta = np.zeros(k)
        beta[0] = np.log((y.mean() + 1e-12) / (1.0 - y.mean() + 1e-12))
    else:
        beta = np.array(start, dtype=np.float64)

    def objective(b: np.ndarray) -> float:
        return -loglik(X1, y, b) + 0.5 * float(np.sum(pen * b * b))

    current = objective(beta)
    for _ in range(max_iter):
        mu = expit(X1 @ beta)
        grad = X1.T @ (y - mu) - pen * beta
        hess = (X1.T * (mu * (1.0 - mu))) @ X1 + np.diag(pen) + 1e-10 * np.eye(k)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        while t > 1e-8:
            candidate = beta + t * step
            value = objective(candidate)
            if value <= current + 1e-12:
                break
            t *= 0.5
        beta, improvement = candidate, current - value
        current = value
        if np.max(np.abs(t * step)) < 1e-8 or improvement < 1e-10:
            break
    return beta
