"""What one Dask task does: read a study version from the image store, compute, return plain data.

No Dask here, and no catalog: the driver (:mod:`features.compute`) schedules these functions and is
the only process that writes. Every ROI gives one :class:`TaskResult`.

Task functions never raise for a bad ROI: one bad mask must not cost the other ROIs of a batch. An
unexpected exception becomes an ``error`` result naming the ROI, except with ``ATRX_DEBUG=1``
(:func:`atrx.errors.debug_enabled`), where it propagates raw so its own traceback is seen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from atrx.catalog import LineageStatus
from atrx.errors import debug_enabled
from atrx.geometry import image_on_grid
from atrx.imagestore import read_version
from atrx.names import view_name
from features.deep import (
    WeightsSpec,
    deep_feature_names,
    deep_features,
    largest_slice_crop,
    load_resnet34,
)
from features.errors import FeatureError
from features.radiomics import extract_radiomics, extract_radiomics_rois
from features.reference import (
    ReferenceSettings,
    reference_settings,
    reference_stats,
    reference_values,
    shell_mask,
)

#: (images_root, zarr_path, roi, sequence): one crop of a deep batch
DeepItem = tuple[str, str, str, str]
#: (roi, sequence): one radiomics target of a study version
RadItem = tuple[str, str]


@dataclass(frozen=True)
class TaskResult:
    """What one ROI gave.

    ``status``: ``ok``; ``failed`` when the ROI cannot give features (empty, too small, rejected by
    PyRadiomics: a property of the data, recorded and not retried for the same feature version); or
    ``error`` when something around the ROI broke (store unreadable, weights missing on a worker,
    out of memory: retried on the next run). ``values``: ``{canonical feature name: float}`` in
    the order of the view's schema when ``ok``, else None. ``reason``: why it failed, naming the
    view and the study version, or None. ``seconds``: time spent on this ROI in the task.
    """

    status: LineageStatus
    values: dict[str, float] | None
    reason: str | None
    seconds: float


# The one piece of module state: ResNet34 per worker process, keyed by (weights spec, device).
# Why: reading and hashing 87 MB of weights (or seeding a random init) takes about as long as a
# forward pass over a whole batch, and on a GPU every extra copy costs device memory; a worker runs
# many batch tasks one after another, so it loads the model once and keeps it. The weights id is
# cached with it and checked against the driver's, so a worker that sees different weights (another
# file at the same path on another machine) fails its items instead of mixing features. At most
# _MODEL_CACHE_SIZE models are kept so a long-lived worker serving several specs stays bounded.
_MODEL_CACHE: dict[tuple[str, str], tuple[Any, str]] = {}
_MODEL_CACHE_SIZE = 2
_MODEL_LOCK = threading.Lock()


def load_scan(images_root: str, zarr_path: str,
              names: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays ((z, y, x); all or ``names``) and attributes of one complete study version.

    Refuses a group that was never marked complete (:class:`atrx.imagestore.IncompleteVersionError`).
    """
    return read_version(images_root, zarr_path, list(names) if names is not None else None)


def to_sitk(array: np.ndarray, geometry: Mapping[str, Any]) -> sitk.Image:
    """A (z, y, x) array on the grid of the store's ``geometry`` attrs (see :mod:`atrx.geometry`)."""
    return image_on_grid(array, geometry)


def radiomics_task(images_root: str, zarr_path: str, roi: str, sequence: str,
                   params: Mapping[str, Any]) -> TaskResult:
    """PyRadiomics features of one ROI x sequence of one study version; never raises for bad data."""
    t0 = time.perf_counter()
    view = view_name("rad", roi, sequence)
    try:
        reference = reference_settings(params)
        arrays, attrs = load_scan(images_root, zarr_path, _rad_arrays([sequence, roi], reference))
        geometry = attrs["geometry"]
        image = to_sitk(arrays[sequence], geometry)
        mask = to_sitk(arrays[roi], geometry)
        values = extract_radiomics(image, mask, roi, sequence, params)
        if reference is not None:
            stats = reference_stats(arrays[sequence], _shell(arrays, geometry, reference), reference.min_voxels)
            values |= reference_values(roi, sequence, stats)
    except FeatureError as e:
        return _result("failed", None, f"{view} of {zarr_path}: {e}", t0)
    except Exception as e:  # noqa: BLE001 - the task boundary: report, let the driver record it
        if debug_enabled():  # ATRX_DEBUG=1: the raw error, with its traceback
            raise
        return _result("error", None, f"{view} of {zarr_path}: {type(e).__name__}: {e}", t0)
    return _result("ok", values, None, t0)


