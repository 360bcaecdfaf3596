"""The torch backend of the engine: firstorder and the five texture classes of many ROIs at once.

Filters, discretisation and shape stay on the numpy engine (they must be pyradiomics' very
operations, and shape is computed once per ROI); everything after discretisation runs here in
float64 on any torch device, ``cpu`` or ``cuda``, the same code on both. One call takes a list
of jobs (one ROI in one filtered image, :class:`Job`) and builds the matrices of all of them with
a few large tensor operations per class, in chunks of jobs of similar level counts so that the
padded (jobs, 13, L, L) tensors stay within a memory budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from features.devices import own_stream
from features.engine.firstorder import firstorder_features
from features.engine.tensor.firstorder import firstorder_batch, flat_jobs
from features.engine.tensor.glcm import glcm_batch
from features.engine.tensor.layout import Job, Layout, check_job, n_levels
from features.engine.tensor.neighbours import gldm_batch, ngtdm_batch
from features.engine.tensor.runs import glrlm_batch
from features.engine.tensor.zones import glszm_batch
from features.errors import FeatureError, RadiomicsParamsError

__all__ = ["Job", "resolve_device", "texture_batch"]

_CLASSES = {"glcm": glcm_batch, "glrlm": glrlm_batch, "glszm": glszm_batch, "gldm": gldm_batch,
            "ngtdm": ngtdm_batch}

#: Default budgets of one chunk: cells of the largest padded matrix stack (jobs x 13 x L x
#: max(L, longest line)) and voxels (times 13 for the neighbour tables).
MAX_CELLS = 1 << 22
MAX_VOXELS = 1 << 20


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device; a CUDA device torch cannot use is refused with a fix."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise RadiomicsParamsError(f"unknown torch device {device!r} for the radiomics engine",
                                   fix="use device 'cpu' or 'cuda' (or None for the numba "
                                       "engine)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RadiomicsParamsError(
            f"the torch radiomics backend was asked for device {str(dev)!r}, but torch "
            f"{torch.__version__} sees no CUDA GPU (torch.version.cuda = {torch.version.cuda})",
            fix="run on a machine with an NVIDIA GPU and a CUDA build of torch, or use device "
                "'cpu' (or None: the numba engine, without --gpus)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RadiomicsParamsError(f"no CUDA device {dev.index}: torch sees "
                                   f"{torch.cuda.device_count()}",
                                   fix="pick a device index below that count, or plain 'cuda'")
    return dev


def _chunks(jobs: Sequence[Job], index: list[int], max_cells: int, max_voxels: int
            ) -> list[list[int]]:
    """Jobs grouped by similar level counts, each group within the two budgets."""
    sizes = {i: (n_levels(jobs[i]), max(jobs[i].geometry.shape), jobs[i].geometry.n_voxels)
             for i in index}
    out: list[list[int]] = []
    cur: list[int] = []
    width = voxels = 0
    for i in sorted(index, key=lambda i: sizes[i][0]):
        n, extent, nv = sizes[i]
        w = max(width, n * max(n, extent))
        if cur and (13 * w * (len(cur) + 1) > max_cells or voxels + nv > max_voxels):
            out.append(cur)
            cur, w, voxels = [], n * max(n, extent), 0
        cur.append(i)
        width, voxels = w, voxels + nv
    if cur:
        out.append(cur)
    return out


def texture_batch(jobs: Sequence[Job], classes: Sequence[tuple[str, Sequence[str]]],
                  device: str | torch.device = "cpu", *, max_cells: int = MAX_CELLS,
                  max_voxels: int = MAX_VOXELS) -> list[dict[str, float] | FeatureError]:
    """Per job, the features of ``classes`` (``EngineParams.texture_classes``: (class, names)).

    Keys are ``"<class>_<name>"`` in the order of ``classes`` and names; the values are those of
    :func:`features.engine.extract.add_image_features`. A job the numba engine refuses gets its
    ``FeatureError`` in its place; the others are computed all the same.
    """
    dev = resolve_device(device)
    unknown = [cls for cls, _ in classes if cls != "firstorder" and cls not in _CLASSES]
    if unknown:
        raise RadiomicsParamsError(f"the torch backend computes no class {unknown}",
                                   fix="use the numba engine (device None) for these classes")
    texture = any(cls != "firstorder" for cls, _ in classes)
    results: list[dict[str, float] | FeatureError | None] = [None] * len(jobs)
    valid = []
    for i, job in enumerate(jobs):
        try:
            check_job(job, texture)
            valid.append(i)
        except FeatureError as e:
            results[i] = e
    with torch.no_grad(), own_stream(dev):
        for chunk in _chunks(jobs, valid, max_cells, max_voxels):
            for i, values in zip(chunk, _run_chunk([jobs[i] for i in chunk], classes, dev),
                                 strict=True):
                results[i] = values
    return results  # type: ignore[return-value]


def _run_chunk(jobs: list[Job], classes: Sequence[tuple[str, Sequence[str]]],
               device: torch.device) -> list[dict[str, float]]:
    lay = Layout(jobs, device)
    keys: list[str] = []
    columns: list[torch.Tensor] = []
    flat: list[int] = []
    for cls, names in classes:
        if cls == "firstorder":
            shifts = torch.tensor([float(j.voxel_array_shift) for j in jobs], dtype=torch.float64,
                                  device=device)
            volumes = torch.tensor([float(np.multiply.reduce(j.spacing)) for j in jobs],
                                   dtype=torch.float64, device=device)
            values = firstorder_batch(lay, shifts, volumes)
            flat = torch.nonzero(flat_jobs(lay)).flatten().tolist()
        else:
            values = _CLASSES[cls](lay)
        for name in names:
            keys.append(f"{cls}_{name}")
            columns.append(values[name])
    table = torch.stack(columns, dim=1).cpu().tolist() if columns else [[] for _ in jobs]
    out = [dict(zip(keys, row, strict=True)) for row in table]
    for b in flat:  # pyradiomics' own reductions decide a flat ROI's moments
        job = jobs[b]
        exact = firstorder_features(job.values, job.levels, job.spacing, job.voxel_array_shift)
        for cls, names in classes:
            if cls == "firstorder":
                out[b].update({f"firstorder_{name}": float(exact[name]) for name in names})
    return out
