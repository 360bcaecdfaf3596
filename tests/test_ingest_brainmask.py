"""The brain mask is the brain on generated heads of every center; 1.0.0 records still replay.

In 1.0.0 the mask was the middle class of a three-class Otsu of the T1c, and on T1c white matter
falls in the bright class with the skull; in ingest's Dask workers it also read a freed image
as zeros, so the stored mask was the lesion alone and the z-score was computed over it. Since
1.1.0 tissue is everything above the head/background Otsu cut, the dark CSF gap plus a 3 mm
opening cut the skull off, and the rule is recorded (``exclude_bright``): a record without the
key replays the 1.0.0 rule.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from atrx.cluster import dask_client
from ingest.preprocess import (
    PREPROCESS_VERSION,
    PreprocessError,
    PreprocessParams,
    brain_mask,
    preprocess_study,
    replay,
)
from ingest.preprocess.ops import from_array, reference_from_geometry
from ingest.synth.cohort import center_plan
from ingest.synth.export import render_patient
from ingest.synth.phantom import GM, LESION_LABELS, SKULL, TUMOR_LABELS

# -- generated heads of every center ---------------------------------------------------------

#: measured on 42 generated heads (seeds 0-2, scale 0.05, all patients): Dice 0.979-0.995
#: against the 1 mm truth (1.0.0 rule: 0.06-0.99, median 0.19); skull share in the mask <= 3.8 %
MIN_DICE = 0.95


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module", params=["A", "B", "C"])
def center_study(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Patient 0 of a center as its scanner acquires it (center effects on), preprocessed."""
    rendered = render_patient(center_plan(request.param, scale=0.05, seed=0)[0])
    t1c, t2f = rendered.t1c, rendered.t2f
    inputs = {
        "t1c": sitk.Cast(t1c.image(), sitk.sitkFloat32), "t2f": sitk.Cast(t2f.image(), sitk.sitkFloat32),
        "lesion": t2f.grid.image(np.isin(rendered.labels_t2f, LESION_LABELS).astype(np.uint8)),
        "lesion_space": "t2f",
        "tumor": t1c.grid.image(np.isin(rendered.labels_t1c, TUMOR_LABELS).astype(np.uint8)),
        "tumor_space": "t1c",
    }
    study = preprocess_study(**inputs, params=PreprocessParams())
    # the mask brought back onto the T1c grid, where the truth labels were sampled
    on_t1c = sitk.Resample(study.image("brain"), t1c.grid.image(rendered.labels_t1c), sitk.Transform(),
                           sitk.sitkNearestNeighbor, 0)
    return {"center": request.param, "inputs": inputs, "study": study, "labels": rendered.labels_t1c,
            "brain_on_t1c": sitk.GetArrayFromImage(on_t1c) > 0}


def test_brain_mask_is_the_brain_on_every_center(center_study: dict[str, Any]) -> None:
    labels, brain = center_study["labels"], center_study["brain_on_t1c"]
    truth = labels >= GM  # grey and white matter, ventricles, edema, rim, necrosis
    assert dice(brain, truth) >= MIN_DICE, center_study["center"]
    assert (brain & (labels == SKULL)).sum() < 0.05 * (labels == SKULL).sum()
    (step,) = [s for s in center_study["study"].steps if s["step"] == "brain_mask"]
    assert step["exclude_bright"] is False and len(step["thresholds"]) == 1
    assert step["opening_mm"] == 3.0
    # the T1c's own mask is the brain; the lesion and tumor add only their border
    assert step["voxels_before_union"] >= 0.95 * step["voxels"]


def _mask_voxels(t1c: np.ndarray, geometry: dict[str, Any], threshold: float) -> int:
    """The brain mask's voxel count; plain arguments, so a Dask worker can run it too."""
    mask = brain_mask(from_array(t1c, reference_from_geometry(geometry)), thresholds=(threshold,))
    return int(sitk.GetArrayFromImage(mask).sum())


