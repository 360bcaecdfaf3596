"""The ``atrx`` command. Imports of the stages happen inside each command so ``--help`` is instant."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="ATRX Fusion: multicenter brain MRI to a served ATRX prediction.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
center_app = typer.Typer(help="Onboard a center: check its YAML against its export.", no_args_is_help=True)
app.add_typer(center_app, name="center")
models_app = typer.Typer(help="The model registry (BentoML model store): list, show, promote.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")

HomeOpt = Annotated[str | None, typer.Option("--home", help="workspace folder (default $ATRX_HOME or ./.atrx)")]
SchedulerOpt = Annotated[str | None, typer.Option("--scheduler", help="address of an existing Dask scheduler")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=1, help="local Dask workers (default: cores)")]


def _setup_logging(verbose: bool) -> None:
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


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    _setup_logging(verbose)


def _fail(message: str, code: int = 2) -> typer.Exit:
    from atrx.ui import console

    console(stderr=True).print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="folder to write the cohort into")] = Path(".atrx/cohort"),
    scale: Annotated[float, typer.Option("--scale", min=0.01, help="multiply every count of Table 1")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workers: WorkersOpt = None,
) -> None:
    """Write a synthetic three-center export (DICOM, NIfTI, NRRD, CSV/XLSX) shaped like Table 1."""
    from atrx.cluster import default_workers
    from atrx.ui import console, kv_table, progress_bar, rows_table
    from ingest.synth import generate_cohort

    con = console()
    with progress_bar(con, "synthesising patients", 1) as update:
        summary = generate_cohort(out, scale=scale, seed=seed, workers=workers or default_workers(),
                                  progress=lambda d, t: update(d, t, ""))
    rows = summary.table()
    con.print(rows_table("synthetic cohort", list(rows[0].keys()) if rows and isinstance(rows[0], dict)
                         else ["center", "patients", "ATRX+", "ATRX-", "files"],
                         [list(r.values()) if isinstance(r, dict) else r for r in rows]))
    con.print(kv_table("summary", [("written to", out.resolve()), ("seconds", f"{summary.seconds:.1f}"),
                                   ("center files", out.resolve() / "centers")]))


@center_app.command("validate")
def center_validate(
    config: Annotated[Path, typer.Argument(help="centers/<id>.yaml")],
    max_problems: Annotated[int, typer.Option("--max-problems", help="rows of problems to show")] = 200,
) -> None:
    """Dry run: check a center file against its export and write nothing.

    Exit code 0: ready; 1: some patients would be quarantined (listed); 2: the file or the export
    cannot be used at all.
    """
    from atrx.config import ConfigError
    from atrx.config.center import load_center
    from atrx.ui import console, kv_table, rows_table
    from ingest.discover import plan_center

    con = console()
    try:
        cfg = load_center(config)
        key = cfg.deid.resolve_key()
    except ConfigError as e:
        raise _fail(str(e)) from None
    except ValueError as e:
        raise _fail(f"{config}: {e}") from None
    plan = plan_center(cfg, key)
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
    con.print(f"{verdict}: {counts['patients_ready']} of {counts['patients']} patients ready, "
              f"{n_block} blocking problem(s), {len(problems) - n_block} note(s). Nothing was written.")
    if center_blocking or not plan.patients:
        raise typer.Exit(2)
    if n_block:
        raise typer.Exit(1)


@app.command()
def ingest(
    configs: Annotated[list[Path], typer.Argument(help="one or more centers/<id>.yaml")],
    home: HomeOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Ingest centers into <home>/images.zarr and <home>/catalog.duckdb on a Dask cluster."""
    from atrx.config import ConfigError
    from atrx.config.center import load_center
    from atrx.ui import console
    from atrx.workspace import Workspace

    ws = Workspace.at(home)
    try:
        cfgs = [load_center(c) for c in configs]
        for cfg in cfgs:
            cfg.deid.resolve_key()
    except ConfigError as e:
        raise _fail(str(e)) from None
    except ValueError as e:
        raise _fail(str(e)) from None
    con = console()
    any_quarantined = False
    for cfg in cfgs:
        summary = _ingest_one(con, cfg, ws, scheduler, workers)
        any_quarantined |= summary.studies["quarantined"] > 0 or summary.patients_quarantined > 0
    con.print(f"workspace: {ws.home}")
    if any_quarantined:
        con.print("[yellow]some patients were quarantined; the table above says why and how to fix it[/]")


