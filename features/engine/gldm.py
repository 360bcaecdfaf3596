"""Grey Level Dependence Matrix features, as pyradiomics 3.0.1 computes them (radiomics/gldm.py).

Settings are pyradiomics' defaults: distance 1, 26-neighbourhood, ``gldm_a`` = 0 (a neighbour is
dependent when its grey level equals the centre's). pyradiomics' C code counts, per ROI voxel, the
dependent neighbours ``dep`` (0..26, the voxel itself not included) and its matrix column ``dep``
gets ``jvector = dep + 1``; empty grey levels and empty dependence columns are deleted. Here the
counts come from one scan of the ROI's 26-neighbourhood per image, shared with GLCM and NGTDM
(:mod:`features.engine._neighbour_kernels`).
"""

from __future__ import annotations

import numpy as np

from features.engine._zone_kernels import level_size_matrix, matrix_features, rename
from features.engine.geometry import RoiGeometry
from features.engine.levels import ImageLevels

__all__ = ["GLDM_FEATURES", "dependence_counts", "gldm_features", "gldm_from_levels"]

_NAMES = {
    "SmallDependenceEmphasis": "SmallS",
    "LargeDependenceEmphasis": "LargeS",
    "GrayLevelNonUniformity": "GLN",
    "DependenceNonUniformity": "SN",
    "DependenceNonUniformityNormalized": "SNN",
    "GrayLevelVariance": "GLV",
    "DependenceVariance": "SV",
    "DependenceEntropy": "Entropy",
    "LowGrayLevelEmphasis": "LowGL",
    "HighGrayLevelEmphasis": "HighGL",
    "SmallDependenceLowGrayLevelEmphasis": "SmallSLowGL",
    "SmallDependenceHighGrayLevelEmphasis": "SmallSHighGL",
    "LargeDependenceLowGrayLevelEmphasis": "LargeSLowGL",
    "LargeDependenceHighGrayLevelEmphasis": "LargeSHighGL",
}

GLDM_FEATURES: tuple[str, ...] = tuple(_NAMES)
"""The 14 non-deprecated GLDM feature names (GLNN and DependencePercentage are deprecated)."""


def dependence_counts(q: np.ndarray, geometry: RoiGeometry) -> np.ndarray:
    """Per ROI voxel (order of ``geometry.flat``), its neighbours of equal grey level (0..26) in ``q``."""
    return ImageLevels.of(q, geometry).neighbours[1]


def gldm_features(q: np.ndarray, geometry: RoiGeometry) -> dict[str, float]:
    """All 14 non-deprecated GLDM features of the discretised image ``q`` (grey levels 1..Ng in the ROI)."""
    return gldm_from_levels(ImageLevels.of(q, geometry))


def gldm_from_levels(lv: ImageLevels) -> dict[str, float]:
    """:func:`gldm_features` of an image's laid-out levels (shared with the other classes)."""
    P, ivector, jvector = level_size_matrix(lv.values, lv.neighbours[1] + 1)
    return rename(matrix_features(P, ivector, jvector), _NAMES)
