"""The two fits of the pipeline: the N4 bias field and the rigid T2f -> T1c registration.

Both are optimisations whose result depends on sampling and thread scheduling, so the pipeline
records what they found (a coarse log bias field, an Euler3D transform) and a replay applies
the record instead of fitting again. Pure functions on SimpleITK images.
"""

from __future__ import annotations

import math
from typing import Any, NotRequired, TypedDict

import numpy as np
import SimpleITK as sitk

from ingest.preprocess.field import SEPARABLE, field_on_grid, shares_grid_frame
from ingest.preprocess.ops import check_same_geometry, from_array, require_3d
from ingest.preprocess.params import (
    FIELD_DECIMALS,
    REG_LEARNING_RATE_MM,
    REG_MIN_STEP,
    REG_RELAXATION,
    PreprocessError,
    PreprocessParams,
)

__all__ = [
    "N4Fit",
    "RigidFit",
    "apply_log_bias",
    "fit_n4",
    "fit_rigid",
    "head_mask",
    "n4_bias_correct",
    "register_rigid",
    "registration_mask",
    "rigid_settings",
]


class N4Fit(TypedDict):
    """What an N4 fit used and found (recorded next to its log bias field)."""

    mask: dict[str, Any]  # {"kind": "otsu", "threshold": t} or {"kind": "given"}
    shrink_factors: list[int]
    iterations: list[int]
    control_points: int
    convergence: float
    mask_voxels: int
    bias_min: float
    bias_max: float


class RigidFit(TypedDict):
    """How the rigid registration ended (recorded next to its transform)."""

    metric_value: float
    optimizer_iterations: int
    stop_condition: str
    #: the fixed mask's share of the T1c field of view (with ``reg_fixed_mask: head`` only)
    fixed_mask_share: NotRequired[float]


# --------------------------------------------------------------------------------------------
# N4 bias correction


def _otsu_threshold(image: sitk.Image) -> float:
    f = sitk.OtsuThresholdImageFilter()
    f.SetInsideValue(0)
    f.SetOutsideValue(1)
    f.Execute(image)
    return float(f.GetThreshold())


def _above(image: sitk.Image, threshold: float) -> sitk.Image:
    """uint8 mask of voxels strictly above ``threshold`` that are also > 0 (N4 takes logs)."""
    arr = sitk.GetArrayViewFromImage(image)
    return from_array(((arr > threshold) & (arr > 0)).astype(np.uint8), image)


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
    values = np.round(sitk.GetArrayFromImage(coarse).astype(np.float64), FIELD_DECIMALS)
    return from_array(values, coarse)


def apply_log_bias(image: sitk.Image, coarse_log_bias: sitk.Image, interpolation: str | None = None
                   ) -> sitk.Image:
    """float32 ``image / exp(field)``, the coarse field cubic-B-spline interpolated.

    ``interpolation``: None (``sitk.Resample``; records without ``field_interpolation``) or
    :data:`~ingest.preprocess.field.SEPARABLE` (one axis at a time, ``n4_field_interpolation:
    separable``; the record names it, so a replay applies the field the same way).
    """
    if interpolation == SEPARABLE and shares_grid_frame(coarse_log_bias, image):
        field = field_on_grid(coarse_log_bias, image)
    elif interpolation in (None, SEPARABLE):
        field = sitk.GetArrayFromImage(sitk.Resample(
            coarse_log_bias, image, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkBSpline, 0.0,
            sitk.sitkFloat64))
    else:
        raise PreprocessError(f"unknown N4 field interpolation {interpolation!r}",
                              fix="replay the record with the preprocess version that wrote it")
    arr = sitk.GetArrayViewFromImage(image).astype(np.float64)
    return from_array((arr / np.exp(field)).astype(np.float32), image)


