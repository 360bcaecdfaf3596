"""A CUDA stream of a task's own: the task threads of one GPU worker share its device.

On the default stream every host sync (``.cpu()``, ``.tolist()``, ``torch.equal``) waits for the
kernels all threads queued before it; on a stream of its own a task waits only for its own, so one
task's host work overlaps the others' kernels. On the CPU there is nothing to do.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

__all__ = ["own_stream"]


def own_stream(device: str | torch.device) -> AbstractContextManager[Any]:
    """A context in which ``device``'s kernels go to a fresh stream (after what is queued so far)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return nullcontext()
    stream = torch.cuda.Stream(device=dev)
    # the pool's streams do not wait for the default one: weights or inputs copied there first
    # must have landed before this stream reads them
    stream.wait_stream(torch.cuda.current_stream(dev))
    return torch.cuda.stream(stream)
