"""``run_retrain``: train a candidate, compare it with production on the same rows, promote or keep.

The candidate is promoted when AUC(candidate) >= AUC(production) - margin on the candidate's
validation + test rows. Both models are scored on exactly the same rows: the production model's
features are fetched point-in-time for those rows when the candidate's study did not load them,
and rows that lack any of them are left out for both.

With no production model (the first model) the candidate is promoted only when the lower bound of
the DeLong 95% CI of its AUC on the same validation + test rows lies above
``promotion.first_model_auc_floor`` (default 0.5, chance); otherwise it stays a candidate and the
exit code is 10, unless ``promote_below_floor`` (``atrx retrain --promote-below-floor``) overrides
the floor, which the stage history records with the reason ``override: below floor (...)``.

Exit codes (``RetrainSummary.exit_code``, :class:`atrx.errors.ExitCode`): 0 the candidate was
promoted, 10 it was not (worse than production, or a first model below the floor), 2 bad input
(study file, no data, views missing), 1 unexpected failure. Each decision is one log line on
``atrx.retrain`` and one ``retrain`` row in the catalog's ``runs`` table.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from atrx import registry
from atrx.catalog import Catalog
from atrx.errors import ExitCode, debug_enabled
from atrx.workspace import Workspace
from training.artifacts import Table, TrainSummary, fmt3
from training.dataset import LABEL, TrainingDataError
from training.delong import delong_ci
from training.protocol import ProgressFn
from training.run import Trained, is_bad_input, train
from training.stability_filter import StabilityRunner
from training.study import load_study

__all__ = ["OVERRIDE_REASON", "RetrainSummary", "decide", "production_frame", "run_retrain"]

log = logging.getLogger(__name__)
retrain_log = logging.getLogger("atrx.retrain")

#: the stage-history reason of a first model promoted although its AUC CI is below the floor
OVERRIDE_REASON = "override: below floor"
#: the rows both promotion rules (margin and first-model floor) score the candidate on
EVALUATION_SET = "validation + test rows"


@dataclass
class RetrainSummary:
    """The retrain decision; ``rows()`` for the CLI, ``exit_code`` for the shell."""

    decision: str  # promoted | kept | bad_input | failed
    exit_code: ExitCode
    margin: float | None = None
    candidate_tag: str | None = None
    candidate_auc: float | None = None
    production_tag: str | None = None  # production before the decision
    production_auc: float | None = None
    n_evaluation_rows: int = 0
    run_id: str | None = None
    train: TrainSummary | None = None
    error: str | None = None
    candidate_auc_ci: tuple[float, float] | None = None  # DeLong 95% CI (first model only)
    floor: float | None = None  # promotion.first_model_auc_floor, when it applied
    override: bool = False  # promoted below the floor by --promote-below-floor
    reason: str | None = None
    fix: str | None = None

    def tables(self) -> list[Table]:
        return self.train.tables() if self.train else []

    def rows(self) -> list[tuple[str, str]]:
        out = [("decision", self.decision), ("exit code", str(int(self.exit_code)))]
        if self.error:
            out.append(("error", self.error))
        if self.train:
            out.append(("training run", self.train.run_id))
        out += [
            ("candidate", f"{self.candidate_tag or '-'} (AUC {fmt3(self.candidate_auc)})"),
        ]
        if self.candidate_auc_ci:
            ci = "-".join(map(fmt3, self.candidate_auc_ci))
            out.append(("candidate AUC 95% CI (DeLong)", ci))
        if self.floor is not None:
            out.append(("first-model floor", f"CI lower bound > {fmt3(self.floor)}"
                        + (" (overridden)" if self.override else "")))
        out += [
            ("production before", f"{self.production_tag or 'none'} (AUC {fmt3(self.production_auc)})"),
            ("margin", fmt3(self.margin)),
            ("evaluation rows (validation + test)", str(self.n_evaluation_rows)),
        ]
        if self.reason:
            out.append(("reason", self.reason))
        if self.train:
            out.append(("report", self.train.report_path))
        return out


def production_frame(ws: Workspace, model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus any feature the production model needs that the candidate's study did not
    load, fetched point-in-time for the same entity rows."""
    missing = [c for c in model.required_features if c not in frame.columns]
    if not missing:
        return frame
    from feature_repo.store import historical_features

    try:
        extra = historical_features(ws, frame[["patient_id", "event_timestamp"]], features=missing)
    except ValueError as exc:
        raise TrainingDataError(
            f"the production model needs features that are no longer registered ({exc})",
            fix="retrain on the registered views and promote by hand (`atrx models promote TAG`)",
        ) from exc
    return pd.concat([frame.reset_index(drop=True), extra[missing]], axis=1)


