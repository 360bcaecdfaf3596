"""The ROI checks, crops and image filters of pyradiomics' ``featureextractor.execute``.

Only the feature arithmetic of the engine is its own; everything that makes the images the
features are computed on is pyradiomics' pipeline, step for step, with the same SimpleITK and
pywt operations (``getMask``, ``checkMask``, ``cropToTumorMask`` with ``preCrop``/``padDistance``,
``getOriginalImage``, ``getLoGImage``, ``getWaveletImage``/``_swt3``), so that filtered voxels are
identical to pyradiomics'. Two filters run in numba instead of their library, as the very same
arithmetic: SimpleITK's ``LaplacianRecursiveGaussianImageFilter`` (:mod:`features.engine.log_filter`:
ITK 5.4's recursion, coefficients, boundary terms, pass order and float32 intermediates,
vectorised across lines; ``tests/test_engine_log.py``) and the one-level SWT that ``pywt.swtn``
runs per axis (:mod:`features.engine._swt_kernels`: pywt's periodised convolution with its order
of products; ``tests/test_engine_kernels.py``), both bit for bit equal to the libraries' output.
Arrays are in SimpleITK's numpy order (z, y, x).

The features use only the filtered voxels in the ROI's bounding box, so the filters run on the
whole crop but only where that box needs them (``box`` of :func:`log_image` and
:func:`wavelet_images`): a separable pass along one axis needs whole lines along it, and later
passes need the earlier ones' output only on the lines they filter, so each pass computes only
the box's range along its own axis (a recursion runs up to the box's end and back down to its
start; a convolution's outputs are independent). Every kept value is the whole line's, so the
result is bit for bit the full-crop filtered image cut to the box (``tests/test_engine_log.py``,
``tests/test_engine_core.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pywt
import SimpleITK as sitk
from pywt._extensions._pywt import _check_dtype
from pywt._extensions._swt import swt_axis as _swt_axis  # what pywt.swtn runs per axis

from features.engine._swt_kernels import swt_range
from features.engine.log_filter import check_box, laplacian_recursive_gaussian
from features.engine.settings import EngineParams, ImageTypeParams
from features.errors import FeatureError

__all__ = ["Roi", "check_mask", "crop_region", "crop_to_mask", "images", "log_image", "log_name",
           "log_sigmas", "prepare", "wavelet_images"]

_MASK_FIX = "check that the mask is the ROI's binary mask on the image grid"
_GEOMETRY_FIX = ("resample the mask onto the image grid, raise setting.geometryTolerance, or set "
                 "setting.correctMask: true")
# _checkROI's allowance for machine precision when correctMask compares physical bounds
_ROI_BOUNDS_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Roi:
    """A checked ROI: the image the filters run on, and the ROI's bounding box in it.

    ``image`` is the input image, or with ``preCrop`` its crop to the ROI plus ``padDistance``;
    ``array`` its voxels; ``box`` the (z, y, x) slices of the ROI's bounding box into ``array``;
    ``mask`` the ROI inside that box (the box feature classes and shape work on); ``offset`` the
    (z, y, x) index in the input image of ``array[0, 0, 0]`` (zeros without ``preCrop``).
    """

    image: sitk.Image
    array: np.ndarray
    box: tuple[slice, slice, slice]
    mask: np.ndarray
    offset: tuple[int, int, int] = (0, 0, 0)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (x, y, z) in mm, as ``image.GetSpacing()``."""
        return tuple(self.image.GetSpacing())


