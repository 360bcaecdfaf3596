"""Registration settings against the synthetic ground truth: CPU-seconds and error in mm.

Rigid T2f -> T1c registration was about 75% of ingest's CPU (benchmarks/ingest/steps.py). This
sweep runs :func:`ingest.preprocess.fitting.fit_rigid` (the product's registration, its settings
varied) on the N4-corrected pairs of the first ``--per-center`` patients per center, and measures
each result against the motion the generator applied (``truth.csv``: T2f(p) = truth(M p)): the
largest distance between the fitted and the true mapping over a 5x5x5 lattice spanning the
central 60% of the T1c field of view. Baseline: the shipped settings, same pairs, same run.

    .venv/bin/python benchmarks/ingest/registration.py --cohort DIR [--per-center 2] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ingest.preprocess import PreprocessParams, fitting, pipeline, steps
from ingest.synth.acquire import Motion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _ingest_cohort import first_studies, read_study  # noqa: E402
from _record import publish  # noqa: E402

#: name -> PreprocessParams overrides (min_step: the optimiser's REG_MIN_STEP, a constant today)
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped (points inside the head mask dilated 6 mm, random, at most 25k per level; levels 4,2,1; "
    "sampling 0.2; 100 iterations; min step 1e-4 mm)": {},
    "1.2.0 (whole field of view, at most 100k per level)": {"reg_fixed_mask": "none",
                                                            "reg_max_samples": 100_000},
    "1.1.0 (whole field of view, sampling 0.2, no cap)": {"reg_fixed_mask": "none",
                                                          "reg_max_samples": None},
    "whole field of view, at most 25k per level": {"reg_fixed_mask": "none"},
    "whole field of view, lattice points, at most 25k per level": {
        "reg_fixed_mask": "none", "reg_sampling_strategy": "lattice"},
    "head mask, at most 50k per level": {"reg_max_samples": 50_000},
    "head mask, at most 100k per level": {"reg_max_samples": 100_000},
    "head mask dilated 3 mm": {"reg_mask_dilation_mm": 3.0},
    "head mask dilated 10 mm": {"reg_mask_dilation_mm": 10.0},
    "head mask, lattice points": {"reg_sampling_strategy": "lattice"},
    "min step 1e-3 mm": {"min_step": 1e-3},
    "min step 1e-2 mm": {"min_step": 1e-2},
    "50 iterations": {"reg_iterations": 50},
    "sampling 0.1": {"reg_sampling": 0.1},
    "levels 4,2 (stop at half resolution)": {"reg_shrink_factors": (4, 2), "reg_smoothing_mm": (2.0, 1.0)},
}


class _Captured(Exception):
    """Raised by the patched fit to stop the pipeline once it has handed over its pair."""


def pairs(cohort: Path, per_center: int) -> list[tuple[str, sitk.Image, sitk.Image]]:
    """(raw id, fixed, moving) exactly as the pipeline hands them to registration (the pipeline
    runs up to the fit and stops there)."""
    got: list[tuple[str, sitk.Image, sitk.Image]] = []
    real = steps.fit_rigid

    def capture(fixed: sitk.Image, moving: sitk.Image, _params: Any, rid: str) -> Any:
        got.append((rid, fixed, moving))
        raise _Captured

    try:
        for cfg, plan, study in first_studies(cohort, per_center):
            steps.fit_rigid = lambda f, m, p, rid=plan.raw_id: capture(f, m, p, rid)
            images, masks = read_study(cfg, study)
            try:
                pipeline.preprocess_study(images["t1c"], images["t2f"], masks["lesion"],
                                          cfg.masks.lesion.space, masks["tumor"], cfg.masks.tumor.space,
                                          PreprocessParams())
            except _Captured:
                pass
    finally:
        steps.fit_rigid = real
    return got


def error_mm(tx: sitk.Transform, truth: pd.Series, fixed: sitk.Image) -> float:
    motion = Motion(tuple(truth[f"t2f_rotation_{a}_deg"] for a in "xyz"),
                    tuple(truth[f"t2f_shift_{a}_mm"] for a in "xyz"),
                    tuple(truth[f"t2f_motion_center_{a}"] for a in "xyz")).transform().GetInverse()
    axes = [np.linspace(0.2 * (n - 1), 0.8 * (n - 1), 5) for n in fixed.GetSize()]
    points = [fixed.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
              for i in axes[0] for j in axes[1] for k in axes[2]]
    return max(float(np.linalg.norm(np.subtract(tx.TransformPoint(p), motion.TransformPoint(p))))
               for p in points)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cohort", type=Path, required=True, help="an `atrx synth` output (has truth.csv)")
    ap.add_argument("--per-center", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="run only the variants whose name starts with one of these "
                    "(the shipped settings always run first: the baseline)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    truth = pd.read_csv(args.cohort / "truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    todo = pairs(args.cohort, args.per_center)
    shipped_min_step = fitting.REG_MIN_STEP
    results = {}
    chosen = {n: v for i, (n, v) in enumerate(VARIANTS.items())
              if i == 0 or not args.only or any(n.startswith(o) for o in args.only)}
    for name, overrides in chosen.items():
        kw = dict(overrides)
        fitting.REG_MIN_STEP = kw.pop("min_step", shipped_min_step)
        params = PreprocessParams(**kw)
        t0, errors = time.process_time(), []
        for rid, fixed, moving in todo:
            tx, _ = fitting.fit_rigid(fixed, moving, params)
            errors.append(error_mm(tx, truth.loc[rid], fixed))
        results[name] = ((time.process_time() - t0) / len(todo), float(np.median(errors)), max(errors))
        print(name, results[name], flush=True)
    fitting.REG_MIN_STEP = shipped_min_step
    base = next(iter(results.values()))[0]
    lines = [
        f"\n### Registration settings, {dt.date.today()} ({platform.machine()}, 1 thread, load average "
        f"at start {load})\n",
        f"Command: `.venv/bin/python benchmarks/ingest/registration.py --cohort DIR --per-center "
        f"{args.per_center}` ({len(todo)} patients; error = largest distance to the generator's true "
        "motion over the central 60% of the field of view).\n",
        "| settings | CPU-s per patient | ratio vs shipped | median error mm | max error mm |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {s:.2f} | {s / base:.2f} | {med:.3f} | {mx:.3f} |" for n, (s, med, mx) in results.items()]
    publish("\n".join(lines) + "\n", write=not args.no_write)


if __name__ == "__main__":
    main()
