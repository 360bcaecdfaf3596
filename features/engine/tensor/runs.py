"""GLRLM features of a whole batch: runs along the 13 angles by pointer doubling, no loop over runs.

Along every angle each ROI voxel points to its forward neighbour where that neighbour is in the
ROI with the same level, else to itself (a run end); ``ceil(log2(longest line))`` rounds of
pointer doubling give every voxel its distance to the end of its run, so a run start (a voxel
whose backward neighbour is outside the ROI or of another level) knows its run's length. One
``bincount`` over (job, angle, level, length - 1) of the starts gives pyradiomics' matrices.

Angles are kept as :mod:`features.engine.glrlm` keeps them: an angle with two adjacent ROI voxels,
or else one along which some line of the box holds two ROI voxels (pyradiomics' ``multiElement``).
"""

from __future__ import annotations

import math

import torch

from features.engine.glrlm import GLRLM_FEATURES
from features.engine.tensor.glcm import EPS, nanmean_all
from features.engine.tensor.layout import N_ANGLES, Layout

__all__ = ["GLRLM_FEATURES", "glrlm_batch", "run_counts"]



def _run_lengths(lay: Layout) -> torch.Tensor:
    """(13, N): along each angle, the number of voxels from each voxel to the end of its run."""
    n = lay.n_voxels
    same = lay.same_forward
    nxt = torch.where(same, lay.voxel_index[lay.neighbour_positions(1)],
                      torch.arange(n, device=lay.device)[None, :])
    nxt = nxt + torch.arange(N_ANGLES, device=lay.device)[:, None] * n  # into the flattened (13, N)
    nxt = nxt.reshape(-1)
    dist = same.reshape(-1).to(torch.int64)
    for _ in range(max(1, math.ceil(math.log2(max(lay.max_extent, 2))))):
        dist = dist + dist[nxt]
        nxt = nxt[nxt]
    return dist.view(N_ANGLES, n) + 1


def _lines_hold_two(lay: Layout, angle: int) -> torch.Tensor:
    """(B,) bool: some line of the job's box along ``angle`` holds two ROI voxels."""
    offset = lay.angles[angle]
    moving = offset != 0
    size = lay.shapes[lay.job]
    c = lay.coords
    back = torch.where(offset[None, :] > 0, c, size - 1 - c)[:, moving].amin(dim=1)
    first = c - back[:, None] * offset[None, :]
    ny, nx = size[:, 1], size[:, 2]
    box_start = torch.cumsum(torch.prod(lay.shapes, dim=1), dim=0) - torch.prod(lay.shapes, dim=1)
    key = box_start[lay.job] + (first[:, 0] * ny + first[:, 1]) * nx + first[:, 2]
    per_line = torch.bincount(key, minlength=int(torch.prod(lay.shapes, dim=1).sum()))
    shared = per_line[key] >= 2
    return lay.per_job(shared.to(torch.int64)) > 0


def run_counts(lay: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 13, L, R) float64 run counts by (level index, length - 1), and (B, 13) kept angles."""
    b, n_lv, width = lay.n_jobs, lay.L, lay.max_extent
    starts = lay.backward != lay.codes[None, :]
    length = _run_lengths(lay)
    angle = torch.arange(N_ANGLES, device=lay.device)[:, None]
    key = ((lay.job[None, :] * N_ANGLES + angle) * n_lv + lay.codes[None, :]) * width + length - 1
    flat = torch.bincount(key[starts], minlength=b * N_ANGLES * n_lv * width)
    counts = flat.view(b, N_ANGLES, n_lv, width).to(torch.float64)
    adjacent = lay.per_job_cols((lay.forward >= 0).T.to(torch.int64)) > 0  # (B, 13)
    keep = adjacent.clone()
    for k in torch.nonzero(~adjacent.all(dim=0)).flatten().tolist():
        keep[:, k] |= _lines_hold_two(lay, k)
    return counts, keep


def glrlm_batch(lay: Layout) -> dict[str, torch.Tensor]:
    """The 16 GLRLM features per job, shape (B,) each."""
    counts, keep = run_counts(lay)
    g = lay.grey[:, None, :]  # (B, 1, L)
    g2 = g * g
    jl = torch.arange(1, counts.shape[-1] + 1, dtype=torch.float64, device=lay.device)
    jl2 = jl * jl
    pr, pg = counts.sum(dim=2), counts.sum(dim=3)  # (B, A, R), (B, A, L)
    nr = pg.sum(dim=-1)
    nr = torch.where(keep, nr, 1.0)
    nrx = nr[..., None]
    gln, rln = (pg * pg).sum(dim=-1), (pr * pr).sum(dim=-1)
    ui = (pg / nrx * g).sum(dim=-1)
    uj = (pr / nrx * jl).sum(dim=-1)
    pv = counts / nr[..., None, None]
    g2m, jl2m = g2[..., :, None], jl2[None, None, None, :]
    values = {
        "ShortRunEmphasis": (pr / jl2).sum(dim=-1) / nr,
        "LongRunEmphasis": (pr * jl2).sum(dim=-1) / nr,
        "GrayLevelNonUniformity": gln / nr,
        "GrayLevelNonUniformityNormalized": gln / (nr * nr),
        "RunLengthNonUniformity": rln / nr,
        "RunLengthNonUniformityNormalized": rln / (nr * nr),
        "RunPercentage": nr / (pr * jl).sum(dim=-1),
        "GrayLevelVariance": (pg / nrx * (g - ui[..., None]) ** 2).sum(dim=-1),
        "RunVariance": (pr / nrx * (jl - uj[..., None]) ** 2).sum(dim=-1),
        "RunEntropy": -(pv * torch.log2(pv + EPS)).sum(dim=(-2, -1)),
        "LowGrayLevelRunEmphasis": (pg / g2).sum(dim=-1) / nr,
        "HighGrayLevelRunEmphasis": (pg * g2).sum(dim=-1) / nr,
        "ShortRunLowGrayLevelEmphasis": (counts / (g2m * jl2m)).sum(dim=(-2, -1)) / nr,
        "ShortRunHighGrayLevelEmphasis": (counts * g2m / jl2m).sum(dim=(-2, -1)) / nr,
        "LongRunLowGrayLevelEmphasis": (counts * jl2m / g2m).sum(dim=(-2, -1)) / nr,
        "LongRunHighGrayLevelEmphasis": (counts * (jl2m * g2m)).sum(dim=(-2, -1)) / nr,
    }
    return nanmean_all(values, keep, GLRLM_FEATURES)
