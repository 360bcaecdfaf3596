"""First-order features of a whole batch (pyradiomics' ``RadiomicsFirstOrder``, 18 features).

The arithmetic of :mod:`features.engine.firstorder` on segments: one stable sort by value then by
job gives every job's sorted voxels, percentiles and median take numpy's 'linear' formula per job
(the same float operations, so they are bit for bit those of the numba path), and moments are
per-job sums of elementwise powers.

A flat job (one value) is left to the caller: there pyradiomics' Skewness and Kurtosis follow
the sign of the rounding residue of numpy's pairwise mean, which only numpy's own reductions
reproduce (:func:`flat_jobs`).
"""

from __future__ import annotations

import numpy as np
import torch

from features.engine.tensor.layout import Layout

__all__ = ["FIRSTORDER_FEATURES", "firstorder_batch", "flat_jobs"]

FIRSTORDER_FEATURES: tuple[str, ...] = (
    "10Percentile", "90Percentile", "Energy", "Entropy", "InterquartileRange", "Kurtosis",
    "Maximum", "MeanAbsoluteDeviation", "Mean", "Median", "Minimum", "Range",
    "RobustMeanAbsoluteDeviation", "RootMeanSquared", "Skewness", "TotalEnergy", "Uniformity",
    "Variance",
)
_EPS = float(np.spacing(1))
_QUANTILES = (0.1, 0.25, 0.75, 0.9)  # np.true_divide([10, 25, 75, 90], 100), bit for bit


def flat_jobs(lay: Layout) -> torch.Tensor:
    """(B,) bool: jobs whose ROI holds a single value (see the module docstring)."""
    low = torch.full((lay.n_jobs,), np.inf, dtype=torch.float64, device=lay.device)
    high = torch.full_like(low, -np.inf)
    low.scatter_reduce_(0, lay.job, lay.values, reduce="amin")
    high.scatter_reduce_(0, lay.job, lay.values, reduce="amax")
    return low == high


def _sorted(lay: Layout) -> torch.Tensor:
    """The voxel values sorted within each job (jobs stay in their order)."""
    order = torch.argsort(lay.values, stable=True)
    order = order[torch.argsort(lay.job[order], stable=True)]
    return lay.values[order]


def _percentiles(s: torch.Tensor, start: torch.Tensor, n: torch.Tensor) -> list[torch.Tensor]:
    """numpy's 'linear' percentiles (:func:`features.engine.firstorder._percentiles`), per job;
    the quantiles side by side as rows of one (Q, B) tensor."""
    top = (n - 1)[None, :]
    start = start[None, :]
    virtual = top.to(torch.float64) * torch.tensor(_QUANTILES, dtype=torch.float64,
                                                   device=s.device)[:, None]
    previous = torch.floor(virtual)
    i = torch.minimum(previous.to(torch.int64), top)
    a = s[start + i]
    b = s[start + torch.minimum(i + 1, top)]
    gamma = virtual - previous
    diff = b - a
    value = torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    out = torch.where(virtual >= top.to(torch.float64), s[start + top], value)
    return list(out.unbind(0))


def firstorder_batch(lay: Layout, shifts: torch.Tensor, volumes: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
    """The 18 first-order features per job, shape (B,) each (flat jobs: see :func:`flat_jobs`).

    ``shifts``: each job's ``voxelArrayShift``; ``volumes``: its voxel volume (the product of the
    spacing, as ``numpy.multiply.reduce``), both (B,) float64.
    """
    x, job, n, start = lay.values, lay.job, lay.counts, lay.start
    nf = n.to(torch.float64)
    s = _sorted(lay)
    mean = lay.per_job(x) / nf
    d = x - mean[job]
    d2 = d * d
    e = x + shifts[job]
    energy = lay.per_job(e * e)
    mad, m2 = lay.per_job(d.abs()) / nf, lay.per_job(d2) / nf
    m3, m4 = lay.per_job(d2 * d) / nf, lay.per_job(d2 * d2) / nf
    m2_safe = torch.where(m2 == 0, torch.ones_like(m2), m2)
    p10, p25, p75, p90 = _percentiles(s, start, n)
    minimum, maximum = s[start], s[start + n - 1]
    median = (s[start + (n - 1) // 2] + s[start + n // 2]) / 2.0

    inside = (x >= p10[job]) & (x <= p90[job])
    k = lay.per_job(inside.to(torch.float64))
    robust_mean = lay.per_job(torch.where(inside, x, 0.0)) / k
    robust = lay.per_job(torch.where(inside, (x - robust_mean[job]).abs(), 0.0)) / k

    counts = lay.level_counts
    p = counts / counts.sum(dim=1, keepdim=True)
    return {
        "10Percentile": p10,
        "90Percentile": p90,
        "Energy": energy,
        "Entropy": -1.0 * (p * torch.log2(p + _EPS)).sum(dim=1),
        "InterquartileRange": p75 - p25,
        "Kurtosis": m4 / m2_safe ** 2.0,
        "Maximum": maximum,
        "MeanAbsoluteDeviation": mad,
        "Mean": mean,
        "Median": median,
        "Minimum": minimum,
        "Range": maximum - minimum,
        "RobustMeanAbsoluteDeviation": robust,
        "RootMeanSquared": torch.sqrt(energy / nf),
        "Skewness": m3 / m2_safe ** 1.5,
        "TotalEnergy": energy * volumes,
        "Uniformity": (p * p).sum(dim=1),
        "Variance": torch.sqrt(m2) ** 2,
    }
