"""Grey Level Dependence Matrix features, as pyradiomics 3.0.1 computes them (radiomics/gldm.py).

Settings are pyradiomics' defaults: distance 1, 26-neighbourhood, ``gldm_a`` = 0 (a neighbour is
dependent when its grey level equals the centre's). pyradiomics' C code counts, per ROI voxel, the
dependent neighbours ``dep`` (0..26, the voxel itself not included) and its matrix column ``dep``
gets ``jvector = dep + 1``; empty grey levels and empty dependence columns are deleted. Here the
counts come from the ROI's neighbour pairs, shared with GLCM and NGTDM: a pair of equal grey
levels adds one dependence to both of its voxels.
"""

from __future__ import annotations

import numpy as np

from features.engine._zone_kernels import (
    add_dependences,
    level_size_matrix,
    matrix_features,
    rename,
    roi_levels,
)
from features.engine.geometry import RoiGeometry

__all__ = ["GLDM_FEATURES", "dependence_counts", "gldm_features"]

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


def dependence_counts(values: np.ndarray, geometry: RoiGeometry) -> np.ndarray:
    """Per ROI voxel (order of ``geometry.flat``), its neighbours of equal grey level (0..26)."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    dep = np.zeros(values.size, dtype=np.int64)
    for a, b in geometry.pairs:
        if a.size:
            add_dependences(values, a, b, dep)
    return dep


def gldm_features(q: np.ndarray, geometry: RoiGeometry) -> dict[str, float]:
    """All 14 non-deprecated GLDM features of the discretised image ``q`` (grey levels 1..Ng in the ROI)."""
    values = roi_levels(q, geometry, "GLDM")
    dep = dependence_counts(values, geometry)
    P, ivector, jvector = level_size_matrix(values, dep + 1)
    return rename(matrix_features(P, ivector, jvector), _NAMES)
