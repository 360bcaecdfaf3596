"""One training run's record and its projections: model metadata, metrics.json, report, summary.

:class:`TrainingRun` holds the facts of a run once (its id, the study, the training frame, the
split, the protocol's result, the candidate's tag, the library versions, the timings). Everything
a run writes or shows is a projection of that one record, so a fact cannot read differently in
two places: :meth:`~TrainingRun.model_metadata` (the registry entry),
:meth:`~TrainingRun.metrics` (``metrics.json``), :meth:`~TrainingRun.report_content` (``report.html``),
:meth:`~TrainingRun.summary` (the CLI and ``tables.md``) and :meth:`~TrainingRun.catalog_counts`
(the catalog's ``runs`` row). The ``write_*`` functions put them on disk.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from atrx.errors import ExitCode
from training.dataset import LABEL, Split, TrainingFrame
from training.diagnostics import Diagnostics
from training.protocol import CLINICAL, FUSION, SETS, ProtocolResult
from training.study import DEFAULT_STUDY_PATH, StudyConfig

__all__ = ["Table", "TrainSummary", "TrainingRun", "fmt3", "write_figures", "write_metrics",
           "write_report", "write_tables"]

_METRIC_COLUMNS = ["Sensitivity", "Specificity", "Accuracy", "AUC (95% CI)"]
_NOMOGRAM_LABELS = {"imaging_score": "Imaging score", "age": "Age (years)", "sex": "Sex (0 F, 1 M)",
                    "who_grade": "WHO grade", "vasari_score": "VASARI score"}
_SET_TITLES = {"train": "training", "validation": "validation", "test": "test"}


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


def fmt3(value: Any) -> str:
    """A metric with three decimals, ``-`` when it is undefined."""
    return "-" if value is None else f"{float(value):.3f}"


def _auc_ci(m: dict[str, Any]) -> str:
    if m.get("auc") is None:
        return "-"
    if m.get("auc_lo") is None or m.get("auc_hi") is None:
        return fmt3(m["auc"])
    return f"{m['auc']:.3f} ({m['auc_lo']:.3f}-{m['auc_hi']:.3f})"


def _metric_cells(m: dict[str, Any]) -> list[str]:
    return [fmt3(m.get("sensitivity")), fmt3(m.get("specificity")), fmt3(m.get("accuracy")),
            _auc_ci(m)]


@dataclass
class TrainSummary:
    """What a training run did, for the CLI: ``rows()`` and ``tables()`` (Tables 2-3)."""

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
    #: how the best imaging model was chosen, e.g. "; ranked by mean leave-one-center-out AUC: 0.71"
    ranking_note: str = ""
    exit_code: ExitCode = ExitCode.OK

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
            ("best imaging model", f"{self.best_imaging_model} (random CV AUC "
                                   f"{self.best_imaging_cv_auc:.3f}{self.ranking_note})"),
            *((f"fusion AUC ({s})", _auc_ci(fusion[s])) for s in SETS if s in fusion),
            ("candidate", self.tag),
            ("report", self.report_path),
            ("seconds", f"{self.seconds:.1f}"),
        ]


@dataclass
class TrainingRun:
    """The facts of one training run, held once; every artifact is a projection of them."""

    run_id: str
    study: StudyConfig
    study_path: str | Path | None
    data: TrainingFrame
    split: Split
    result: ProtocolResult
    run_dir: Path
    library_versions: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    tag: str = ""  # the registry's tag, once the candidate is saved
    diagnostics: Diagnostics | None = None  # feature shift and selection stability (the report)
    levers: dict[str, Any] = field(default_factory=dict)  # "normalisation", "harmonisation", "stability" (JSON-ready)

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.html"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.json"

    @cached_property
    def study_hash(self) -> str:
        return self.study.study_hash()

    @cached_property
    def data_summary(self) -> dict[str, Any]:
        return self.data.summary()

    @cached_property
    def split_summary(self) -> dict[str, Any]:
        return self.split.summary(self.data.frame[LABEL].to_numpy())

    @property
    def sets(self) -> dict[str, dict[str, int]]:
        """Set -> ``{"n", "n_pos"}``."""
        return {s: self.split_summary[s] for s in SETS}

    @property
    def best_label(self) -> str:
        return self.result.best.spec.label

    def table_metrics(self) -> dict[str, dict[str, Any]]:
        """Model label -> set -> metrics, in the order of Tables 2-3."""
        return {m: self.result.metrics[m] for m in self.result.model_order}

    def model_metadata(self) -> dict[str, Any]:
        """The registry entry: what serving must feed the model and how it was made."""
        described = self.result.fusion.describe()
        return {
            "run_id": self.run_id,
            "as_of": self.data.as_of.isoformat(),
            "study_name": self.study.name,
            "study_hash": self.study_hash,
            "data_hash": self.split.data_hash,
            "train_hash": self.split.train_hash,
            "feature_versions": self.data.feature_versions,
            "library_versions": self.library_versions,
            "required_features": described["required_features"],
            "imaging_score": described["imaging_score"],
            "fusion": described["fusion"],
            "cutoff": described["cutoff"],
            "cutoff_policy": described["cutoff_policy"],
            "best_imaging_model": self.best_label,
            "best_imaging_cv_auc": self.result.best.cv_auc,
            "normalisation": described.get("normalisation", {"method": "none"}),
            "harmonisation": described.get("harmonisation", {"method": "none"}),
            "metrics": {m: self.result.metrics[m] for m in self.result.headline()},
            "sets": self.sets,
            "report": str(self.report_path),
        }

    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: everything measured, with the timings known when it is written."""
        return {
            "run_id": self.run_id,
            "candidate_tag": self.tag,
            "as_of": self.data.as_of.isoformat(),
            "study": self.study.model_dump(mode="json"),
            "study_path": str(self.study_path or DEFAULT_STUDY_PATH),
            "study_hash": self.study_hash,
            "data": self.data_summary,
            "dropped": self.data.dropped.to_dict(orient="records"),
            "split": self.split_summary,
            "library_versions": self.library_versions,
            **self.result.to_json(),
            "diagnostics": None if self.diagnostics is None else self.diagnostics.to_json(),
            "normalisation": self.levers.get("normalisation") or {"method": "none"},
            "harmonisation": self.levers.get("harmonisation") or {"method": "none"},
            "stability": self.levers.get("stability"),
            "timings": dict(self.timings),
        }

    def report_content(self) -> dict[str, Any]:
        """What :func:`training.report.render_report` lays out (metrics, tests, curves, meta,
        the transfer sections)."""
        from training.harmonisation_run import report_line
        from training.reference_norm import normalisation_line
        from training.stability_filter import stability_line
        from training.transfer import ranked_by, ranking_record, transfer_check

        result, study = self.result, self.study
        meta = {
            "title": f"ATRX Fusion: training run {self.run_id}",
            "candidate model": self.tag,
            "as of": self.data.as_of.date().isoformat(),
            "study": f"{study.name} (sha256 {self.study_hash[:12]})",
            "training data": f"sha256 {self.split.data_hash[:12]}",
            "sets": ", ".join(f"{s}: {n['n']} ({n['n_pos']} mutant)" for s, n in self.sets.items()),
            "patients dropped (missing features)": f"{self.data_summary['patients_dropped']} "
                                                   f"{self.data.dropped_counts() or ''}",
            "best imaging model": f"{self.best_label} (mean random {study.imaging.cv_folds}-fold "
                                  f"CV AUC {result.best.cv_auc:.3f})" + ranked_by(result),
            "classifiers on its features (CV AUC)": ", ".join(
                f"{c['classifier'].upper()} " + ("n/a (too few rows of a class)" if c["cv_auc_mean"] is None
                                                 else f"{c['cv_auc_mean']:.3f}")
                for c in result.classifier_comparison),
            "fusion cutoff": f"{result.fusion.cutoff_:.3f} ({study.cutoff.policy})",
            "fusion clinical variables": _clinical_line(result),
            "intensity normalisation": normalisation_line(self.levers.get("normalisation")),
            "harmonisation": report_line(self.levers.get("harmonisation")),
            "stability filter": stability_line(self.levers.get("stability")),
            "training-set metrics": "imaging out-of-fold; fusion on out-of-fold scores; clinical in-sample",
        }
        return {
            "models": self.table_metrics(),
            "delong": result.delong + result.delong_imaging,
            "calibration": result.calibration,
            "decision_curve": result.decision_curve,
            "meta": meta,
            "transfer_check": transfer_check(result),
            "ranking": ranking_record(result),
            "diagnostics": None if self.diagnostics is None else self.diagnostics.to_json(),
        }

    def summary(self, seconds: float) -> TrainSummary:
        """The CLI's view of the run (``seconds``: wall time so far)."""
        from training.transfer import ranked_by

        return TrainSummary(
            run_id=self.run_id,
            run_dir=str(self.run_dir),
            report_path=str(self.report_path),
            metrics_path=str(self.metrics_path),
            tag=self.tag,
            as_of=self.data.as_of.isoformat(),
            study_name=self.study.name,
            study_hash=self.study_hash,
            data=self.data_summary,
            split=self.split_summary,
            best_imaging_model=self.best_label,
            best_imaging_cv_auc=self.result.best.cv_auc,
            metrics=self.table_metrics(),
            seconds=seconds,
            timings=self.timings,
            ranking_note=ranked_by(self.result),
        )

    def catalog_counts(self) -> dict[str, Any]:
        """The ``counts`` of the run's row in the catalog's ``runs`` table."""
        return {
            "rows": self.data.n_rows, "dropped": self.data.dropped_counts(),
            "sets": self.sets, "data_hash": self.split.data_hash,
            "best_imaging_model": self.best_label, "candidate": self.tag,
            "auc": {m: {s: self.result.metrics[m][s]["auc"] for s in SETS}
                    for m in (FUSION, self.best_label, CLINICAL)},
            "report": str(self.report_path),
        }


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


