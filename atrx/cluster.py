"""The Dask driver's one decision: which cluster runs the tasks.

A LocalCluster by default (processes, one thread each, so the per-task libraries own the cores),
an existing scheduler with ``--scheduler``, or ``dask_cuda.LocalCUDACluster`` with ``--gpus``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster

from atrx.errors import InputError, debug_enabled


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _visible_gpus() -> int:
    """GPUs LocalCUDACluster will start a worker for: CUDA_VISIBLE_DEVICES, else what NVML sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    from dask_cuda.utils import get_n_gpus

    return int(get_n_gpus())


_GPU_THREADS_DEFAULT = "the host's cores are shared among the GPUs"


def _at_least_one(flag: str, value: int | None, default: str) -> None:
    if value is not None and value < 1:
        raise InputError(f"{flag} must be >= 1, got {value}",
                         fix=f"leave it out ({default}) or give 1 or more")


def gpu_worker_threads(cpus: int, n_gpus: int, requested: int | None = None) -> int:
    """Task threads per GPU worker: by default the GPU's share of the host's cores.

    A radiomics task keeps its filters, shape and discretisation on the host; with one thread per
    GPU those run serially between the kernels, so the GPU idles about a third of the time.
    """
    if requested is not None:
        _at_least_one("--threads-per-gpu", requested, _GPU_THREADS_DEFAULT)
        return requested
    return max(1, cpus // max(1, n_gpus))


def check_cluster_options(scheduler: str | None = None, workers: int | None = None,
                          gpus: bool = False, threads_per_gpu: int | None = None) -> None:
    """Refuse, before any work, a cluster option that the chosen cluster would silently ignore."""
    _at_least_one("--workers", workers, "one worker per core, at most 8")
    if scheduler and workers is not None:
        raise InputError(f"--workers does not apply with --scheduler: the cluster at {scheduler} "
                         "runs the workers it was started with",
                         fix=f"leave --workers out; to add workers, start them against that "
                             f"scheduler (`dask worker {scheduler}`)")
    if gpus and workers is not None:
        raise InputError("--workers does not apply with --gpus: the GPU cluster starts one worker "
                         "per visible GPU",
                         fix="leave --workers out; choose the GPUs with CUDA_VISIBLE_DEVICES and "
                             "the tasks each GPU runs at once with --threads-per-gpu")
    if threads_per_gpu is not None:
        _at_least_one("--threads-per-gpu", threads_per_gpu, _GPU_THREADS_DEFAULT)
        if not gpus or scheduler:
            raise InputError(
                "--threads-per-gpu applies only to the GPU cluster `atrx features --gpus` starts",
                fix=("start the scheduler's GPU workers with --nthreads N --resources GPU=N instead"
                     if scheduler else "add --gpus, or leave --threads-per-gpu out"))


def _limit_threads(n: int) -> None:
    """Run on each worker: one task per worker process should not also spawn a thread per core."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # torch is optional for the ingest stage
        pass


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, gpus: bool = False,
                threads_per_worker: int = 1, threads_per_gpu: int | None = None) -> Iterator[Client]:
    """Yield a connected client; the cluster (if we started it) is closed on exit.

    With ``gpus`` each GPU's worker runs ``threads_per_gpu`` tasks at once (see
    :func:`gpu_worker_threads`) and declares as many ``GPU`` units, each task asking for one; the
    libraries inside a task then run on one thread, since the task threads share the process.
    """
    quiet = not logging.getLogger().isEnabledFor(logging.DEBUG)
    # the workers' own logs: at CRITICAL a worker whose heartbeat meets the scheduler closing at
    # the end of a run prints no traceback; a task's failure reaches the job through its future
    worker_logs = logging.CRITICAL if quiet and not debug_enabled() else logging.ERROR
    if quiet:
        # distributed installs its own INFO handlers on import; keep the terminal for our summary
        for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.core"):
            logging.getLogger(name).setLevel(logging.ERROR)
    check_cluster_options(scheduler, workers, gpus, threads_per_gpu)
    if scheduler:
        client = Client(scheduler, timeout="30s")
        try:
            yield client
        finally:
            client.close()
        return
    if gpus:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as e:
            raise InputError("--gpus needs dask-cuda, which is not installed",
                             fix="pip install 'atrx-fusion[gpu]' on a machine with CUDA") from e
        threads = gpu_worker_threads(os.cpu_count() or 1, _visible_gpus(), threads_per_gpu)
        # one worker per GPU, declaring one GPU unit per task thread (each GPU task asks for one)
        cluster = LocalCUDACluster(threads_per_worker=threads, dashboard_address=":0",
                                   silence_logs=worker_logs, resources={"GPU": threads})
        lib_threads = 1
    else:
        cluster = LocalCluster(n_workers=workers or default_workers(), threads_per_worker=threads_per_worker,
                               processes=True, dashboard_address=":0", silence_logs=worker_logs)
        lib_threads = threads_per_worker
    client = Client(cluster)
    try:
        client.run(_limit_threads, lib_threads)
        yield client
    finally:
        client.close()
        cluster.close()
