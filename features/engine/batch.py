"""Several ROIs of one image (a patient's edema, tumor and overall on one sequence), filtered once.

pyradiomics filters each ROI's own crop (with ``preCrop``: its bounding box plus ``padDistance``),
so three ROIs cost three LoG runs per sigma and three wavelet decompositions. Here each filtered
image is computed once per *source*: the union of all the ROIs' crops, or a ROI's own crop, which
the ROIs with that same crop share. Each ROI then cuts its box out of its source, and the
discretisation and texture code sees the arrays :func:`features.engine.extract` gives it.

A filter runs on its whole source, but only where the boxes need it: its result is the bounding
box of the boxes of the ROIs that take that source (``box`` of :func:`filters.log_image
<features.engine.filters.log_image>` and :func:`filters.wavelet_images
<features.engine.filters.wavelet_images>`), bit for bit equal to the whole source's filtered image
cut to that box; which source a ROI takes rests on the whole crops, whatever part is computed. A
ROI takes the union only where the filtered voxels of its box are those of its own crop (and
where filtering the union is no more work than filtering the distinct crops it replaces):

* **Wavelet** (``pywt.swtn``, periodic): a voxel depends on voxels at most ``(start_level + level)
  * (dec_len - 1)`` away along each axis (pyradiomics runs one single-level ``swtn`` per level).
  Along an axis where the ROI's box keeps that far from both ends of its crop nothing wraps, in its
  crop or in the union, and the voxels are bitwise equal (same taps in pywt's interior loop; the
  odd-size padding lies beyond the reach); along an axis where crop and union have the same extent
  the lines are the same. A ROI within that reach of the image border (its crop clipped there)
  keeps its own crop.
* **LoG** (SimpleITK's recursive Gaussian: an IIR filter whose boundary condition reaches far):
  every end of every axis must coincide with the union's or lie at least :data:`LOG_MARGIN`
  sigmas (in voxels of that axis) beyond the ROI's box. At 20 sigmas two crops agree to float32
  rounding (unit-variance noise, sigma 3: max difference 2e-9); at padDistance 20 and sigma 3 mm
  (6.7 sigmas) they differ by up to 1e-4 (3e-5 of the range), which moves voxels across bin edges:
  LoG-3 texture features moved by 1.6e-4 relative on a 30k-voxel lesion and by 4.6e-3 on brain1
  (padDistance 30 against 20), beyond the agreement tolerance of 1e-4. With 1 mm voxels
  and padDistance 20 the union thus serves sigma 1 mm, and sigmas 2 and 3 mm run once per distinct
  crop (edema and overall usually have the same box).

Without ``preCrop`` every ROI's crop is the whole image and every filter runs once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pywt
import SimpleITK as sitk

from features.engine import filters
from features.engine.extract import add_image_features, shape_entries, texture_jobs
from features.engine.filters import Roi
from features.engine.geometry import RoiGeometry
from features.engine.settings import EngineParams, ImageTypeParams, parse_params
from features.errors import FeatureError

if TYPE_CHECKING:
    import torch

__all__ = ["LOG_MARGIN", "extract_rois", "extract_rois_parsed"]

#: Sigmas (in voxels of an axis) between a ROI's box and a crop end it does not share with the
#: union for the LoG of the union to stand for the LoG of its own crop.
LOG_MARGIN = 20.0

Region = tuple[tuple[int, ...], tuple[int, ...]]
"""(z, y, x) start and stop of a crop in the input image's index space."""


def extract_rois(image: sitk.Image, masks: Mapping[str, sitk.Image], params: Mapping[str, Any],
                 device: str | torch.device | None = None
                 ) -> dict[str, dict[str, float] | FeatureError]:
    """:func:`features.engine.extract` of every ROI of ``masks`` in ``image``, filters shared.

    Returns, in the order of ``masks``, each ROI's features (the keys and values ``extract`` gives),
    or the ``FeatureError`` naming why pyradiomics would refuse that ROI; one bad ROI never stops
    the others. Raises ``RadiomicsParamsError`` for parameters the engine does not compute.
    ``device``: as for :func:`features.engine.extract.extract` (one batched call for all ROIs).
    """
    return extract_rois_parsed(image, masks, parse_params(params), device)