def prepare(image: sitk.Image, mask: sitk.Image, params: EngineParams) -> Roi:
    """Check the mask and crop as ``loadImage`` + ``checkMask`` do; FeatureError names the reason."""
    if not isinstance(image, sitk.Image) or not isinstance(mask, sitk.Image):
        raise TypeError(f"expected SimpleITK images, got image={type(image).__name__}, "
                        f"mask={type(mask).__name__}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise FeatureError(
            f"expected a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)", fix=_MASK_FIX)
    if mask.GetDimension() != 3:
        raise FeatureError(f"image/mask dimension mismatch: a 3D image and a "
                           f"{mask.GetDimension()}D mask", fix=_MASK_FIX)
    mask = _get_mask(mask, params.label)
    bounds, mask = check_mask(image, mask, params)
    offset = (0, 0, 0)
    if params.pre_crop:
        offset = tuple(int(v) for v in np.maximum(bounds[:, 0] - params.pad_distance, 0))
        image, mask = crop_to_mask(image, mask, bounds, params.pad_distance)
        bounds, mask = check_mask(image, mask, params)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in bounds)
    roi = sitk.GetArrayViewFromImage(mask)[box] == params.label
    return Roi(image=image, array=sitk.GetArrayFromImage(image), box=box, mask=roi, offset=offset)


def _get_mask(mask: sitk.Image, label: int) -> sitk.Image:
    """``imageoperations.getMask``: channel 0 of a vector mask, UInt32, the label present."""
    if mask.GetNumberOfComponentsPerPixel() > 1:
        selector = sitk.VectorIndexSelectionCastImageFilter()
        selector.SetIndex(0)
        mask = selector.Execute(mask)
    mask = sitk.Cast(mask, sitk.sitkUInt32)
    values = sitk.GetArrayViewFromImage(mask)
    if values.min() == values.max():
        raise FeatureError("no labels found in the mask: it holds a single value "
                           f"({int(values.min())}), nothing is segmented", fix=_MASK_FIX)
    if not (values == label).any():
        raise FeatureError(f"label {label} is not present in the mask", fix=_MASK_FIX)
    return mask


def _same_space(image: sitk.Image, mask: sitk.Image, tolerance: float | None) -> bool:
    """ITK's physical-space check of two filter inputs (what LabelStatisticsImageFilter runs).

    Origins and spacings may differ by ``tolerance`` times the image's first spacing, direction
    cosines by ``tolerance``; without ``geometryTolerance`` SimpleITK's global defaults apply,
    which is what pyradiomics then gets too.
    """
    if tolerance is None:
        coordinate = sitk.ProcessObject.GetGlobalDefaultCoordinateTolerance()
        direction = sitk.ProcessObject.GetGlobalDefaultDirectionTolerance()
    else:
        coordinate = direction = tolerance
    coordinate = abs(coordinate * image.GetSpacing()[0])

    def close(a: tuple[float, ...], b: tuple[float, ...], tol: float) -> bool:
        return bool(np.all(np.abs(np.subtract(a, b)) <= tol))

    return (close(image.GetOrigin(), mask.GetOrigin(), coordinate)
            and close(image.GetSpacing(), mask.GetSpacing(), coordinate)
            and close(image.GetDirection(), mask.GetDirection(), direction))


def check_mask(image: sitk.Image, mask: sitk.Image, params: EngineParams
               ) -> tuple[np.ndarray, sitk.Image]:
    """``imageoperations.checkMask``: (z, y, x) lower/upper bounds of the ROI and the mask used.

    The mask comes back resampled onto the image grid when it did not fit and ``correctMask``
    is on (pyradiomics' ``_correctMask``).
    """
    fits = image.GetSize() == mask.GetSize() and _same_space(image, mask, params.geometry_tolerance)
    if not fits:
        if not params.correct_mask:
            what = ("size" if image.GetSize() != mask.GetSize() else "geometry (origin, spacing or "
                    "direction beyond geometryTolerance)")
            raise FeatureError(
                f"image/mask {what} mismatch: image size {image.GetSize()}, origin "
                f"{image.GetOrigin()}, spacing {image.GetSpacing()}; mask size {mask.GetSize()}, "
                f"origin {mask.GetOrigin()}, spacing {mask.GetSpacing()}", fix=_GEOMETRY_FIX)
        mask = _correct_mask(image, mask, params.label)
    roi = sitk.GetArrayViewFromImage(mask) == params.label
    if not roi.any():
        raise FeatureError(f"label {params.label} is not present in the mask", fix=_MASK_FIX)
    bounds = _bounds(roi)
    extent = bounds[:, 1] - bounds[:, 0] + 1
    n_dims = int(np.sum(extent > 1))
    if n_dims == 0:
        raise FeatureError("the mask holds a single segmented voxel; features need more",
                           fix=_MASK_FIX)
    if n_dims < params.minimum_roi_dimensions:
        raise FeatureError(
            f"the ROI spans {n_dims} dimension(s), fewer than minimumROIDimensions="
            f"{params.minimum_roi_dimensions} (bounding box {extent[::-1].tolist()} voxels x, y, z)",
            fix="lower setting.minimumROIDimensions, or drop this ROI")
    if params.minimum_roi_size is not None:
        n_voxels = int(np.count_nonzero(roi))
        if n_voxels <= params.minimum_roi_size:  # pyradiomics refuses a ROI of exactly the minimum
            raise FeatureError(
                f"the ROI has {n_voxels} voxels; pyradiomics needs more than minimumROISize="
                f"{params.minimum_roi_size}", fix="lower setting.minimumROISize, or drop this ROI")
    return bounds, mask