def radiomics_study_task(images_root: str, zarr_path: str, items: Sequence[RadItem],
                         params: Mapping[str, Any], device: str | None = None) -> list[TaskResult]:
    """Radiomics of several ROI x sequence targets of one study version; one result per item.

    Why one task per study: the version is read once, and each sequence's filters run once for all
    its ROIs (:func:`features.radiomics.extract_radiomics_rois`; per patient 5x pyradiomics against
    3.4x ROI by ROI). The values equal :func:`radiomics_task`'s. Never raises for bad data: each
    item gets its own ``failed``/``error`` result; ``seconds`` is the item's share of its sequence.
    ``device``: the atrx engine's torch device (``"cuda"`` on GPU workers), None for numba.
    """
    t0 = time.perf_counter()
    results: dict[RadItem, TaskResult] = {}
    shell: np.ndarray | None = None  # the reference tissue, computed once per study
    try:
        reference = reference_settings(params)
        names = _rad_arrays(sorted({n for item in items for n in item}), reference)
        arrays, attrs = load_scan(images_root, zarr_path, names)
        geometry = attrs["geometry"]
    except Exception as e:  # noqa: BLE001 - the task boundary: every item reports it
        if debug_enabled():  # ATRX_DEBUG=1: the raw error, with its traceback
            raise
        return [_result("error", None, f"{view_name('rad', roi, seq)} of {zarr_path}: "
                        f"{type(e).__name__}: {e}", t0) for roi, seq in items]
    for sequence in dict.fromkeys(seq for _, seq in items):
        t_seq = time.perf_counter()
        rois = [roi for roi, seq in items if seq == sequence]
        try:
            image = to_sitk(arrays[sequence], geometry)
            got = extract_radiomics_rois(
                image, {roi: to_sitk(arrays[roi], geometry) for roi in rois}, sequence, params,
                device)
            if reference is not None:
                shell = _shell(arrays, geometry, reference) if shell is None else shell
                stats = reference_stats(arrays[sequence], shell, reference.min_voxels)
                got = {roi: v if isinstance(v, Exception) else v | reference_values(roi, sequence, stats)
                       for roi, v in got.items()}
        except Exception as e:  # noqa: BLE001 - the task boundary
            if debug_enabled():
                raise
            got = {roi: e for roi in rois}
        share = (time.perf_counter() - t_seq) / len(rois)
        for roi in rois:
            value, what = got[roi], f"{view_name('rad', roi, sequence)} of {zarr_path}"
            if isinstance(value, FeatureError):
                results[(roi, sequence)] = TaskResult("failed", None, f"{what}: {value}", share)
            elif isinstance(value, Exception):
                results[(roi, sequence)] = TaskResult(
                    "error", None, f"{what}: {type(value).__name__}: {value}", share)
            else:
                results[(roi, sequence)] = TaskResult("ok", value, None, share)
    return [results[(roi, seq)] for roi, seq in items]


def _rad_arrays(names: Sequence[str], reference: ReferenceSettings | None) -> list[str]:
    """The arrays a radiomics task reads: its sequences and ROIs, and for the reference tissue
    the brain mask and the overall lesion."""
    return sorted({*names, "brain", "overall"}) if reference is not None else list(names)


def _shell(arrays: Mapping[str, np.ndarray], geometry: Mapping[str, Any],
           settings: ReferenceSettings) -> np.ndarray:
    """The study's reference tissue (features.reference.shell_mask on the store's grid)."""
    spacing_zyx = [float(v) for v in reversed(geometry["spacing"])]
    return shell_mask(arrays["overall"], arrays["brain"], spacing_zyx, settings.shell_mm)


def cached_model(weights_spec: str, device: str) -> tuple[Any, str]:
    """This process's ResNet34 for (spec, device) and its weights id, loaded on first use."""
    key = (str(WeightsSpec.parse(weights_spec)), device)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            while len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:
                _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
            _MODEL_CACHE[key] = load_resnet34(weights_spec, device)
        return _MODEL_CACHE[key]


