"""The hook of :func:`features.engine.extract.extract` and :func:`features.engine.batch.extract_rois`
into the torch backend: collect every (ROI, image) job first, run them in one batched call, then
fill each ROI's dict with the keys, in the order, that the numba path gives.
"""

from __future__ import annotations

import numpy as np
import torch

from features.engine.discretise import discretise
from features.engine.geometry import RoiGeometry
from features.engine.settings import EngineParams, ImageTypeParams
from features.engine.tensor import Job, resolve_device, texture_batch
from features.errors import FeatureError

__all__ = ["TextureJobs"]


class TextureJobs:
    """The firstorder and texture work of several ROIs' images, discretised as it is added."""

    def __init__(self, params: EngineParams, device: str | torch.device) -> None:
        self.params = params
        self.device = resolve_device(device)
        self._jobs: list[Job] = []
        self._targets: list[tuple[str, dict[str, float], str]] = []

    def add(self, roi: str, out: dict[str, float], image_name: str, array: np.ndarray,
            geometry: RoiGeometry, image_type: ImageTypeParams,
            spacing: tuple[float, float, float]) -> None:
        """Queue one image of ROI ``roi`` (``array``: the ROI box), whose features go to ``out``."""
        q, _ = discretise(array, geometry, image_type.bin_width, image_type.bin_count)
        self._jobs.append(Job(geometry.values(array), geometry.values(q), geometry,
                              image_type.voxel_array_shift, spacing))
        self._targets.append((roi, out, image_name))

    def run(self) -> dict[str, FeatureError]:
        """Compute every queued job in one call, fill the dicts; each refused ROI's first error."""
        results = texture_batch(self._jobs, self.params.texture_classes, self.device)
        errors: dict[str, FeatureError] = {}
        for (roi, out, image_name), result in zip(self._targets, results, strict=True):
            if roi in errors:
                continue
            if isinstance(result, FeatureError):
                errors[roi] = result
                continue
            for key, value in result.items():
                out[f"{image_name}_{key}"] = value
        self._jobs, self._targets = [], []
        return errors