def _bounds(roi: np.ndarray) -> np.ndarray:
    """(3, 2) array of the first and last index of ``roi`` along z, y, x."""
    out = np.empty((3, 2), dtype=np.int64)
    for axis in range(3):
        hit = np.flatnonzero(roi.any(axis=tuple(a for a in range(3) if a != axis)))
        out[axis] = hit[0], hit[-1]
    return out


def _correct_mask(image: sitk.Image, mask: sitk.Image, label: int) -> sitk.Image:
    """``_correctMask``/``_checkROI``: resample the mask onto the image if its ROI lies inside it."""
    roi = sitk.GetArrayViewFromImage(mask) == label
    if not roi.any():
        raise FeatureError(f"label {label} is not present in the mask", fix=_MASK_FIX)
    bounds = _bounds(roi)[::-1].astype(float)  # x, y, z
    lower = mask.TransformContinuousIndexToPhysicalPoint(tuple(bounds[:, 0] - 0.5))
    upper = mask.TransformContinuousIndexToPhysicalPoint(tuple(bounds[:, 1] + 0.5))
    corners = np.array([image.TransformPhysicalPointToContinuousIndex(lower),
                        image.TransformPhysicalPointToContinuousIndex(upper)])
    if (np.any(corners.min(axis=0) < -0.5 - _ROI_BOUNDS_TOLERANCE)
            or np.any(corners.max(axis=0) > np.array(image.GetSize()) - 0.5 + _ROI_BOUNDS_TOLERANCE)):
        raise FeatureError(
            f"the ROI's bounding box reaches outside the image (ROI corners in image index space "
            f"{corners.tolist()}, image size {image.GetSize()}), so correctMask cannot resample it",
            fix=_MASK_FIX)
    resample = sitk.ResampleImageFilter()
    resample.SetReferenceImage(image)
    resample.SetInterpolator(sitk.sitkNearestNeighbor)
    return resample.Execute(mask)


def crop_to_mask(image: sitk.Image, mask: sitk.Image, bounds: np.ndarray, pad: int = 0
                 ) -> tuple[sitk.Image, sitk.Image]:
    """``cropToTumorMask``: both images cropped to the (z, y, x) ``bounds`` plus ``pad`` voxels."""
    size = np.array(mask.GetSize())[::-1]  # z, y, x
    start = np.maximum(bounds[:, 0] - pad, 0)
    stop = np.minimum(bounds[:, 1] + pad + 1, size)
    return crop_region(image, start, stop), crop_region(mask, start, stop)


def crop_region(image: sitk.Image, start: np.ndarray, stop: np.ndarray) -> sitk.Image:
    """``image`` cropped to the (z, y, x) index region ``[start, stop)`` (SimpleITK's crop filter)."""
    size = np.array(image.GetSize())
    crop = sitk.CropImageFilter()
    crop.SetLowerBoundaryCropSize([int(v) for v in np.asarray(start)[::-1]])
    crop.SetUpperBoundaryCropSize([int(v) for v in size - np.asarray(stop)[::-1]])
    return crop.Execute(image)


