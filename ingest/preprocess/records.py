"""The step record: the JSON a study version stores so its arrays can be rebuilt exactly.

One typed dict per step, in the order the pipeline runs them, and the conversions between
SimpleITK objects and their recorded form. The key names (and their order) are what studies
ingested so far carry in their Zarr attributes: change them only with ``PREPROCESS_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, NotRequired, TypedDict

import numpy as np
import SimpleITK as sitk

from ingest.preprocess.ops import Grid, from_array, geometry_of, reference_from_geometry
from ingest.preprocess.params import PreprocessError

__all__ = [
    "REPLAY_FIX",
    "BrainMaskRecord",
    "CheckGeometryRecord",
    "DeriveRoisRecord",
    "FieldRecord",
    "InputRecord",
    "InputsRecord",
    "N4Record",
    "OutputGridRecord",
    "RegisterRecord",
    "ReorientRecord",
    "ResampleRecord",
    "StepRecord",
    "TransformRecord",
    "ZscoreRecord",
    "field_from_record",
    "field_to_record",
    "image_fingerprint",
    "steps_to_json",
    "transform_from_record",
    "transform_to_record",
]

#: what to do when a record cannot be replayed (other inputs, another version, a damaged record)
REPLAY_FIX = "re-ingest the study: its step record does not fit these inputs or this preprocess version"


class TransformRecord(TypedDict):
    """An Euler3D transform: fixed-space point -> moving-space point (ITK's convention)."""

    type: Literal["Euler3DTransform"]
    parameters: list[float]
    fixed_parameters: list[float]


class FieldRecord(Grid):
    """A coarse log bias field: its grid and its values in (z, y, x) order, flattened."""

    values: list[float]


class InputRecord(Grid):
    """One input image as the pipeline received it (the sha256 proves a replay got the same)."""

    sha256: str
    pixel_type: str
    orientation: str


class InputsRecord(TypedDict):
    step: Literal["inputs"]
    version: str
    params: dict[str, Any]
    params_digest: str
    spaces: dict[str, str]  # mask -> the sequence it was drawn on
    inputs: dict[str, InputRecord]


class ReorientRecord(TypedDict):
    step: Literal["reorient"]
    orientation: str


class MaskPair(TypedDict):
    mask: str
    image: str


class CheckGeometryRecord(TypedDict):
    step: Literal["check_geometry"]
    tol: float
    pairs: list[MaskPair]


class N4Record(TypedDict):
    """N4 of one sequence; when enabled, the fit's details (:class:`N4Fit`) and its field."""

    step: Literal["n4_bias_correct"]
    image: str
    enabled: bool
    mask: NotRequired[dict[str, Any]]
    shrink_factors: NotRequired[list[int]]
    iterations: NotRequired[list[int]]
    control_points: NotRequired[int]
    convergence: NotRequired[float]
    mask_voxels: NotRequired[int]
    bias_min: NotRequired[float]
    bias_max: NotRequired[float]
    log_bias_field: NotRequired[FieldRecord]
    #: how the field was put on the image grid: "bspline3_separable" (``n4_field_interpolation:
    #: separable``); absent: ``sitk.Resample``, which a replay of such a record runs again
    field_interpolation: NotRequired[str]


class RegisterRecord(TypedDict):
    """The T2f -> T1c transform; a rigid fit also records its settings and how it ended."""

    step: Literal["register_rigid"]
    method: Literal["rigid", "none"]
    fixed: str
    moving: str
    settings: dict[str, Any]
    transform: TransformRecord
    metric_value: NotRequired[float]
    optimizer_iterations: NotRequired[int]
    stop_condition: NotRequired[str]
    fixed_mask_share: NotRequired[float]


class OutputGridRecord(TypedDict):
    step: Literal["output_grid"]
    like: str
    spacing_mm: float
    geometry: Grid


class ResampleRecord(TypedDict):
    """One image or mask onto the output grid; masks are binarised and counted."""

    step: Literal["resample"]
    image: str
    space: str
    interpolator: str
    transform: TransformRecord | None
    binarize: NotRequired[str]
    voxels: NotRequired[int]


#: the brain mask rule and its cuts: ``exclude_bright`` (two thresholds, the 1.0.0 rule) or not
#: (one threshold; the skull is cut off by the opening)
BrainMaskRecord = TypedDict("BrainMaskRecord", {
    "step": Literal["brain_mask"],
    "from": str,
    "thresholds": list[float],
    "opening_mm": float,
    "exclude_bright": NotRequired[bool],  # absent in 1.0.0 records, whose rule it was (True)
    "union_with": list[str],
    "voxels_before_union": int,
    "voxels": int,
})


class ZscoreRecord(TypedDict):
    step: Literal["zscore"]
    image: str
    mask: str
    brain_coverage: float
    mean: float
    std: float


class DeriveRoisRecord(TypedDict):
    step: Literal["derive_rois"]
    edema: str
    overall: str
    voxels: dict[str, int]


StepRecord = (InputsRecord | ReorientRecord | CheckGeometryRecord | N4Record | RegisterRecord
              | OutputGridRecord | ResampleRecord | BrainMaskRecord | ZscoreRecord | DeriveRoisRecord)


def image_fingerprint(image: sitk.Image) -> str:
    """sha256 of voxel values, pixel type and grid: lets a replay prove it got the same input."""
    h = hashlib.sha256()
    h.update(image.GetPixelIDTypeAsString().encode())
    h.update(json.dumps(geometry_of(image), sort_keys=True).encode())
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    return h.hexdigest()


def transform_to_record(transform: sitk.Transform) -> TransformRecord:
    """A JSON-able description of an Euler3D transform (what the step record stores)."""
    euler = sitk.Euler3DTransform(transform)
    return {
        "type": "Euler3DTransform",
        "parameters": [float(v) for v in euler.GetParameters()],
        "fixed_parameters": [float(v) for v in euler.GetFixedParameters()],
    }


def transform_from_record(record: TransformRecord | dict[str, Any]) -> sitk.Euler3DTransform:
    """Rebuild the transform written by :func:`transform_to_record`."""
    if record.get("type") != "Euler3DTransform":
        raise PreprocessError(f"expected an Euler3DTransform record, found type {record.get('type')!r}",
                              fix=REPLAY_FIX)
    tx = sitk.Euler3DTransform()
    tx.SetFixedParameters([float(v) for v in record["fixed_parameters"]])
    tx.SetParameters([float(v) for v in record["parameters"]])
    return tx


def field_to_record(coarse: sitk.Image) -> FieldRecord:
    """A coarse log bias field as its grid plus its values (already rounded by the fit)."""
    return {**geometry_of(coarse), "values": sitk.GetArrayViewFromImage(coarse).ravel().tolist()}


def field_from_record(record: FieldRecord | dict[str, Any]) -> sitk.Image:
    """Rebuild the float64 field written by :func:`field_to_record`."""
    ref = reference_from_geometry(record)
    shape = tuple(int(n) for n in reversed(record["size"]))
    return from_array(np.asarray(record["values"], dtype=np.float64).reshape(shape), ref)


def steps_to_json(steps: list[StepRecord] | list[dict[str, Any]]) -> str:
    """Canonical JSON of a step record (what a caller stores next to the arrays)."""
    return json.dumps(steps, sort_keys=True, separators=(",", ":"), allow_nan=False)
