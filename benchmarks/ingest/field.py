"""The N4 field on the image grid: ``sitk.Resample`` (cubic B-spline, <= 1.2.0) vs one axis at a time.

For the T1c and T2f of the first ``--per-center`` patients of each center of an `atrx synth` cohort
(read and reoriented as a worker does), a coarse log bias field on the grid N4 records it on
(``ingest.preprocess.fitting._field_grid``, 8 mm) with smooth random values, put on the image's
grid both ways; CPU-seconds per image (best of ``--repeats``, one thread) and the largest
difference of the two fields. Baseline: ``sitk.Resample``, same images, same run.

    .venv/bin/python benchmarks/ingest/field.py --cohort DIR [--per-center 1] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from ingest.preprocess.field import field_on_grid  # noqa: E402
from ingest.preprocess.fitting import _field_grid  # noqa: E402
from ingest.preprocess.ops import from_array, reorient  # noqa: E402
from ingest.readers import read_image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _ingest_cohort import first_studies  # noqa: E402
from _record import publish  # noqa: E402


def images(cohort: Path, per_center: int) -> list[tuple[str, sitk.Image]]:
    out = []
    for _cfg, plan, study in first_studies(cohort, per_center):
        for seq in ("t1c", "t2f"):
            out.append((f"{plan.raw_id} {seq}",
                        sitk.Cast(reorient(read_image(getattr(study, seq))), sitk.sitkFloat32)))
    return out


def best(fn, repeats: int) -> tuple[float, np.ndarray]:
    result, times = None, []
    for _ in range(repeats):
        t = time.process_time()
        result = fn()
        times.append(time.process_time() - t)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--per-center", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rng = np.random.default_rng(0)
    rows, t_itk, t_sep, worst = [], 0.0, 0.0, 0.0
    for name, image in images(args.cohort, args.per_center):
        grid = _field_grid(image, 8.0)
        z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in reversed(grid.GetSize())], indexing="ij")
        values = np.round(0.3 * np.sin(3 * x + rng.random()) * np.cos(2 * y) * (0.5 + z), 6)
        coarse = from_array(values, grid)
        a, ref = best(lambda c=coarse, i=image: sitk.GetArrayFromImage(sitk.Resample(
            c, i, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkBSpline, 0.0, sitk.sitkFloat64)),
            args.repeats)
        b, ours = best(lambda c=coarse, i=image: field_on_grid(c, i), args.repeats)
        diff = float(np.abs(ours - ref).max())
        t_itk, t_sep, worst = t_itk + a, t_sep + b, max(worst, diff)
        size = "x".join(map(str, image.GetSize()))
        rows.append(f"| {name} | {size} | {a:.3f} | {b:.3f} | {a / b:.1f}x | {diff:.1e} |")
        print(rows[-1], flush=True)
    lines = [
        f"\n### N4 field on the image grid, {dt.date.today()} ({platform.machine()}, 1 thread, load "
        f"average at start {load})\n",
        f"Command: `.venv/bin/python benchmarks/ingest/field.py --cohort DIR --per-center "
        f"{args.per_center}`. Baseline: `sitk.Resample(..., sitkBSpline)` of the same field onto "
        "the same image, same run (CPU-s, best of "
        f"{args.repeats}).\n",
        "| image | size (x, y, z) | sitk.Resample s | separable s | speed-up | max field difference |",
        "|---|---|---|---|---|---|",
        *rows,
        f"| all | | {t_itk:.3f} | {t_sep:.3f} | {t_itk / t_sep:.1f}x | {worst:.1e} |",
    ]
    publish("\n".join(lines) + "\n", write=not args.no_write)


if __name__ == "__main__":
    main()
