"""Both radiomics engines on the whole flow (issue 13, item 6), side by side in one run.

From a workspace that holds an ingested cohort (``atrx ingest`` of ``atrx synth --scale 1.0``), it
forks homes that share the image store (a symlink) and the deep features (their lineage rows and
Parquet parts are copied) but hold no radiomics features, then in each fork runs exactly what a
user runs after ingest: the features job (radiomics views, 2 workers), the feature-stability table
on the development centers, and ``atrx train`` for each study file, all with the same seeds:

* ``pyradiomics``: the parameter file with ``engine: pyradiomics``, on a stratified subset
  (``--fraction``, per center and ATRX group) because PyRadiomics on the full cohort does not fit a
  session on 2 cores;
* ``atrx``: the shipped parameter file (``engine: atrx``) on the same subset (same patients, so
  the test AUCs are comparable);
* ``atrx-full``: the shipped file on every patient (the wall time of the whole cohort).

Printed and appended to docs/benchmarks.md: features wall seconds and seconds per patient of each
(ratio pyradiomics / atrx on the same patients), stability seconds, and every model's test AUC
on both engines' features with the absolute difference (goal: <= 0.01).

    .venv/bin/python benchmarks/features/engines.py --home /work/data/full [--fraction 0.25]
        [--studies training/study.yaml benchmarks/training/studies/paper.yaml] [--no-full]

Each fork runs in its own spawned process: BentoML reads ``BENTOML_HOME`` once per process, and
each fork registers its candidates in its own model store.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STUDIES = ["training/study.yaml", "benchmarks/training/studies/paper.yaml"]


def choose_subset(catalog: str, fraction: float, seed: int) -> list[str]:
    """A stratified ``fraction`` of the labelled patients: per center and ATRX group, at least 2."""
    with duckdb.connect(catalog, read_only=True) as con:
        rows = con.execute("SELECT patient_id, center, atrx_mutant FROM labels "
                           "WHERE patient_id IN (SELECT patient_id FROM scans) "
                           "ORDER BY patient_id").fetchall()
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, int], list[str]] = {}
    for pid, center, mutant in rows:
        groups.setdefault((center, int(mutant)), []).append(pid)
    chosen: list[str] = []
    for key in sorted(groups):
        ids = groups[key]
        k = min(len(ids), max(2, round(fraction * len(ids))))
        chosen += [str(p) for p in rng.choice(ids, size=k, replace=False)]
    return sorted(chosen)


def fork(home: Path, dest: Path, patients: list[str] | None) -> Path:
    """A home with ``home``'s scans (only ``patients`` if given) and deep features, no radiomics."""
    dest.mkdir(parents=True)
    (dest / "images.zarr").symlink_to((home / "images.zarr").resolve())
    shutil.copy2(home / "catalog.duckdb", dest / "catalog.duckdb")
    for part in (home / "offline").glob("dl_*"):
        shutil.copytree(part, dest / "offline" / part.name)
    with duckdb.connect(str(dest / "catalog.duckdb")) as con:
        con.execute("DELETE FROM lineage WHERE feature_view LIKE 'rad_%'")
        # the clinical export and the view registration of the source home are not copied:
        # the fork's first features run redoes both
        con.execute("DELETE FROM runs WHERE stage = 'features'")
        if patients is not None:
            con.execute("CREATE TEMP TABLE keep AS SELECT unnest(?::VARCHAR[]) AS patient_id", [patients])
            for table in ("scans", "scan_sources", "clinical", "labels", "lineage"):
                con.execute(f"DELETE FROM {table} WHERE patient_id NOT IN (SELECT patient_id FROM keep)")
    return dest


