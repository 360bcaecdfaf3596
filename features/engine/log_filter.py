"""SimpleITK's ``LaplacianRecursiveGaussianImageFilter`` (normalised across scale) in numba.

This reproduces ITK 5.4 (the ITK that SimpleITK 2.5 is built on), which pyradiomics'
``imageoperations.getLoGImage`` runs:

* ``LaplacianRecursiveGaussianImageFilter::GenerateData``: for each image dimension ``dim``
  (x, y, z in turn) a second-derivative ``RecursiveGaussianImageFilter`` along ``dim`` on the
  input, then zero-order (smoothing) filters along the other two dimensions in increasing
  order; every filter writes a float32 image. The three results are accumulated in a float32
  image, ``cum = float(cum + b * (1.0 / spacing[dim]**2))`` with the sum formed in double.
* ``RecursiveGaussianImageFilter::SetUp``: Deriche's 4th-order coefficients for
  ``sigma / spacing`` samples; order 2 scaled by ``sigma**2`` (normalise across scale), order 0
  normalised to unit gain and never scaled.
* ``RecursiveSeparableImageFilter::FilterDataArray``: per line, in double, a causal and an
  anticausal recursion with edge-extension boundary coefficients (see ``_log_kernels``).

Every expression is evaluated in ITK's order with IEEE double arithmetic, so the output matches
SimpleITK's bit for bit, or within an ULP or two of float32 where the platform's libm or
compiler contraction (FMA) differ.
"""
from __future__ import annotations

import math

import numpy as np

from features.engine._log_kernels import accumulate, filter_axis

__all__ = ["check_box", "laplacian_recursive_gaussian", "recursive_gaussian_coefficients"]

_ZERO_ORDER = 0
_SECOND_ORDER = 2


def _n_coefficients(sigmad: float, a1: float, b1: float, w1: float, l1: float,
                    a2: float, b2: float, w2: float, l2: float
                    ) -> tuple[float, float, float, float, float, float, float]:
    """``ComputeNCoefficients``: N0..N3 and their sums SN, DN, EN."""
    sin1 = math.sin(w1 / sigmad)
    sin2 = math.sin(w2 / sigmad)
    cos1 = math.cos(w1 / sigmad)
    cos2 = math.cos(w2 / sigmad)
    exp1 = math.exp(l1 / sigmad)
    exp2 = math.exp(l2 / sigmad)

    n0 = a1 + a2
    n1 = exp2 * (b2 * sin2 - (a2 + 2 * a1) * cos2)
    n1 += exp1 * (b1 * sin1 - (a1 + 2 * a2) * cos1)
    n2 = (a1 + a2) * cos2 * cos1
    n2 -= b1 * cos2 * sin1 + b2 * cos1 * sin2
    n2 *= 2 * exp1 * exp2
    n2 += a2 * exp1 * exp1 + a1 * exp2 * exp2
    n3 = exp2 * exp1 * exp1 * (b2 * sin2 - a2 * cos2)
    n3 += exp1 * exp2 * exp2 * (b1 * sin1 - a1 * cos1)

    sn = n0 + n1 + n2 + n3
    dn = n1 + 2 * n2 + 3 * n3
    en = n1 + 4 * n2 + 9 * n3
    return n0, n1, n2, n3, sn, dn, en


def _d_coefficients(sigmad: float, w1: float, l1: float, w2: float, l2: float
                    ) -> tuple[float, float, float, float, float, float, float]:
    """``ComputeDCoefficients``: D1..D4 and SD, DD, ED."""
    cos1 = math.cos(w1 / sigmad)
    cos2 = math.cos(w2 / sigmad)
    exp1 = math.exp(l1 / sigmad)
    exp2 = math.exp(l2 / sigmad)

    d4 = exp1 * exp1 * exp2 * exp2
    d3 = -2 * cos1 * exp1 * exp2 * exp2
    d3 += -2 * cos2 * exp2 * exp1 * exp1
    d2 = 4 * cos2 * cos1 * exp1 * exp2
    d2 += exp1 * exp1 + exp2 * exp2
    d1 = -2 * (exp2 * cos2 + exp1 * cos1)

    sd = 1.0 + d1 + d2 + d3 + d4
    dd = d1 + 2 * d2 + 3 * d3 + 4 * d4
    ed = d1 + 4 * d2 + 9 * d3 + 16 * d4
    return d1, d2, d3, d4, sd, dd, ed


