"""``atrx stability``: how much each radiomics feature moves under small mask and grid perturbations."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from atrx.cli._common import HomeOpt, SchedulerOpt, WorkersOpt


def stability(
    home: HomeOpt = None,
    patients: Annotated[int, typer.Option("--patients", min=2, help="patients sampled from the catalog")] = 30,
    seed: Annotated[int, typer.Option("--seed", help="seed of the patient sample")] = 0,
    centers: Annotated[str | None, typer.Option(
        "--centers", help="comma-separated centers to sample (the study's development centers, "
                          "e.g. A,B); default: every center, which training refuses when it "
                          "includes a test center")] = None,
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
) -> None:
    """ICC(2,1) of every radiomics feature under ROI erosion/dilation and a half-voxel shift."""
    from atrx.ui import console
    from atrx.workspace import Workspace

    run_stability_cli(console(), Workspace.at(home), patients=patients, seed=seed, workers=workers,
                      scheduler=scheduler, centers=_split_centers(centers))


def _split_centers(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        from atrx.errors import InputError

        raise InputError(f"--centers {text!r} names no center", fix="pass e.g. --centers A,B")
    return names


def run_stability_cli(con: Any, ws: Any, *, patients: int = 30, seed: int = 0,
                      workers: int | None = None, scheduler: str | None = None,
                      centers: list[str] | None = None) -> Any:
    """Run the stability job with a progress bar; print skipped ROIs and the summary."""
    from atrx.ui import kv_table, progress_bar, rows_table
    from features.stability_job import run_stability

    with progress_bar(con, "perturbed radiomics", 1) as update:
        summary = run_stability(ws, patients=patients, seed=seed, workers=workers,
                                scheduler=scheduler, progress=update, centers=centers)
    if summary.skipped:
        con.print(rows_table(f"ROIs skipped ({len(summary.skipped)})", ["patient", "view", "reason"],
                             summary.skipped, max_rows=40))
    con.print(kv_table("stability summary", summary.rows()))
    return summary


def register(app: typer.Typer) -> None:
    app.command()(stability)