def extract_rois_parsed(image: sitk.Image, masks: Mapping[str, sitk.Image], params: EngineParams,
                        device: str | torch.device | None = None
                        ) -> dict[str, dict[str, float] | FeatureError]:
    """:func:`extract_rois` with parameters already parsed."""
    jobs = None if device is None else texture_jobs(params, device)
    results: dict[str, dict[str, float] | FeatureError] = {}
    todo: dict[str, tuple[Roi, RoiGeometry]] = {}
    for name, mask in masks.items():
        try:
            roi = filters.prepare(image, mask, params)
            results[name] = shape_entries(roi, params)
            if params.texture_classes:
                todo[name] = (roi, RoiGeometry.from_mask(roi.mask))
        except FeatureError as e:
            results[name] = e
    if not todo:
        return results
    sources = _Sources(image, {name: roi for name, (roi, _) in todo.items()})
    for image_type in params.image_types:
        for name, image_name, array in sources.images(image_type):
            if name not in todo:  # refused on an earlier image
                continue
            roi, geometry = todo[name]
            out = results[name]
            assert isinstance(out, dict)
            if jobs is not None:  # the torch backend: computed below, in one call
                jobs.add(name, out, image_name, array, geometry, image_type, roi.spacing)
                continue
            try:
                add_image_features(out, image_name, array, geometry, image_type, params,
                                   roi.spacing)
            except FeatureError as e:
                results[name] = e
                del todo[name]
    if jobs is not None:
        results.update(jobs.run())
    return results


def _region(roi: Roi) -> Region:
    start = tuple(int(v) for v in roi.offset)
    return start, tuple(s + int(n) for s, n in zip(start, roi.array.shape, strict=True))


def _volume(region: Region) -> int:
    return int(np.prod(np.subtract(region[1], region[0])))


