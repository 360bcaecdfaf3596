"""Training on a featurised workspace: speed of the selection chain and stability across seeds.

Reads the study's point-in-time training frame through Feast once, then:

1. times one imaging model's selection chain (z-score -> t-test -> LASSO-CV -> backward AIC) on
   the training rows with the study's LASSO grid (glmnet's lambda path) and with the baseline,
   scikit-learn's default grid ``logspace(-4, 4, 20)``, which reaches an unpenalised L1 fit;
2. runs the whole protocol once per seed (split, CV and LASSO seeds all set to it) and records the
   test-set AUCs of the fusion model, the best imaging model (by CV AUC, as the paper picks it)
   and the clinical model, and whether fusion >= best imaging > clinical holds.

    ATRX_HOME=/data/atrx-full .venv/bin/python benchmarks/training/run.py \
        [--seeds 0 1 2 3 4] [--model tumor_radiomics] [--skip-baseline] [--no-write]

The workspace must have gone through ingest and features (see docs/training.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

from atrx.workspace import Workspace
from training.dataset import LABEL, split, training_frame
from training.protocol import CLINICAL, FUSION, imaging_columns, imaging_template, run_protocol
from training.study import StudyConfig, load_study

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _record import publish  # noqa: E402

SKLEARN_GRID = list(np.logspace(-4, 4, 20))


def chain_seconds(frame, sp, study: StudyConfig, model: str, grid) -> tuple[float, int, int]:
    """Seconds to fit one imaging model's selection chain; LASSO survivors; final features.

    ``grid``: C values replacing the study's LASSO grid (None: the study's own)."""
    spec = {s.name: s for s in study.imaging_models()}[model]
    cols = imaging_columns(frame, spec)
    train = frame.iloc[sp.train]
    pipe = imaging_template(study)
    if grid is not None:
        pipe.set_params(lasso__Cs=grid)
    t0 = time.perf_counter()
    fitted = pipe.fit(train[cols], train[LABEL].to_numpy())
    seconds = time.perf_counter() - t0
    return seconds, int(fitted["lasso"].get_support().sum()), int(fitted["aic"].get_support().sum())


def seeded(study: StudyConfig, seed: int) -> StudyConfig:
    seeds = study.seeds.model_copy(update={"split": seed, "cv": seed, "selection": seed})
    return study.model_copy(update={"seeds": seeds})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", default=None, help="workspace (default: $ATRX_HOME)")
    ap.add_argument("--study", default=None, help="study file (default: training/study.yaml)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--model", default="tumor_radiomics", help="imaging model timed in part 1")
    ap.add_argument("--skip-baseline", action="store_true", help="do not time the sklearn grid")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    ws = Workspace.at(args.home)
    study = load_study(args.study)
    names = [s.name for s in study.imaging_models()]
    if args.model not in names:
        ap.error(f"--model {args.model!r} is not an imaging model of the study; choose one of {names}")
    t0 = time.perf_counter()
    data = training_frame(ws, None, study)
    load_s = time.perf_counter() - t0
    frame = data.frame
    print(f"training frame {frame.shape[0]} x {frame.shape[1]} from Feast in {load_s:.1f} s")

    timing = []
    sp0 = split(frame, study)
    ours = chain_seconds(frame, sp0, study, args.model, None)
    print(f"{args.model} chain, glmnet grid: {ours[0]:.1f} s, LASSO kept {ours[1]}, AIC kept {ours[2]}")
    if not args.skip_baseline:
        base = chain_seconds(frame, sp0, study, args.model, SKLEARN_GRID)
        print(f"{args.model} chain, sklearn grid: {base[0]:.1f} s, LASSO kept {base[1]}, AIC kept {base[2]}")
        timing.append(
            f"| {args.model} selection chain, seconds (lower is better) | {ours[0]:.1f} "
            f"(LASSO keeps {ours[1]}) | {base[0]:.1f} (LASSO keeps {base[1]}) | {ours[0] / base[0]:.4f} |"
        )

    rows = []
    for seed in args.seeds:
        s_study = seeded(study, seed)
        sp = split(frame, s_study)
        t = time.perf_counter()
        result = run_protocol(frame, sp, s_study)
        seconds = time.perf_counter() - t
        best = result.best.spec.label
        auc = {m: result.auc(m, "test") for m in (FUSION, best, CLINICAL)}
        val = {m: result.auc(m, "validation") for m in (FUSION, best, CLINICAL)}
        holds = auc[FUSION] >= auc[best] > auc[CLINICAL]
        val_holds = val[FUSION] >= val[best] > val[CLINICAL]
        top = max(result.imaging, key=lambda r: result.auc(r.spec.label, "test")).spec.label
        rows.append((seed, best, auc[FUSION], auc[best], auc[CLINICAL], holds, top,
                     result.auc(top, "test"), seconds, val, val_holds,
                     result.imaging_score_scale["ratio"]))
        print(f"seed {seed}: best {best}; test AUC fusion {auc[FUSION]:.3f}, best imaging "
              f"{auc[best]:.3f}, clinical {auc[CLINICAL]:.3f}; ordering {'holds' if holds else 'fails'} "
              f"(validation: {'holds' if val_holds else 'fails'}; {seconds:.0f} s)")

    held = sum(r[5] for r in rows)
    val_held = sum(r[10] for r in rows)
    lines = [
        f"\n### Training, {dt.date.today()} ({platform.processor() or platform.machine()}, "
        f"{frame.shape[0]} patients x {frame.shape[1]} columns)\n\n",
        "`ATRX_HOME=<full cohort> .venv/bin/python benchmarks/training/run.py "
        f"--seeds {' '.join(map(str, args.seeds))} --model {args.model}"
        f"{' --skip-baseline' if args.skip_baseline else ''}`"
        f" (Feast read {load_s:.0f} s).\n\n",
    ]
    if timing:
        lines += ["| measure | ours (glmnet path) | baseline (sklearn grid 1e-4..1e4) | ratio |\n",
                  "|---|---|---|---|\n", *(f"{t}\n" for t in timing), "\n"]
    lines += [
        f"Ordering fusion >= best imaging > clinical held on the test set for {held} of {len(rows)} "
        f"seeds, on the validation set for {val_held}. AUCs: test (validation); the seed sets the "
        "split, CV folds and LASSO folds; the test set (center C) is the same in every row.\n\n",
        "| seed | best imaging (CV) | fusion | best imaging | clinical | holds on test (validation) "
        "| top imaging on test | score scale ratio | protocol s |\n",
        "|---|---|---|---|---|---|---|---|---|\n",
        *(f"| {r[0]} | {r[1]} | {r[2]:.3f} ({r[9][FUSION]:.3f}) | {r[3]:.3f} ({r[9][r[1]]:.3f}) | "
          f"{r[4]:.3f} ({r[9][CLINICAL]:.3f}) | {'yes' if r[5] else 'no'} ({'yes' if r[10] else 'no'}) | "
          f"{r[6]} ({r[7]:.3f}) | {r[11]:.2f} | {r[8]:.0f} |\n" for r in rows),
    ]
    publish("".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
