"""The engine's core against pyradiomics 3.0.1 run in the same test: settings, filters, binning,
first-order features, and the errors of degenerate input (the full feature table is
tests/test_engine_agreement.py, whose reference run and tolerance check are used here too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from engine_cases import Case, brain1
from test_engine_agreement import (
    OURS,
    PYRADIOMICS_PARAMS,
    assert_features_equal,
    case,
    load,
    only,
    reference,
    same_outcome,
    table,
)

from features.engine import discretise as engine_discretise
from features.engine import filters
from features.engine.extract import extract
from features.engine.geometry import RoiGeometry
from features.engine.settings import DEPRECATED, FEATURES, parse_params
from features.errors import FeatureError, RadiomicsParamsError

# ---------------------------------------------------------------- settings

def test_feature_catalogue_is_pyradiomics_own() -> None:
    import radiomics

    classes = radiomics.getFeatureClasses()
    for cls, names in FEATURES.items():
        theirs = classes[cls].getFeatureNames()
        assert names == tuple(n for n, dep in theirs.items() if not dep), cls
        assert DEPRECATED[cls] == tuple(n for n, dep in theirs.items() if dep), cls


def test_parameter_files_parse() -> None:
    ours = parse_params(load(OURS))
    assert [t.kind for t in ours.image_types] == ["Original", "Wavelet", "LoG"]
    original, wavelet, log = ours.image_types
    assert (original.bin_width, original.bin_count) == (0.1, None)
    assert (wavelet.bin_count, log.bin_count, log.sigma) == (32, 32, (1.0, 2.0, 3.0))
    assert original.voxel_array_shift == wavelet.voxel_array_shift == 10
    assert (ours.pre_crop, ours.pad_distance, ours.minimum_roi_size) == (True, 20, 20)
    assert ours.geometry_tolerance == 1e-4
    assert [c for c, _ in ours.feature_classes] == ["shape", "firstorder", "glcm", "glrlm",
                                                     "glszm", "gldm", "ngtdm"]
    theirs = parse_params(load(PYRADIOMICS_PARAMS))
    glcm = dict(theirs.feature_classes)["glcm"]
    assert "SumAverage" not in glcm and glcm[0] == "Autocorrelation" and len(glcm) == 22
    assert theirs.image_types[0].bin_width == 25


def test_empty_sections_enable_what_pyradiomics_enables() -> None:
    p = parse_params({})
    assert [t.kind for t in p.image_types] == ["Original"]
    assert [c for c, _ in p.feature_classes] == ["firstorder", "glcm", "gldm", "glrlm", "glszm",
                                                  "ngtdm", "shape"]
    p = parse_params({"featureClass": {"glcm": ["Id", "Contrast", "Id"]}, "engine": "atrx"})
    assert p.feature_classes == (("glcm", ("Id", "Contrast")),)


@pytest.mark.parametrize("params, named", [
    ({"setting": {"binWidht": 25}}, "binWidht"),
    ({"setting": {"normalize": True}}, "normalize"),
    ({"setting": {"resampledPixelSpacing": [1, 1, 1]}}, "resampledPixelSpacing"),
    ({"setting": {"distances": [1, 2]}}, "distances"),
    ({"setting": {"symmetricalGLCM": 1}}, "symmetricalGLCM"),
    ({"setting": {"force2D": True}}, "force2D"),
    ({"setting": {"weightingNorm": "euclidean"}}, "weightingNorm"),
    ({"setting": {"binCount": 0}}, "binCount"),
    ({"setting": {"voxelArrayShift": 2.5}}, "voxelArrayShift"),
    ({"setting": {"wavelet": "morl"}}, "wavelet"),
    ({"imageType": {"Square": {}}}, "Square"),
    ({"imageType": {"Original": None}}, "Original"),
    ({"imageType": {"Original": {"sigma": [1.0]}}}, "sigma"),
    ({"imageType": {"LoG": {"label": 2}}}, "label"),
    ({"imageType": {"LoG": {}}}, "sigma"),
    ({"featureClass": {"firstorder": ["StandardDeviation"]}}, "StandardDeviation"),
    ({"featureClass": {"glcm": ["SumVariance"]}}, "SumVariance"),
    ({"featureClass": {"glcm": ["Contrats"]}}, "Contrats"),
    ({"featureClass": {"shape2D": None}}, "shape2D"),
    ({"voxelSetting": {"kernelRadius": 1}}, "voxelSetting"),
])
def test_unsupported_parameters_are_named(params: dict, named: str) -> None:
    with pytest.raises(RadiomicsParamsError, match=named) as err:
        parse_params(params)
    assert err.value.fix


def test_per_image_type_settings_merge_as_featureextractor_does() -> None:
    p = parse_params({"imageType": {"Original": {}, "LoG": {"binWidth": 5, "sigma": [2]}},
                      "setting": {"binCount": 16, "voxelArrayShift": 3, "sigma": [1.0]}})
    original, log = p.image_types
    assert (original.bin_count, original.sigma) == (16, (1.0,))
    # binCount from setting still wins over the image type's binWidth, as in getBinEdges
    assert (log.bin_width, log.bin_count, log.sigma, log.voxel_array_shift) == (5, 16, (2,), 3)
    assert filters.log_name(2) == "log-sigma-2-mm-3D" and filters.log_name(1.5) == "log-sigma-1-5-mm-3D"


# ---------------------------------------------------------------- filters

def _precropped(c: Case, pad: int = 20) -> tuple[sitk.Image, sitk.Image, np.ndarray]:
    """pyradiomics' own preCrop (checkMask + cropToTumorMask) and the box it then features."""
    from radiomics import imageoperations as io

    mask = io.getMask(c.mask)
    bb, _ = io.checkMask(c.image, mask)
    image, mask = io.cropToTumorMask(c.image, mask, bb, padDistance=pad)
    bb, _ = io.checkMask(image, mask)
    return image, mask, bb


