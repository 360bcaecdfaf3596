"""ComBat harmonisation of imaging features across centers, fitted on the training rows only.

Scanners differ per center (bias field, contrast, noise, slice thickness), and a feature whose
location or spread moves with the center carries the scanner into the model. ComBat (Johnson et
al. 2007; neuroCombat, Fortin et al. 2018) removes a per-center location and scale from each
feature, shrunk by empirical Bayes across features.

* **Training centers**: ``neuroCombat.neuroCombat`` on the training rows (batch = center, no
  covariates: the label is never used, and a clinical covariate would have to be known for every
  patient served). Their estimates (grand mean, pooled variance, per-center gamma*/delta*) are
  kept.
* **Any other center** (the external test center, a newly onboarded one): ComBat's own per-batch
  step on that center's rows, standardised by the training estimates: its location/scale and EB
  priors come from its own feature values, never from its labels (neuroCombat's ``aprior``,
  ``bprior`` and ``it_sol``). :meth:`Harmoniser.adapt` adds such a center.
* Features that are constant or not finite on the training rows pass through unchanged.

Serving needs exactly the model's features: :meth:`Harmoniser.restricted` keeps those, and their
values equal the full fit's (the EB step is per feature once the priors are set).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from atrx.errors import DataError

__all__ = ["Harmoniser", "HarmonisationError", "UnknownCenter", "fit_harmoniser"]

MIN_ROWS_PER_CENTER = 3


class HarmonisationError(DataError):
    """ComBat cannot be fitted or adapted: a center has too few rows (bad input, exit code 2)."""


class UnknownCenter(DataError):
    """A row's center has no harmonisation estimates in the model (serving answers 422)."""


@dataclass(frozen=True)
class CenterEstimates:
    """ComBat's location (gamma*) and scale (delta*) of one center, per feature."""

    gamma: np.ndarray
    delta: np.ndarray
    rows: int
    source: str  # "training" (fitted with the others) or "own" (adapted from its own rows)


@dataclass
class Harmoniser:
    """Per-center ComBat estimates for ``features`` (see the module docstring)."""

    features: list[str]
    stand_mean: np.ndarray
    var_pooled: np.ndarray
    centers: dict[str, CenterEstimates] = field(default_factory=dict)
    passthrough: list[str] = field(default_factory=list)

    def transform(self, X: pd.DataFrame, centers: Sequence[str]) -> pd.DataFrame:
        """``X`` with its harmonised columns adjusted for each row's center (other columns kept)."""
        centers = [str(c) for c in centers]
        if len(centers) != len(X):
            raise ValueError(f"{len(centers)} centers for {len(X)} rows")
        unknown = sorted(set(centers) - set(self.centers))
        if unknown:
            raise UnknownCenter(
                f"center(s) {unknown} have no harmonisation estimates (known: {sorted(self.centers)})",
                fix="retrain with the center's patients in the feature store (their labels are not "
                    "needed), or set harmonisation.method: none in the study file",
            )
        cols = [c for c in self.features if c in X.columns]
        if not cols:
            return X.copy()
        idx = [self.features.index(c) for c in cols]
        values = X[cols].to_numpy(dtype=np.float64, copy=True)
        sd = np.sqrt(self.var_pooled[idx])
        mean = self.stand_mean[idx]
        labels = np.asarray(centers)
        for center in np.unique(labels):
            rows = labels == center
            est = self.centers[center]
            s = (values[rows] - mean) / sd
            values[rows] = (s - est.gamma[idx]) / np.sqrt(est.delta[idx]) * sd + mean
        out = X.copy()
        out[cols] = values
        return out

    def adapt(self, X: pd.DataFrame, center: str) -> None:
        """Add ``center``'s own estimates from its rows ``X`` (label-free; see the module docstring)."""
        from neuroCombat.neuroCombat import aprior, bprior, it_sol

        if len(X) < MIN_ROWS_PER_CENTER:
            raise HarmonisationError(
                f"center {center!r} has {len(X)} row(s); ComBat needs at least "
                f"{MIN_ROWS_PER_CENTER} to estimate its location and scale",
                fix="add the center's patients, or set harmonisation.method: none",
            )
        s = _standardised(X, self)
        gamma_hat = np.nanmean(s, axis=1)
        delta_hat = np.nanvar(s, axis=1, ddof=1)
        delta_hat[~(delta_hat > 0)] = 1.0
        gamma_bar, t2 = float(np.mean(gamma_hat)), float(np.var(gamma_hat, ddof=1))
        with _quiet():
            gamma, delta = it_sol(s, gamma_hat, delta_hat, gamma_bar, t2,
                                  aprior(delta_hat), bprior(delta_hat))
        self.centers[str(center)] = CenterEstimates(np.asarray(gamma), np.asarray(delta),
                                                    len(X), "own")

    def restricted(self, features: Sequence[str]) -> Harmoniser:
        """The same estimates for ``features`` only (those it harmonises; others pass through)."""
        keep = [f for f in features if f in self.features]
        idx = [self.features.index(f) for f in keep]
        return Harmoniser(
            features=keep,
            stand_mean=self.stand_mean[idx],
            var_pooled=self.var_pooled[idx],
            centers={c: CenterEstimates(e.gamma[idx], e.delta[idx], e.rows, e.source)
                     for c, e in self.centers.items()},
            passthrough=[f for f in features if f in self.passthrough],
        )

    def describe(self) -> dict[str, Any]:
        """What model metadata and the report record."""
        return {
            "method": "combat",
            "library": "neuroCombat",
            "features": len(self.features),
            "passthrough": len(self.passthrough),
            "centers": {c: {"rows": e.rows, "source": e.source} for c, e in self.centers.items()},
        }


