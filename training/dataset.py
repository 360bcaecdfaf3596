"""The training matrix: labels known at a date, their point-in-time features, the study's split.

Features come only through Feast (:func:`feature_repo.store.historical_features`): each labelled
patient is an entity row stamped with its pathology date, so a feature row is joined only if its
scan happened on or before that date, and only the labels known at ``as_of`` take part. Rows that
lack any feature the study needs are dropped and counted per reason, never silently. Labels have
one source, the Feast ``labels`` view the features stage registers; a patient's center is the
center of its pseudonym (:class:`atrx.pseudonym.Pseudonym`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from atrx.errors import DataError
from atrx.pseudonym import Pseudonym
from atrx.workspace import Workspace
from training.baseline import firstorder_columns
from training.fusion import encode_clinical
from training.study import StudyConfig

__all__ = [
    "LABEL",
    "Split",
    "TrainingDataError",
    "TrainingFrame",
    "center_of",
    "entity_frame",
    "frame_hash",
    "resolve_as_of",
    "split",
    "training_frame",
]

log = logging.getLogger(__name__)

LABEL = "atrx_mutant"
LABELS_VIEW = "labels"
LABEL_SOURCE = f"feast:{LABELS_VIEW}"
CLINICAL_VIEW = "clinical"
KEY_COLUMNS = ("patient_id", "center", "event_timestamp")


class TrainingDataError(DataError):
    """No usable training data (no labels, views not registered, too few rows): bad input."""


def resolve_as_of(as_of: str | dt.date | dt.datetime | pd.Timestamp | None) -> pd.Timestamp:
    """``as_of`` as a UTC timestamp; ``None`` is now. Naive values are taken as UTC."""
    ts = pd.Timestamp.now(tz="UTC") if as_of is None else pd.Timestamp(as_of)
    if pd.isna(ts):
        raise TrainingDataError(f"as_of {as_of!r} is not a date", fix="give a date as YYYY-MM-DD")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def center_of(patient_id: str) -> str:
    """The center of a patient pseudonym (``"A-3f2a9c1b0d4e"`` -> ``"A"``); a malformed id is an
    error, never a wrong center."""
    return Pseudonym.parse(patient_id).center


def _all_labels(ws: Workspace) -> pd.DataFrame:
    """Every label (patient_id, event_timestamp = pathology date, atrx_mutant) of the registered
    Feast ``labels`` view: the one source of labels, the same rows the features are joined to."""
    from feature_repo.offline import read_offline
    from feature_repo.store import registered_versions

    version = registered_versions(ws).get(LABELS_VIEW)
    if not version:
        raise TrainingDataError(
            f"no labels in {ws.home}: the Feast {LABELS_VIEW!r} view is not registered",
            fix="run `atrx features` first (it exports the labels and registers the views)",
        )
    rows = read_offline(ws, LABELS_VIEW, version)
    rows = rows.sort_values(["patient_id", "created_timestamp", "event_timestamp"])
    rows = rows.drop_duplicates("patient_id", keep="last")
    rows = rows.reset_index(drop=True)
    return pd.DataFrame(
        {
            "patient_id": rows["patient_id"].astype(str),
            "event_timestamp": pd.to_datetime(rows["event_timestamp"], utc=True),
            LABEL: rows[LABEL].astype("int64"),
        }
    )


def entity_frame(
    ws: Workspace, as_of: str | dt.date | dt.datetime | pd.Timestamp | None = None
) -> pd.DataFrame:
    """Entity rows (patient_id, event_timestamp = pathology date) of the labels known at ``as_of``.

    A label counts as known once its pathology date is on or before ``as_of`` (default: now).
    """
    labels = _all_labels(ws)
    cut = resolve_as_of(as_of)
    known = labels[labels["event_timestamp"] <= cut]
    return known[["patient_id", "event_timestamp"]].sort_values("patient_id").reset_index(drop=True)


@dataclass
class TrainingFrame:
    """The modelling matrix and the account of how it was made."""

    frame: pd.DataFrame
    as_of: pd.Timestamp
    views: list[str]
    feature_versions: dict[str, str]
    label_source: str
    n_labels: int
    n_after_as_of: int
    dropped: pd.DataFrame = field(repr=False)  # patient_id, reason
    imaging_columns: dict[str, list[str]] = field(repr=False, default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(len(self.frame))

    def dropped_counts(self) -> dict[str, int]:
        """Patients dropped per reason (a patient can have several reasons)."""
        return dict(Counter(self.dropped["reason"]))

    def summary(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "label_source": self.label_source,
            "labels_total": self.n_labels,
            "labels_after_as_of": self.n_after_as_of,
            "entity_rows": self.n_labels - self.n_after_as_of,
            "rows": self.n_rows,
            "patients_dropped": int(self.dropped["patient_id"].nunique()),
            "dropped_by_reason": self.dropped_counts(),
            "views": self.views,
            "feature_versions": self.feature_versions,
        }


def training_frame(
    ws: Workspace,
    as_of: str | dt.date | dt.datetime | pd.Timestamp | None,
    study: StudyConfig,
) -> TrainingFrame:
    """Point-in-time features of the study's views for every label known at ``as_of``.

    Columns: ``patient_id``, ``center``, ``event_timestamp``, ``atrx_mutant`` (0/1), the clinical
    variables (``sex`` 0 = female / 1 = male), then every imaging feature of the views the study's
    imaging models use, and the first-order features of the baseline's other views (float64). Rows with any missing value are dropped and reported in
    ``dropped`` with the reason (no features of a view at the pathology date, clinical value
    missing, label missing).
    """
    from feature_repo.store import historical_features, registered_versions

    cut = resolve_as_of(as_of)
    labels, source = _all_labels(ws), LABEL_SOURCE  # one source of labels
    entities = (
        labels[labels["event_timestamp"] <= cut][["patient_id", "event_timestamp"]]
        .sort_values("patient_id")
        .reset_index(drop=True)
    )
    n_after = int(len(labels) - len(entities))
    if labels.empty:
        raise TrainingDataError(f"no labels in {source} of {ws.home}; ingest and export them first")
    if entities.empty:
        raise TrainingDataError(
            f"no labels with a pathology date on or before {cut.date()} ({len(labels)} label(s) in "
            f"{source}, all later); choose a later as_of"
        )
    versions = registered_versions(ws)
    imaging_views = study.imaging_views()
    required = [*imaging_views, CLINICAL_VIEW, LABELS_VIEW]
    missing_views = [v for v in required if v not in versions]
    if missing_views:
        raise TrainingDataError(
            f"feature views {missing_views} are not registered with Feast in {ws.home} "
            f"(registered: {sorted(versions)}); run the features stage, or drop the imaging "
            "models that need them from the study file"
        )
    baseline_only = _baseline_only_views(study, imaging_views, versions)
    views = [*imaging_views, *baseline_only, CLINICAL_VIEW, LABELS_VIEW]
    raw = historical_features(ws, entities, views=views)

    # the reference-tissue columns stored with radiomics views enter only the normalisation
    keep_reference = study.normalisation.method == "reference"
    imaging_columns = {v: [c for c in raw.columns if c.startswith(f"{v}__")
                           and (keep_reference or "__reference__" not in c)] for v in imaging_views}
    empty = [v for v, cols in imaging_columns.items() if not cols]
    if empty:
        raise TrainingDataError(f"feature views {empty} have no feature columns",
                                fix="run `atrx features` again for these views")
    # a view only the baseline reads contributes its first-order columns only, so a missing
    # texture feature there never drops a patient from the paper's models
    # (none at all: the baseline is skipped, see training.baseline.baseline_problem)
    imaging_columns |= {v: cols + [c for c in raw.columns if keep_reference
                                   and c.startswith(f"{v}__reference__")]
                        for v in baseline_only if (cols := firstorder_columns(raw.columns, [v]))}
    clinical = encode_clinical(raw, list(study.clinical_variables))
    reasons: list[tuple[str, str]] = []
    bad = np.zeros(len(raw), dtype=bool)
    pids = raw["patient_id"].astype(str).to_numpy()

    def note(mask: np.ndarray, reason: str) -> None:
        nonlocal bad
        reasons.extend((p, reason) for p in pids[mask])
        bad |= mask

    for view, cols in imaging_columns.items():
        values = raw[cols].to_numpy(dtype=np.float64)
        nan = np.isnan(values)
        note(nan.all(axis=1), f"no {view} features at the pathology date")
        note(nan.any(axis=1) & ~nan.all(axis=1), f"some {view} features missing")
        note(np.isinf(values).any(axis=1), f"non-finite {view} features")
    for name in clinical.columns:
        note(clinical[name].isna().to_numpy(), f"clinical {name} missing or unknown")
    label = pd.to_numeric(raw[LABEL], errors="coerce")
    note(label.isna().to_numpy(), "no label at the pathology date")

    keep = ~bad
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "patient_id": pids,
                    "center": [center_of(p) for p in pids],
                    "event_timestamp": pd.to_datetime(raw["event_timestamp"], utc=True),
                    LABEL: label.fillna(-1).astype(np.int64),
                }
            ),
            clinical.reset_index(drop=True),
            raw[[c for cols in imaging_columns.values() for c in cols]]
            .astype(np.float64)
            .reset_index(drop=True),
        ],
        axis=1,
    )[keep].reset_index(drop=True)
    dropped = pd.DataFrame(reasons, columns=["patient_id", "reason"])
    if len(dropped):
        counts = dict(Counter(dropped["reason"]))
        log.warning(
            "dropped %d of %d labelled patients without a complete feature row: %s",
            dropped["patient_id"].nunique(),
            len(raw),
            counts,
        )
    if frame.empty:
        raise TrainingDataError(
            f"none of the {len(raw)} labelled patients has every feature the study needs "
            f"(dropped: {dict(Counter(dropped['reason']))})"
        )
    return TrainingFrame(
        frame=frame,
        as_of=cut,
        views=views,
        feature_versions={v: versions[v] for v in views},
        label_source=source,
        n_labels=int(len(labels)),
        n_after_as_of=n_after,
        dropped=dropped,
        imaging_columns=imaging_columns,
    )


def _baseline_only_views(
    study: StudyConfig, imaging_views: list[str], versions: dict[str, str]
) -> list[str]:
    """The registered views the first-order baseline needs beyond the imaging models' views. An
    unregistered one is left out with a warning: the baseline is then skipped, not the run."""
    extra = [v for v in study.feature_views() if v not in imaging_views]
    absent = [v for v in extra if v not in versions]
    if absent:
        log.warning(
            "the first-order baseline needs feature views %s, which are not registered with "
            "Feast; it is skipped (register them with `atrx features`, or set "
            "baseline.enabled: false in the study file)", absent,
        )
    return [v for v in extra if v in versions]


@dataclass
class Split:
    """Positional row indices of the three sets, and hashes of the data they hold."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    data_hash: str
    train_hash: str
    excluded: int = 0  # rows of centers that are neither development nor test centers
    stratified_by: list[str] = field(default_factory=list)

    def sets(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def summary(self, y: np.ndarray) -> dict[str, Any]:
        return {
            name: {"n": int(idx.size), "n_pos": int(np.asarray(y)[idx].sum())}
            for name, idx in self.sets().items()
        } | {
            "excluded_other_centers": self.excluded,
            "stratified_by": self.stratified_by,
            "data_hash": self.data_hash,
            "train_hash": self.train_hash,
        }


def frame_hash(frame: pd.DataFrame) -> str:
    """sha256 of the frame's content, independent of row and column order."""
    ordered = frame.sort_values("patient_id", kind="stable") if "patient_id" in frame else frame
    h = hashlib.sha256()
    for name in sorted(ordered.columns):
        col = ordered[name]
        h.update(f"{name}\x1f{len(col)}\x1e".encode())
        if pd.api.types.is_datetime64_any_dtype(col):
            h.update(pd.to_datetime(col, utc=True).astype("int64").to_numpy().tobytes())
        elif pd.api.types.is_numeric_dtype(col):
            h.update(np.ascontiguousarray(col.to_numpy(dtype=np.float64)).tobytes())
        else:
            h.update("\x1f".join(map(str, col.tolist())).encode())
    return h.hexdigest()


def _stratified_split(
    dev: np.ndarray, frame: pd.DataFrame, columns: list[str], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Split ``dev`` rows with the finest stratification that works, dropping columns from the
    end: every stratum needs two rows, and each set at least one row per stratum."""
    cols = list(columns)
    sub = frame.iloc[dev]
    while cols:
        key = sub[cols].astype(str).agg("|".join, axis=1).to_numpy()
        if pd.Series(key).value_counts().min() >= 2:
            try:
                train, val = train_test_split(
                    dev, test_size=fraction, random_state=seed, stratify=key
                )
                return train, val, cols
            except ValueError:  # more strata than rows in one of the sets
                pass
        cols = cols[:-1]
    train, val = train_test_split(dev, test_size=fraction, random_state=seed)
    return train, val, []


def split(frame: pd.DataFrame, study: StudyConfig) -> Split:
    """Development centers -> train/validation (stratified, seeded); test centers -> test.

    The paper samples cohorts A and B into training and validation sets at 4:1 "based on gender
    and WHO grade"; strata too small to be split would make that impossible, so the last
    stratification column is dropped until the split works (recorded in ``stratified_by``).
    """
    cfg = study.split
    centers = frame["center"].astype(str)
    dev = np.flatnonzero(centers.isin(cfg.development_centers).to_numpy())
    test = np.flatnonzero(centers.isin(cfg.test_centers).to_numpy())
    excluded = int(len(frame) - dev.size - test.size)
    if dev.size < 4:
        raise TrainingDataError(
            f"only {dev.size} row(s) from the development centers {cfg.development_centers}; "
            f"centers present: {sorted(centers.unique())}",
            fix="set split.development_centers in the study file to centers that have labelled "
                "patients",
        )
    if test.size == 0:
        raise TrainingDataError(
            f"no rows from the test centers {cfg.test_centers}; centers present: "
            f"{sorted(centers.unique())}",
            fix="set split.test_centers in the study file to centers that have labelled patients",
        )
    train, validation, used = _stratified_split(
        dev, frame, list(cfg.stratify_by), cfg.validation_fraction, study.seeds.split
    )
    train, validation = np.sort(train), np.sort(validation)
    y = frame[LABEL].to_numpy()
    for name, idx in (("training", train), ("validation", validation), ("test", test)):
        if np.unique(y[idx]).size < 2:
            raise TrainingDataError(f"the {name} set has only one ATRX class ({idx.size} rows)")
    return Split(
        train=train,
        validation=validation,
        test=np.sort(test),
        data_hash=frame_hash(frame),
        train_hash=frame_hash(frame.iloc[train]),
        excluded=excluded,
        stratified_by=used,
    )