def _ingest_one(con, cfg, ws, scheduler, workers):  # noqa: ANN001, ANN202 - CLI glue
    from atrx.ui import kv_table, progress_bar, rows_table
    from ingest.driver import run_ingest

    with progress_bar(con, f"ingesting center {cfg.center}", 1) as update:
        summary = run_ingest(cfg, ws, scheduler=scheduler, workers=workers, progress=update)
    con.print(kv_table(f"ingest summary: center {cfg.center}", summary.rows()))
    blocking = [q for q in summary.quarantined if q["blocking"]]
    if blocking:
        con.print(rows_table(f"quarantined ({len(blocking)})", ["patient", "study", "stage", "reason", "file", "fix"],
                             [(q["patient_id"] or "-", q["study_id"], q["stage"], q["reason"], q["file"], q["fix"])
                              for q in blocking], max_rows=50))
    return summary


@app.command()
def features(
    home: HomeOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    gpus: Annotated[bool, typer.Option("--gpus", help="dask_cuda.LocalCUDACluster; the CNN runs on CUDA")] = False,
    weights: Annotated[str, typer.Option(
        "--weights", help="imagenet (torchvision's cache), a .pth file, or random:SEED (tests, demos)")] = "imagenet",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="crops per CNN forward pass")] = 32,
    checkpoint_seconds: Annotated[float, typer.Option(
        "--checkpoint-seconds", min=0,
        help="store finished results at least this often, so a killed run loses little")] = 300.0,
) -> None:
    """Radiomics and ResNet34 features of every ingested scan into the Feast offline store."""
    from atrx.ui import console
    from atrx.workspace import Workspace
    from features.errors import WeightsError, WeightsNotFoundError

    con = console()
    try:
        _features_run(con, Workspace.at(home), scheduler, workers, gpus, weights, batch_size,
                      checkpoint_seconds)
    except (WeightsNotFoundError, WeightsError, FileNotFoundError) as e:
        raise _fail(str(e)) from None


def _features_run(con, ws, scheduler, workers, gpus, weights, batch_size, checkpoint_seconds=300.0):  # noqa: ANN001, ANN202 - CLI glue
    from atrx.ui import kv_table, progress_bar, rows_table
    from features.job import run_features

    if weights.startswith("random:"):
        con.print(f"[bold yellow]CNN weights are RANDOM ({weights}), not ImageNet: deep features are for "
                  "tests and demos only. The choice is recorded in the feature version and lineage.[/]")
    with progress_bar(con, "computing features", 1) as update:
        summary = run_features(ws, scheduler=scheduler, workers=workers, gpus=gpus, weights=weights,
                               batch_size=batch_size, progress=update,
                               checkpoint_seconds=checkpoint_seconds)
    con.print(rows_table("rows per feature view", ["view", "written this run", "rows in current version"],
                         summary.view_rows()))
    failures = summary.failure_rows()
    if failures:
        con.print(rows_table(f"ROIs without features ({len(failures)})", ["patient", "view", "status", "reason"],
                             failures, max_rows=40))
    con.print(kv_table("features summary", summary.rows()))
    return summary


AsOfOpt = Annotated[str | None, typer.Option("--as-of", help="use labels known on this date (YYYY-MM-DD); default today")]
StudyOpt = Annotated[Path | None, typer.Option("--study", help="study protocol YAML (default training/study.yaml)")]


def _step_printer(con):  # noqa: ANN001, ANN202 - CLI glue
    """One timestamped line per step of a long job (plain text, so it reads well in a log too)."""
    start = time.monotonic()
    return lambda msg: con.print(f"[dim]{time.monotonic() - start:6.0f}s[/] {msg}", highlight=False)


def _print_tables(con, tables) -> None:  # noqa: ANN001 - CLI glue
    from atrx.ui import rows_table

    for t in tables:
        con.print(rows_table(t.title, t.columns, t.rows))


@app.command()
def train(home: HomeOpt = None, as_of: AsOfOpt = None, study: StudyOpt = None) -> None:
    """Run the study protocol on point-in-time features from Feast; report; register a candidate."""
    from atrx.config import ConfigError
    from atrx.ui import console, kv_table
    from atrx.workspace import Workspace
    from training.dataset import TrainingDataError
    from training.job import run_train

    con = console()
    try:
        summary = run_train(Workspace.at(home), as_of=as_of, study_path=study,
                            progress=_step_printer(con))
    except (ConfigError, TrainingDataError) as e:
        raise _fail(str(e)) from None
    _print_tables(con, summary.tables())
    con.print(kv_table("training summary", summary.rows()))
    con.print(f"report: {summary.report_path}")


