"""Radiomics with the repository's parameter file on small synthetic volumes."""

from __future__ import annotations

import copy
import logging
import math
import re

import numpy as np
import pytest
import SimpleITK as sitk

from atrx.names import view_name
from features.errors import FeatureError
from features.radiomics import (
    DEFAULT_PARAMS_PATH,
    extract_radiomics,
    feature_count,
    load_params,
    params_hash,
    radiomics_feature_names,
)

N = 40
EXPECTED_COUNT = 1130


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params()


@pytest.fixture(scope="module")
def image() -> sitk.Image:
    """z-scored noise on a 1 mm grid, as the preprocessing stage delivers it."""
    a = np.random.default_rng(42).standard_normal((N, N, N))
    a = (a - a.mean()) / a.std()
    img = sitk.GetImageFromArray(a.astype(np.float32))
    img.SetOrigin((-20.0, -20.0, -20.0))
    return img


def _mask(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    mask = sitk.GetImageFromArray(array.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def _radius2() -> np.ndarray:
    z, y, x = np.mgrid[:N, :N, :N]
    c = N // 2
    return (z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2


def test_feature_count_matches_the_params_file(params: dict) -> None:
    assert feature_count(params) == EXPECTED_COUNT
    assert feature_count() == EXPECTED_COUNT
    assert f"exactly {EXPECTED_COUNT} features per ROI" in DEFAULT_PARAMS_PATH.read_text()


def test_sphere_features_have_the_declared_names(image: sitk.Image, params: dict) -> None:
    mask = _mask(image, _radius2() <= 10**2)
    features = extract_radiomics(image, mask, "tumor", "t1c", params)

    names = radiomics_feature_names("tumor", "t1c", params)
    assert list(features) == names
    assert len(names) == len(set(names)) == EXPECTED_COUNT
    prefix = view_name("rad", "tumor", "t1c") + "__"
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) and n.startswith(prefix) for n in names)
    assert all(type(v) is float for v in features.values())
    assert sum(math.isnan(v) for v in features.values()) == 0
    assert features["rad_tumor_t1c__original__shape__voxelvolume"] == float(
        (_radius2() <= 100).sum()
    )
    # image types and classes the paper names are all there
    for part in (
        "original__shape",
        "original__ngtdm",
        "wavelet_hhh__glcm",
        "wavelet_lll__gldm",
        "log_sigma_1_0_mm_3d__glszm",
        "log_sigma_3_0_mm_3d__glrlm",
    ):
        assert any(f"__{part}__" in n for n in names), part


def test_edema_ring_mask(image: sitk.Image, params: dict) -> None:
    r2 = _radius2()
    ring = (r2 <= 12**2) & (r2 > 7**2)
    features = extract_radiomics(image, _mask(image, ring), "edema", "t2f", params)
    assert list(features) == radiomics_feature_names("edema", "t2f", params)
    assert features["rad_edema_t2f__original__shape__voxelvolume"] == float(ring.sum())


def test_empty_mask_names_roi_and_sequence(image: sitk.Image, params: dict) -> None:
    with pytest.raises(FeatureError, match=r"roi 'edema' of sequence 't2f'.*0 voxels"):
        extract_radiomics(image, _mask(image, np.zeros((N, N, N))), "edema", "t2f", params)


def test_too_small_roi_is_refused(image: sitk.Image, params: dict) -> None:
    small = np.zeros((N, N, N))
    small[20, 20:22, 20:25] = 1
    with pytest.raises(FeatureError, match=r"'overall'.*10 voxels.*minimumROISize=20"):
        extract_radiomics(image, _mask(image, small), "overall", "t1c", params)


def test_pyradiomics_failure_is_wrapped_with_its_cause(image: sitk.Image, params: dict) -> None:
    line = np.zeros((N, N, N))
    line[20, 20, 5:35] = 1  # 30 voxels but one-dimensional: minimumROIDimensions is 2
    with pytest.raises(
        FeatureError, match=r"PyRadiomics failed on roi 'tumor' .*30 voxels"
    ) as info:
        extract_radiomics(image, _mask(image, line), "tumor", "t1c",
                          {**params, "engine": "pyradiomics"})
    assert info.value.__cause__ is not None
    # our engine names the same reason itself
    with pytest.raises(FeatureError, match=r"roi 'tumor' .*30 voxels.*minimumROIDimensions=2"):
        extract_radiomics(image, _mask(image, line), "tumor", "t1c", params)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda img: _mask(img, (_radius2() <= 25) * 2), "expected a binary mask"),
        (lambda img: sitk.Image(N, N, N - 1, sitk.sitkUInt8), "differs from image size"),
    ],
)
def test_bad_masks(image: sitk.Image, params: dict, bad, message: str) -> None:
    with pytest.raises(FeatureError, match=message):
        extract_radiomics(image, bad(image), "tumor", "t1c", params)


def test_unknown_roi_is_rejected_before_work(image: sitk.Image, params: dict) -> None:
    with pytest.raises(ValueError, match="unknown feature view"):
        extract_radiomics(image, _mask(image, _radius2() <= 25), "necrosis", "t1c", params)


def test_quiet_and_no_lasting_global_changes(image: sitk.Image, params: dict, capfd) -> None:
    level = logging.getLogger("radiomics").level
    tolerance = sitk.ProcessObject.GetGlobalDefaultCoordinateTolerance()
    before = copy.deepcopy(params)
    extract_radiomics(image, _mask(image, _radius2() <= 36), "tumor", "t2f", params)
    assert capfd.readouterr().err == ""
    assert logging.getLogger("radiomics").level == level
    assert sitk.ProcessObject.GetGlobalDefaultCoordinateTolerance() == tolerance
    assert params == before


def test_params_hash_is_canonical(params: dict) -> None:
    reordered = {key: params[key] for key in reversed(list(params))}
    assert params_hash(reordered) == params_hash(params)
    assert re.fullmatch(r"[0-9a-f]{64}", params_hash(params))
    changed = copy.deepcopy(params)
    changed["setting"]["binWidth"] = 0.2
    assert params_hash(changed) != params_hash(params)


def test_load_params_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("setting:\n  label: 2\n")
    with pytest.raises(ValueError, match="label must be 1"):
        load_params(bad)
    bad.write_text("setting:\n  binWidth: -1\n")
    with pytest.raises(ValueError, match="rejected the parameters"):
        load_params(bad)


def test_concurrent_threads_match_serial(image: sitk.Image, params: dict) -> None:
    """Dask may run several extractions in one process; results must not depend on that."""
    from concurrent.futures import ThreadPoolExecutor

    r2 = _radius2()
    masks = [_mask(image, r2 <= 7**2), _mask(image, (r2 <= 9**2) & (r2 > 5**2))]
    serial = [extract_radiomics(image, m, "tumor", "t1c", params) for m in masks]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(
            pool.map(lambda m: extract_radiomics(image, m, "tumor", "t1c", params), masks)
        )
    assert threaded == serial
    assert logging.getLogger("radiomics").level != logging.CRITICAL + 10
