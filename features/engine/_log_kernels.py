"""numba kernels for :mod:`features.engine.log_filter`: ITK's 4th-order recursive (Deriche) filter.

One pass filters every line of a 3-D (z, y, x) array along one axis, the way
``itk::RecursiveSeparableImageFilter::FilterDataArray`` does for each line: the samples are read
as doubles, a causal and an anticausal recursion run in double with ITK's boundary
initialisation and ITK's order of operations, their sum is rounded once to float32.

The lines are processed a plane at a time, laid out (line position, line number) with the line
number contiguous, so the recursion index is the outer loop and the inner loop runs across
independent lines (SIMD-vectorised by LLVM). No fastmath: results are IEEE-exact, term for term.

Coefficient vector ``c`` (float64, 20 entries), in ITK's names:
``N0 N1 N2 N3 D1 D2 D3 D4 M1 M2 M3 M4 BN1 BN2 BN3 BN4 BM1 BM2 BM3 BM4``.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _step(out, x0, x1, x2, x3, y1, y2, y3, y4, b0, b1, b2, b3, d1, d2, d3, d4):
    """One recursion step for a row of independent lines: FilterDataArray's inner statement,
    ``out = x0*b0 + x1*b1 + x2*b2 + x3*b3;  out -= y1*d1 + y2*d2 + y3*d3 + y4*d4``."""
    for k in range(out.shape[0]):
        t = x0[k] * b0 + x1[k] * b1 + x2[k] * b2 + x3[k] * b3
        t -= y1[k] * d1 + y2[k] * d2 + y3[k] * d3 + y4[k] * d4
        out[k] = t


@njit(cache=True, nogil=True, fastmath=False)
def _filter_plane(data, res, s1, s2, c, lo, hi):
    """Filter each column of ``data`` (n, m) float64 along axis 0 into ``res`` (hi - lo, m)
    float32: the filtered lines' samples ``lo:hi`` only.

    ``s1``/``s2`` are (n, m) float64 scratch arrays (causal / anticausal parts). n >= 4,
    0 <= lo < hi <= n. The causal recursion stops at ``hi`` and the anticausal one at ``lo``:
    their values there depend only on the samples already passed, so the output is bit for bit
    the whole line's, cut.
    """
    n0 = c[0]
    n1 = c[1]
    n2 = c[2]
    n3 = c[3]
    d1 = c[4]
    d2 = c[5]
    d3 = c[6]
    d4 = c[7]
    m1 = c[8]
    m2 = c[9]
    m3 = c[10]
    m4 = c[11]
    bn1 = c[12]
    bn2 = c[13]
    bn3 = c[14]
    bn4 = c[15]
    bm1 = c[16]
    bm2 = c[17]
    bm3 = c[18]
    bm4 = c[19]
    n = data.shape[0]
    m = data.shape[1]

    # causal pass; data[0] is assumed to extend from the border to infinity
    for k in range(m):
        v = data[0, k]
        t = v * n0 + v * n1 + v * n2 + v * n3
        t -= v * bn1 + v * bn2 + v * bn3 + v * bn4
        s1[0, k] = t
    for k in range(m):
        v = data[0, k]
        t = data[1, k] * n0 + v * n1 + v * n2 + v * n3
        t -= s1[0, k] * d1 + v * bn2 + v * bn3 + v * bn4
        s1[1, k] = t
    for k in range(m):
        v = data[0, k]
        t = data[2, k] * n0 + data[1, k] * n1 + v * n2 + v * n3
        t -= s1[1, k] * d1 + s1[0, k] * d2 + v * bn3 + v * bn4
        s1[2, k] = t
    for k in range(m):
        v = data[0, k]
        t = data[3, k] * n0 + data[2, k] * n1 + data[1, k] * n2 + v * n3
        t -= s1[2, k] * d1 + s1[1, k] * d2 + s1[0, k] * d3 + v * bn4
        s1[3, k] = t
    for i in range(4, hi):
        _step(s1[i], data[i], data[i - 1], data[i - 2], data[i - 3],
              s1[i - 1], s1[i - 2], s1[i - 3], s1[i - 4], n0, n1, n2, n3, d1, d2, d3, d4)

    # anticausal pass; data[n - 1] is assumed to extend from the border to infinity
    e = n - 1
    for k in range(m):
        v = data[e, k]
        t = v * m1 + v * m2 + v * m3 + v * m4
        t -= v * bm1 + v * bm2 + v * bm3 + v * bm4
        s2[e, k] = t
    for k in range(m):
        v = data[e, k]
        t = data[e, k] * m1 + v * m2 + v * m3 + v * m4
        t -= s2[e, k] * d1 + v * bm2 + v * bm3 + v * bm4
        s2[e - 1, k] = t
    for k in range(m):
        v = data[e, k]
        t = data[e - 1, k] * m1 + data[e, k] * m2 + v * m3 + v * m4
        t -= s2[e - 1, k] * d1 + s2[e, k] * d2 + v * bm3 + v * bm4
        s2[e - 2, k] = t
    for k in range(m):
        v = data[e, k]
        t = data[e - 2, k] * m1 + data[e - 1, k] * m2 + data[e, k] * m3 + v * m4
        t -= s2[e - 2, k] * d1 + s2[e - 1, k] * d2 + s2[e, k] * d3 + v * bm4
        s2[e - 3, k] = t
    for i in range(n - 4, lo, -1):
        _step(s2[i - 1], data[i], data[i + 1], data[i + 2], data[i + 3],
              s2[i], s2[i + 1], s2[i + 2], s2[i + 3], m1, m2, m3, m4, d1, d2, d3, d4)

    # outs[i] = causal + anticausal, rounded once to the float32 output pixel
    for i in range(lo, hi):
        for k in range(m):
            res[i - lo, k] = np.float32(s1[i, k] + s2[i, k])


@njit(cache=True, nogil=True, fastmath=False)
def _filter_middle(src, dst, c, lo, hi):
    """Filter every line along axis 1 of ``src`` (a, n, x), one (n, x) plane per ``a``, into
    ``dst`` (a, hi - lo, x): samples ``lo:hi`` of each filtered line."""
    na, n, nx = src.shape
    data = np.empty((n, nx), np.float64)
    res = np.empty((hi - lo, nx), np.float32)
    s1 = np.empty((n, nx), np.float64)
    s2 = np.empty((n, nx), np.float64)
    for a in range(na):
        for i in range(n):
            for k in range(nx):
                data[i, k] = src[a, i, k]
        _filter_plane(data, res, s1, s2, c, lo, hi)
        for i in range(hi - lo):
            for k in range(nx):
                dst[a, i, k] = res[i, k]


@njit(cache=True, nogil=True, fastmath=False)
def filter_axis(src, dst, axis, c, lo, hi):
    """Filter every line of ``src`` (z, y, x) along numpy ``axis`` into float32 ``dst``, which
    holds samples ``lo:hi`` along ``axis`` of the filtered lines (``src``'s shape elsewhere).

    Lines along z and y are filtered a plane at a time with x innermost (vectorised across lines);
    lines along x are read transposed, plane by plane, into the same layout.
    """
    if axis == 0:  # along z: one (z, x) plane per y
        _filter_middle(src.transpose((1, 0, 2)), dst.transpose((1, 0, 2)), c, lo, hi)
    elif axis == 1:  # along y: one (y, x) plane per z
        _filter_middle(src, dst, c, lo, hi)
    else:  # along x: each (y, x) plane read transposed, as (x, y)
        _filter_middle(src.transpose((0, 2, 1)), dst.transpose((0, 2, 1)), c, lo, hi)


@njit(cache=True, nogil=True, fastmath=False)
def accumulate(cum, b, scale):
    """ITK's add functor: ``cum = float(cum + b * scale)``, the sum formed in double."""
    nz, ny, nx = cum.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                cum[z, y, x] = np.float32(np.float64(cum[z, y, x]) + np.float64(b[z, y, x]) * scale)
