"""Opening a DuckDB file that other processes use too: short connections, retried while it is held.

DuckDB lets one process write a file, or several read it, never both at once. Every command holds
the catalog only for one short transaction, so a command that finds it held waits a moment and
tries again, up to a limit, then says who holds it.
"""

from __future__ import annotations

import os
import re
import time
from typing import Final

import duckdb

from atrx.errors import InputError

__all__ = ["WAIT_ENV", "CatalogBusyError", "connect"]


class CatalogBusyError(InputError):
    """Another process held the catalog file for longer than this one would wait (exit code 2)."""


#: seconds a command waits for another process's transaction on the catalog before it gives up
WAIT_ENV: Final = "ATRX_CATALOG_WAIT_S"
_DEFAULT_WAIT_S: Final = 120.0
_LOCKED = "Could not set lock"


def _wait_s() -> float:
    try:
        return max(0.0, float(os.environ.get(WAIT_ENV, _DEFAULT_WAIT_S)))
    except ValueError:
        return _DEFAULT_WAIT_S


def connect(path: str, read_only: bool, wait_s: float | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to ``path``, retried while another process holds the file. Raises
    :class:`CatalogBusyError` after ``wait_s`` (default ``$ATRX_CATALOG_WAIT_S``, 120 s).
    """
    deadline = time.monotonic() + (_wait_s() if wait_s is None else wait_s)
    pause = 0.01
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as e:
            if _LOCKED not in str(e):
                raise
            if time.monotonic() >= deadline:
                holder = re.search(r"PID (\d+)", str(e))
                who = f"process {holder[1]}" if holder else "another process"
                raise CatalogBusyError(
                    f"the catalog {path} is held by {who} for longer than {WAIT_ENV}="
                    f"{_wait_s() if wait_s is None else wait_s:g} s",
                    fix=f"wait for that command to finish and run again, or raise {WAIT_ENV}; a program "
                        "that opens the file itself (duckdb.connect) must close it after each query") from e
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