FILTER_CASES = ["brain1", "blob_r5_0", "aniso_6.5_0.78_0", "int16_0", "one_slice_1", "border_cube"]


@pytest.mark.parametrize("name", FILTER_CASES)
def test_prepare_crops_as_pyradiomics(name: str) -> None:
    c = case(name)
    image, mask, bb = _precropped(c)
    roi = filters.prepare(c.image, c.mask, parse_params(load(OURS)))
    assert np.array_equal(roi.array, sitk.GetArrayFromImage(image))
    assert roi.image.GetOrigin() == image.GetOrigin() and roi.spacing == image.GetSpacing()
    lower, upper = bb[0::2][::-1], bb[1::2][::-1]
    assert [(s.start, s.stop - 1) for s in roi.box] == list(zip(lower, upper, strict=True))
    assert np.array_equal(roi.mask, sitk.GetArrayFromImage(mask)[roi.box] == 1)


@pytest.mark.parametrize("name", FILTER_CASES)
@pytest.mark.parametrize("kwargs", [{}, {"wavelet": "haar", "level": 2}, {"start_level": 1}],
                         ids=["coif1", "haar-2", "start1"])
def test_wavelet_equals_pyradiomics(name: str, kwargs: dict) -> None:
    from radiomics import imageoperations as io

    image, mask, _ = _precropped(case(name))
    theirs = [(n, sitk.GetArrayFromImage(im)) for im, n, _ in io.getWaveletImage(image, mask, **kwargs)]
    ours = filters.wavelet_images(sitk.GetArrayFromImage(image), **kwargs)
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    for (n, a), (_, b) in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, n
        assert np.array_equal(a, b), n


def _bb_box(bb: np.ndarray) -> tuple[slice, ...]:
    """pyradiomics' (x lo, x hi, y lo, ...) bounding box as (z, y, x) slices."""
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(bb[0::2][::-1], bb[1::2][::-1],
                                                                strict=True))


@pytest.mark.parametrize("name", FILTER_CASES)
@pytest.mark.parametrize("kwargs", [{}, {"wavelet": "haar", "level": 2}, {"start_level": 1}],
                         ids=["coif1", "haar-2", "start1"])
def test_wavelet_in_the_box_equals_pyradiomics_cut(name: str, kwargs: dict) -> None:
    from radiomics import imageoperations as io

    image, mask, bb = _precropped(case(name))
    box = _bb_box(bb)
    theirs = [(n, sitk.GetArrayFromImage(im)) for im, n, _ in io.getWaveletImage(image, mask, **kwargs)]
    ours = filters.wavelet_images(sitk.GetArrayFromImage(image), **kwargs, box=box)
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    for (n, a), (_, b) in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b[box]), n


