"""The voxel grid as both stages read it: ingest records it in the image store's ``geometry``
attrs, features rebuild SimpleITK images on it. One definition, so the two never drift.

Grids are plain JSON-able lists in SimpleITK's (x, y, z) order; arrays are numpy (z, y, x).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import numpy as np
import SimpleITK as sitk

from atrx.errors import DataError

__all__ = ["Grid", "as_grid", "continuous_index", "geometry_of", "image_on_grid", "reference_from_geometry"]


class Grid(TypedDict):
    """A voxel grid as plain lists, x, y, z order as SimpleITK reports it (JSON-able)."""

    spacing: list[float]
    origin: list[float]
    direction: list[float]
    size: list[int]


def geometry_of(image: sitk.Image) -> Grid:
    """The grid of ``image`` as plain lists (x, y, z order, as SimpleITK reports it)."""
    return {
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
        "size": [int(v) for v in image.GetSize()],
    }


def _place(image: sitk.Image, geometry: Mapping[str, Any]) -> sitk.Image:
    image.SetSpacing([float(v) for v in geometry["spacing"]])
    image.SetOrigin([float(v) for v in geometry["origin"]])
    image.SetDirection([float(v) for v in geometry["direction"]])
    return image


def reference_from_geometry(geometry: Grid | Mapping[str, Any]) -> sitk.Image:
    """An empty uint8 image on a recorded grid (what resampling needs as its reference)."""
    return _place(sitk.Image([int(v) for v in geometry["size"]], sitk.sitkUInt8), geometry)


def image_on_grid(array: np.ndarray, geometry: Grid | Mapping[str, Any]) -> sitk.Image:
    """A (z, y, x) array as an image on a recorded grid; a shape that does not fit is an error.

    PyRadiomics measures shape in mm and filters in physical units, so the grid must be the real one.
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    size = [int(v) for v in geometry["size"]]
    if list(image.GetSize()) != size:
        raise DataError(
            f"array of shape (z, y, x) {tuple(array.shape)} does not fit the geometry size "
            f"(x, y, z) {tuple(size)}",
            fix="the store's geometry attrs and arrays disagree: re-ingest this study",
        )
    return _place(image, geometry)


def as_grid(grid: Grid | Mapping[str, Any] | sitk.Image | Any) -> Grid:
    """Any description of a grid as a :class:`Grid`: an image, a mapping, or an object with
    ``size``, ``spacing``, ``origin`` and ``direction`` attributes (a plan's header geometry).

    Ingest compares masks against grids that come from headers, from images and from the store;
    one form keeps those comparisons one piece of code.
    """
    if isinstance(grid, sitk.Image):
        return geometry_of(grid)
    get = grid.__getitem__ if isinstance(grid, Mapping) else lambda k: getattr(grid, k)
    return {
        "spacing": [float(v) for v in get("spacing")],
        "origin": [float(v) for v in get("origin")],
        "direction": [float(v) for v in get("direction")],
        "size": [int(v) for v in get("size")],
    }


def continuous_index(grid: Grid | Mapping[str, Any], point: Any) -> np.ndarray:
    """The (x, y, z) continuous voxel index of a physical ``point`` on ``grid`` (what SimpleITK's
    ``TransformPhysicalPointToContinuousIndex`` gives, without building an image)."""
    n = len(grid["spacing"])
    matrix = np.asarray(grid["direction"], dtype=float).reshape(n, n) * np.asarray(grid["spacing"], dtype=float)
    return np.linalg.solve(matrix, np.asarray(point, dtype=float) - np.asarray(grid["origin"], dtype=float))
