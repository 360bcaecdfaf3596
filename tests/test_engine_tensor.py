"""The torch backend of the radiomics engine (features.engine.tensor) against the numba path.

The agreement with pyradiomics itself is tests/test_engine_agreement.py (backends "torch-cpu" and,
with a GPU, "cuda"); here: the torch backend gives the numba path's values to ~1e-9, a batch of
many jobs gives what each job gives alone, ``extract_rois`` with a device gives per-ROI
``extract``, a refused ROI or job gets its FeatureError while the others are computed, and a
device torch cannot use is refused with a fix. Tests named ``cuda`` run where torch sees a GPU
(benchmarks/gpu/check.sh selects them with ``-k cuda``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cache

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from engine_cases import Case, cases
from test_engine_agreement import OURS, load

from features.engine import extract
from features.engine.batch import extract_rois
from features.engine.discretise import discretise
from features.engine.filters import images, prepare
from features.engine.geometry import RoiGeometry
from features.engine.settings import parse_params
from features.engine.tensor import Job, resolve_device, texture_batch
from features.errors import FeatureError, RadiomicsParamsError

REL = 1e-9
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="torch sees no CUDA GPU")


@cache
def params() -> dict:
    return load(OURS)


@cache
def table() -> dict[str, Case]:
    return {c.name: c for c in cases(large=False)}


def assert_close(ref: Mapping[str, float], got: Mapping[str, float], rel: float = REL) -> None:
    """Same keys in the same order; equal within ``rel`` (1e-12 absolute near 0), NaN alike."""
    assert list(ref) == list(got)
    bad = []
    for key, r in ref.items():
        g = got[key]
        if math.isnan(r) or math.isnan(g):
            if not (math.isnan(r) and math.isnan(g)):
                bad.append((key, r, g))
        elif abs(g - r) > max(rel * abs(r), 1e-12):
            bad.append((key, r, g))
    assert not bad, f"{len(bad)} features differ, e.g. {bad[:6]}"


def jobs_of(case: Case) -> list[Job]:
    """The (ROI, image) jobs of one case under radiomics.yaml, as the extract hook builds them."""
    p = parse_params(params())
    roi = prepare(case.image, case.mask, p)
    geometry = RoiGeometry.from_mask(roi.mask)
    out = []
    for image_type in p.image_types:
        for _, array in images(roi, image_type):
            q, _ = discretise(array, geometry, image_type.bin_width, image_type.bin_count)
            out.append(Job(geometry.values(array), geometry.values(q), geometry,
                           image_type.voxel_array_shift, roi.spacing))
    return out


def patient(case: Case) -> dict[str, sitk.Image]:
    """Three nested ROIs of one image, as ingest writes them (edema = overall minus tumor)."""
    core = sitk.BinaryErode(case.mask, [2, 2, 2])
    return {"edema": sitk.And(case.mask, sitk.Not(core)), "tumor": core, "overall": case.mask}


CASES = ["blob_r6_1", "one_slice_0", "flat_1", "parts_2", "aniso_6.5_0.78_0", "shell_7_6",
         "tiny_21", "int16_0"]


@pytest.mark.parametrize("name", CASES)
def test_torch_cpu_equals_numba(name: str) -> None:
    c = table()[name]
    assert_close(extract(c.image, c.mask, params()), extract(c.image, c.mask, params(), device="cpu"))


def test_batch_equals_one_job_at_a_time() -> None:
    jobs = [j for name in ("blob_r5_0", "one_slice_1", "flat_0", "tiny_27") for j in jobs_of(table()[name])]
    classes = parse_params(params()).texture_classes
    together = texture_batch(jobs, classes, "cpu")
    chunked = texture_batch(jobs, classes, "cpu", max_cells=20000)  # many small chunks
    for job, a, b in zip(jobs, together, chunked, strict=True):
        alone = texture_batch([job], classes, "cpu")[0]
        assert isinstance(alone, dict) and isinstance(a, dict) and isinstance(b, dict)
        assert_close(alone, a, rel=1e-12)
        assert_close(alone, b, rel=1e-12)


def test_bad_job_gets_its_error_and_the_others_are_computed() -> None:
    good = jobs_of(table()["blob_r4_0"])[:2]
    bad = Job(good[0].values, np.zeros_like(good[0].levels), good[0].geometry)
    classes = parse_params(params()).texture_classes
    out = texture_batch([good[0], bad, good[1]], classes, "cpu")
    assert isinstance(out[1], FeatureError) and "grey level 0" in str(out[1]) and out[1].fix
    assert out[0] == texture_batch([good[0]], classes, "cpu")[0]
    assert isinstance(out[2], dict) and len(out[2]) == 93


def test_extract_rois_with_device_matches_extract() -> None:
    c = table()["blob_r8_0"]
    masks = patient(c)
    tiny = np.zeros(sitk.GetArrayViewFromImage(c.mask).shape, np.uint8)
    tiny[10, 10, 10:15] = 1  # 5 voxels: below minimumROISize, pyradiomics refuses it
    masks["tiny"] = sitk.GetImageFromArray(tiny)
    masks["tiny"].CopyInformation(c.mask)
    got = extract_rois(c.image, masks, params(), device="cpu")
    numba = extract_rois(c.image, masks, params())
    assert list(got) == list(masks)
    assert isinstance(got["tiny"], FeatureError) and isinstance(numba["tiny"], FeatureError)
    assert str(got["tiny"]) == str(numba["tiny"])
    for name in ("edema", "tumor", "overall"):
        assert_close(extract(c.image, masks[name], params(), device="cpu"), got[name], rel=1e-12)
        assert_close(numba[name], got[name])


def test_shape_only_params_need_no_torch_work() -> None:
    c = table()["blob_r4_1"]
    p = {**params(), "featureClass": {"shape": None}}
    assert extract(c.image, c.mask, p, device="cpu") == extract(c.image, c.mask, p)


@pytest.mark.skipif(CUDA, reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    c = table()["blob_r4_0"]
    with pytest.raises(RadiomicsParamsError, match="no CUDA GPU") as e:
        extract(c.image, c.mask, params(), device="cuda")
    assert "cpu" in e.value.fix
    with pytest.raises(RadiomicsParamsError):
        extract_rois(c.image, {"a": c.mask}, params(), device="cuda")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(RadiomicsParamsError, match="unknown torch device"):
        resolve_device("tpu-please")


@needs_cuda
@pytest.mark.parametrize("name", CASES)
def test_cuda_equals_numba(name: str) -> None:
    c = table()[name]
    assert_close(extract(c.image, c.mask, params()), extract(c.image, c.mask, params(), device="cuda"))


@needs_cuda
def test_cuda_batch_and_rois() -> None:
    c = table()["blob_r8_0"]
    masks = patient(c)
    got = extract_rois(c.image, masks, params(), device="cuda")
    ref = extract_rois(c.image, masks, params(), device="cpu")
    for name in masks:
        assert_close(ref[name], got[name])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)],
                         ids=["torch-cpu", "cuda"])
def test_threads_sharing_the_device_give_the_serial_results(device: str) -> None:
    """A GPU worker's task threads share its device, each call on a stream of its own
    (``features.devices.own_stream``): patients computed in 3 threads at once equal the serial
    results, bit for bit on the CPU (CUDA's atomic adds may reorder a sum: 1e-9 there)."""
    from concurrent.futures import ThreadPoolExecutor

    names = ["blob_r8_0", "parts_2", "aniso_6.5_0.78_0"]
    work = [(table()[n].image, patient(table()[n])) for n in names] * 2
    serial = [extract_rois(image, masks, params(), device=device) for image, masks in work[:3]]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(lambda w: extract_rois(w[0], w[1], params(), device=device), work))
    for i, got in enumerate(threaded):
        want = serial[i % 3]
        assert list(got) == list(want)
        for roi, values in want.items():
            if device == "cuda":
                assert_close(values, got[roi])
                continue
            assert list(got[roi]) == list(values), roi
            np.testing.assert_array_equal(np.array(list(got[roi].values()), dtype=float),
                                          np.array(list(values.values()), dtype=float), err_msg=roi)
