"""Who may run now: one lock file per job that must not overlap (two ingests of one center).

A command takes ``<home>/locks/<name>.lock`` with an exclusive ``flock`` for as long as it runs and
writes who holds it (pid, host, command, start time) into the file. The kernel drops the lock when
the process ends, however it ends, so a killed ingest leaves no stale lock behind. A second
command that wants the same lock does not wait: it exits 2 (:class:`LockedError`) naming the
holder, so a scheduler sees at once why, and a user knows whom to wait for.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from atrx.errors import ExitCode, InputError

__all__ = ["LockedError", "exclusive", "holder"]


class LockedError(InputError):
    """Another command holds the lock this one needs (exit code 2)."""

    exit_code = ExitCode.BAD_INPUT


def _lock_path(home: str | os.PathLike[str], name: str) -> Path:
    return Path(home) / "locks" / f"{name}.lock"


def holder(home: str | os.PathLike[str], name: str) -> dict[str, object] | None:
    """What the lock file says about its holder (``None`` when no file or unreadable)."""
    try:
        return json.loads(_lock_path(home, name).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None


def _describe(info: dict[str, object] | None) -> str:
    if not info:
        return "another atrx command"
    return (f"`{info.get('command', 'atrx')}` (pid {info.get('pid')} on {info.get('host')}, "
            f"started {info.get('started')})")


@contextmanager
def exclusive(home: str | os.PathLike[str], name: str, what: str) -> Iterator[Path]:
    """Hold lock ``name`` under ``home`` for the ``with`` block, or raise :class:`LockedError`.

    ``what`` says in words what the lock protects ("ingest of center A"), for the message.
    """
    path = _lock_path(home, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{what} is already running: {_describe(holder(home, name))} holds {path}",
                fix="wait for it to finish (it releases the lock when it ends, also when killed), "
                    "or stop that process",
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "command": " ".join(["atrx", *sys.argv[1:]]) if sys.argv else "atrx",
                "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