def test_brain_mask_is_the_same_in_a_dask_worker(center_study: dict[str, Any]) -> None:
    """1.0.0 read a freed image in ops.brain_mask; in ingest's Dask workers that memory read as
    zeros, so every ingested mask was the lesion alone (``voxels_before_union: 0``)."""
    study = center_study["study"]
    (step,) = [s for s in study.steps if s["step"] == "brain_mask"]
    (z,) = [s for s in study.steps if s["step"] == "zscore" and s["image"] == "t1c"]
    threshold = (step["thresholds"][0] - z["mean"]) / z["std"]  # the cut on the z-scored T1c
    here = _mask_voxels(study.arrays["t1c"], study.geometry, threshold)
    assert abs(here - step["voxels_before_union"]) < 0.001 * here  # z-scoring rounds a few voxels
    with dask_client(workers=1) as client:
        there = [client.submit(_mask_voxels, study.arrays["t1c"], study.geometry, threshold, pure=False)
                 for _ in range(3)]
        assert client.gather(there) == [here] * 3


def test_new_record_replays_exactly(center_study: dict[str, Any]) -> None:
    study = center_study["study"]
    steps = json.loads(json.dumps(study.steps))
    again = replay(steps, **center_study["inputs"])
    for name, arr in study.arrays.items():
        assert np.array_equal(again.arrays[name], arr), name
    assert again.steps == steps and steps[0]["version"] == PREPROCESS_VERSION


# -- the 1.0.0 rule, kept for its records ----------------------------------------------------

#: a small head built from integers only (bit-identical on every platform), on the output grid
SIZE = (44, 52, 40)  # x, y, z voxels of 2.5 mm
SPACING = 2.5
OLD_PARAMS = {"n4_enabled": False, "registration": "none", "spacing_mm": SPACING}

#: the brain_mask step that the 1.0.0 code (git HEAD before 1.1.0) recorded for that head with
#: ``PreprocessParams(**OLD_PARAMS)``, and the sha256 of the brain array it wrote
GOLDEN_1_0_0_STEP: dict[str, Any] = {
    "step": "brain_mask", "from": "t1c", "thresholds": [578.170166015625, 1187.5927734375],
    "opening_mm": 2.0, "union_with": ["lesion", "tumor"], "voxels_before_union": 672, "voxels": 1504,
}
GOLDEN_1_0_0_BRAIN_SHA256 = "28898728692d2e2523f59aba6e3b81f39fab60a506dc93194873333c2180ed64"
#: the 1.0.0 rule's parameters in 1.1.0 terms
AS_1_0_0 = PreprocessParams(**OLD_PARAMS, brain_exclude_bright=True, brain_opening_mm=2.0)