def _swtn_bands(array: np.ndarray, wavelet: str, level: int, start_level: int
                ) -> list[tuple[str, np.ndarray]]:
    """pyradiomics' ``_swt3`` in a few lines: wrap-pad odd axes, one ``pywt.swtn`` per level."""
    import pywt

    back = tuple(slice(None, -1 if n % 2 else None) for n in array.shape)
    data = np.pad(array, [(0, n % 2) for n in array.shape], "wrap")
    for _ in range(start_level):
        data = pywt.swtn(data, wavelet, level=1, start_level=0, axes=(2, 1, 0))[0]["aaa"]
    out = []
    for idx in range(1, level + 1):
        dec = pywt.swtn(data, wavelet, level=1, start_level=0, axes=(2, 1, 0))[0]
        data = dec.pop("aaa")
        prefix = "wavelet-" if idx == 1 else f"wavelet{idx}-"
        out += [(prefix + k.replace("a", "L").replace("d", "H"), b[back]) for k, b in dec.items()]
    return out + [(("wavelet-" if level == 1 else f"wavelet{level}-") + "LLL", data[back])]


@pytest.mark.parametrize("shape", [(12, 14, 16), (13, 15, 17), (9, 20, 7), (33, 8, 21)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize("kwargs", [{}, {"wavelet": "haar", "level": 2}, {"start_level": 1},
                                    {"level": 2, "start_level": 1}],
                         ids=["coif1", "haar-2", "start1", "level2-start1"])
def test_wavelet_in_a_box_is_swtn_cut_bitwise(shape: tuple[int, ...], dtype: type,
                                              kwargs: dict) -> None:
    rng = np.random.default_rng(sum(shape))
    array = (rng.normal(size=shape) * 100.0).astype(dtype)
    full = _swtn_bands(array, kwargs.get("wavelet", "coif1"), kwargs.get("level", 1),
                       kwargs.get("start_level", 0))
    ours = filters.wavelet_images(array, **kwargs)
    assert [n for n, _ in ours] == [n for n, _ in full]
    for (n, a), (_, b) in zip(ours, full, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), n
    boxes = [tuple(slice(lo, lo + int(rng.integers(1, n - lo + 1)))
                   for n in shape for lo in [int(rng.integers(0, n))]) for _ in range(4)]
    boxes += [tuple(slice(n - 1, n) for n in shape),  # one voxel in the corner, on the padding
              (slice(0, 1), slice(None), slice(2, -2)), (slice(None), slice(3, 4), slice(None))]
    before = array.copy()
    for box in boxes:
        ours = filters.wavelet_images(array, **kwargs, box=box)
        assert [n for n, _ in ours] == [n for n, _ in full]
        for (n, a), (_, b) in zip(ours, full, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b[box]), (n, box)
    assert np.array_equal(array, before)


def test_images_are_the_full_crop_filters_cut_to_the_box() -> None:
    params = parse_params(load(OURS))
    roi = filters.prepare(case("blob_r5_0").image, case("blob_r5_0").mask, params)
    for image_type in params.image_types:
        got = list(filters.images(roi, image_type))
        if image_type.kind == "LoG":
            full = [(filters.log_name(s), filters.log_image(roi.image, s))
                    for s in filters.log_sigmas(roi.image, image_type.sigma)]
        elif image_type.kind == "Wavelet":
            full = filters.wavelet_images(roi.array, image_type.wavelet, image_type.level,
                                          image_type.start_level)
        else:
            full = [("original", roi.array)]
        assert [n for n, _ in got] == [n for n, _ in full]
        for (n, a), (_, b) in zip(got, full, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b[roi.box]), n


@pytest.mark.parametrize("name", FILTER_CASES)
def test_log_equals_pyradiomics(name: str) -> None:
    from radiomics import imageoperations as io

    image, mask, bb = _precropped(case(name), pad=3)
    sigmas = [1.0, 2, 3.0, 6.0]  # 6 mm is skipped where the crop is too small, as pyradiomics does
    theirs = [(n, sitk.GetArrayFromImage(im)) for im, n, _ in io.getLoGImage(image, mask, sigma=sigmas)]
    ours = [(filters.log_name(s), filters.log_image(image, s))
            for s in filters.log_sigmas(image, tuple(sigmas))]
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    for (n, a), (_, b) in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), n
    box = _bb_box(bb)
    for sigma, (n, b) in zip(filters.log_sigmas(image, tuple(sigmas)), theirs, strict=True):
        assert np.array_equal(filters.log_image(image, sigma, box), b[box]), n


def test_log_skips_images_too_small_for_it() -> None:
    tiny = sitk.GetImageFromArray(np.zeros((3, 10, 10), np.float32))
    assert filters.log_sigmas(tiny, (1.0,)) == []
    thick = sitk.GetImageFromArray(np.zeros((6, 30, 30), np.float32))
    thick.SetSpacing((1.0, 1.0, 2.0))
    assert filters.log_sigmas(thick, (1.0, 9.0, 10.0, 11.0)) == [1.0, 9.0, 10.0]


# ---------------------------------------------------------------- discretisation

def _bin_cases() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    for c in (brain1(), case("blob_r8_0"), case("int16_2"), case("flat_1"), case("flat_0")):
        roi = sitk.GetArrayFromImage(c.mask) == 1
        yield c.name, sitk.GetArrayFromImage(c.image), roi
    grid = np.round(rng.normal(size=(6, 7, 8)) * 10).astype(np.float32) / 10  # values on bin edges
    yield "edges", grid, rng.random(grid.shape) < 0.6


@pytest.mark.parametrize("settings", [{"binWidth": 0.1}, {"binWidth": 25}, {"binWidth": 0.25},
                                      {"binCount": 32}, {"binCount": 7}],
                         ids=["bw0.1", "bw25", "bw0.25", "bc32", "bc7"])
def test_discretise_equals_binimage(settings: dict) -> None:
    from radiomics import imageoperations as io

    for name, image, roi in _bin_cases():
        theirs, edges = io.binImage(image.copy(), roi, **settings)
        geometry = RoiGeometry.from_mask(roi)
        q, levels = engine_discretise.discretise(image, geometry, settings.get("binWidth", 25),
                                                 settings.get("binCount"))
        assert q.dtype == theirs.dtype and np.array_equal(q, theirs), name
        assert np.array_equal(levels, np.unique(theirs[roi])), name
        assert np.array_equal(engine_discretise.bin_edges(image[roi], settings.get("binWidth", 25),
                                                          settings.get("binCount")), edges), name


# ---------------------------------------------------------------- first order

def _firstorder_cases() -> list[Any]:
    out = [pytest.param("brain1", id="brain1")]
    for c in table():
        marks = [pytest.mark.slow] if c.name.startswith("large") else []
        out.append(pytest.param(c.name, marks=marks, id=c.name))
    return out


@pytest.mark.parametrize("name", _firstorder_cases())
def test_firstorder_equals_pyradiomics(name: str) -> None:
    c = case(name)
    params = only(load(OURS), firstorder=None)
    worst = same_outcome(c.image, c.mask, params)
    assert (worst is None) == (name == "tiny_20")  # only it is refused (exactly minimumROISize)
    # far inside 1e-4: only summation order differs (sequential sums, ~2e-12 at 100k voxels)
    assert worst is None or worst <= 1e-10


def test_firstorder_with_pyradiomics_params_on_brain1() -> None:
    c = brain1()
    params = only(load(PYRADIOMICS_PARAMS), firstorder=["Skewness", "Mean", "TotalEnergy", "Median"])
    ref = reference(c.image, c.mask, params)
    assert list(ref) == ["original_firstorder_Skewness", "original_firstorder_Mean",
                         "original_firstorder_TotalEnergy", "original_firstorder_Median"]
    assert_features_equal(ref, extract(c.image, c.mask, params))


def test_flat_roi_keeps_pyradiomics_conventions() -> None:
    c = case("flat_1")
    got = extract(c.image, c.mask, only(load(OURS), firstorder=None))
    assert got["original_firstorder_Skewness"] == 0 and got["original_firstorder_Kurtosis"] == 0
    assert got["original_firstorder_Variance"] == 0
    # one bin: -1 * log2(1 + eps), pyradiomics' epsilon makes it a tiny negative, not 0
    assert got["original_firstorder_Entropy"] == -np.log2(1 + np.spacing(1)) < 0


# ---------------------------------------------------------------- degenerate input

def _mask_like(c: Case, array: np.ndarray) -> sitk.Image:
    m = sitk.GetImageFromArray(array.astype(np.uint8))
    m.CopyInformation(c.image)
    return m


def _degenerate(kind: str) -> tuple[Case, sitk.Image]:
    c = case("blob_r5_0")
    roi = sitk.GetArrayFromImage(c.mask).astype(bool)
    empty = np.zeros(roi.shape, np.uint8)
    if kind == "one_voxel":
        empty[10, 10, 10] = 1
    elif kind == "line":
        empty[10, 10, 5:15] = 1
    elif kind == "all_ones":  # a single value in the mask: pyradiomics finds "no labels"
        empty[:] = 1
    elif kind == "label_2_only":
        empty[roi] = 2
    elif kind == "empty":
        pass
    elif kind == "mask_2d":
        return c, sitk.GetImageFromArray(roi[12].astype(np.uint8))
    else:
        return c, _mask_like(c, roi)
    return c, _mask_like(c, empty)


@pytest.mark.parametrize("kind, reason", [
    ("one_voxel", "single segmented voxel"), ("line", "fewer than minimumROIDimensions"),
    ("all_ones", "no labels"), ("empty", "no labels"), ("label_2_only", "label 1 is not present"),
    ("mask_2d", "dimension mismatch"),
])
def test_degenerate_rois_are_refused_like_pyradiomics(kind: str, reason: str) -> None:
    c, mask = _degenerate(kind)
    params = only(load(OURS), firstorder=None)
    with pytest.raises((ValueError, RuntimeError)):
        reference(c.image, mask, params)
    with pytest.raises(FeatureError, match=reason) as err:
        extract(c.image, mask, params)
    assert err.value.fix


def test_roi_of_exactly_minimum_size_is_refused_like_pyradiomics() -> None:
    c = case("tiny_20")
    params = only(load(OURS), firstorder=None)
    with pytest.raises(ValueError, match="too small"):
        reference(c.image, c.mask, params)
    with pytest.raises(FeatureError, match="20 voxels"):
        extract(c.image, c.mask, params)
    params["setting"]["minimumROISize"] = 19
    assert same_outcome(c.image, c.mask, params) is not None


def test_line_roi_is_computed_when_one_dimension_is_allowed() -> None:
    c, mask = _degenerate("line")
    params = only(load(OURS), firstorder=None)
    params["setting"].update(minimumROIDimensions=1, minimumROISize=None)
    assert same_outcome(c.image, mask, params) is not None


def _moved(c: Case, shift: float = 0.0, size: int | None = None) -> sitk.Image:
    """The case's mask with its origin moved along x by ``shift`` mm (and cropped to ``size``)."""
    mask = c.mask if size is None else c.mask[:size, :, :]
    mask = sitk.Image(mask)
    mask.SetOrigin(tuple(np.add(mask.GetOrigin(), (shift, 0.0, 0.0))))
    return mask


@pytest.mark.parametrize("shift, size, settings, refused", [
    (5e-5, None, {}, False),  # inside geometryTolerance 1e-4
    (5e-3, None, {}, True),  # outside it
    (5e-3, None, {"geometryTolerance": None}, True),  # SimpleITK's default 1e-6
    (0.4, None, {"correctMask": True}, False),  # resampled onto the image grid
    (0.0, 20, {"correctMask": True}, False),  # a smaller mask grid, resampled
    (0.0, 20, {}, True),
])
def test_mask_geometry_checks_match_pyradiomics(shift: float, size: int | None, settings: dict,
                                                refused: bool) -> None:
    c = case("blob_r5_0")
    mask = _moved(c, shift, size)
    params = only(load(OURS), firstorder=None)
    params["setting"].update(settings)
    if refused:
        with pytest.raises(FeatureError, match="mismatch"):
            extract(c.image, mask, params)
        with pytest.raises((ValueError, RuntimeError)):
            reference(c.image, mask, params)
    else:
        assert assert_features_equal(reference(c.image, mask, params),
                                     extract(c.image, mask, params)) <= 1e-12


def test_engine_leaves_sitk_tolerances_alone() -> None:
    before = sitk.ProcessObject.GetGlobalDefaultCoordinateTolerance()
    c = case("blob_r3_0")
    extract(c.image, c.mask, only(load(OURS), firstorder=["Mean"]))
    assert sitk.ProcessObject.GetGlobalDefaultCoordinateTolerance() == before


def test_non_sitk_input_is_a_type_error() -> None:
    c = case("blob_r3_0")
    with pytest.raises(TypeError, match="SimpleITK"):
        extract(sitk.GetArrayFromImage(c.image), c.mask, {})