@app.command()
def retrain(home: HomeOpt = None, as_of: AsOfOpt = None, study: StudyOpt = None) -> None:
    """Train, compare with production on the same evaluation rows, promote when not worse.

    Exit codes: 0 promoted, 10 production kept (candidate worse), 2 bad input, 1 failure.
    """
    from atrx.ui import console, kv_table
    from atrx.workspace import Workspace
    from training.job import run_retrain

    con = console()
    summary = run_retrain(Workspace.at(home), as_of=as_of, study_path=study,
                          progress=_step_printer(con))
    _print_tables(con, summary.tables())
    con.print(kv_table("retrain decision", summary.rows()))
    raise typer.Exit(summary.exit_code)


@models_app.command("list")
def models_list(home: HomeOpt = None) -> None:
    """Every registered atrx_fusion model with its stage and headline AUCs."""
    from atrx.ui import console, rows_table
    from atrx.workspace import Workspace
    from training.registry import list_models

    listing = list_models(Workspace.at(home))
    console().print(rows_table(f"atrx_fusion models ({len(listing.models)})", listing.columns, listing.rows()))


@models_app.command("show")
def models_show(tag: Annotated[str, typer.Argument(help="a tag, a version, 'latest' or 'production'")],
                home: HomeOpt = None) -> None:
    """Metadata of one model: metrics, features, coefficients, cutoff, feature versions, hashes."""
    from atrx.ui import console, kv_table
    from atrx.workspace import Workspace
    from training.registry import RegistryError, show

    try:
        record = show(Workspace.at(home), tag)
    except RegistryError as e:
        raise _fail(str(e)) from None
    console().print(kv_table(f"model {record.tag}", record.rows()))


@models_app.command("promote")
def models_promote(tag: Annotated[str, typer.Argument(help="the model to make production")],
                   home: HomeOpt = None) -> None:
    """Make a model the production model (the previous one is archived)."""
    from atrx.ui import console, kv_table
    from atrx.workspace import Workspace
    from training.registry import RegistryError, promote

    try:
        result = promote(Workspace.at(home), tag, reason="manual promotion (atrx models promote)")
    except RegistryError as e:
        raise _fail(str(e)) from None
    console().print(kv_table("promotion", result.rows()))


@app.command()
def materialize(
    home: HomeOpt = None,
    full: Annotated[bool, typer.Option("--full", help="reload every row, not only what is new")] = False,
) -> None:
    """Load the features the production model needs into Feast's online store (incremental)."""
    from atrx.ui import console, kv_table
    from atrx.workspace import Workspace
    from serving.materialize import run_materialize
    from serving.predictor import ServingSetupError

    try:
        summary = run_materialize(Workspace.at(home), full=full)
    except ServingSetupError as e:
        raise _fail(str(e)) from None
    console().print(kv_table("materialize summary", summary.rows()))


@app.command()
def serve(
    home: HomeOpt = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 3000,
    host: Annotated[str, typer.Option("--host", help="interface to bind")] = "127.0.0.1",
) -> None:
    """Serve the production model over HTTP (BentoML); Ctrl-C stops it. API key: $ATRX_API_KEY."""
    from atrx.ui import console
    from atrx.workspace import Workspace
    from serving.predictor import ServingSetupError
    from serving.server import ServerStartError
    from serving.server import serve as start_server

    con = console()
    try:
        server = start_server(Workspace.at(home), port, host=host)
    except ServingSetupError as e:
        raise _fail(str(e)) from None
    with server:
        try:
            server.wait_ready()
        except ServerStartError as e:
            raise _fail(str(e), code=1) from None
        con.print(f"serving {server.url}  (POST /predict, /predict_batch, /predict_features; Ctrl-C stops)")
        code = server.wait()
    raise typer.Exit(0 if code in (0, 130, -15) else code)


@app.command()
def predict(
    patient_id: Annotated[str, typer.Argument(help="the patient's pseudonym, e.g. A-3f2a9c1b0d4e")],
    url: Annotated[str, typer.Option("--url", help="the server started by `atrx serve`")] = "http://127.0.0.1:3000",
) -> None:
    """Ask a running server for one patient's prediction (API key from $ATRX_API_KEY)."""
    from atrx.ui import console, kv_table
    from serving.server import ServingHTTPError, predict_http

    try:
        answer = predict_http(url, patient_id)
    except ServingHTTPError as e:
        raise _fail(str(e), code=1) from None
    except OSError as e:
        raise _fail(f"cannot reach {url} ({e}); start it with `atrx serve`", code=1) from None
    console().print(kv_table(f"prediction for {patient_id}", _prediction_rows(answer)))


