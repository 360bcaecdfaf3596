"""GLCM features of a whole batch: the formulas of :mod:`features.engine._glcm_kernels` on
(jobs, 13 angles, L, L) tensors.

Counts come from one ``bincount`` over the keys (job, angle, level i, level j) of every ROI voxel
and its forward neighbour; each matrix is made symmetrical and normalised as pyradiomics does
(``P + P.T`` over its sum: exact, as counts are integers). Angles without pairs are masked and
left out of the NaN-mean, as pyradiomics deletes them; JointAverage is a plain mean, Idmn/Idn and
the k ranges of p_{x+y}/p_{x-y} use Ng = the highest level present.

MCC: Q from one batched matrix product, ``torch.linalg.eigvals`` on the stack, and numpy's
conventions on the result (a stack of real eigenvalues gives NaN for a negative second
largest; a complex stack sorts lexicographically and keeps the real part of the square root).
Padded levels get -2 on Q's diagonal, so their eigenvalues sort below every real one. Where
the second largest eigenvalue is small, rounding decides, so those jobs are redone with Q summed
over k in pyradiomics' order (bit for bit its Q, but for numpy's pairwise px of a single angle).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from features.engine.tensor.layout import N_ANGLES, Layout

__all__ = ["GLCM_FEATURES", "glcm_batch", "nanmean_all", "nanmean_angles"]

EPS = 2.220446049250313e-16  # numpy.spacing(1)

GLCM_FEATURES: tuple[str, ...] = (
    "Autocorrelation", "JointAverage", "ClusterProminence", "ClusterShade", "ClusterTendency",
    "Contrast", "Correlation", "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance",
    "JointEnergy", "JointEntropy", "Imc1", "Imc2", "Idm", "Idmn", "Id", "Idn", "InverseVariance",
    "MaximumProbability", "SumAverage", "SumEntropy", "SumSquares", "MCC",
)


def nanmean_angles(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """pyradiomics' ``nanmean`` over the kept angles (last axis of (..., B, A)); NaN where none
    is left."""
    ok = keep & ~torch.isnan(values)
    total = torch.where(ok, values, 0.0).sum(dim=-1)
    count = ok.sum(dim=-1)
    return torch.where(count > 0, total / count.clamp(min=1), math.nan)


def nanmean_all(values: Mapping[str, torch.Tensor], keep: torch.Tensor,
                names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """:func:`nanmean_angles` of each of ``names`` (default: all) in ``values`` (each (B, A)) in
    one pass: stacked first, a class costs a dozen kernel launches instead of a dozen each."""
    names = list(values if names is None else names)
    means = nanmean_angles(torch.stack([values[n] for n in names]), keep)
    return dict(zip(names, means.unbind(0), strict=True))


def glcm_counts(lay: Layout) -> torch.Tensor:
    """(B, 13, L, L) float64: voxels of level index i whose neighbour along angle k has index j."""
    b, n = lay.n_jobs, lay.L
    nb = lay.forward
    ok = nb >= 0
    angle = torch.arange(N_ANGLES, device=lay.device)[:, None]
    key = ((lay.job[None, :] * N_ANGLES + angle) * n + lay.codes[None, :]) * n + nb
    flat = torch.bincount(key[ok], minlength=b * N_ANGLES * n * n)
    return flat.view(b, N_ANGLES, n, n).to(torch.float64)


def _sum(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(-2, -1))


def _xlogx(x: torch.Tensor) -> torch.Tensor:
    return x * torch.log2(x + EPS)


def _angle_features(p: torch.Tensor, g: torch.Tensor, ng: torch.Tensor, ng_max: int
                    ) -> dict[str, torch.Tensor]:
    """The 23 per-angle features (all but MCC) of normalised matrices ``p`` (B, A, L, L)."""
    b, a, n, _ = p.shape
    gi, gj = g[:, None, :, None], g[:, None, None, :]
    px, py = p.sum(dim=-1), p.sum(dim=-2)
    ux, uy = _sum(p * gi), _sum(p * gj)
    pp = px[..., :, None] * py[..., None, :]
    padd = torch.zeros((b, a, 2 * ng_max - 1), dtype=p.dtype, device=p.device)
    padd.scatter_add_(2, (gi + gj - 2).to(torch.int64).expand(b, a, n, n).reshape(b, a, -1),
                      p.reshape(b, a, -1))
    diff = (gi - gj).abs()
    psub = torch.zeros((b, a, ng_max), dtype=p.dtype, device=p.device)
    psub.scatter_add_(2, diff.to(torch.int64).expand(b, a, n, n).reshape(b, a, -1),
                      p.reshape(b, a, -1))
    dx, dy = gi - ux[..., None, None], gj - uy[..., None, None]
    s = gi + gj - ux[..., None, None] - uy[..., None, None]
    s2 = s * s
    sigx2, sigy2 = _sum(p * (dx * dx)), _sum(p * (dy * dy))
    sigx, sigy = sigx2 ** 0.5, sigy2 ** 0.5
    corm = _sum(p * dx * dy)
    corr = torch.where(sigx * sigy == 0, 1.0, corm / (sigx * sigy + EPS))
    hxy, hxy1, hxy2 = -_sum(_xlogx(p)), -_sum(p * torch.log2(pp + EPS)), -_sum(_xlogx(pp))
    hx, hy = -_xlogx(px).sum(dim=-1), -_xlogx(py).sum(dim=-1)

    k = torch.arange(ng_max, dtype=p.dtype, device=p.device)
    ngk = ng[:, None, None]
    davg = (k * psub).sum(dim=-1)
    inv = torch.where(k > 0, psub / torch.where(k > 0, k, 1.0) ** 2, 0.0).sum(dim=-1)
    div = torch.maximum(hx, hy)
    imc1 = torch.where(div != 0, (hxy - hxy1) / torch.where(div != 0, div, 1.0), 0.0)
    imc2 = torch.where(hxy2 == hxy, 0.0, (1 - torch.pow(math.e, -2 * (hxy2 - hxy))) ** 0.5)
    ks = torch.arange(2, 2 * ng_max + 1, dtype=p.dtype, device=p.device)
    return {
        "Autocorrelation": _sum(p * (gi * gj)),
        "JointAverage": ux,
        "ClusterProminence": _sum(p * (s2 * s2)),
        "ClusterShade": _sum(p * (s2 * s)),
        "ClusterTendency": _sum(p * s2),
        "Contrast": _sum(p * (diff * diff)),
        "Correlation": corr,
        "DifferenceAverage": davg,
        "DifferenceEntropy": -_xlogx(psub).sum(dim=-1),
        "DifferenceVariance": (psub * (k - davg[..., None]) ** 2).sum(dim=-1),
        "JointEnergy": _sum(p * p),
        "JointEntropy": hxy,
        "Imc1": imc1,
        "Imc2": imc2,
        "Idm": (psub / (1 + k ** 2)).sum(dim=-1),
        "Idmn": (psub / (1 + (k ** 2) / (ngk ** 2))).sum(dim=-1),
        "Id": (psub / (1 + k)).sum(dim=-1),
        "Idn": (psub / (1 + k / ngk)).sum(dim=-1),
        "InverseVariance": inv,
        "MaximumProbability": p.amax(dim=(-2, -1)),
        "SumAverage": (ks * padd).sum(dim=-1),
        "SumEntropy": -_xlogx(padd).sum(dim=-1),
        "SumSquares": sigx2,
    }


def _q_matrices(p: torch.Tensor) -> torch.Tensor:
    """pyradiomics' MCC matrices ``Q[i, j] = sum_k p[i, k] p[j, k] / (px[i] py[k] + eps)``, its
    px/py and its order of addition (k = 0, 1, ...; padded levels add exact zeros)."""
    n = p.shape[-1]
    px = torch.zeros_like(p[..., 0])
    py = torch.zeros_like(p[..., 0])
    for j in range(n):
        px = px + p[..., :, j]
        py = py + p[..., j, :]
    q = torch.zeros_like(p)
    for k in range(n):
        den = px * py[..., k:k + 1] + EPS
        q = q + (p[..., :, k, None] * p[..., None, :, k]) / den[..., :, None]
    return q


def _mcc_of(q: torch.Tensor, keep: torch.Tensor, present: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """MCC per job from the stack of Q matrices, and each angle's second largest eigenvalue."""
    q = q + torch.diag_embed(torch.where(present, 0.0, -2.0).to(q.dtype))[:, None]
    w = torch.linalg.eigvals(q)  # (B, A, L) complex
    re, im = w.real, w.imag
    complex_stack = ((im != 0) & keep[..., None]).flatten(1).any(dim=1)
    order = torch.argsort(im, dim=-1, stable=True)  # numpy sorts complex numbers lexicographically
    re, im = re.gather(-1, order), im.gather(-1, order)
    order = torch.argsort(re, dim=-1, stable=True)
    re2, im2 = re.gather(-1, order)[..., -2], im.gather(-1, order)[..., -2]
    as_real = torch.sqrt(re2)  # NaN for a negative residue
    as_complex = torch.sqrt(torch.complex(re2, im2)).real
    mcc = torch.where(complex_stack[:, None], as_complex, as_real)
    return nanmean_angles(mcc, keep), re2


