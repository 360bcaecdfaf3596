"""Numba kernels of the GLCM: co-occurrence counts on the padded level grid, and per-angle features.

Split from :mod:`features.engine.glcm` so that the compiled arithmetic sits apart from the
pyradiomics bookkeeping (empty angles, NaN-mean, MCC eigenvalues). Every formula is the one of
pyradiomics 3.0.1 ``radiomics/glcm.py``, evaluated on one angle's normalised symmetrical matrix.
"""

from __future__ import annotations

import numba
import numpy as np

EPS = float(np.spacing(1))
"""pyradiomics' ``eps`` (``numpy.spacing(1)``), inside every log2 and the Correlation divisor."""

N_FEATURES = 23
"""Per-angle features computed here (all GLCM features but MCC, which needs eigenvalues)."""


@numba.njit(cache=True, nogil=True)
def compact_levels(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grey levels present in ``v`` (ascending) and each voxel's index among them.

    pyradiomics builds matrices of size Ng (max level) and deletes the empty levels; indexing by
    present level directly gives the same matrix without the deletion.
    """
    top = 0
    for x in v:
        if x > top:
            top = x
    seen = np.zeros(top + 1, np.bool_)
    for x in v:
        seen[x] = True
    lut = np.full(top + 1, -1, np.int32)
    n = 0
    for g in range(top + 1):
        if seen[g]:
            lut[g] = n
            n += 1
    levels = np.empty(n, np.int64)
    for g in range(top + 1):
        if seen[g]:
            levels[lut[g]] = g
    codes = np.empty(v.size, np.int32)
    for m in range(v.size):
        codes[m] = lut[v[m]]
    return levels, codes


@numba.njit(cache=True, nogil=True)
def padded_labels(flat: np.ndarray, shape: tuple[int, int, int],
                  codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Level indices on the box grown by one voxel each side (-1 outside the ROI), and the ROI's positions in it.

    With the one-voxel border a neighbour lookup ``lab[p + offset]`` never leaves the array and
    reads -1 outside the ROI, so the matrix loops need no bounds checks.
    """
    nz, ny, nx = shape
    lab = np.full((nz + 2) * (ny + 2) * (nx + 2), -1, np.int32)
    pos = np.empty(flat.size, np.int64)
    for m in range(flat.size):
        f = flat[m]
        z = f // (ny * nx)
        r = f - z * ny * nx
        y = r // nx
        x = r - y * nx
        p = ((z + 1) * (ny + 2) + y + 1) * (nx + 2) + x + 1
        pos[m] = p
        lab[p] = codes[m]
    return lab, pos


def padded_strides(shape: tuple[int, int, int], offsets: np.ndarray) -> np.ndarray:
    """Flat steps in the padded box (see :func:`padded_labels`) of each (dz, dy, dx) offset."""
    ny, nx = shape[1] + 2, shape[2] + 2
    return np.array([(int(dz) * ny + int(dy)) * nx + int(dx) for dz, dy, dx in offsets], dtype=np.int64)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _angle_features(p: np.ndarray, g: np.ndarray, ng: int, out: np.ndarray) -> None:
    """The 23 non-MCC features of one normalised matrix ``p`` (levels ``g``), into ``out``."""
    n = g.size
    px = np.zeros(n)
    py = np.zeros(n)
    ux = 0.0
    uy = 0.0
    for i in range(n):
        for j in range(n):
            px[i] += p[i, j]
            py[j] += p[i, j]
            ux += g[i] * p[i, j]
            uy += g[j] * p[i, j]
    padd = np.zeros(2 * ng - 1)  # p_{x+y}(k), k = 2 .. 2 Ng
    psub = np.zeros(ng)  # p_{x-y}(k), k = 0 .. Ng - 1
    acorr = cprom = cshade = ctend = contrast = 0.0
    sigx2 = sigy2 = corm = energy = hxy = hxy1 = hxy2 = pmax = 0.0
    for i in range(n):
        gi = g[i]
        dx = gi - ux
        for j in range(n):
            pp = px[i] * py[j]
            hxy2 += pp * np.log2(pp + EPS)
            pij = p[i, j]
            if pij == 0.0:  # every other term is 0 (0 * log2(eps) included)
                continue
            gj = g[j]
            dy = gj - uy
            padd[int(gi + gj) - 2] += pij
            diff = abs(gi - gj)
            psub[int(diff)] += pij
            acorr += pij * (gi * gj)
            s = gi + gj - ux - uy
            s2 = s * s
            cprom += pij * (s2 * s2)
            cshade += pij * (s2 * s)
            ctend += pij * s2
            contrast += pij * (diff * diff)
            sigx2 += pij * (dx * dx)
            sigy2 += pij * (dy * dy)
            corm += pij * dx * dy
            energy += pij * pij
            hxy += pij * np.log2(pij + EPS)
            hxy1 += pij * np.log2(pp + EPS)
            if pij > pmax:
                pmax = pij
    hxy = -hxy
    hxy1 = -hxy1
    hxy2 = -hxy2
    hx = 0.0
    hy = 0.0
    for i in range(n):
        hx += px[i] * np.log2(px[i] + EPS)
        hy += py[i] * np.log2(py[i] + EPS)
    hx = -hx
    hy = -hy
    sigx = sigx2 ** 0.5
    sigy = sigy2 ** 0.5
    corr = 1.0 if sigx * sigy == 0 else corm / (sigx * sigy + EPS)
    davg = dent = idm = idmn = idv = idn = inv = 0.0
    for k in range(ng):
        q = psub[k]
        if q == 0.0:
            continue
        davg += k * q
        dent += q * np.log2(q + EPS)
        idm += q / (1 + k ** 2)
        idmn += q / (1 + (k ** 2) / (ng ** 2))
        idv += q / (1 + k)
        idn += q / (1 + k / ng)
        if k > 0:
            inv += q / k ** 2
    dvar = 0.0
    for k in range(ng):
        dvar += psub[k] * (k - davg) ** 2
    savg = 0.0
    sent = 0.0
    for k in range(2 * ng - 1):
        if padd[k] != 0.0:
            savg += (k + 2) * padd[k]
            sent += padd[k] * np.log2(padd[k] + EPS)
    div = max(hx, hy)
    imc1 = (hxy - hxy1) / div if div != 0 else 0.0
    imc2 = 0.0 if hxy2 == hxy else (1 - np.e ** (-2 * (hxy2 - hxy))) ** 0.5
    values = (acorr, ux, cprom, cshade, ctend, contrast, corr, davg, -dent, dvar, energy, hxy,
              imc1, imc2, idm, idmn, idv, idn, inv, pmax, savg, -sent, sigx2)
    for k in range(N_FEATURES):
        out[k] = values[k]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def glcm_angle_features(counts: np.ndarray, g: np.ndarray, ng: int) -> tuple[np.ndarray, np.ndarray]:
    """Per angle: the 23 features and the normalised symmetrical matrix p (for MCC), shapes (a, 23), (a, n, n).

    ``counts`` are the asymmetrical counts of the non-empty angles; each is made symmetrical and
    normalised as pyradiomics does (``P + P.T``, divided by its sum; exact, as counts are integers).
    """
    na, n, _ = counts.shape
    feats = np.empty((na, N_FEATURES))
    pn = np.empty((na, n, n))
    for a in range(na):
        total = 0.0
        for i in range(n):
            for j in range(n):
                v = float(counts[a, i, j] + counts[a, j, i])
                pn[a, i, j] = v
                total += v
        for i in range(n):
            for j in range(n):
                pn[a, i, j] /= total
        _angle_features(pn[a], g, ng, feats[a])
    return feats, pn


@numba.njit(cache=True, nogil=True)
def mcc_q_matrices(p: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """pyradiomics' MCC matrices ``Q[a, i, j] = sum_k p[a, i, k] p[a, j, k] / (px[a, i] py[a, k] + eps)``.

    Same operations in the same order as pyradiomics (terms added over k = 0, 1, ...), so with
    its ``px``/``py`` the result is bit for bit its Q, and ``eigvals`` gives its eigenvalues.
    """
    na, n, _ = p.shape
    out = np.zeros((na, n, n))
    pt = np.empty((n, n))
    for a in range(na):
        for k in range(n):
            for j in range(n):
                pt[k, j] = p[a, j, k]
        for i in range(n):
            row = out[a, i]
            for k in range(n):
                den = px[a, i] * py[a, k] + EPS
                pik = p[a, i, k]
                for j in range(n):
                    row[j] += (pik * pt[k, j]) / den
    return out


@numba.njit(cache=True, nogil=True)
def eigenvalue_bound(lam: np.ndarray, skew: float) -> float:
    """How far the 2nd largest eigenvalue of H + K may lie from that of H (ascending ``lam``),
    ||K|| <= ``skew`` (see ``features.engine.glcm._mcc_symmetric`` for the argument)."""
    n = lam.size
    lo = hi = n - 2
    while lo > 0 and lam[lo] - lam[lo - 1] <= 2 * skew:
        lo -= 1
    while hi < n - 1 and lam[hi + 1] - lam[hi] <= 2 * skew:
        hi += 1
    if lo < hi:
        return max(lam[hi] - lam[n - 2], lam[n - 2] - lam[lo]) + skew
    if n < 3:
        gap = lam[n - 1] - lam[n - 2]
    else:
        gap = min(lam[n - 1] - lam[n - 2], lam[n - 2] - lam[n - 3])
    return min(skew, skew ** 2 / (gap - 2 * skew))


@numba.njit(cache=True, nogil=True)
def mcc_symmetric(p: np.ndarray, rel_bound: float) -> tuple[bool, float]:
    """(taken, MCC) of the stack of normalised symmetrical matrices ``p`` (a, n, n), n >= 2, from
    the symmetric eigenproblem of each angle; taken is False where an angle's error bound is not
    within ``rel_bound`` of the exact value or its eigenvalue lies near 0 (the caller then runs
    pyradiomics' own ``eigvals``). One pass per angle: Q, its symmetrised S = R^1/2 Q R^-1/2
    (R = diag(px)), the skew part's norm, ``eigvalsh`` of the symmetric part."""
    na, n, _ = p.shape
    w = np.empty((n, n))
    sym = np.empty((n, n))
    total = 0.0
    for a in range(na):
        pa = p[a]
        px = np.zeros(n)  # p is symmetrical: its row and column sums are the same floats
        for i in range(n):
            for j in range(n):
                px[i] += pa[i, j]
        for i in range(n):
            for j in range(n):
                w[i, j] = pa[i, j] / (px[i] * px[j] + EPS)
        q = w @ pa.T
        root = np.sqrt(np.where(px > 0, px, 1.0))
        for i in range(n):
            for j in range(n):
                sym[i, j] = root[i] * q[i, j] / root[j]
        skew2 = 0.0
        for i in range(n):
            for j in range(n):
                d = sym[i, j] - sym[j, i]
                skew2 += d * d
        skew = 0.5 * np.sqrt(skew2)
        lam = np.linalg.eigvalsh(0.5 * (sym + sym.T))  # ascending
        slack = 64 * n * EPS * np.abs(lam).max()  # rounding of Q, H and eigvalsh
        lam2 = lam[n - 2]
        bound = eigenvalue_bound(lam, skew) + slack
        if lam2 - bound < 1e-6 or bound > 2 * rel_bound * np.sqrt(lam2 * (lam2 - bound)):
            return False, np.nan
        total += np.sqrt(lam2)
    return True, total / na


@numba.njit(cache=True, nogil=True, inline="always")
def _pairwise_sum(a: np.ndarray, n: int) -> float:
    """numpy's ``pairwise_sum`` of a contiguous run of n <= 128 doubles (one block: eight
    partial sums, then the rest in order), so a mean over angles adds exactly as numpy's does."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[i]
        return res
    r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    i = 8
    while i < n - (n % 8):
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[i]
        i += 1
    return res


@numba.njit(cache=True, nogil=True, error_model="numpy")
def nanmean_columns(values: np.ndarray) -> np.ndarray:
    """``numpy.nanmean(values.T, axis=1)`` for (angles <= 128, features) ``values``, bit for bit:
    NaN taken as 0 in numpy's pairwise sum, divided by the count of the others (NaN for none)."""
    na, nf = values.shape
    out = np.empty(nf)
    row = np.empty(na)
    for k in range(nf):
        count = 0
        for a in range(na):
            v = values[a, k]
            if v != v:
                row[a] = 0.0
            else:
                row[a] = v
                count += 1
        out[k] = _pairwise_sum(row, na) / count
    return out
