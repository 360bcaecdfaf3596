"""Terminal output shared by the commands: progress bars and summary tables (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def console(stderr: bool = False) -> Console:
    """Our console; without a terminal (logs, CI) tables get 160 columns instead of rich's 80."""
    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal:
        con = Console(stderr=stderr, highlight=False, width=160)
    return con


def kv_table(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(str(k), str(v))
    return table


def rows_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], max_rows: int | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    shown = rows if max_rows is None else rows[:max_rows]
    for r in shown:
        table.add_row(*("" if v is None else str(v) for v in r))
    if max_rows is not None and len(rows) > max_rows:
        table.caption = f"{len(rows) - max_rows} more not shown"
    return table


@contextmanager
def progress_bar(con: Console, description: str, total: int) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar; yields ``update(done, total, label)`` for drivers to call.

    Without a terminal (a log file, CI) it prints one plain line per tenth of the work instead.
    """
    if not con.is_terminal:
        state = {"last": -1}

        def plain(done: int, total_: int, label: str = "") -> None:
            tenth = (10 * done) // max(total_, 1)
            if tenth != state["last"] or done == total_:
                state["last"] = tenth
                con.print(f"{description}: {done}/{total_}")

        yield plain
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=con) as prog:
        task = prog.add_task(description, total=total)

        def update(done: int, total_: int, label: str = "") -> None:
            prog.update(task, completed=done, total=total_)

        yield update
