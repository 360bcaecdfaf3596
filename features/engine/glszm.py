"""Grey Level Size Zone Matrix features, as pyradiomics 3.0.1 computes them (radiomics/glszm.py).

pyradiomics grows each zone (26-connected voxels of one grey level inside the ROI) by region
growing in C. Here one multilabel connected-components pass of ``cc3d`` labels all zones of all
grey levels at once (grey levels as labels, 0 outside the ROI); sizes come from a bincount.
The matrix keeps only the grey levels and zone sizes that occur, as pyradiomics deletes the
empty ones, so the formulas below see exactly its matrix.
"""

from __future__ import annotations

import cc3d
import numpy as np

from features.engine._zone_kernels import level_size_matrix, matrix_features, rename
from features.engine.geometry import RoiGeometry
from features.engine.levels import ImageLevels

__all__ = ["GLSZM_FEATURES", "glszm_features", "glszm_from_levels", "zones"]

_NAMES = {
    "SmallAreaEmphasis": "SmallS",
    "LargeAreaEmphasis": "LargeS",
    "GrayLevelNonUniformity": "GLN",
    "GrayLevelNonUniformityNormalized": "GLNN",
    "SizeZoneNonUniformity": "SN",
    "SizeZoneNonUniformityNormalized": "SNN",
    "ZonePercentage": "ZonePercentage",
    "GrayLevelVariance": "GLV",
    "ZoneVariance": "SV",
    "ZoneEntropy": "Entropy",
    "LowGrayLevelZoneEmphasis": "LowGL",
    "HighGrayLevelZoneEmphasis": "HighGL",
    "SmallAreaLowGrayLevelEmphasis": "SmallSLowGL",
    "SmallAreaHighGrayLevelEmphasis": "SmallSHighGL",
    "LargeAreaLowGrayLevelEmphasis": "LargeSLowGL",
    "LargeAreaHighGrayLevelEmphasis": "LargeSHighGL",
}

GLSZM_FEATURES: tuple[str, ...] = tuple(_NAMES)
"""The 16 GLSZM feature names of pyradiomics (none is deprecated)."""


def zones(q: np.ndarray, geometry: RoiGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Grey level and size of every 26-connected zone of equal grey level inside the ROI."""
    return _zones(ImageLevels.of(q, geometry))


def _zones(lv: ImageLevels) -> tuple[np.ndarray, np.ndarray]:
    geometry, values = lv.geometry, lv.values
    top = int(values.max())
    dtype = np.uint16 if top < 2 ** 16 else np.uint32 if top < 2 ** 32 else np.uint64
    labels = np.zeros(geometry.shape, dtype=dtype)
    labels.reshape(-1)[geometry.flat] = values
    components, n = cc3d.connected_components(labels, connectivity=26, return_N=True)
    component = components.reshape(-1)[geometry.flat].astype(np.intp)
    sizes = np.bincount(component, minlength=n + 1)[1:]
    level = np.zeros(n + 1, dtype=np.int64)
    level[component] = values
    return level[1:], sizes


def glszm_features(q: np.ndarray, geometry: RoiGeometry) -> dict[str, float]:
    """All 16 GLSZM features of the discretised image ``q`` (grey levels 1..Ng inside the ROI)."""
    return glszm_from_levels(ImageLevels.of(q, geometry))


def glszm_from_levels(lv: ImageLevels) -> dict[str, float]:
    """:func:`glszm_features` of an image's laid-out levels (shared with the other classes)."""
    levels, sizes = _zones(lv)
    P, ivector, jvector = level_size_matrix(levels, sizes)
    out = matrix_features(P, ivector, jvector)
    Np = float(np.sum(sizes))  # pyradiomics: sum(ps * jvector), the ROI's voxel count
    out["ZonePercentage"] = out["Nz"] / Np
    return rename(out, _NAMES)
