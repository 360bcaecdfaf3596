"""What every command shares: options, logging set-up, the error handler, step printing.

The CLI is the composition root: the only package that imports every stage. Stage imports
happen inside each command, so ``atrx --help`` starts in well under a second.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from atrx.errors import AtrxError, ExitCode, debug_enabled

HomeOpt = Annotated[str | None, typer.Option("--home", help="workspace folder (default $ATRX_HOME or ./.atrx)")]
SchedulerOpt = Annotated[str | None, typer.Option("--scheduler", help="address of an existing Dask scheduler")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=1, help="local Dask workers (default: cores)")]
AsOfOpt = Annotated[str | None, typer.Option("--as-of", help="use labels known on this date (YYYY-MM-DD); default today")]
StudyOpt = Annotated[Path | None, typer.Option("--study", help="study protocol YAML (default training/study.yaml)")]


def print_error(err: AtrxError) -> None:
    """``error: message`` and, where known, ``fix: ...`` on stderr."""
    from atrx.ui import console

    con = console(stderr=True)
    con.print(f"[bold red]error:[/] {err.message}", markup=True, highlight=False)
    if err.fix:
        con.print(f"[bold]fix:[/] {err.fix}", highlight=False)


class AtrxGroup(TyperGroup):
    """The one error handler of the CLI: every command runs inside :meth:`invoke`.

    An :class:`AtrxError` prints its message and fix and exits with its code; Ctrl-C exits 130;
    anything else is a bug and keeps its traceback. ``ATRX_DEBUG=1`` prints the traceback of an
    ``AtrxError`` too.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AtrxError as err:
            if debug_enabled():
                traceback.print_exc()
            print_error(err)
            raise typer.Exit(int(err.exit_code)) from None
        except KeyboardInterrupt:
            from atrx.ui import console

            console(stderr=True).print("[bold yellow]interrupted[/]")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


def setup_logging(verbose: bool) -> None:
    """Logging is configured here, in the entry point, never at import."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("distributed", "radiomics", "feast", "bentoml"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.INFO)
    # libraries' warnings (deprecations, small-sample notes) go to the log, shown with --verbose;
    # routing them through logging survives libraries that reset the warnings filters
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if verbose else logging.ERROR)
    # the retrain decision is the one line a scheduler's log must always carry
    logging.getLogger("atrx.retrain").setLevel(logging.INFO)


def step_printer(con: Any) -> Callable[[str], None]:
    """One timestamped line per step of a long job (plain text, so it reads well in a log too)."""
    start = time.monotonic()
    return lambda msg: con.print(f"[dim]{time.monotonic() - start:6.0f}s[/] {msg}", highlight=False)


def print_tables(con: Any, tables: Sequence[Any]) -> None:
    """Print ``Table``-like objects (``title``, ``columns``, ``rows``)."""
    from atrx.ui import rows_table

    for t in tables:
        con.print(rows_table(t.title, t.columns, t.rows))
