"""Per-study MRI preprocessing: the pure science between reading files and writing the store.

Reorient, N4 bias correction, rigid T2f->T1c registration, resampling onto a 1 mm grid that
covers the T1c, brain mask, z-score and the derived ROIs. Every decision the pipeline takes
(the fitted bias fields, the registration transform, thresholds, z-score statistics) is written
to ``steps`` so that :func:`replay` rebuilds the same arrays from the same inputs without
fitting or optimising anything again.

Pure functions on SimpleITK images: no file I/O, no Dask, no global state, threading left alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, Field, field_validator, model_validator

PREPROCESS_VERSION = "1.0.0"

Space = Literal["t1c", "t2f"]
SEQUENCES: tuple[str, ...] = ("t1c", "t2f")
MASKS: tuple[str, ...] = ("lesion", "tumor")
OUTPUT_ARRAYS: tuple[str, ...] = ("t1c", "t2f", "brain", "lesion", "tumor", "edema", "overall")

_AXIS_PAIRS = ({"R", "L"}, {"A", "P"}, {"S", "I"})
_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "nearest": sitk.sitkNearestNeighbor,
}
#: the z-scored T2f must see at least this share of the brain inside its field of view
MIN_T2F_BRAIN_COVERAGE = 0.5
# regular-step gradient descent (steps in mm through physical-shift scales)
_REG_LEARNING_RATE_MM = 1.0
_REG_MIN_STEP = 1e-4
_REG_RELAXATION = 0.7
#: decimals kept of the recorded log bias field (1e-6 relative in intensity)
_FIELD_DECIMALS = 6


class PreprocessError(ValueError):
    """Degenerate or inconsistent data; the message says what was expected and what was found."""


def _check_orientation(code: str) -> str:
    letters = code.upper()
    if len(letters) != 3 or any(
        sum(ch in pair for ch in letters) != 1 for pair in _AXIS_PAIRS
    ):
        raise ValueError(
            f"orientation must be three letters, one of each of R/L, A/P, S/I (e.g. 'LPS'); got {code!r}"
        )
    return letters


class PreprocessParams(BaseModel, extra="forbid", frozen=True):
    """Every knob of :func:`preprocess_study`; :meth:`digest` identifies a parameter set."""

    orientation: str = "LPS"
    spacing_mm: float = Field(1.0, gt=0)

    n4_enabled: bool = True
    n4_shrink: int = Field(4, ge=1)
    #: iterations per fitting level; the number of entries is the number of levels
    n4_iterations: tuple[int, ...] = (30, 20)
    n4_control_points: int = Field(4, ge=4)  # must exceed the spline order (3)
    n4_convergence: float = Field(1e-3, gt=0)
    #: spacing of the grid the fitted log bias field is recorded (and applied) on
    n4_field_spacing_mm: float = Field(8.0, gt=0)

    registration: Literal["rigid", "none"] = "rigid"
    reg_iterations: int = Field(100, ge=1)
    reg_sampling: float = Field(0.2, gt=0, le=1)
    reg_seed: int = Field(42, ge=0, lt=2**32)
    reg_bins: int = Field(32, ge=8)
    reg_shrink_factors: tuple[int, ...] = (4, 2, 1)
    reg_smoothing_mm: tuple[float, ...] = (2.0, 1.0, 0.0)

    image_interpolator: Literal["linear", "bspline"] = "linear"
    #: radius of the opening that cuts skull-brain bridges in the brain mask
    brain_opening_mm: float = Field(2.0, ge=0)
    #: absolute tolerance (mm, direction cosines) when a mask's grid is compared to its image's
    geometry_tol: float = Field(1e-3, gt=0)

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, v: str) -> str:
        return _check_orientation(v)

    @field_validator("n4_iterations", "reg_shrink_factors")
    @classmethod
    def _positive_ints(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(i < 1 for i in v):
            raise ValueError(f"expected a non-empty list of integers >= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _levels_match(self) -> PreprocessParams:
        if len(self.reg_shrink_factors) != len(self.reg_smoothing_mm):
            raise ValueError(
                f"reg_shrink_factors ({len(self.reg_shrink_factors)} levels) and reg_smoothing_mm "
                f"({len(self.reg_smoothing_mm)} levels) must have the same length"
            )
        if any(s < 0 for s in self.reg_smoothing_mm):
            raise ValueError(f"reg_smoothing_mm must be >= 0, got {list(self.reg_smoothing_mm)}")
        return self

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON of the parameters plus ``PREPROCESS_VERSION``."""
        payload = {"version": PREPROCESS_VERSION, "params": self.model_dump(mode="json")}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# small helpers


