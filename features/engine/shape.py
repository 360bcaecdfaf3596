"""3D shape features of one ROI, as pyradiomics 3.0.1's ``RadiomicsShape`` computes them.

Surface area and mesh volume come from a port of pyradiomics' marching cubes (``cshape.c``).
The four mesh diameters are cshape.c's largest vertex-pair distances, found exactly without its
O(n^2) loop over all vertices: a farthest pair only uses extreme points, so per slice, column
and row plane only the 2D convex-hull vertices are paired, and in 3D only the vertices that
are extreme in all three of their planes. Distances are computed with cshape.c's formula, so
the maxima are the very same floats. The principal axes replay ``shape.py``'s numpy code line
for line, so that tiny or negative eigenvalues of flat ROIs (and hence NaNs) fall the same way.
"""

from __future__ import annotations

import numpy as np

from features.engine import _shape_kernels as k
from features.errors import FeatureError

SHAPE_FEATURES: tuple[str, ...] = (
    "Elongation", "Flatness", "LeastAxisLength", "MajorAxisLength", "Maximum2DDiameterColumn",
    "Maximum2DDiameterRow", "Maximum2DDiameterSlice", "Maximum3DDiameter", "MeshVolume",
    "MinorAxisLength", "Sphericity", "SurfaceArea", "SurfaceVolumeRatio", "VoxelVolume",
)
"""The 14 non-deprecated 3D shape features of pyradiomics 3.0.1, in its (alphabetical) order."""

# (plane axis, u axis, v axis) of cshape.c's diameters[0..2]: Slice (same z), Column (same y),
# Row (same x).
_PLANES = ((0, 1, 2), (1, 0, 2), (2, 0, 1))


def mesh_diameters(verts: np.ndarray, pixel_spacing: np.ndarray) -> tuple[float, ...]:
    """cshape.c's ``diameters``: max 2D diameter per slice, column, row, and the max 3D one.

    ``verts``: mesh vertices as doubled (z, y, x) voxel indices; ``pixel_spacing``: (z, y, x).
    """
    # cshape.c stores ((double)i + 0.5 * j) * spacing; i + 0.5 * j == verts / 2 exactly.
    phys = (verts * 0.5) * pixel_spacing[None, :]
    extreme = np.zeros((3, len(verts)), dtype=bool)
    best = [k.plane_diameter(verts, phys, p, u, v, extreme[n])
            for n, (p, u, v) in enumerate(_PLANES)]
    candidates = np.flatnonzero(extreme.all(axis=0))
    best.append(k.max_distance(candidates, phys))
    return tuple(float(np.sqrt(d)) for d in best)


def _eigenvalues(padded: np.ndarray, pixel_spacing: np.ndarray) -> np.ndarray:
    """Sorted eigenvalues of the voxel-coordinate covariance, exactly as shape.py computes them."""
    labelled = np.where(padded != 0)
    n_voxels = len(labelled[0])
    coordinates = np.array(labelled, dtype="int").transpose((1, 0))
    physical = coordinates * pixel_spacing[None, :]
    physical -= np.mean(physical, axis=0)
    physical /= np.sqrt(n_voxels)
    covariance = np.dot(physical.T.copy(), physical)
    eigen = np.linalg.eigvals(covariance)
    # shape.py rounds machine-precision negatives (some 2D ROIs) to 0; larger ones give NaN.
    eigen[np.bitwise_and(eigen < 0, eigen > -1e-10)] = 0
    eigen.sort()
    return eigen


def _axes(eigen: np.ndarray) -> dict[str, float]:
    """Axis lengths, elongation and flatness, with shape.py's NaN for negative eigenvalues.

    numpy's ``eigvals`` may return complex values with ~0 imaginary parts (symmetric ROIs);
    shape.py then computes on them as they are, and only the real part is reported here.
    """
    least, minor, major = eigen
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {
            "MajorAxisLength": np.nan if major < 0 else np.sqrt(major) * 4,
            "MinorAxisLength": np.nan if minor < 0 else np.sqrt(minor) * 4,
            "LeastAxisLength": np.nan if least < 0 else np.sqrt(least) * 4,
            "Elongation": np.nan if minor < 0 or major < 0 else np.sqrt(minor / major),
            "Flatness": np.nan if least < 0 or major < 0 else np.sqrt(least / major),
        }
    return {name: float(np.real(value)) for name, value in values.items()}


def shape_features(mask: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """The 14 shape features of ``RadiomicsShape`` for a cropped ROI mask.

    ``mask``: bool (z, y, x) array cropped to the ROI's bounding box as pyradiomics crops it for
    shape (padded here by one voxel, as shape.py does); ``spacing``: SimpleITK's (x, y, z).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise FeatureError(f"shape features need a 3D mask, got shape {mask.shape}")
    n_voxels = int(np.count_nonzero(mask))
    if n_voxels == 0:
        raise FeatureError("shape features need a non-empty ROI")
    # shape.py pads by one voxel, so that the marching cubes close the mesh at the box's faces.
    padded = np.zeros(tuple(n + 2 for n in mask.shape), dtype=np.uint8)
    padded[1:-1, 1:-1, 1:-1] = mask != 0
    pixel_spacing = np.array(spacing[::-1], dtype=np.float64)
    area, volume, verts = k.march(padded, pixel_spacing, n_voxels, k.LEFT, k.RIGHT, k.TRI,
                                  k.VERT, k.POINT_BITS, k.POINT_EDGES)
    slice_d, column_d, row_d, max3d = mesh_diameters(verts, pixel_spacing)
    z, y, x = pixel_spacing
    out = {
        "MeshVolume": volume,
        "VoxelVolume": float(n_voxels * (z * x * y)),
        "SurfaceArea": area,
        "SurfaceVolumeRatio": area / volume,
        "Sphericity": (36 * np.pi * volume ** 2) ** (1.0 / 3.0) / area,
        "Maximum3DDiameter": max3d,
        "Maximum2DDiameterSlice": slice_d,
        "Maximum2DDiameterColumn": column_d,
        "Maximum2DDiameterRow": row_d,
        **_axes(_eigenvalues(padded, pixel_spacing)),
    }
    return {name: out[name] for name in SHAPE_FEATURES}
