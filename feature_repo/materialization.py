"""Our materialisation policy: every patient's newest row reaches the online store.

Feast's ``materialize_incremental`` loads the rows whose *event* time lies after the view's
previous end. Our event time is the scan date, so rows written later with an older event time
(a newly onboarded center's scans from years ago, a re-extracted scan keeping its scan date) would
never be loaded and ``/predict`` would answer 404 for those patients forever. Such *late* rows are
found by their ``created_timestamp`` (written after the previous end, event time not after it),
and a view holding any is reloaded from 1970: Feast then writes the newest row of every patient
(by event time, then created time), which is exactly what serving must see. Views without late
rows stay incremental. Reloading costs one pass over the view's offline rows (seconds for
thousands of patients, the model's few views only).

Redis: Feast's Redis store skips a write whose event time is not newer than the stored one, so a
re-extracted scan (same scan date, new values) would keep its old values online. Every write of
ours is the newest row of its patient, so the dedup check is switched off for our runs
(``skip_dedup``, also set in ``infra/feast/feature_store.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import duckdb

from feature_repo.layout import CREATED_TIMESTAMP, EVENT_TIMESTAMP, JOIN_KEY

__all__ = ["MATERIALIZE_FROM", "Materialized", "late_rows", "materialize_views"]

#: start of a full window: older than any scan
MATERIALIZE_FROM: Final[datetime] = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Materialized:
    """What one run loaded: the views, and why each reloaded view was loaded from 1970."""

    views: list[str]
    reloaded: dict[str, str]

    @property
    def incremental(self) -> list[str]:
        return [v for v in self.views if v not in self.reloaded]


def late_rows(source_path: str, since: datetime) -> tuple[int, int] | None:
    """(rows, patients) written after ``since`` with an event time not after it; None if unknown.

    ``source_path`` is the view's Parquet glob. Only three columns are read. A source DuckDB
    cannot read here (no files, a remote store without credentials) gives None: the caller
    reloads, which is always correct.
    """
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    query = (
        f"SELECT count(*), count(DISTINCT {JOIN_KEY}) FROM read_parquet(?, union_by_name=true) "
        f"WHERE {CREATED_TIMESTAMP} > ? AND {EVENT_TIMESTAMP} <= ?"
    )
    try:
        with duckdb.connect() as con:
            con.execute("SET TimeZone = 'UTC'")
            rows, patients = con.execute(query, [source_path, since, since]).fetchone()
    except duckdb.Error:
        return None
    return int(rows), int(patients)


def materialize_views(store: Any, views: list[str], end: datetime, full: bool,
                      online: dict[str, Any] | None = None) -> Materialized:
    """Load ``views`` of ``store`` (SQLite here, Redis from a production yaml) up to ``end``.

    From 1970: every view with ``full``, never materialized, or holding late rows
    (:func:`late_rows`); the others incrementally. Feast's own first window for a TTL-less view
    is only 52 weeks and would drop older scans, hence the explicit start.
    """
    if online is None:
        online = {fv.name: fv for fv in store.list_feature_views(allow_cache=False) if fv.online}
    reloaded: dict[str, str] = {}
    for view in views:
        fv = online[view]
        since = fv.most_recent_end_time
        if full:
            reloaded[view] = "full reload asked for"
        elif since is None:
            reloaded[view] = "first run"
        else:
            late = late_rows(str(fv.batch_source.path), since)
            if late is None:
                reloaded[view] = "cannot read the offline rows to find late ones"
            elif late[0]:
                reloaded[view] = (f"{late[0]} row(s) of {late[1]} patient(s) written after the "
                                  "last run with older scan dates")
    _newest_rows_replace(store)
    result = Materialized(list(views), reloaded)
    if reloaded:
        store.materialize(start_date=MATERIALIZE_FROM, end_date=end,
                          feature_views=list(reloaded))
    if result.incremental:
        store.materialize_incremental(end_date=end, feature_views=result.incremental)
    return result


def _newest_rows_replace(store: Any) -> None:
    """Let our writes replace stored rows of the same event time (Redis' dedup check skips them)."""
    cfg = store.config.online_store
    if hasattr(cfg, "skip_dedup") and not cfg.skip_dedup:
        cfg.skip_dedup = True
