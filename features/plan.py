"""Which (study version, feature view) pairs a run computes.

The latest version of every study (the catalog records a version only once its image group is
complete), crossed with the run's views, less the pairs that have a settled lineage row (``ok`` or
``failed``) for the view's current feature version. ``failed`` means the ROI itself cannot give
features (empty edema, too few voxels): the same data and recipe would fail again, so it is not
retried; a new study version or feature version gets a fresh try. ``error`` rows (the store or a
worker broke) do not settle anything and are retried.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from atrx.catalog import Catalog, StudyVersion
from atrx.names import all_views, view_name

__all__ = ["Target", "TargetKey", "latest_studies", "pending_targets"]

log = logging.getLogger(__name__)

#: (patient, study, scan version, view): one row of a view, whatever task computed it
TargetKey = tuple[str, str, int, str]


@dataclass(frozen=True)
class Target:
    """One (study version, feature view) to compute."""

    patient_id: str
    study_id: str
    scan_version: int
    zarr_path: str
    scan_date: dt.date
    kind: str
    roi: str
    sequence: str

    @property
    def view(self) -> str:
        return view_name(self.kind, self.roi, self.sequence)

    @property
    def key(self) -> TargetKey:
        return (self.patient_id, self.study_id, self.scan_version, self.view)


def latest_studies(cat: Catalog) -> list[StudyVersion]:
    """The latest version of every study that has a scan date (features are dated by it)."""
    studies = cat.latest_study_versions()
    undated = [s for s in studies if s.scan_date is None]
    if undated:
        log.warning("%d study versions have no scan date and get no features (e.g. %s/%s)",
                    len(undated), undated[0].patient_id, undated[0].study_id)
    return [s for s in studies if s.scan_date is not None]


def pending_targets(studies: Iterable[StudyVersion],
                    settled: Iterable[tuple[str, str, int, str, str]],
                    view_versions: Mapping[str, str]) -> list[Target]:
    """Every (study version, view of ``view_versions``) without a settled row at the view's version.

    ``settled`` is :meth:`atrx.catalog.Catalog.settled_lineage`; targets come study by study, each in
    the canonical view order.
    """
    done = {(pid, sid, version, view) for pid, sid, version, view, feature_version in settled
            if view_versions.get(view) == feature_version}
    targets = []
    for s in studies:
        assert s.scan_date is not None  # latest_studies keeps dated studies only
        for kind, roi, seq in all_views():
            view = view_name(kind, roi, seq)
            if view in view_versions and (s.patient_id, s.study_id, s.version, view) not in done:
                targets.append(Target(s.patient_id, s.study_id, s.version, s.zarr_path, s.scan_date,
                                      kind, roi, seq))
    return targets
