"""features.engine.log_filter against sitk.LaplacianRecursiveGaussianImageFilter (getLoGImage)."""
from __future__ import annotations

import platform
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from features.engine.log_filter import laplacian_recursive_gaussian

# The numba filter follows ITK's arithmetic term for term: on Linux x86-64 it is bit-identical
# to SimpleITK. Elsewhere a libm or an FMA-contracting build may move the odd float32 ULP.
REL_TOL = 2.0 ** -20  # ~9.5e-7 of max|LoG|: about 8 float32 ULPs at the image's peak
BITWISE = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")

SHAPES = [(7, 9, 11), (40, 50, 60), (4, 4, 4), (5, 30, 8)]
SPACINGS = [(1.0, 1.0, 1.0), (0.9, 0.9, 3.0), (0.7, 1.3, 2.1)]
SIGMAS = [1.0, 2.0, 3.0, 5.0]


def _sitk_log(array: np.ndarray, spacing: tuple[float, float, float], sigma: float) -> np.ndarray:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    log = sitk.LaplacianRecursiveGaussianImageFilter()
    log.SetNormalizeAcrossScale(True)
    log.SetSigma(sigma)
    return sitk.GetArrayFromImage(log.Execute(image))


def _noise(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * 100.0 + 40.0).astype(np.float32)


def _smooth(shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    blob = 800.0 * np.exp(-((x - 0.2) ** 2 + (y + 0.1) ** 2 + z ** 2) / 0.3)
    return (blob + 50.0 * np.sin(3.0 * x) * np.cos(2.0 * y) - 300.0).astype(np.float32)


def _check(array: np.ndarray, spacing: tuple[float, float, float], sigma: float) -> None:
    expected = _sitk_log(array, spacing, sigma)
    got = laplacian_recursive_gaussian(array, spacing, sigma)
    assert got.dtype == np.float32 and expected.dtype == np.float32
    assert got.shape == expected.shape == array.shape
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    assert diff.max() <= REL_TOL * np.abs(expected).max(), (diff.max(), np.abs(expected).max())
    if BITWISE:
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_noise_matches_sitk(shape, spacing):
    array = _noise(shape)
    for sigma in SIGMAS:
        _check(array, spacing, sigma)


@pytest.mark.parametrize("spacing", SPACINGS[:2])
def test_smooth_image_matches_sitk(spacing):
    array = _smooth((40, 50, 60))
    for sigma in (1.0, 2.0, 3.0):
        _check(array, spacing, sigma)


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.uint8])
def test_other_pixel_types_match_sitk(dtype):
    # ITK reads any pixel as double; SimpleITK's output is float32 for every input type
    array = np.clip(_noise((12, 10, 9), seed=3), 0, 255).astype(dtype)
    _check(array, (0.9, 0.9, 3.0), 2.0)


def test_dtype_shape_and_input_untouched():
    array = _noise((9, 8, 7), seed=5)
    before = array.copy()
    out = laplacian_recursive_gaussian(array, (1.0, 1.0, 1.0), 1.0)
    assert out.dtype == np.float32 and out.shape == array.shape
    assert out is not array and not np.shares_memory(out, array)
    np.testing.assert_array_equal(array, before)


def test_view_of_sitk_image_and_non_contiguous_input():
    image = sitk.GetImageFromArray(_noise((10, 12, 14), seed=7))
    image.SetSpacing((0.8, 1.1, 2.5))
    view = sitk.GetArrayViewFromImage(image)
    _check(np.array(view), image.GetSpacing(), 3.0)
    got = laplacian_recursive_gaussian(view, image.GetSpacing(), 3.0)
    copy = laplacian_recursive_gaussian(np.array(view), image.GetSpacing(), 3.0)
    np.testing.assert_array_equal(got, copy)
    strided = _noise((20, 12, 28), seed=8)[::2, :, ::2]
    _check(np.ascontiguousarray(strided), (1.0, 1.0, 1.0), 1.0)
    np.testing.assert_array_equal(laplacian_recursive_gaussian(strided, (1.0, 1.0, 1.0), 1.0),
                                  laplacian_recursive_gaussian(np.ascontiguousarray(strided),
                                                               (1.0, 1.0, 1.0), 1.0))


