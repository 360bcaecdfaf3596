"""GLSZM, GLDM and NGTDM of the engine against pyradiomics 3.0.1, run side by side in each test.

Both sides see the same cropped image and mask; our side gets the grey levels of
``imageoperations.binImage``, so these classes are tested independently of the discretiser.
Cases: brain1 (binWidth 25), every generated case (z-scored: binWidth 0.1 and binCount 32;
int16: binWidth 25), a padded crop (values outside the ROI must not matter) and seeded noise
with many small zones.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import SimpleITK as sitk
from engine_cases import Case, cases, texture_inputs, texture_table
from radiomics import gldm, glszm, ngtdm

from features.engine.geometry import RoiGeometry
from features.engine.gldm import GLDM_FEATURES, dependence_counts, gldm_features
from features.engine.glszm import GLSZM_FEATURES, glszm_features, zones
from features.engine.ngtdm import NGTDM_FEATURES, ngtdm_features
from features.errors import FeatureError

logging.getLogger("radiomics").setLevel(logging.ERROR)

RTOL = 1e-4
ATOL = 1e-9

CLASSES = {
    "glszm": (glszm.RadiomicsGLSZM, glszm_features, GLSZM_FEATURES),
    "gldm": (gldm.RadiomicsGLDM, gldm_features, GLDM_FEATURES),
    "ngtdm": (ngtdm.RadiomicsNGTDM, ngtdm_features, NGTDM_FEATURES),
}


def _noise(seed: int, levels: int) -> Case:
    """Uniform integer noise in a random blob: many one-voxel zones, every dependence count."""
    rng = np.random.default_rng(seed)
    shape = (12, 14, 16)
    image = rng.integers(0, levels, size=shape).astype(np.int16)
    mask = rng.random(shape) < 0.7
    img = sitk.GetImageFromArray(image)
    m = sitk.GetImageFromArray(mask.astype(np.uint8))
    m.CopyInformation(img)
    return Case(f"noise_{seed}_{levels}", img, m)


def _table() -> list[tuple[Case, dict]]:
    out = texture_table()
    out.append((cases(large=False)[5], {"binCount": 32, "padDistance": 3}))
    out += [(_noise(100 + k, levels), {"binWidth": 1}) for k, levels in enumerate((2, 3, 12))]
    return out


TABLE = _table()
IDS = [f"{case.name}-{'-'.join(f'{k}{v}' for k, v in s.items())}" for case, s in TABLE]


@functools.lru_cache(maxsize=4)
def _inputs(index: int):
    """Row ``index`` of the table, cropped and binned as pyradiomics does (engine_cases)."""
    return texture_inputs(*TABLE[index])


def _reference(cls, image, mask, settings) -> dict[str, float]:
    extractor = cls(image, mask, **settings)
    extractor.enableAllFeatures()
    return {k: float(v) for k, v in extractor.execute().items()}


def _assert_close(ours: dict[str, float], ref: dict[str, float]) -> None:
    assert set(ours) == set(ref)
    bad = []
    for name, r in ref.items():
        o = ours[name]
        if np.isnan(r) or np.isnan(o):
            ok = np.isnan(r) and np.isnan(o)
        elif abs(r) < 1e-6:
            ok = abs(o - r) <= ATOL
        else:
            ok = abs(o - r) <= RTOL * abs(r)
        if not ok:
            bad.append(f"{name}: ours {o!r} pyradiomics {r!r}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("index", range(len(TABLE)), ids=IDS)
@pytest.mark.parametrize("klass", sorted(CLASSES))
def test_matches_pyradiomics(klass: str, index: int) -> None:
    cls, ours_fn, names = CLASSES[klass]
    image, mask, settings, q, geometry = _inputs(index)
    ref = _reference(cls, image, mask, settings)
    ours = ours_fn(q, geometry)
    assert tuple(ours) == names
    _assert_close(ours, ref)


def test_outside_values_ignored() -> None:
    """Grey levels outside the ROI (arbitrary by contract) change nothing."""
    padded = next(k for k, (_, settings) in enumerate(TABLE) if "padDistance" in settings)
    *_, q, geometry = _inputs(padded)
    rng = np.random.default_rng(7)
    noisy = rng.integers(1, 5, size=q.shape)
    noisy.reshape(-1)[geometry.flat] = q.reshape(-1)[geometry.flat]
    for _, fn, _ in CLASSES.values():
        assert fn(noisy, geometry) == fn(q, geometry)


def test_zones_and_dependences_by_hand() -> None:
    """A 2D example: zones are 26- (here 8-) connected, dependences exclude the voxel itself."""
    q = np.array([[[1, 1, 2],
                   [2, 1, 1],
                   [2, 2, 3]]])
    roi = np.ones_like(q, dtype=bool)
    roi[0, 2, 2] = False  # the 3 is outside the ROI
    geometry = RoiGeometry.from_mask(roi)
    levels, sizes = zones(q, geometry)
    assert sorted(zip(levels.tolist(), sizes.tolist(), strict=True)) == [(1, 4), (2, 1), (2, 3)]
    dep = dependence_counts(q, geometry)
    # ROI order: (0,0)=1 (0,1)=1 (0,2)=2 (1,0)=2 (1,1)=1 (1,2)=1 (2,0)=2 (2,1)=2
    assert dep.tolist() == [2, 3, 0, 2, 3, 2, 2, 2]


@pytest.mark.parametrize("klass", sorted(CLASSES))
def test_refuses_what_pyradiomics_refuses(klass: str) -> None:
    """Undiscretised levels (< 1) and an empty ROI are data errors that say so, not wrong numbers."""
    fn = CLASSES[klass][1]
    roi = np.zeros((3, 3, 3), dtype=bool)
    roi[1, 1, :] = True
    q = np.ones((3, 3, 3), dtype=np.int64)
    q[1, 1, 2] = 0
    with pytest.raises(FeatureError, match="grey level 0"):
        fn(q, RoiGeometry.from_mask(roi))
    with pytest.raises(FeatureError, match="no voxels"):
        fn(q, RoiGeometry.from_mask(np.zeros((3, 3, 3), dtype=bool)))
