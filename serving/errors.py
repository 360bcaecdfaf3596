"""The serving stage's errors: each is an :class:`atrx.errors.AtrxError` and, where a request
caused it, a BentoML exception carrying its HTTP status (as BentoML's own ``exceptions.py``).

:class:`ServingSetupError` stops a start-up, ``atrx materialize`` or ``atrx serve`` (exit code 2);
:class:`UnknownPatient` (404) and :class:`FeaturesUnavailable` (422) answer one request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bentoml.exceptions import NotFound, UnprocessableEntity

from atrx.errors import DataError, InputError, NotFoundError

__all__ = ["CenterNotServable", "FeaturesUnavailable", "InvalidValues", "ServingSetupError",
           "UnknownPatient"]


class ServingSetupError(InputError):
    """The service cannot serve: no production model, or features of another version online."""


class UnknownPatient(NotFound, NotFoundError):
    """HTTP 404: no online row of any view the model reads for these patient ids.

    The message names where the unknown ids were in the request, never the ids: an id the store
    does not know may be a typo of someone's real identifier, and the message is logged.
    ``patient_ids`` keeps them for in-process callers.
    """

    def __init__(self, patient_ids: Sequence[str], positions: Sequence[int] | None = None) -> None:
        self.patient_ids = list(patient_ids)
        self.positions = list(positions) if positions is not None else list(
            range(len(self.patient_ids)))
        where = ", ".join(str(i) for i in self.positions)
        s = "s" if len(self.positions) > 1 else ""
        super().__init__(
            f"unknown patient id{s} (request position{s} {where}): no features in the online "
            f"store; check the id{s} (not repeated here), or run `atrx materialize` if the "
            "patient was added after the last run"
        )


class InvalidValues(UnprocessableEntity, InputError):
    """HTTP 422: explicit values the model cannot turn into a finite prediction (out of range)."""


class FeaturesUnavailable(UnprocessableEntity, DataError):
    """HTTP 422: features the model needs are missing (null/not materialized) or stale."""

    def __init__(
        self,
        missing: Mapping[str, Sequence[str]] | None = None,
        stale: Mapping[str, tuple[str, str | None]] | None = None,
        stale_features: Sequence[str] = (),
        unexpected: Sequence[str] = (),
    ) -> None:
        self.missing = {k: list(v) for k, v in (missing or {}).items()}
        self.stale = dict(stale or {})
        self.unexpected = list(unexpected)
        parts = []
        if self.stale:
            views = "; ".join(
                f"{v}: model {want!r}, online {got or 'unregistered'!r}"
                for v, (want, got) in self.stale.items()
            )
            parts.append(
                f"stale features {list(stale_features)} (feature version differs from the "
                f"model's: {views}); promote a model trained on these versions or re-apply "
                "the model's versions and run `atrx materialize`"
            )
        for who, names in self.missing.items():
            parts.append(f"{who}: missing features {names}")
        if self.unexpected:
            parts.append(f"unexpected features {self.unexpected} (not used by the model)")
        super().__init__("; ".join(parts))


class CenterNotServable(UnprocessableEntity, DataError):
    """HTTP 422: the model harmonises per center and cannot place this patient's center (no
    estimates for it in the model, or no patient id to read the center from)."""
