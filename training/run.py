"""A training run: ``run_train`` (one study run -> report + registered candidate).

The run reads the labels known at ``as_of`` and their point-in-time features through Feast, runs
the study protocol and its transfer diagnostics (:mod:`training.diagnostics`), and hands the
facts to :mod:`training.artifacts` (one record, projected into the model metadata,
``metrics.json``, ``report.html``, ``tables.md`` and the summary) and to the registry
(:mod:`atrx.registry`). It writes ``<home>/runs/<run_id>/`` and records itself in the catalog's
``runs`` table (stage ``train``). The catalog is opened only to start and to finish a
run, so a long training never holds DuckDB's write lock.

``run_train`` raises ``ConfigError`` / ``TrainingDataError`` (exit code 2, bad input) and returns
a summary with exit code 0. The retrain decision is :mod:`training.promotion`.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from atrx import registry
from atrx.catalog import Catalog
from atrx.errors import AtrxError, ExitCode
from atrx.versions import TRAINING_LIBRARIES, library_versions
from atrx.workspace import Workspace
from training import harmonisation_run
from training.artifacts import (
    TrainingRun,
    TrainSummary,
    write_figures,
    write_metrics,
    write_report,
    write_tables,
)
from training.dataset import resolve_as_of, split, training_frame
from training.diagnostics import diagnose
from training.protocol import ProgressFn, run_protocol
from training.reference_norm import ReferenceNormalisedModel, normalise_for_study
from training.stability_filter import StabilityRunner, apply_stability
from training.study import StudyConfig, load_study

__all__ = ["Trained", "is_bad_input", "run_train", "train"]


def is_bad_input(exc: BaseException) -> bool:
    """True for the errors that mean "fix the input" (study file, data, views): exit code 2."""
    return isinstance(exc, AtrxError) and exc.exit_code == ExitCode.BAD_INPUT


@dataclass
class Trained:
    """A finished run: what the CLI shows and the record the retrain decision reads."""

    summary: TrainSummary
    run: TrainingRun


def train(
    ws: Workspace,
    as_of: str | dt.date | dt.datetime | None,
    study: StudyConfig,
    study_path: str | Path | None,
    progress: ProgressFn | None = None,
    stability_runner: StabilityRunner | None = None,
) -> Trained:
    """One training run of a loaded study (``run_train`` and ``run_retrain`` share it).

    ``stability_runner`` measures a missing feature-stability table (the CLI passes one)."""
    from feature_repo.store import registered_versions

    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    cut = resolve_as_of(as_of)
    ws.ensure()
    versions = registered_versions(ws)
    libraries = library_versions(TRAINING_LIBRARIES, python=True)
    with Catalog(ws.catalog) as cat:
        run_id = cat.start_run("train", None, study.study_hash(), None,
                               {**{f"feature_version_{view}": version
                                   for view, version in versions.items()},
                                **libraries})
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
        data.frame, stability = apply_stability(
            data.frame, ws, data.feature_versions, study.stability.min_icc,
            study.split.development_centers, study.stability.patients, study.stability.seed,
            stability_runner)
        if stability is not None:
            say(f"stability filter (ICC >= {stability.min_icc}): {stability.kept} radiomics "
                f"features kept, {len(stability.dropped)} dropped")
        normalised, normalisation = normalise_for_study(data.frame, study.normalisation.method)
        prepared = harmonisation_run.prepare(normalised, sp, study)
        if prepared.harmoniser is not None:
            say(f"ComBat harmonisation of {len(prepared.harmoniser.features)} imaging features "
                f"fitted on the training rows ({prepared.seconds:.0f} s)")
        result = run_protocol(prepared.frame, sp, study, progress=say)
        timings["protocol"] = time.perf_counter() - t
        # transfer diagnostics (its own time is in metrics.json's diagnostics.seconds)
        diagnostics = diagnose(prepared.frame, sp, result, study, progress=say)
        harmonisation_run.finish(prepared, result, normalised, sp, study)
        if study.normalisation.method == "reference":  # serving feeds raw features with references
            result.fusion = ReferenceNormalisedModel.wrap(result.fusion)
        say(f"protocol done ({timings['protocol']:.0f} s, diagnostics {diagnostics.seconds:.0f} s);"
            " writing figures, report and model")

        run = TrainingRun(run_id, study, study_path, data, sp, result, Path(ws.runs) / run_id,
                          libraries, timings, diagnostics=diagnostics,
                          levers={"normalisation": normalisation,
                                  "harmonisation": prepared.to_json(),
                                  "stability": None if stability is None else stability.to_json()})
        t = time.perf_counter()
        run.run_dir.mkdir(parents=True, exist_ok=True)
        figures = write_figures(result, run.run_dir, diagnostics)
        timings["figures"] = time.perf_counter() - t
        t = time.perf_counter()
        run.tag = registry.save_candidate(ws, result.fusion, run.model_metadata(),
                                          labels={"run_id": run_id, "study": study.name})
        timings["register"] = time.perf_counter() - t
        t = time.perf_counter()
        write_metrics(run)
        write_report(run, figures)
        timings["report"] = time.perf_counter() - t
        summary = run.summary(seconds=time.perf_counter() - t0)
        write_tables(run.run_dir, summary)
        status, counts = "ok", run.catalog_counts()
        return Trained(summary, run)
    except BaseException as exc:
        bad_input = is_bad_input(exc)
        status = "bad_input" if bad_input else "failed"
        counts = {"error": str(exc) if bad_input else f"{type(exc).__name__}: {exc}"}
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
    stability_runner: StabilityRunner | None = None,
) -> TrainSummary:
    """Train the study on the labels known at ``as_of``; write the run; register a candidate.

    ``progress(message)`` is called at each step (the CLI prints it: a run takes minutes)."""
    study = load_study(study_path)
    return train(ws, as_of, study, study_path, progress, stability_runner).summary