def recursive_gaussian_coefficients(sigma: float, spacing: float, order: int,
                                    normalize_across_scale: bool = True) -> np.ndarray:
    """``RecursiveGaussianImageFilter::SetUp`` for order 0 or 2 (symmetric kernels).

    Returns float64 ``[N0 N1 N2 N3 D1 D2 D3 D4 M1 M2 M3 M4 BN1 BN2 BN3 BN4 BM1 BM2 BM3 BM4]``.
    """
    sigma = float(sigma)
    spacing = abs(float(spacing))  # a negative spacing only flips first-order responses
    if spacing < 1e-8:
        raise ValueError(f"The spacing {spacing} is suspiciously small in this image")
    if not sigma > 0.0:
        raise ValueError("Sigma must be greater than zero.")
    sigmad = sigma / spacing
    across_scale_normalization = 1.0

    a1 = (1.3530, -0.6724, -1.3563)
    b1 = (1.8151, -3.4327, 5.2318)
    w1 = 0.6681
    l1 = -1.3932
    a2 = (-0.3531, 0.6724, 0.3446)
    b2 = (0.0902, 0.6100, -2.2355)
    w2 = 2.0787
    l2 = -1.3732

    d1, d2, d3, d4, sd, dd, ed = _d_coefficients(sigmad, w1, l1, w2, l2)
    if order == _ZERO_ORDER:
        n0, n1, n2, n3, sn, dn, en = _n_coefficients(sigmad, a1[0], b1[0], w1, l1,
                                                     a2[0], b2[0], w2, l2)
        alpha0 = 2 * sn / sd - n0
        n0 *= across_scale_normalization / alpha0
        n1 *= across_scale_normalization / alpha0
        n2 *= across_scale_normalization / alpha0
        n3 *= across_scale_normalization / alpha0
    elif order == _SECOND_ORDER:
        if normalize_across_scale:
            across_scale_normalization = sigma * sigma
        n0_0, n1_0, n2_0, n3_0, sn0, dn0, en0 = _n_coefficients(sigmad, a1[0], b1[0], w1, l1,
                                                                a2[0], b2[0], w2, l2)
        n0_2, n1_2, n2_2, n3_2, sn2, dn2, en2 = _n_coefficients(sigmad, a1[2], b1[2], w1, l1,
                                                                a2[2], b2[2], w2, l2)
        beta = -(2 * sn2 - sd * n0_2) / (2 * sn0 - sd * n0_0)
        n0 = n0_2 + beta * n0_0
        n1 = n1_2 + beta * n1_0
        n2 = n2_2 + beta * n2_0
        n3 = n3_2 + beta * n3_0
        sn = sn2 + beta * sn0
        dn = dn2 + beta * dn0
        en = en2 + beta * en0
        alpha2 = en * sd * sd - ed * sn * sd - 2 * dn * dd * sd + 2 * dd * dd * sn
        alpha2 /= sd * sd * sd
        n0 *= across_scale_normalization / alpha2
        n1 *= across_scale_normalization / alpha2
        n2 *= across_scale_normalization / alpha2
        n3 *= across_scale_normalization / alpha2
    else:
        raise ValueError(f"order must be 0 or 2, not {order!r}")

    # ComputeRemainingCoefficients(symmetric=True)
    m1 = n1 - d1 * n0
    m2 = n2 - d2 * n0
    m3 = n3 - d3 * n0
    m4 = -d4 * n0
    sn = n0 + n1 + n2 + n3
    sm = m1 + m2 + m3 + m4
    sd = 1.0 + d1 + d2 + d3 + d4
    bn = (d1 * sn / sd, d2 * sn / sd, d3 * sn / sd, d4 * sn / sd)
    bm = (d1 * sm / sd, d2 * sm / sd, d3 * sm / sd, d4 * sm / sd)
    return np.array((n0, n1, n2, n3, d1, d2, d3, d4, m1, m2, m3, m4) + bn + bm, np.float64)


