"""Intensity normalisation against reference tissue (issue 12, lever 1; not in the paper).

Ingest z-scores each sequence over the whole brain. With ``normalisation: {method: reference}``
the study re-expresses every radiomics view's original-image first-order intensities against
normal-appearing brain around the lesion: the median ``m`` and interquartile range ``s`` of the
10 mm shell the features job stores with each view (``{view}__reference__shell__median`` /
``__iqr``, :mod:`features.reference`). Under the affine map x -> (x - m) / s:

* location features (mean, median, minimum, maximum, 10th and 90th percentile) become (f - m) / s;
* spread features (interquartile range, mean and robust mean absolute deviation, range) f / s;
* variance f / s**2;
* the rest is left as it is: skewness and kurtosis do not change under the map, and entropy,
  uniformity, energy, total energy and RMS depend on the bin width and the voxel shift, which are
  applied to the stored image; texture and filtered-image features likewise.

The map uses each patient's own reference and no label, so it cannot leak. Without the lever the
reference columns never reach a model (:func:`drop_reference_columns`). The registered model is a
:class:`ReferenceNormalisedModel`: it asks serving for the reference columns of the views its
features come from and applies the same map, so an online prediction equals the in-process one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import pandas as pd

from atrx.errors import DataError
from training.wrapped import TransformedModel

__all__ = ["LOCATION", "SCALE", "SQUARED", "ReferenceNormalisedModel", "drop_reference_columns",
           "is_reference_column", "mapped_columns", "normalisation_line", "normalise_for_study",
           "normalise_frame", "reference_columns"]

LOCATION: Final[frozenset[str]] = frozenset({"mean", "median", "minimum", "maximum", "10percentile",
                                             "90percentile"})
SCALE: Final[frozenset[str]] = frozenset({"interquartilerange", "meanabsolutedeviation",
                                          "robustmeanabsolutedeviation", "range"})
SQUARED: Final[frozenset[str]] = frozenset({"variance"})
_MARK = "__reference__shell__"
_FIRST_ORDER = "__original__firstorder__"


def is_reference_column(name: str) -> bool:
    """A view's stored reference-tissue column (``rad_{roi}_{seq}__reference__shell__{stat}``)."""
    return _MARK in str(name)


def reference_columns(view: str) -> tuple[str, str]:
    """The median and IQR columns of ``view``."""
    return f"{view}{_MARK}median", f"{view}{_MARK}iqr"


def drop_reference_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without reference columns: they describe the tissue around the lesion, not the
    lesion, and enter no model."""
    return frame.drop(columns=[c for c in frame.columns if is_reference_column(c)])


def mapped_columns(columns: Sequence[str]) -> dict[str, tuple[str, str]]:
    """column -> (its view, its kind) for every column the map changes."""
    out = {}
    for col in columns:
        view, sep, feature = str(col).partition(_FIRST_ORDER)
        if not sep or not view.startswith("rad_"):
            continue
        kind = ("location" if feature in LOCATION else "scale" if feature in SCALE
                else "squared" if feature in SQUARED else None)
        if kind:
            out[str(col)] = (view, kind)
    return out


def normalise_frame(frame: pd.DataFrame, *, what: str = "the training frame") -> pd.DataFrame:
    """``frame`` with its first-order intensities mapped against each row's reference tissue and
    the reference columns dropped. A view without reference columns, or a row whose reference is
    not finite or has no spread, is a data error naming the view or the patients."""
    mapped = mapped_columns(list(frame.columns))
    out = frame.copy()
    for view in sorted({v for v, _ in mapped.values()}):
        median_col, iqr_col = reference_columns(view)
        if median_col not in frame.columns or iqr_col not in frame.columns:
            raise DataError(f"{what} has {view} features but no reference-tissue columns "
                            f"({median_col}, {iqr_col})",
                            fix="compute the features with the `reference` block of "
                                "features/params/radiomics.yaml (`atrx features`), or set "
                                "normalisation.method: none")
        m = frame[median_col].to_numpy(dtype=np.float64)
        s = frame[iqr_col].to_numpy(dtype=np.float64)
        bad = ~(np.isfinite(m) & np.isfinite(s) & (s > 0))
        if bad.any():
            ids = frame["patient_id"].astype(str).to_numpy() if "patient_id" in frame else np.arange(len(frame))
            who = ids[bad]
            raise DataError(f"{what}: the reference tissue of {view} is missing or flat for "
                            f"{int(bad.sum())} row(s) ({', '.join(map(str, who[:5]))})",
                            fix="check those patients' brain and lesion masks (the shell needs "
                                "100 brain voxels within 10 mm of the lesion)")
        for col, (v, kind) in mapped.items():
            if v != view:
                continue
            x = frame[col].to_numpy(dtype=np.float64)
            out[col] = (x - m) / s if kind == "location" else x / s if kind == "scale" else x / s**2
    return drop_reference_columns(out)


def normalise_for_study(frame: pd.DataFrame, method: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The frame a study's protocol fits on (``normalisation.method``: none or reference) and
    what was done, for metrics.json; reference columns are dropped either way."""
    if method != "reference":
        return drop_reference_columns(frame), {"method": "none"}
    mapped = mapped_columns(list(frame.columns))
    return normalise_frame(frame), {"method": "reference", "tissue": "shell",
                                    "views": sorted({v for v, _ in mapped.values()}),
                                    "features_mapped": len(mapped)}


class ReferenceNormalisedModel(TransformedModel):
    """:func:`normalise_frame` then ``model``: what is registered and served with the lever on."""

    def __init__(self, model: Any, views: Sequence[str]) -> None:
        self.model = model
        self.views = list(views)

    @classmethod
    def wrap(cls, model: Any) -> ReferenceNormalisedModel:
        """Wrap ``model`` with the reference columns of the views its mapped features come from."""
        views = sorted({v for v, _ in mapped_columns(model.required_features).values()})
        return cls(model, views)

    def _transformed(self, X: pd.DataFrame) -> pd.DataFrame:
        return normalise_frame(X, what="the request")

    @property
    def required_features(self) -> list[str]:
        extra = [c for v in self.views for c in reference_columns(v)]
        return [*self.model.required_features, *extra]

    @property
    def needs_center(self) -> bool:
        return bool(getattr(self.model, "needs_center", False))

    def describe(self) -> dict[str, object]:
        return {**self.model.describe(), "required_features": self.required_features,
                "normalisation": {"method": "reference", "tissue": "shell", "views": self.views,
                                  "module": __name__}}


def normalisation_line(info: dict[str, Any] | None) -> str:
    """One report line: the whole-brain z-score alone, or what the reference map changed."""
    if not info or info.get("method") == "none":
        return "none (whole-brain z-score of ingest)"
    return (f"reference tissue (median and IQR of brain within 10 mm of the lesion): "
            f"{info['features_mapped']} first-order features of {len(info['views'])} views mapped")
