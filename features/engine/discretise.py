"""Grey-level discretisation of the ROI voxels, exactly as pyradiomics' ``binImage``.

Done once per filtered image and shared by firstorder and every texture class (pyradiomics
bins again in each class). Bin edges are computed with the same numpy expressions on values of
the same dtype, so that a voxel on an edge lands in the same bin as in pyradiomics.
"""

from __future__ import annotations

import numba
import numpy as np

from features.engine.geometry import RoiGeometry

__all__ = ["bin_edges", "discretise"]


def bin_edges(values: np.ndarray, bin_width: float = 25, bin_count: int | None = None
              ) -> np.ndarray:
    """``imageoperations.getBinEdges`` on the ROI's voxel values (in the image's dtype).

    Fixed bin count: ``numpy.histogram`` edges with the top edge moved up by 1 so that the
    maximum falls in the last bin. Fixed bin width: edges on multiples of the width from the one
    at or below the minimum, one extra bin above the maximum; a flat ROI on an edge gets one bin.
    """
    if bin_count is not None:
        edges = np.histogram_bin_edges(values, bin_count)
        edges[-1] += 1
        return edges
    minimum = values.min()
    maximum = values.max()
    low = minimum - (minimum % bin_width)
    high = maximum + 2 * bin_width
    edges = np.arange(low, high, bin_width)
    if len(edges) == 1:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    return edges


@numba.njit(cache=True, nogil=True)
def _digitize(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``numpy.digitize`` for increasing edges: the number of edges <= each value.

    The first bin's width gives a guess (edges are evenly spaced but for binCount's last one),
    which comparisons with the edges themselves then correct: the result depends only on those
    comparisons, as numpy's binary search does.
    """
    out = np.empty(values.size, dtype=np.int64)
    n_edges = edges.size
    first = edges[0]
    width = edges[1] - edges[0]
    for i in range(values.size):
        v = values[i]
        if v != v:  # NaN sorts last in numpy
            out[i] = n_edges
            continue
        guess = (v - first) / width
        k = 0 if guess < 0 else (n_edges if guess > n_edges else int(guess) + 1)
        while k > 0 and edges[k - 1] > v:
            k -= 1
        while k < n_edges and edges[k] <= v:
            k += 1
        out[i] = k
    return out


def discretise(image: np.ndarray, geometry: RoiGeometry, bin_width: float = 25,
               bin_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(q, grey levels): ``binImage`` of ``image`` (the ROI box) inside the ROI, 0 outside.

    ``q`` is int64 of the box's shape with levels 1..Ng in the ROI; grey levels are the distinct
    levels present, ascending (pyradiomics' ``coefficients['grayLevels']``).
    """
    values = geometry.values(image)
    edges = bin_edges(values, bin_width, bin_count)
    # compared in the dtype numpy.digitize would use, so values on an edge bin alike
    common = np.result_type(values.dtype, edges.dtype)
    levels = _digitize(values.astype(common, copy=False), edges.astype(common, copy=False))
    q = np.zeros(geometry.shape, dtype=np.int64)
    q.reshape(-1)[geometry.flat] = levels
    return q, np.flatnonzero(np.bincount(levels))
