"""The serving benchmark's baseline: a bare BentoML endpoint, the same fitted model, no lookup.

Loads the workspace's production model (``ATRX_HOME``/``BENTOML_HOME`` from the environment, as
the real service) and every patient's newest offline row of the features it needs into a dict
once; ``POST /predict {"patient_id"}`` answers ``predict_proba`` of that row. The same
``serving.service.SERVICE_SETTINGS`` as ``ATRXService``, so the ratio isolates what the
real service adds: the Feast online lookup, the version checks, the nomogram contributions.
"""

from __future__ import annotations

import bentoml
import pandas as pd

from atrx import registry
from atrx.workspace import Workspace
from serving.service import SERVICE_SETTINGS


@bentoml.service(name="atrx_bare_lr", **SERVICE_SETTINGS)
class BareLR:
    def __init__(self) -> None:
        from feature_repo.offline import read_offline
        from serving.model import feature_views_of, needed_versions, production_record

        ws = Workspace.at(None)
        record = production_record(ws)
        self.model = registry.load_model(ws, record.tag)
        self.features = list(self.model.required_features)
        versions = needed_versions(record.metadata, self.features)
        frame: pd.DataFrame | None = None
        for view, names in feature_views_of(self.features).items():
            rows = read_offline(ws, view, versions[view])
            rows = rows.sort_values(["event_timestamp", "created_timestamp"]).groupby("patient_id").tail(1)
            part = rows.set_index("patient_id")[list(names)]
            frame = part if frame is None else frame.join(part, how="inner")
        assert frame is not None
        self.rows = {pid: frame.loc[[pid], self.features] for pid in frame.index}

    @bentoml.api(route="/predict")
    def predict(self, patient_id: str) -> dict[str, float | str]:
        return {"patient_id": patient_id,
                "probability": float(self.model.predict_proba(self.rows[patient_id])[0, 1])}
