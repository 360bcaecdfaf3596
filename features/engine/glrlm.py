"""GLRLM features exactly as pyradiomics 3.0.1 computes them (default settings).

pyradiomics (``radiomics/glrlm.py`` + ``calculate_glrlm`` in ``cmatrices.c``) counts, along each
of the 13 directions, the maximal runs of ROI voxels of one grey level, deletes the grey levels
absent from the ROI (and run lengths that never occur, which changes no feature), drops angles
without runs and averages the per-angle feature values with ``nanmean``. Here runs are found from
their starts (a voxel whose predecessor along the direction is outside the ROI or of another
level), each walked once, on the ROI's padded level grid.

One C detail kept: an angle along which no line of the box holds two ROI voxels (adjacent or
not, e.g. every angle leaving the slice of a one-slice ROI) is zeroed, so dropped; an angle whose
lines hold two ROI voxels only with gaps between them keeps its runs of length 1.
"""

from __future__ import annotations

import numpy as np

from features.engine._glrlm_kernels import N_FEATURES, glrlm_angle_features, glrlm_counts
from features.engine.geometry import RoiGeometry
from features.engine.glcm import nanmean_angles
from features.engine.levels import ANGLES, ImageLevels

__all__ = ["GLRLM_FEATURES", "glrlm_features", "glrlm_from_levels"]

GLRLM_FEATURES: tuple[str, ...] = (
    "ShortRunEmphasis", "LongRunEmphasis", "GrayLevelNonUniformity",
    "GrayLevelNonUniformityNormalized", "RunLengthNonUniformity",
    "RunLengthNonUniformityNormalized", "RunPercentage", "GrayLevelVariance", "RunVariance",
    "RunEntropy", "LowGrayLevelRunEmphasis", "HighGrayLevelRunEmphasis",
    "ShortRunLowGrayLevelEmphasis", "ShortRunHighGrayLevelEmphasis", "LongRunLowGrayLevelEmphasis",
    "LongRunHighGrayLevelEmphasis",
)
"""The 16 GLRLM features of pyradiomics 3.0.1 (names without prefix)."""
assert len(GLRLM_FEATURES) == N_FEATURES


def _line_holds_two(geometry: RoiGeometry, offset: np.ndarray) -> bool:
    """Whether some line of the box along ``offset`` holds two ROI voxels (pyradiomics' ``multiElement``).

    Each voxel is mapped to the first voxel of its line (stepping back to the box face); two
    voxels on one line share it.
    """
    coords = np.stack(np.unravel_index(geometry.flat, geometry.shape), axis=1)
    size = np.array(geometry.shape)
    moving = offset != 0
    back = np.where(offset[moving] > 0, coords[:, moving], size[moving] - 1 - coords[:, moving])
    start = coords - back.min(axis=1)[:, None] * offset[None, :]
    return np.unique(np.ravel_multi_index(start.T, geometry.shape)).size < geometry.n_voxels


def glrlm_features(q: np.ndarray, geometry: RoiGeometry) -> dict[str, float]:
    """The 16 GLRLM features of the ROI in the discretised image ``q`` (pyradiomics' values and names)."""
    return glrlm_from_levels(ImageLevels.of(q, geometry))


def glrlm_from_levels(lv: ImageLevels) -> dict[str, float]:
    """:func:`glrlm_features` of an image's laid-out levels (shared with the other classes)."""
    geometry, levels = lv.geometry, lv.levels
    lab, pos = lv.grid
    counts, adjacent = glrlm_counts(lab, pos, levels.size, lv.steps, max(geometry.shape))
    keep = adjacent.copy()
    for k in np.flatnonzero(~adjacent):
        keep[k] = _line_holds_two(geometry, ANGLES[k])
    if not keep.any():
        return dict.fromkeys(GLRLM_FEATURES, float("nan"))
    feats = glrlm_angle_features(np.ascontiguousarray(counts[keep]), levels.astype(np.float64))
    return {name: float(x) for name, x in zip(GLRLM_FEATURES, nanmean_angles(feats), strict=True)}
