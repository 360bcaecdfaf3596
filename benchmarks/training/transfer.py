"""Held-out-center AUC of the study variants (issue 12): which levers make the models transfer.

For each study file given and each seed (split, CV and LASSO seeds all set to it), runs the
protocol as ``atrx train`` does (harmonisation prepared from the study, protocol, raw-test check)
on the workspace's point-in-time training frame, and records the test-center AUC of the
first-order baseline (fitted on raw features, the issue's reference), the best imaging model (as
ranked: LOCO CV when there are two development centers) and the fusion model. The goal: best
imaging and fusion >= the baseline on every seed.

    ATRX_HOME=/data/full .venv/bin/python benchmarks/training/transfer.py \\
        --studies training/study.yaml benchmarks/training/studies/combat.yaml --seeds 0 1 2 3 4

Each variant reads the frame once (variants with the same feature views share the read).
``--jobs 2`` runs two (variant, seed) protocols at once (2 cores: nothing else should run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from atrx.workspace import Workspace
from training import harmonisation_run
from training.baseline import BASELINE, fit_baseline
from training.dataset import LABEL, split, training_frame
from training.protocol import FUSION, run_protocol
from training.reference_norm import normalise_for_study
from training.stability_filter import apply_stability
from training.study import StudyConfig, load_study

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _record import publish  # noqa: E402

_FRAMES: dict[tuple[str, ...], object] = {}


def seeded(study: StudyConfig, seed: int) -> StudyConfig:
    seeds = study.seeds.model_copy(update={"split": seed, "cv": seed, "selection": seed})
    return study.model_copy(update={"seeds": seeds})


def one(home: str, study_path: str, seed: int) -> dict:
    """One protocol run; returns the held-out-center AUCs."""
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")  # LASSO's fold-count notes, once per fit
    study = seeded(load_study(study_path), seed)
    key = (*study.feature_views(), study.normalisation.method)
    ws = Workspace.at(home)
    if key not in _FRAMES:
        _FRAMES[key] = training_frame(ws, None, study)
    data = _FRAMES[key]
    raw = data.frame
    frame, _ = apply_stability(raw, ws, data.feature_versions, study.stability.min_icc,
                               study.split.development_centers, study.stability.patients,
                               study.stability.seed)
    frame, _ = normalise_for_study(frame, study.normalisation.method)
    sp = split(frame, study)
    t = time.perf_counter()
    prepared = harmonisation_run.prepare(frame, sp, study)
    result = run_protocol(prepared.frame, sp, study)
    harmonisation_run.finish(prepared, result, frame, sp, study)  # raw = unharmonised
    test = raw.iloc[sp.test]
    y = test[LABEL].to_numpy().astype(np.int64)
    train = raw.iloc[sp.train].reset_index(drop=True)
    plain = fit_baseline(train, train[LABEL].to_numpy().astype(np.int64), study, None)
    best = result.best.spec.label
    return {
        "study": Path(study_path).stem, "seed": seed, "best": best,
        "ranking": result.ranking.strategy,
        "baseline": float(roc_auc_score(y, plain.final.predict_proba(test[plain.columns])[:, 1])),
        "imaging": result.auc(best, "test"), "fusion": result.auc(FUSION, "test"),
        "run_baseline": result.auc(BASELINE, "test") if BASELINE in result.metrics else None,
        "raw_fusion": prepared.raw_test_auc.get("fusion"),
        "raw_imaging": prepared.raw_test_auc.get("best_imaging"),
        "seconds": time.perf_counter() - t, "n": int(len(frame)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None, help="workspace (default: $ATRX_HOME)")
    ap.add_argument("--studies", nargs="+", default=["training/study.yaml"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    home = str(Workspace.at(args.home).home)
    tasks = [(home, s, seed) for s in args.studies for seed in args.seeds]
    t0 = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for r in pool.map(one, *zip(*tasks, strict=True)):
            rows.append(r)
            print(f"{r['study']} seed {r['seed']}: baseline {r['baseline']:.3f}, best imaging "
                  f"{r['best']} {r['imaging']:.3f}, fusion {r['fusion']:.3f} ({r['seconds']:.0f} s)",
                  flush=True)
    lines = [f"\n### Transfer to a held-out center, {dt.date.today()} "
             f"({platform.machine()}, {rows[0]['n']} patients, {time.perf_counter() - t0:.0f} s)\n\n",
             "`ATRX_HOME=<workspace> .venv/bin/python benchmarks/training/transfer.py --studies "
             f"{' '.join(args.studies)} --seeds {' '.join(map(str, args.seeds))}`\n\n",
             "Test-center AUC. Baseline: the first-order L2 LR on raw features (fitted on the "
             "training rows, the issue's reference). Raw: the same fitted models on unharmonised test "
             "features (ComBat variants only). Run baseline: the first-order baseline of the run itself, on the "
             "frame the protocol fitted (reference-mapped with normalisation: reference).\n\n",
             "| study | seed | baseline | best imaging (model) | fusion | run baseline | raw best imaging "
             "| raw fusion | imaging >= baseline | fusion >= baseline |\n",
             "|---|---|---|---|---|---|---|---|---|---|\n"]

    def f(x):
        return "" if x is None else f"{x:.3f}"

    for r in rows:
        lines.append(f"| {r['study']} | {r['seed']} | {r['baseline']:.3f} | {r['imaging']:.3f} "
                     f"({r['best']}) | {r['fusion']:.3f} | {f(r['run_baseline'])} | {f(r['raw_imaging'])} "
                     f"| {f(r['raw_fusion'])} "
                     f"| {'yes' if r['imaging'] >= r['baseline'] else 'no'} "
                     f"| {'yes' if r['fusion'] >= r['baseline'] else 'no'} |\n")
    lines.append("\n| study | mean baseline | mean best imaging | mean fusion | seeds imaging >= "
                 "baseline | seeds fusion >= baseline |\n|---|---|---|---|---|---|\n")
    for s in dict.fromkeys(r["study"] for r in rows):
        sub = [r for r in rows if r["study"] == s]
        m = {k: float(np.mean([r[k] for r in sub])) for k in ("baseline", "imaging", "fusion")}
        lines.append(f"| {s} | {m['baseline']:.3f} | {m['imaging']:.3f} | {m['fusion']:.3f} | "
                     f"{sum(r['imaging'] >= r['baseline'] for r in sub)}/{len(sub)} | "
                     f"{sum(r['fusion'] >= r['baseline'] for r in sub)}/{len(sub)} |\n")
    publish("".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