def _standardised(X: pd.DataFrame, h: Harmoniser) -> np.ndarray:
    """(features, rows) values standardised by the training grand mean and pooled variance."""
    values = X[h.features].to_numpy(dtype=np.float64).T
    return (values - h.stand_mean[:, None]) / np.sqrt(h.var_pooled)[:, None]


@contextlib.contextmanager
def _quiet():
    """neuroCombat prints progress to stdout; a CLI's output is ours."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def fit_harmoniser(X: pd.DataFrame, centers: Sequence[str], columns: Sequence[str]) -> Harmoniser:
    """ComBat on the training rows ``X[columns]`` with batch = ``centers``.

    Columns that are constant or not finite on these rows pass through. One training center is
    allowed: ComBat then removes nothing between training rows, and other centers are still
    mapped onto it by :meth:`Harmoniser.adapt`.
    """
    from neuroCombat import neuroCombat

    labels = pd.Series([str(c) for c in centers], index=X.index, name="center")
    counts = labels.value_counts()
    small = counts[counts < MIN_ROWS_PER_CENTER]
    if len(small):
        raise HarmonisationError(
            f"training center(s) {small.to_dict()} have fewer than {MIN_ROWS_PER_CENTER} rows; "
            "ComBat cannot estimate their location and scale",
            fix="train on more patients per center, or set harmonisation.method: none",
        )
    values = X[list(columns)].to_numpy(dtype=np.float64)
    finite = np.isfinite(values).all(axis=0)
    spread = np.zeros(values.shape[1])
    spread[finite] = values[:, finite].std(axis=0)
    usable = finite & (spread > 1e-12 * (1.0 + np.abs(values).max(axis=0, initial=0.0)))
    features = [c for c, ok in zip(columns, usable, strict=True) if ok]
    passthrough = [c for c, ok in zip(columns, usable, strict=True) if not ok]
    dat = values[:, usable].T
    if counts.size == 1:
        # one batch: the grand mean and variance standardise, no batch effect is removed
        mean = dat.mean(axis=1)
        var = dat.var(axis=1, ddof=1)
        only = str(counts.index[0])
        h = Harmoniser(features, mean, var, passthrough=passthrough)
        h.centers[only] = CenterEstimates(np.zeros(len(features)), np.ones(len(features)),
                                          int(counts.iloc[0]), "training")
        return h
    covars = pd.DataFrame({"center": labels.to_numpy()})
    with _quiet():
        out = neuroCombat(dat=dat, covars=covars, batch_col="center")
    est = out["estimates"]
    stand_mean = np.asarray(est["stand.mean"])[:, 0] + np.asarray(est["mod.mean"]).mean(axis=1)
    h = Harmoniser(features, stand_mean, np.asarray(est["var.pooled"]).ravel(),
                   passthrough=passthrough)
    for i, batch in enumerate(est["batches"]):
        h.centers[str(batch)] = CenterEstimates(np.asarray(est["gamma.star"])[i],
                                                np.asarray(est["delta.star"])[i],
                                                int(counts[str(batch)]), "training")
    return h


def harmonise_frame(frame: pd.DataFrame, train_rows: np.ndarray, columns: Sequence[str],
                    center_column: str = "center") -> tuple[pd.DataFrame, Harmoniser]:
    """Fit on ``frame.iloc[train_rows]``, adapt every other center from its own rows, transform all."""
    train = frame.iloc[train_rows]
    h = fit_harmoniser(train, train[center_column].astype(str).tolist(), columns)
    centers = frame[center_column].astype(str)
    for center in sorted(set(centers) - set(h.centers)):
        h.adapt(frame.loc[centers == center], center)
    return h.transform(frame, centers.tolist()), h

