"""Storing finished results: one Parquet part per view, then the lineage rows.

Parquet first: a crash between the two recomputes those rows next time, the other order would lose
them. Called at every checkpoint and at the end of a run, so a killed driver loses at most the last
few minutes of work. Only the driver writes; the offline store is written through
:mod:`feature_repo.offline`, the catalog through :meth:`atrx.catalog.Catalog.record_lineage`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from atrx.catalog import Catalog, LineageRow
from feature_repo.offline import write_offline
from features.compute import Outcome
from features.context import FeaturesRun
from features.errors import FeaturesJobError
from features.plan import Target, TargetKey

__all__ = ["Stored", "feature_frame", "store"]


@dataclass(frozen=True)
class Stored:
    """What one :func:`store` call wrote.

    ``written``: view -> rows written to its Parquet part; ``outcomes``: every target recorded in
    lineage, with its outcome, in target order; ``totals``: view -> study versions that now have
    features of the view at its current version (every view of the run).
    """

    parts: list[str]
    written: dict[str, int]
    outcomes: list[tuple[Target, Outcome]]
    totals: dict[str, int]


def store(cat: Catalog, run: FeaturesRun, targets: Sequence[Target],
          results: Mapping[TargetKey, Outcome]) -> Stored:
    """Write the finished ``targets`` (those in ``results``): Parquet parts, then lineage rows."""
    recipe = run.recipe
    extracted = pd.Timestamp.now(tz="UTC")
    by_view: dict[str, list[Target]] = {}
    for t in targets:
        if t.key in results:
            by_view.setdefault(t.view, []).append(t)
    parts: list[str] = []
    written: dict[str, int] = {}
    for view, ts in by_view.items():
        ok = [t for t in ts if results[t.key].status == "ok"]
        if not ok:
            continue
        version = recipe.view_versions[view]
        frame = feature_frame(ok, [results[t.key] for t in ok], version, recipe.schemas[view],
                              extracted)
        try:
            part = write_offline(run.ws, view, version, frame)
        except Exception as e:
            raise FeaturesJobError(
                f"cannot write {len(ok)} rows of {view} (feature version {version}, "
                f"patients {sorted({t.patient_id for t in ok})[:3]}...) to the offline store: {e}",
                fix="check that the offline store is writable and has space; the next "
                    "`atrx features` computes these rows again",
            ) from e
        parts.append(str(part))
        written[view] = len(ok)

    created = extracted.tz_convert(None).to_pydatetime()
    outcomes = [(t, results[t.key]) for t in targets if t.key in results]
    cat.record_lineage(
        LineageRow(t.patient_id, t.study_id, t.scan_version, t.view, recipe.view_versions[t.view],
                   recipe.lineage_hashes[t.kind], recipe.lineage_versions[t.kind], res.status,
                   res.reason, run.run_id, created)
        for t, res in outcomes)
    totals = {view: cat.lineage_ok_scans(view, version)
              for view, version in recipe.view_versions.items()}
    return Stored(parts, written, outcomes, totals)


def feature_frame(targets: Sequence[Target], outcomes: Sequence[Outcome], feature_version: str,
                  names: list[str], extracted: pd.Timestamp) -> pd.DataFrame:
    """The offline-store frame of one view's ok targets: key columns, then one column per feature.

    Features are stored as float32, the offline store's imaging dtype (Feast ``Float32``); the
    tasks compute in float64. The event time is the scan date (UTC).
    """
    meta = pd.DataFrame({
        "patient_id": [t.patient_id for t in targets],
        "event_timestamp": pd.to_datetime([t.scan_date for t in targets]).tz_localize("UTC"),
        "created_timestamp": [extracted] * len(targets),
        "feature_version": feature_version,
        "study_id": [t.study_id for t in targets],
        "scan_version": np.array([t.scan_version for t in targets], dtype=np.int64),
    })
    values = pd.DataFrame(np.vstack([o.row for o in outcomes]).astype(np.float32), columns=names)
    return pd.concat([meta, values], axis=1)
