"""Names every stage agrees on: sequences, ROIs, feature kinds and canonical feature names.

Feature names are SQL-safe and lower case:
``{kind}_{roi}_{sequence}__{image_type}__{class}__{feature}`` for radiomics and
``dl_{roi}_{sequence}__f{index:04d}`` for deep features.
"""

from __future__ import annotations

import re
from typing import Final, Literal

Sequence = Literal["t1c", "t2f"]
Roi = Literal["edema", "tumor", "overall"]
FeatureKind = Literal["rad", "dl"]

SEQUENCES: Final[tuple[str, ...]] = ("t1c", "t2f")
ROIS: Final[tuple[str, ...]] = ("edema", "tumor", "overall")
KINDS: Final[tuple[str, ...]] = ("rad", "dl")
#: masks as delivered by a center, before the derived ROIs are computed
SOURCE_MASKS: Final[tuple[str, ...]] = ("lesion", "tumor")
#: arrays written per study version in the image store
STORE_ARRAYS: Final[tuple[str, ...]] = ("t1c", "t2f", "brain", "lesion", "tumor", "edema", "overall")

_SAFE = re.compile(r"[^a-z0-9]+")


def sql_safe(text: str) -> str:
    """Lower-case ``text`` and squash every run of non-alphanumerics to one underscore."""
    out = _SAFE.sub("_", text.lower()).strip("_")
    if not out:
        raise ValueError(f"cannot make a SQL-safe name from {text!r}")
    return out


def view_name(kind: str, roi: str, sequence: str) -> str:
    """The feature-view (and column prefix) name of one kind x ROI x sequence, e.g. ``rad_tumor_t1c``."""
    if kind not in KINDS or roi not in ROIS or sequence not in SEQUENCES:
        raise ValueError(
            f"unknown feature view ({kind!r}, {roi!r}, {sequence!r}); "
            f"expected kind in {KINDS}, roi in {ROIS}, sequence in {SEQUENCES}"
        )
    return f"{kind}_{roi}_{sequence}"


def radiomics_feature_name(roi: str, sequence: str, pyradiomics_key: str) -> str:
    """Map a pyradiomics key such as ``wavelet-LLH_glcm_Correlation`` to its canonical name.

    ``log-sigma-1-0-mm-3D_firstorder_Mean`` -> ``rad_{roi}_{seq}__log_sigma_1_0_mm_3d__firstorder__mean``.
    """
    parts = pyradiomics_key.split("_", 2)
    if len(parts) != 3:
        raise ValueError(f"not a pyradiomics feature key: {pyradiomics_key!r}")
    image_type, feature_class, feature = parts
    return (
        f"{view_name('rad', roi, sequence)}__{sql_safe(image_type)}__"
        f"{sql_safe(feature_class)}__{sql_safe(feature)}"
    )


def deep_feature_name(roi: str, sequence: str, index: int) -> str:
    """Canonical name of output unit ``index`` of the CNN, e.g. ``dl_tumor_t1c__f0421``."""
    return f"{view_name('dl', roi, sequence)}__f{index:04d}"


def all_views() -> list[tuple[str, str, str]]:
    """Every (kind, roi, sequence) triple, in a fixed order: 2 x 3 x 2 = 12 views."""
    return [(k, r, s) for k in KINDS for r in ROIS for s in SEQUENCES]
