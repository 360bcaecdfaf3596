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
    ws = Workspace.at(home)
    summary = run_train(ws, as_of=as_of, study_path=study, progress=step_printer(con),
                        stability_runner=stability_runner(con, ws))
    print_tables(con, summary.tables())
    con.print(kv_table("training summary", summary.rows()))
    con.print(f"report: {summary.report_path}")


def stability_runner(con: Any, ws: Any) -> Any:
    """Measure a missing (or test-center-sampled) feature-stability table before training: the
    study's ``stability`` filter needs it, and only the features stage can compute radiomics."""

    def run(version: str, centers: list[str], patients: int, seed: int) -> None:
        from atrx.cli.stability import run_stability_cli
        from atrx.errors import InputError
        from features.radiomics import load_params
        from features.versioning import radiomics_version

        current = radiomics_version(load_params())
        if current != version:
            raise InputError(f"the radiomics features in Feast are version {version}, but the "
                             f"parameter file now gives {current}: a stability table cannot be "
                             "measured for features the parameter file no longer makes",
                             fix="rerun `atrx features` so Feast holds the current version")
        con.print(f"measuring feature stability of {version} on {patients} patients of centers "
                  f"{', '.join(centers)} (`atrx stability --centers {','.join(centers)}`)",
                  highlight=False)
        run_stability_cli(con, ws, patients=patients, seed=seed, centers=centers)

    return run


PromoteBelowFloorOpt = Annotated[bool, typer.Option(
    "--promote-below-floor",
    help="with no production model, promote the candidate even when its AUC's DeLong 95% CI "
         "lower bound is not above promotion.first_model_auc_floor (recorded as "
         "'override: below floor'); no effect when a production model exists")]


def retrain(home: HomeOpt = None, as_of: AsOfOpt = None, study: StudyOpt = None,
            promote_below_floor: PromoteBelowFloorOpt = False) -> None:
    """Train, compare with production on the same evaluation rows, promote when not worse.

    With no production model, the first candidate is promoted only when the DeLong 95% CI lower
    bound of its AUC is above promotion.first_model_auc_floor (or with --promote-below-floor).
    Exit codes: 0 promoted, 10 not promoted (production kept, or first model below the floor),
    2 bad input, 1 failure.
    """
    from atrx.ui import console
    from atrx.workspace import Workspace

    summary = run_retrain_cli(console(), Workspace.at(home), as_of=as_of, study=study,
                              promote_below_floor=promote_below_floor)
    raise typer.Exit(int(summary.exit_code))


def run_retrain_cli(con: Any, ws: Any, *, as_of: str | None = None, study: Any = None,
                    promote_below_floor: bool = False) -> Any:
    """Run the retrain decision with step lines; print its tables, decision and, for a first
    model, how it fared against the floor (kept with the fix, or promoted by the override)."""
    from atrx.ui import kv_table
    from training.promotion import run_retrain

    summary = run_retrain(ws, as_of=as_of, study_path=study, progress=step_printer(con),
                          promote_below_floor=promote_below_floor,
                          stability_runner=stability_runner(con, ws))
    print_tables(con, summary.tables())
    con.print(kv_table("retrain decision", summary.rows()))
    if summary.override:
        con.print(f"[bold yellow]override:[/] {summary.candidate_tag} promoted although its AUC CI "
                  f"lower bound is not above the first-model floor {summary.floor:.3f} "
                  "(--promote-below-floor); the stage history records 'override: below floor'",
                  highlight=False)
    elif summary.fix:
        con.print(f"[bold yellow]not promoted:[/] {summary.candidate_tag} stays a candidate "
                  "(see reason)", highlight=False)
        con.print(f"[bold]fix:[/] {summary.fix}", highlight=False)
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
