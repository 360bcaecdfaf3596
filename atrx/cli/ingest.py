"""``atrx synth``, ``atrx center validate``, ``atrx ingest``: from an export to the image store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from atrx.cli._common import HomeOpt, SchedulerOpt, WorkersOpt
from atrx.errors import ExitCode

if TYPE_CHECKING:  # the stages are imported inside the commands, so --help stays fast
    from atrx.config.center import CenterConfig
    from atrx.workspace import Workspace
    from ingest.driver import IngestSummary
    from ingest.preprocess import PreprocessParams
    from ingest.synth import CohortSummary


def synth(
    out: Annotated[Path, typer.Option("--out", help="folder to write the cohort into")] = Path(".atrx/cohort"),
    scale: Annotated[float, typer.Option("--scale", min=0.01, help="multiply every count of Table 1")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workers: WorkersOpt = None,
    center_effects: Annotated[bool, typer.Option(
        "--center-effects/--no-center-effects",
        help="per-center acquisition and annotation differences (bias, field strength, contrast, "
             "slice thickness, mask margins; docs/synthetic_cohort.md); off reproduces, byte for byte, "
             "the cohort generated before they existed")] = True,
    size: Annotated[str, typer.Option(
        "--size", help="fields of view: compact (just around the head, fast) or clinical (220-240 mm, "
                       "144-154 mm coverage as hospitals send: about 3x the voxels, for benchmarks)")] = "compact",
) -> None:
    """Write a synthetic three-center export (DICOM, NIfTI, NRRD, CSV/XLSX) shaped like Table 1."""
    from atrx.cluster import default_workers
    from atrx.errors import InputError
    from atrx.ui import console, kv_table, progress_bar
    from ingest.synth import generate_cohort
    from ingest.synth.centers import SIZES

    if size not in SIZES:
        raise InputError(f"--size {size!r} is not a synthetic scan size",
                         fix=f"use one of: {', '.join(SIZES)}")
    con = console()
    with progress_bar(con, "synthesising patients", 1) as update:
        summary = generate_cohort(out, scale=scale, seed=seed, workers=workers or default_workers(),
                                  progress=lambda d, t: update(d, t, ""), center_effects=center_effects,
                                  size=size)
    print_cohort(con, summary)
    con.print(kv_table("summary", [("written to", out.resolve()), ("seconds", f"{summary.seconds:.1f}"),
                                   ("center effects", "on" if center_effects else "off"),
                                   ("scan size", size),
                                   ("center files", out.resolve() / "centers")]))


def print_cohort(con: Any, summary: CohortSummary) -> None:
    """The per-center table of a generated cohort."""
    from atrx.ui import rows_table

    rows = summary.table()
    con.print(rows_table("synthetic cohort", list(rows[0].keys()), [list(r.values()) for r in rows]))


def center_validate(
    config: Annotated[Path, typer.Argument(help="centers/<id>.yaml")],
    max_problems: Annotated[int, typer.Option("--max-problems", help="rows of problems to show")] = 200,
    report: Annotated[Path | None, typer.Option(
        "--report", help="also write DIR/onboarding-<center>.html: the refused patients, a thumbnail row per "
                         "study with the masks outlined, intensity histograms and ROI volumes (raw ids: keep "
                         "it local); nothing else is written")] = None,
) -> None:
    """Dry run: check a center file against its export and write nothing (but the --report).

    Exit code 0: ready; 1: some patients would be quarantined (listed); 2: the file or the export
    cannot be used at all.
    """
    from atrx.config.center import load_center
    from atrx.ui import console, kv_table, progress_bar, rows_table
    from ingest.discover import plan_center

    con = console()
    cfg = load_center(config)
    plan = plan_center(cfg, cfg.deid.resolve_key())
    counts = plan.counts()
    con.print(kv_table(f"center {cfg.center}: {config}", [*counts.items()]))
    problems = plan.all_problems()
    if problems:
        con.print(rows_table(
            "problems (patient ids are raw here: this report stays on your machine)",
            ["patient", "blocking", "what", "file", "fix"],
            [(p.patient or "-", "yes" if p.blocking else "note", p.what, p.file, p.fix) for p in problems],
            max_rows=max_problems))
    center_blocking = [p for p in plan.problems if p.blocking]
    n_block = len(plan.blocking)
    verdict = ("[bold red]cannot ingest this center[/]" if center_blocking or not plan.patients else
               f"[bold yellow]{counts['patients_refused']} patient(s) would be quarantined[/]" if n_block else
               "[bold green]ready to ingest[/]")
    written = "Nothing was written."
    if report is not None:
        from ingest.onboarding import validate_report

        with progress_bar(con, f"onboarding report {cfg.center}", max(len(plan.patients), 1)) as update:
            path = validate_report(plan, report, progress=update)
        con.print(f"onboarding report (raw ids: keep it on this machine): {path}")
        written = f"Nothing else was written (the report is in {report})."
    con.print(f"{verdict}: {counts['patients_ready']} of {counts['patients']} patients ready, "
              f"{n_block} blocking problem(s), {len(problems) - n_block} note(s). {written}")
    if center_blocking or not plan.patients:
        raise typer.Exit(int(ExitCode.BAD_INPUT))
    if n_block:
        raise typer.Exit(int(ExitCode.FAILURE))


def ingest(
    configs: Annotated[list[Path], typer.Argument(help="one or more centers/<id>.yaml")],
    home: HomeOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    preprocess: Annotated[Path | None, typer.Option(
        "--preprocess", help="YAML of preprocessing parameters (PreprocessParams keys), e.g. "
                             "ingest/preprocess/1.2.0.yaml (the settings before 2026-12-04)")] = None,
) -> None:
    """Ingest centers into <home>/images.zarr and <home>/catalog.duckdb on a Dask cluster."""
    from atrx.config.base import load_yaml_model
    from atrx.config.center import load_center
    from atrx.ui import console
    from atrx.workspace import Workspace
    from ingest.driver import check_key
    from ingest.preprocess import PreprocessParams

    ws = Workspace.at(home)
    params = load_yaml_model(PreprocessParams, preprocess) if preprocess is not None else None
    cfgs = [load_center(c) for c in configs]
    for cfg in cfgs:  # every key (and its fingerprint in the catalog) before the first center starts
        check_key(ws, cfg.center, cfg.deid.resolve_key())
    con = console()
    any_quarantined = False
    for cfg in cfgs:
        summary = ingest_one(con, cfg, ws, scheduler, workers, params)
        any_quarantined |= summary.studies["quarantined"] > 0 or summary.patients_quarantined > 0
    con.print(f"workspace: {ws.home}")
    if any_quarantined:
        con.print("[yellow]some patients were quarantined; the table above says why and how to fix it[/]")


def ingest_one(con: Any, cfg: CenterConfig, ws: Workspace, scheduler: str | None,
               workers: int | None, params: PreprocessParams | None = None) -> IngestSummary:
    """Ingest one center with a progress bar, write its onboarding report, print its summary and
    quarantine. A report that cannot be written is a warning: the ingest itself is recorded."""
    from atrx.ui import kv_table, progress_bar, rows_table
    from ingest.driver import run_ingest

    with progress_bar(con, f"ingesting center {cfg.center}", 1) as update:
        summary = run_ingest(cfg, ws, scheduler=scheduler, workers=workers, params=params,
                             progress=update)
    report = _onboarding_report(con, summary, ws)
    con.print(kv_table(f"ingest summary: center {cfg.center}", [*summary.rows(), ("onboarding report", report)]))
    blocking = [q for q in summary.quarantined if q["blocking"]]
    if blocking:
        con.print(rows_table(f"quarantined ({len(blocking)})", ["patient", "study", "stage", "reason", "file", "fix"],
                             [(q["patient_id"] or "-", q["study_id"], q["stage"], q["reason"], q["file"], q["fix"])
                              for q in blocking], max_rows=50))
    return summary


def _onboarding_report(con: Any, summary: IngestSummary, ws: Workspace) -> str:
    """Write ``<home>/reports/onboarding-<center>-<run>.html`` (pseudonyms only); its path, or why not."""
    from atrx.errors import debug_enabled
    from atrx.ui import progress_bar
    from ingest.onboarding import ingest_report

    try:
        total = max(summary.patients_planned, 1)
        with progress_bar(con, f"onboarding report {summary.center}", total) as update:
            return ingest_report(summary, ws, progress=update)
    except Exception as e:  # the ingest is recorded already; a report must not turn it into a failure
        if debug_enabled():
            raise
        con.print(f"[yellow]the onboarding report could not be written ({type(e).__name__}); the ingest is "
                  f"complete. Set ATRX_DEBUG=1 to see why.[/]")
        return "not written (see the warning above)"


def register(app: typer.Typer, center_app: typer.Typer) -> None:
    """Add the ingest commands to the app (``center validate`` under ``center``)."""
    app.command()(synth)
    center_app.command("validate")(center_validate)
    app.command()(ingest)
