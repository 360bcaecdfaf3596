"""The engine's 3D shape features agree with pyradiomics 3.0.1, computed in the same test.

Reference: ``radiomics.shape.RadiomicsShape`` on the image and mask cropped as featureextractor
crops them for shape (``checkMask`` then ``cropToTumorMask`` without padding). The exact-hull
diameters are also checked bit for bit against cshape.c on seeded random masks, where ties and
collinear vertices abound.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from engine_cases import Case, brain1, cases
from radiomics import cShape, imageoperations
from radiomics.shape import RadiomicsShape

from features.engine.shape import SHAPE_FEATURES, shape_features
from features.errors import FeatureError

logging.getLogger("radiomics").setLevel(logging.ERROR)

CASES = [brain1(), *cases()]
REL, ABS = 1e-4, 1e-9


def _crop(case: Case, pad: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """Image and mask cropped as featureextractor crops them before shape (pad 0)."""
    bbox, _ = imageoperations.checkMask(case.image, case.mask)
    assert bbox is not None, f"{case.name}: pyradiomics rejects the mask"
    return imageoperations.cropToTumorMask(case.image, case.mask, bbox, padDistance=pad)


def _reference(image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """pyradiomics' shape features (its eigvals may be complex with ~0 imaginary part)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = RadiomicsShape(image, mask).execute()
        return {name: float(np.real(value)) for name, value in values.items()}


def _ours(mask: sitk.Image) -> dict[str, float]:
    return shape_features(sitk.GetArrayFromImage(mask) == 1, mask.GetSpacing())


def _assert_close(ours: dict[str, float], ref: dict[str, float], label: str) -> None:
    assert set(ours) == set(ref) == set(SHAPE_FEATURES), label
    for name in SHAPE_FEATURES:
        o, r = ours[name], ref[name]
        if math.isnan(r) or math.isnan(o):
            assert math.isnan(r) and math.isnan(o), f"{label} {name}: ours {o}, pyradiomics {r}"
            continue
        ok = abs(o - r) <= ABS if abs(r) <= ABS else abs(o - r) <= REL * abs(r)
        assert ok, f"{label} {name}: ours {o!r}, pyradiomics {r!r}"


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_matches_pyradiomics(case: Case) -> None:
    image, mask = _crop(case)
    _assert_close(_ours(mask), _reference(image, mask), case.name)


@pytest.mark.parametrize("name", ["brain1", "one_slice_1", "border_cube", "aniso_6.5_0.78_0"])
def test_matches_on_a_padded_crop(name: str) -> None:
    """A crop with featureextractor's texture padding (5) gives pyradiomics' values on it too."""
    case = next(c for c in CASES if c.name == name)
    image, mask = _crop(case, pad=5)
    _assert_close(_ours(mask), _reference(image, mask), f"{name} pad 5")


def _tight(array: np.ndarray) -> np.ndarray:
    """``array`` cut to the bounding box of its non-zero voxels."""
    idx = np.nonzero(array)
    return array[tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)]


def _images(array: np.ndarray, spacing: tuple[float, float, float]) -> tuple[sitk.Image, sitk.Image]:
    image = sitk.GetImageFromArray(np.zeros(array.shape, dtype=np.float32))
    image.SetSpacing(spacing)
    mask = sitk.GetImageFromArray(array.astype(np.uint8))
    mask.CopyInformation(image)
    return image, mask


def _degenerate() -> list[tuple[str, np.ndarray, tuple[float, float, float]]]:
    line = np.ones((1, 1, 7), bool)
    plate = np.ones((1, 4, 6), bool)
    diagonal = np.zeros((5, 5, 5), bool)
    diagonal[np.arange(5), np.arange(5), np.arange(5)] = True
    rng = np.random.default_rng(7)
    sparse = _tight(rng.random((9, 10, 11)) < 0.1)
    return [
        ("single_voxel", np.ones((1, 1, 1), bool), (1.0, 1.0, 1.0)),
        ("single_voxel_aniso", np.ones((1, 1, 1), bool), (0.7, 0.9, 3.3)),
        ("line", line, (0.78125, 0.78125, 2.34)),
        ("plate", plate, (0.78, 0.78, 2.34)),
        ("diagonal", diagonal, (1.0, 1.0, 1.0)),
        ("sparse", sparse, (0.5, 1.3, 2.0)),
        ("full_box", np.ones((3, 5, 4), bool), (1.0, 1.0, 1.0)),
    ]


@pytest.mark.parametrize("name,array,spacing", _degenerate(), ids=[d[0] for d in _degenerate()])
def test_degenerate_rois(name: str, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """Single voxels (0/0 elongation: NaN), lines, plates and scattered voxels."""
    image, mask = _images(array, spacing)
    ref = _reference(image, mask)
    _assert_close(shape_features(array, spacing), ref, name)
    if name.startswith("single_voxel"):
        assert math.isnan(ref["Elongation"]) and math.isnan(ref["Flatness"])


def test_diameters_are_cshape_s_floats_on_random_masks() -> None:
    """Hull-restricted diameters equal cshape.c's all-pairs maxima exactly (same floats)."""
    rng = np.random.default_rng(2024)
    spacings = (1.0, 0.5, 0.78125, 1.3, 2.0, 3.3, 5.0)
    for trial in range(200):
        shape = tuple(int(n) for n in rng.integers(1, 12, size=3))
        mask = rng.random(shape) < rng.uniform(0.05, 0.95)
        if trial % 3 == 0:
            mask = np.ones(shape, bool)
        if not mask.any():
            continue
        spacing = tuple(float(s) for s in rng.choice(spacings, size=3)) if trial % 2 else (1.0,) * 3
        area, volume, diameters = cShape.calculate_coefficients(np.pad(mask, 1),
                                                                np.array(spacing[::-1]))
        ours = shape_features(mask, spacing)
        label = f"trial {trial} shape {shape} spacing {spacing}"
        got = tuple(ours[f"Maximum{n}"] for n in
                    ("2DDiameterSlice", "2DDiameterColumn", "2DDiameterRow", "3DDiameter"))
        assert got == tuple(diameters), label
        assert ours["SurfaceArea"] == pytest.approx(area, rel=1e-12), label
        assert ours["MeshVolume"] == pytest.approx(volume, rel=1e-12), label


def test_bad_masks_are_feature_errors() -> None:
    with pytest.raises(FeatureError, match="non-empty"):
        shape_features(np.zeros((3, 3, 3), bool), (1.0, 1.0, 1.0))
    with pytest.raises(FeatureError, match="3D"):
        shape_features(np.ones((3, 3), bool), (1.0, 1.0, 1.0))


