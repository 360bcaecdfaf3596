"""``atrx features``: radiomics and ResNet34 features of every ingested scan into Feast."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from atrx.cli._common import HomeOpt, SchedulerOpt, WorkersOpt


def features(
    home: HomeOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    gpus: Annotated[bool, typer.Option(
        "--gpus", help="dask_cuda.LocalCUDACluster: the CNN and the atrx engine's radiomics on CUDA")] = False,
    threads_per_gpu: Annotated[int | None, typer.Option(
        "--threads-per-gpu", min=1,
        help="with --gpus: tasks sharing each GPU at once (default: the host's cores / the GPUs)")] = None,
    weights: Annotated[str, typer.Option(
        "--weights", help="imagenet (torchvision's cache), a .pth file, or random:SEED (tests, demos)")] = "imagenet",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="crops per CNN forward pass")] = 32,
    checkpoint_seconds: Annotated[float, typer.Option(
        "--checkpoint-seconds", min=0,
        help="store finished results at least this often, so a killed run loses little")] = 300.0,
) -> None:
    """Radiomics and ResNet34 features of every ingested scan into the Feast offline store.

    When rows were added and a production model exists, its views are then materialized, so new
    patients reach the online store (`atrx materialize` does the same on its own).
    """
    from atrx.ui import console
    from atrx.workspace import Workspace

    run_features_cli(console(), Workspace.at(home), scheduler=scheduler, workers=workers, gpus=gpus,
                     threads_per_gpu=threads_per_gpu, weights=weights, batch_size=batch_size,
                     checkpoint_seconds=checkpoint_seconds)


def run_features_cli(con: Any, ws: Any, *, scheduler: str | None = None, workers: int | None = None,
                     gpus: bool = False, threads_per_gpu: int | None = None, weights: str = "imagenet",
                     batch_size: int = 32, checkpoint_seconds: float = 300.0) -> Any:
    """Run the features job with a progress bar; print per-view rows, failures and the summary."""
    from atrx.ui import kv_table, progress_bar, rows_table
    from features.job import run_features

    if weights.startswith("random:"):
        con.print(f"[bold yellow]CNN weights are RANDOM ({weights}), not ImageNet: deep features are for "
                  "tests and demos only. The choice is recorded in the feature version and lineage.[/]")
    with progress_bar(con, "computing features", 1) as update:
        summary = run_features(ws, scheduler=scheduler, workers=workers, gpus=gpus,
                               threads_per_gpu=threads_per_gpu, weights=weights,
                               batch_size=batch_size, progress=update,
                               checkpoint_seconds=checkpoint_seconds)
    con.print(rows_table("rows per feature view", ["view", "written this run", "rows in current version"],
                         summary.view_rows()))
    failures = summary.failure_rows()
    if failures:
        con.print(rows_table(f"ROIs without features ({len(failures)})", ["patient", "view", "status", "reason"],
                             failures, max_rows=40))
    con.print(kv_table("features summary", summary.rows()))
    refresh_online_store(con, ws, rows_written=sum(c.written for c in summary.per_view.values())
                         + int(summary.clinical_exported))
    return summary


def refresh_online_store(con: Any, ws: Any, rows_written: int) -> Any:
    """After a features run that added rows, load the production model's views online.

    Why here and not only after a promotion: a newly onboarded center's patients get features
    long after the model was promoted, and ``/predict`` must find them
    (:mod:`feature_repo.materialization` reloads views whose new rows have older scan dates).
    """
    from atrx import registry
    from atrx.ui import kv_table

    if not rows_written:
        return None
    if registry.production(ws) is None:
        con.print("[dim]no production model yet: nothing to materialize (after `atrx train` and a "
                  "promotion, run `atrx materialize`)[/]")
        return None
    from serving.materialize import run_materialize

    mat = run_materialize(ws)
    con.print(kv_table("materialize summary", mat.rows()))
    return mat


def register(app: typer.Typer) -> None:
    app.command()(features)
