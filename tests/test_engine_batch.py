"""Several ROIs of one image at once (``features.engine.batch.extract_rois``), against pyradiomics
3.0.1 run per ROI in the same test and against our own per-ROI ``extract``.

Rows: brain1 z-scored (its lesion alone; the lesion with an eroded and a dilated copy) and generated
z-scored volumes with three nested ROIs as ingest writes them (overall = a blob, tumor = its
eroded core, edema = overall minus tumor), centred, near the image border and on an anisotropic
grid; each with our parameter file and with a small padDistance (where no filter can be shared
across different crops). Every ROI must be within the agreement tolerance of pyradiomics (same
keys, same order) and within 1e-6 of ``extract``; a ROI pyradiomics refuses comes back as its
FeatureError while the others are computed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from engine_cases import _blob, _mr, _to_sitk, brain1
from test_engine_agreement import assert_features_equal, reference

from features.engine import batch, filters
from features.engine.extract import extract
from features.engine.settings import parse_params
from features.errors import FeatureError
from features.radiomics import load_params, pyradiomics_params

#: ours vs ``extract`` (bitwise in practice: filters are shared only where voxels are the same)
CLOSE = 1e-6


def params(variant: str) -> dict[str, Any]:
    """Our parameter file (engine key dropped), or the same with padDistance 3."""
    p = pyradiomics_params(load_params())
    if variant == "pad3":
        p = copy.deepcopy(p)
        p["setting"]["padDistance"] = 3
    return p


def _like(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    m = sitk.GetImageFromArray(array.astype(np.uint8))
    m.CopyInformation(image)
    return m


def nested(image: sitk.Image, overall: np.ndarray, erode: int = 3) -> dict[str, sitk.Image]:
    """edema, tumor and overall as ingest writes them: overall = edema | tumor, disjoint parts."""
    core = sitk.GetArrayFromImage(sitk.BinaryErode(_like(overall, image), [erode] * 3)) > 0
    return {"edema": _like(overall & ~core, image), "tumor": _like(core, image),
            "overall": _like(overall, image)}


@cache
def brain1_zscored() -> tuple[sitk.Image, sitk.Image]:
    """brain1 z-scored over the head as ingest writes images (float32; raw int16 values at
    binWidth 0.1 give thousands of grey levels, and pyradiomics minutes per ROI)."""
    c = brain1()
    values = sitk.GetArrayFromImage(c.image).astype(np.float64)
    head = values[values > 0]
    image = sitk.GetImageFromArray(((values - head.mean()) / head.std()).astype(np.float32))
    image.CopyInformation(c.image)
    return image, c.mask


@cache
def patient(name: str) -> tuple[sitk.Image, dict[str, sitk.Image]]:
    """One image and its ROIs (by name)."""
    if name.startswith("brain1"):
        image, mask = brain1_zscored()
        masks = {"lesion": mask}
        if name == "brain1_three":
            masks |= {"eroded": sitk.BinaryErode(mask, [1, 1, 1]),
                      "dilated": sitk.BinaryDilate(mask, [1, 1, 1])}
        return image, masks
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "offset_pair":  # two overlapping lesions: the union of their crops is neither's
        img = _mr(rng, (80, 80, 80))
        image = _to_sitk(img, origin=(-12.5, 30.0, 4.25))
        a, b = np.zeros((80, 80, 80), bool), np.zeros((80, 80, 80), bool)
        a[23:57, 23:57, 17:51] = _blob(rng, (34, 34, 34), 10)
        b[23:57, 27:61, 29:63] = _blob(rng, (34, 34, 34), 10)
        return image, {"a": _like(a, image), "b": _like(b, image)}
    spacing = (0.9, 0.9, 3.0) if name == "nested_aniso" else (1.0, 1.0, 1.0)
    shape = (30, 72, 72) if name == "nested_aniso" else (64, 64, 64)
    img = _mr(rng, shape)
    blob = _blob(rng, (36, 40, 40) if name == "nested_aniso" else (34, 34, 34), 11)
    # where the blob's corner goes; nested_border cuts it at the image's first slice and last column
    at = {"nested_centre": (15, 15, 15), "nested_border": (-6, 4, 34), "nested_aniso": (0, 16, 16)}
    padded = np.zeros([n + 2 * 40 for n in shape], bool)
    corner = [40 + a for a in at[name]]
    padded[tuple(slice(c, c + n) for c, n in zip(corner, blob.shape, strict=True))] = blob
    overall = padded[40:-40, 40:-40, 40:-40]
    image = _to_sitk(img, spacing, origin=(-12.5, 30.0, 4.25))
    masks = nested(image, overall, erode=1 if name == "nested_aniso" else 3)
    if name == "nested_centre":  # ROIs pyradiomics refuses, among good ones
        tiny = np.zeros(shape, bool)
        tiny[5:7, 5:7, 5:8] = True  # 12 voxels: not more than minimumROISize 20
        masks |= {"tiny": _like(tiny, image), "empty": _like(np.zeros(shape, bool), image)}
    return image, masks


def difference(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Largest relative difference of two feature dicts (absolute where ``b`` is near 0)."""
    assert list(a) == list(b)
    worst = 0.0
    for key, r in b.items():
        g = a[key]
        if math.isnan(r) or math.isnan(g):
            assert math.isnan(r) and math.isnan(g), key
            continue
        worst = max(worst, abs(g - r) / abs(r) if abs(r) > 1e-9 else abs(g - r))
    return worst


