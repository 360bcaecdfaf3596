"""GLCM and GLRLM of the engine against pyradiomics 3.0.1's own classes, run side by side in each test.

Both sides see the same cropped image and mask (cropped as featureextractor crops); our side
gets the grey levels of ``imageoperations.binImage``, so these classes are tested independently
of the discretiser. Cases: brain1 (binWidth 25), every generated case (z-scored: binWidth 0.1
and binCount 32; int16: binWidth 25), a padded crop, seeded noise, and masks that reach the
corners of pyradiomics' C code: stripes (lines whose ROI voxels are never adjacent: GLCM drops
the angle, GLRLM keeps its runs of length 1) and a sparse lattice (no neighbouring voxels at all).
Speed: our per-image time against pyradiomics' class time on brain1 and a ~100k-voxel lesion.
"""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from engine_cases import Case, cases, texture_inputs, texture_table
from radiomics import glcm, glrlm

import features.engine.glcm as engine_glcm
from features.engine.geometry import OFFSETS, RoiGeometry
from features.engine.glcm import GLCM_FEATURES, glcm_features, roi_levels
from features.engine.glrlm import GLRLM_FEATURES, glrlm_features
from features.errors import FeatureError

logging.getLogger("radiomics").setLevel(logging.ERROR)

RTOL = 1e-4
ATOL = 1e-9

CLASSES = {
    "glcm": (glcm.RadiomicsGLCM, glcm_features, GLCM_FEATURES),
    "glrlm": (glrlm.RadiomicsGLRLM, glrlm_features, GLRLM_FEATURES),
}


def _synthetic(name: str, mask: np.ndarray, seed: int, levels: int) -> Case:
    """Integer noise (``levels`` grey values) in the given mask."""
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.integers(0, levels, size=mask.shape).astype(np.int16))
    m = sitk.GetImageFromArray(mask.astype(np.uint8))
    m.CopyInformation(img)
    return Case(name, img, m)


def _corner_cases() -> list[Case]:
    shape = (6, 9, 12)
    noise = np.random.default_rng(7).random(shape) < 0.7
    stripes = np.zeros(shape, bool)
    stripes[1:5, 1:8, 1:11:2] = True  # x lines hold ROI voxels two apart, never adjacent
    lattice = np.zeros(shape, bool)
    lattice[::2, ::2, ::2] = True  # no two ROI voxels are neighbours in any direction
    return [_synthetic(f"noise_{levels}", noise, 100 + levels, levels) for levels in (2, 3, 12)] + [
        _synthetic("stripes", stripes, 11, 4), _synthetic("lattice", lattice, 12, 3)]


def _table() -> list[tuple[Case, dict]]:
    out = texture_table()
    out.append((cases(large=False)[7], {"binCount": 32, "padDistance": 3}))
    out += [(case, {"binWidth": 1}) for case in _corner_cases()]
    return out


TABLE = _table()
PADDED = next(i for i, (_, s) in enumerate(TABLE) if "padDistance" in s)
IDS = [f"{case.name}-{'-'.join(f'{k}{v}' for k, v in s.items())}" for case, s in TABLE]


@functools.lru_cache(maxsize=2)
def _inputs(index: int):
    """Row ``index`` of the table, cropped and binned as pyradiomics does (engine_cases)."""
    return texture_inputs(*TABLE[index])


def _reference(cls, image, mask, settings) -> dict[str, float]:
    extractor = cls(image, mask, **settings)
    extractor.enableAllFeatures()
    with warnings.catch_warnings():  # its nanmean of angle-less stacks warns
        warnings.simplefilter("ignore", RuntimeWarning)
        extractor.execute()
    return {k: float(v) for k, v in extractor.featureValues.items()}


def _mismatches(ref: dict[str, float], ours: dict[str, float]) -> list[str]:
    bad = []
    for name, r in ref.items():
        o = ours[name]
        if np.isnan(r) or np.isnan(o):
            if not (np.isnan(r) and np.isnan(o)):
                bad.append(f"{name}: pyradiomics {r!r}, ours {o!r}")
        elif abs(o - r) > ATOL and abs(o - r) > RTOL * abs(r):
            bad.append(f"{name}: pyradiomics {r!r}, ours {o!r}")
    return bad


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_feature_names_are_pyradiomics_non_deprecated(cls_name):
    cls, _, names = CLASSES[cls_name]
    expected = {k for k, deprecated in cls.getFeatureNames().items() if not deprecated}
    assert set(names) == expected and len(names) == len(expected)


