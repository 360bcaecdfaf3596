"""Numba kernels of the 3D shape features: pyradiomics' ``cshape.c`` marching cubes, and its
mesh diameters found exactly on convex-hull vertices instead of over all vertex pairs.

The marching-cubes loop, its look-up tables and its arithmetic (operation order included) are
those of pyradiomics 3.0.1 ``radiomics/src/cshape.c``, so surface area and volume agree to the
last bits. Mesh vertices are kept as doubled voxel indices (every vertex lies on a half-voxel
grid), which makes the 2D hull tests below exact integer arithmetic.
"""

from __future__ import annotations

import numba
import numpy as np

#: The 8 corners (z, y, x) of a marching cube, relative to its origin (cshape.c ``gridAngles``).
GRID = ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 0, 0), (1, 0, 1), (1, 1, 1), (1, 1, 0))

#: Where each of the 12 cube edges is cut, relative to the cube origin (cshape.c ``vertList``).
VERT = np.array([[0, 0, 0.5], [0, 0.5, 1], [0, 1, 0.5], [0, 0.5, 0],
                 [1, 0, 0.5], [1, 0.5, 1], [1, 1, 0.5], [1, 0.5, 0],
                 [0.5, 0, 0], [0.5, 0, 1], [0.5, 1, 1], [0.5, 1, 0]], dtype=np.float64)

#: cshape.c stores, per cube, the vertices on edges 6, 7 and 11 (those of corner 7), present when
#: corners 6, 4 and 3 are set: every boundary edge of the padded mask is so stored exactly once.
POINT_BITS = np.array([6, 4, 3], dtype=np.int64)
POINT_EDGES = np.array([6, 7, 11], dtype=np.int64)

