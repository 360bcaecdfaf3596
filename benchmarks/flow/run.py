"""The whole flow, as a user runs it, on a synthetic cohort at clinical scan sizes: wall seconds,
CPU-seconds (per patient) and peak memory of every stage, and where ingest's CPU goes by step.

    .venv/bin/python benchmarks/flow/run.py [--scale 1.0] [--per-center N] [--workers 2]
        [--size clinical|compact] [--weights random:0] [--step-patients 2] [--keep DIR] [--no-write]
        [--against-preprocess FILE]

Stages, each a subprocess of the ``atrx`` CLI in a fresh workspace (``ATRX_HOME``): synth ->
ingest (all centers, Dask) -> features (radiomics + ResNet34, Dask) -> retrain
--promote-below-floor (train + register + promote; the override is only used when a small cohort's
first model cannot clear promotion.first_model_auc_floor) -> materialize -> serve (start to
/readyz, loopback, ATRX_API_KEY a random 40-character key) -> the first ``atrx predict``; then
SIGTERM to the server. ``atrx synth`` has no ``--per-center``: with it, synth runs
``ingest.synth.generate_cohort(..., per_center=N)`` in a ``python -c`` subprocess instead.
Training needs about 48 patients (``--scale 0.2``, the demo's cohort): smaller cohorts stop at
retrain (the table still shows the stages before it).

CPU: user + system of the stage process and every descendant (getrusage(RUSAGE_CHILDREN) around
the stage; a psutil poll of the process tree every 0.2 s when that saw more). Peak: the largest
summed RSS of the tree over the polls (shared pages count once per process).

``--against-preprocess FILE`` ingests the same cohort a second time, right after the flow's own
ingest, into a separate workspace with ``atrx ingest --preprocess FILE`` (e.g.
``ingest/preprocess/1.2.0.yaml``, the settings before the current defaults): the same-run baseline
of the ingest stage, and of the flow with that ingest in place of its own. It is not part of the
flow's table or total.

Ingest does not record per-step timings (its workers return one duration per study), so the step
shares come from benchmarks/ingest/steps.py's ``profile``, run here in-process on
``--step-patients`` patients per center of the same cohort, one thread, plus the Zarr write.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _record import publish  # noqa: E402
from _stages import (  # noqa: E402
    STEP_LABELS,
    Stage,
    free_port,
    log_tail,
    run_stage,
    serve_and_predict,
    step_shares,
)

#: what the study protocol needs (training/study.yaml: 5-fold CV, leave-one-center-out ranking,
#: CalibratedClassifierCV's 5 folds inside each): found by trying, 2026-12-02
TRAIN_MINIMUM = ("if the cohort is too small: the study protocol needs about 48 patients, --scale 0.2 without --per-center; "
                 "--scale 0.15 --per-center 10 (26) and --scale 0.1 --per-center 8 (20) fail its folds")


def atrx_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("atrx")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "atrx.cli"]


def stage_env(home: Path, key: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("BENTOML_HOME", "ATRX_NO_AUTH"):  # the model store lives in the workspace
        env.pop(var, None)
    env.update({"ATRX_HOME": str(home), "ATRX_API_KEY": key, "BENTOML_DO_NOT_TRACK": "True",
                "COLUMNS": "120", "PYTHONUNBUFFERED": "1"})
    return env


def cohort_facts(home: Path) -> tuple[dict[str, int], dict[str, list[str]], str | None]:
    """Patients with a scan per center, the distinct 1 mm grid shapes per center, one pseudonym."""
    from atrx.catalog import Catalog

    with Catalog(str(home / "catalog.duckdb"), read_only=True) as cat:
        rows = cat.query("SELECT center, count(DISTINCT patient_id) FROM scans GROUP BY center ORDER BY center")
        shapes: dict[str, list[str]] = {}
        for center, shape in cat.query("SELECT DISTINCT center, CAST(shape AS VARCHAR) FROM scans "
                                       "ORDER BY 1, 2"):
            shapes.setdefault(center, []).append("x".join(map(str, json.loads(shape))))
        ids = cat.labelled_scanned_patients(limit=1)
    return {c: int(n) for c, n in rows}, shapes, (ids[0] if ids else None)


def fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def stage_rows(stages: list[Stage]) -> list[list[str]]:
    total = sum(s.cpu_s for s in stages) or 1.0
    return [[s.name, fmt(s.wall_s), fmt(s.cpu_s), fmt(s.per_patient, 2), f"{s.cpu_s / total:.3f}",
             fmt(s.peak_gib, 2), s.note] for s in stages]


STAGE_HEAD = ["stage", "wall s", "CPU s", "CPU s per patient", "share of CPU", "peak GiB", "note"]


def print_table(title: str, head: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"\n{title}\n" + "\n".join(" | ".join(r) for r in [head, *rows]))
        return
    table = Table(title=title)
    for h in head:
        table.add_column(h, justify="left" if h in ("stage", "step", "note") else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=max(120, shutil.get_terminal_size().columns)).print(table)


def step_rows(times: dict[str, float], n: int) -> list[list[str]]:
    total = sum(times.values()) or 1.0
    order = [k for k in STEP_LABELS if k in times] + sorted(k for k in times if k not in STEP_LABELS)
    return [[STEP_LABELS.get(k, k), f"{times[k] / max(n, 1):.2f}", f"{times[k] / total:.3f}"] for k in order]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="cohort size relative to Table 1")
    ap.add_argument("--per-center", type=int, help="keep only N patients per center (quick runs)")
    ap.add_argument("--workers", type=int, default=2, help="local Dask workers of synth, ingest, features")
    ap.add_argument("--size", choices=("clinical", "compact"), default="clinical")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default="random:0", help="atrx features --weights (no pretrained weights here)")
    ap.add_argument("--step-patients", type=int, default=2, help="patients per center for the step shares (0: skip)")
    ap.add_argument("--keep", type=Path, help="keep the workspace in DIR (must be empty or absent)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md")
    ap.add_argument("--against-preprocess", type=Path, metavar="FILE",
                    help="also ingest the cohort with atrx ingest --preprocess FILE (the same-run baseline)")
    args = ap.parse_args()
    if args.against_preprocess is not None:  # refused now, not after the flow's own ingest
        from atrx.config.base import load_yaml_model
        from atrx.errors import AtrxError
        from ingest.preprocess import PreprocessParams

        try:
            load_yaml_model(PreprocessParams, args.against_preprocess)
        except AtrxError as exc:
            ap.error(f"--against-preprocess: {exc}" + (f" ({exc.fix})" if exc.fix else ""))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    started = time.perf_counter()
    base = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="atrx-flow-"))
    if args.keep and base.exists() and any(base.iterdir()):
        ap.error(f"--keep {base} is not empty")
    home, cohort, logs = base / "home", base / "cohort", base / "logs"
    for d in (home, logs):
        d.mkdir(parents=True, exist_ok=True)
    env = stage_env(home, secrets.token_urlsafe(30))  # 40 characters
    atrx, w = atrx_cmd(), str(args.workers)
    print(f"workspace {base} (ATRX_HOME={home}); load average at start {load}", flush=True)

    stages: list[Stage] = []
    failed: str | None = None

    def stage(name: str, argv: list[str], patients: int | None, shown: str | None = None) -> bool:
        nonlocal failed
        print(f"-- {name}: {shown or shlex.join(argv)}", flush=True)
        s = run_stage(name, argv, env, logs, patients, shown)
        stages.append(s)
        print(f"   {s.wall_s:.1f} s wall, {s.cpu_s:.1f} CPU-s, peak {s.peak_gib:.2f} GiB", flush=True)
        if s.rc != 0:
            failed = f"{name} exited with {s.rc}"
            print(log_tail(logs, name), file=sys.stderr)
            if name == "retrain":
                failed += f" ({TRAIN_MINIMUM})"
        return s.rc == 0

    if args.per_center is None:
        synth = [*atrx, "synth", "--out", str(cohort), "--scale", str(args.scale), "--seed", str(args.seed),
                 "--workers", w, "--size", args.size]
        shown = None
    else:
        code = ("import sys; from ingest.synth import generate_cohort; generate_cohort(sys.argv[1], "
                "scale=float(sys.argv[2]), seed=int(sys.argv[3]), workers=int(sys.argv[4]), "
                "per_center=int(sys.argv[5]), size=sys.argv[6])")
        synth = [sys.executable, "-c", code, str(cohort), str(args.scale), str(args.seed), w,
                 str(args.per_center), args.size]
        shown = (f"generate_cohort(out, scale={args.scale}, seed={args.seed}, workers={w}, "
                 f"per_center={args.per_center}, size={args.size!r})  (python -c; atrx synth has no --per-center)")
    ok = stage("synth", synth, None, shown)
    n_cohort = 0
    configs = sorted(str(p) for p in (cohort / "centers").glob("*.yaml")) if ok else []
    patients: dict[str, int] = {}
    shapes: dict[str, list[str]] = {}
    pseudonym = None
    if ok:
        ok = stage("ingest", [*atrx, "ingest", *configs, "--workers", w], None,
                   f"atrx ingest {cohort.name}/centers/*.yaml --workers {w}")
    against: Stage | None = None
    if ok and args.against_preprocess is not None:
        other = str(args.against_preprocess.resolve())
        print(f"-- ingest again with --preprocess {args.against_preprocess} (the baseline; another "
              "workspace, not in the flow's total)", flush=True)
        against = run_stage("ingest-against", [*atrx, "ingest", *configs, "--workers", w,
                                               "--preprocess", other],
                            {**env, "ATRX_HOME": str(base / "home-against")}, logs, None,
                            f"atrx ingest {cohort.name}/centers/*.yaml --workers {w} --preprocess {other}")
        print(f"   {against.wall_s:.1f} s wall, {against.cpu_s:.1f} CPU-s, peak {against.peak_gib:.2f} GiB",
              flush=True)
        if against.rc != 0:
            ok, failed = False, f"the baseline ingest exited with {against.rc}"
            print(log_tail(logs, "ingest-against"), file=sys.stderr)
    if ok:
        patients, shapes, pseudonym = cohort_facts(home)
        n = sum(patients.values())
        stages[0].patients = stages[1].patients = n
        print(f"   {n} patients ingested ({', '.join(f'{c} {k}' for c, k in patients.items())}); "
              f"1 mm grids {'; '.join(f'{c}: ' + ', '.join(s) for c, s in shapes.items())} (z, y, x)")
        n_cohort = n
        if against is not None:
            against.patients = n
        ok = stage("features", [*atrx, "features", "--workers", w, "--weights", args.weights], n)
    if ok:
        ok = stage("retrain", [*atrx, "retrain", "--promote-below-floor"], n)
        if ok and "override:" in log_tail(logs, "retrain", 100_000):
            stages[-1].note = "promoted by --promote-below-floor (first model below the AUC floor)"
    if ok:
        ok = stage("materialize", [*atrx, "materialize"], n)
    if ok and pseudonym is None:
        ok, failed = False, "no labelled, scanned patient in the catalog to predict"
    if ok and pseudonym is not None:
        print(f"-- serve + first predict ({pseudonym})", flush=True)
        try:
            for s in serve_and_predict(atrx, env, logs, free_port(), pseudonym):
                stages.append(s)
                print(f"   {s.name}: {s.wall_s:.1f} s wall, {s.cpu_s:.2f} CPU-s", flush=True)
                if s.rc != 0:
                    failed = f"{s.name} exited with {s.rc}"
                    print(log_tail(logs, s.name), file=sys.stderr)
        except RuntimeError as exc:
            failed = str(exc)
            print(f"{exc}\n{log_tail(logs, 'serve')}", file=sys.stderr)
    flow_wall = time.perf_counter() - started - (against.wall_s if against is not None else 0.0)

    times: dict[str, float] = {}
    step_n = 0
    if args.step_patients > 0 and (cohort / "centers").is_dir():
        print(f"-- step shares: benchmarks/ingest/steps.py profile, {args.step_patients} per center, in-process",
              flush=True)
        try:
            times, rows = step_shares(cohort, args.step_patients)
            step_n = len(rows)
        except Exception as exc:  # report, keep the stage table
            print(f"step profile failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    title = (f"flow, {n_cohort} patients, size {args.size}, {args.workers} workers, weights {args.weights}")
    print_table(title, STAGE_HEAD, stage_rows(stages))
    cpu = sum(s.cpu_s for s in stages)
    total_line = (f"total: {sum(s.wall_s for s in stages):.1f} s wall over {len(stages)} stages "
                  f"({flow_wall:.1f} s with set-up), {cpu:.1f} CPU-s, {cpu / max(n_cohort, 1):.2f} CPU-s per patient, "
                  f"peak {max((s.peak_gib for s in stages), default=0):.2f} GiB"
                  + (f"; FAILED: {failed}" if failed else ""))
    print(total_line)
    ingest_pp = next((s.per_patient for s in stages if s.name == "ingest"), None)
    against_lines: list[str] = []
    if against is not None and against.rc == 0 and ingest_pp:
        own = next(s for s in stages if s.name == "ingest")
        flow_against = cpu - own.cpu_s + against.cpu_s
        against_lines = [
            f"Baseline, same run: the ingest stage with `--preprocess {args.against_preprocess}`: "
            f"{against.wall_s:.1f} s wall, {against.cpu_s:.1f} CPU-s, {against.per_patient:.2f} CPU-s "
            f"per patient, peak {against.peak_gib:.2f} GiB. This flow's ingest / the baseline's: "
            f"{own.wall_s / against.wall_s:.2f} (wall), {own.cpu_s / against.cpu_s:.2f} (CPU); the "
            f"whole flow's CPU / the same flow with the baseline's ingest: {cpu / flow_against:.2f}."]
        print(against_lines[0])
    if times:
        print_table(f"ingest preprocessing steps (in-process profile, benchmarks/ingest/steps.py, {step_n} "
                    "patients, 1 thread; ingest records no per-step timings)",
                    ["step", "CPU s per patient", "share"], step_rows(times, step_n))
        if ingest_pp:
            print(f"steps: {sum(times.values()) / max(step_n, 1):.2f} CPU-s per patient in one thread; "
                  f"the ingest stage: {ingest_pp:.2f} CPU-s per patient (with Dask, planning, hashing, "
                  "process start-up)")

    cmd = f".venv/bin/python benchmarks/flow/run.py --scale {args.scale}" + (
        f" --per-center {args.per_center}" if args.per_center is not None else "") + (
        f" --workers {args.workers} --size {args.size} --weights {args.weights}") + (
        f" --step-patients {args.step_patients}" if args.step_patients != 2 else "") + (
        f" --against-preprocess {args.against_preprocess}" if args.against_preprocess else "")
    mem = psutil.virtual_memory().total / 2**30
    grids = "; ".join(f"{c}: {', '.join(s)}" for c, s in shapes.items()) or "-"
    lines = [
        f"\n### Flow, {dt.date.today()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{mem:.0f} GiB, load average at start {load})\n",
        f"Command: `{cmd}`. Cohort: {n_cohort} patients "
        f"({', '.join(f'{c} {k}' for c, k in patients.items()) or '-'}), scan size {args.size}, "
        f"1 mm grids (z, y, x) {grids}. Each stage is a subprocess of the `atrx` CLI in a fresh "
        "workspace; CPU = user + system of its whole process tree; peak = the largest summed RSS of "
        "the tree (polled every 0.2 s). serve is start to /readyz; the first predict includes the "
        "server's CPU for it. Absolute numbers, to compare with a later run of the same command; the "
        "share column is each stage's part of the flow's CPU.\n",
        "| stage | wall s | CPU s | CPU s per patient | share of CPU | peak GiB |",
        "|---|---|---|---|---|---|",
        *(f"| {r[0]} | {' | '.join(r[1:6])} |" for r in stage_rows(stages)),
        f"\n{total_line}.\n",
        *(f"{line}\n" for line in against_lines),
    ]
    if times:
        lines += [
            f"Ingest steps (ingest records no per-step timings: benchmarks/ingest/steps.py's profile in one "
            f"process, one thread, on {step_n} patients of the same cohort, plus the Zarr write"
            + (f"; {sum(times.values()) / max(step_n, 1):.2f} CPU-s per patient against the ingest stage's "
               f"{ingest_pp:.2f}" if ingest_pp else "") + "):\n",
            "| step | CPU s per patient | share |", "|---|---|---|",
            *(f"| {' | '.join(r)} |" for r in step_rows(times, step_n)), "",
        ]
    publish("\n".join(lines), write=not args.no_write and failed is None)
    if failed and not args.no_write:
        print("not appended to docs/benchmarks.md: the flow failed")
    if args.keep or failed:
        (base / "flow.json").write_text(json.dumps([s.__dict__ for s in stages], indent=2))
        print(f"kept {base}" + ("" if args.keep else " (the flow failed: its logs are in logs/)"))
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