def deep_batch_task(items: Sequence[DeepItem], weights_spec: str, device: str,
                    expected_weights_id: str | None = None) -> list[TaskResult]:
    """Deep features of many ROIs in one forward pass; one result per item, in item order.

    Each study version is read once per task even when several of its ROIs are in the batch.
    ``expected_weights_id`` (the driver's) guards against a worker holding other weights.
    """
    t0 = time.perf_counter()
    results: list[TaskResult | None] = [None] * len(items)
    try:
        model, weights_id = cached_model(weights_spec, device)
        if expected_weights_id is not None and weights_id != expected_weights_id:
            raise RuntimeError(
                f"this worker's weights {weights_spec!r} have sha256 {weights_id[:16]}..., the "
                f"driver's have {expected_weights_id[:16]}...; give every worker the same file"
            )
    except Exception as e:  # noqa: BLE001 - the task boundary
        if debug_enabled():  # ATRX_DEBUG=1: the raw error, with its traceback
            raise
        reason = f"cannot load ResNet34 weights {weights_spec!r} on {device}: {type(e).__name__}: {e}"
        return [_result("error", None, f"{_deep_what(it)}: {reason}", t0) for it in items]

    crops: list[np.ndarray] = []
    crop_index: list[int] = []
    scans: dict[str, dict[str, np.ndarray] | Exception] = {}
    for i, (root, zarr_path, roi, sequence) in enumerate(items):
        t_item = time.perf_counter()
        what = _deep_what(items[i])
        try:
            arrays = _scan_arrays(scans, root, zarr_path, items)
            crops.append(largest_slice_crop(arrays[sequence], arrays[roi], what=what))
            crop_index.append(i)
        except FeatureError as e:
            results[i] = _result("failed", None, str(e), t_item)
        except Exception as e:  # noqa: BLE001 - the task boundary
            if debug_enabled():  # ATRX_DEBUG=1: the raw error, with its traceback
                raise
            results[i] = _result("error", None, f"{what}: {type(e).__name__}: {e}", t_item)

    if crops:
        t_fwd = time.perf_counter()
        try:
            out = deep_features(model, crops, device=device, batch_size=len(crops))
        except Exception as e:  # noqa: BLE001 - e.g. CUDA out of memory: the whole batch is retried later
            if debug_enabled():  # ATRX_DEBUG=1: the raw error, with its traceback
                raise
            for i in crop_index:
                results[i] = _result("error", None, f"{_deep_what(items[i])}: forward pass failed: "
                                     f"{type(e).__name__}: {e}", t_fwd)
        else:
            share = (time.perf_counter() - t0) / len(items)
            for row, i in zip(out, crop_index, strict=True):
                _, _, roi, sequence = items[i]
                names = deep_feature_names(roi, sequence)
                values = dict(zip(names, row.astype(np.float64).tolist(), strict=True))
                results[i] = TaskResult("ok", values, None, share)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:  # unreachable: every item is decided above; never return misaligned results
        raise RuntimeError(f"deep_batch_task left items {missing} without a result")
    return [r for r in results if r is not None]


def _scan_arrays(cache: dict[str, dict[str, np.ndarray] | Exception], root: str, zarr_path: str,
                 items: Sequence[DeepItem]) -> dict[str, np.ndarray]:
    """The arrays every item of this batch needs from ``zarr_path``, read once (errors too)."""
    if zarr_path not in cache:
        names = sorted({n for _, p, roi, seq in items if p == zarr_path for n in (roi, seq)})
        try:
            cache[zarr_path] = load_scan(root, zarr_path, names)[0]
        except Exception as e:  # noqa: BLE001 - remembered so each item reports it
            cache[zarr_path] = e
    got = cache[zarr_path]
    if isinstance(got, Exception):
        raise got
    return got


def _deep_what(item: DeepItem) -> str:
    _, zarr_path, roi, sequence = item
    return f"{view_name('dl', roi, sequence)} of {zarr_path}"


def _result(status: LineageStatus, values: dict[str, float] | None, reason: str | None,
            t0: float) -> TaskResult:
    return TaskResult(status, values, reason, time.perf_counter() - t0)