def _publish(text: str, write: bool) -> None:
    """benchmarks/_record.publish, loaded by path: putting benchmarks/ on sys.path would let
    benchmarks/training shadow the training package in the spawned processes."""
    spec = importlib.util.spec_from_file_location("_record", ROOT / "benchmarks" / "_record.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.publish(text, write=write)


def side(home: str, engine: str, studies: list[str], workers: int, train: bool) -> dict[str, Any]:
    """Features, stability and training in one fork (run in a fresh process)."""
    os.environ["BENTOML_HOME"] = str(Path(home) / "bentoml")
    import logging
    import warnings

    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    from atrx.workspace import Workspace
    from features.job import run_features
    from features.radiomics import load_params
    from features.stability_job import run_stability
    from training.run import run_train
    from training.study import load_study

    ws = Workspace.at(home)
    params = {**load_params(), "engine": engine}
    t0 = time.perf_counter()
    summary = run_features(ws, workers=workers, kinds=("rad",), radiomics_params=params)
    out: dict[str, Any] = {
        "features_s": time.perf_counter() - t0, "compute_s": summary.compute_seconds,
        "scans": summary.scans, "ok": summary.results["ok"], "failed": summary.results["failed"],
        "errors": summary.results["error"], "version": summary.versions.get("rad"),
        "roi_median_s": float(np.median(summary.roi_seconds["rad"])) if summary.roi_seconds["rad"] else None,
    }
    if not train:
        return out
    tables = {(tuple(s.split.development_centers), s.stability.patients, s.stability.seed)
              for s in map(load_study, (ROOT / p for p in studies)) if s.stability.min_icc is not None}
    t0 = time.perf_counter()
    for centers, patients, seed in sorted(tables):  # the tables the studies' filters read
        run_stability(ws, patients=patients, seed=seed, workers=workers, params=params,
                      centers=list(centers))
    out["stability_s"] = time.perf_counter() - t0 if tables else None
    out["auc"] = {}
    for study in studies:
        s = run_train(ws, study_path=ROOT / study)
        out["auc"][Path(study).stem] = {m: _auc(per.get("test")) for m, per in s.metrics.items()}
        out.setdefault("best", {})[Path(study).stem] = s.best_imaging_model
        out.setdefault("n", {})[Path(study).stem] = {k: v["n"] for k, v in s.split.items()
                                                     if isinstance(v, dict) and "n" in v}
    return out


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _auc(metrics: Any) -> float | None:
    if metrics is None:
        return None
    auc = metrics.get("auc") if isinstance(metrics, dict) else getattr(metrics, "auc", None)
    return None if auc is None else float(auc)


def run_side(*args: Any) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(side, *args).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, help="workspace holding the ingested cohort (left unchanged)")
    ap.add_argument("--fraction", type=float, default=0.25, help="share of patients for the PyRadiomics side")
    ap.add_argument("--seed", type=int, default=0, help="seed of the subset")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--studies", nargs="+", default=DEFAULT_STUDIES)
    ap.add_argument("--no-full", action="store_true", help="skip the atrx engine on the whole cohort")
    ap.add_argument("--keep", action="store_true", help="keep the forked homes (printed)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    home = Path(args.home)
    subset = choose_subset(str(home / "catalog.duckdb"), args.fraction, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="atrx-bench-engines-"))
    results: dict[str, dict[str, Any]] = {}
    t_all = time.perf_counter()
    try:
        plan = [("pyradiomics", "pyradiomics", subset, True), ("atrx", "atrx", subset, True)]
        if not args.no_full:
            plan.append(("atrx-full", "atrx", None, False))
        for name, engine, patients, train in plan:
            dest = fork(home, tmp / name, patients)
            print(f"{name}: features ({engine} engine) on {len(patients) if patients else 'all'} patients "
                  f"in {dest}", flush=True)
            r = run_side(str(dest), engine, args.studies, args.workers, train)
            r["n_patients"] = len(patients) if patients else None
            results[name] = r
            print(f"{name}: {r}", flush=True)
    finally:
        if args.keep:
            print(f"forked homes kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    _publish(report(args, subset, results, time.perf_counter() - t_all), write=not args.no_write)


def report(args: argparse.Namespace, subset: list[str], r: dict[str, dict[str, Any]], seconds: float) -> str:
    py, ours = r["pyradiomics"], r["atrx"]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    cmd = (f".venv/bin/python benchmarks/features/engines.py --home <ingested full cohort> --fraction "
           f"{args.fraction} --seed {args.seed} --workers {args.workers} --studies {' '.join(args.studies)}"
           + (" --no-full" if args.no_full else ""))
    n = len(subset)
    lines = [f"\n### Both radiomics engines on the whole flow, {dt.date.today()} ({platform.machine()}, "
             f"{os.cpu_count()} cores, {args.workers} workers, load average at end {load}, {seconds:.0f} s in all)\n",
             f"Command: `{cmd}`\n",
             f"Subset: {n} patients ({args.fraction:.0%} per center and ATRX group, seed {args.seed}); "
             f"radiomics views only (deep features copied). Versions: pyradiomics {py['version']}, "
             f"atrx {ours['version']}.\n",
             "| measure | atrx engine | PyRadiomics 3.0.1 | ratio (PyRadiomics / atrx) |", "|---|---|---|---|",
             f"| features job wall s, {n} patients (3 ROIs x 2 sequences each, 1,130 features per ROI) | {ours['features_s']:.0f} | "
             f"{py['features_s']:.0f} | {py['features_s'] / ours['features_s']:.1f} |",
             f"| compute phase wall s | {ours['compute_s']:.0f} | {py['compute_s']:.0f} | "
             f"{py['compute_s'] / ours['compute_s']:.1f} |",
             f"| median seconds per ROI in task | {ours['roi_median_s']:.3f} | {py['roi_median_s']:.3f} | "
             f"{py['roi_median_s'] / ours['roi_median_s']:.1f} |",
             *([f"| stability table wall s (study's patients, development centers) | {ours['stability_s']:.0f} | "
                f"{py['stability_s']:.0f} | {py['stability_s'] / ours['stability_s']:.1f} |"]
               if ours["stability_s"] else [])]
    if "atrx-full" in r:
        full = r["atrx-full"]
        per_py = py["features_s"] / n
        lines.append(f"| features job wall s, whole cohort ({full['scans']} studies), atrx; PyRadiomics "
                     f"extrapolated per patient | {full['features_s']:.0f} ({full['features_s'] / full['scans']:.2f} "
                     f"s/patient) | {per_py * full['scans']:.0f} ({per_py:.2f} s/patient) | "
                     f"{per_py / (full['features_s'] / full['scans']):.1f} |")
    lines += ["", "Test-center AUC of every model trained by `atrx train` (same seeds) on each engine's "
              "features; goal |difference| <= 0.01.\n",
              "| study | model | atrx | PyRadiomics | abs difference |", "|---|---|---|---|---|"]
    worst = 0.0
    for study, aucs in ours["auc"].items():
        for model, a in aucs.items():
            b = py["auc"].get(study, {}).get(model)
            d = abs(a - b) if a is not None and b is not None else None
            worst = max(worst, d or 0.0)
            lines.append(f"| {study} | {model} | {_cell(a)} | {_cell(b)} | {_cell(d)} |")
    sets = ours.get("n", {})
    lines.append(f"\nLargest difference {worst:.3f}; best imaging model atrx {ours.get('best')}, "
                 f"PyRadiomics {py.get('best')}; set sizes {sets}. ROIs ok/failed: atrx {ours['ok']}/{ours['failed']}, "
                 f"PyRadiomics {py['ok']}/{py['failed']}.\n")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
