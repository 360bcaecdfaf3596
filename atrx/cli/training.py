"""``atrx train``, ``atrx retrain``, ``atrx models``: the protocol, promotion and the registry."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from atrx.cli._common import AsOfOpt, HomeOpt, StudyOpt, print_tables, step_printer


def train(home: HomeOpt = None, as_of: AsOfOpt = None, study: StudyOpt = None) -> None:
    """Run the study protocol on point-in-time features from Feast; report; register a candidate."""
    from atrx.ui import console, kv_table
    from atrx.workspace import Workspace
    from training.run import run_train

    con = console()
    summary = run_train(Workspace.at(home), as_of=as_of, study_path=study, progress=step_printer(con))
    print_tables(con, summary.tables())
    con.print(kv_table("training summary", summary.rows()))
    con.print(f"report: {summary.report_path}")


def retrain(home: HomeOpt = None, as_of: AsOfOpt = None, study: StudyOpt = None) -> None:
    """Train, compare with production on the same evaluation rows, promote when not worse.

    Exit codes: 0 promoted, 10 production kept (candidate worse), 2 bad input, 1 failure.
    """
    from atrx.ui import console
    from atrx.workspace import Workspace

    summary = run_retrain_cli(console(), Workspace.at(home), as_of=as_of, study=study)
    raise typer.Exit(int(summary.exit_code))


def run_retrain_cli(con: Any, ws: Any, *, as_of: str | None = None, study: Any = None) -> Any:
    """Run the retrain decision with step lines; print its tables and decision."""
    from atrx.ui import kv_table
    from training.promotion import run_retrain

    summary = run_retrain(ws, as_of=as_of, study_path=study, progress=step_printer(con))
    print_tables(con, summary.tables())
    con.print(kv_table("retrain decision", summary.rows()))
    return summary


def models_list(home: HomeOpt = None) -> None:
    """Every registered atrx_fusion model with its stage and headline AUCs."""
    from atrx.registry import list_models
    from atrx.ui import console, rows_table
    from atrx.workspace import Workspace

    listing = list_models(Workspace.at(home))
    console().print(rows_table(f"atrx_fusion models ({len(listing.models)})", listing.columns, listing.rows()))


def models_show(tag: Annotated[str, typer.Argument(help="a tag, a version, 'latest' or 'production'")],
                home: HomeOpt = None) -> None:
    """Metadata of one model: metrics, features, coefficients, cutoff, feature versions, hashes."""
    from atrx.registry import show
    from atrx.ui import console, kv_table
    from atrx.workspace import Workspace

    record = show(Workspace.at(home), tag)
    console().print(kv_table(f"model {record.tag}", record.rows()))


def models_promote(tag: Annotated[str, typer.Argument(help="the model to make production")],
                   home: HomeOpt = None) -> None:
    """Make a model the production model (the previous one is archived)."""
    from atrx.registry import promote
    from atrx.ui import console, kv_table
    from atrx.workspace import Workspace

    result = promote(Workspace.at(home), tag, reason="manual promotion (atrx models promote)")
    console().print(kv_table("promotion", result.rows()))


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    app.command()(train)
    app.command()(retrain)
    models_app.command("list")(models_list)
    models_app.command("show")(models_show)
    models_app.command("promote")(models_promote)
