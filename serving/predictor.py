"""The serving core, without HTTP: the served model + one online lookup -> :class:`Prediction`s.

The BentoML service (:mod:`serving.service`) is a thin shell around :class:`FusionPredictor`; the
benchmark and the tests use the same object in-process, so "the server answers what the model
says" is checked against this code path and not a re-implementation. Loading the model is
:mod:`serving.model`; the online lookup and its version checks are :mod:`serving.online`.
:meth:`FusionPredictor.load` refuses to start when a view the model reads is registered with
another feature version than the model was trained on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
from bentoml.exceptions import BentoMLException

from atrx.errors import DataError
from atrx.pseudonym import Pseudonym, is_patient_pseudonym
from atrx.workspace import Workspace
from serving.errors import CenterNotServable, FeaturesUnavailable, InvalidValues
from serving.model import ServedModel, load_served_model
from serving.online import OnlineLookup, OnlineRows, open_feature_store
from serving.schemas import ClinicalValues, ModelDescription, Prediction, finite

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["FusionPredictor"]

log = logging.getLogger("atrx.serving")

#: the model's features as a frame or as one array per column (what ``explain_columns`` takes)
Columns = pd.DataFrame | Mapping[str, np.ndarray]

_NOT_POINTS: Final[frozenset[str]] = frozenset({"total_points", "linear_predictor", "probability"})


class FusionPredictor:
    """The served model and its online store; thread-safe (one lookup at a time)."""

    def __init__(self, served: ServedModel, store: FeatureStore) -> None:
        self.served = served
        self.online = OnlineLookup(served, store)

    @classmethod
    def load(cls, ws: Workspace, tag: str | None = None) -> FusionPredictor:
        """Load the model and open the store; refuse when the registered versions differ."""
        predictor = cls(load_served_model(ws, tag), open_feature_store(ws))
        predictor.check_versions()
        return predictor

    @property
    def store(self) -> FeatureStore:
        return self.online.store

    def check_versions(self) -> None:
        """Raise :class:`serving.errors.ServingSetupError` if a needed view's registered version
        differs from the model's."""
        self.online.check_versions()

    def lookup(self, patient_ids: Sequence[str]) -> OnlineRows:
        """ONE online lookup of exactly the model's features (404/422 errors, see
        :meth:`serving.online.OnlineLookup.lookup`)."""
        return self.online.lookup(patient_ids)

    def predict_frame(
        self,
        frame: Columns,
        patient_ids: Sequence[str | None],
        timestamps: Sequence[Mapping[str, datetime]] | None = None,
    ) -> list[Prediction]:
        """Predictions for the model's features (columns = ``required_features``), as a frame or
        as one array per column."""
        model = self.served.model
        try:
            if hasattr(model, "explain_columns"):  # a plain fusion model: no pandas per request
                prob, score, columns = model.explain_columns(frame)
            else:  # a transform in front of it (harmonisation, normalisation) works on a frame
                table = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
                if getattr(model, "needs_center", False):
                    table = table.assign(center=_centers(patient_ids))
                prob, score, points = model.explain(table)  # one design matrix for all three
                columns = {c: points[c].to_numpy() for c in points.columns}
        except DataError as exc:  # the model's own refusal (e.g. a center it has no estimates of)
            raise CenterNotServable(str(exc)) from None
        groups = model.risk_group(prob)
        variables = [c for c in columns if c not in _NOT_POINTS]
        out = []
        for i, pid in enumerate(patient_ids):
            # built from values made here (finite floats, the model's own groups): not re-validated
            out.append(
                Prediction.model_construct(
                    patient_id=pid,
                    probability=finite(prob[i]),
                    risk_group=str(groups[i]),
                    cutoff=float(model.cutoff_),
                    imaging_score=finite(score[i]),
                    contributions={v: finite(columns[v][i]) for v in variables},
                    total_points=finite(columns["total_points"][i]),
                    model_version=self.served.tag,
                    feature_timestamps=dict(timestamps[i]) if timestamps else {},
                )
            )
        return out

    def predict_ids(self, patient_ids: Sequence[str]) -> list[Prediction]:
        """Look the patients up (one lookup) and predict; errors carry their HTTP status."""
        t0 = time.perf_counter()
        rows = self.lookup(patient_ids)
        out = self.predict_frame(rows.columns, rows.patient_ids, rows.timestamps)
        # pseudonymous ids only: no feature values, no clinical data, no probabilities
        log.info(
            "predicted %d patient(s) %s with %s in %.1f ms",
            len(out), _ids_for_log(rows.patient_ids), self.served.tag,
            1000 * (time.perf_counter() - t0),
        )
        return out

    def predict_values(
        self,
        clinical: ClinicalValues,
        imaging: Mapping[str, float],
        patient_id: str | None = None,
    ) -> Prediction:
        """Predict from explicit values; the imaging names must be exactly the model's."""
        wanted = self.served.imaging_features
        missing = [f for f in wanted if f not in imaging]
        unexpected = sorted(set(imaging) - set(wanted))
        if missing or unexpected:
            raise FeaturesUnavailable(
                missing={"imaging": missing} if missing else None, unexpected=unexpected
            )
        row: dict[str, Any] = {f: float(imaging[f]) for f in wanted}
        given = clinical.model_dump()
        row.update({f: given[f] for f in self.served.clinical_features})
        frame = pd.DataFrame([row], columns=self.served.required_features)
        try:
            (prediction,) = self.predict_frame(frame, [patient_id])
        except BentoMLException:
            raise
        except (ValueError, ArithmeticError):  # e.g. a value so large the score overflows
            raise InvalidValues(
                "these values give no finite prediction: check their units and range"
            ) from None
        # the id was not looked up (it may be unknown): only its center goes to the log
        center = Pseudonym.parse(patient_id).center if is_patient_pseudonym(patient_id) else "-"
        log.info("predicted explicit values (center %s) with %s", center, self.served.tag)
        return prediction

    def describe(self) -> ModelDescription:
        """What is served and what it reads."""
        return ModelDescription(
            model_version=self.served.tag,
            required_features=self.served.required_features,
            imaging_features=self.served.imaging_features,
            clinical_features=self.served.clinical_features,
            feature_versions=self.served.feature_versions,
            cutoff=float(self.served.model.cutoff_),
        )


def _centers(patient_ids: Sequence[str | None]) -> list[str]:
    """Each patient's center, from the pseudonym (harmonised models need it)."""
    out = []
    for pid in patient_ids:
        if pid is None:
            raise CenterNotServable("this model harmonises features per center: give the "
                                    "patient_id, whose pseudonym names the center")
        try:
            out.append(Pseudonym.parse(pid).center)
        except ValueError as exc:
            raise CenterNotServable(f"patient_id: {exc}") from None
    return out


def _ids_for_log(ids: Sequence[str | None], limit: int = 5) -> str:
    shown = [p if p is not None else "-" for p in ids[:limit]]
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ",".join(shown) + more