def write_metrics(run: TrainingRun) -> Path:
    """Write ``metrics.json`` (strict JSON: numpy values converted, NaN as null)."""
    text = json.dumps(_finite(json.loads(json.dumps(run.metrics(), default=_json_default))), indent=1)
    run.metrics_path.write_text(text, encoding="utf-8")
    return run.metrics_path


def write_report(run: TrainingRun, figures: dict[str, Path]) -> Path:
    """Write the self-contained ``report.html`` (figures embedded)."""
    from training.report import render_report

    return render_report(run.report_content(), figures, run.report_path)


def write_tables(run_dir: Path, summary: TrainSummary) -> Path:
    """Write Tables 2-3 as ``tables.md`` beside the report, for pasting into docs."""
    path = run_dir / "tables.md"
    path.write_text("\n".join(t.markdown() for t in summary.tables()), encoding="utf-8")
    return path


def write_figures(
    result: ProtocolResult, out: Path, diagnostics: Diagnostics | None = None
) -> dict[str, Path]:
    """One PNG per figure of the paper (ROC, calibration, decision and clinical impact curves,
    nomogram) in ``out``, and the feature-shift small multiples; returns report key -> file."""
    from training.evaluation import roc_curve_data
    from training.figures import (
        plot_calibration,
        plot_clinical_impact,
        plot_decision_curve,
        plot_feature_shift,
        plot_nomogram,
        plot_roc,
    )

    y, probs = result.y, result.probabilities
    headline = result.headline()
    figs: dict[str, Path] = {}

    def both_classes(s: str) -> bool:
        return min(int(np.sum(y[s] == 1)), int(np.sum(y[s] == 0))) >= 2

    for s in SETS:
        if both_classes(s):
            curves = {m: roc_curve_data(y[s], probs[s][m]) for m in headline}
            figs[f"roc_{s}"] = plot_roc(curves, out / f"roc_{s}.png",
                                        f"ROC curves, {_SET_TITLES[s]} set")
    for s in ("validation", "test"):
        title = _SET_TITLES[s]
        if both_classes(s):
            curves = {r.spec.label: roc_curve_data(y[s], probs[s][r.spec.label])
                      for r in result.imaging}
            figs[f"ROC curves of the imaging models, {title} set"] = plot_roc(
                curves, out / f"roc_imaging_{s}.png", f"Imaging models, {title} set")
        figs[f"calibration_{s}"] = plot_calibration(
            {m: result.calibration[m][s] for m in headline}, out / f"calibration_{s}.png",
            f"Calibration, {title} set")
        figs[f"decision_curve_{s}"] = plot_decision_curve(
            {m: result.decision_curve[m][s] for m in headline}, out / f"decision_curve_{s}.png",
            f"Decision curves, {title} set")
    figs["clinical_impact"] = plot_clinical_impact(
        result.clinical_impact["test"], out / "clinical_impact.png",
        title="Clinical impact curve of the fusion model, test set")
    nomo = result.fusion.nomogram_
    ticks = {k: v for k, v in {"sex": [0, 1], "who_grade": [3, 4]}.items() if k in nomo.coefs}
    figs["nomogram"] = plot_nomogram(nomo, out / "nomogram.png", labels=_NOMOGRAM_LABELS,
                                     ticks=ticks, title="Nomogram of the fusion model")
    if diagnostics is not None and diagnostics.shift.features:
        figs["feature_shift"] = plot_feature_shift(
            [f.to_json() for f in diagnostics.shift.features], out / "feature_shift.png",
            title=f"Most shifted inputs of {diagnostics.model} and the fusion")
    return figs


def _clinical_line(result: ProtocolResult) -> str:
    """The fusion LR's clinical variables and, when the study selects them, how."""
    chosen = result.clinical_selection
    kept = ", ".join(result.fusion.clinical_columns) or "none (imaging score only)"
    return kept if chosen is None or chosen.method == "none" else f"{kept}; {chosen.note}"