def log_name(sigma: float) -> str:
    """pyradiomics' image type name for a LoG sigma: 1.0 -> ``log-sigma-1-0-mm-3D``."""
    return f"log-sigma-{str(sigma).replace('.', '-')}-mm-3D"


def log_sigmas(image: sitk.Image, sigmas: tuple[float, ...]) -> list[float]:
    """The sigmas ``getLoGImage`` filters with: none below 4 voxels a side, none wider than the image."""
    size = np.array(image.GetSize())
    spacing = np.array(image.GetSpacing())
    if np.min(size) < 4:
        return []
    return [s for s in sigmas if s > 0.0 and np.all(size >= np.ceil(s / spacing) + 1)]


def log_image(image: sitk.Image, sigma: float, box: tuple[slice, slice, slice] | None = None
              ) -> np.ndarray:
    """SimpleITK's recursive-Gaussian LoG, normalised across scale, as ``getLoGImage`` runs it
    (``sitk.LaplacianRecursiveGaussianImageFilter``, reproduced bit for bit by ``log_filter``).

    With ``box`` ((z, y, x) slices) only that box of it, computed only where the box needs it
    and bit for bit equal to the whole image's LoG cut to the box."""
    array = sitk.GetArrayViewFromImage(image)
    return laplacian_recursive_gaussian(array, image.GetSpacing(), sigma, box)


def wavelet_images(array: np.ndarray, wavelet: str = "coif1", level: int = 1, start_level: int = 0,
                   box: tuple[slice, slice, slice] | None = None
                   ) -> list[tuple[str, np.ndarray]]:
    """``getWaveletImage``/``_swt3`` on a (z, y, x) array: (name, sub-band) in pyradiomics' order.

    Odd axes are wrap-padded by one voxel for ``pywt.swtn`` and cropped back; each level is one
    single-level ``swtn`` of the previous approximation; sub-band letters follow the axes
    (x, y, z), 'a' -> 'L' and 'd' -> 'H'; the approximation comes last.

    ``swtn`` is reproduced with the 1-D transform it runs (``swt_axis`` along x, y, z in turn on
    every current sub-band, :mod:`features.engine._swt_kernels`), restricted to where ``box``
    ((z, y, x) slices; None: the whole array) needs it: the x pass on every line of the padded
    array, the y pass only on the lines whose x lies in the box, the z pass only on those whose x
    and y do, each pass computing only the box's range along its axis. Every output is
    ``swtn``'s, so the bands are box-shaped and bit for bit equal to ``swtn``'s bands cut to the
    box. Approximations that feed a later level are computed on the whole padded array, as the
    next level needs them all.
    """
    axes = (2, 1, 0)
    shape = array.shape
    cut = check_box(box, shape)  # in the padded array too: the padding is at the far ends
    padding = tuple((0, 1 if n % 2 != 0 else 0) for n in shape)
    data = np.pad(array, padding, "wrap")  # a new array: the input is never modified
    wl = pywt.Wavelet(wavelet)
    approx_key = "a" * len(axes)
    for _ in range(start_level):
        for axis in axes:  # swtn's approximation band only: the 'a' output along every axis
            data = _swt_axis(data, wl, 1, 0, axis)[0][0]
    out: list[tuple[str, np.ndarray]] = []
    for idx in range(1, level + 1):
        dec = _swt_level(data, wl, axes, cut, full_approx=idx < level)
        data = dec[approx_key]
        prefix = "wavelet-" if idx == 1 else f"wavelet{idx}-"
        for key, band in dec.items():
            if key != approx_key:
                out.append((prefix + key.replace("a", "L").replace("d", "H"), band))
    prefix = "wavelet-" if level == 1 else f"wavelet{level}-"
    out.append((prefix + "L" * len(axes), data if level >= 1 else data[cut]))
    return out


