"""Neighbouring Grey Tone Difference Matrix features, as pyradiomics 3.0.1 computes them (radiomics/ngtdm.py).

Per ROI voxel, pyradiomics' C code (calculate_ngtdm) takes the mean grey level of its neighbours
inside the ROI (26-neighbourhood, distance 1) and adds ``|grey level - mean|`` to ``s_i`` of the
voxel's grey level. A voxel without any ROI neighbour still counts in ``n_i`` (and in ``Nvp``) but
adds a difference of 0. Grey levels absent from the ROI are deleted, so every ``p_i`` > 0 and
pyradiomics' ``p_zero`` masking never applies. Neighbour counts and sums come from the ROI's
one scan of the neighbourhood per image (integer sums, exact as in C); ``s_i`` sums differences
in the C loop's voxel order.
"""

from __future__ import annotations

import numpy as np

from features.engine._zone_kernels import grey_tone_sums
from features.engine.geometry import RoiGeometry
from features.engine.levels import ImageLevels

__all__ = ["NGTDM_FEATURES", "ngtdm_features", "ngtdm_from_levels", "ngtdm_matrix"]

NGTDM_FEATURES: tuple[str, ...] = ("Coarseness", "Contrast", "Busyness", "Complexity", "Strength")
"""The 5 NGTDM feature names of pyradiomics."""


def ngtdm_matrix(q: np.ndarray, geometry: RoiGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n_i, s_i, i)`` for the grey levels present in the ROI, in ascending order."""
    return _matrix(ImageLevels.of(q, geometry))


def _matrix(lv: ImageLevels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = lv.values
    n, s = grey_tone_sums(values, lv.neighbours[2], int(values.max()))
    present = np.flatnonzero(n)
    return n[present], s[present], present.astype(np.float64)


def ngtdm_features(q: np.ndarray, geometry: RoiGeometry) -> dict[str, float]:
    """All 5 NGTDM features of the discretised image ``q`` (grey levels 1..Ng inside the ROI)."""
    return ngtdm_from_levels(ImageLevels.of(q, geometry))


def ngtdm_from_levels(lv: ImageLevels) -> dict[str, float]:
    """:func:`ngtdm_features` of an image's laid-out levels (shared with the other classes)."""
    n, s_i, i = _matrix(lv)
    Nvp = np.sum(n)
    p_i = n / Nvp
    Ngp = int(np.sum(n > 0))
    sum_s = np.sum(s_i)

    sum_coarse = np.sum(p_i * s_i)
    coarseness = 1 / sum_coarse if sum_coarse != 0 else 1e6

    di2 = (i[:, None] - i[None, :]) ** 2
    div = Ngp * (Ngp - 1)
    contrast = np.sum(p_i[:, None] * p_i[None, :] * di2) * sum_s / Nvp
    contrast = contrast / div if div != 0 else 0.0

    i_pi = i * p_i
    absdiff = np.sum(np.abs(i_pi[:, None] - i_pi[None, :]))
    busyness = np.sum(p_i * s_i) / absdiff if absdiff != 0 else 0.0

    pi_si = p_i * s_i
    divisor = p_i[:, None] + p_i[None, :]
    divisor[divisor == 0] = 1
    complexity = np.sum(np.abs(i[:, None] - i[None, :]) * (pi_si[:, None] + pi_si[None, :]) / divisor) / Nvp

    strength = np.sum((p_i[:, None] + p_i[None, :]) * di2)
    strength = strength / sum_s if sum_s != 0 else 0.0
    return {"Coarseness": float(coarseness), "Contrast": float(contrast), "Busyness": float(busyness),
            "Complexity": float(complexity), "Strength": float(strength)}