EXACT_BELOW = 1e-4
"""Second largest eigenvalue under which a job's MCC is recomputed from pyradiomics' own Q."""


def _mcc(p: torch.Tensor, keep: torch.Tensor, present: torch.Tensor,
         n_levels: torch.Tensor) -> torch.Tensor:
    """MCC per job (B,), pyradiomics' value (see the module docstring); one level: the caller.

    Q from one batched product first; where an angle's second largest eigenvalue is small (MCC
    below 1e-2, where the rounding of Q decides NaN against 0 or moves MCC beyond 1e-9) the job
    is redone with Q summed in pyradiomics' order, on its own levels only.
    """
    px, py = p.sum(dim=-1), p.sum(dim=-2)
    q = (p / (px[..., :, None] * py[..., None, :] + EPS)) @ p.transpose(-2, -1)
    mcc, lam2 = _mcc_of(q, keep, present)
    redo = torch.nonzero(((lam2 < EXACT_BELOW) & keep).any(dim=1) & (n_levels >= 2)).flatten()
    if redo.numel():
        n = max(int(n_levels[redo].max()), 2)
        sub = p[redo][..., :n, :n]
        exact, _ = _mcc_of(_q_matrices(sub), keep[redo], present[redo][:, :n])
        mcc[redo] = exact
    return mcc


def glcm_batch(lay: Layout) -> dict[str, torch.Tensor]:
    """The 24 GLCM features per job, shape (B,) each."""
    counts = glcm_counts(lay)
    sym = counts + counts.transpose(-2, -1)
    total = _sum(sym)
    keep = total > 0
    p = sym / torch.where(keep, total, 1.0)[..., None, None]
    feats = _angle_features(p, lay.grey, lay.top, lay.max_top)
    out = nanmean_all(feats, keep)
    n_keep = keep.sum(dim=1)
    out["JointAverage"] = torch.where(keep, feats["JointAverage"], 0.0).sum(dim=1) / n_keep
    one = lay.n_levels < 2
    if lay.L < 2:
        mcc = torch.full((lay.n_jobs,), math.nan, dtype=torch.float64, device=lay.device)
    else:
        mcc = _mcc(p, keep, lay.present, lay.n_levels)
    out["MCC"] = torch.where(one, 1.0, mcc)
    return out
