"""Feature stability, the science: small ROI and resampling perturbations, and the ICC over them.

A radiomics feature that moves when the ROI boundary moves by one voxel, or when the grid is
shifted by half a voxel, measures the annotator and the scanner more than the tumour; such features
are what fails on a new center (issue 12). Pure functions on images and arrays; the driver that
samples patients and runs them on Dask is :mod:`features.stability_job`.

Conditions (:func:`perturbed`), after Zwanenburg et al., *Sci Rep* 2019;9:614:

* ``original``: the stored image and ROI;
* ``eroded`` / ``dilated``: the ROI eroded / dilated by one voxel with the 6-connected cross (the
  face neighbours; SimpleITK's "ball of radius 1" is the 18-connected 3x3x3 minus corners, a
  larger step). Voxels outside the image count as background;
* ``shifted``: image and ROI resampled on the same grid after a translation of half a voxel along
  x, y and z: linear for the image, nearest neighbour for the ROI. Nearest neighbour at an exact
  half-voxel offset is a tie that floating-point rounding of the index settles (deterministically
  for a given grid): the ROI moves by 0 or 1 voxel along each axis while the image moves by half,
  so either way the two end up misregistered by half a voxel along each axis, as after a
  resampled acquisition.

A condition that leaves fewer than :data:`MIN_VOXELS` ROI voxels is left out; an original ROI with
fewer is a :class:`~features.errors.FeatureError` (the driver counts it as skipped).

:func:`icc` is ICC(2,1) (Shrout & Fleiss 1979; McGraw & Wong 1996 "ICC(A,1)"; Koo & Li 2016):
two-way random effects, absolute agreement, single measure. Absolute agreement, not consistency
(ICC(3,1)), because a perturbation that shifts a feature by a constant for every patient still
changes what a model fitted on one center sees on another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from features.errors import FeatureError

__all__ = ["CONDITIONS", "MIN_VOXELS", "PERTURBATIONS", "icc", "icc_features", "icc_table",
           "perturbed"]

#: the conditions, in column order
CONDITIONS: Final[tuple[str, ...]] = ("original", "eroded", "dilated", "shifted")
#: how each condition is made (recorded with the table)
PERTURBATIONS: Final[dict[str, str]] = {
    "original": "stored image and ROI",
    "eroded": "ROI binary erosion by 1 voxel, 6-connected cross, outside = background",
    "dilated": "ROI binary dilation by 1 voxel, 6-connected cross",
    "shifted": "image (linear) and ROI (nearest) resampled on the same grid, translated by half "
               "a voxel along x, y and z; outside = 0",
}
#: a condition whose ROI has fewer voxels is left out
MIN_VOXELS: Final[int] = 20
_CROSS = ndimage.generate_binary_structure(3, 1)


def perturbed(image: sitk.Image, mask: sitk.Image) -> dict[str, tuple[sitk.Image, sitk.Image]]:
    """``{condition: (image, mask)}`` for every condition of :data:`CONDITIONS` that keeps at least
    :data:`MIN_VOXELS` voxels; every pair lies on the input's grid (size, spacing, origin, direction).

    ``mask`` is binary (0/1) on ``image``'s grid. Raises :class:`FeatureError` when the original ROI
    itself has fewer than :data:`MIN_VOXELS` voxels.
    """
    roi = sitk.GetArrayViewFromImage(mask) == 1
    n = int(roi.sum())
    if n < MIN_VOXELS:
        raise FeatureError(f"ROI has {n} voxels, fewer than the {MIN_VOXELS} the stability "
                           "perturbations need")
    out = {"original": (image, mask)}
    eroded = ndimage.binary_erosion(roi, structure=_CROSS, border_value=0)
    dilated = ndimage.binary_dilation(roi, structure=_CROSS)
    for name, arr in (("eroded", eroded), ("dilated", dilated)):
        if int(arr.sum()) >= MIN_VOXELS:
            out[name] = (image, _mask_like(arr, mask))
    shifted_image, shifted_mask = half_voxel_shift(image, mask)
    if int(np.count_nonzero(sitk.GetArrayViewFromImage(shifted_mask) == 1)) >= MIN_VOXELS:
        out["shifted"] = (shifted_image, shifted_mask)
    return {c: out[c] for c in CONDITIONS if c in out}


def half_voxel_shift(image: sitk.Image, mask: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """Image (linear) and mask (nearest) resampled on their own grid, sampled half a voxel further
    along each axis (a physical translation of half the spacing, through the direction matrix)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    offset = direction @ (0.5 * np.asarray(image.GetSpacing(), dtype=float))
    transform = sitk.TranslationTransform(3, [float(v) for v in offset])
    moved = sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0, image.GetPixelID())
    moved_mask = sitk.Resample(mask, image, transform, sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    return moved, moved_mask


def _mask_like(arr: np.ndarray, like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(like)
    return sitk.Cast(out, like.GetPixelID())


def icc(values: np.ndarray) -> float:
    """ICC(2,1) of one feature: ``values`` is patients x conditions; NaN when undefined.

    Rows with a non-finite value are left out (complete cases); undefined means fewer than two
    complete rows or two conditions, or no variance at all.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"icc expects a (patients, conditions) array, got shape {values.shape}")
    return float(icc_features(values[None])[0])


def icc_features(values: np.ndarray) -> np.ndarray:
    """ICC(2,1) of many features at once: ``values`` is (features, patients, conditions).

    From the two-way ANOVA without replication (n patients, k conditions):
    MSR = k·Σᵢ(x̄ᵢ. − x̄)²/(n−1), MSC = n·Σⱼ(x̄.ⱼ − x̄)²/(k−1),
    MSE = Σᵢⱼ(xᵢⱼ − x̄ᵢ. − x̄.ⱼ + x̄)²/((n−1)(k−1)), and
    ICC(2,1) = (MSR − MSE) / (MSR + (k−1)·MSE + k·(MSC − MSE)/n).
    Each feature keeps its own complete rows, so ``n`` differs between features.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"icc_features expects (features, patients, conditions), got shape {x.shape}")
    k = x.shape[2]
    if k < 2:
        return np.full(x.shape[0], np.nan)
    ok = np.isfinite(x).all(axis=2)  # (F, n): complete rows per feature
    n = ok.sum(axis=1).astype(np.float64)  # (F,)
    w = ok[:, :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        safe_n = np.maximum(n, 1.0)
        grand = np.where(w, x, 0.0).sum(axis=(1, 2)) / (safe_n * k)
        d = np.where(w, x - grand[:, None, None], 0.0)  # centred: the sums stay small
        rows = d.sum(axis=2) / k  # (F, n); zero on left-out rows
        cols = d.sum(axis=1) / safe_n[:, None]  # (F, k)
        mean = d.sum(axis=(1, 2)) / (safe_n * k)  # ~0 after centring
        ssr = k * np.where(ok, (rows - mean[:, None]) ** 2, 0.0).sum(axis=1)
        ssc = n * ((cols - mean[:, None]) ** 2).sum(axis=1)
        resid = d - rows[:, :, None] - cols[:, None, :] + mean[:, None, None]
        sse = (np.where(w, resid, 0.0) ** 2).sum(axis=(1, 2))
        sst = (np.where(w, d - mean[:, None, None], 0.0) ** 2).sum(axis=(1, 2))
        msr = ssr / (n - 1)
        msc = ssc / (k - 1)
        mse = sse / ((n - 1) * (k - 1))
        out = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
        # "no variance": below the rounding noise of the values' magnitude
        scale = np.where(w, np.abs(x), 0.0).max(axis=(1, 2))
        flat = sst <= n * k * (64 * np.finfo(np.float64).eps * scale) ** 2
    out[(n < 2) | flat | ~np.isfinite(out)] = np.nan
    return out


def icc_table(view: str, names: Sequence[str],
              rows: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """One view's rows of the stability table (:mod:`atrx.stability`'s columns).

    ``rows``: patient -> condition -> the view's feature values in ``names`` order. The ICC's
    columns are the conditions any patient has; a patient missing one of them is left out.
    """
    conditions = [c for c in CONDITIONS if any(c in by_condition for by_condition in rows.values())]
    patients = [p for p in rows if all(c in rows[p] for c in conditions)]
    f = len(names)
    cube = np.full((f, len(patients), len(conditions)), np.nan)
    for i, p in enumerate(patients):
        for j, c in enumerate(conditions):
            row = np.asarray(rows[p][c], dtype=np.float64)
            if row.shape != (f,):
                raise ValueError(f"{view} of {p} ({c}): {row.shape[0]} values for {f} feature names")
            cube[:, i, j] = row
    prefix = f"{view}__"
    return pd.DataFrame({
        "view": view,
        "feature": list(names),
        "base_feature": [n[len(prefix):] if n.startswith(prefix) else n for n in names],
        "icc": icc_features(cube) if patients and conditions else np.full(f, np.nan),
        "n_patients": np.isfinite(cube).all(axis=2).sum(axis=1).astype(np.int64),
        "n_conditions": len(conditions),
    })
