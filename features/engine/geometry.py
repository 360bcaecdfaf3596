"""One ROI's voxels, found once and shared by every image and texture class of that ROI.

Every image of a ROI (Original, 8 wavelet sub-bands, LoG sigmas) has the same mask, so its voxel
positions are found once per ROI and reused for all 12 images; the texture classes lay each
image's levels on a padded grid from them (:mod:`features.engine.levels`). The neighbour pairs
per direction are built only when asked for (inspection and tests).

Arrays are in SimpleITK's numpy order (z, y, x), as ``sitk.GetArrayFromImage`` returns them and
as pyradiomics' C code walks them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np


def _half_offsets() -> np.ndarray:
    """The 13 offsets of distance 1 whose first non-zero component is positive (one per direction)."""
    out = [d for d in itertools.product((-1, 0, 1), repeat=3)
           if any(d) and next(c for c in d if c != 0) > 0]
    return np.array(out, dtype=np.int64)


OFFSETS: np.ndarray = _half_offsets()
"""(13, 3) offsets (dz, dy, dx); together with their negatives, the 26-neighbourhood."""


def _slices(offset: np.ndarray, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices selecting voxels ``v`` and ``v + offset`` that are both inside ``shape``."""
    src, dst = [], []
    for step, n in zip(offset.tolist(), shape, strict=True):
        src.append(slice(max(0, -step), n - max(0, step)))
        dst.append(slice(max(0, step), n - max(0, -step)))
    return tuple(src), tuple(dst)


@dataclass(frozen=True)
class RoiGeometry:
    """The ROI's voxels and, per direction of :data:`OFFSETS`, its pairs of neighbouring voxels.

    ``flat``: C-order flat indices of the ROI voxels into an array of ``shape`` (ascending).
    ``pairs[k] = (a, b)``: positions into ``flat`` such that voxel ``flat[b]`` is voxel
    ``flat[a]`` moved by ``OFFSETS[k]``; both inside the ROI. A direction without pairs has two
    empty arrays.
    """

    shape: tuple[int, int, int]
    flat: np.ndarray

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> RoiGeometry:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 3:
            raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
        return cls(shape=tuple(int(n) for n in mask.shape), flat=np.flatnonzero(mask))

    @cached_property
    def pairs(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Built on first use; the texture classes scan the padded level grid instead."""
        mask = np.zeros(self.shape, dtype=bool)
        mask.reshape(-1)[self.flat] = True
        flat = self.flat
        position = np.full(mask.size, -1, dtype=np.int64)
        position[flat] = np.arange(flat.size, dtype=np.int64)
        position = position.reshape(mask.shape)
        pairs = []
        for offset in OFFSETS:
            src, dst = _slices(offset, mask.shape)
            both = mask[src] & mask[dst]
            pairs.append((position[src][both], position[dst][both]))
        return tuple(pairs)

    @property
    def n_voxels(self) -> int:
        return int(self.flat.size)

    def values(self, image: np.ndarray) -> np.ndarray:
        """The ROI voxels of ``image`` (same shape as the mask), in the order of ``flat``."""
        if image.shape != self.shape:
            raise ValueError(f"image shape {image.shape} differs from the ROI's {self.shape}")
        return np.asarray(image).reshape(-1)[self.flat]
