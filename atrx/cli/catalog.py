"""``atrx catalog``: read the DuckDB catalog with SQL while other commands use it.

It opens the file read-only for the one query and waits (``$ATRX_CATALOG_WAIT_S``) while a job's
short transaction holds it, so it works during an ingest or a features job, unlike a program that
keeps its own connection open.
"""

from __future__ import annotations

from typing import Annotated

import typer

from atrx.cli._common import HomeOpt


def catalog(sql: Annotated[str, typer.Argument(help="one read-only SQL query, e.g. "
                                                    "\"select center, reason, fix from quarantine\"")],
            home: HomeOpt = None,
            max_rows: Annotated[int, typer.Option("--max-rows", min=1, help="rows shown at most")] = 50,
            csv: Annotated[bool, typer.Option("--csv", help="print CSV (every row) instead of a table")] = False,
            ) -> None:
    """Query the catalog (runs, scans, scan_sources, clinical, labels, quarantine, lineage, deid_keys)."""
    import duckdb

    from atrx.catalog import Catalog
    from atrx.errors import InputError
    from atrx.ui import console, rows_table
    from atrx.workspace import Workspace

    ws = Workspace.at(home)
    with Catalog(ws.catalog, read_only=True) as cat:
        try:
            frame = cat.frame(sql)
        except duckdb.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"the query failed: {first}",
                             fix="the catalog is read-only here; check table and column names with "
                                 "`atrx catalog \"select table_name, column_name from information_schema.columns\"`"
                             ) from None
    if csv:
        typer.echo(frame.to_csv(index=False), nl=False)
        return
    rows = frame.itertuples(index=False, name=None)
    con = console()
    con.print(rows_table(f"{len(frame)} row(s)", [str(c) for c in frame.columns], list(rows), max_rows=max_rows))


def register(app: typer.Typer) -> None:
    app.command()(catalog)
