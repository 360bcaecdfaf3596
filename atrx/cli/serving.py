"""``atrx materialize``, ``atrx serve``, ``atrx predict``: the online store and the HTTP service."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from atrx.cli._common import HomeOpt
from atrx.errors import ExitCode


def materialize(
    home: HomeOpt = None,
    full: Annotated[bool, typer.Option("--full", help="reload every row, not only what is new")] = False,
) -> None:
    """Load the features the production model needs into Feast's online store (incremental)."""
    from atrx.ui import console, kv_table
    from atrx.workspace import Workspace
    from serving.materialize import run_materialize

    summary = run_materialize(Workspace.at(home), full=full)
    console().print(kv_table("materialize summary", summary.rows()))


def serve(
    home: HomeOpt = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 3000,
    host: Annotated[str, typer.Option("--host", help="interface to bind")] = "127.0.0.1",
    no_auth: Annotated[bool, typer.Option(
        "--no-auth", help="serve WITHOUT an API key: every route open (loopback/demo only)")] = False,
) -> None:
    """Serve the production model over HTTP (BentoML); Ctrl-C or SIGTERM stops it.

    Needs $ATRX_API_KEY (at least 32 characters; clients send it as X-API-Key) or --no-auth.
    """
    import signal

    from atrx.ui import console
    from atrx.workspace import Workspace
    from serving.server import auth_mode
    from serving.server import serve as start_server

    auth = auth_mode(no_auth=no_auth)  # fails closed, before anything starts
    con = console()
    con.print(auth.describe() if not auth.open else f"[bold red]{auth.describe()}[/]")

    terminated = []

    def terminate(signum: int, frame: Any) -> None:
        # as Ctrl-C: the server (its own process group) is stopped before we exit; Python's
        # default SIGTERM would exit at once and leave `bentoml serve` holding the port
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with start_server(Workspace.at(home), port, host=host, no_auth=no_auth) as server:
            server.wait_ready()
            con.print(f"serving {server.url}  (POST /predict, /predict_batch, /predict_features; "
                      "Ctrl-C stops)")
            code = server.wait()
    except KeyboardInterrupt:
        if not terminated:  # Ctrl-C while starting: the server is stopped, exit 130 as usual
            raise
        code = 0  # SIGTERM while starting: stopped as asked
    finally:
        signal.signal(signal.SIGTERM, previous)
    raise typer.Exit(int(ExitCode.OK) if code in (0, 130, -15) else code)


def predict(
    patient_id: Annotated[str, typer.Argument(help="the patient's pseudonym, e.g. A-3f2a9c1b0d4e")],
    url: Annotated[str, typer.Option("--url", help="the server started by `atrx serve`")] = "http://127.0.0.1:3000",
) -> None:
    """Ask a running server for one patient's prediction (API key from $ATRX_API_KEY)."""
    from atrx.ui import console, kv_table
    from serving.server import predict_http

    answer = predict_http(url, patient_id)
    console().print(kv_table(f"prediction for {patient_id}", prediction_rows(answer)))


def prediction_rows(answer: dict[str, Any]) -> list[tuple[str, str]]:
    """A prediction as (field, text) rows for the terminal."""
    rows = [(k, f"{answer[k]:.3f}" if isinstance(answer[k], float) else str(answer[k]))
            for k in ("probability", "risk_group", "imaging_score", "model_version") if k in answer]
    rows += [(f"points: {k}", f"{v:.1f}") for k, v in (answer.get("contributions") or {}).items()]
    rows += [(f"features as of: {k}", str(v)) for k, v in (answer.get("feature_timestamps") or {}).items()]
    return rows


def register(app: typer.Typer) -> None:
    app.command()(materialize)
    app.command()(serve)
    app.command()(predict)
