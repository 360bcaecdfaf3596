"""Shared pieces of GLSZM, GLDM and NGTDM: the NGTDM grey-tone sums and the (grey level, size) matrix features.

The neighbour counts come from one scan per image (:mod:`features.engine._neighbour_kernels`). GLSZM and
GLDM share the same feature formulas on a matrix ``P[grey level, size]`` (zone size, or dependence
count + 1), written here once in pyradiomics' 3.0.1 order of operations.
"""

from __future__ import annotations

import numba
import numpy as np

EPS: float = float(np.spacing(1))
"""pyradiomics' epsilon in the entropy logarithms."""


COUNT_BITS = 8
"""Low bits of the neighbour-sum accumulator (``sum << COUNT_BITS | count``, see
:func:`~features.engine._neighbour_kernels.neighbour_counts`) that hold the count (at most 26)."""


@numba.njit(cache=True, nogil=True)
def grey_tone_sums(values: np.ndarray, acc: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per grey level: voxel count ``n`` and sum ``s`` of |grey level - neighbour mean|.

    Voxels in ascending flat order, as calculate_ngtdm adds them; a voxel without ROI neighbours
    counts in ``n`` with a difference of 0.
    """
    n = np.zeros(n_levels + 1, dtype=np.float64)
    s = np.zeros(n_levels + 1, dtype=np.float64)
    mask = (1 << COUNT_BITS) - 1
    for k in range(values.size):
        level = values[k]
        n[level] += 1.0
        count = acc[k] & mask
        if count > 0:
            s[level] += abs(level - (acc[k] >> COUNT_BITS) / count)
    return n, s


def level_size_matrix(levels: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``P[i, j]``: how many items (zones, voxels) have grey level ``ivector[i]`` and size ``jvector[j]``.

    Only grey levels and sizes that occur are kept, as pyradiomics deletes empty rows and columns.
    Bincounts instead of sorting: levels and sizes are small non-negative integers.
    """
    n_rows = int(levels.max()) + 1 if levels.size else 1
    n_cols = int(sizes.max()) + 1 if sizes.size else 1
    if n_rows * n_cols <= 4 * levels.size + 4096:  # small table (GLDM: sizes <= 27): one bincount
        dense = np.bincount(levels * n_cols + sizes, minlength=n_rows * n_cols).reshape(n_rows, n_cols)
        ivector = np.flatnonzero(dense.any(1))
        jvector = np.flatnonzero(dense.any(0))
        matrix = dense[np.ix_(ivector, jvector)].astype(np.float64)
        return matrix, ivector.astype(np.float64), jvector.astype(np.float64)
    level_count = np.bincount(levels)
    size_count = np.bincount(sizes)
    ivector = np.flatnonzero(level_count)
    jvector = np.flatnonzero(size_count)
    level_row = np.zeros(level_count.size, dtype=np.intp)
    level_row[ivector] = np.arange(ivector.size)
    size_col = np.zeros(size_count.size, dtype=np.intp)
    size_col[jvector] = np.arange(jvector.size)
    keys = level_row[levels] * jvector.size + size_col[sizes]
    counts = np.bincount(keys, minlength=ivector.size * jvector.size)
    matrix = counts.reshape(ivector.size, jvector.size).astype(np.float64)
    return matrix, ivector.astype(np.float64), jvector.astype(np.float64)


_MATRIX_KEYS = ("SmallS", "LargeS", "GLN", "GLNN", "SN", "SNN", "GLV", "SV", "Entropy", "LowGL",
                "HighGL", "SmallSLowGL", "SmallSHighGL", "LargeSLowGL", "LargeSHighGL", "Nz")


def matrix_features(P: np.ndarray, ivector: np.ndarray, jvector: np.ndarray) -> dict[str, float]:
    """The features GLSZM and GLDM share, under neutral keys (``S`` = size: zone or dependence).

    Same expressions as radiomics/glszm.py and radiomics/gldm.py (``Nz`` = sum of ``P``), in one
    numba pass (:func:`_matrix_values`; sums in index order, so a value may differ from
    numpy's pairwise sums in its last bits).
    """
    values = _matrix_values(np.ascontiguousarray(P, dtype=np.float64),
                            np.ascontiguousarray(ivector, dtype=np.float64),
                            np.ascontiguousarray(jvector, dtype=np.float64))
    return dict(zip(_MATRIX_KEYS, values.tolist(), strict=True))


@numba.njit(cache=True, nogil=True)
def _matrix_values(P: np.ndarray, ivector: np.ndarray, jvector: np.ndarray) -> np.ndarray:
    """:func:`matrix_features`' values in ``_MATRIX_KEYS`` order."""
    n_i, n_j = P.shape
    ps = np.zeros(n_j)
    pg = np.zeros(n_i)
    nz = 0.0
    for i in range(n_i):
        for j in range(n_j):
            v = P[i, j]
            ps[j] += v
            pg[i] += v
            nz += v  # > 0: ImageLevels refuses empty ROIs
    u_i = 0.0
    for i in range(n_i):
        u_i += pg[i] / nz * ivector[i]
    u_j = 0.0
    for j in range(n_j):
        u_j += ps[j] / nz * jvector[j]
    small = large = sn = sv = 0.0
    for j in range(n_j):
        j2 = jvector[j] ** 2
        small += ps[j] / j2
        large += ps[j] * j2
        sn += ps[j] ** 2
        sv += ps[j] / nz * (jvector[j] - u_j) ** 2
    gln = glv = low = high = 0.0
    for i in range(n_i):
        i2 = ivector[i] ** 2
        gln += pg[i] ** 2
        glv += pg[i] / nz * (ivector[i] - u_i) ** 2
        low += pg[i] / i2
        high += pg[i] * i2
    entropy = s_lo = s_hi = l_lo = l_hi = 0.0
    for i in range(n_i):
        i2 = ivector[i] ** 2
        for j in range(n_j):
            v = P[i, j]
            j2 = jvector[j] ** 2
            pn = v / nz
            entropy += pn * np.log2(pn + EPS)
            s_lo += v / (i2 * j2)
            s_hi += v * i2 / j2
            l_lo += v * j2 / i2
            l_hi += v * (i2 * j2)
    out = np.empty(16)
    out[0] = small / nz
    out[1] = large / nz
    out[2] = gln / nz
    out[3] = gln / nz ** 2
    out[4] = sn / nz
    out[5] = sn / nz ** 2
    out[6] = glv
    out[7] = sv
    out[8] = -entropy
    out[9] = low / nz
    out[10] = high / nz
    out[11] = s_lo / nz
    out[12] = s_hi / nz
    out[13] = l_lo / nz
    out[14] = l_hi / nz
    out[15] = nz
    return out


def rename(values: dict[str, float], names: dict[str, str]) -> dict[str, float]:
    """Pick ``values`` under pyradiomics' feature names (``names``: pyradiomics name -> neutral key)."""
    return {name: float(values[key]) for name, key in names.items()}