@pytest.mark.parametrize("index", range(len(TABLE)), ids=IDS)
@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_agrees_with_pyradiomics(cls_name, index):
    cls, ours_fn, names = CLASSES[cls_name]
    image, mask, settings, q, geometry = _inputs(index)
    ref = _reference(cls, image, mask, settings)
    ours = ours_fn(q, geometry)
    assert set(ours) == set(names) == set(ref)
    assert not _mismatches(ref, ours), _mismatches(ref, ours)


def test_corner_cases_reach_the_c_details():
    """The corner masks do what they are there for (so the agreement above covers those paths)."""
    rows = {case.name: i for i, (case, _) in enumerate(TABLE)}
    *_, q, geometry = _inputs(rows["lattice"])
    assert all(a.size == 0 for a, _ in geometry.pairs)
    out = glcm_features(q, geometry)
    assert np.isnan(out["Contrast"]) and np.isnan(out["MCC"])
    assert glrlm_features(q, geometry)["ShortRunEmphasis"] == 1.0  # runs of one voxel only
    *_, q, geometry = _inputs(rows["stripes"])
    along_x = [tuple(o) for o in OFFSETS.tolist()].index((0, 0, 1))
    assert geometry.pairs[along_x][0].size == 0  # no adjacent pair along x, yet runs there
    assert np.isfinite(glrlm_features(q, geometry)["RunEntropy"])


@pytest.mark.parametrize("index", [0, 1, 2, 40, PADDED, len(TABLE) - 3], ids=lambda i: IDS[i])
def test_mcc_exact_path_is_pyradiomics_bit_for_bit(index, monkeypatch):
    """Without the symmetric shortcut, MCC is pyradiomics' own float (same Q, eigvals, angle order)."""
    image, mask, settings, q, geometry = _inputs(index)
    ref = _reference(glcm.RadiomicsGLCM, image, mask, settings)["MCC"]
    shortcut = glcm_features(q, geometry)["MCC"]
    monkeypatch.setattr(engine_glcm, "_mcc_symmetric", lambda *args: None)
    exact = glcm_features(q, geometry)["MCC"]
    assert exact == ref or (np.isnan(exact) and np.isnan(ref))
    assert shortcut == pytest.approx(exact, rel=1e-6, nan_ok=True)


def test_mcc_shortcut_is_taken_on_ordinary_rois(monkeypatch):
    """The symmetric shortcut is what the agreement table exercises on ordinary lesions."""
    *_, q, geometry = _inputs(0)  # brain1
    assert roi_levels(q, geometry)[0].size > 2
    original, taken = engine_glcm._mcc_symmetric, []

    def spy(*args):
        taken.append(original(*args))
        return taken[-1]

    monkeypatch.setattr(engine_glcm, "_mcc_symmetric", spy)
    glcm_features(q, geometry)
    assert len(taken) == 1 and taken[0] is not None


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_values_outside_the_roi_do_not_matter(cls_name):
    _, ours_fn, _ = CLASSES[cls_name]
    *_, q, geometry = _inputs(PADDED)
    noisy = q.copy()
    outside = np.ones(q.size, bool)
    outside[geometry.flat] = False
    noisy.reshape(-1)[outside] = np.random.default_rng(3).integers(-5, 99, size=int(outside.sum()))
    assert outside.any()
    assert ours_fn(noisy, geometry) == ours_fn(q, geometry)


def test_bad_grey_levels_are_refused():
    mask = np.zeros((3, 4, 5), bool)
    mask[1, 1:3, 1:4] = True
    geometry = RoiGeometry.from_mask(mask)
    q = np.ones(mask.shape, np.int64)
    q[1, 2, 2] = 0
    with pytest.raises(FeatureError, match="grey level 0"):
        glcm_features(q, geometry)
    with pytest.raises(FeatureError, match="not integer"):
        glrlm_features(q.astype(float), geometry)
    with pytest.raises(FeatureError, match="no voxels"):
        roi_levels(q, RoiGeometry.from_mask(np.zeros((2, 2, 2), bool)))
    assert roi_levels(np.where(mask, 7, 0), geometry)[0].tolist() == [7]