# cshape.c ``triTable`` (cube indices 0..127; larger ones are flipped), rows without the -1 tail.
_TRIANGLES = (
    (), (0, 8, 3),
    (1, 9, 0), (1, 8, 3, 1, 9, 8),
    (1, 2, 10), (0, 8, 3, 1, 2, 10),
    (9, 2, 10, 0, 2, 9), (2, 8, 3, 2, 10, 8, 10, 9, 8),
    (11, 2, 3), (11, 2, 0, 0, 8, 11),
    (1, 9, 0, 11, 2, 3), (11, 2, 1, 1, 9, 11, 9, 8, 11),
    (3, 10, 1, 11, 10, 3), (10, 1, 0, 0, 8, 10, 8, 11, 10),
    (9, 0, 3, 3, 11, 9, 11, 10, 9), (9, 8, 10, 11, 10, 8),
    (4, 7, 8), (0, 4, 3, 4, 7, 3),
    (1, 9, 0, 4, 7, 8), (1, 9, 4, 1, 4, 7, 1, 7, 3),
    (1, 2, 10, 4, 7, 8), (3, 4, 7, 3, 0, 4, 1, 2, 10),
    (9, 2, 10, 9, 0, 2, 4, 7, 8), (2, 10, 9, 2, 9, 7, 2, 7, 3, 4, 7, 9),
    (4, 7, 8, 11, 2, 3), (11, 4, 7, 11, 2, 4, 2, 0, 4),
    (1, 9, 0, 4, 7, 8, 11, 2, 3), (4, 7, 11, 9, 4, 11, 11, 2, 9, 1, 9, 2),
    (3, 10, 1, 11, 10, 3, 4, 7, 8), (11, 10, 1, 1, 4, 11, 1, 0, 4, 4, 7, 11),
    (4, 7, 8, 9, 0, 3, 3, 11, 9, 11, 10, 9), (4, 7, 11, 4, 11, 9, 9, 11, 10),
    (9, 5, 4), (9, 5, 4, 0, 8, 3),
    (0, 5, 4, 0, 1, 5), (8, 5, 4, 8, 3, 5, 3, 1, 5),
    (1, 2, 10, 9, 5, 4), (0, 8, 3, 1, 2, 10, 9, 5, 4),
    (2, 10, 5, 5, 4, 2, 2, 4, 0), (2, 10, 5, 3, 2, 5, 3, 5, 4, 8, 3, 4),
    (9, 5, 4, 11, 2, 3), (11, 2, 0, 0, 8, 11, 9, 5, 4),
    (0, 5, 4, 0, 1, 5, 11, 2, 3), (2, 1, 5, 2, 5, 8, 11, 2, 8, 5, 4, 8),
    (3, 10, 1, 11, 10, 3, 9, 5, 4), (5, 4, 9, 10, 1, 0, 0, 8, 10, 8, 11, 10),
    (5, 4, 0, 5, 0, 11, 10, 5, 11, 11, 0, 3), (5, 4, 8, 10, 5, 8, 11, 10, 8),
    (7, 8, 9, 5, 7, 9), (3, 0, 9, 5, 3, 9, 3, 5, 7),
    (7, 8, 0, 0, 1, 7, 7, 1, 5), (1, 5, 7, 1, 7, 3),
    (7, 8, 9, 5, 7, 9, 1, 2, 10), (1, 2, 10, 3, 0, 9, 3, 9, 5, 3, 5, 7),
    (0, 2, 8, 8, 2, 5, 8, 5, 7, 2, 10, 5), (2, 10, 5, 2, 5, 3, 3, 5, 7),
    (5, 7, 9, 7, 8, 9, 11, 2, 3), (5, 7, 9, 9, 7, 2, 2, 0, 9, 11, 2, 7),
    (11, 2, 3, 0, 1, 8, 1, 7, 8, 1, 5, 7), (2, 1, 11, 1, 7, 11, 1, 5, 7),
    (7, 8, 9, 5, 7, 9, 3, 10, 1, 11, 10, 3), (5, 7, 0, 5, 0, 9, 7, 11, 0, 10, 1, 0, 11, 10, 0),
    (11, 10, 0, 0, 3, 11, 10, 5, 0, 0, 7, 8, 5, 7, 0), (11, 10, 5, 5, 7, 11),
    (6, 5, 10), (0, 8, 3, 6, 5, 10),
    (1, 9, 0, 6, 5, 10), (1, 8, 3, 1, 9, 8, 6, 5, 10),
    (1, 6, 5, 1, 2, 6), (1, 6, 5, 1, 2, 6, 0, 8, 3),
    (9, 6, 5, 9, 0, 6, 0, 2, 6), (5, 9, 8, 5, 8, 2, 5, 2, 6, 8, 3, 2),
    (11, 2, 3, 6, 5, 10), (11, 2, 0, 0, 8, 11, 6, 5, 10),
    (1, 9, 0, 11, 2, 3, 6, 5, 10), (11, 2, 1, 1, 9, 11, 9, 8, 11, 6, 5, 10),
    (6, 3, 11, 6, 5, 3, 5, 1, 3), (0, 8, 11, 0, 11, 5, 0, 5, 1, 5, 11, 6),
    (6, 3, 11, 0, 3, 6, 0, 6, 5, 0, 5, 9), (6, 5, 9, 6, 9, 11, 11, 9, 8),
    (4, 7, 8, 6, 5, 10), (0, 4, 3, 4, 7, 3, 6, 5, 10),
    (1, 9, 0, 4, 7, 8, 6, 5, 10), (1, 9, 4, 1, 4, 7, 1, 7, 3, 6, 5, 10),
    (4, 7, 8, 1, 6, 5, 1, 2, 6), (0, 4, 3, 4, 7, 3, 1, 6, 5, 1, 2, 6),
    (4, 7, 8, 9, 6, 5, 9, 0, 6, 0, 2, 6), (7, 3, 9, 4, 7, 9, 3, 2, 9, 5, 9, 6, 2, 6, 9),
    (11, 2, 3, 4, 7, 8, 6, 5, 10), (11, 4, 7, 11, 2, 4, 2, 0, 4, 6, 5, 10),
    (1, 9, 0, 11, 2, 3, 4, 7, 8, 6, 5, 10), (4, 7, 11, 9, 4, 11, 11, 2, 9, 1, 9, 2, 6, 5, 10),
    (4, 7, 8, 6, 3, 11, 6, 5, 3, 5, 1, 3), (5, 1, 11, 5, 11, 6, 1, 0, 11, 4, 7, 11, 0, 4, 11),
    (4, 7, 8, 6, 3, 11, 0, 3, 6, 0, 6, 5, 0, 5, 9), (6, 5, 9, 6, 9, 11, 4, 7, 9, 7, 11, 9),
    (10, 4, 9, 6, 4, 10), (10, 4, 9, 6, 4, 10, 0, 8, 3),
    (0, 1, 10, 10, 6, 0, 6, 4, 0), (1, 8, 3, 1, 6, 8, 8, 6, 4, 6, 1, 10),
    (1, 4, 9, 1, 2, 4, 2, 6, 4), (1, 4, 9, 1, 2, 4, 2, 6, 4, 0, 8, 3),
    (0, 2, 4, 4, 2, 6), (8, 3, 2, 8, 2, 4, 4, 2, 6),
    (11, 2, 3, 10, 4, 9, 6, 4, 10), (11, 2, 0, 0, 8, 11, 10, 4, 9, 6, 4, 10),
    (11, 2, 3, 0, 1, 10, 10, 6, 0, 6, 4, 0), (6, 4, 1, 6, 1, 10, 1, 4, 8, 11, 2, 1, 1, 8, 11),
    (9, 6, 4, 3, 6, 9, 1, 3, 9, 11, 6, 3), (1, 8, 11, 0, 8, 1, 11, 6, 1, 1, 4, 9, 6, 4, 1),
    (6, 3, 11, 0, 3, 6, 6, 4, 0), (8, 6, 4, 6, 8, 11),
    (6, 7, 10, 7, 8, 10, 8, 9, 10), (6, 7, 10, 0, 10, 7, 0, 9, 10, 0, 7, 3),
    (6, 7, 10, 1, 10, 7, 1, 7, 8, 0, 1, 8), (6, 7, 10, 1, 10, 7, 1, 7, 3),
    (1, 2, 6, 1, 6, 8, 1, 8, 9, 6, 7, 8), (2, 6, 9, 1, 2, 9, 6, 7, 9, 3, 0, 9, 7, 3, 9),
    (0, 7, 8, 7, 0, 6, 6, 0, 2), (2, 7, 3, 2, 6, 7),
    (11, 2, 3, 6, 7, 10, 7, 8, 10, 8, 9, 10), (2, 0, 7, 11, 2, 7, 0, 9, 7, 6, 7, 10, 9, 10, 7),
    (6, 7, 10, 1, 10, 7, 1, 7, 8, 0, 1, 8, 11, 2, 3), (11, 2, 1, 1, 7, 11, 10, 6, 1, 1, 6, 7),
    (8, 9, 6, 6, 7, 8, 1, 6, 9, 11, 6, 3, 1, 3, 6), (0, 9, 1, 6, 7, 11),
    (0, 7, 8, 7, 0, 6, 0, 3, 11, 11, 6, 0), (6, 7, 11),
)


