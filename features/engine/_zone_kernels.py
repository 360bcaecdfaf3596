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


def matrix_features(P: np.ndarray, ivector: np.ndarray, jvector: np.ndarray) -> dict[str, float]:
    """The features GLSZM and GLDM share, under neutral keys (``S`` = size: zone or dependence).

    Same expressions as radiomics/glszm.py and radiomics/gldm.py (``Nz`` = sum of ``P``).
    """
    ps = P.sum(0)
    pg = P.sum(1)
    Nz = P.sum()  # > 0: ImageLevels refuses empty ROIs
    i2 = ivector[:, None] ** 2
    j2 = jvector[None, :] ** 2
    pg_n = pg / Nz
    u_i = np.sum(pg_n * ivector)
    ps_n = ps / Nz
    u_j = np.sum(ps_n * jvector)
    p = P / Nz
    return {
        "SmallS": np.sum(ps / (jvector ** 2)) / Nz,
        "LargeS": np.sum(ps * (jvector ** 2)) / Nz,
        "GLN": np.sum(pg ** 2) / Nz,
        "GLNN": np.sum(pg ** 2) / Nz ** 2,
        "SN": np.sum(ps ** 2) / Nz,
        "SNN": np.sum(ps ** 2) / Nz ** 2,
        "GLV": np.sum(pg_n * (ivector - u_i) ** 2),
        "SV": np.sum(ps_n * (jvector - u_j) ** 2),
        "Entropy": -np.sum(p * np.log2(p + EPS)),
        "LowGL": np.sum(pg / (ivector ** 2)) / Nz,
        "HighGL": np.sum(pg * (ivector ** 2)) / Nz,
        "SmallSLowGL": np.sum(P / (i2 * j2)) / Nz,
        "SmallSHighGL": np.sum(P * i2 / j2) / Nz,
        "LargeSLowGL": np.sum(P * j2 / i2) / Nz,
        "LargeSHighGL": np.sum(P * (i2 * j2)) / Nz,
        "Nz": Nz,
    }


def rename(values: dict[str, float], names: dict[str, str]) -> dict[str, float]:
    """Pick ``values`` under pyradiomics' feature names (``names``: pyradiomics name -> neutral key)."""
    return {name: float(values[key]) for name, key in names.items()}
