"""GLCM features exactly as pyradiomics 3.0.1 computes them (default settings).

pyradiomics (``radiomics/glcm.py`` + ``calculate_glcm`` in ``cmatrices.c``) counts, per angle of
the 13 of distance 1, the ordered pairs (voxel, neighbour) inside the ROI, deletes the grey levels
absent from the ROI, makes each matrix symmetrical (``P + P.T``), drops angles without any pair,
normalises each angle and averages the per-angle feature values with ``nanmean``. Here the ROI's
levels are laid on its box grown by one voxel (-1 outside the ROI), and one scan of the ROI
voxels (``RoiGeometry.flat``) looks up the 13 neighbours of each without bounds checks: the same
pairs as ``RoiGeometry.pairs``, in the scan GLDM and NGTDM share (:mod:`features.engine.levels`).

Details kept from pyradiomics: Idmn/Idn and the k ranges of p_{x+y}/p_{x-y} use Ng = the highest
grey level present in the ROI (not the number of present levels); Correlation is 1 and Imc1 is 0
where their divisor is 0; Imc2 is 0 where HXY2 == HXY (and NaN where rounding makes it complex);
JointAverage is a plain mean over angles; MCC is the square root of the second largest
eigenvalue of Q, and 1 when the ROI has one grey level. MCC takes a symmetric eigenproblem
where a proven bound keeps it within 1e-6 (relative) of ``numpy.linalg.eigvals`` on the stack of
angles, which is what pyradiomics runs and what we run otherwise.
"""

from __future__ import annotations

import warnings

import numpy as np

from features.engine._glcm_kernels import (
    N_FEATURES,
    glcm_angle_features,
    mcc_q_matrices,
    mcc_symmetric,
    nanmean_columns,
)
from features.engine.geometry import RoiGeometry
from features.engine.levels import ANGLES, ImageLevels, roi_levels

__all__ = ["ANGLES", "GLCM_FEATURES", "glcm_features", "glcm_from_levels", "nanmean_angles", "roi_levels"]

_ANGLE_FEATURES = (
    "Autocorrelation", "JointAverage", "ClusterProminence", "ClusterShade", "ClusterTendency",
    "Contrast", "Correlation", "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance",
    "JointEnergy", "JointEntropy", "Imc1", "Imc2", "Idm", "Idmn", "Id", "Idn", "InverseVariance",
    "MaximumProbability", "SumAverage", "SumEntropy", "SumSquares",
)
assert len(_ANGLE_FEATURES) == N_FEATURES

GLCM_FEATURES: tuple[str, ...] = _ANGLE_FEATURES + ("MCC",)
"""The 24 non-deprecated GLCM features of pyradiomics 3.0.1 (names without prefix)."""


def nanmean_angles(values: np.ndarray) -> np.ndarray:
    """pyradiomics' ``numpy.nanmean`` over angles (axis 0 of ``values``), NaN where every angle is NaN.

    Bit for bit numpy's, taken along the contiguous axis as pyradiomics takes it (numba,
    ``nanmean_columns``: numpy's order of addition, ~15x faster on 13 angles).
    """
    if values.shape[0] > 128:  # beyond one pairwise block: numpy itself
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.ascontiguousarray(values.T), axis=1)
    return nanmean_columns(np.asarray(values, dtype=np.float64))


def _q_matrices(p: np.ndarray) -> np.ndarray:
    """pyradiomics' MCC matrices Q of each angle, bit for bit (see :func:`mcc_q_matrices`).

    ``px``/``py`` are summed as pyradiomics sums them, on its (1, n, n, angles) layout: numpy's
    order of addition depends on that layout (pairwise where the summed axis is innermost).
    """
    layout = np.ascontiguousarray(p.transpose(1, 2, 0))[None]
    px = np.ascontiguousarray(layout.sum(2)[0].T)
    py = np.ascontiguousarray(layout.sum(1)[0].T)
    return mcc_q_matrices(p, px, py)


def _mcc_exact(qmat: np.ndarray) -> float:
    """MCC as pyradiomics computes it: sqrt of the 2nd largest eigenvalue of each angle's Q, nanmean.

    ``numpy.linalg.eigvals`` runs on the whole stack of angles as in pyradiomics, so that a
    complex result for one angle turns the stack complex there too (it decides between NaN and 0
    for negative rounding residues).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        eig = np.linalg.eigvals(qmat)
        eig.sort()
        mcc = np.sqrt(eig[:, -2])
        return float(np.nanmean(mcc).real)


_MCC_REL_BOUND = 1e-6
"""Largest proven relative gap to the exact MCC that the symmetric shortcut may leave (tests: 1e-4)."""


def _mcc_symmetric(p: np.ndarray) -> float | None:
    """MCC from a symmetric eigenproblem, or None where its error bound is not small enough.

    ``S = R^1/2 Q R^-1/2`` (R = diag(px)) has Q's eigenvalues and is symmetric but for
    pyradiomics' eps; ``eigvalsh`` of its symmetric part H is ~4x cheaper than ``eigvals(Q)``.
    Bauer-Fike bounds what the skew part K (||K|| <= skew) changes: each eigenvalue of H + K lies
    within ``skew`` of one of H, and a connected group of these intervals holds as many of each,
    so the 2nd largest stays in the group around ``lam[-2]``; an isolated simple eigenvalue
    (gap d) moves at most skew^2 / (d - 2 skew), as K is skew-symmetric (Schur complement,
    u'Ku = 0). Used only where that bound keeps MCC within ``_MCC_REL_BOUND`` of the exact value
    and away from 0 (where pyradiomics' NaN/complex rounding matters); otherwise the caller runs
    :func:`_mcc_exact`. The work is one numba pass per angle (``mcc_symmetric``); Q is taken
    from a matrix product, its rounding inside the bound's slack.
    """
    taken, value = mcc_symmetric(np.ascontiguousarray(p), _MCC_REL_BOUND)
    return float(value) if taken else None


def _mcc(p: np.ndarray) -> float:
    """MCC of the stack of normalised matrices ``p`` (pyradiomics' value, see the two helpers).

    The exact path takes pyradiomics' own Q, bit for bit.
    """
    fast = _mcc_symmetric(p)
    return _mcc_exact(_q_matrices(p)) if fast is None else fast


def glcm_features(q: np.ndarray, geometry: RoiGeometry) -> dict[str, float]:
    """The 24 GLCM features of the ROI in the discretised image ``q`` (pyradiomics' values and names)."""
    return glcm_from_levels(ImageLevels.of(q, geometry))


def glcm_from_levels(lv: ImageLevels) -> dict[str, float]:
    """:func:`glcm_features` of an image's laid-out levels (shared with the other classes)."""
    levels = lv.levels
    n = levels.size
    counts = lv.neighbours[0]
    keep = counts.reshape(counts.shape[0], -1).any(axis=1)
    if not keep.any():  # no two neighbouring ROI voxels: every angle is empty
        out = dict.fromkeys(_ANGLE_FEATURES, float("nan"))
        out["MCC"] = 1.0 if n < 2 else float("nan")
        return out
    feats, p = glcm_angle_features(np.ascontiguousarray(counts[keep]), levels.astype(np.float64),
                                   int(levels[-1]))
    mean = nanmean_angles(feats)
    out = {name: float(x) for name, x in zip(_ANGLE_FEATURES, mean, strict=True)}
    out["JointAverage"] = float(feats[:, 1].mean())  # pyradiomics: plain mean, not nanmean
    out["MCC"] = 1.0 if n < 2 else _mcc(p)
    return out