def _tri_table() -> np.ndarray:
    """``_TRIANGLES`` as cshape.c's (128, 16) table padded with -1."""
    table = np.full((128, 16), -1, dtype=np.int64)
    for i, row in enumerate(_TRIANGLES):
        table[i, :len(row)] = row
    return table


TRI = _tri_table()


def _side_table(x: int) -> np.ndarray:
    """Cube-index bits of the cube's 4 corners at ``x`` (0 or 1), per 4-bit column code.

    Column code bits: voxels (z, y), (z, y + 1), (z + 1, y), (z + 1, y + 1) at one x.
    """
    corners = [GRID.index((dz, dy, x)) for dz, dy in ((0, 0), (0, 1), (1, 0), (1, 1))]
    table = np.zeros(16, dtype=np.int64)
    for code in range(16):
        for bit, corner in enumerate(corners):
            if code & (1 << bit):
                table[code] |= 1 << corner
    return table


#: Cube-index bits of the x = 0 and x = 1 faces of a cube, from their column codes.
LEFT = _side_table(0)
RIGHT = _side_table(1)


@numba.njit(cache=True, nogil=True)
def march(mask: np.ndarray, spacing: np.ndarray, n_voxels: int, left: np.ndarray,
          right: np.ndarray, tri: np.ndarray, vert: np.ndarray, bits: np.ndarray,
          edges: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Surface area, signed volume and mesh vertices (doubled indices) of a zero-padded mask.

    cshape.c's ``calculate_coefficients`` loop, operation for operation (same sums in the same
    order, hence the same floats). Only the cube index is found faster: from 4-voxel column
    codes along x, so that empty and full cubes are skipped at once. A vertex is on an edge
    with exactly one ROI voxel, so there are at most 6 per ROI voxel.
    """
    nz, ny, nx = mask.shape
    s0, s1, s2 = spacing[0], spacing[1], spacing[2]
    verts = np.empty((6 * n_voxels, 3), dtype=np.int64)
    col = np.empty(nx, dtype=np.int64)
    area = 0.0
    volume = 0.0
    n = 0
    for iz in range(nz - 1):
        for iy in range(ny - 1):
            for x in range(nx):
                col[x] = (mask[iz, iy, x] | (mask[iz, iy + 1, x] << 1)
                          | (mask[iz + 1, iy, x] << 2) | (mask[iz + 1, iy + 1, x] << 3))
            for ix in range(nx - 1):
                if col[ix] == col[ix + 1] and (col[ix] == 0 or col[ix] == 15):
                    continue
                # Symmetric around the midpoint: flip indices >= 128 and the volume's sign.
                idx = left[col[ix]] | right[col[ix + 1]]
                sign = 1.0
                if idx & 0x80:
                    idx ^= 0xFF
                    sign = -1.0
                for t in range(3):
                    if idx & (1 << bits[t]):
                        e = edges[t]
                        verts[n, 0] = 2 * iz + int(2 * vert[e, 0])
                        verts[n, 1] = 2 * iy + int(2 * vert[e, 1])
                        verts[n, 2] = 2 * ix + int(2 * vert[e, 2])
                        n += 1
                fz, fy, fx = float(iz), float(iy), float(ix)
                t = 0
                while tri[idx, t] >= 0:
                    ea, eb, ec = tri[idx, t], tri[idx, t + 1], tri[idx, t + 2]
                    a0, a1, a2 = (fz + vert[ea, 0]) * s0, (fy + vert[ea, 1]) * s1, (fx + vert[ea, 2]) * s2
                    b0, b1, b2 = (fz + vert[eb, 0]) * s0, (fy + vert[eb, 1]) * s1, (fx + vert[eb, 2]) * s2
                    c0, c1, c2 = (fz + vert[ec, 0]) * s0, (fy + vert[ec, 1]) * s1, (fx + vert[ec, 2]) * s2
                    x0 = a1 * b2 - b1 * a2
                    x1 = a2 * b0 - b2 * a0
                    x2 = a0 * b1 - b0 * a1
                    volume += sign * (x0 * c0 + x1 * c1 + x2 * c2)
                    a0, a1, a2 = a0 - c0, a1 - c1, a2 - c2
                    b0, b1, b2 = b0 - c0, b1 - c1, b2 - c2
                    x0 = a1 * b2 - b1 * a2
                    x1 = a2 * b0 - b2 * a0
                    x2 = a0 * b1 - b0 * a1
                    area += 0.5 * np.sqrt(x0 * x0 + x1 * x1 + x2 * x2)
                    t += 3
    return area, volume / 6.0, verts[:n].copy()


@numba.njit(cache=True, nogil=True)
def _dist2(p: np.ndarray, i: int, j: int) -> float:
    """cshape.c's squared distance, summed in its order (z, y, x) so maxima match bit for bit."""
    d0 = p[i, 0] - p[j, 0]
    d1 = p[i, 1] - p[j, 1]
    d2 = p[i, 2] - p[j, 2]
    return d0 * d0 + d1 * d1 + d2 * d2