@pytest.mark.parametrize("shape", [(3, 10, 10), (10, 3, 10), (10, 10, 2)])
def test_fewer_than_four_voxels_raises_like_itk(shape):
    array = _noise(shape)
    with pytest.raises(RuntimeError, match="less than 4"):
        _sitk_log(array, (1.0, 1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="less than 4"):
        laplacian_recursive_gaussian(array, (1.0, 1.0, 1.0), 1.0)


def test_bad_arguments_raise():
    array = _noise((6, 6, 6))
    with pytest.raises(ValueError):
        laplacian_recursive_gaussian(array, (1.0, 1.0, 1.0), 0.0)
    with pytest.raises(ValueError):
        laplacian_recursive_gaussian(array[0], (1.0, 1.0), 1.0)


# ---------------------------------------------------------------- the LoG cut to a box

def _random_box(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[slice, ...]:
    starts = [int(rng.integers(0, n)) for n in shape]
    return tuple(slice(s, s + int(rng.integers(1, n - s + 1))) for s, n in zip(starts, shape,
                                                                               strict=True))


BOX_SHAPES = [(7, 9, 11), (24, 31, 18), (4, 4, 4), (5, 30, 8), (61, 61, 61)]


@pytest.mark.parametrize("shape", BOX_SHAPES)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_box_is_the_full_result_cut_bitwise(shape, spacing):
    rng = np.random.default_rng(sum(shape))
    array = _noise(shape, seed=len(shape) + shape[0])
    for sigma in (1.0, 2.0, 3.0, 5.0):
        full = laplacian_recursive_gaussian(array, spacing, sigma)
        boxes = [_random_box(rng, shape) for _ in range(4)]
        boxes += [tuple(slice(0, n) for n in shape),  # the whole array
                  tuple(slice(n - 1, n) for n in shape),  # one corner voxel, touching three ends
                  (slice(0, shape[0]), slice(shape[1] // 2, shape[1] // 2 + 1), slice(1, None)),
                  (slice(None), slice(None, 2), slice(-3, None))]  # open and negative slices
        for box in boxes:
            got = laplacian_recursive_gaussian(array, spacing, sigma, box)
            assert got.dtype == np.float32 and got.flags.c_contiguous
            assert np.array_equal(got, full[box]), (sigma, box)


@pytest.mark.parametrize("dtype", [np.float64, np.int16])
def test_box_of_other_pixel_types_and_views(dtype):
    array = np.clip(_noise((20, 16, 18), seed=11), -300, 300).astype(dtype)
    box = (slice(3, 9), slice(0, 16), slice(17, 18))
    full = laplacian_recursive_gaussian(array, (0.8, 0.9, 2.5), 2.0)
    assert np.array_equal(laplacian_recursive_gaussian(array, (0.8, 0.9, 2.5), 2.0, box), full[box])
    strided = array[:, ::-1, :]  # a non-contiguous input
    full = laplacian_recursive_gaussian(np.ascontiguousarray(strided), (1.0, 1.0, 1.0), 1.0)
    assert np.array_equal(laplacian_recursive_gaussian(strided, (1.0, 1.0, 1.0), 1.0, box),
                          full[box])


@pytest.mark.parametrize("box", [(slice(2, 2), slice(None), slice(None)),
                                 (slice(0, 4, 2), slice(None), slice(None)),
                                 (slice(None), slice(None)), (0, slice(None), slice(None))])
def test_bad_boxes_raise(box):
    with pytest.raises(ValueError):
        laplacian_recursive_gaussian(_noise((6, 6, 6)), (1.0, 1.0, 1.0), 1.0, box)
