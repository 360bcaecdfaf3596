"""Typed request and response bodies of the prediction service.

Requests subclass :class:`PayloadModel`, a BentoML ``IODescriptor`` that turns a pydantic
validation failure into HTTP 422 naming the offending fields. BentoML 1.4's own handler answers a
``ValidationError`` with 400, and the task wants malformed payloads to be 422 like every other
"valid JSON, unusable content" answer. Submitted values are never echoed in errors, nor keys that
are not plain names (:func:`describe_validation_error`): a rejected request may carry clinical
values or a real patient name where a pseudonym belongs, and errors are logged. Patient ids must
have the pseudonym shape (:data:`atrx.pseudonym.PATIENT_PATTERN`); only JSON bodies are read.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any, Literal

from bentoml import IODescriptor
from bentoml.exceptions import BentoMLException, UnprocessableEntity
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from atrx.errors import InputError
from atrx.pseudonym import PATIENT_PATTERN

if TYPE_CHECKING:
    from starlette.requests import Request

#: a patient pseudonym such as ``A-3f2a9c1b0d4e`` (CENTER-12 hex; also keeps log lines clean)
PATIENT_ID_PATTERN = PATIENT_PATTERN
#: a name an error may repeat: a field or canonical feature name, never free text
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
#: most patients one ``/predict_batch`` call may name
MAX_BATCH = 1000

PatientId = Annotated[str, StringConstraints(pattern=PATIENT_ID_PATTERN, max_length=45)]
FeatureName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=128)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class InvalidPayload(UnprocessableEntity, InputError):
    """HTTP 422: the body is not JSON or does not match the request model; names the fields."""


class UnsupportedMediaType(BentoMLException, InputError):
    """HTTP 415: the body is not sent as ``application/json``."""

    error_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


def _shown(part: object) -> str:
    """One step of an error's location: an index, a plain name, or ``<key>`` for anything else."""
    if isinstance(part, int):
        return f"[{part}]"
    text = str(part)
    return text if _NAME.match(text) or text == "[key]" else "<key>"


def describe_validation_error(exc: ValidationError) -> str:
    """``field: problem`` for each error, without the submitted values or odd keys."""
    parts = []
    for err in exc.errors(include_input=False, include_context=False, include_url=False):
        where, msg = list(err.get("loc", ())), err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":  # the key itself was submitted: not named
            where, msg = where[:-1], "an unexpected key (not a field of this body)"
        loc = ".".join(_shown(p) for p in where).replace(".[", "[") or "body"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


class PayloadModel(IODescriptor):
    """Base of every request body: strict fields, JSON only, 422 on bad input, inputs never echoed."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> IODescriptor:
        media = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if media.lower() not in ("application/json", ""):
            raise UnsupportedMediaType(
                f"{cls.__name__} bodies are JSON: send Content-Type: application/json"
            )
        try:
            return await super().from_http_request(request, serde)
        except ValidationError as exc:
            raise InvalidPayload(
                f"invalid {cls.__name__} body: {describe_validation_error(exc)}"
            ) from None
        except BentoMLException:
            raise
        except Exception:  # whatever else a parser raises on junk is the caller's 422, no echo
            raise InvalidPayload(f"invalid {cls.__name__} body: not a JSON object") from None


class ModelRequest(PayloadModel):
    """``POST /model``: no fields; an empty body is ``{}``."""

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> IODescriptor:
        if not (await request.body()).strip():
            return cls()
        return await super().from_http_request(request, serde)


class PredictRequest(PayloadModel):
    """``POST /predict``: one patient, features looked up in the online store."""

    patient_id: PatientId


class BatchPredictRequest(PayloadModel):
    """``POST /predict_batch``: several patients, ONE online lookup for all of them."""

    patient_ids: list[PatientId] = Field(min_length=1, max_length=MAX_BATCH)


class ClinicalValues(BaseModel):
    """The fusion model's clinical variables, as the ``clinical`` feature view stores them."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    age: FiniteFloat = Field(ge=0, le=120, description="years at the first scan")
    sex: Literal["male", "female"]
    who_grade: int = Field(ge=1, le=4, description="CNS WHO grade")
    vasari_score: FiniteFloat


class FeaturesRequest(PayloadModel):
    """``POST /predict_features``: explicit values, no lookup (e.g. a patient not yet ingested).

    ``imaging`` maps each imaging feature the model needs (its canonical name, see
    ``POST /model``) to its value; a missing or unknown name is a 422 naming it.
    """

    patient_id: PatientId | None = None
    clinical: ClinicalValues
    imaging: dict[FeatureName, FiniteFloat]


class Prediction(BaseModel):
    """One patient's fused prediction and how it was made."""

    patient_id: str | None
    probability: float = Field(description="P(ATRX mutant) of the fusion model")
    risk_group: Literal["high", "low"]
    cutoff: float = Field(description="probability at or above which the risk group is high")
    imaging_score: float = Field(description="linear predictor of the imaging model")
    contributions: dict[str, float] = Field(description="nomogram points per variable")
    total_points: float
    model_version: str = Field(description="BentoML tag of the model that answered")
    feature_timestamps: dict[str, datetime] = Field(
        default_factory=dict,
        description="feature view -> event time of the online row used (empty for "
        "/predict_features)",
    )


class BatchPrediction(BaseModel):
    """``/predict_batch`` answer: one prediction per requested id, in request order."""

    model_version: str
    predictions: list[Prediction]


class ModelDescription(BaseModel):
    """``POST /model``: what the service serves and which features it needs."""

    model_version: str
    required_features: list[str]
    imaging_features: list[str]
    clinical_features: list[str]
    feature_versions: dict[str, str]
    cutoff: float


def finite(value: float) -> float:
    """``value`` as float, refusing NaN/inf (a response must never carry them)."""
    x = float(value)
    if not math.isfinite(x):
        raise ValueError("non-finite value in a prediction")
    return x
