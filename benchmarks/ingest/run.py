"""Ingest throughput: patients per minute on the synthetic cohort with 1 and with 2 Dask workers.

The ratio (2 workers / 1 worker) is the parallel efficiency x 2. Each measurement ingests into a
fresh workspace so nothing is skipped as unchanged. Results are appended to docs/benchmarks.md.

    .venv/bin/python benchmarks/ingest/run.py [--scale 1.0] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from atrx.config.center import load_center
from atrx.workspace import Workspace
from ingest.driver import run_ingest
from ingest.synth import generate_cohort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _record import publish  # noqa: E402


def measure(cohort: Path, workers: int) -> tuple[int, float]:
    home = Path(tempfile.mkdtemp(prefix=f"atrx-bench-w{workers}-"))
    try:
        t0 = time.perf_counter()
        done = 0
        for cfg_path in sorted((cohort / "centers").glob("*.yaml")):
            summary = run_ingest(load_center(cfg_path), Workspace.at(home), workers=workers)
            done += summary.studies["ingested"]
        return done, time.perf_counter() - t0
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = ap.parse_args()
    cohort = Path(tempfile.mkdtemp(prefix="atrx-bench-cohort-"))
    try:
        generate_cohort(cohort, scale=args.scale, seed=0, workers=2)
        results = {}
        for w in args.workers:
            n, seconds = measure(cohort, w)
            results[w] = (n, seconds, 60.0 * n / seconds)
            print(f"workers={w}: {n} patients in {seconds:.1f} s = {results[w][2]:.2f} patients/min")
    finally:
        shutil.rmtree(cohort, ignore_errors=True)
    base = results[min(results)][2]
    lines = [
        f"\n### Ingest, {dt.date.today()} ({platform.processor() or platform.machine()}, "
        f"scale {args.scale})\n",
        f"Command: `.venv/bin/python benchmarks/ingest/run.py --scale {args.scale} "
        f"--workers {' '.join(map(str, args.workers))}`\n",
        "| workers | patients | seconds | patients/min | ratio vs 1 worker | parallel efficiency |",
        "|---|---|---|---|---|---|",
    ]
    for w, (n, s, ppm) in sorted(results.items()):
        lines.append(f"| {w} | {n} | {s:.1f} | {ppm:.2f} | {ppm / base:.2f} | {ppm / base / w:.2f} |")
    publish("\n".join(lines) + "\n", write=not args.no_write)


if __name__ == "__main__":
    main()
