"""One discretised image's ROI grey levels, laid out once for every texture class of that image.

Each texture class used to check and gather the ROI's levels, build the padded level grid and
walk the neighbourhood on its own: five gathers, two grids and three neighbour passes per image.
:class:`ImageLevels` does each once and the classes read what they need (``*_from_levels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from features.engine._glcm_kernels import compact_levels, padded_labels, padded_strides
from features.engine._neighbour_kernels import neighbour_counts
from features.engine.geometry import OFFSETS, RoiGeometry
from features.errors import FeatureError

__all__ = ["ANGLES", "ImageLevels", "roi_levels"]

ANGLES: np.ndarray = np.ascontiguousarray(OFFSETS[::-1])
"""The 13 offsets in pyradiomics' order ((1, 1, 1) first): per-angle values are averaged in that
order, so that the means round as pyradiomics' do."""


def _checked_values(q: np.ndarray, geometry: RoiGeometry) -> np.ndarray:
    if geometry.n_voxels == 0:
        raise FeatureError("the ROI has no voxels, so no texture matrix can be computed",
                           fix="check that the mask holds the label inside the image")
    v = geometry.values(q)
    if not np.issubdtype(v.dtype, np.integer):
        raise FeatureError(f"the discretised image has dtype {v.dtype}, not integer grey levels",
                           fix="discretise the image (binWidth/binCount) before texture features")
    v = np.ascontiguousarray(v, dtype=np.int64)
    if int(v.min()) < 1:
        raise FeatureError(f"the discretised ROI has grey level {int(v.min())}; levels start at 1",
                           fix="discretise the image with pyradiomics' binning (levels 1..Ng)")
    return v


def roi_levels(q: np.ndarray, geometry: RoiGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Grey levels present in the ROI of the discretised image ``q`` and each ROI voxel's index among them.

    pyradiomics deletes empty grey levels from its matrices, which is the same as indexing them
    by present level. Raises :class:`FeatureError` on an empty ROI or on levels below 1 (``q``
    must come from pyradiomics' ``binImage`` discretisation).
    """
    return compact_levels(_checked_values(q, geometry))


@dataclass
class ImageLevels:
    """The ROI's grey levels in one discretised image, and what the texture classes derive from them.

    ``values``: level per ROI voxel (order of ``geometry.flat``); ``levels``: the levels present,
    ascending; ``codes``: each voxel's index into ``levels``.
    """

    geometry: RoiGeometry
    values: np.ndarray
    levels: np.ndarray
    codes: np.ndarray

    @classmethod
    def of(cls, q: np.ndarray, geometry: RoiGeometry) -> ImageLevels:
        values = _checked_values(q, geometry)
        levels, codes = compact_levels(values)
        return cls(geometry, values, levels, codes)

    @cached_property
    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Level indices on the box grown by one voxel (-1 outside the ROI) and the ROI's positions in it."""
        return padded_labels(self.geometry.flat, self.geometry.shape, self.codes)

    @cached_property
    def steps(self) -> np.ndarray:
        """Flat steps of :data:`ANGLES` on :attr:`grid`."""
        return padded_strides(self.geometry.shape, ANGLES)

    @cached_property
    def neighbours(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """GLCM counts per angle, GLDM dependences and NGTDM neighbour sums (one scan, see
        :func:`~features.engine._neighbour_kernels.neighbour_counts`)."""
        lab, pos = self.grid
        return neighbour_counts(lab, pos, self.levels, self.steps)
