"""Generated image/mask cases on which the radiomics engine is checked against pyradiomics 3.0.1.

Each case is a SimpleITK image and binary mask (value 1) covering one situation the engine must
handle as pyradiomics does: tiny and one-slice ROIs, thin shells, a large lesion, flat regions,
disconnected parts, anisotropic spacing, z-scored MR values as ingest writes them, and integer
CT-like values. Deterministic: case ``k`` is built from ``numpy.random.default_rng(k)``.

``cases()`` gives the default table (>= 50 cases); ``cases(large=False)`` leaves out the
100k-voxel lesions for quick runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DATA = Path(__file__).resolve().parent / "data" / "pyradiomics"


@dataclass(frozen=True)
class Case:
    name: str
    image: sitk.Image
    mask: sitk.Image

    def __repr__(self) -> str:  # pytest ids
        return self.name


def _to_sitk(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    return img


def _mr(rng: np.random.Generator, shape, zscore: bool = True) -> np.ndarray:
    """A smooth, noisy MR-like volume; z-scored (float32) or integer-valued (int16)."""
    noise = rng.normal(size=shape)
    img = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(noise), 2.0))
    img = img / (img.std() + 1e-12) + 0.35 * rng.normal(size=shape)
    if zscore:
        return ((img - img.mean()) / img.std()).astype(np.float32)
    return np.round(400 + 120 * img).astype(np.int16)


def _ellipsoid(shape, center, radii) -> np.ndarray:
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    d = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), center, radii, strict=True))
    return d <= 1.0


def _blob(rng: np.random.Generator, shape, radius: float) -> np.ndarray:
    """An irregular lesion: an ellipsoid with a noisy boundary."""
    center = [n / 2 + rng.uniform(-1, 1) for n in shape]
    radii = [radius * rng.uniform(0.7, 1.3) for _ in shape]
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    d = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), center, radii, strict=True)))
    wobble = sitk.GetArrayFromImage(
        sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(rng.normal(size=shape)), 2.0))
    return d + 0.15 * wobble / (wobble.std() + 1e-12) <= 1.0


def _mask(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    m = sitk.GetImageFromArray(array.astype(np.uint8))
    m.CopyInformation(like)
    return m


def _case(name: str, image: np.ndarray, mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Case:
    img = _to_sitk(image, spacing, origin=(-12.5, 30.0, 4.25))
    return Case(name, img, _mask(mask, img))


def _generated(large: bool) -> list[Case]:
    out: list[Case] = []
    k = 0

    def rng() -> np.random.Generator:
        nonlocal k
        k += 1
        return np.random.default_rng(k)

    # Irregular lesions of several sizes, z-scored, isotropic 1 mm (as ingest writes them).
    for radius in (3, 4, 5, 6, 8, 10, 12):
        for rep in range(3):
            r = rng()
            shape = (2 * radius + 14,) * 3
            out.append(_case(f"blob_r{radius}_{rep}", _mr(r, shape), _blob(r, shape, radius)))
    # The same on anisotropic grids (in-plane sub-millimetre, thick slices).
    for spacing in ((0.78, 0.78, 6.5), (0.9, 0.9, 3.0), (1.0, 0.5, 2.0), (1.4, 1.4, 1.0)):
        for rep in range(2):
            r = rng()
            shape = (14, 40, 44)
            out.append(_case(f"aniso_{spacing[2]}_{spacing[1]}_{rep}", _mr(r, shape),
                             _blob(r, shape, 5), spacing=spacing))
    # Integer-valued (CT/raw MR-like) images.
    for rep in range(4):
        r = rng()
        shape = (30, 30, 30)
        out.append(_case(f"int16_{rep}", _mr(r, shape, zscore=False), _blob(r, shape, 6 + rep)))
    # A ROI of exactly 20 voxels (minimumROISize), and a few other tiny ones.
    for n in (20, 21, 27, 40):
        r = rng()
        shape = (16, 16, 16)
        m = np.zeros(shape, bool)
        m[6:9, 6:9, 6:9] = True
        flat = np.flatnonzero(m)
        keep = r.choice(flat, size=min(n, flat.size), replace=False) if n < flat.size else flat
        m = np.zeros(m.size, bool)
        m[keep] = True
        if n > 27:
            m = m.reshape(shape)
            m[6:9, 9, 6:9] = True
            m[6, 6:9, 9] = True
            m = m.ravel()
            m[np.flatnonzero(m)[n:]] = False
        out.append(_case(f"tiny_{n}", _mr(r, shape), m.reshape(shape)))
    # One-slice ROIs (2D in a 3D volume), isotropic and thick-slice.
    for rep, spacing in enumerate(((1.0, 1.0, 1.0), (0.8, 0.8, 5.0), (1.0, 1.0, 1.0))):
        r = rng()
        shape = (9, 36, 36)
        m = np.zeros(shape, bool)
        m[4] = _blob(r, (9, 36, 36), 9)[4] if rep < 2 else _ellipsoid((1, 36, 36), (0, 18, 18), (1, 12, 5))[0]
        out.append(_case(f"one_slice_{rep}", _mr(r, shape), m, spacing=spacing))
    # Thin shells (the peritumoral ring of ingest's "edema minus tumor" masks).
    for outer, inner in ((8, 7), (10, 8), (7, 6)):
        r = rng()
        shape = (28, 28, 28)
        c = (14, 14, 14)
        m = _ellipsoid(shape, c, (outer,) * 3) & ~_ellipsoid(shape, c, (inner,) * 3)
        out.append(_case(f"shell_{outer}_{inner}", _mr(r, shape), m))
    # Flat regions: one grey level inside the ROI (with and without texture around it).
    for rep, value in enumerate((0.0, 1.3, -2.0)):
        r = rng()
        shape = (24, 24, 24)
        img = _mr(r, shape)
        m = _blob(r, shape, 6)
        img[m] = value
        out.append(_case(f"flat_{rep}", img, m))
    # Two (and three) disconnected parts.
    for rep in range(3):
        r = rng()
        shape = (24, 40, 40)
        m = _ellipsoid(shape, (12, 12, 12), (5, 5, 5)) | _ellipsoid(shape, (12, 28, 28), (4, 6, 5))
        if rep == 2:
            m |= _ellipsoid(shape, (5, 30, 8), (2, 2, 2))
        out.append(_case(f"parts_{rep}", _mr(r, shape), m))
    # A cube touching the image border (no room for padding).
    r = rng()
    shape = (20, 20, 20)
    m = np.zeros(shape, bool)
    m[:8, :8, :8] = True
    out.append(_case("border_cube", _mr(r, shape), m))
    if large:
        # 100k-voxel lesions (radius ~29 mm).
        for rep in range(2):
            r = rng()
            shape = (72, 72, 72)
            out.append(_case(f"large_{rep}", _mr(r, shape), _blob(r, shape, 29)))
    return out


def brain1() -> Case:
    """PyRadiomics' own brain1 MR and lesion (tests/data/pyradiomics, BSD-3-Clause)."""
    return Case("brain1", sitk.ReadImage(str(DATA / "brain1_image.nrrd")),
                sitk.ReadImage(str(DATA / "brain1_label.nrrd")))