def _swt_level(data: np.ndarray, wavelet: pywt.Wavelet, axes: tuple[int, ...],
               box: tuple[slice, ...], full_approx: bool) -> dict[str, np.ndarray]:
    """``pywt.swtn(data, wavelet, level=1, start_level=0, axes=axes)[0]`` cut to ``box``.

    The same transforms as ``swtn``'s, in the same order, each on the lines that the box needs
    and only over the box's range along its own axis (:mod:`features.engine._swt_kernels`, bit
    for bit ``swt_axis``'s outputs there): a band kept whole so far is first cut to the box along
    the axes already done. With ``full_approx`` the approximation band ('a' on every axis) is
    kept whole instead. Keys and their order are ``swtn``'s.
    """
    data = data.astype(_check_dtype(data), copy=False)  # swt_axis' own conversion
    if data.dtype not in (np.float32, np.float64):
        raise TypeError(f"the wavelet filters real images, got {data.dtype}")
    filters = _swt_filters(wavelet.name, data.dtype)
    bands: list[tuple[str, np.ndarray, bool]] = [("", data, True)]  # key, band, whole so far
    done: list[int] = []
    for axis in axes:
        new: list[tuple[str, np.ndarray, bool]] = []
        for key, x, whole in bands:
            cut = x
            if whole:
                index = [slice(None)] * x.ndim
                for a in done:
                    index[a] = box[a]
                cut = x[tuple(index)]
            lo, hi = box[axis].start, box[axis].stop
            if whole and full_approx:
                (c_a,) = swt_range(x, filters[:1], axis, 0, x.shape[axis])
                (c_d,) = swt_range(cut, filters[1:], axis, lo, hi)
                new += [(key + "a", c_a, True), (key + "d", c_d, False)]
            else:
                c_a, c_d = swt_range(cut, filters, axis, lo, hi)
                new += [(key + "a", c_a, False), (key + "d", c_d, False)]
        done.append(axis)
        bands = new
    return {key: band for key, band, _ in bands}


@lru_cache(maxsize=32)
def _swt_filters(name: str, dtype: np.dtype) -> np.ndarray:
    """pywt's decomposition filters (dec_lo, dec_hi) of wavelet ``name`` in the C type that
    ``swt_axis`` runs for ``dtype``: read off its response to a unit impulse, so they are the
    very coefficients its C code multiplies by (its float32 tables included)."""
    wavelet = pywt.Wavelet(name)
    taps = wavelet.dec_len
    n = 2 * taps  # even and longer than the filter: each tap lands once
    impulse = np.zeros(n, dtype)
    impulse[0] = 1
    (c_a, c_d), = _swt_axis(impulse, wavelet, 1, 0, 0)
    # output o holds filter[j] * impulse[(o + taps//2 - j) mod n], nonzero for j = o + taps//2
    index = (np.arange(taps) - taps // 2) % n
    out = np.stack([c_a[index], c_d[index]]).astype(dtype)
    out.setflags(write=False)
    return out


def images(roi: Roi, image_type: ImageTypeParams) -> Iterator[tuple[str, np.ndarray]]:
    """(pyradiomics image type name, image cropped to the ROI box) for one enabled image type.

    The filters run on the whole crop but only where the box needs them (see
    :func:`log_image`, :func:`wavelet_images`): bit for bit the full-crop images cut to the box."""
    if image_type.kind == "Original":
        yield "original", roi.array[roi.box]
    elif image_type.kind == "LoG":
        for sigma in log_sigmas(roi.image, image_type.sigma):
            yield log_name(sigma), log_image(roi.image, sigma, roi.box)
    elif image_type.kind == "Wavelet":
        yield from wavelet_images(roi.array, image_type.wavelet, image_type.level,
                                  image_type.start_level, box=roi.box)
    else:  # parse_params lets no other kind through
        raise ValueError(f"unknown image type {image_type.kind!r}")