def decide(ws: Workspace, trained: Trained, current: registry.ModelRecord | None,
           margin: float, *, floor: float = 0.5,
           promote_below_floor: bool = False) -> RetrainSummary:
    """Score candidate and production on the candidate's validation + test rows; promote the
    candidate when it is not worse than production by more than ``margin``. With no production
    model, the first-model floor decides instead (:func:`_decide_first`)."""
    result, sp = trained.run.result, trained.run.split
    candidate = trained.summary.tag
    rows = np.concatenate([sp.validation, sp.test])
    evaluation = trained.run.data.frame.iloc[rows].reset_index(drop=True)
    y = evaluation[LABEL].to_numpy()
    if current is None:
        if np.unique(y).size < 2:
            raise TrainingDataError("the evaluation rows hold one ATRX class only; no AUC")
        summary = _decide_first(ws, candidate, y, result.fusion.predict_proba(evaluation)[:, 1],
                                floor, promote_below_floor)
        summary.margin, summary.train = margin, trained.summary
        return summary
    old = registry.load_model(ws, current.tag)
    prod_frame = production_frame(ws, old, evaluation)
    usable = ~prod_frame[old.required_features].isna().any(axis=1).to_numpy()
    n_usable = int(usable.sum())
    if n_usable < len(usable):
        log.warning("%d evaluation row(s) lack features of production model %s; both "
                    "models are compared on the other %d", int((~usable).sum()),
                    current.tag, n_usable)
    y_eval = y[usable]
    if np.unique(y_eval).size < 2:
        raise TrainingDataError("the evaluation rows hold one ATRX class only; no AUC")
    cand_auc = float(roc_auc_score(y_eval, result.fusion.predict_proba(evaluation[usable])[:, 1]))
    prod_auc = float(roc_auc_score(y_eval, old.predict_proba(prod_frame[usable])[:, 1]))
    if cand_auc >= prod_auc - margin:
        registry.promote(ws, candidate, reason=f"AUC {cand_auc:.4f} >= {prod_auc:.4f} - {margin}")
        retrain_log.info(
            "promoted %s over %s: candidate AUC %.4f >= production AUC %.4f - margin "
            "%.3f (%d evaluation rows)", candidate, current.tag, cand_auc, prod_auc, margin,
            n_usable)
        decision, code = "promoted", ExitCode.OK
    else:
        retrain_log.info(
            "kept production %s: candidate %s AUC %.4f < production AUC %.4f - margin "
            "%.3f (%d evaluation rows)", current.tag, candidate, cand_auc, prod_auc, margin,
            n_usable)
        decision, code = "kept", ExitCode.KEPT
    return RetrainSummary(decision, code, margin, candidate, cand_auc, current.tag, prod_auc,
                          n_usable, train=trained.summary)