def _prediction_rows(answer: dict) -> list[tuple[str, str]]:
    rows = [(k, f"{answer[k]:.3f}" if isinstance(answer[k], float) else str(answer[k]))
            for k in ("probability", "risk_group", "imaging_score", "model_version") if k in answer]
    rows += [(f"points: {k}", f"{v:.1f}") for k, v in (answer.get("contributions") or {}).items()]
    rows += [(f"features as of: {k}", str(v)) for k, v in (answer.get("feature_timestamps") or {}).items()]
    return rows


@app.command()
def demo(
    scale: Annotated[float, typer.Option("--scale", min=0.01, help="cohort size relative to Table 1")] = 0.2,
    home: HomeOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workers: WorkersOpt = None,
) -> None:
    """The whole flow on a generated three-center cohort: synth, validate, ingest, features, train,
    register and promote, materialize, serve, predict over HTTP."""

    from atrx.cluster import default_workers
    from atrx.config.center import load_center
    from atrx.ui import console, kv_table, rows_table
    from atrx.workspace import Workspace
    from ingest.discover import plan_center
    from ingest.synth import generate_cohort

    t0 = time.perf_counter()
    con = console()
    ws = Workspace.at(home)
    ws.ensure()
    cohort = Path(ws.home) / "cohort"
    con.rule("1. synthesise a three-center export")
    if (cohort / "centers").is_dir():
        con.print(f"reusing the cohort already at {cohort} (delete it to regenerate)")
    else:
        summary = generate_cohort(cohort, scale=scale, seed=seed, workers=workers or default_workers())
        rows = summary.table()
        con.print(rows_table("synthetic cohort", list(rows[0].keys()), [list(r.values()) for r in rows]))
    con.rule("2. validate each center (dry run, writes nothing)")
    cfgs = []
    for path in sorted((cohort / "centers").glob("*.yaml")):
        cfg = load_center(path)
        plan = plan_center(cfg, cfg.deid.resolve_key())
        c = plan.counts()
        con.print(f"center {cfg.center}: {c['patients_ready']}/{c['patients']} patients ready, "
                  f"{len(plan.blocking)} blocking problem(s)")
        cfgs.append(cfg)
    con.rule("3. ingest on Dask")
    for cfg in cfgs:
        _ingest_one(con, cfg, ws, None, workers)
    con.rule("4. features on Dask (radiomics + ResNet34)")
    _features_run(con, ws, None, workers, False, "random:0", 32)
    con.rule("5. train, report, register; promote when not worse (atrx retrain)")
    from training.job import run_retrain

    decision = run_retrain(ws, progress=_step_printer(con))
    _print_tables(con, decision.tables())
    con.print(kv_table("retrain decision", decision.rows()))
    if decision.exit_code not in (0, 10):
        raise _fail(f"training failed: {decision.error}", code=decision.exit_code)
    con.rule("6. materialise the production model's features into the online store")
    from serving.materialize import run_materialize

    con.print(kv_table("materialize summary", run_materialize(ws).rows()))
    con.rule("7. serve over HTTP and ask for a few predictions")
    _demo_predictions(con, ws)
    report = decision.train.report_path if decision.train else "-"
    con.print(kv_table("demo", [("workspace", ws.home), ("cohort", cohort), ("report", report),
                                ("minutes", f"{(time.perf_counter() - t0) / 60:.1f}")]))
    con.print(f"[bold]Open the report:[/] {report}")


def _demo_predictions(con, ws) -> None:  # noqa: ANN001 - CLI glue
    import duckdb

    from atrx.ui import rows_table
    from serving.server import free_port, predict_http
    from serving.server import serve as start_server

    with duckdb.connect(ws.catalog, read_only=True) as cat:
        ids = [r[0] for r in cat.execute(
            "SELECT patient_id FROM labels WHERE patient_id IN (SELECT patient_id FROM scans) "
            "ORDER BY center DESC, patient_id LIMIT 4").fetchall()]
    log = Path(ws.logs) / "demo-server.log"
    with start_server(ws, free_port(), log_file=log) as server:
        server.wait_ready(timeout=180)
        rows = []
        for pid in ids:
            a = predict_http(server.url, pid)
            rows.append((pid, f"{a['probability']:.3f}", a["risk_group"], f"{a['imaging_score']:.2f}",
                         a["model_version"]))
        con.print(rows_table(f"predictions from {server.url}/predict", ["patient", "probability", "risk group",
                                                                          "imaging score", "model"], rows))


def run() -> None:
    """Entry point that keeps tracebacks for unexpected errors only."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run()
