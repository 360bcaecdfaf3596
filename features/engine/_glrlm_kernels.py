"""Numba kernels of the GLRLM: runs from run starts along each direction, and per-angle features.

The formulas are those of pyradiomics 3.0.1 ``radiomics/glrlm.py``, evaluated on one angle's
matrix of run counts (grey level x run length).
"""

from __future__ import annotations

import numba
import numpy as np

from features.engine._glcm_kernels import EPS

N_FEATURES = 16


@numba.njit(cache=True, nogil=True)
def glrlm_counts(lab: np.ndarray, pos: np.ndarray, n: int, steps: np.ndarray,
                 max_run: int) -> tuple[np.ndarray, np.ndarray]:
    """Run counts ``R[k, level, length - 1]`` per angle, and whether each angle has two adjacent ROI voxels.

    ``lab``/``pos`` come from :func:`~features.engine._glcm_kernels.padded_labels`; every step is
    positive there (an offset's first non-zero component is), so scanning the ROI in memory order
    meets a voxel's predecessor first. Its run length so far is the predecessor's plus one when
    both have the same level (the padded border reads -1), and a run ends where the next voxel
    differs: the maximal runs of pyradiomics' ``calculate_glrlm``, in one streaming pass per angle.
    """
    na = steps.size
    width = max_run + 1  # length 0 is never counted
    spare = n * width  # 16 scratch cells that non-ends count into (branch-free, no chain on one cell)
    flat = np.zeros((na, spare + 16), np.int64)
    adjacent = np.zeros(na, np.bool_)
    run = np.empty(lab.size, np.int32)  # read only where the predecessor was written this pass
    # keep[same] masks the predecessor's run: a load from a table, as LLVM turns any comparison
    # or sign-mask idiom back into a branch, and "same level as the predecessor" is a coin flip
    # on textured images (mispredictions cost more than the whole pass).
    keep = np.zeros(2, np.int64)
    keep[1] = -1
    for k in range(na):
        st = steps[k]
        hist = flat[k]
        adj = False
        for m in range(pos.size):
            p = pos[m]
            c = lab[p]
            length = (run[p - st] & keep[np.int64(lab[p - st] == c)]) + 1
            run[p] = length
            nb = lab[p + st]
            adj |= nb >= 0
            end = np.int64(nb != c)
            hist[end * (c * width + length) + (1 - end) * (spare + (m & 15))] += 1
        adjacent[k] = adj
    out = np.ascontiguousarray(flat[:, :spare]).reshape(na, n, width)
    return out[:, :, 1:], adjacent


@numba.njit(cache=True, nogil=True, error_model="numpy")
def glrlm_angle_features(counts: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The 16 GLRLM features of each angle's run counts ``counts[a]`` (levels ``g``), shape (angles, 16)."""
    na, n, nl = counts.shape
    out = np.empty((na, N_FEATURES))
    pr = np.empty(nl)
    pg = np.empty(n)
    for a in range(na):
        r = counts[a]
        pr[:] = 0.0
        pg[:] = 0.0
        for i in range(n):
            for j in range(nl):
                v = float(r[i, j])
                pr[j] += v
                pg[i] += v
        nr = 0.0
        for i in range(n):
            nr += pg[i]
        sre = lre = rln = npx = 0.0
        for j in range(nl):
            jl = float(j + 1)
            sre += pr[j] / (jl * jl)
            lre += pr[j] * (jl * jl)
            rln += pr[j] * pr[j]
            npx += pr[j] * jl
        gln = lglre = hglre = 0.0
        for i in range(n):
            gi2 = g[i] * g[i]
            gln += pg[i] * pg[i]
            lglre += pg[i] / gi2
            hglre += pg[i] * gi2
        ui = 0.0
        for i in range(n):
            ui += (pg[i] / nr) * g[i]
        glv = 0.0
        for i in range(n):
            glv += (pg[i] / nr) * (g[i] - ui) ** 2
        uj = 0.0
        for j in range(nl):
            uj += (pr[j] / nr) * (j + 1)
        rv = 0.0
        for j in range(nl):
            rv += (pr[j] / nr) * (j + 1 - uj) ** 2
        ent = srlgle = srhgle = lrlgle = lrhgle = 0.0
        for i in range(n):
            gi2 = g[i] * g[i]
            for j in range(nl):
                v = float(r[i, j])
                if v == 0.0:
                    continue
                jl2 = float((j + 1) * (j + 1))
                pv = v / nr
                ent += pv * np.log2(pv + EPS)
                srlgle += v / (gi2 * jl2)
                srhgle += v * gi2 / jl2
                lrlgle += v * jl2 / gi2
                lrhgle += v * (jl2 * gi2)
        values = (sre / nr, lre / nr, gln / nr, gln / (nr * nr), rln / nr, rln / (nr * nr), nr / npx,
                  glv, rv, -ent, lglre / nr, hglre / nr, srlgle / nr, srhgle / nr, lrlgle / nr,
                  lrhgle / nr)
        for k in range(N_FEATURES):
            out[a, k] = values[k]
    return out
