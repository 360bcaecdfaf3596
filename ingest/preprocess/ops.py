"""The pure operations on SimpleITK images: grids, reorientation, resampling, brain mask, z-score.

No file I/O, no Dask, no global state, threading left alone. Each operation takes every value it
depends on as an argument, so the pipeline can pass either a freshly decided value or a recorded
one and get the same voxels. Bad input fails here, naming the image: :class:`PreprocessError`.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from atrx.geometry import Grid, geometry_of, reference_from_geometry
from ingest.preprocess.params import PreprocessError, check_orientation

__all__ = [
    "Grid",
    "apply_zscore",
    "binarize",
    "brain_mask",
    "brain_thresholds",
    "check_same_geometry",
    "derive_rois",
    "from_array",
    "geometry_of",
    "isotropic_reference",
    "masked_stats",
    "ones_like",
    "orientation_of",
    "reference_from_geometry",
    "reorient",
    "require_3d",
    "resample_to_grid",
    "tissue_threshold",
    "zscore",
]

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "nearest": sitk.sitkNearestNeighbor,
}


# --------------------------------------------------------------------------------------------
# grids and orientation


def require_3d(image: sitk.Image, what: str) -> None:
    """Refuse anything but a 3-D scalar image, naming it: every operation below assumes one."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise PreprocessError(
            f"{what}: expected a 3-D scalar image, found a {image.GetDimension()}-D image with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel",
            fix="re-export it as one 3-D grey-scale volume",
        )


