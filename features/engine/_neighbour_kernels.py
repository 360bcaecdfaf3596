"""Numba kernel of one scan over a ROI's 26-neighbourhood that serves GLCM, GLDM and NGTDM at once.

Each class used to walk the neighbour pairs on its own (13 directions, 3 passes per image); one
scan of the padded level grid (:func:`~features.engine._glcm_kernels.padded_labels`) looks each
neighbour up once and feeds the three: GLCM's per-angle counts (forward neighbours), GLDM's
dependences and NGTDM's neighbour sums (both directions). Integer counts, so the results equal
those of the per-class passes exactly, in any order.
"""

from __future__ import annotations

import numba
import numpy as np

from features.engine._zone_kernels import COUNT_BITS


@numba.njit(cache=True, nogil=True)
def neighbour_counts(lab: np.ndarray, pos: np.ndarray, levels: np.ndarray,
                     steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(glcm[k, i, j], dep[m], acc[m])`` of a ROI on its padded level grid.

    ``glcm``: voxels of level index i whose neighbour along angle k (``steps[k] > 0``) has level
    index j; ``dep``: each voxel's ROI neighbours of equal level (0..26); ``acc``: each voxel's
    sum of neighbour grey levels ``levels[j]`` and neighbour count, packed as
    ``sum << COUNT_BITS | count`` (integer sums are exact, as the C code's double sums of integers).
    """
    na = steps.size
    n = levels.size
    # Branch-free: a neighbour outside the ROI (-1) reads column 0 of a spare GLCM column, level
    # sum 0 and count 0 from the shifted tables, and never equals the centre's level index.
    glcm = np.zeros((na, n, n + 1), np.int64)
    flat = glcm.reshape(-1)
    plane = n * (n + 1)
    add = np.zeros(n + 1, np.int64)
    for j in range(n):
        add[j + 1] = (levels[j] << COUNT_BITS) + 1
    dep = np.empty(pos.size, np.int64)
    acc = np.empty(pos.size, np.int64)
    for m in range(pos.size):
        p = pos[m]
        c = lab[p]
        row = c * (n + 1)
        d = 0
        a = 0
        for k in range(na):
            st = steps[k]
            nb = lab[p + st] + 1
            flat[k * plane + row + nb] += 1
            d += np.int64(nb == c + 1)
            a += add[nb]
            nb = lab[p - st] + 1
            d += np.int64(nb == c + 1)
            a += add[nb]
        dep[m] = d
        acc[m] = a
    return np.ascontiguousarray(glcm[:, :, 1:]), dep, acc
