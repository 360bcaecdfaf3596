"""Where a mask lies against its sequence's grid: the same grid, a crop of it (a sub-grid), or neither.

Pure functions on grids and arrays; :mod:`ingest.masks` reads the files and decides with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from atrx.errors import DataError
from atrx.geometry import Grid, as_grid, continuous_index

__all__ = ["GRID_TOL", "SUBGRID_TOL_VOXEL", "MaskError", "grid_differences", "pad_to_grid", "subgrid_offset"]

#: tolerance (mm for spacing and origin, cosines for direction) of a mask's grid against its
#: sequence's; the plan's (:meth:`ingest.discover.Geometry.differences`), so both stages agree
GRID_TOL = 1e-2
#: how far (in voxels, per axis) a cropped mask's origin may lie from its sequence's lattice
SUBGRID_TOL_VOXEL = 1e-3


class MaskError(DataError):
    """A mask cannot be used as configured; the message says why, ``fix`` what to change."""


def grid_differences(found: Grid, expected: Grid, tol: float = GRID_TOL) -> list[str]:
    """What differs beyond ``tol``, worded as the plan words it (``size (a) vs (b)``, ...)."""
    out = []
    if list(found["size"]) != list(expected["size"]):
        out.append(f"size {tuple(found['size'])} vs {tuple(expected['size'])}")
    for name in ("spacing", "origin", "direction"):
        a, b = np.asarray(found[name], dtype=float), np.asarray(expected[name], dtype=float)
        if a.shape != b.shape or np.max(np.abs(a - b)) > tol:
            out.append(f"{name} {tuple(float(v) for v in np.round(a, 3))} vs {tuple(float(v) for v in np.round(b, 3))}")
    return out


def _is_default_header(grid: Grid) -> bool:
    return (np.allclose(grid["origin"], 0.0, atol=1e-9) and np.allclose(grid["spacing"], 1.0, atol=1e-9)
            and np.allclose(grid["direction"], np.eye(len(grid["spacing"])).ravel(), atol=1e-9))


def subgrid_offset(mask: Grid, reference: Grid, tol: float = GRID_TOL,
                   tol_voxel: float = SUBGRID_TOL_VOXEL) -> tuple[int, int, int]:
    """The (x, y, z) voxel of ``reference`` where ``mask``'s first voxel lies, if ``mask`` is a sub-grid.

    A sub-grid has the same spacing and direction (within ``tol``), an origin on the reference's
    lattice (within ``tol_voxel`` voxels per axis) and an extent inside it. A mask with a default
    header (origin 0, spacing 1, identity direction) on a real image is not one, even when those
    numbers happen to fit: its header says nothing about where it was drawn. Raises
    :class:`MaskError` saying which condition fails.
    """
    m, r = as_grid(mask), as_grid(reference)
    fix = "re-export the mask on the grid of the image it was drawn on (3D Slicer: uncheck cropping, or " \
          "export the segmentation with the image as reference geometry)"
    if _is_default_header(m) and grid_differences(m, {**r, "size": m["size"]}, tol):
        raise MaskError("it has a default header (origin 0, spacing 1, identity direction), so where it "
                        "lies is unknown", fix=fix)
    for name in ("spacing", "direction"):
        if np.max(np.abs(np.asarray(m[name]) - np.asarray(r[name]))) > tol:
            raise MaskError(f"its {name} differs, so it is not a crop of the image's grid", fix=fix)
    index = continuous_index(r, m["origin"])
    nearest = np.rint(index)
    off = np.abs(index - nearest)
    if np.max(off) > tol_voxel:
        axis = "xyz"[int(np.argmax(off))]
        raise MaskError(f"its origin is {float(np.max(off)):.3g} voxel off the image's lattice along {axis} "
                        f"(at most {tol_voxel:g} for a crop)", fix=fix)
    lo = nearest.astype(int)
    hi = lo + np.asarray(m["size"], dtype=int)
    if np.any(lo < 0) or np.any(hi > np.asarray(r["size"], dtype=int)):
        raise MaskError(f"its extent (voxels {tuple(int(v) for v in lo)} to {tuple(int(v) - 1 for v in hi)}) "
                        f"lies outside the image's grid (size {tuple(r['size'])})", fix=fix)
    return int(lo[0]), int(lo[1]), int(lo[2])


def pad_to_grid(array: np.ndarray, offset: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``array`` (z, y, x) placed at voxel ``offset`` (x, y, z) of a zero array of ``size`` (x, y, z).

    Lossless: every value keeps its voxel, so its physical point, when the grids are a crop pair.
    """
    ox, oy, oz = (int(v) for v in offset)
    nx, ny, nz = (int(v) for v in size)
    dz, dy, dx = array.shape
    if min(ox, oy, oz) < 0 or ox + dx > nx or oy + dy > ny or oz + dz > nz:
        raise MaskError(f"a (z, y, x) {array.shape} array at offset (x, y, z) {(ox, oy, oz)} does not fit "
                        f"a grid of size {(nx, ny, nz)}", fix="this is a bug: report it with this message")
    out = np.zeros((nz, ny, nx), dtype=array.dtype)
    out[oz:oz + dz, oy:oy + dy, ox:ox + dx] = array
    return out