class _Sources:
    """The ROIs' crops, their union, and the filtered images cut to each ROI's box (each filter
    computed once per source, on the bounding box of the boxes of the ROIs that use it)."""

    def __init__(self, image: sitk.Image, rois: dict[str, Roi]) -> None:
        self.image = image
        self.rois = rois
        regions = [_region(roi) for roi in rois.values()]
        self.union: Region = (tuple(int(v) for v in np.min([r[0] for r in regions], axis=0)),
                              tuple(int(v) for v in np.max([r[1] for r in regions], axis=0)))
        self._union_crop: tuple[sitk.Image, np.ndarray] | None = None

    def images(self, image_type: ImageTypeParams) -> Iterator[tuple[str, str, np.ndarray]]:
        """(ROI name, pyradiomics image name, filtered image in the ROI's box); per ROI in the
        order :func:`features.engine.filters.images` yields them."""
        if image_type.kind == "Original":
            for name, roi in self.rois.items():
                yield name, "original", roi.array[roi.box]
        elif image_type.kind == "LoG":
            yield from self._log(image_type.sigma)
        elif image_type.kind == "Wavelet":
            yield from self._wavelet(image_type)
        else:  # parse_params lets no other kind through
            raise ValueError(f"unknown image type {image_type.kind!r}")

    def _log(self, sigmas: tuple[float, ...]) -> Iterator[tuple[str, str, np.ndarray]]:
        allowed = {name: filters.log_sigmas(roi.image, sigmas) for name, roi in self.rois.items()}
        for sigma in sigmas:
            users = [name for name in self.rois if sigma in allowed[name]]
            for region, names in self._groups(users, lambda r, s=sigma: self._log_shares(r, s)):
                hull, boxes = self._hull(names, region)
                log = filters.log_image(self._source(region)[0], sigma, hull)
                for name in names:
                    yield name, filters.log_name(sigma), log[boxes[name]]

    def _wavelet(self, t: ImageTypeParams) -> Iterator[tuple[str, str, np.ndarray]]:
        reach = (t.start_level + t.level) * (pywt.Wavelet(t.wavelet).dec_len - 1)
        for region, names in self._groups(list(self.rois), lambda r: self._wavelet_shares(r, reach)):
            hull, boxes = self._hull(names, region)
            bands = filters.wavelet_images(self._source(region)[1], t.wavelet, t.level,
                                           t.start_level, box=hull)
            for name in names:
                for band_name, band in bands:
                    yield name, band_name, band[boxes[name]]

    def _hull(self, names: list[str], region: Region
              ) -> tuple[tuple[slice, slice, slice], dict[str, tuple[slice, ...]]]:
        """The bounding box (in ``region``) of the boxes of ROIs ``names``, which the filters of
        that source are computed on, and each ROI's box within it."""
        boxes = {name: self._box(name, region) for name in names}

        def span(axis: int) -> slice:
            return slice(min(b[axis].start for b in boxes.values()),
                         max(b[axis].stop for b in boxes.values()))

        hull = (span(0), span(1), span(2))
        return hull, {name: tuple(slice(s.start - h.start, s.stop - h.start)
                                  for s, h in zip(box, hull, strict=True))
                      for name, box in boxes.items()}

    def _groups(self, names: list[str], shares: Callable[[Roi], bool]
                ) -> list[tuple[Region, list[str]]]:
        """ROIs by the source they take: the union where ``shares`` allows it and filtering the
        union costs no more voxels than filtering the distinct crops it replaces, else their crop."""
        sharing = {name for name in names if shares(self.rois[name])}
        if _volume(self.union) > sum(map(_volume, {_region(self.rois[n]) for n in sharing})):
            sharing = set()  # e.g. small ROIs far apart: their own crops are cheaper
        groups: dict[Region, list[str]] = {}
        for name in names:
            region = self.union if name in sharing else _region(self.rois[name])
            groups.setdefault(region, []).append(name)
        return list(groups.items())

    def _source(self, region: Region) -> tuple[sitk.Image, np.ndarray]:
        """The input image cropped to ``region`` (a ROI's own crop where one has it)."""
        for roi in self.rois.values():
            if _region(roi) == region:
                return roi.image, roi.array
        if region != self.union:
            raise ValueError(f"no source for region {region}")
        if self._union_crop is None:
            crop = filters.crop_region(self.image, np.array(region[0]), np.array(region[1]))
            self._union_crop = crop, sitk.GetArrayFromImage(crop)
        return self._union_crop

    def _box(self, name: str, region: Region) -> tuple[slice, ...]:
        """ROI ``name``'s box in the coordinates of ``region``."""
        roi = self.rois[name]
        shift = np.subtract(roi.offset, region[0])
        return tuple(slice(b.start + int(d), b.stop + int(d)) for b, d in zip(roi.box, shift,
                                                                               strict=True))

    def _ends(self, roi: Roi) -> Iterator[tuple[int, bool, bool, int, int]]:
        """Per axis (z, y, x): axis, whether the crop's lower/upper end is the union's, and the
        voxels of the crop below and above the ROI's box."""
        (start, stop), (u_start, u_stop) = _region(roi), self.union
        for axis, box in enumerate(roi.box):
            yield (axis, start[axis] == u_start[axis], stop[axis] == u_stop[axis], box.start,
                   roi.array.shape[axis] - box.stop)

    def _wavelet_shares(self, roi: Roi, reach: int) -> bool:
        return all((low and high) or (below >= reach and above >= reach)
                   for _, low, high, below, above in self._ends(roi))

    def _log_shares(self, roi: Roi, sigma: float) -> bool:
        spacing = roi.spacing[::-1]  # z, y, x
        for axis, low, high, below, above in self._ends(roi):
            margin = LOG_MARGIN * sigma / spacing[axis]
            if not ((low or below >= margin) and (high or above >= margin)):
                return False
        return True
