"""The end of a run: export clinical values and labels, register every view with Feast.

Both are redone by the next run if this one did not finish: the export when the clinical or label
rows changed after the last run that exported them, the registration when the previous run did not
finish ``ok`` or registered other versions.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from atrx.catalog import Catalog
from atrx.workspace import Workspace
from feature_repo.offline import TABULAR_VERSION, export_clinical_and_labels
from features.context import FeaturesRun
from features.errors import FeaturesJobError

__all__ = ["export_clinical", "register_views", "versions_to_register"]

STAGE = "features"


def export_clinical(cat: Catalog, ws: Workspace, force: bool) -> bool:
    """Export clinical values and labels when ``force`` (features were written) or they changed.

    A clinical row's event timestamp is the patient's earliest scan date (the values describe the
    patient at diagnosis); patients without a scan have no features to join and are left out.
    Returns whether an export was written.
    """
    if not force and not _clinical_changed(cat):
        return False
    clinical = cat.clinical_frame()
    labels = cat.labels_frame()
    if clinical.empty and labels.empty:
        return False
    try:
        export_clinical_and_labels(ws, clinical, labels, pd.Timestamp.now(tz="UTC"))
    except Exception as e:
        raise FeaturesJobError(
            f"cannot export {len(clinical)} clinical and {len(labels)} label rows: {e}",
            fix="correct the clinical rows named above and run `atrx ingest` again, or check that "
                "the offline store is writable; the next `atrx features` retries the export",
        ) from e
    return True


def _clinical_changed(cat: Catalog) -> bool:
    """True when clinical or label rows changed after the last successful export."""
    last = cat.last_ok_run_started(STAGE, flag="clinical_exported")
    changed = cat.clinical_updated_at()
    return changed is not None and (last is None or changed > last)


def versions_to_register(cat: Catalog, view_versions: Mapping[str, str],
                         totals: Mapping[str, int]) -> dict[str, str]:
    """view -> the version Feast should serve; empty when no view has rows yet.

    Views outside this run keep the version of their latest ``ok`` lineage row; a view of this run
    is registered at its current version once it has rows (never at an older one: that would mix
    recipes). With any imaging view, clinical and labels come at their export's version.
    """
    versions = {v: ver for v, ver in cat.latest_feature_versions().items() if v not in view_versions}
    versions.update({v: ver for v, ver in view_versions.items() if totals.get(v, 0)})
    if versions:
        versions.update({"clinical": TABULAR_VERSION, "labels": TABULAR_VERSION})
    return versions


def register_views(cat: Catalog, run: FeaturesRun, versions: dict[str, str], changed: bool) -> list[str]:
    """Register ``versions`` with Feast; returns the views registered.

    Skipped (every view counts as registered) when nothing changed and the previous features run
    registered the same versions and finished ok; after a failed or interrupted run it is redone.
    ``apply`` itself skips views without files (clinical and labels before their first export).
    """
    if not versions:
        return []
    # the previous features run: only if it finished ok did Feast get what it recorded
    last = cat.last_run(STAGE, exclude=run.run_id)
    previous = last.counts.get("applied_versions") if last is not None and last.status == "ok" else None
    if not changed and previous == versions:
        return sorted(versions)
    from feature_repo.store import apply  # imports Feast: seconds, only when there is work

    # this run's views with this run's columns (a reduced parameter set has fewer than the
    # default); views outside the run take the columns of their version folder
    names = {v: run.recipe.schemas[v] for v in versions if v in run.recipe.view_versions}
    try:
        return list(apply(run.ws, versions, feature_names=names or None))
    except Exception as e:
        raise FeaturesJobError(
            f"the features are stored, but registering views {sorted(versions)} with Feast failed: "
            f"{type(e).__name__}: {e}",
            fix="the next `atrx features` retries the registration",
        ) from e
