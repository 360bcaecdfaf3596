"""numba kernels for :func:`features.engine.filters.wavelet_images`: pywt's one-level SWT along an axis.

``pywt.swtn(data, wavelet, level=1, start_level=0)`` (what pyradiomics' ``_swt3`` calls) runs
``swt_axis`` along each axis, which filters every line with the C routine
``downsampling_convolution_periodization(input, N, filter, F, output, step=1, fstep=1)``
(pywt 1.x, ``convolution.template.c``): output ``o`` is
``sum(filter[j] * input[(o + F/2 - j) mod N])`` over the F taps, summed in the line's own type
(float32 lines in float32), starting from 0, in an order that depends only on ``o``, N and F
(ascending ``j`` inside the line, the wrapped taps first and in descending order past its right
end). :func:`tap_tables` writes that order down once per (N, F, output range); the kernel sums
the same products in the same order, so each output is bit for bit pywt's, and it computes only
the outputs asked for (the ROI box's range along the axis) instead of whole lines.

No fastmath: every product and sum is rounded as in pywt's C, which is compiled without FMA.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

__all__ = ["swt_range", "tap_tables"]


@lru_cache(maxsize=256)
def tap_tables(n: int, taps: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(filter index, input index) of each of the ``taps`` products of outputs ``lo:hi`` of a
    periodised line of length ``n``, in the order pywt's C adds them (read-only arrays,
    shape (hi - lo, taps))."""
    half = taps // 2
    ftab = np.empty((hi - lo, taps), np.intp)
    xtab = np.empty((hi - lo, taps), np.intp)
    for o in range(lo, hi):
        i = o + half
        terms: list[tuple[int, int]] = []
        j = 0
        if i >= n:  # past the right end (the C's third and fourth loops): wrapped taps first
            while i - j >= n:
                k = 0
                while k < n and i - j >= n:
                    terms.append((i - n - j, k))
                    k += 1
                    j += 1
        stop = min(i + 1, taps)
        while j < stop:  # the taps inside the line
            terms.append((j, i - j))
            j += 1
        while j < taps:  # past the left end: wrapped from the line's end
            k = 0
            while k < n and j < taps:
                terms.append((j, n - 1 - k))
                k += 1
                j += 1
        ftab[o - lo], xtab[o - lo] = zip(*terms, strict=True)
    ftab.setflags(write=False)
    xtab.setflags(write=False)
    return ftab, xtab


@njit(cache=True, nogil=True, fastmath=False)
def _swt_planes(src, out, filters, ftab, xtab):
    """Filter the lines along axis 1 of ``src`` (a, n, m) with each row of ``filters`` (q, F)
    into ``out`` (q, a, outputs, m): one (n, m) plane at a time, lines innermost."""
    na, n, m = src.shape
    nq = filters.shape[0]
    no, taps = ftab.shape
    buf = np.empty((n, m), src.dtype)
    acc = np.empty(m, src.dtype)
    for a in range(na):
        for i in range(n):
            for k in range(m):
                buf[i, k] = src[a, i, k]
        for q in range(nq):
            for o in range(no):
                for k in range(m):
                    acc[k] = 0
                for t in range(taps):
                    c = filters[q, ftab[o, t]]
                    r = xtab[o, t]
                    for k in range(m):
                        acc[k] += c * buf[r, k]
                for k in range(m):
                    out[q, a, o, k] = acc[k]


def swt_range(data: np.ndarray, filters: np.ndarray, axis: int, lo: int, hi: int
              ) -> list[np.ndarray]:
    """Outputs ``lo:hi`` along ``axis`` of pywt's one-level SWT of every line of the 3-D
    ``data`` (float32 or float64, even length along ``axis``), one array per row of ``filters``
    (pywt's filters in ``data``'s type, e.g. dec_lo and dec_hi); the arrays are views."""
    order = {0: (1, 0, 2), 1: (0, 1, 2), 2: (0, 2, 1)}[axis]
    src = data.transpose(order)
    ftab, xtab = tap_tables(data.shape[axis], filters.shape[1], lo, hi)
    out = np.empty((filters.shape[0], src.shape[0], hi - lo, src.shape[2]), data.dtype)
    _swt_planes(src, out, filters, ftab, xtab)
    return [band.transpose(order) for band in out]
