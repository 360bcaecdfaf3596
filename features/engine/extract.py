"""The engine's driver: one ROI in, pyradiomics' feature dict out (same keys, same order).

Per ROI the mask is checked and cropped once and its voxel neighbourhoods (``RoiGeometry``) are
built once; per image type the filters yield the images pyradiomics would, each discretised once
and handed to every texture class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from features.engine import filters
from features.engine.discretise import discretise
from features.engine.firstorder import firstorder_features
from features.engine.geometry import RoiGeometry
from features.engine.glcm import glcm_from_levels
from features.engine.gldm import gldm_from_levels
from features.engine.glrlm import glrlm_from_levels
from features.engine.glszm import glszm_from_levels
from features.engine.levels import ImageLevels
from features.engine.ngtdm import ngtdm_from_levels
from features.engine.settings import EngineParams, ImageTypeParams, parse_params
from features.engine.shape import shape_features

if TYPE_CHECKING:
    import torch

    from features.engine.tensor.driver import TextureJobs

__all__ = ["add_image_features", "extract", "extract_parsed", "shape_entries"]


def extract(image: sitk.Image, mask: sitk.Image, params: Mapping[str, Any],
            device: str | torch.device | None = None) -> dict[str, float]:
    """pyradiomics' features of the ROI ``mask`` (``setting.label``) in ``image``, no diagnostics.

    Keys and order are those of ``RadiomicsFeatureExtractor(params).execute(image, mask)``
    ("original_shape_MeshVolume", "wavelet-LLH_glcm_Contrast", ...). Raises
    ``RadiomicsParamsError`` for parameters the engine does not compute and ``FeatureError``
    (naming the reason) for a ROI pyradiomics refuses.

    ``device`` None runs the numba engine; a torch device (``"cpu"``, ``"cuda"``) runs firstorder
    and the texture classes of all images in one batched call of :mod:`features.engine.tensor`.
    """
    return extract_parsed(image, mask, parse_params(params), device)


def extract_parsed(image: sitk.Image, mask: sitk.Image, params: EngineParams,
                   device: str | torch.device | None = None) -> dict[str, float]:
    """:func:`extract` with parameters already parsed (parse once, extract many ROIs)."""
    jobs = None if device is None else texture_jobs(params, device)
    roi = filters.prepare(image, mask, params)
    out = shape_entries(roi, params)
    if not params.texture_classes:
        return out
    geometry = RoiGeometry.from_mask(roi.mask)
    if jobs is not None:
        for image_type in params.image_types:
            for image_name, array in filters.images(roi, image_type):
                jobs.add("roi", out, image_name, array, geometry, image_type, roi.spacing)
        errors = jobs.run()
        if errors:
            raise errors["roi"]
        return out
    for image_type in params.image_types:
        for image_name, array in filters.images(roi, image_type):
            add_image_features(out, image_name, array, geometry, image_type, params, roi.spacing)
    return out


def texture_jobs(params: EngineParams, device: str | torch.device) -> TextureJobs:
    """The torch backend's collector, imported only when asked for (torch loads in seconds)."""
    from features.engine.tensor.driver import TextureJobs

    return TextureJobs(params, device)


def shape_entries(roi: filters.Roi, params: EngineParams) -> dict[str, float]:
    """The ``original_shape_*`` entries of a prepared ROI (empty when shape is off)."""
    out: dict[str, float] = {}
    if params.shape_features:
        shape = shape_features(roi.mask, roi.spacing)
        for name in params.shape_features:
            out[f"original_shape_{name}"] = float(shape[name])
    return out


def add_image_features(out: dict[str, float], image_name: str, array: np.ndarray,
                       geometry: RoiGeometry, image_type: ImageTypeParams, params: EngineParams,
                       spacing: tuple[float, float, float]) -> None:
    """Add the texture classes' features of one image (``array``: the ROI box) to ``out``."""
    q, _ = discretise(array, geometry, image_type.bin_width, image_type.bin_count)
    levels: ImageLevels | None = None  # laid out once, for every texture class of this image
    for cls, names in params.texture_classes:
        if cls == "firstorder":
            values = firstorder_features(geometry.values(array), geometry.values(q), spacing,
                                         image_type.voxel_array_shift)
        else:
            levels = levels or ImageLevels.of(q, geometry)
            values = _TEXTURE[cls](levels)
        for name in names:
            out[f"{image_name}_{cls}_{name}"] = _as_float(values[name])


def _as_float(value: Any) -> float:
    if type(value) is float:  # most values: no array round trip
        return value
    return float(np.asarray(value).reshape(()))


_TEXTURE: dict[str, Callable[[ImageLevels], dict[str, Any]]] = {
    "glcm": glcm_from_levels, "glrlm": glrlm_from_levels, "glszm": glszm_from_levels,
    "gldm": gldm_from_levels, "ngtdm": ngtdm_from_levels,
}