def _ellipsoid(semi: tuple[int, int, int], center: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Integer test x^2 (bc)^2 + y^2 (ac)^2 + z^2 (ab)^2 <= (abc)^2 on the (z, y, x) grid."""
    a, b, c = (np.int64(s) for s in semi)
    z, y, x = np.ogrid[:SIZE[2], :SIZE[1], :SIZE[0]]
    x, y, z = (x - SIZE[0] // 2 - center[0], y - SIZE[1] // 2 - center[1], z - SIZE[2] // 2 - center[2])
    return x * x * (b * c) ** 2 + y * y * (a * c) ** 2 + z * z * (a * b) ** 2 <= (a * b * c) ** 2


def integer_head() -> dict[str, Any]:
    """Skull 1250, CSF 250, grey matter 780, white matter 1000 (brighter than 3-class Otsu's
    middle class once noise blurs them), ventricles, a tumour (rim 1700, core 350) in edema;
    noise 0-300 as in a Rician background."""
    t1c = np.zeros(SIZE[::-1], np.int64)
    for inset, value in ((0, 1250), (2, 250), (3, 780), (5, 1000)):  # semi-axes 22, 26, 20 voxels
        t1c[_ellipsoid((22 - inset, 26 - inset, 20 - inset))] = value
    t1c[_ellipsoid((2, 7, 3), (-3, 0, 2)) | _ellipsoid((2, 7, 3), (3, 0, 2))] = 220
    lesion, tumor, core = (_ellipsoid((r, r, r), (8, 5, 2)) for r in (7, 4, 2))
    t1c[lesion] = 800
    t1c[tumor] = 1700
    t1c[core] = 350
    t2f = np.where(t1c > 0, 1900 - t1c, 0)
    t2f[lesion] = 1900
    rng = np.random.default_rng(12)

    def image(arr: np.ndarray, dtype: type) -> sitk.Image:
        img = sitk.GetImageFromArray(arr.astype(dtype))
        img.SetSpacing([SPACING] * 3)
        return img

    return {
        "t1c": image(t1c + rng.integers(0, 301, t1c.shape), np.float32),
        "t2f": image(t2f + rng.integers(0, 301, t2f.shape), np.float32),
        "lesion": image(lesion, np.uint8), "lesion_space": "t1c",
        "tumor": image(tumor, np.uint8), "tumor_space": "t1c",
    }


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def small_head() -> dict[str, Any]:
    return integer_head()


def _brain_step(steps: list[dict[str, Any]]) -> dict[str, Any]:
    (step,) = [s for s in steps if s["step"] == "brain_mask"]
    return step


def test_exclude_bright_decides_what_1_0_0_decided(small_head: dict[str, Any]) -> None:
    study = preprocess_study(**small_head, params=AS_1_0_0)
    step = _brain_step(study.steps)
    assert step["exclude_bright"] is True
    assert {k: v for k, v in step.items() if k != "exclude_bright"} == GOLDEN_1_0_0_STEP
    assert _sha256(study.arrays["brain"]) == GOLDEN_1_0_0_BRAIN_SHA256
    # the defect it keeps: white matter went with the skull, the mask was the lesion
    assert step["voxels_before_union"] < 0.03 * _ellipsoid((19, 23, 17)).sum()


def test_new_rule_on_the_small_head(small_head: dict[str, Any]) -> None:
    study = preprocess_study(**small_head, params=PreprocessParams(**OLD_PARAMS))
    step = _brain_step(study.steps)
    assert step["exclude_bright"] is False and len(step["thresholds"]) == 1
    assert step["voxels_before_union"] == step["voxels"]
    assert dice(study.arrays["brain"], _ellipsoid((19, 23, 17))) > 0.99  # inside the CSF


def _as_1_0_0_record(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``steps`` as the 1.0.0 code wrote them: its version, params and brain_mask keys."""
    old = json.loads(json.dumps(steps))
    old[0]["version"] = "1.0.0"
    del old[0]["params"]["brain_exclude_bright"]
    del _brain_step(old)["exclude_bright"]
    return old


def test_1_0_0_record_replays_to_its_own_output(small_head: dict[str, Any]) -> None:
    study = preprocess_study(**small_head, params=AS_1_0_0)
    record = _as_1_0_0_record(study.steps)
    assert _brain_step(record) == GOLDEN_1_0_0_STEP
    again = replay(record, **small_head)
    for name, arr in study.arrays.items():
        assert np.array_equal(again.arrays[name], arr), name
    assert _sha256(again.arrays["brain"]) == GOLDEN_1_0_0_BRAIN_SHA256
    assert again.steps == record  # replayed as recorded: no key added


def test_damaged_brain_mask_record_is_refused(small_head: dict[str, Any]) -> None:
    steps = json.loads(json.dumps(preprocess_study(**small_head, params=AS_1_0_0).steps))
    _brain_step(steps)["exclude_bright"] = False  # two thresholds belong to the 1.0.0 rule
    with pytest.raises(PreprocessError, match=r"2 threshold\(s\) with exclude_bright=False") as err:
        replay(steps, **small_head)
    assert "re-ingest" in (err.value.fix or "")
    # a 1.0.0 record written in a Dask worker, whose mask came from freed memory
    freed = _as_1_0_0_record(preprocess_study(**small_head, params=AS_1_0_0).steps)
    _brain_step(freed)["voxels_before_union"] = 0
    with pytest.raises(PreprocessError, match="replays to 672 voxels.*the record has 0"):
        replay(freed, **small_head)
    future = [dict(steps[0], version="9.9.9"), *steps[1:]]
    with pytest.raises(PreprocessError, match="replays only"):
        replay(future, **small_head)


def test_rule_is_a_parameter_and_its_thresholds_are_checked(small_head: dict[str, Any]) -> None:
    base = PreprocessParams()
    assert not base.brain_exclude_bright and base.brain_opening_mm == 3.0
    digests = {p.digest() for p in (base, AS_1_0_0, PreprocessParams(brain_exclude_bright=True))}
    assert len(digests) == 3
    empty = sitk.GetImageFromArray(np.zeros((8, 8, 8), np.float32))
    with pytest.raises(PreprocessError, match="brain mask of image is empty: no voxel between"):
        brain_mask(empty, thresholds=(1.0, 2.0), exclude_bright=True)
    with pytest.raises(ValueError, match="expected 1 threshold"):
        brain_mask(small_head["t1c"], thresholds=(1.0, 2.0))
