"""GLSZM of a whole batch (zones by connected components on the device), and the (level, size)
matrix features GLSZM and GLDM share.

Zones are the 26-connected components of equal level inside each ROI. Every voxel starts as its
own label (its index); each round hooks, along every same-level neighbour pair, the larger of the
two roots onto the smaller, then pointer jumping flattens the labels to roots; rounds stop when
every pair has one root. Labels only decrease and always name a voxel of the same component, so
the roots are one voxel per zone. Boxes of different jobs never touch (the -1 border), so one
pass labels the zones of every job of the batch.

The features come from the items (zones, or GLDM's voxels) directly rather than from a padded
matrix of every size: per-item sums for the size moments, ``torch.unique`` counts of
(job, level, size) for the matrix entries, (job, level) counts for the level moments; the same
expressions as :func:`features.engine._zone_kernels.matrix_features` (pyradiomics' deletion of
empty levels and sizes changes none of them).
"""

from __future__ import annotations

import torch

from features.engine.tensor.glcm import EPS
from features.engine.tensor.layout import Layout

__all__ = ["GLSZM_NAMES", "glszm_batch", "item_features", "zone_labels"]

GLSZM_NAMES: dict[str, str] = {
    "SmallAreaEmphasis": "SmallS", "LargeAreaEmphasis": "LargeS", "GrayLevelNonUniformity": "GLN",
    "GrayLevelNonUniformityNormalized": "GLNN", "SizeZoneNonUniformity": "SN",
    "SizeZoneNonUniformityNormalized": "SNN", "ZonePercentage": "ZonePercentage",
    "GrayLevelVariance": "GLV", "ZoneVariance": "SV", "ZoneEntropy": "Entropy",
    "LowGrayLevelZoneEmphasis": "LowGL", "HighGrayLevelZoneEmphasis": "HighGL",
    "SmallAreaLowGrayLevelEmphasis": "SmallSLowGL", "SmallAreaHighGrayLevelEmphasis": "SmallSHighGL",
    "LargeAreaLowGrayLevelEmphasis": "LargeSLowGL", "LargeAreaHighGrayLevelEmphasis": "LargeSHighGL",
}
"""pyradiomics' GLSZM names -> the neutral keys of :func:`item_features`."""


def _flatten(label: torch.Tensor) -> torch.Tensor:
    """Pointer jumping until every label is a root (``label[r] == r``)."""
    while True:
        nxt = label[label]
        if torch.equal(nxt, label):
            return label
        label = nxt


def zone_labels(lay: Layout) -> torch.Tensor:
    """(N,) the root voxel of each voxel's zone (26-connected, same level, same job)."""
    same = lay.same_forward
    src = torch.arange(lay.n_voxels, device=lay.device).expand_as(same)[same]
    dst = lay.voxel_index[lay.neighbour_positions(1)][same]
    label = torch.arange(lay.n_voxels, device=lay.device)
    while src.numel():
        ls, ld = label[src], label[dst]
        differ = ls != ld
        if not bool(differ.any()):
            break
        ls, ld = ls[differ], ld[differ]
        label.scatter_reduce_(0, torch.maximum(ls, ld), torch.minimum(ls, ld), reduce="amin")
        label = _flatten(label)
        src, dst = src[differ], dst[differ]
    return label


def item_features(lay: Layout, job: torch.Tensor, code: torch.Tensor, size: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """Features of the (grey level, size) matrix of the items (job, level index, size), each (B,)."""
    b, n_lv = lay.n_jobs, lay.L
    f64 = torch.float64
    s = size.to(f64)
    nz = lay.per_job(torch.ones_like(s), job)
    pg = torch.bincount(job * n_lv + code, minlength=b * n_lv).view(b, n_lv).to(f64)
    top = int(size.max()) + 1
    sizes, ps = torch.unique(job * top + size, return_counts=True)
    s_job, s_val, ps = sizes // top, (sizes % top).to(f64), ps.to(f64)
    cells, pc = torch.unique((job * n_lv + code) * top + size, return_counts=True)
    c_job, pc = cells // (top * n_lv), pc.to(f64)
    c_g = lay.grey.reshape(-1)[cells // top]
    c_s = (cells % top).to(f64)

    grey, pg_n = lay.grey, pg / nz[:, None]
    u_i = (pg_n * grey).sum(dim=1)
    ps_n = ps / nz[s_job]
    s2 = s_val ** 2
    # the sums over sizes, and over (level, size) cells, each class in one call
    small, large, sn, u_j = lay.per_job_of([ps / s2, ps * s2, ps ** 2, ps_n * s_val], s_job)
    p = pc / nz[c_job]
    i2, j2 = c_g * c_g, c_s * c_s
    xlogx, ssl, ssh, lsl, lsh = lay.per_job_of(
        [p * torch.log2(p + EPS), pc / (i2 * j2), pc * i2 / j2, pc * j2 / i2, pc * (i2 * j2)],
        c_job)
    gln = (pg ** 2).sum(dim=1)
    return {
        "SmallS": small / nz,
        "LargeS": large / nz,
        "GLN": gln / nz,
        "GLNN": gln / nz ** 2,
        "SN": sn / nz,
        "SNN": sn / nz ** 2,
        "GLV": (pg_n * (grey - u_i[:, None]) ** 2).sum(dim=1),
        "SV": lay.per_job(ps_n * (s_val - u_j[s_job]) ** 2, s_job),
        "Entropy": -xlogx,
        "LowGL": (pg / (grey ** 2)).sum(dim=1) / nz,
        "HighGL": (pg * (grey ** 2)).sum(dim=1) / nz,
        "SmallSLowGL": ssl / nz,
        "SmallSHighGL": ssh / nz,
        "LargeSLowGL": lsl / nz,
        "LargeSHighGL": lsh / nz,
        "Nz": nz,
    }


def glszm_batch(lay: Layout) -> dict[str, torch.Tensor]:
    """The 16 GLSZM features per job, shape (B,) each."""
    label = zone_labels(lay)
    roots = torch.nonzero(label == torch.arange(lay.n_voxels, device=lay.device)).flatten()
    sizes = torch.bincount(label, minlength=lay.n_voxels)[roots]
    out = item_features(lay, lay.job[roots], lay.codes[roots], sizes)
    out["ZonePercentage"] = out["Nz"] / lay.counts.to(torch.float64)
    return {name: out[key] for name, key in GLSZM_NAMES.items()}