def cases(large: bool = True) -> list[Case]:
    """The generated table (see the module docstring)."""
    return _generated(large)


def texture_inputs(case: Case, settings: dict):
    """A table row prepared as pyradiomics prepares a texture class: the ``checkMask`` +
    ``cropToTumorMask`` crop (``padDistance`` taken from ``settings``, default 0), the settings
    left for the class, the ``binImage`` grey levels and the ROI's :class:`RoiGeometry`."""
    from radiomics import imageoperations

    from features.engine.geometry import RoiGeometry

    settings = dict(settings)
    pad = settings.pop("padDistance", 0)
    bbox, _ = imageoperations.checkMask(case.image, case.mask, label=1)
    image, mask = imageoperations.cropToTumorMask(case.image, case.mask, bbox, padDistance=pad)
    roi = sitk.GetArrayFromImage(mask) == 1
    q, _ = imageoperations.binImage(sitk.GetArrayFromImage(image), roi, **settings)
    return image, mask, settings, q, RoiGeometry.from_mask(roi)


def texture_table() -> list[tuple[Case, dict]]:
    """brain1 at binWidth 25, then every case: int16 at binWidth 25, z-scored at binWidth 0.1 and
    at binCount 32 (the two discretisations of radiomics.yaml)."""
    out = [(brain1(), {"binWidth": 25})]
    for case in cases():
        if case.image.GetPixelID() == sitk.sitkInt16:
            out.append((case, {"binWidth": 25}))
        else:
            out += [(case, {"binWidth": 0.1}), (case, {"binCount": 32})]
    return out
