"""GLDM and NGTDM of a whole batch, from each voxel's 26 neighbours (13 angles, both ways).

GLDM: a voxel's dependence is its count of ROI neighbours of equal level (pyradiomics' defaults:
distance 1, ``gldm_a`` 0), its size ``dep + 1``; the (level, size) features are those GLSZM uses
(:func:`features.engine.tensor.zones.item_features`). NGTDM: per voxel the integer sum and count
of its ROI neighbours' grey levels (exact, as the C code's double sums of integers), then
``s_i`` += |level - sum / count| where it has neighbours; a voxel without any still counts in n_i.
Level pairs are masked to the levels present, as pyradiomics deletes the empty ones.
"""

from __future__ import annotations

import torch

from features.engine.tensor.layout import Layout
from features.engine.tensor.zones import item_features

__all__ = ["GLDM_NAMES", "NGTDM_FEATURES", "gldm_batch", "ngtdm_batch"]

GLDM_NAMES: dict[str, str] = {
    "SmallDependenceEmphasis": "SmallS", "LargeDependenceEmphasis": "LargeS",
    "GrayLevelNonUniformity": "GLN", "DependenceNonUniformity": "SN",
    "DependenceNonUniformityNormalized": "SNN", "GrayLevelVariance": "GLV",
    "DependenceVariance": "SV", "DependenceEntropy": "Entropy", "LowGrayLevelEmphasis": "LowGL",
    "HighGrayLevelEmphasis": "HighGL", "SmallDependenceLowGrayLevelEmphasis": "SmallSLowGL",
    "SmallDependenceHighGrayLevelEmphasis": "SmallSHighGL",
    "LargeDependenceLowGrayLevelEmphasis": "LargeSLowGL",
    "LargeDependenceHighGrayLevelEmphasis": "LargeSHighGL",
}
"""pyradiomics' GLDM names -> the neutral keys of :func:`item_features`."""

NGTDM_FEATURES: tuple[str, ...] = ("Coarseness", "Contrast", "Busyness", "Complexity", "Strength")


def dependences(lay: Layout) -> torch.Tensor:
    """(N,) each voxel's ROI neighbours of equal level (0..26)."""
    c = lay.codes[None, :]
    return ((lay.forward == c).sum(dim=0) + (lay.backward == c).sum(dim=0)).to(torch.int64)


def gldm_batch(lay: Layout) -> dict[str, torch.Tensor]:
    """The 14 GLDM features per job, shape (B,) each."""
    out = item_features(lay, lay.job, lay.codes, dependences(lay) + 1)
    return {name: out[key] for name, key in GLDM_NAMES.items()}


def _neighbour_sums(lay: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) each voxel's sum of ROI neighbours' grey levels and their count (int64, exact)."""
    levels = torch.cat([torch.zeros((lay.n_jobs, 1), dtype=torch.int64, device=lay.device),
                        lay.grey.to(torch.int64)], dim=1).reshape(-1)  # column 0: outside
    row = (lay.job * (lay.L + 1))[None, :]
    total = torch.zeros(lay.n_voxels, dtype=torch.int64, device=lay.device)
    count = torch.zeros_like(total)
    for nb in (lay.forward, lay.backward):
        total += levels[row + nb + 1].sum(dim=0)
        count += (nb >= 0).sum(dim=0)
    return total, count


def ngtdm_batch(lay: Layout) -> dict[str, torch.Tensor]:
    """The 5 NGTDM features per job, shape (B,) each."""
    b, n_lv, f64 = lay.n_jobs, lay.L, torch.float64
    total, count = _neighbour_sums(lay)
    level = lay.grey_levels.to(f64)
    diff = torch.where(count > 0, (level - total.to(f64) / count.clamp(min=1).to(f64)).abs(), 0.0)
    s_i = torch.zeros(b * n_lv, dtype=f64, device=lay.device)
    s_i = s_i.index_add_(0, lay.job * n_lv + lay.codes, diff).view(b, n_lv)
    n = lay.level_counts
    i, present = lay.grey, lay.present
    nvp = n.sum(dim=1)
    p_i = n / nvp[:, None]
    ngp = present.sum(dim=1).to(f64)
    sum_s = s_i.sum(dim=1)
    pair = present[:, :, None] & present[:, None, :]

    def pairs(x: torch.Tensor) -> torch.Tensor:
        return torch.where(pair, x, 0.0).sum(dim=(1, 2))

    pi_si = p_i * s_i
    sum_coarse = pi_si.sum(dim=1)
    coarseness = torch.where(sum_coarse != 0, 1 / sum_coarse, 1e6)
    di2 = (i[:, :, None] - i[:, None, :]) ** 2
    div = ngp * (ngp - 1)
    contrast = pairs(p_i[:, :, None] * p_i[:, None, :] * di2) * sum_s / nvp
    contrast = torch.where(div != 0, contrast / torch.where(div != 0, div, 1.0), 0.0)
    i_pi = i * p_i
    absdiff = pairs((i_pi[:, :, None] - i_pi[:, None, :]).abs())
    busyness = torch.where(absdiff != 0, sum_coarse / torch.where(absdiff != 0, absdiff, 1.0), 0.0)
    divisor = p_i[:, :, None] + p_i[:, None, :]
    divisor = torch.where(divisor == 0, 1.0, divisor)
    complexity = pairs((i[:, :, None] - i[:, None, :]).abs()
                       * (pi_si[:, :, None] + pi_si[:, None, :]) / divisor) / nvp
    strength = pairs((p_i[:, :, None] + p_i[:, None, :]) * di2)
    strength = torch.where(sum_s != 0, strength / torch.where(sum_s != 0, sum_s, 1.0), 0.0)
    return {"Coarseness": coarseness, "Contrast": contrast, "Busyness": busyness,
            "Complexity": complexity, "Strength": strength}