@cache
def pyradiomics_result(name: str, roi: str, variant: str) -> dict[str, float] | None:
    """pyradiomics' features of one ROI (None where it refuses it), once per ROI and variant."""
    image, masks = patient(name)
    try:
        return reference(image, masks[roi], params(variant))
    except (ValueError, RuntimeError):  # how pyradiomics refuses a ROI
        return None


ROWS = [(name, variant) for name in ("brain1", "brain1_three", "nested_centre", "nested_border",
                                     "nested_aniso", "offset_pair") for variant in ("ours", "pad3")]


@pytest.mark.parametrize("name, variant", ROWS)
def test_rois_agree_with_pyradiomics_and_extract(name: str, variant: str) -> None:
    image, masks = patient(name)
    p = params(variant)
    got = batch.extract_rois(image, masks, p)
    assert list(got) == list(masks)
    for roi, mask in masks.items():
        # brain1's lesion alone is the lesion of brain1_three: pyradiomics runs it once
        ref = pyradiomics_result("brain1_three" if name == "brain1" else name, roi, variant)
        if ref is None:
            assert isinstance(got[roi], FeatureError), roi
            with pytest.raises(FeatureError):
                extract(image, mask, p)
            continue
        assert not isinstance(got[roi], FeatureError), f"{roi}: {got[roi]}"
        assert_features_equal(ref, got[roi])
        assert difference(got[roi], extract(image, mask, p)) <= CLOSE, roi


def test_refused_rois_are_named_and_the_others_computed() -> None:
    image, masks = patient("nested_centre")
    got = batch.extract_rois(image, masks, params("ours"))
    assert "minimumROISize" in str(got["tiny"]) and "no labels" in str(got["empty"])
    assert all(len(got[r]) == 1130 for r in ("edema", "tumor", "overall"))


