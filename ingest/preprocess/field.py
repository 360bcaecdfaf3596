"""The recorded log bias field on the image's grid: cubic B-spline interpolation, one axis at a time.

Why: ``sitk.Resample(..., sitkBSpline)`` evaluates 4^3 = 64 weighted coefficients at each of the
image's ~3 million voxels (0.75 CPU-s per clinical T1c, a third of N4). The field's coarse grid
(:func:`ingest.preprocess.fitting._field_grid`) shares the image's origin and direction, so the
interpolation is separable: along each axis the image's voxels sit at fixed continuous indices of
the coarse grid, and three small matrix products (4 non-zero weights per row) give the same
cubic B-spline as ITK's ``BSplineInterpolateImageFunction`` (same prefilter, same mirror
boundary), to about 1e-11 of the field (tests/test_preprocess_field.py): the corrected float32
image then differs from ITK's by at most one unit in the last place.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = ["SEPARABLE", "axis_weights", "field_on_grid", "shares_grid_frame"]

#: the ``field_interpolation`` an N4 record names when its field was applied here (records
#: without it were applied by ``sitk.Resample`` and replay that way)
SEPARABLE = "bspline3_separable"


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    a = np.abs(t)
    return np.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def axis_weights(positions: np.ndarray, m: int) -> np.ndarray:
    """``(len(positions), m)`` cubic B-spline weights of ``m`` coefficients at continuous indices
    ``positions`` (0 .. m-1), with ITK's mirror boundary (index -k is k, m-1+k is m-1-k)."""
    w = np.zeros((positions.size, m))
    rows = np.arange(positions.size)
    base = np.floor(positions).astype(np.int64) - 1
    period = max(1, 2 * (m - 1))
    for k in range(4):
        idx = base + k
        j = np.mod(idx, period)
        j = np.where(j > m - 1, period - j, j)
        np.add.at(w, (rows, j), _cubic_bspline(positions - idx))
    return w


def shares_grid_frame(coarse: sitk.Image, image: sitk.Image, tol: float = 1e-6) -> bool:
    """Whether ``coarse`` starts at ``image``'s first voxel with its direction (the separable case)."""
    return (np.allclose(coarse.GetOrigin(), image.GetOrigin(), rtol=0, atol=tol)
            and np.allclose(coarse.GetDirection(), image.GetDirection(), rtol=0, atol=tol))


def field_on_grid(coarse: sitk.Image, image: sitk.Image) -> np.ndarray:
    """float64 (z, y, x) array of the cubic B-spline through ``coarse`` at every voxel of ``image``.

    ``coarse`` must share ``image``'s origin and direction (:func:`shares_grid_frame`); voxel i of
    an axis then lies at continuous index ``i * spacing / coarse_spacing`` of the coarse grid.
    """
    if not shares_grid_frame(coarse, image):
        raise ValueError("the coarse field does not share the image's origin and direction")
    out = ndimage.spline_filter(sitk.GetArrayFromImage(coarse).astype(np.float64), order=3,
                                mode="mirror")
    for itk_axis in range(3):
        np_axis = 2 - itk_axis
        n, m = image.GetSize()[itk_axis], coarse.GetSize()[itk_axis]
        positions = np.arange(n) * (image.GetSpacing()[itk_axis] / coarse.GetSpacing()[itk_axis])
        weights = axis_weights(np.minimum(positions, m - 1), m)
        out = np.moveaxis(np.tensordot(out, weights, axes=([np_axis], [1])), -1, np_axis)
    return np.ascontiguousarray(out)
