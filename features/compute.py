"""Running the tasks on Dask: batching, submission, gathering, checkpoints and progress.

One radiomics task per study version (all its ROIs and sequences: the version is read once and each
sequence's filters run once for its ROIs); deep batches of ``batch_size`` crops. With ``gpus`` both
go to the GPU workers: the CNN on CUDA, radiomics on the engine's torch backend
(:func:`radiomics_device`). Results are gathered as they complete, keyed by (patient, study, scan
version, view), so a task the scheduler re-runs after a worker died can never give a second row.
Nothing here writes: the caller's ``checkpoint`` stores what finished (:mod:`features.collect`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from atrx.catalog import LineageStatus
from atrx.cluster import dask_client
from atrx.errors import ConflictError, debug_enabled
from features.context import FeaturesRun
from features.plan import Target, TargetKey
from features.radiomics import engine_of
from features.tasks import DeepItem, RadItem, TaskResult, deep_batch_task, radiomics_study_task
from features.versioning import features_library_versions

__all__ = ["Outcome", "WorkerLibrariesError", "batch_targets", "check_outcome", "compute"]

log = logging.getLogger(__name__)


class WorkerLibrariesError(ConflictError):
    """Workers run other library versions than the driver: their feature version would lie."""


@dataclass(frozen=True)
class Outcome:
    """A target's checked result: ``row`` holds its features as float64 in schema order when ok."""

    status: LineageStatus
    row: np.ndarray | None
    reason: str | None
    seconds: float


def batch_targets(targets: Sequence[Target], batch_size: int) -> list[list[Target]]:
    """The tasks of ``targets``: one per study version's radiomics targets, then deep batches of
    ``batch_size``.

    The crops of a deep batch are ordered by study version, so a batch reads each version once.
    """
    by_version: dict[str, list[Target]] = {}
    for t in targets:
        if t.kind == "rad":
            by_version.setdefault(t.zarr_path, []).append(t)
    rad = list(by_version.values())
    dl = sorted((t for t in targets if t.kind == "dl"), key=lambda t: (t.zarr_path, t.view))
    return rad + [dl[i:i + batch_size] for i in range(0, len(dl), batch_size)]


def compute(run: FeaturesRun, batches: Sequence[list[Target]], results: dict[TargetKey, Outcome],
            *, submitted: Callable[[int], None], checkpoint: Callable[[], None]) -> None:
    """Run ``batches`` (from :func:`batch_targets`) on the run's cluster; fill ``results``.

    Results land as tasks complete, so an interrupted run still stores what finished;
    ``submitted(n)`` is told how many tasks went out, and ``checkpoint()`` is called whenever
    ``run.checkpoint_seconds`` have passed since the last call. A worker's ``ok`` result replaces
    an earlier non-ok one of the same target, never the reverse.
    """
    recipe, ws = run.recipe, run.ws
    device = "cuda" if run.gpus else "cpu"
    with dask_client(run.scheduler, run.workers, run.gpus,
                     threads_per_gpu=run.threads_per_gpu) as client:
        from distributed import as_completed

        check_worker_libraries(client, recipe.libraries)
        futures: dict[Any, list[Target]] = {}
        deep = [b for b in batches if b[0].kind == "dl"]
        resources = _gpu_resources(client) if run.gpus else None
        rad_device = radiomics_device(recipe.params, run.gpus)
        for batch in (b for b in batches if b[0].kind == "rad"):
            t = batch[0]
            rad_items: list[RadItem] = [(x.roi, x.sequence) for x in batch]
            fut = client.submit(radiomics_study_task, ws.images, t.zarr_path, rad_items,
                                recipe.params, rad_device, pure=False,
                                key=f"rad-{t.patient_id}-{t.study_id}-v{t.scan_version}-{run.run_id}",
                                resources=resources if rad_device else None)
            futures[fut] = batch
        for i, batch in enumerate(deep):
            items: list[DeepItem] = [(ws.images, t.zarr_path, t.roi, t.sequence) for t in batch]
            fut = client.submit(deep_batch_task, items, recipe.weights, device, recipe.weights_id,
                                key=f"dl-batch-{i:05d}-{run.run_id}", pure=False, resources=resources)
            futures[fut] = batch
        submitted(len(futures))
        done = 0
        last_checkpoint = time.monotonic()
        for fut in as_completed(futures):
            batch = futures[fut]
            for t, raw in zip(batch, _task_results(fut, batch), strict=True):
                res = check_outcome(t, raw, recipe.schemas[t.view])
                old = results.get(t.key)
                if old is None or (old.status != "ok" and res.status == "ok"):
                    results[t.key] = res
            done += 1
            if time.monotonic() - last_checkpoint >= run.checkpoint_seconds:
                checkpoint()
                last_checkpoint = time.monotonic()
            if run.progress:
                first = batch[0]
                label = (f"{first.patient_id} radiomics ({len(batch)} ROIs)" if first.kind == "rad"
                         else f"{len(batch)} crops ({first.patient_id} {first.view} ...)")
                run.progress(done, len(futures), label)