class Calls:
    """Counts the filter runs, the voxels they filter and the boxes they compute."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[tuple[float, tuple[int, ...]]] = []
        self.wavelet: list[tuple[int, ...]] = []
        self.log_boxes: list[tuple[slice, ...] | None] = []
        self.wavelet_boxes: list[tuple[slice, ...] | None] = []
        log, wavelet = filters.log_image, filters.wavelet_images

        def counted_log(image: sitk.Image, sigma: float, box: tuple[slice, ...] | None = None
                        ) -> np.ndarray:
            self.log.append((sigma, image.GetSize()[::-1]))
            self.log_boxes.append(box)
            return log(image, sigma, box)

        def counted_wavelet(array: np.ndarray, *args: Any,
                            box: tuple[slice, ...] | None = None) -> list[tuple[str, np.ndarray]]:
            self.wavelet.append(array.shape)
            self.wavelet_boxes.append(box)
            return wavelet(array, *args, box=box)

        monkeypatch.setattr(filters, "log_image", counted_log)
        monkeypatch.setattr(filters, "wavelet_images", counted_wavelet)


def _crop_shapes(image: sitk.Image, masks: Mapping[str, sitk.Image], variant: str
                 ) -> dict[str, tuple[int, ...]]:
    p = parse_params(params(variant))
    return {name: filters.prepare(image, m, p).array.shape for name, m in masks.items()}


def test_filters_run_once_per_source(monkeypatch: pytest.MonkeyPatch) -> None:
    image, masks = patient("nested_centre")
    masks = {k: masks[k] for k in ("edema", "tumor", "overall")}
    crops = _crop_shapes(image, masks, "ours")
    assert crops["edema"] == crops["overall"] != crops["tumor"]  # the tumor is a smaller core
    calls = Calls(monkeypatch)
    batch.extract_rois(image, masks, params("ours"))
    # sigma 1 mm is 20 sigmas inside padDistance 20: the union (here overall's crop) serves all;
    # sigmas 2 and 3 run once per distinct crop; the wavelet once on the union
    assert calls.log == [(1.0, crops["overall"]), (2.0, crops["edema"]), (2.0, crops["tumor"]),
                         (3.0, crops["edema"]), (3.0, crops["tumor"])]
    assert calls.wavelet == [crops["overall"]]
    # each run is computed on the bounding box of the boxes of the ROIs it serves, here the
    # overall's box (the union of the others'), or the tumor's own
    p = parse_params(params("ours"))
    boxes = {name: filters.prepare(image, m, p).box for name, m in masks.items()}
    assert boxes["edema"] == boxes["overall"]
    assert calls.log_boxes == [boxes["overall"], boxes["edema"], boxes["tumor"],
                               boxes["edema"], boxes["tumor"]]
    assert calls.wavelet_boxes == [boxes["overall"]]


def test_the_union_of_crops_is_cut_from_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    image, masks = patient("offset_pair")
    crops = _crop_shapes(image, masks, "ours")
    calls = Calls(monkeypatch)
    batch.extract_rois(image, masks, params("ours"))
    union = calls.wavelet[0]
    assert calls.wavelet == [union] and union not in crops.values()
    assert calls.log[0] == (1.0, union) and len(calls.log) == 5
    # on the union, the filters compute the bounding box of both ROIs' boxes only
    p = parse_params(params("ours"))
    rois = [filters.prepare(image, m, p) for m in masks.values()]
    start = np.min([r.offset for r in rois], axis=0)
    hull = tuple(slice(min(r.offset[a] + r.box[a].start for r in rois) - int(start[a]),
                       max(r.offset[a] + r.box[a].stop for r in rois) - int(start[a]))
                 for a in range(3))
    assert calls.wavelet_boxes == [hull] and calls.log_boxes[0] == hull
    assert np.prod([s.stop - s.start for s in hull]) < np.prod(union)


def test_a_roi_near_the_image_border_keeps_its_own_wavelet(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    image, masks = patient("nested_border")
    crops = _crop_shapes(image, masks, "ours")
    calls = Calls(monkeypatch)
    batch.extract_rois(image, masks, params("ours"))
    # the tumor's box is 4 slices from the first one, inside the wavelet's reach of 5: its crop
    # wraps there, onto its own last slices, not the union's
    assert calls.wavelet == [crops["overall"], crops["tumor"]]


def test_nothing_is_shared_across_crops_where_it_would_differ(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    image, masks = patient("brain1_three")
    crops = _crop_shapes(image, masks, "pad3")
    assert len(set(crops.values())) == 3
    calls = Calls(monkeypatch)
    batch.extract_rois(image, masks, params("pad3"))
    assert sorted(calls.wavelet) == sorted(crops.values())  # 3 voxels < the wavelet's reach 5
    assert len(calls.log) == 3 * len(crops)


def test_without_precrop_every_filter_runs_once_on_the_image(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    image, masks = patient("nested_border")
    p = params("ours")
    p["setting"] = {**p["setting"], "preCrop": False}
    p["imageType"] = {"LoG": {"sigma": [1.0, 3.0], "binCount": 32}, "Wavelet": {"binCount": 32}}
    p["featureClass"] = {"firstorder": None, "glszm": None}
    calls = Calls(monkeypatch)
    got = batch.extract_rois(image, masks, p)
    full = image.GetSize()[::-1]
    assert calls.log == [(1.0, full), (3.0, full)] and calls.wavelet == [full]
    monkeypatch.undo()
    for roi, mask in masks.items():
        assert difference(got[roi], extract(image, mask, p)) == 0.0


def test_prepare_offset_is_the_crop_start() -> None:
    image, masks = patient("nested_border")
    for variant in ("ours", "pad3"):
        for mask in masks.values():
            roi = filters.prepare(image, mask, parse_params(params(variant)))
            index = image.TransformPhysicalPointToIndex(roi.image.GetOrigin())
            assert roi.offset == tuple(index[::-1])
            start = np.array(roi.offset)
            crop = sitk.GetArrayViewFromImage(image)[tuple(
                slice(s, s + n) for s, n in zip(start, roi.array.shape, strict=True))]
            assert np.array_equal(crop, roi.array)


def test_threads_sharing_a_process_give_the_serial_results() -> None:
    """The numba kernels release the GIL (``nogil=True``), so patients in threads of one process
    (a GPU worker's task threads, ``run.py --host-threads``) really run at once: no kernel may
    share state between calls. Four patients on 2 threads, each patient twice, equal the serial
    results bit for bit, refused ROIs included."""
    from concurrent.futures import ThreadPoolExecutor

    names = ["nested_centre", "nested_border", "nested_aniso", "offset_pair"] * 2
    p = params("ours")
    serial = {name: batch.extract_rois(*patient(name), p) for name in names[:4]}
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(lambda name: batch.extract_rois(*patient(name), p), names))
    for name, got in zip(names, threaded, strict=True):
        want = serial[name]
        assert list(got) == list(want)
        for roi, values in want.items():
            if isinstance(values, FeatureError):
                assert isinstance(got[roi], FeatureError) and str(got[roi]) == str(values), roi
                continue
            assert list(got[roi]) == list(values)
            np.testing.assert_array_equal(np.array(list(got[roi].values()), dtype=float),
                                          np.array(list(values.values()), dtype=float), err_msg=roi)
