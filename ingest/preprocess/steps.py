"""The recorded steps: how each step decides its values, records them and is applied again.

Every step is called as ``step.run(recorded, params, *data) -> (record, output)``. With
``recorded`` None the step decides (fits N4 and the registration, finds thresholds and z-score
statistics from ``params`` and the data); with a recorded step it takes those values from the
record instead. Either way the output is computed by the same code from the record's values, so
deciding and replaying give the same voxels (TorchIO's transform history is the model: each
transform records the arguments it ran with, and applying them again reproduces the result).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from atrx.names import SEQUENCES, SOURCE_MASKS
from ingest.preprocess import ops
from ingest.preprocess.field import SEPARABLE
from ingest.preprocess.fitting import apply_log_bias, fit_n4, fit_rigid, rigid_settings
from ingest.preprocess.params import (
    MIN_T2F_BRAIN_COVERAGE,
    PREPROCESS_VERSION,
    REPLAYABLE_VERSIONS,
    PreprocessError,
    PreprocessParams,
)
from ingest.preprocess.records import (
    REPLAY_FIX,
    BrainMaskRecord,
    CheckGeometryRecord,
    DeriveRoisRecord,
    InputsRecord,
    N4Record,
    OutputGridRecord,
    RegisterRecord,
    ReorientRecord,
    ResampleRecord,
    ZscoreRecord,
    field_from_record,
    field_to_record,
    image_fingerprint,
    transform_from_record,
    transform_to_record,
)

__all__ = [
    "Step",
    "brain_mask",
    "check_geometry",
    "derive_rois",
    "inputs",
    "n4_bias_correct",
    "output_grid",
    "register_rigid",
    "reorient",
    "resample",
    "zscore",
]

#: a recorded step (JSON-loaded) or None when the step decides now
Recorded = dict[str, Any] | None


@dataclass(frozen=True)
class Step:
    """One step: ``name`` is its ``"step"`` key in every stored record (never rename it)."""

    name: str
    run: Callable[..., tuple[Any, Any]]


def _step(name: str) -> Callable[[Callable[..., tuple[Any, Any]]], Step]:
    """Make a step function a :class:`Step` recorded under ``name``."""
    return lambda fn: Step(name, fn)


def _expect(rec: dict[str, Any], name: str, what: str) -> None:
    if rec["image"] != name:
        raise PreprocessError(f"step record: expected {what} of {name}, found {rec['image']}",
                              fix=REPLAY_FIX)


@_step("inputs")
def inputs(rec: Recorded, params: PreprocessParams | None, raw: dict[str, sitk.Image],
           spaces: dict[str, str]) -> tuple[InputsRecord, None]:
    """Fingerprint the inputs; a replay must get the very inputs and version it was recorded on."""
    info = {
        name: {"sha256": image_fingerprint(img), "pixel_type": img.GetPixelIDTypeAsString(),
               "orientation": ops.orientation_of(img), **ops.geometry_of(img)}
        for name, img in raw.items()
    }
    if rec is not None:
        if rec.get("version") not in REPLAYABLE_VERSIONS:
            raise PreprocessError(
                f"steps were recorded by preprocess version {rec.get('version')!r}; this is "
                f"{PREPROCESS_VERSION!r}, which replays only {list(REPLAYABLE_VERSIONS)} exactly",
                fix=REPLAY_FIX,
            )
        if rec["spaces"] != spaces:
            raise PreprocessError(f"mask spaces differ from the record: {spaces} vs recorded {rec['spaces']}",
                                  fix=REPLAY_FIX)
        for name, now in info.items():
            if now["sha256"] != rec["inputs"][name]["sha256"]:
                raise PreprocessError(
                    f"input {name!r} differs from the one the steps were recorded on "
                    f"(sha256 {now['sha256'][:12]} vs recorded {rec['inputs'][name]['sha256'][:12]})",
                    fix=REPLAY_FIX,
                )
        return rec, None
    assert params is not None
    return {
        "step": "inputs",
        "version": PREPROCESS_VERSION,
        "params": params.model_dump(mode="json"),
        "params_digest": params.digest(),
        "spaces": dict(spaces),
        "inputs": info,
    }, None


@_step("reorient")
def reorient(rec: Recorded, params: PreprocessParams | None, raw: dict[str, sitk.Image]
             ) -> tuple[ReorientRecord, dict[str, sitk.Image]]:
    """Every input onto the same axis order (no resampling)."""
    orientation = rec["orientation"] if rec else params.orientation
    return ({"step": "reorient", "orientation": orientation},
            {name: ops.reorient(img, orientation) for name, img in raw.items()})


@_step("check_geometry")
def check_geometry(rec: Recorded, params: PreprocessParams | None, imgs: dict[str, sitk.Image],
                   spaces: dict[str, str]) -> tuple[CheckGeometryRecord, None]:
    """Each mask must lie on the grid of the image it was drawn on."""
    tol = rec["tol"] if rec else params.geometry_tol
    for m in SOURCE_MASKS:
        ops.check_same_geometry(imgs[m], imgs[spaces[m]], f"mask {m!r} (drawn on {spaces[m]})", tol)
    return {"step": "check_geometry", "tol": float(tol),
            "pairs": [{"mask": m, "image": spaces[m]} for m in SOURCE_MASKS]}, None


@_step("n4_bias_correct")
def n4_bias_correct(rec: Recorded, params: PreprocessParams | None, name: str, image: sitk.Image
                    ) -> tuple[N4Record, sitk.Image]:
    """float32 image divided by its recorded bias field (or as is, N4 disabled)."""
    img = sitk.Cast(image, sitk.sitkFloat32)
    if rec is None:
        assert params is not None
        if params.n4_enabled:
            coarse, info = fit_n4(img, None, params, name)
            rec = {"step": "n4_bias_correct", "image": name, "enabled": True, **info,
                   "log_bias_field": field_to_record(coarse)}
            if params.n4_field_interpolation == "separable":
                rec["field_interpolation"] = SEPARABLE
        else:
            rec = {"step": "n4_bias_correct", "image": name, "enabled": False}
    else:
        _expect(rec, name, "N4")
    if not rec["enabled"]:
        return rec, img
    # Applied from the record in both modes so decide and replay divide by the same field.
    return rec, apply_log_bias(img, field_from_record(rec["log_bias_field"]),
                               rec.get("field_interpolation"))


@_step("register_rigid")
def register_rigid(rec: Recorded, params: PreprocessParams | None, seqs: dict[str, sitk.Image]
                   ) -> tuple[RegisterRecord, sitk.Transform]:
    """The T2f -> T1c transform (identity when registration is off)."""
    if rec is None:
        assert params is not None
        if params.registration == "rigid":
            tx, info = fit_rigid(seqs["t1c"], seqs["t2f"], params)
            settings = rigid_settings(params)
        else:
            tx, info, settings = sitk.Euler3DTransform(), {}, {}
        rec = {"step": "register_rigid", "method": params.registration, "fixed": "t1c",
               "moving": "t2f", "settings": settings, "transform": transform_to_record(tx), **info}
    # Rebuilt from the record in both modes so decide and replay resample identically.
    return rec, transform_from_record(rec["transform"])


@_step("output_grid")
def output_grid(rec: Recorded, params: PreprocessParams | None, t1c: sitk.Image
                ) -> tuple[OutputGridRecord, sitk.Image]:
    """The isotropic grid over the T1c that every output array lies on."""
    if rec is None:
        assert params is not None
        ref = ops.isotropic_reference(t1c, params.spacing_mm)
        rec = {"step": "output_grid", "like": "t1c", "spacing_mm": params.spacing_mm,
               "geometry": ops.geometry_of(ref)}
    return rec, ops.reference_from_geometry(rec["geometry"])


@_step("resample")
def resample(rec: Recorded, params: PreprocessParams | None, name: str, image: sitk.Image,
             ref: sitk.Image, space: str, transform: sitk.Transform | None
             ) -> tuple[ResampleRecord, sitk.Image]:
    """One image (interpolated) or mask (binarised, nearest, must stay non-empty) onto ``ref``."""
    is_image = name in SEQUENCES
    if rec is not None:
        _expect(rec, name, "resampling")
        interp = rec["interpolator"]
        tx = transform_from_record(rec["transform"]) if rec["transform"] else None
    else:
        assert params is not None
        interp = params.image_interpolator if is_image else "nearest"
        tx = transform
    if not is_image:
        image = ops.binarize(image)
    out = ops.resample_to_grid(image, ref, tx, interp)
    step: dict[str, Any] = {"step": "resample", "image": name, "space": space, "interpolator": interp,
                            "transform": transform_to_record(tx) if tx is not None else None}
    if not is_image:
        step["binarize"] = ">0"
        voxels = int(sitk.GetArrayViewFromImage(out).sum())
        step["voxels"] = voxels
        if voxels == 0 and name in SOURCE_MASKS:
            raise PreprocessError(
                f"mask {name!r} is empty after resampling onto the output grid; expected at "
                f"least one voxel (it had {int((sitk.GetArrayViewFromImage(image) > 0).sum())} "
                f"in {space} space)",
                fix=f"check the {name} mask and masks.{name}.space: it must lie inside the "
                    f"{space} series' field of view",
            )
    return (rec if rec is not None else step), out


@_step("brain_mask")
def brain_mask(rec: Recorded, params: PreprocessParams | None, out: dict[str, sitk.Image]
               ) -> tuple[BrainMaskRecord, sitk.Image]:
    """The T1c brain mask (recorded rule and thresholds), united with the lesion and tumor masks.

    A record without ``exclude_bright`` comes from 1.0.0, whose rule excluded the bright class.
    A replay must give the recorded voxel counts, or it is refused.
    """
    if rec is not None:
        thr, opening = tuple(float(t) for t in rec["thresholds"]), rec["opening_mm"]
        exclude = bool(rec.get("exclude_bright", True))
        if len(thr) != (2 if exclude else 1):
            raise PreprocessError(
                f"brain_mask step record: {len(thr)} threshold(s) with exclude_bright={exclude}; "
                f"expected {2 if exclude else 1}", fix=REPLAY_FIX,
            )
    else:
        assert params is not None
        exclude, opening = params.brain_exclude_bright, params.brain_opening_mm
        thr = ops.brain_thresholds(out["t1c"]) if exclude else (ops.tissue_threshold(out["t1c"]),)
    mask = ops.brain_mask(out["t1c"], thresholds=thr, opening_mm=opening, exclude_bright=exclude,
                          what="t1c")
    arr = sitk.GetArrayViewFromImage(mask) > 0
    own = int(arr.sum())
    for m in SOURCE_MASKS:
        arr = arr | (sitk.GetArrayViewFromImage(out[m]) > 0)
    brain = ops.from_array(arr.astype(np.uint8), mask)
    if rec is not None and (own, int(arr.sum())) != (rec["voxels_before_union"], rec["voxels"]):
        # 1.0.0 could read freed memory here (see ops.brain_mask): its mask cannot be rebuilt
        raise PreprocessError(
            f"brain mask replays to {own} voxels ({int(arr.sum())} with the masks); the record has "
            f"{rec['voxels_before_union']} ({rec['voxels']})", fix=REPLAY_FIX,
        )
    return (rec if rec is not None else {
        "step": "brain_mask", "from": "t1c", "thresholds": list(thr), "opening_mm": float(opening),
        "exclude_bright": exclude, "union_with": list(SOURCE_MASKS), "voxels_before_union": own,
        "voxels": int(arr.sum()),
    }), brain


@_step("zscore")
def zscore(rec: Recorded, params: PreprocessParams | None, name: str, image: sitk.Image,
           brain: sitk.Image, coverage: sitk.Image | None) -> tuple[ZscoreRecord, sitk.Image]:
    """z-score with the recorded brain statistics (T2f: only the brain it covers counts)."""
    if rec is None:
        mask, fraction = brain, 1.0
        if coverage is not None:
            b = sitk.GetArrayViewFromImage(brain) > 0
            inside = b & (sitk.GetArrayViewFromImage(coverage) > 0)
            fraction = float(inside.sum() / max(1, b.sum()))
            if fraction < MIN_T2F_BRAIN_COVERAGE:
                raise PreprocessError(
                    f"{name} covers only {fraction:.0%} of the brain mask after registration; "
                    f"expected at least {MIN_T2F_BRAIN_COVERAGE:.0%}",
                    fix=f"check that the {name} series covers the whole head and shows the same "
                        "patient and study as the T1c",
                )
            mask = ops.from_array(inside.astype(np.uint8), brain)
        mean, std = ops.masked_stats(image, mask, name, "brain mask")
        rec = {"step": "zscore", "image": name, "mask": "brain" if coverage is None else
               "brain & t2f_coverage", "brain_coverage": fraction, "mean": mean, "std": std}
    else:
        _expect(rec, name, "z-score")
    return rec, ops.apply_zscore(image, rec["mean"], rec["std"])


@_step("derive_rois")
def derive_rois(rec: Recorded, params: PreprocessParams | None, arrays: dict[str, np.ndarray]
                ) -> tuple[DeriveRoisRecord, dict[str, np.ndarray]]:
    """edema = lesion & ~tumor, overall = lesion | tumor (nothing to decide, counts recorded)."""
    derived = ops.derive_rois(arrays["lesion"], arrays["tumor"])
    return (rec if rec is not None else {
        "step": "derive_rois", "edema": "lesion & ~tumor", "overall": "lesion | tumor",
        "voxels": {k: int(v.sum()) for k, v in derived.items()},
    }), derived