def radiomics_device(params: Mapping[str, Any], gpus: bool) -> str | None:
    """The atrx engine's torch device for this run: ``"cuda"`` on GPU workers, else None (numba).

    A pyradiomics parameter file keeps radiomics on the workers' CPUs under ``--gpus`` (only the
    CNN moves), and says so once.
    """
    if not gpus:
        return None
    if engine_of(params) != "atrx":
        log.warning("the radiomics parameter file chooses the pyradiomics engine, which has no GPU "
                    "backend: radiomics runs on the CPUs, the CNN on the GPUs")
        return None
    return "cuda"


def _task_results(fut: Any, batch: list[Target]) -> list[TaskResult]:
    """A finished future's results, one per target; a task the cluster gave up on errors them all."""
    try:
        out = fut.result()
    except Exception as e:  # the scheduler gave up (a worker died on it repeatedly)
        if debug_enabled():  # ATRX_DEBUG=1: the raw error, with its traceback
            raise
        reason = f"the task failed on the cluster: {type(e).__name__}: {e}"[:500]
        out = [TaskResult("error", None, f"{t.view} of {t.zarr_path}: {reason}", 0.0) for t in batch]
    fut.release()
    return out


def check_outcome(t: Target, res: TaskResult, names: list[str]) -> Outcome:
    """Turn ``values`` into a float64 row in schema order; a wrong schema becomes an error."""
    if res.status != "ok":
        return Outcome(res.status, None, res.reason, res.seconds)
    values = res.values or {}
    if list(values) != names:
        return Outcome("error", None,
                       f"{t.view} of {t.zarr_path}: the task returned {len(values)} features that "
                       f"differ from the view's {len(names)} (worker code out of date?)", res.seconds)
    return Outcome("ok", np.fromiter(values.values(), dtype=np.float64, count=len(names)), None,
                   res.seconds)


def check_worker_libraries(client: Any, libs: dict[str, str]) -> None:
    """Refuse workers whose libraries differ from the driver's: the feature version would lie."""
    seen = client.run(features_library_versions)
    bad = {w: {k: v for k, v in got.items() if libs.get(k) != v} for w, got in seen.items()}
    bad = {w: diff for w, diff in bad.items() if diff}
    if bad:
        worker, diff = next(iter(bad.items()))
        raise WorkerLibrariesError(
            f"{len(bad)} worker(s) run other library versions than this driver, e.g. {worker}: "
            f"{diff} vs {({k: libs[k] for k in diff})}",
            fix="install the same versions everywhere")


def _gpu_resources(client: Any) -> dict[str, int] | None:
    """``{"GPU": 1}`` when the workers advertise a GPU resource, else None (with a warning).

    dask_cuda's LocalCUDACluster pins one GPU per worker but declares no resource; restricting
    to a resource nobody has would leave the tasks waiting forever.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if any((w.get("resources") or {}).get("GPU") for w in workers):
        return {"GPU": 1}
    log.warning("no worker declares a 'GPU' resource; deep batches go to any worker "
                "(start GPU workers with --nthreads N --resources GPU=N to keep them there)")
    return None
