"""``atrx demo``: the whole flow on a generated three-center cohort, with a summary per step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from atrx.cli._common import HomeOpt, WorkersOpt
from atrx.errors import AtrxError, ExitCode


def demo(
    scale: Annotated[float, typer.Option("--scale", min=0.01, help="cohort size relative to Table 1")] = 0.2,
    home: HomeOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workers: WorkersOpt = None,
) -> None:
    """The whole flow on a generated three-center cohort: synth, validate, ingest, features, train,
    register and promote, materialize, serve, predict over HTTP."""
    from atrx.cli.features import run_features_cli
    from atrx.cli.ingest import ingest_one, print_cohort
    from atrx.cli.training import run_retrain_cli
    from atrx.cluster import default_workers
    from atrx.config.center import load_center
    from atrx.ui import console, kv_table
    from atrx.workspace import Workspace
    from ingest.discover import plan_center
    from ingest.synth import generate_cohort
    from serving.materialize import run_materialize

    t0 = time.perf_counter()
    con = console()
    ws = Workspace.at(home)
    ws.ensure()
    cohort = Path(ws.home) / "cohort"
    con.rule("1. synthesise a three-center export")
    if (cohort / "centers").is_dir():
        con.print(f"reusing the cohort already at {cohort} (delete it to regenerate)")
    else:
        print_cohort(con, generate_cohort(cohort, scale=scale, seed=seed,
                                          workers=workers or default_workers()))
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
        ingest_one(con, cfg, ws, None, workers)
    con.rule("4. features on Dask (radiomics + ResNet34)")
    run_features_cli(con, ws, workers=workers, weights="random:0")
    con.rule("5. train, report, register; promote (atrx retrain --promote-below-floor)")
    con.print("a first model must clear promotion.first_model_auc_floor, which the demo's small "
              "cohort usually cannot; the demo passes the explicit override, recorded in the stage "
              "history as 'override: below floor' when used", highlight=False)
    decision = run_retrain_cli(con, ws, promote_below_floor=True)
    if decision.exit_code not in (ExitCode.OK, ExitCode.KEPT):
        raise AtrxError(f"training failed: {decision.error}", exit_code=decision.exit_code,
                        fix="run `atrx train -v` on the same workspace to see the failing step")
    con.rule("6. materialise the production model's features into the online store")
    con.print(kv_table("materialize summary", run_materialize(ws).rows()))
    con.rule("7. serve over HTTP and ask for a few predictions")
    _demo_predictions(con, ws)
    report = decision.train.report_path if decision.train else "-"
    con.print(kv_table("demo", [("workspace", ws.home), ("cohort", cohort), ("report", report),
                                ("minutes", f"{(time.perf_counter() - t0) / 60:.1f}")]))
    con.print(f"[bold]Open the report:[/] {report}")


def _demo_predictions(con: Any, ws: Any) -> None:
    import secrets

    from atrx.catalog import Catalog
    from atrx.ui import rows_table
    from serving.server import free_port, predict_http
    from serving.server import serve as start_server

    with Catalog(ws.catalog, read_only=True) as cat:
        ids = cat.labelled_scanned_patients(limit=4)
    log = Path(ws.logs) / "demo-server.log"
    # the demo server requires a key like any other: a random one, for this run only
    key = secrets.token_urlsafe(32)
    con.print("demo server on loopback: X-API-Key required (a random key made for this run and "
              "sent with each request below; `atrx serve` needs ATRX_API_KEY or --no-auth)")
    with start_server(ws, free_port(), api_key=key, log_file=log) as server:
        server.wait_ready(timeout=180)
        rows = []
        for pid in ids:
            a = predict_http(server.url, pid, api_key=key)
            rows.append((pid, f"{a['probability']:.3f}", a["risk_group"], f"{a['imaging_score']:.2f}",
                         a["model_version"]))
        con.print(rows_table(f"predictions from {server.url}/predict", ["patient", "probability", "risk group",
                                                                          "imaging score", "model"], rows))


def register(app: typer.Typer) -> None:
    app.command()(demo)