@numba.njit(cache=True, nogil=True)
def _turn(w: np.ndarray, u: int, v: int, o: int, a: int, b: int) -> int:
    """Twice the signed area of triangle (o, a, b) in the (u, v) plane; exact on integers."""
    return (w[a, u] - w[o, u]) * (w[b, v] - w[o, v]) - (w[a, v] - w[o, v]) * (w[b, u] - w[o, u])


@numba.njit(cache=True, nogil=True)
def _hull(pts: np.ndarray, m: int, w: np.ndarray, u: int, v: int, out: np.ndarray) -> int:
    """Strict convex-hull vertices of ``pts[:m]`` (sorted by u, then v), written to ``out``.

    Andrew's monotone chain dropping collinear points: exactly the extreme points, the only
    ones a farthest pair can use (squared distance is strictly convex along any segment).
    """
    if m == 1:
        out[0] = pts[0]
        return 1
    k = 0
    for s in range(m):
        while k >= 2 and _turn(w, u, v, out[k - 2], out[k - 1], pts[s]) <= 0:
            k -= 1
        out[k] = pts[s]
        k += 1
    low = k + 1
    for s in range(m - 2, -1, -1):
        while k >= low and _turn(w, u, v, out[k - 2], out[k - 1], pts[s]) <= 0:
            k -= 1
        out[k] = pts[s]
        k += 1
    return k - 1


