"""Training jobs: ``run_train`` (one study run -> report + registered candidate) and
``run_retrain`` (train, compare with production on the same rows, promote or keep).

A run writes ``<home>/runs/<run_id>/``: ``metrics.json`` (everything measured), one PNG per
figure and ONE self-contained ``report.html`` (figures embedded), and records itself in the
catalog's ``runs`` table (stage ``train``; a retrain decision adds a ``retrain`` row). The catalog
is opened only to start and to finish a run, so a long training never holds DuckDB's write lock.

Exit codes of ``run_retrain`` (``RetrainSummary.exit_code``): 0 the candidate was promoted, 10 the
production model was kept (candidate worse), 2 bad input (study file, no data, views missing),
1 unexpected failure. ``run_train`` raises ``ConfigError`` / ``TrainingDataError`` (both
``ValueError``; map them to 2) and returns a summary with ``exit_code`` 0.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from atrx import registry
from atrx.catalog import Catalog
from atrx.config.base import ConfigError
from atrx.workspace import Workspace
from training.dataset import (
    LABEL,
    Split,
    TrainingDataError,
    TrainingFrame,
    resolve_as_of,
    split,
    training_frame,
)
from training.protocol import CLINICAL, FUSION, SETS, ProgressFn, ProtocolResult, run_protocol
from training.study import DEFAULT_STUDY_PATH, StudyConfig, load_study

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_KEPT",
    "EXIT_OK",
    "RetrainSummary",
    "Table",
    "TrainSummary",
    "library_versions",
    "run_retrain",
    "run_train",
]

log = logging.getLogger(__name__)
retrain_log = logging.getLogger("atrx.retrain")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_KEPT = 10

_LIBRARIES = ("scikit-learn", "numpy", "scipy", "pandas", "statsmodels", "feast", "bentoml",
              "duckdb", "pyarrow")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the fitted model (recorded with every candidate)."""
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class Table:
    """A table for the CLI: title, column names and rows of strings."""

    title: str
    columns: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        """The table as GitHub markdown, for pasting a run's results into docs."""
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def _f(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _auc_ci(m: dict[str, Any]) -> str:
    if m.get("auc") is None:
        return "-"
    if m.get("auc_lo") is None or m.get("auc_hi") is None:
        return _f(m["auc"])
    return f"{m['auc']:.3f} ({m['auc_lo']:.3f}-{m['auc_hi']:.3f})"


def _metric_cells(m: dict[str, Any]) -> list[str]:
    return [_f(m.get("sensitivity")), _f(m.get("specificity")), _f(m.get("accuracy")), _auc_ci(m)]


_METRIC_COLUMNS = ["Sensitivity", "Specificity", "Accuracy", "AUC (95% CI)"]


@dataclass
class TrainSummary:
    """What a training run did; ``rows()`` and ``tables()`` feed the CLI."""

    run_id: str
    run_dir: str
    report_path: str
    metrics_path: str
    tag: str
    as_of: str
    study_name: str
    study_hash: str
    data: dict[str, Any]
    split: dict[str, Any]
    best_imaging_model: str
    best_imaging_cv_auc: float
    metrics: dict[str, dict[str, Any]]  # model label -> set -> binary metrics, in table order
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    exit_code: int = EXIT_OK

    def tables(self) -> list[Table]:
        """Table 2 (training and validation) and Table 3 (test), laid out like the paper."""
        n = {s: self.split[s]["n"] for s in SETS}
        t2 = Table(
            f"Table 2. Performance in the training (N={n['train']}) and validation "
            f"(N={n['validation']}) sets",
            ["Model", *(f"Train {c}" for c in _METRIC_COLUMNS),
             *(f"Validation {c}" for c in _METRIC_COLUMNS)],
            [[m, *_metric_cells(per["train"]), *_metric_cells(per["validation"])]
             for m, per in self.metrics.items()],
        )
        t3 = Table(
            f"Table 3. Performance in the test set (N={n['test']})",
            ["Model", *_METRIC_COLUMNS],
            [[m, *_metric_cells(per["test"])] for m, per in self.metrics.items()],
        )
        return [t2, t3]

    def rows(self) -> list[tuple[str, str]]:
        fusion = self.metrics.get(FUSION, {})
        sets = ", ".join(f"{s} {self.split[s]['n']} ({self.split[s]['n_pos']} mutant)" for s in SETS)
        dropped = self.data.get("dropped_by_reason") or {}
        return [
            ("run", self.run_id),
            ("as of", self.as_of),
            ("study", f"{self.study_name} ({self.study_hash[:12]})"),
            ("labels known at as-of", str(self.data.get("entity_rows"))),
            ("labels after as-of (left out)", str(self.data.get("labels_after_as_of"))),
            ("patients dropped (missing features)", str(self.data.get("patients_dropped"))
             + (f": {dropped}" if dropped else "")),
            ("sets", sets),
            ("best imaging model", f"{self.best_imaging_model} (CV AUC {self.best_imaging_cv_auc:.3f})"),
            *((f"fusion AUC ({s})", _auc_ci(fusion[s])) for s in SETS if s in fusion),
            ("candidate", self.tag),
            ("report", self.report_path),
            ("seconds", f"{self.seconds:.1f}"),
        ]


@dataclass
class _Trained:
    summary: TrainSummary
    data: TrainingFrame
    split: Split
    result: ProtocolResult


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def _finite(obj: Any) -> Any:
    """Replace NaN/inf by None so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _figures(result: ProtocolResult, out: Path) -> dict[str, Path]:
    from training.evaluation import roc_curve_data
    from training.figures import (
        plot_calibration,
        plot_clinical_impact,
        plot_decision_curve,
        plot_nomogram,
        plot_roc,
    )

    y, probs = result.y, result.probabilities
    headline = result.headline()
    titles = {"train": "training", "validation": "validation", "test": "test"}
    figs: dict[str, Path] = {}

    def both_classes(s: str) -> bool:
        return min(int(np.sum(y[s] == 1)), int(np.sum(y[s] == 0))) >= 2

    for s in SETS:
        if both_classes(s):
            curves = {m: roc_curve_data(y[s], probs[s][m]) for m in headline}
            figs[f"roc_{s}"] = plot_roc(curves, out / f"roc_{s}.png",
                                        f"ROC curves, {titles[s]} set")
    for s in ("validation", "test"):
        if both_classes(s):
            curves = {r.spec.label: roc_curve_data(y[s], probs[s][r.spec.label])
                      for r in result.imaging}
            figs[f"ROC curves of the imaging models, {titles[s]} set"] = plot_roc(
                curves, out / f"roc_imaging_{s}.png", f"Imaging models, {titles[s]} set")
        figs[f"calibration_{s}"] = plot_calibration(
            {m: result.calibration[m][s] for m in headline}, out / f"calibration_{s}.png",
            f"Calibration, {titles[s]} set")
        figs[f"decision_curve_{s}"] = plot_decision_curve(
            {m: result.decision_curve[m][s] for m in headline}, out / f"decision_curve_{s}.png",
            f"Decision curves, {titles[s]} set")
    figs["clinical_impact"] = plot_clinical_impact(
        result.clinical_impact["test"], out / "clinical_impact.png",
        title="Clinical impact curve of the fusion model, test set")
    nomo = result.fusion.nomogram_
    labels = {"imaging_score": "Imaging score", "age": "Age (years)", "sex": "Sex (0 F, 1 M)",
              "who_grade": "WHO grade", "vasari_score": "VASARI score"}
    ticks = {k: v for k, v in {"sex": [0, 1], "who_grade": [3, 4]}.items() if k in nomo.coefs}
    figs["nomogram"] = plot_nomogram(nomo, out / "nomogram.png", labels=labels, ticks=ticks,
                                     title="Nomogram of the fusion model")
    return figs


def _registry_metadata(
    run_id: str, study: StudyConfig, data: TrainingFrame, sp: Split, result: ProtocolResult,
    report: Path,
) -> dict[str, Any]:
    described = result.fusion.describe()
    headline = result.headline()
    return {
        "run_id": run_id,
        "as_of": data.as_of.isoformat(),
        "study_name": study.name,
        "study_hash": study.study_hash(),
        "data_hash": sp.data_hash,
        "train_hash": sp.train_hash,
        "feature_versions": data.feature_versions,
        "library_versions": library_versions(),
        "required_features": described["required_features"],
        "imaging_score": described["imaging_score"],
        "fusion": described["fusion"],
        "cutoff": described["cutoff"],
        "cutoff_policy": described["cutoff_policy"],
        "best_imaging_model": result.best.spec.label,
        "best_imaging_cv_auc": result.best.cv_auc,
        "metrics": {m: result.metrics[m] for m in headline},
        "sets": {s: {"n": int(result.y[s].size), "n_pos": int(result.y[s].sum())} for s in SETS},
        "report": str(report),
    }


def _train(
    ws: Workspace,
    as_of: str | dt.date | dt.datetime | None,
    study: StudyConfig,
    study_path: str | Path | None,
    progress: ProgressFn | None = None,
) -> _Trained:
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    from feature_repo.store import registered_versions

    cut = resolve_as_of(as_of)
    ws.ensure()
    versions = registered_versions(ws)
    with Catalog(ws.catalog) as cat:
        run_id = cat.start_run("train", None, study.study_hash(), None,
                               {**{f"feature_version_{view}": version
                                   for view, version in versions.items()},
                                **library_versions()})
    status, counts = "failed", {}
    timings: dict[str, float] = {}
    try:
        t = time.perf_counter()
        say(f"reading point-in-time features of the labels known at {cut.date()} through Feast")
        data = training_frame(ws, cut, study)
        sp = split(data.frame, study)
        timings["features"] = time.perf_counter() - t
        say(f"training frame: {data.n_rows} patients x {data.frame.shape[1]} columns "
            f"({timings['features']:.0f} s); fitting {len(study.imaging_models())} imaging models")
        t = time.perf_counter()
        result = run_protocol(data.frame, sp, study, progress=say)
        timings["protocol"] = time.perf_counter() - t
        say(f"protocol done ({timings['protocol']:.0f} s); writing figures, report and model")

        t = time.perf_counter()
        run_dir = Path(ws.runs) / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        figures = _figures(result, run_dir)
        timings["figures"] = time.perf_counter() - t
        t = time.perf_counter()
        report_path = run_dir / "report.html"
        tag = registry.save_candidate(
            ws, result.fusion,
            _registry_metadata(run_id, study, data, sp, result, report_path),
            labels={"run_id": run_id, "study": study.name},
        )
        timings["register"] = time.perf_counter() - t
        y = data.frame[LABEL].to_numpy()
        metrics_json = {
            "run_id": run_id,
            "candidate_tag": tag,
            "as_of": data.as_of.isoformat(),
            "study": study.model_dump(mode="json"),
            "study_path": str(study_path or DEFAULT_STUDY_PATH),
            "study_hash": study.study_hash(),
            "data": data.summary(),
            "dropped": data.dropped.to_dict(orient="records"),
            "split": sp.summary(y),
            "library_versions": library_versions(),
            **result.to_json(),
            "timings": timings,
        }
        metrics_path = run_dir / "metrics.json"
        metrics_path.write_text(
            json.dumps(_finite(json.loads(json.dumps(metrics_json, default=_json_default))),
                       indent=1),
            encoding="utf-8",
        )
        from training.report import render_report

        split_summary = sp.summary(y)
        meta = {
            "title": f"ATRX Fusion: training run {run_id}",
            "candidate model": tag,
            "as of": data.as_of.date().isoformat(),
            "study": f"{study.name} (sha256 {study.study_hash()[:12]})",
            "training data": f"sha256 {sp.data_hash[:12]}",
            "sets": ", ".join(f"{s}: {split_summary[s]['n']} ({split_summary[s]['n_pos']} mutant)"
                              for s in SETS),
            "patients dropped (missing features)": f"{data.summary()['patients_dropped']} "
                                                   f"{data.dropped_counts() or ''}",
            "best imaging model": f"{result.best.spec.label} (mean {study.imaging.cv_folds}-fold "
                                  f"CV AUC {result.best.cv_auc:.3f})",
            "classifiers on its features (CV AUC)": ", ".join(
                f"{c['classifier'].upper()} {c['cv_auc_mean']:.3f}"
                for c in result.classifier_comparison),
            "fusion cutoff": f"{result.fusion.cutoff_:.3f} ({study.cutoff.policy})",
            "training-set metrics": "imaging models out-of-fold; fusion on out-of-fold imaging "
                                    "scores; clinical in-sample",
        }
        render_report(
            {
                "models": {m: result.metrics[m] for m in result.model_order},
                "delong": result.delong + result.delong_imaging,
                "calibration": result.calibration,
                "decision_curve": result.decision_curve,
                "meta": meta,
            },
            figures,
            report_path,
        )
        timings["report"] = time.perf_counter() - t
        summary = TrainSummary(
            run_id=run_id,
            run_dir=str(run_dir),
            report_path=str(report_path),
            metrics_path=str(metrics_path),
            tag=tag,
            as_of=data.as_of.isoformat(),
            study_name=study.name,
            study_hash=study.study_hash(),
            data=data.summary(),
            split=split_summary,
            best_imaging_model=result.best.spec.label,
            best_imaging_cv_auc=result.best.cv_auc,
            metrics={m: result.metrics[m] for m in result.model_order},
            seconds=time.perf_counter() - t0,
            timings=timings,
        )
        (run_dir / "tables.md").write_text(
            "\n".join(t.markdown() for t in summary.tables()), encoding="utf-8"
        )
        status = "ok"
        counts = {
            "rows": data.n_rows, "dropped": data.dropped_counts(),
            "sets": {s: split_summary[s] for s in SETS}, "data_hash": sp.data_hash,
            "best_imaging_model": result.best.spec.label, "candidate": tag,
            "auc": {m: {s: result.metrics[m][s]["auc"] for s in SETS}
                    for m in (FUSION, result.best.spec.label, CLINICAL)},
            "report": str(report_path),
        }
        return _Trained(summary, data, sp, result)
    except (ConfigError, TrainingDataError) as exc:
        status, counts = "bad_input", {"error": str(exc)}
        raise
    except BaseException as exc:
        counts = {"error": f"{type(exc).__name__}: {exc}"}
        raise
    finally:
        counts["seconds"] = round(time.perf_counter() - t0, 2)
        with Catalog(ws.catalog) as cat:
            cat.finish_run(run_id, status, counts)


def run_train(
    ws: Workspace,
    as_of: str | dt.date | dt.datetime | None = None,
    study_path: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> TrainSummary:
    """Train the study on the labels known at ``as_of``; write the run; register a candidate.

    ``progress(message)`` is called at each step (the CLI prints it: a run takes minutes)."""
    study = load_study(study_path)
    return _train(ws, as_of, study, study_path, progress).summary


@dataclass
class RetrainSummary:
    """The retrain decision; ``rows()`` for the CLI, ``exit_code`` for the shell."""

    decision: str  # promoted | kept | bad_input | failed
    exit_code: int
    margin: float | None = None
    candidate_tag: str | None = None
    candidate_auc: float | None = None
    production_tag: str | None = None  # production before the decision
    production_auc: float | None = None
    n_evaluation_rows: int = 0
    run_id: str | None = None
    train: TrainSummary | None = None
    error: str | None = None

    def tables(self) -> list[Table]:
        return self.train.tables() if self.train else []

    def rows(self) -> list[tuple[str, str]]:
        out = [("decision", self.decision), ("exit code", str(self.exit_code))]
        if self.error:
            out.append(("error", self.error))
        if self.train:
            out.append(("training run", self.train.run_id))
        out += [
            ("candidate", f"{self.candidate_tag or '-'} (AUC {_f(self.candidate_auc)})"),
            ("production before", f"{self.production_tag or 'none'} (AUC {_f(self.production_auc)})"),
            ("margin", _f(self.margin)),
            ("evaluation rows (validation + test)", str(self.n_evaluation_rows)),
        ]
        if self.train:
            out.append(("report", self.train.report_path))
        return out


def _production_frame(ws: Workspace, model: Any, frame: pd.DataFrame) -> pd.DataFrame:
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
            f"the production model needs features that are no longer registered ({exc})"
        ) from exc
    return pd.concat([frame.reset_index(drop=True), extra[missing]], axis=1)


def run_retrain(
    ws: Workspace,
    as_of: str | dt.date | dt.datetime | None = None,
    study_path: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> RetrainSummary:
    """Train a candidate; promote it if AUC(candidate) >= AUC(production) - margin on the
    candidate's validation + test rows (or if there is no production model). One log line on
    ``atrx.retrain`` per decision."""
    margin: float | None = None
    trained: _Trained | None = None
    summary: RetrainSummary
    try:
        study = load_study(study_path)
        margin = study.promotion.margin
        current = registry.production(ws)
        trained = _train(ws, as_of, study, study_path, progress)
        result, data, sp = trained.result, trained.data, trained.split
        candidate = trained.summary.tag
        rows = np.concatenate([sp.validation, sp.test])
        evaluation = data.frame.iloc[rows].reset_index(drop=True)
        y = evaluation[LABEL].to_numpy()
        if current is None:
            cand_auc = float(roc_auc_score(y, result.fusion.predict_proba(evaluation)[:, 1]))
            registry.promote(ws, candidate, reason="no production model")
            summary = RetrainSummary("promoted", EXIT_OK, margin, candidate, cand_auc, None, None,
                                     len(y), train=trained.summary)
            retrain_log.info(
                "promoted %s: no production model (candidate AUC %.4f, production AUC n/a, "
                "margin %.3f, %d evaluation rows)", candidate, cand_auc, margin, len(y))
        else:
            old = registry.load_model(ws, current.tag)
            prod_frame = _production_frame(ws, old, evaluation)
            usable = ~prod_frame[old.required_features].isna().any(axis=1).to_numpy()
            if usable.sum() < len(usable):
                log.warning("%d evaluation row(s) lack features of production model %s; both "
                            "models are compared on the other %d", int((~usable).sum()),
                            current.tag, int(usable.sum()))
            y_eval = y[usable]
            if np.unique(y_eval).size < 2:
                raise TrainingDataError("the evaluation rows hold one ATRX class only; no AUC")
            cand_auc = float(roc_auc_score(
                y_eval, result.fusion.predict_proba(evaluation[usable])[:, 1]))
            prod_auc = float(roc_auc_score(
                y_eval, old.predict_proba(prod_frame[usable])[:, 1]))
            if cand_auc >= prod_auc - margin:
                registry.promote(ws, candidate,
                                 reason=f"AUC {cand_auc:.4f} >= {prod_auc:.4f} - {margin}")
                summary = RetrainSummary("promoted", EXIT_OK, margin, candidate, cand_auc,
                                         current.tag, prod_auc, int(usable.sum()),
                                         train=trained.summary)
                retrain_log.info(
                    "promoted %s over %s: candidate AUC %.4f >= production AUC %.4f - margin "
                    "%.3f (%d evaluation rows)", candidate, current.tag, cand_auc, prod_auc,
                    margin, int(usable.sum()))
            else:
                summary = RetrainSummary("kept", EXIT_KEPT, margin, candidate, cand_auc,
                                         current.tag, prod_auc, int(usable.sum()),
                                         train=trained.summary)
                retrain_log.info(
                    "kept production %s: candidate %s AUC %.4f < production AUC %.4f - margin "
                    "%.3f (%d evaluation rows)", current.tag, candidate, cand_auc, prod_auc,
                    margin, int(usable.sum()))
    except (ConfigError, TrainingDataError) as exc:
        summary = RetrainSummary("bad_input", EXIT_BAD_INPUT, margin,
                                 train=trained.summary if trained else None, error=str(exc))
        retrain_log.error("retrain stopped, bad input: %s", str(exc).replace("\n", " "))
    except Exception as exc:  # the exit code must say "failed", not crash the scheduler
        summary = RetrainSummary("failed", EXIT_FAILURE, margin,
                                 train=trained.summary if trained else None,
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
            cat.finish_run(run_id, "ok" if summary.exit_code in (EXIT_OK, EXIT_KEPT) else
                           summary.decision, {
                               "decision": summary.decision, "exit_code": summary.exit_code,
                               "candidate": summary.candidate_tag,
                               "candidate_auc": summary.candidate_auc,
                               "production_before": summary.production_tag,
                               "production_auc": summary.production_auc,
                               "margin": summary.margin,
                               "evaluation_rows": summary.n_evaluation_rows,
                               "train_run": summary.train.run_id if summary.train else None,
                               "error": summary.error,
                           })
            summary.run_id = run_id
    except Exception:  # recording must not change the decision's exit code
        log.exception("could not record the retrain decision in the catalog")