def _fmt(values: tuple[float, ...] | list[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def from_array(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    """``array`` (z, y, x) as an image on ``like``'s grid."""
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(like)
    return out


def orientation_of(image: sitk.Image) -> str:
    """The three-letter DICOM orientation code closest to ``image``'s direction cosines."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def reorient(image: sitk.Image, orientation: str = "LPS") -> sitk.Image:
    """Permute/flip the voxel axes so the grid is (closest to) ``orientation``.

    No resampling: every voxel keeps its value and physical position, so masks reoriented the
    same way stay aligned with their image.
    """
    require_3d(image, "reorient")
    return sitk.DICOMOrient(image, check_orientation(orientation))


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
            f"{what} does not lie on its image's grid (mask vs image): " + "; ".join(problems),
            fix="re-export the mask on the grid of the image it was drawn on, or correct its space "
                "(masks.<name>.space) in the center file",
        )


def isotropic_reference(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Empty uint8 image at isotropic ``spacing_mm`` over ``image``'s physical extent.

    Same origin (first voxel centre) and direction; the voxel count per axis is the extent
    (size x spacing) divided by the new spacing, rounded.
    """
    require_3d(image, "isotropic_reference")
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


def binarize(image: sitk.Image) -> sitk.Image:
    """uint8 ``image > 0`` on the same grid: any label value counts as inside."""
    return from_array((sitk.GetArrayViewFromImage(image) > 0).astype(np.uint8), image)


def ones_like(image: sitk.Image) -> sitk.Image:
    """uint8 ones on ``image``'s grid: resampled, it marks the field of view on another grid."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return ones


# --------------------------------------------------------------------------------------------
# brain mask


def _ball_radius(spacing: tuple[float, ...], radius_mm: float) -> list[int]:
    return [max(0, int(round(radius_mm / s))) for s in spacing]


def _largest_component(mask: sitk.Image) -> sitk.Image:
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(sitk.Equal(labels, 1), sitk.sitkUInt8)


def brain_thresholds(image: sitk.Image) -> tuple[float, float]:
    """Two Otsu thresholds (dark | tissue | bright) of ``image``: the 1.0.0 rule's cuts.

    Kept so records made with ``exclude_bright`` (every 1.0.0 record) decide and replay as
    they did. On T1c the bright class holds white matter, so it is not a skull/scalp class.
    """
    f = sitk.OtsuMultipleThresholdsImageFilter()
    f.SetNumberOfThresholds(2)
    f.SetNumberOfHistogramBins(128)
    f.Execute(sitk.Cast(image, sitk.sitkFloat32))
    low, high = sorted(float(t) for t in f.GetThresholds())
    return low, high


def tissue_threshold(image: sitk.Image) -> float:
    """One Otsu threshold (background and CSF | tissue) of the whole ``image``.

    The head/background cut of a T1c lands between CSF and grey matter (about half-way from
    background to white matter on every synthetic center), where the lower cut of a
    three-class Otsu lands between background and CSF, which bridges skull and brain.
    """
    f = sitk.OtsuMultipleThresholdsImageFilter()
    f.SetNumberOfThresholds(1)
    f.SetNumberOfHistogramBins(128)
    f.Execute(sitk.Cast(image, sitk.sitkFloat32))
    return float(f.GetThresholds()[0])


def _tissue(arr: np.ndarray, thresholds: tuple[float, ...], exclude_bright: bool, what: str
            ) -> tuple[np.ndarray, str]:
    """The tissue candidate of either rule and its description for error messages."""
    want = 2 if exclude_bright else 1
    if len(thresholds) != want:
        raise ValueError(f"brain mask of {what}: expected {want} threshold(s) with "
                         f"exclude_bright={exclude_bright}, got {list(thresholds)}")
    if exclude_bright:
        low, high = thresholds
        return (arr > low) & (arr <= high), f"between the thresholds {low:.6g} and {high:.6g}"
    return arr > thresholds[0], f"above the threshold {thresholds[0]:.6g}"


def brain_mask(image: sitk.Image, *, thresholds: tuple[float, ...] | None = None,
               opening_mm: float = 3.0, exclude_bright: bool = False, what: str = "image"
               ) -> sitk.Image:
    """uint8 brain mask (grey + white matter, filled) of a bias-corrected T1-weighted head.

    Tissue is everything above :func:`tissue_threshold` (or the one given threshold): white
    matter and enhancement can be as bright as skull or scalp, so brightness cannot exclude
    them; the dark CSF gap separates them. An erosion of ``opening_mm`` cuts the partial-volume
    bridges that thick slices leave across the gap; the largest eroded component, dilated back
    within the tissue, is the brain; enclosed holes (ventricles, necrosis) are filled.
    ``exclude_bright`` is the 1.0.0 rule (tissue = the middle class of :func:`brain_thresholds`,
    two thresholds), kept so its records replay exactly. Empty -> PreprocessError.
    """
    require_3d(image, "brain_mask")
    if thresholds is None:
        thresholds = brain_thresholds(image) if exclude_bright else (tissue_threshold(image),)
    thr = tuple(float(t) for t in thresholds)
    arr = sitk.GetArrayViewFromImage(image)
    tissue, where = _tissue(arr, thr, exclude_bright, what)
    if not tissue.any():
        raise PreprocessError(
            f"brain mask of {what} is empty: no voxel {where}",
            fix="check that the T1c series is a contrast-enhanced T1 of the whole head",
        )
    candidate = from_array(tissue.astype(np.uint8), image)
    radius = _ball_radius(image.GetSpacing(), opening_mm)
    if any(radius):
        core = sitk.BinaryErode(candidate, radius, sitk.sitkBall, 0, 1)
        if not _any(core):
            raise PreprocessError(
                f"brain mask of {what} is empty after a {opening_mm} mm erosion; expected tissue thicker "
                f"than {2 * opening_mm} mm {where}",
                fix="check that the T1c series is a contrast-enhanced T1 of the whole head",
            )
        dilated = sitk.BinaryDilate(_largest_component(core), radius, sitk.sitkBall, 0, 1)
        # A view does not keep its image alive: 1.0.0 viewed the unnamed dilation, which could be
        # freed before it was read (zeros in Dask workers: an empty mask, the lesion as "brain").
        grown = sitk.GetArrayViewFromImage(dilated) > 0
        candidate = from_array((grown & tissue).astype(np.uint8), image)
    mask = _largest_component(candidate)
    return sitk.Cast(sitk.BinaryFillhole(mask, fullyConnected=False, foregroundValue=1), sitk.sitkUInt8)


def _any(mask: sitk.Image) -> bool:
    return bool(sitk.GetArrayViewFromImage(mask).any())


# --------------------------------------------------------------------------------------------
# z-score


def masked_stats(image: sitk.Image, mask: sitk.Image, what: str, mask_name: str = "mask"
                  ) -> tuple[float, float]:
    """Mean and population std of ``image`` in ``mask``; an empty mask or a constant image fails."""
    check_same_geometry(mask, image, f"z-score {mask_name} of {what}")
    arr = sitk.GetArrayViewFromImage(image)
    sel = sitk.GetArrayViewFromImage(mask) > 0
    n = int(sel.sum())
    if n == 0:
        raise PreprocessError(f"z-score {mask_name} of {what} is empty; expected at least one voxel")
    values = arr[sel].astype(np.float64)
    if not np.isfinite(values).all():
        raise PreprocessError(f"{what} has non-finite values within the mask",
                              fix="re-export the image; it holds NaN or infinite voxels")
    mean = float(values.mean())
    std = float(values.std())
    # Below float32 resolution of the mean the image is constant up to rounding.
    if std == 0.0 or std <= 1e-6 * abs(mean):
        raise PreprocessError(
            f"zero standard deviation of {what} within the {mask_name} ({n} voxels, all "
            f"~{mean:.6g}); "
            "the image is constant",
            fix="re-export the series; it holds no image contrast",
        )
    return mean, std


def apply_zscore(image: sitk.Image, mean: float, std: float) -> sitk.Image:
    """float32 ``(x - mean) / std`` on every voxel, with given (decided or recorded) statistics."""
    arr = sitk.GetArrayViewFromImage(image).astype(np.float64)
    return from_array(((arr - mean) / std).astype(np.float32), image)


def zscore(image: sitk.Image, mask: sitk.Image, what: str = "image") -> sitk.Image:
    """float32 ``(x - mean) / std`` with mean and (population) std over the mask's voxels.

    Applied to every voxel so the whole grid shares one scale; ``what`` names the image in
    errors (empty mask, constant image).
    """
    mean, std = masked_stats(image, mask, what)
    return apply_zscore(image, mean, std)


# --------------------------------------------------------------------------------------------
# derived ROIs


def derive_rois(lesion: np.ndarray, tumor: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 ``edema = lesion & ~tumor`` and ``overall = lesion | tumor``; an empty edema fails."""
    lesion, tumor = lesion > 0, tumor > 0
    derived = {
        "edema": (lesion & ~tumor).astype(np.uint8),
        "overall": (lesion | tumor).astype(np.uint8),
    }
    if not derived["edema"].any():
        raise PreprocessError(
            "ROI 'edema' (lesion minus tumor) is empty; expected the lesion to extend beyond the tumor",
            fix="check the lesion mask: it must cover the whole abnormality (edema and tumor), "
                "not the tumor alone",
        )
    return derived