@numba.njit(cache=True, nogil=True)
def max_distance(idx: np.ndarray, phys: np.ndarray) -> float:
    """Largest squared distance over all pairs of the vertices ``idx``."""
    best = 0.0
    for i in range(idx.size):
        for j in range(i):
            d = _dist2(phys, idx[i], idx[j])
            if d > best:
                best = d
    return best


@numba.njit(cache=True, nogil=True)
def plane_diameter(verts: np.ndarray, phys: np.ndarray, p: int, u: int, v: int,
                   extreme: np.ndarray) -> float:
    """Largest squared distance between vertices with equal coordinate ``p`` (cshape.c's 2D test).

    A vertex between two others of its (plane, u) line is not extreme, so each plane keeps per u
    only its lowest and highest v, already in hull order; only 2D hull vertices are then paired.
    They are flagged in ``extreme`` too (a 3D hull vertex is extreme in each of its planes).
    """
    n = verts.shape[0]
    size_p = 1
    size_u = 1
    for i in range(n):
        size_p = max(size_p, verts[i, p] + 1)
        size_u = max(size_u, verts[i, u] + 1)
    lo = np.full((size_p, size_u), -1, dtype=np.int64)
    hi = np.full((size_p, size_u), -1, dtype=np.int64)
    for i in range(n):
        a, b = verts[i, p], verts[i, u]
        if lo[a, b] < 0 or verts[i, v] < verts[lo[a, b], v]:
            lo[a, b] = i
        if hi[a, b] < 0 or verts[i, v] > verts[hi[a, b], v]:
            hi[a, b] = i
    pts = np.empty(2 * size_u, dtype=np.int64)
    out = np.empty(4 * size_u + 2, dtype=np.int64)
    best = 0.0
    for a in range(size_p):
        m = 0
        for b in range(size_u):
            if lo[a, b] >= 0:
                pts[m] = lo[a, b]
                m += 1
                if hi[a, b] != lo[a, b]:
                    pts[m] = hi[a, b]
                    m += 1
        if m == 0:
            continue
        k = _hull(pts, m, verts, u, v, out)
        extreme[out[:k]] = True
        best = max(best, max_distance(out[:k], phys))
    return best
