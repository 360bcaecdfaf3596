"""The engine's low-level kernels against the numpy/pywt code whose results they reproduce.

``swt_range`` must be pywt's ``swt_axis`` bit for bit on any range of outputs (lines shorter than
the filter included, where pywt's C adds the wrapped taps in its own order); ``nanmean_columns``
numpy's ``nanmean`` bit for bit; ``matrix_features`` pyradiomics' GLSZM/GLDM expressions as
numpy evaluates them, to rounding.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pywt
from pywt._extensions._swt import swt_axis

from features.engine._glcm_kernels import nanmean_columns
from features.engine._swt_kernels import swt_range, tap_tables
from features.engine._zone_kernels import EPS, matrix_features
from features.engine.filters import _swt_filters


@pytest.mark.parametrize("name", ["coif1", "haar", "db4", "coif3", "sym5", "bior2.2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_swt_range_is_swt_axis_bitwise(name: str, dtype: type) -> None:
    rng = np.random.default_rng(len(name))
    wavelet = pywt.Wavelet(name)
    filters = _swt_filters(name, np.dtype(dtype))
    assert filters.dtype == dtype and filters.shape == (2, wavelet.dec_len)
    for n in [2, 4, 6, 8, 12, 20, 38]:  # shorter and longer than every filter here
        line = rng.normal(size=(3, n, 5)) * 10.0 ** rng.integers(-3, 4, size=(3, n, 5))
        for axis in range(3):
            data = np.moveaxis(line, 1, axis).astype(dtype)
            c_a, c_d = swt_axis(data, wavelet, 1, 0, axis)[0]
            for lo, hi in [(0, n), (n - 1, n), (0, 1), (n // 3, n // 2 + 1)]:
                cut = [slice(None)] * 3
                cut[axis] = slice(lo, hi)
                a, d = swt_range(data, filters, axis, lo, hi)
                assert a.dtype == c_a.dtype and a.shape == c_a[tuple(cut)].shape
                assert np.array_equal(a, c_a[tuple(cut)]), (n, axis, lo, hi)
                assert np.array_equal(d, c_d[tuple(cut)]), (n, axis, lo, hi)


def test_swt_range_reads_views_and_leaves_them_alone() -> None:
    data = np.random.default_rng(1).normal(size=(10, 12, 16))
    view = data[::-1, 2:10, ::2]  # strided, negative strides, even lengths
    before = view.copy()
    filters = _swt_filters("coif1", np.dtype(np.float64))
    for axis in range(3):
        c_a, c_d = swt_axis(np.ascontiguousarray(view), pywt.Wavelet("coif1"), 1, 0, axis)[0]
        a, d = swt_range(view, filters, axis, 0, view.shape[axis])
        assert np.array_equal(a, c_a) and np.array_equal(d, c_d)
    assert np.array_equal(view, before)


def test_tap_tables_use_every_tap_once_per_output() -> None:
    for n, taps in [(2, 6), (4, 6), (6, 6), (30, 6), (2, 18), (10, 18)]:
        ftab, xtab = tap_tables(n, taps, 0, n)
        assert not ftab.flags.writeable
        for o in range(n):
            assert sorted(ftab[o].tolist()) == list(range(taps))
            # each product pairs filter[j] with input[(o + taps/2 - j) mod n]
            assert ((o + taps // 2 - ftab[o]) % n == xtab[o]).all()


def test_nanmean_columns_is_numpy_nanmean_bitwise() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n_angles, n_features = int(rng.integers(1, 14)), int(rng.integers(1, 25))
        values = rng.normal(size=(n_angles, n_features)) * 10.0 ** rng.integers(
            -6, 6, size=(n_angles, n_features))
        values[rng.random(values.shape) < 0.25] = np.nan
        values[:, 0] = np.nan  # a feature NaN on every angle
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmean(np.ascontiguousarray(values.T), axis=1)
        assert np.array_equal(nanmean_columns(values), expected, equal_nan=True)


def _numpy_matrix_features(P: np.ndarray, i: np.ndarray, j: np.ndarray) -> dict[str, float]:
    """radiomics/glszm.py's expressions as numpy evaluates them (the kernel's reference)."""
    ps, pg, nz = P.sum(0), P.sum(1), P.sum()
    i2, j2 = i[:, None] ** 2, j[None, :] ** 2
    u_i, u_j = np.sum(pg / nz * i), np.sum(ps / nz * j)
    p = P / nz
    return {"SmallS": np.sum(ps / j ** 2) / nz, "LargeS": np.sum(ps * j ** 2) / nz,
            "GLN": np.sum(pg ** 2) / nz, "GLNN": np.sum(pg ** 2) / nz ** 2,
            "SN": np.sum(ps ** 2) / nz, "SNN": np.sum(ps ** 2) / nz ** 2,
            "GLV": np.sum(pg / nz * (i - u_i) ** 2), "SV": np.sum(ps / nz * (j - u_j) ** 2),
            "Entropy": -np.sum(p * np.log2(p + EPS)), "LowGL": np.sum(pg / i ** 2) / nz,
            "HighGL": np.sum(pg * i ** 2) / nz, "SmallSLowGL": np.sum(P / (i2 * j2)) / nz,
            "SmallSHighGL": np.sum(P * i2 / j2) / nz, "LargeSLowGL": np.sum(P * j2 / i2) / nz,
            "LargeSHighGL": np.sum(P * (i2 * j2)) / nz, "Nz": nz}


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (32, 27), (70, 400)])
def test_matrix_features_are_pyradiomics_expressions(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    P = rng.integers(0, 50, size=shape).astype(np.float64)
    P[0, 0] += 1  # never empty
    i = np.sort(rng.choice(np.arange(1, 200), size=shape[0], replace=False)).astype(float)
    j = np.sort(rng.choice(np.arange(1, 5000), size=shape[1], replace=False)).astype(float)
    ours, expected = matrix_features(P, i, j), _numpy_matrix_features(P, i, j)
    assert list(ours) == list(expected)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(float(value), rel=1e-12, abs=1e-300), key