def _decide_first(ws: Workspace, candidate: str, y: np.ndarray, scores: np.ndarray, floor: float,
                  promote_below_floor: bool) -> RetrainSummary:
    """No production model: promote when the DeLong 95% CI lower bound of the candidate's AUC
    on the evaluation rows lies above ``floor``, or when ``promote_below_floor`` overrides it;
    otherwise the candidate stays a candidate (exit code 10)."""
    auc = float(roc_auc_score(y, scores))
    try:
        _, lo, hi = delong_ci(y, scores, 0.95)
    except ValueError:  # fewer than 2 cases of a class: no CI, so nothing can clear the floor
        lo = hi = None
    ci = ("no DeLong CI: fewer than 2 cases of a class" if lo is None
          else f"DeLong 95% CI {lo:.3f}-{hi:.3f}")
    what = f"candidate AUC {auc:.3f} ({ci}) on its {len(y)} {EVALUATION_SET}"
    below = (f"the CI lower bound {lo:.3f} is not above" if lo is not None
             else "without a CI it cannot clear")
    summary = RetrainSummary("promoted", ExitCode.OK, None, candidate, auc, None, None, len(y),
                             candidate_auc_ci=None if lo is None else (lo, hi), floor=floor)
    if lo is not None and lo > floor:
        summary.reason = f"no production model; {what}: CI lower bound above the floor {floor:.3f}"
        registry.promote(ws, candidate, reason=summary.reason)
        retrain_log.info("promoted %s: %s", candidate, summary.reason)
    elif promote_below_floor:
        summary.override = True
        summary.reason = (f"{OVERRIDE_REASON} (no production model; {what}; {below} the floor "
                          f"{floor:.3f})")
        registry.promote(ws, candidate, reason=summary.reason)
        retrain_log.warning("promoted %s: %s", candidate, summary.reason)
    else:
        summary.decision, summary.exit_code = "kept", ExitCode.KEPT
        summary.reason = (f"no production model, and {what}; {below} the floor "
                          f"promotion.first_model_auc_floor {floor:.3f}, so {candidate} stays a "
                          "candidate")
        summary.fix = ("train on more data (more patients or centers narrow the CI), or promote "
                       "anyway: `atrx retrain --promote-below-floor` (recorded as "
                       f"'{OVERRIDE_REASON}') or `atrx models promote {candidate}`")
        retrain_log.info("kept %s as a candidate: %s", candidate, summary.reason)
    return summary


def run_retrain(
    ws: Workspace,
    as_of: str | dt.date | dt.datetime | None = None,
    study_path: str | Path | None = None,
    progress: ProgressFn | None = None,
    promote_below_floor: bool = False,
    stability_runner: StabilityRunner | None = None,
) -> RetrainSummary:
    """Train a candidate and decide (see the module docstring); never raises for a bad run, so a
    scheduler always gets an exit code. One log line on ``atrx.retrain`` per decision.

    ``promote_below_floor`` promotes a first model whose AUC CI is not above
    ``promotion.first_model_auc_floor`` (recorded as an override); it changes nothing when a
    production model exists."""
    margin: float | None = None
    trained: Trained | None = None
    summary: RetrainSummary
    try:
        study = load_study(study_path)
        margin = study.promotion.margin
        current = registry.production(ws)
        trained = train(ws, as_of, study, study_path, progress, stability_runner)
        summary = decide(ws, trained, current, margin, floor=study.promotion.first_model_auc_floor,
                         promote_below_floor=promote_below_floor)
    except Exception as exc:  # the exit code must say what happened, not crash the scheduler
        done = trained.summary if trained else None
        if is_bad_input(exc):
            summary = RetrainSummary("bad_input", ExitCode.BAD_INPUT, margin, train=done,
                                     error=str(exc))
            retrain_log.error("retrain stopped, bad input: %s", str(exc).replace("\n", " "),
                              exc_info=debug_enabled())
        else:
            summary = RetrainSummary("failed", ExitCode.FAILURE, margin, train=done,
                                     error=f"{type(exc).__name__}: {exc}")
            retrain_log.exception("retrain failed: %s: %s", type(exc).__name__, exc)
    _record_retrain(ws, summary)
    return summary


def _record_retrain(ws: Workspace, summary: RetrainSummary) -> None:
    """One ``retrain`` row in the catalog's runs table with the decision (best effort)."""
    try:
        ws.ensure()
        with Catalog(ws.catalog) as cat:
            run_id = cat.start_run("retrain", None, None, None, {})
            ok = summary.exit_code in (ExitCode.OK, ExitCode.KEPT)
            cat.finish_run(run_id, "ok" if ok else summary.decision, {
                "decision": summary.decision, "exit_code": int(summary.exit_code),
                "candidate": summary.candidate_tag,
                "candidate_auc": summary.candidate_auc,
                "production_before": summary.production_tag,
                "production_auc": summary.production_auc,
                "margin": summary.margin,
                "candidate_auc_ci": list(summary.candidate_auc_ci or []) or None,
                "first_model_auc_floor": summary.floor,
                "override": summary.override,
                "reason": summary.reason,
                "evaluation_rows": summary.n_evaluation_rows,
                "train_run": summary.train.run_id if summary.train else None,
                "error": summary.error,
            })
            summary.run_id = run_id
    except Exception:  # recording must not change the decision's exit code
        log.exception("could not record the retrain decision in the catalog")
