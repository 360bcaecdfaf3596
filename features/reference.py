"""Reference tissue: intensity statistics of normal-appearing brain around the lesion (issue 12).

Ingest z-scores each sequence over the whole brain, so a feature's unit is "brain standard
deviations", which a center's bias field, contrast curve and lesion burden still move. Normal-
appearing tissue right around the lesion shares the lesion's local bias and acquisition, so
intensities measured against it transfer better (the first-order model of issue 12 divided by its
median). The features job stores, with every radiomics view, three columns of this reference:

``rad_{roi}_{seq}__reference__shell__median`` / ``__iqr`` / ``__voxels``

the median and interquartile range of the stored (z-scored) sequence over the *shell*: brain
voxels outside the overall lesion mask within ``shell_mm`` of it (Euclidean distance on the voxel
grid's spacing), and the shell's voxel count. The shell is the same for every ROI of a study, so
the three ROIs' views carry the same values; a view then holds what training needs to normalise
its own features without joining another view. Fewer than ``min_voxels`` shell voxels gives NaN.

Training's ``normalisation: reference`` (training/reference_norm.py) uses them; the radiomics
parameter file's ``reference`` key turns them on and is part of the feature version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from scipy import ndimage

from atrx.names import view_name
from features.errors import RadiomicsParamsError

__all__ = ["REFERENCE_KEY", "STATS", "ReferenceSettings", "reference_feature_names",
           "reference_settings", "reference_stats", "reference_values", "shell_mask"]

#: the radiomics parameter file's top-level key
REFERENCE_KEY: Final[str] = "reference"
#: the statistics stored per view, in column order
STATS: Final[tuple[str, ...]] = ("median", "iqr", "voxels")
_FIX = "write e.g. `reference: {tissue: shell, shell_mm: 10, min_voxels: 100}` or remove the key"


@dataclass(frozen=True)
class ReferenceSettings:
    """``tissue: shell`` (the only one), its width in mm and the fewest voxels that give numbers."""

    tissue: str = "shell"
    shell_mm: float = 10.0
    min_voxels: int = 100


def reference_settings(params: Mapping[str, Any], source: str = "params") -> ReferenceSettings | None:
    """The parameter file's ``reference`` block, validated (None: no reference columns)."""
    raw = params.get(REFERENCE_KEY)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise RadiomicsParamsError(f"{source}: {REFERENCE_KEY} must be a mapping, got {raw!r}", fix=_FIX)
    unknown = sorted(set(raw) - {"tissue", "shell_mm", "min_voxels"})
    if unknown:
        raise RadiomicsParamsError(f"{source}: {REFERENCE_KEY} has unknown keys {unknown}", fix=_FIX)
    tissue = raw.get("tissue", "shell")
    shell_mm, min_voxels = raw.get("shell_mm", 10.0), raw.get("min_voxels", 100)
    if tissue != "shell":
        raise RadiomicsParamsError(f"{source}: {REFERENCE_KEY}.tissue must be 'shell', got {tissue!r}",
                                   fix=_FIX)
    if isinstance(shell_mm, bool) or not isinstance(shell_mm, int | float) or not 0 < shell_mm <= 50:
        raise RadiomicsParamsError(f"{source}: {REFERENCE_KEY}.shell_mm must be a number in (0, 50], "
                                   f"got {shell_mm!r}", fix=_FIX)
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, int) or min_voxels < 1:
        raise RadiomicsParamsError(f"{source}: {REFERENCE_KEY}.min_voxels must be a positive "
                                   f"integer, got {min_voxels!r}", fix=_FIX)
    return ReferenceSettings(tissue, float(shell_mm), int(min_voxels))


def reference_feature_names(roi: str, sequence: str, params: Mapping[str, Any]) -> list[str]:
    """The reference columns of one radiomics view, in order ([] without the ``reference`` key)."""
    if reference_settings(params) is None:
        return []
    view = view_name("rad", roi, sequence)
    return [f"{view}__reference__shell__{stat}" for stat in STATS]


def shell_mask(overall: np.ndarray, brain: np.ndarray, spacing_zyx: Sequence[float],
               shell_mm: float) -> np.ndarray:
    """Brain voxels outside ``overall`` within ``shell_mm`` of it ((z, y, x) arrays, spacing in mm).

    The distance transform runs on the lesion's bounding box grown by the shell's width, which
    holds every voxel within reach; the result is on the full grid."""
    lesion = np.asarray(overall) > 0
    out = np.zeros(lesion.shape, dtype=bool)
    if not lesion.any():
        return out
    reach = [int(np.ceil(shell_mm / float(s))) + 1 for s in spacing_zyx]
    where = np.nonzero(lesion)
    box = tuple(slice(max(int(ix.min()) - r, 0), min(int(ix.max()) + r + 1, n))
                for ix, r, n in zip(where, reach, lesion.shape, strict=True))
    distance = ndimage.distance_transform_edt(~lesion[box], sampling=[float(s) for s in spacing_zyx])
    out[box] = (distance <= shell_mm) & ~lesion[box] & (np.asarray(brain)[box] > 0)
    return out


def reference_stats(image: np.ndarray, shell: np.ndarray, min_voxels: int) -> dict[str, float]:
    """Median, interquartile range and voxel count of ``image`` in ``shell`` (NaN when too few)."""
    values = np.asarray(image, dtype=np.float64)[shell]
    values = values[np.isfinite(values)]
    if values.size < min_voxels:
        return {"median": float("nan"), "iqr": float("nan"), "voxels": float(values.size)}
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "iqr": float(q75 - q25), "voxels": float(values.size)}


def reference_values(roi: str, sequence: str, stats: Mapping[str, float]) -> dict[str, float]:
    """``stats`` under the view's reference column names."""
    view = view_name("rad", roi, sequence)
    return {f"{view}__reference__shell__{stat}": float(stats[stat]) for stat in STATS}