def fit_n4(img: sitk.Image, mask: sitk.Image | None, params: PreprocessParams, what: str
           ) -> tuple[sitk.Image, N4Fit]:
    """Fit N4 on float32 ``img``: the coarse, rounded log bias field and what the fit used.

    ``mask`` None fits on the Otsu head mask; an empty mask fails naming ``what``.
    """
    require_3d(img, what)
    if mask is None:
        threshold = _otsu_threshold(img)
        mask = _above(img, threshold)
        mask_info: dict[str, Any] = {"kind": "otsu", "threshold": threshold}
    else:
        check_same_geometry(mask, img, f"N4 mask of {what}")
        arr = sitk.GetArrayViewFromImage(mask)
        mask = from_array(((arr > 0) & (sitk.GetArrayViewFromImage(img) > 0)).astype(np.uint8), img)
        mask_info = {"kind": "given"}
    voxels = int(sitk.GetArrayViewFromImage(mask).sum())
    if voxels == 0:
        raise PreprocessError(f"head mask of {what} for N4 is empty; expected a foreground above Otsu",
                              fix="check that the image is not empty or all one value")
    factors = _n4_shrink_factors(img.GetSize(), params.n4_shrink)
    coarse = _fit_log_bias(img, mask, factors, list(params.n4_iterations), params.n4_control_points,
                           params.n4_convergence, params.n4_field_spacing_mm)
    bias = np.exp(sitk.GetArrayViewFromImage(coarse))
    return coarse, N4Fit(
        mask=mask_info,
        shrink_factors=factors,
        iterations=list(params.n4_iterations),
        control_points=params.n4_control_points,
        convergence=params.n4_convergence,
        mask_voxels=voxels,
        bias_min=float(bias.min()),
        bias_max=float(bias.max()),
    )


def n4_bias_correct(image: sitk.Image, mask: sitk.Image | None, params: PreprocessParams) -> sitk.Image:
    """N4 bias-field correction, fitted on a shrunk copy and applied at full resolution.

    ``mask`` (label > 0) selects the voxels the field is fitted on; ``None`` uses the Otsu
    head mask. Returns float32. The overall scale is arbitrary: downstream z-scores remove it.
    """
    img = sitk.Cast(image, sitk.sitkFloat32)
    coarse, _ = fit_n4(img, mask, params, "image")
    return apply_log_bias(img, coarse,
                          SEPARABLE if params.n4_field_interpolation == "separable" else None)


# --------------------------------------------------------------------------------------------
# rigid registration


