"""The 18 non-deprecated first-order features of pyradiomics 3.0.1 (``RadiomicsFirstOrder``).

One sort gives the percentiles and the median (numpy's linear-interpolation formula and the
two-middle-values median, as ``nanpercentile``/``nanmedian`` compute them in pyradiomics) and one
numba pass the energy and central moments; pyradiomics recomputes means and percentiles per
feature and raises deviations to the 3rd and 4th power with ``pow``.

A flat ROI (one value) goes through pyradiomics' own numpy reductions instead: there the moments
are rounding noise unless the mean is bit-exact, and pyradiomics' conventions (Skewness and
Kurtosis 0 when the variance is exactly 0) depend on it.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["firstorder_features"]

_EPS = np.spacing(1)
_QUANTILES = np.true_divide(np.array([10, 25, 75, 90]), 100)


@numba.njit(cache=True, nogil=True)
def _moments(x: np.ndarray, mean: float, shift: float) -> tuple[float, float, float, float, float]:
    """Energy (shifted), and the sums of |d|, d^2, d^3, d^4 of the deviations d = x - mean."""
    energy = s1 = s2 = s3 = s4 = 0.0
    for v in x:
        e = v + shift
        energy += e * e
        d = v - mean
        d2 = d * d
        s1 += abs(d)
        s2 += d2
        s3 += d2 * d
        s4 += d2 * d2
    return energy, s1, s2, s3, s4


@numba.njit(cache=True, nogil=True)
def _robust_mad(s: np.ndarray, p10: float, p90: float) -> float:
    """Mean absolute deviation of the sorted values within [p10, p90] from their own mean."""
    total = 0.0
    n = 0
    for v in s:
        if p10 <= v <= p90:
            total += v
            n += 1
    mean = total / n
    dev = 0.0
    for v in s:
        if p10 <= v <= p90:
            dev += abs(v - mean)
    return dev / n


def _percentiles(s: np.ndarray) -> np.ndarray:
    """numpy's 'linear' percentiles 10, 25, 75, 90 of the sorted ``s`` (its index and lerp formulas)."""
    n = s.size
    out = np.empty(_QUANTILES.size)
    for i, q in enumerate(_QUANTILES):
        virtual = (n - 1) * q
        if virtual >= n - 1:
            out[i] = s[-1]
            continue
        previous = np.floor(virtual)
        a, b = s[int(previous)], s[int(previous) + 1]
        gamma = virtual - previous
        diff = b - a
        out[i] = b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
    return out


def firstorder_features(values: np.ndarray, levels: np.ndarray,
                        spacing: tuple[float, float, float], voxel_array_shift: int = 0
                        ) -> dict[str, float]:
    """First-order features of one image's ROI, keyed by pyradiomics' names.

    ``values``: the ROI's voxel values (C order of the ROI box, as ``RoiGeometry.values``);
    ``levels``: the same voxels discretised (for Entropy and Uniformity); ``spacing`` (x, y, z)
    in mm gives TotalEnergy's voxel volume; ``voxel_array_shift`` is added before squaring in
    Energy, TotalEnergy and RootMeanSquared.
    """
    x = np.ascontiguousarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        raise ValueError("no ROI voxels")
    s = np.sort(x)
    counts = np.bincount(np.asarray(levels).ravel())
    p = counts[counts > 0].astype(float)
    p = p / np.sum(p)
    mean = np.sum(x) / n  # numpy's pairwise sum, as nanmean
    if s[0] == s[-1]:
        energy, mad, m2, m3, m4 = _flat_moments(x, mean, voxel_array_shift)
    else:
        energy, s1, s2, s3, s4 = _moments(x, float(mean), float(voxel_array_shift))
        mad, m2, m3, m4 = s1 / n, s2 / n, s3 / n, s4 / n
    m2_safe = 1.0 if m2 == 0 else m2  # a flat ROI: pyradiomics divides by 1, not by 0
    p10, p25, p75, p90 = _percentiles(s)
    lo, hi = (n - 1) // 2, n // 2
    minimum, maximum = float(s[0]), float(s[-1])
    return {
        "10Percentile": float(p10),
        "90Percentile": float(p90),
        "Energy": float(energy),
        "Entropy": float(-1.0 * np.sum(p * np.log2(p + _EPS))),
        "InterquartileRange": float(p75 - p25),
        "Kurtosis": float(m4 / m2_safe ** 2.0),
        "Maximum": maximum,
        "MeanAbsoluteDeviation": float(mad),
        "Mean": float(mean),
        "Median": float((s[lo] + s[hi]) / 2.0),
        "Minimum": minimum,
        "Range": maximum - minimum,
        "RobustMeanAbsoluteDeviation": float(_robust_mad(s, float(p10), float(p90))),
        "RootMeanSquared": float(np.sqrt(energy / float(n))),
        "Skewness": float(m3 / m2_safe ** 1.5),
        "TotalEnergy": float(energy) * float(np.multiply.reduce(spacing)),
        "Uniformity": float(np.sum(p ** 2)),
        "Variance": float(np.sqrt(m2) ** 2),
    }


def _flat_moments(x: np.ndarray, mean: float, shift: int) -> tuple[float, ...]:
    """pyradiomics' own reductions (``_moment``, ``nanmean``), for a ROI of one value."""
    d = x - mean
    n = x.size
    return (float(np.sum((x + shift) ** 2)), float(np.sum(np.abs(d)) / n),
            float(np.sum(np.power(d, 2)) / n), float(np.sum(np.power(d, 3)) / n),
            float(np.sum(np.power(d, 4)) / n))