def _require_3d(image: sitk.Image, what: str) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise PreprocessError(
            f"{what}: expected a 3-D scalar image, found a {image.GetDimension()}-D image with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )


def _fmt(values: tuple[float, ...] | list[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _from_array(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(like)
    return out


def geometry_of(image: sitk.Image) -> dict[str, list[float] | list[int]]:
    """The grid of ``image`` as plain lists (x, y, z order, as SimpleITK reports it)."""
    return {
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
        "size": [int(v) for v in image.GetSize()],
    }


def _reference_from_geometry(geometry: dict[str, Any]) -> sitk.Image:
    ref = sitk.Image([int(v) for v in geometry["size"]], sitk.sitkUInt8)
    ref.SetSpacing([float(v) for v in geometry["spacing"]])
    ref.SetOrigin([float(v) for v in geometry["origin"]])
    ref.SetDirection([float(v) for v in geometry["direction"]])
    return ref


def orientation_of(image: sitk.Image) -> str:
    """The three-letter DICOM orientation code closest to ``image``'s direction cosines."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def image_fingerprint(image: sitk.Image) -> str:
    """sha256 of voxel values, pixel type and grid: lets a replay prove it got the same input."""
    h = hashlib.sha256()
    h.update(image.GetPixelIDTypeAsString().encode())
    h.update(json.dumps(geometry_of(image), sort_keys=True).encode())
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    return h.hexdigest()


def transform_to_record(transform: sitk.Transform) -> dict[str, Any]:
    """A JSON-able description of an Euler3D transform (what the step record stores)."""
    euler = sitk.Euler3DTransform(transform)
    return {
        "type": "Euler3DTransform",
        "parameters": [float(v) for v in euler.GetParameters()],
        "fixed_parameters": [float(v) for v in euler.GetFixedParameters()],
    }


def transform_from_record(record: dict[str, Any]) -> sitk.Euler3DTransform:
    """Rebuild the transform written by :func:`transform_to_record`."""
    if record.get("type") != "Euler3DTransform":
        raise PreprocessError(f"expected an Euler3DTransform record, found type {record.get('type')!r}")
    tx = sitk.Euler3DTransform()
    tx.SetFixedParameters([float(v) for v in record["fixed_parameters"]])
    tx.SetParameters([float(v) for v in record["parameters"]])
    return tx


# --------------------------------------------------------------------------------------------
# the building blocks


def reorient(image: sitk.Image, orientation: str = "LPS") -> sitk.Image:
    """Permute/flip the voxel axes so the grid is (closest to) ``orientation``.

    No resampling: every voxel keeps its value and physical position, so masks reoriented the
    same way stay aligned with their image.
    """
    _require_3d(image, "reorient")
    return sitk.DICOMOrient(image, _check_orientation(orientation))


def check_same_geometry(mask: sitk.Image, image: sitk.Image, what: str, tol: float = 1e-3) -> None:
    """Raise :class:`PreprocessError` unless ``mask`` lies on exactly ``image``'s voxel grid.

    A mask on another grid would be silently misplaced by a voxel-wise pipeline; the message
    names every field that differs with both values (mask first).
    """
    problems = []
    if mask.GetDimension() != image.GetDimension():
        problems.append(f"dimension {mask.GetDimension()} vs {image.GetDimension()}")
    else:
        if mask.GetSize() != image.GetSize():
            problems.append(f"size {_fmt(mask.GetSize())} vs {_fmt(image.GetSize())}")
        for name, a, b in (
            ("spacing", mask.GetSpacing(), image.GetSpacing()),
            ("origin", mask.GetOrigin(), image.GetOrigin()),
            ("direction", mask.GetDirection(), image.GetDirection()),
        ):
            if not np.allclose(a, b, rtol=0.0, atol=tol):
                problems.append(f"{name} {_fmt(a)} vs {_fmt(b)}")
    if problems:
        raise PreprocessError(
            f"{what} does not lie on its image's grid (mask vs image): " + "; ".join(problems)
        )


def _otsu_threshold(image: sitk.Image) -> float:
    f = sitk.OtsuThresholdImageFilter()
    f.SetInsideValue(0)
    f.SetOutsideValue(1)
    f.Execute(image)
    return float(f.GetThreshold())


def _above(image: sitk.Image, threshold: float) -> sitk.Image:
    """uint8 mask of voxels strictly above ``threshold`` that are also > 0 (N4 takes logs)."""
    arr = sitk.GetArrayViewFromImage(image)
    return _from_array(((arr > threshold) & (arr > 0)).astype(np.uint8), image)


def head_mask(image: sitk.Image) -> sitk.Image:
    """uint8 Otsu foreground (head incl. skull): the default N4 mask."""
    return _above(image, _otsu_threshold(image))


def _n4_shrink_factors(size: tuple[int, ...], shrink: int) -> list[int]:
    # The same factor on every axis (as ANTs does), but keep at least 8 voxels per axis.
    return [max(1, min(shrink, n // 8)) for n in size]


def _field_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Coarse grid whose first and last voxel centres are ``image``'s (same direction).

    N4 maps its control-point lattice onto whatever grid it is asked to evaluate on, so the
    coarse grid must span exactly the image's voxel centres; its spacing is therefore about,
    not exactly, ``spacing_mm``.
    """
    size, spacing = [], []
    for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True):
        span = (n - 1) * s
        m = max(4, int(math.ceil(span / spacing_mm - 1e-9)) + 1)
        size.append(m)
        spacing.append(span / (m - 1) if span > 0 else s)
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing(spacing)
    ref.SetOrigin(image.GetOrigin())
    ref.SetDirection(image.GetDirection())
    return ref


def _fit_log_bias(image: sitk.Image, mask: sitk.Image, shrink_factors: list[int],
                  iterations: list[int], control_points: int, convergence: float,
                  field_spacing_mm: float) -> sitk.Image:
    """N4 on a shrunk copy; the smooth log bias field sampled on a coarse grid, rounded.

    Sampling and rounding make the field small enough to record, so a replay applies the
    very same numbers instead of re-fitting (N4's result varies with the thread count).
    """
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.SetNumberOfControlPoints([int(control_points)] * 3)
    n4.SetConvergenceThreshold(float(convergence))
    n4.Execute(sitk.Shrink(image, shrink_factors), sitk.Shrink(mask, shrink_factors))
    coarse = n4.GetLogBiasFieldAsImage(_field_grid(image, field_spacing_mm))
    values = np.round(sitk.GetArrayFromImage(coarse).astype(np.float64), _FIELD_DECIMALS)
    return _from_array(values, coarse)


def _apply_log_bias(image: sitk.Image, coarse_log_bias: sitk.Image) -> sitk.Image:
    """float32 ``image / exp(field)``, the coarse field cubic-B-spline interpolated."""
    field = sitk.Resample(coarse_log_bias, image, sitk.Transform(3, sitk.sitkIdentity),
                          sitk.sitkBSpline, 0.0, sitk.sitkFloat64)
    arr = sitk.GetArrayViewFromImage(image).astype(np.float64)
    return _from_array((arr / np.exp(sitk.GetArrayViewFromImage(field))).astype(np.float32), image)


def _field_to_record(coarse: sitk.Image) -> dict[str, Any]:
    return {**geometry_of(coarse), "values": sitk.GetArrayViewFromImage(coarse).ravel().tolist()}


def _field_from_record(record: dict[str, Any]) -> sitk.Image:
    ref = _reference_from_geometry(record)
    shape = tuple(int(n) for n in reversed(record["size"]))
    return _from_array(np.asarray(record["values"], dtype=np.float64).reshape(shape), ref)


def n4_bias_correct(image: sitk.Image, mask: sitk.Image | None, params: PreprocessParams) -> sitk.Image:
    """N4 bias-field correction, fitted on a shrunk copy and applied at full resolution.

    ``mask`` (label > 0) selects the voxels the field is fitted on; ``None`` uses the Otsu
    head mask. Returns float32. The overall scale is arbitrary: downstream z-scores remove it.
    """
    img = sitk.Cast(image, sitk.sitkFloat32)
    coarse, _ = _n4_fit(img, mask, params, "image")
    return _apply_log_bias(img, coarse)


def _n4_fit(img: sitk.Image, mask: sitk.Image | None, params: PreprocessParams, what: str
            ) -> tuple[sitk.Image, dict[str, Any]]:
    _require_3d(img, what)
    info: dict[str, Any] = {}
    if mask is None:
        threshold = _otsu_threshold(img)
        mask = _above(img, threshold)
        info["mask"] = {"kind": "otsu", "threshold": threshold}
    else:
        check_same_geometry(mask, img, f"N4 mask of {what}")
        arr = sitk.GetArrayViewFromImage(mask)
        mask = _from_array(((arr > 0) & (sitk.GetArrayViewFromImage(img) > 0)).astype(np.uint8), img)
        info["mask"] = {"kind": "given"}
    voxels = int(sitk.GetArrayViewFromImage(mask).sum())
    if voxels == 0:
        raise PreprocessError(f"head mask of {what} for N4 is empty; expected a foreground above Otsu")
    factors = _n4_shrink_factors(img.GetSize(), params.n4_shrink)
    coarse = _fit_log_bias(img, mask, factors, list(params.n4_iterations), params.n4_control_points,
                           params.n4_convergence, params.n4_field_spacing_mm)
    bias = np.exp(sitk.GetArrayViewFromImage(coarse))
    info.update(
        shrink_factors=factors,
        iterations=list(params.n4_iterations),
        control_points=params.n4_control_points,
        convergence=params.n4_convergence,
        mask_voxels=voxels,
        bias_min=float(bias.min()),
        bias_max=float(bias.max()),
    )
    return coarse, info


def _register(fixed: sitk.Image, moving: sitk.Image, params: PreprocessParams
              ) -> tuple[sitk.Euler3DTransform, dict[str, Any]]:
    _require_3d(fixed, "registration fixed image")
    _require_3d(moving, "registration moving image")
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    tx = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    ))
    reg = sitk.ImageRegistrationMethod()
    # Threaded Mattes MI sums its histogram in whatever order threads finish; one work unit
    # makes the result bit-identical from run to run and machine to machine (~1.5 s CPU).
    reg.SetNumberOfWorkUnits(1)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=params.reg_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(params.reg_sampling, params.reg_seed)
    reg.SetInterpolator(sitk.sitkLinear)
    # The default gradient filter differentiates the moving image on its own grid; across 5 mm
    # slices that gradient disagrees with the metric and the optimiser stalls ~1.5 mm short.
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=_REG_LEARNING_RATE_MM, minStep=_REG_MIN_STEP,
        numberOfIterations=params.reg_iterations, relaxationFactor=_REG_RELAXATION,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(params.reg_shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(params.reg_smoothing_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(tx, inPlace=True)
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as exc:  # ITK throws when too few samples overlap
        raise PreprocessError(f"rigid registration failed: {exc}") from exc
    info = {
        "metric_value": float(reg.GetMetricValue()),
        "optimizer_iterations": int(reg.GetOptimizerIteration()),
        "stop_condition": str(reg.GetOptimizerStopConditionDescription()),
    }
    return sitk.Euler3DTransform(tx), info


def register_rigid(fixed: sitk.Image, moving: sitk.Image, params: PreprocessParams) -> sitk.Transform:
    """Rigid (Euler3D) Mattes-MI registration of ``moving`` onto ``fixed``.

    Geometry-centred start, multi-resolution, random sampling with ``params.reg_seed`` and a
    single work unit, so the result is bit-identical on every run. The transform maps fixed-space points to moving-space points
    (ITK's convention), i.e. ``sitk.Resample(moving, fixed_grid, tx)`` puts moving on fixed.
    """
    tx, _ = _register(fixed, moving, params)
    return tx


def isotropic_reference(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Empty uint8 image at isotropic ``spacing_mm`` over ``image``'s physical extent.

    Same origin (first voxel centre) and direction; the voxel count per axis is the extent
    (size x spacing) divided by the new spacing, rounded.
    """
    _require_3d(image, "isotropic_reference")
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing([float(spacing_mm)] * 3)
    ref.SetOrigin(image.GetOrigin())
    ref.SetDirection(image.GetDirection())
    return ref


def resample_to_grid(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None,
                     interpolator: str) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid through ``transform`` (reference -> image
    points; ``None`` = identity). Outside the image's field of view the result is 0.

    "linear"/"bspline" give float32; "nearest" keeps the pixel type (for label masks).
    """
    if interpolator not in _INTERPOLATORS:
        raise ValueError(f"interpolator must be one of {sorted(_INTERPOLATORS)}, got {interpolator!r}")
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    if interpolator == "nearest":
        out_type = image.GetPixelID()
    else:
        image = sitk.Cast(image, sitk.sitkFloat32)
        out_type = sitk.sitkFloat32
    return sitk.Resample(image, reference, tx, _INTERPOLATORS[interpolator], 0.0, out_type)


# --------------------------------------------------------------------------------------------
# brain mask


def _ball_radius(spacing: tuple[float, ...], radius_mm: float) -> list[int]:
    return [max(0, int(round(radius_mm / s))) for s in spacing]


def _largest_component(mask: sitk.Image) -> sitk.Image:
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(sitk.Equal(labels, 1), sitk.sitkUInt8)


def brain_thresholds(image: sitk.Image) -> tuple[float, float]:
    """Two Otsu thresholds (dark | tissue | bright) of ``image``.

    Three classes keep the lower cut between CSF and brain even when the skull or enhancement
    is much brighter than the brain, which would drag a two-class Otsu up into the tissue.
    """
    f = sitk.OtsuMultipleThresholdsImageFilter()
    f.SetNumberOfThresholds(2)
    f.SetNumberOfHistogramBins(128)
    f.Execute(sitk.Cast(image, sitk.sitkFloat32))
    low, high = sorted(float(t) for t in f.GetThresholds())
    return low, high


def brain_mask(image: sitk.Image, *, thresholds: tuple[float, float] | None = None,
               opening_mm: float = 2.0, what: str = "image") -> sitk.Image:
    """uint8 brain mask of a (bias-corrected) T1-weighted head with a bright skull.

    Tissue is the middle class of :func:`brain_thresholds` (or the given ``thresholds``): the
    bright skull is excluded by intensity, the dark CSF gap separates it from the brain. An
    erosion of ``opening_mm`` cuts the partial-volume bridges that thick slices leave across
    the gap; the largest eroded component, dilated back within the tissue, is the brain.
    Enclosed holes (ventricles, necrosis, the bright enhancing rim) are filled. Assumes the
    bright class is skull/scalp/enhancement, not white matter. Empty -> PreprocessError.
    """
    _require_3d(image, "brain_mask")
    low, high = brain_thresholds(image) if thresholds is None else (float(t) for t in thresholds)
    arr = sitk.GetArrayViewFromImage(image)
    # Bright voxels (skull, scalp, enhancement) are left out; enclosed ones come back as holes.
    tissue = (arr > low) & (arr <= high)
    if not tissue.any():
        raise PreprocessError(
            f"brain mask of {what} is empty: no voxel between the tissue thresholds {low:.6g} and {high:.6g}"
        )
    candidate = _from_array(tissue.astype(np.uint8), image)
    radius = _ball_radius(image.GetSpacing(), opening_mm)
    if any(radius):
        core = sitk.BinaryErode(candidate, radius, sitk.sitkBall, 0, 1)
        if not _any(core):
            raise PreprocessError(
                f"brain mask of {what} is empty after a {opening_mm} mm erosion; expected tissue thicker "
                f"than {2 * opening_mm} mm between the thresholds {low:.6g} and {high:.6g}"
            )
        core = _largest_component(core)
        grown = sitk.GetArrayViewFromImage(sitk.BinaryDilate(core, radius, sitk.sitkBall, 0, 1)) > 0
        candidate = _from_array((grown & tissue).astype(np.uint8), image)
    mask = _largest_component(candidate)
    return sitk.Cast(sitk.BinaryFillhole(mask, fullyConnected=False, foregroundValue=1), sitk.sitkUInt8)


def _any(mask: sitk.Image) -> bool:
    return bool(sitk.GetArrayViewFromImage(mask).any())


# --------------------------------------------------------------------------------------------
# z-score


def _masked_stats(image: sitk.Image, mask: sitk.Image, what: str, mask_name: str = "mask"
                  ) -> tuple[float, float]:
    check_same_geometry(mask, image, f"z-score {mask_name} of {what}")
    arr = sitk.GetArrayViewFromImage(image)
    sel = sitk.GetArrayViewFromImage(mask) > 0
    n = int(sel.sum())
    if n == 0:
        raise PreprocessError(f"z-score {mask_name} of {what} is empty; expected at least one voxel")
    values = arr[sel].astype(np.float64)
    if not np.isfinite(values).all():
        raise PreprocessError(f"{what} has non-finite values within the mask")
    mean = float(values.mean())
    std = float(values.std())
    # Below float32 resolution of the mean the image is constant up to rounding.
    if std == 0.0 or std <= 1e-6 * abs(mean):
        raise PreprocessError(
            f"zero standard deviation of {what} within the {mask_name} ({n} voxels, all "
            f"~{mean:.6g}); "
            "the image is constant"
        )
    return mean, std


def _apply_zscore(image: sitk.Image, mean: float, std: float) -> sitk.Image:
    arr = sitk.GetArrayViewFromImage(image).astype(np.float64)
    return _from_array(((arr - mean) / std).astype(np.float32), image)


def zscore(image: sitk.Image, mask: sitk.Image, what: str = "image") -> sitk.Image:
    """float32 ``(x - mean) / std`` with mean and (population) std over the mask's voxels.

    Applied to every voxel so the whole grid shares one scale; ``what`` names the image in
    errors (empty mask, constant image).
    """
    mean, std = _masked_stats(image, mask, what)
    return _apply_zscore(image, mean, std)


# --------------------------------------------------------------------------------------------
# the study pipeline


@dataclass
class PreprocessedStudy:
    """The arrays of one study on the common output grid plus the replayable step record."""

    #: t1c, t2f (float32, z-scored) and brain, lesion, tumor, edema, overall (uint8 0/1),
    #: all the same (z, y, x) shape
    arrays: dict[str, np.ndarray]
    #: spacing / origin / direction / size (x, y, z order) of the output grid
    geometry: dict[str, Any]
    #: every step in order with the parameters and results needed to replay it (JSON-able)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def image(self, name: str) -> sitk.Image:
        """One array as a SimpleITK image on the output grid (for viewing and checks)."""
        img = sitk.GetImageFromArray(self.arrays[name])
        img.CopyInformation(_reference_from_geometry(self.geometry))
        return img


class _Pipeline:
    """Runs the study either deciding (``record is None``) or following a recorded step list.

    Both modes go through the same application code; only where a value comes from differs
    (computed now vs read from the record), which is what makes replay exact.
    """

    def __init__(self, params: PreprocessParams | None, record: list[dict[str, Any]] | None):
        self.params = params
        self._record: Iterator[dict[str, Any]] | None = iter(record) if record is not None else None
        self.steps: list[dict[str, Any]] = []

    def take(self, name: str) -> dict[str, Any] | None:
        if self._record is None:
            return None
        rec = next(self._record, None)
        if rec is None:
            raise PreprocessError(f"step record ends early: expected a {name!r} step, found none")
        if rec.get("step") != name:
            raise PreprocessError(
                f"step record out of order: expected a {name!r} step, found {rec.get('step')!r}"
            )
        return rec

    def emit(self, step: dict[str, Any]) -> None:
        self.steps.append(step)

    def finish(self) -> None:
        if self._record is not None:
            rest = [r.get("step") for r in self._record]
            if rest:
                raise PreprocessError(f"step record has unknown trailing steps {rest}")

    # -- the stages ----------------------------------------------------------------------

    def run(self, raw: dict[str, sitk.Image], spaces: dict[str, str]) -> PreprocessedStudy:
        for name, img in raw.items():
            _require_3d(img, name)
        for name, space in spaces.items():
            if space not in SEQUENCES:
                raise PreprocessError(f"{name}_space must be one of {SEQUENCES}, got {space!r}")
        self._inputs(raw, spaces)
        imgs = self._reorient(raw)
        self._check_geometry(imgs, spaces)
        seqs = {s: self._n4(s, imgs[s]) for s in SEQUENCES}
        transforms: dict[str, sitk.Transform | None] = {"t1c": None, "t2f": self._register(seqs)}
        ref = self._output_grid(seqs["t1c"])
        out: dict[str, sitk.Image] = {}
        for s in SEQUENCES:
            out[s] = self._resample(s, seqs[s], ref, s, transforms[s])
        for m in MASKS:
            out[m] = self._resample(m, imgs[m], ref, spaces[m], transforms[spaces[m]])
        coverage = self._resample("t2f_coverage", _ones_like(imgs["t2f"]), ref, "t2f", transforms["t2f"])
        out["brain"] = self._brain(out)
        for s in SEQUENCES:
            out[s] = self._zscore(s, out[s], out["brain"], coverage if s == "t2f" else None)
        arrays = {k: sitk.GetArrayFromImage(out[k]) for k in ("t1c", "t2f", "brain", *MASKS)}
        arrays.update(self._derive(arrays))
        self.finish()
        return PreprocessedStudy(
            arrays={k: arrays[k] for k in OUTPUT_ARRAYS}, geometry=geometry_of(ref), steps=self.steps
        )

    def _inputs(self, raw: dict[str, sitk.Image], spaces: dict[str, str]) -> None:
        info = {
            name: {"sha256": image_fingerprint(img), "pixel_type": img.GetPixelIDTypeAsString(),
                   "orientation": orientation_of(img), **geometry_of(img)}
            for name, img in raw.items()
        }
        rec = self.take("inputs")
        if rec is not None:
            if rec.get("version") != PREPROCESS_VERSION:
                raise PreprocessError(
                    f"steps were recorded by preprocess version {rec.get('version')!r}; this is "
                    f"{PREPROCESS_VERSION!r}, which may produce different arrays"
                )
            if rec["spaces"] != spaces:
                raise PreprocessError(f"mask spaces differ from the record: {spaces} vs recorded {rec['spaces']}")
            for name, now in info.items():
                if now["sha256"] != rec["inputs"][name]["sha256"]:
                    raise PreprocessError(
                        f"input {name!r} differs from the one the steps were recorded on "
                        f"(sha256 {now['sha256'][:12]} vs recorded {rec['inputs'][name]['sha256'][:12]})"
                    )
            self.emit(rec)
            return
        assert self.params is not None
        self.emit({
            "step": "inputs",
            "version": PREPROCESS_VERSION,
            "params": self.params.model_dump(mode="json"),
            "params_digest": self.params.digest(),
            "spaces": dict(spaces),
            "inputs": info,
        })

    def _reorient(self, raw: dict[str, sitk.Image]) -> dict[str, sitk.Image]:
        rec = self.take("reorient")
        orientation = rec["orientation"] if rec else self.params.orientation
        self.emit({"step": "reorient", "orientation": orientation})
        return {name: reorient(img, orientation) for name, img in raw.items()}

    def _check_geometry(self, imgs: dict[str, sitk.Image], spaces: dict[str, str]) -> None:
        rec = self.take("check_geometry")
        tol = rec["tol"] if rec else self.params.geometry_tol
        for m in MASKS:
            check_same_geometry(imgs[m], imgs[spaces[m]], f"mask {m!r} (drawn on {spaces[m]})", tol)
        self.emit({"step": "check_geometry", "tol": float(tol),
                   "pairs": [{"mask": m, "image": spaces[m]} for m in MASKS]})

    def _n4(self, name: str, image: sitk.Image) -> sitk.Image:
        img = sitk.Cast(image, sitk.sitkFloat32)
        rec = self.take("n4_bias_correct")
        if rec is None:
            if self.params.n4_enabled:
                coarse, info = _n4_fit(img, None, self.params, name)
                rec = {"step": "n4_bias_correct", "image": name, "enabled": True, **info,
                       "log_bias_field": _field_to_record(coarse)}
            else:
                rec = {"step": "n4_bias_correct", "image": name, "enabled": False}
        elif rec["image"] != name:
            raise PreprocessError(f"step record: expected N4 of {name}, found N4 of {rec['image']}")
        self.emit(rec)
        if not rec["enabled"]:
            return img
        return _apply_log_bias(img, _field_from_record(rec["log_bias_field"]))

    def _register(self, seqs: dict[str, sitk.Image]) -> sitk.Transform:
        rec = self.take("register_rigid")
        if rec is None:
            p = self.params
            if p.registration == "rigid":
                tx, info = _register(seqs["t1c"], seqs["t2f"], p)
                settings = {
                    "metric": "mattes_mi", "bins": p.reg_bins, "sampling": p.reg_sampling,
                    "seed": p.reg_seed, "iterations": p.reg_iterations,
                    "shrink_factors": list(p.reg_shrink_factors),
                    "smoothing_mm": list(p.reg_smoothing_mm), "initializer": "geometry",
                    "optimizer": {"kind": "regular_step_gd", "learning_rate_mm": _REG_LEARNING_RATE_MM,
                                  "min_step": _REG_MIN_STEP, "relaxation": _REG_RELAXATION},
                    "moving_gradient_filter": False, "work_units": 1,
                }
            else:
                tx, info, settings = sitk.Euler3DTransform(), {}, {}
            rec = {"step": "register_rigid", "method": p.registration, "fixed": "t1c",
                   "moving": "t2f", "settings": settings,
                   "transform": transform_to_record(tx), **info}
        self.emit(rec)
        # Rebuilt from the record in both modes so decide and replay resample identically.
        return transform_from_record(rec["transform"])

    def _output_grid(self, t1c: sitk.Image) -> sitk.Image:
        rec = self.take("output_grid")
        if rec is None:
            ref = isotropic_reference(t1c, self.params.spacing_mm)
            rec = {"step": "output_grid", "like": "t1c", "spacing_mm": self.params.spacing_mm,
                   "geometry": geometry_of(ref)}
        self.emit(rec)
        return _reference_from_geometry(rec["geometry"])

    def _resample(self, name: str, image: sitk.Image, ref: sitk.Image, space: str,
                  transform: sitk.Transform | None) -> sitk.Image:
        rec = self.take("resample")
        is_image = name in SEQUENCES
        if rec is not None:
            if rec["image"] != name:
                raise PreprocessError(f"step record: expected resampling of {name}, found {rec['image']}")
            interp = rec["interpolator"]
            tx = transform_from_record(rec["transform"]) if rec["transform"] else None
        else:
            interp = self.params.image_interpolator if is_image else "nearest"
            tx = transform
        if not is_image:
            arr = sitk.GetArrayViewFromImage(image)
            image = _from_array((arr > 0).astype(np.uint8), image)
        out = resample_to_grid(image, ref, tx, interp)
        step = {"step": "resample", "image": name, "space": space, "interpolator": interp,
                "transform": transform_to_record(tx) if tx is not None else None}
        if not is_image:
            step["binarize"] = ">0"
            voxels = int(sitk.GetArrayViewFromImage(out).sum())
            step["voxels"] = voxels
            if voxels == 0 and name in MASKS:
                raise PreprocessError(
                    f"mask {name!r} is empty after resampling onto the output grid; expected at "
                    f"least one voxel (it had {int((sitk.GetArrayViewFromImage(image) > 0).sum())} "
                    f"in {space} space)"
                )
        self.emit(rec if rec is not None else step)
        return out

    def _brain(self, out: dict[str, sitk.Image]) -> sitk.Image:
        rec = self.take("brain_mask")
        if rec is not None:
            thr, opening = tuple(rec["thresholds"]), rec["opening_mm"]
        else:
            thr, opening = brain_thresholds(out["t1c"]), self.params.brain_opening_mm
        mask = brain_mask(out["t1c"], thresholds=thr, opening_mm=opening, what="t1c")
        arr = sitk.GetArrayViewFromImage(mask) > 0
        own = int(arr.sum())
        for m in MASKS:
            arr = arr | (sitk.GetArrayViewFromImage(out[m]) > 0)
        brain = _from_array(arr.astype(np.uint8), mask)
        self.emit(rec if rec is not None else {
            "step": "brain_mask", "from": "t1c", "thresholds": list(thr), "opening_mm": float(opening),
            "union_with": list(MASKS), "voxels_before_union": own, "voxels": int(arr.sum()),
        })
        return brain

    def _zscore(self, name: str, image: sitk.Image, brain: sitk.Image,
                coverage: sitk.Image | None) -> sitk.Image:
        rec = self.take("zscore")
        if rec is None:
            mask, fraction = brain, 1.0
            if coverage is not None:
                b = sitk.GetArrayViewFromImage(brain) > 0
                inside = b & (sitk.GetArrayViewFromImage(coverage) > 0)
                fraction = float(inside.sum() / max(1, b.sum()))
                if fraction < MIN_T2F_BRAIN_COVERAGE:
                    raise PreprocessError(
                        f"{name} covers only {fraction:.0%} of the brain mask after registration; "
                        f"expected at least {MIN_T2F_BRAIN_COVERAGE:.0%}"
                    )
                mask = _from_array(inside.astype(np.uint8), brain)
            mean, std = _masked_stats(image, mask, name, "brain mask")
            rec = {"step": "zscore", "image": name, "mask": "brain" if coverage is None else
                   "brain & t2f_coverage", "brain_coverage": fraction, "mean": mean, "std": std}
        elif rec["image"] != name:
            raise PreprocessError(f"step record: expected z-score of {name}, found {rec['image']}")
        self.emit(rec)
        return _apply_zscore(image, rec["mean"], rec["std"])

    def _derive(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rec = self.take("derive_rois")
        lesion, tumor = arrays["lesion"] > 0, arrays["tumor"] > 0
        derived = {
            "edema": (lesion & ~tumor).astype(np.uint8),
            "overall": (lesion | tumor).astype(np.uint8),
        }
        if not derived["edema"].any():
            raise PreprocessError(
                "ROI 'edema' (lesion minus tumor) is empty; expected the lesion to extend beyond the tumor"
            )
        self.emit(rec if rec is not None else {
            "step": "derive_rois", "edema": "lesion & ~tumor", "overall": "lesion | tumor",
            "voxels": {k: int(v.sum()) for k, v in derived.items()},
        })
        return derived


def _ones_like(image: sitk.Image) -> sitk.Image:
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return ones


def preprocess_study(t1c: sitk.Image, t2f: sitk.Image, lesion: sitk.Image, lesion_space: Space,
                     tumor: sitk.Image, tumor_space: Space, params: PreprocessParams) -> PreprocessedStudy:
    """Run the whole pipeline on one study and record every decision.

    Reorient -> mask-grid checks -> N4 -> rigid T2f->T1c registration -> 1 mm grid over the T1c
    -> resample (images: ``params.image_interpolator``; masks: nearest, through their own
    space's transform, then > 0) -> brain mask (T1c, union lesion and tumor) -> z-score each
    sequence in the brain -> edema = lesion & ~tumor, overall = lesion | tumor.
    """
    return _Pipeline(params, None).run(
        {"t1c": t1c, "t2f": t2f, "lesion": lesion, "tumor": tumor},
        {"lesion": lesion_space, "tumor": tumor_space},
    )


def replay(steps: list[dict[str, Any]], t1c: sitk.Image, t2f: sitk.Image, lesion: sitk.Image,
           lesion_space: Space, tumor: sitk.Image, tumor_space: Space) -> PreprocessedStudy:
    """Rebuild a study's arrays from its recorded ``steps`` without re-deciding anything.

    The recorded bias fields, transform, thresholds and z-score statistics are applied as
    stored (nothing is fitted or optimised), so the arrays do not depend on the thread count
    that replays them. The inputs
    must be the recorded ones (sha256 checked) and the record must come from this
    ``PREPROCESS_VERSION``.
    """
    return _Pipeline(None, steps).run(
        {"t1c": t1c, "t2f": t2f, "lesion": lesion, "tumor": tumor},
        {"lesion": lesion_space, "tumor": tumor_space},
    )


def steps_to_json(steps: list[dict[str, Any]]) -> str:
    """Canonical JSON of a step record (what a caller stores next to the arrays)."""
    return json.dumps(steps, sort_keys=True, separators=(",", ":"), allow_nan=False)


__all__ = [
    "MIN_T2F_BRAIN_COVERAGE",
    "OUTPUT_ARRAYS",
    "PREPROCESS_VERSION",
    "PreprocessError",
    "PreprocessParams",
    "PreprocessedStudy",
    "brain_mask",
    "brain_thresholds",
    "check_same_geometry",
    "geometry_of",
    "head_mask",
    "image_fingerprint",
    "isotropic_reference",
    "n4_bias_correct",
    "preprocess_study",
    "register_rigid",
    "reorient",
    "replay",
    "resample_to_grid",
    "steps_to_json",
    "transform_from_record",
    "transform_to_record",
    "zscore",
]