def laplacian_recursive_gaussian(array: np.ndarray, spacing: tuple[float, float, float],
                                 sigma: float, box: tuple[slice, slice, slice] | None = None
                                 ) -> np.ndarray:
    """LoG of a (z, y, x) array as ``sitk.LaplacianRecursiveGaussianImageFilter`` computes it
    with ``SetNormalizeAcrossScale(True)`` and ``SetSigma(sigma)``.

    ``spacing`` is (x, y, z) in mm, as ``Image.GetSpacing()`` gives it; ``sigma`` in mm. Any real
    input dtype (read as double, as ITK does); the result is a new float32 (z, y, x) array.
    Raises ValueError, as ITK throws, when a side has fewer than 4 voxels.

    ``box`` (z, y, x slices, step 1, non-empty) asks for the LoG of the whole ``array`` cut to
    that box only: the result is box-shaped and bit for bit equal to ``full[box]``. Each chain of
    three 1-D passes (along a1, a2, a3) runs pass 1 on every line of the array, pass 2 only on the
    lines along a2 whose a1-coordinate lies in the box, pass 3 only on the lines along a3 whose a1
    and a2 coordinates lie in the box; and each pass keeps only the box's range along its own
    axis, running the causal recursion up to the box's end and the anticausal one down to its
    start. A recursion's value at a sample depends only on the samples it has passed, so every
    kept value is the whole line's, bit for bit; nothing changes but the work left out.
    """
    data = np.asarray(array)
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) array, got shape {data.shape}")
    if len(spacing) != 3:
        raise ValueError(f"expected an (x, y, z) spacing, got {spacing!r}")
    if data.dtype == np.float32 or data.dtype == np.float64:
        data = np.ascontiguousarray(data)
    else:
        data = np.ascontiguousarray(data, dtype=np.float64)  # exact for every integer pixel
    for dim, n in enumerate(data.shape[::-1]):
        if n < 4:
            raise ValueError(f"The number of pixels along direction {dim} is less than 4. This "
                             "filter requires a minimum of four pixels along the dimension to "
                             "be processed.")
    cut = check_box(box, data.shape)
    steps = [float(s) for s in spacing]
    second = [recursive_gaussian_coefficients(sigma, s, _SECOND_ORDER) for s in steps]
    zero = [recursive_gaussian_coefficients(sigma, s, _ZERO_ORDER) for s in steps]

    cum = np.zeros(tuple(s.stop - s.start for s in cut), np.float32)
    for dim in range(3):  # ITK dimension: 0 = x (numpy axis 2), 1 = y, 2 = z
        others = [j for j in range(3) if j != dim]
        chain = ((2 - dim, second[dim]), (2 - others[0], zero[others[0]]),
                 (2 - others[1], zero[others[1]]))
        src = data
        for axis, c in chain:
            # later passes need this one's output only where this axis lies in the box
            shape = list(src.shape)
            shape[axis] = cut[axis].stop - cut[axis].start
            dst = np.empty(shape, np.float32)
            filter_axis(src, dst, axis, c, cut[axis].start, cut[axis].stop)
            src = dst
        spacing2 = steps[dim] * steps[dim]
        accumulate(cum, src, 1.0 / spacing2)
    return cum


def check_box(box: tuple[slice, ...] | None, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` as explicit (start, stop) slices into an array of ``shape``; None: the whole array.

    Raises ValueError for a box of the wrong length, with a step other than 1, or empty.
    """
    if box is None:
        return tuple(slice(0, n) for n in shape)
    if len(box) != len(shape):
        raise ValueError(f"expected {len(shape)} slices for a box, got {box!r}")
    out = []
    for s, n in zip(box, shape, strict=True):
        if not isinstance(s, slice):
            raise ValueError(f"a box is made of slices, got {s!r}")
        start, stop, step = s.indices(n)
        if step != 1 or stop <= start:
            raise ValueError(f"box {box!r} is empty or strided in an array of shape {shape}")
        out.append(slice(start, stop))
    return tuple(out)
