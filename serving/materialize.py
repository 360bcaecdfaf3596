"""``atrx materialize``: load the online store with exactly what the production model reads.

Only the views holding the production model's required features are materialized (``labels``
never; imaging views the model does not use neither): materializing a full-width view costs
minutes and the service would never read it. The run refuses when a needed view is registered
with another feature version than the model was trained on: the service would refuse to start
on that store anyway, and the fix (retrain, or re-apply the model's versions) comes first.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atrx.workspace import Workspace
from serving.errors import ServingSetupError
from serving.model import feature_views_of, needed_versions, production_record
from serving.online import FEAST_CONFIG_ENV, open_feature_store, require_versions, store_versions


@dataclass
class MaterializeSummary:
    """What one run loaded; ``rows()`` feeds the CLI's key/value table."""

    model_tag: str
    views: list[str]
    feature_versions: dict[str, str]
    required_features: list[str]
    online_store: str
    end: datetime
    full: bool
    seconds: float
    exit_code: int = 0
    skipped_views: list[str] = field(default_factory=list)
    reloaded: dict[str, str] = field(default_factory=dict)  # view -> why it was loaded from 1970

    def rows(self) -> list[tuple[str, str]]:
        out = [
            ("production model", self.model_tag),
            ("mode", "full reload from 1970" if self.full else "incremental" if not self.reloaded
             else f"incremental; {len(self.reloaded)} view(s) from 1970"),
            ("up to", self.end.isoformat(timespec="seconds")),
            ("online store", self.online_store),
            ("views materialized", ", ".join(self.views)),
        ]
        out += [(f"feature version {v}", self.feature_versions[v]) for v in self.views]
        if not self.full:
            out += [(f"reloaded {v}", why) for v, why in self.reloaded.items()]
        out.append(("features served", str(len(self.required_features))))
        if self.skipped_views:
            out.append(("registered views not needed", ", ".join(self.skipped_views)))
        out.append(("seconds", f"{self.seconds:.1f}"))
        return out


def run_materialize(
    ws: Workspace, full: bool = False, end_date: datetime | None = None
) -> MaterializeSummary:
    """Materialize the production model's views into the online store (SQLite by default).

    Incremental from each view's previous run, except views holding rows written since with older
    scan dates (a newly onboarded center, a re-extracted scan), which reload from 1970
    (:mod:`feature_repo.materialization`); ``full=True`` reloads every view. Raises :class:`serving.errors.ServingSetupError` (a ``ValueError``,
    exit code 2) when there is no production model ("run `atrx train` / `atrx retrain` first")
    or a needed view is unregistered or registered with another feature version.
    With ``$ATRX_FEAST_CONFIG`` set (a production ``feature_store.yaml``, e.g. Redis), that
    store is loaded instead of the workspace's SQLite.
    """
    from feature_repo.materialization import materialize_views
    from feature_repo.store import materialize, registered_versions

    t0 = time.perf_counter()
    record = production_record(ws, "production")
    required = list(record.metadata.get("required_features") or [])
    if not required:
        raise ServingSetupError(
            f"{record.tag} has no required_features in its registry metadata; re-register it "
            "with `atrx train`"
        )
    versions = needed_versions(record.metadata, required)
    views = list(feature_views_of(required))
    end = end_date or datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    if os.environ.get(FEAST_CONFIG_ENV):
        store = open_feature_store(ws)
        registered = store_versions(store)
        require_versions(str(record.tag), versions, registered, action="materialize for")
        done = materialize_views(store, views, end, full)
        online = _describe_online(store)
    else:
        registered = registered_versions(ws)
        require_versions(str(record.tag), versions, registered, action="materialize for")
        done = materialize(ws, end_date=end, views=views, full=full)
        online = ws.online
    return MaterializeSummary(
        model_tag=str(record.tag),
        views=list(done.views),
        feature_versions=versions,
        required_features=required,
        online_store=online,
        end=end,
        full=full,
        seconds=time.perf_counter() - t0,
        skipped_views=[v for v in registered if v not in views],
        reloaded=done.reloaded,
    )


def _describe_online(store: Any) -> str:
    cfg = store.config.online_store
    where = getattr(cfg, "path", None) or getattr(cfg, "connection_string", "")
    if "password=" in str(where):  # never print a secret from the config
        where = str(where).split(",", 1)[0]
    return f"{getattr(cfg, 'type', 'online')}: {where}"
