"""Questions about the process trees the serving tests start, safe against the reaper.

A process whose parent has died is reparented to pid 1, which reaps it when it likes; so between
two questions about one process (is it running? is it a zombie?) it may vanish.
"""

from __future__ import annotations

from collections.abc import Iterable

import psutil


def gone(process: psutil.Process) -> bool:
    """Dead: reaped, or a zombie."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_all(processes: Iterable[psutil.Process]) -> None:
    """SIGKILL each process still alive (cleanup after a failed test)."""
    for process in processes:
        try:
            if process.is_running():
                process.kill()
        except psutil.NoSuchProcess:
            pass
