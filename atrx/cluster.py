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

from atrx.errors import InputError


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


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
                threads_per_worker: int = 1) -> Iterator[Client]:
    """Yield a connected client; the cluster (if we started it) is closed on exit."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # distributed installs its own INFO handlers on import; keep the terminal for our summary
        for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.core"):
            logging.getLogger(name).setLevel(logging.ERROR)
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
        # one worker per GPU, each declaring the resource the CNN tasks ask for
        cluster = LocalCUDACluster(threads_per_worker=threads_per_worker, dashboard_address=":0",
                                   silence_logs=logging.ERROR, resources={"GPU": 1})
    else:
        cluster = LocalCluster(n_workers=workers or default_workers(), threads_per_worker=threads_per_worker,
                               processes=True, dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster)
    try:
        client.run(_limit_threads, threads_per_worker)
        yield client
    finally:
        client.close()
        cluster.close()
