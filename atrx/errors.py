"""One error family for every stage: each error carries its exit code and, where known, the fix.

The CLI has one handler for ``AtrxError`` (prints the message and the fix, exits with the code);
anything else is a bug and keeps its traceback. Stage errors derive from a family member *and*
from the builtin they used to be (``ValueError``, ``LookupError``, ...) so callers that catch the
builtin keep working.

``ATRX_DEBUG=1`` lets the raw exception through at every task boundary (:func:`debug_enabled`),
so a developer sees the library's own traceback instead of our wrapped message.
"""

from __future__ import annotations

import os
from enum import IntEnum
from typing import Any, Final

__all__ = [
    "DEBUG_ENV",
    "AtrxError",
    "ConflictError",
    "DataError",
    "ExitCode",
    "InputError",
    "NotFoundError",
    "ServiceError",
    "debug_enabled",
]

DEBUG_ENV: Final[str] = "ATRX_DEBUG"


class ExitCode(IntEnum):
    """Exit codes of every ``atrx`` command, for schedulers and shells."""

    OK = 0
    #: an unexpected failure (a bug, or a service that broke mid-way)
    FAILURE = 1
    #: bad input: configuration, missing data, unknown names; the message says what to fix
    BAD_INPUT = 2
    #: ``atrx retrain``: not promoted (worse than production, or a first model below the AUC floor)
    KEPT = 10
    #: Ctrl-C
    INTERRUPTED = 130


class AtrxError(Exception):
    """Base of every error the platform raises on purpose.

    ``fix`` says what the user can do; ``exit_code`` is what the CLI exits with.
    """

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, *, fix: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        if exit_code is not None:
            self.exit_code = ExitCode(exit_code)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # errors cross process boundaries by pickle (Dask workers, spawned processes), and some
        # subclasses take other constructor arguments than the message (ConfigError: path and
        # problems): rebuild from the state instead of calling __init__ with ``args``
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[AtrxError], args: tuple[Any, ...], state: dict[str, Any]) -> AtrxError:
    for base in cls.__mro__:  # the __new__ of the layout base (OSError for a FileNotFoundError mix)
        new = base.__dict__.get("__new__")
        if new is None or base is object:
            continue
        try:
            err = new(cls, *args)
        except TypeError:  # "X.__new__(cls) is not safe": another base owns the instance layout
            continue
        err.args = args
        err.__dict__.update(state)
        return err
    raise TypeError(f"cannot rebuild {cls.__name__}")


class InputError(AtrxError, ValueError):
    """Bad input from the user: a configuration, an argument, a file that cannot be used."""

    exit_code = ExitCode.BAD_INPUT


class DataError(AtrxError, ValueError):
    """The data cannot give what was asked (too few rows, degenerate values, wrong geometry)."""

    exit_code = ExitCode.BAD_INPUT


class NotFoundError(AtrxError, LookupError):
    """Something named does not exist: a model tag, a catalog, a file, a patient."""

    exit_code = ExitCode.BAD_INPUT


class ConflictError(AtrxError, RuntimeError):
    """Stored state contradicts itself or the request (an incomplete write, mixed versions)."""

    exit_code = ExitCode.FAILURE


class ServiceError(AtrxError, RuntimeError):
    """A service we started or called failed (the server did not start, HTTP answered non-2xx)."""

    exit_code = ExitCode.FAILURE


def debug_enabled() -> bool:
    """True when ``ATRX_DEBUG`` is set to a true value: let raw errors through task boundaries."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
