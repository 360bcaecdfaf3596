"""Where ingest spends its time: CPU-seconds per preprocessing step, one thread, one process.

Reads and preprocesses the first ``--per-center`` ready patients of every center of a synthetic
cohort (generated here at ``--scale``, or ``--cohort DIR`` from `atrx synth`), exactly as a worker
does (`ingest.readers` + `ingest.preprocess.preprocess_study`, SimpleITK and BLAS at one thread as
the workers run them), and times each recorded step. The shares say what to cut first.

    .venv/bin/python benchmarks/ingest/steps.py [--scale 0.03] [--per-center 2] [--cohort DIR]
        [--against reg_max_samples=null] [--no-write]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import SimpleITK as sitk  # noqa: E402

from ingest.preprocess import PreprocessParams, pipeline  # noqa: E402
from ingest.synth import generate_cohort  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _ingest_cohort import first_studies, read_study  # noqa: E402
from _record import publish  # noqa: E402


def profile(cohort: Path, per_center: int, params: PreprocessParams | None = None
            ) -> tuple[collections.Counter[str], list[tuple[str, str, float]]]:
    """Seconds per step name over the patients, and (center, voxels on the output grid, seconds) each."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    times: collections.Counter[str] = collections.Counter()
    apply = pipeline._Pipeline.apply

    def timed(self: pipeline._Pipeline, step: object, *data: object) -> object:
        t = time.process_time()
        out = apply(self, step, *data)
        times[step.name] += time.process_time() - t  # type: ignore[attr-defined]
        return out

    pipeline._Pipeline.apply = timed  # type: ignore[method-assign]
    rows = []
    try:
        for cfg, _plan, study in first_studies(cohort, per_center):
            t0 = time.process_time()
            images, masks = read_study(cfg, study)
            times["read"] += time.process_time() - t0
            out = pipeline.preprocess_study(images["t1c"], images["t2f"], masks["lesion"],
                                            cfg.masks.lesion.space, masks["tumor"],
                                            cfg.masks.tumor.space, params or PreprocessParams())
            shape = "x".join(map(str, out.arrays["t1c"].shape))
            rows.append((cfg.center, shape, time.process_time() - t0))
            print(f"{cfg.center} {shape}: {rows[-1][2]:.1f} CPU-s", flush=True)
    finally:
        pipeline._Pipeline.apply = apply  # type: ignore[method-assign]
    return times, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cohort", type=Path, help="an `atrx synth` output (default: generate one)")
    ap.add_argument("--scale", type=float, default=0.03)
    ap.add_argument("--per-center", type=int, default=2)
    ap.add_argument("--against", nargs="*", metavar="PARAM=JSON",
                    help="also profile the same patients with these PreprocessParams overrides (the "
                         "baseline), e.g. reg_max_samples=null for preprocess 1.1.0's registration")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = ap.parse_args()
    cohort = args.cohort or Path(tempfile.mkdtemp(prefix="atrx-steps-"))
    if args.cohort is None:
        generate_cohort(cohort, scale=args.scale, seed=0, workers=2)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    against = dict(kv.split("=", 1) for kv in args.against or [])
    base = (profile(cohort, args.per_center, PreprocessParams(**{k: json.loads(v) for k, v in against.items()}))
            if against else None)
    times, rows = profile(cohort, args.per_center)
    n = max(len(rows), 1)
    total = sum(times.values())
    shapes = sorted({r[1] for r in rows})
    source = "--cohort DIR" if args.cohort else f"--scale {args.scale}"
    command = (f".venv/bin/python benchmarks/ingest/steps.py {source} --per-center {args.per_center}"
               + (" --against " + " ".join(shlex.quote(f"{k}={v}") for k, v in against.items())
                  if against else ""))
    lines = [
        f"\n### Ingest steps, {dt.date.today()} ({platform.machine()}, 1 thread, load average at start {load})\n",
        f"Command: `{command}`. {len(rows)} patients, output grids {', '.join(shapes)} (z, y, x); "
        f"{total / n:.1f} CPU-seconds per patient. Baseline: the whole preprocessing of the same "
        "patients in the same run (the share column)"
        + (f"; and the same patients with {', '.join(f'{k}={v}' for k, v in against.items())} "
           f"({sum(base[0].values()) / n:.1f} CPU-seconds per patient, ratio "
           f"{total / sum(base[0].values()):.2f})" if base else "") + ".\n",
    ]
    if base:
        lines += ["| step | CPU-seconds per patient | share | with the --against settings | ratio |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {secs / n:.2f} | {secs / total:.3f} | {base[0][name] / n:.2f} | "
                  f"{secs / base[0][name] if base[0][name] else float('nan'):.2f} |"
                  for name, secs in times.most_common()]
    else:
        lines += ["| step | CPU-seconds per patient | share |", "|---|---|---|"]
        lines += [f"| {name} | {secs / n:.2f} | {secs / total:.3f} |" for name, secs in times.most_common()]
    publish("\n".join(lines) + "\n", write=not args.no_write)


if __name__ == "__main__":
    main()