def _level_size(fixed: sitk.Image, factor: int) -> list[int]:
    """The fixed image's size at a pyramid level (ITK's shrink: floor, at least 1)."""
    return [max(1, int(n) // int(factor)) for n in fixed.GetSize()]


def lattice_stride(size: list[int], target: float) -> int:
    """The smallest stride >= ``target`` sharing no factor with the row and column lengths.

    ITK's REGULAR sampling takes every stride-th voxel in memory order; a stride with a common
    factor with the row length visits only some columns (e.g. stride 120 on rows of 200: five
    sagittal planes).
    """
    stride = max(1, math.ceil(target))
    while math.gcd(stride, size[0]) != 1 or math.gcd(stride, size[1]) != 1:
        stride += 1
    return stride


def sampling_per_level(fixed: sitk.Image, params: PreprocessParams, inside: float = 1.0
                       ) -> list[float]:
    """The share of each level's voxels the metric draws: ``reg_sampling``, capped so that no
    level draws more than ``reg_max_samples`` points (a level's grid is the fixed image shrunk by
    its factor). Mattes MI needs no more for six parameters; the finest level of a clinical T1c
    would otherwise draw a million. ``inside`` is the share of the field of view inside the fixed
    mask: ITK draws over the whole grid and drops the points outside the mask, so the share is
    divided by it (at most 1) to keep that many points inside. With the "lattice" strategy the
    share is one over a stride (:func:`lattice_stride`; ITK takes ``ceil(1 / share)`` as the
    stride, hence the half)."""
    out = []
    for f in params.reg_shrink_factors:
        size = _level_size(fixed, f)
        voxels = float(np.prod(size))
        cap = 1.0 if params.reg_max_samples is None else params.reg_max_samples / voxels
        share = float(min(min(params.reg_sampling, cap) / inside, 1.0))
        if params.reg_sampling_strategy == "lattice":
            stride = lattice_stride(size, 1.0 / share)
            share = 1.0 if stride == 1 else 1.0 / (stride - 0.5)
        out.append(share)
    return out


def rigid_settings(params: PreprocessParams) -> dict[str, Any]:
    """The settings :func:`fit_rigid` runs with, as recorded with its transform."""
    p = params
    return {
        "metric": "mattes_mi", "bins": p.reg_bins, "sampling": p.reg_sampling,
        "max_samples_per_level": p.reg_max_samples,
        "seed": p.reg_seed, "iterations": p.reg_iterations,
        "shrink_factors": list(p.reg_shrink_factors),
        "smoothing_mm": list(p.reg_smoothing_mm), "initializer": "geometry",
        "optimizer": {"kind": "regular_step_gd", "learning_rate_mm": REG_LEARNING_RATE_MM,
                      "min_step": REG_MIN_STEP, "relaxation": REG_RELAXATION},
        "moving_gradient_filter": False, "work_units": 1,
        # recorded only when set, so records of 1.2.0's settings stay as 1.2.0 wrote them
        **({"sampling_strategy": p.reg_sampling_strategy}
           if p.reg_sampling_strategy != "random" else {}),
        **({"fixed_mask": {"kind": p.reg_fixed_mask, "dilation_mm": p.reg_mask_dilation_mm}}
           if p.reg_fixed_mask != "none" else {}),
    }


def registration_mask(fixed: sitk.Image, dilation_mm: float) -> tuple[sitk.Image, float]:
    """The metric's fixed mask: :func:`head_mask` dilated by ``dilation_mm`` per axis (at least one
    voxel; the head's outline is where the two sequences' contrast meets), and its share of the
    field of view."""
    mask = head_mask(fixed)
    if dilation_mm > 0:
        radius = [max(1, round(dilation_mm / s)) for s in fixed.GetSpacing()]
        mask = sitk.BinaryDilate(mask, radius)
    inside = float(sitk.GetArrayViewFromImage(mask).mean())
    if inside == 0.0:
        raise PreprocessError("the T1c has no foreground above Otsu for the registration mask",
                              fix="check the T1c series (blank or constant?), or set "
                                  "reg_fixed_mask: none in the preprocessing file")
    return mask, inside


def fit_rigid(fixed: sitk.Image, moving: sitk.Image, params: PreprocessParams
              ) -> tuple[sitk.Euler3DTransform, RigidFit]:
    """Euler3D Mattes-MI fit of ``moving`` onto ``fixed`` (:func:`rigid_settings`) and how it ended."""
    require_3d(fixed, "registration fixed image")
    require_3d(moving, "registration moving image")
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
    reg.SetMetricSamplingStrategy(reg.REGULAR if params.reg_sampling_strategy == "lattice"
                                  else reg.RANDOM)
    inside = 1.0
    if params.reg_fixed_mask == "head":
        mask, inside = registration_mask(fixed, params.reg_mask_dilation_mm)
        reg.SetMetricFixedMask(mask)
    reg.SetMetricSamplingPercentagePerLevel(sampling_per_level(fixed, params, inside),
                                            params.reg_seed)
    reg.SetInterpolator(sitk.sitkLinear)
    # The default gradient filter differentiates the moving image on its own grid; across 5 mm
    # slices that gradient disagrees with the metric and the optimiser stalls ~1.5 mm short.
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=REG_LEARNING_RATE_MM, minStep=REG_MIN_STEP,
        numberOfIterations=params.reg_iterations, relaxationFactor=REG_RELAXATION,
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
        raise PreprocessError(
            f"rigid registration failed: {exc}",
            fix="check that the T2f and T1c series show the same head (a wrong or cut series?)",
        ) from exc
    info = RigidFit(
        metric_value=float(reg.GetMetricValue()),
        optimizer_iterations=int(reg.GetOptimizerIteration()),
        stop_condition=str(reg.GetOptimizerStopConditionDescription()),
    )
    if params.reg_fixed_mask == "head":
        info["fixed_mask_share"] = round(inside, 6)
    return sitk.Euler3DTransform(tx), info


def register_rigid(fixed: sitk.Image, moving: sitk.Image, params: PreprocessParams) -> sitk.Transform:
    """Rigid (Euler3D) Mattes-MI registration of ``moving`` onto ``fixed``.

    Geometry-centred start, multi-resolution, random sampling with ``params.reg_seed`` and a
    single work unit, so the result is bit-identical on every run. The transform maps
    fixed-space points to moving-space points (ITK's convention), i.e. ``sitk.Resample(moving, fixed_grid, tx)`` puts moving on fixed.
    """
    tx, _ = fit_rigid(fixed, moving, params)
    return tx
