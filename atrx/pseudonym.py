"""Pseudonyms as a type: ``{center}-{12 hex}`` for patients, ``s{10 hex}`` for studies.

Ingest makes them (keyed hashes, ``ingest.deid``); every later stage reads their parts through
:class:`Pseudonym` instead of splitting strings, so a malformed id fails at the boundary with a
message instead of becoming a wrong center.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from atrx.errors import InputError

__all__ = ["PATIENT_PATTERN", "PATIENT_RE", "STUDY_RE", "Pseudonym", "is_patient_pseudonym"]

#: center: letters, digits and underscore (the center file's rule); hash: 12 lower-case hex digits
PATIENT_RE: Final[re.Pattern[str]] = re.compile(r"^(?P<center>[A-Za-z0-9_]+)-(?P<digest>[0-9a-f]{12})$")
#: the same shape as one plain pattern for boundaries that validate text (the service's request
#: schemas, JSON Schema): the center also follows the center file's rule (a letter or digit
#: first, at most 32 characters), so every match is a :data:`PATIENT_RE` match
PATIENT_PATTERN: Final[str] = r"^[A-Za-z0-9][A-Za-z0-9_]{0,31}-[0-9a-f]{12}$"
STUDY_RE: Final[re.Pattern[str]] = re.compile(r"^s[0-9a-f]{10}$")


@dataclass(frozen=True, order=True)
class Pseudonym:
    """A patient pseudonym's parts: the center it came from and the keyed hash of the raw id."""

    center: str
    digest: str

    @classmethod
    def parse(cls, text: str) -> Pseudonym:
        """Split ``"A-3f2a9c1b0d4e"`` into center ``A`` and digest; anything else is an error."""
        m = PATIENT_RE.match(str(text))
        if m is None:
            raise InputError(
                "not a patient pseudonym (expected CENTER-<12 hex digits>, e.g. A-3f2a9c1b0d4e)",
                fix="use the pseudonym ingest wrote (table scans or labels of the catalog)",
            )
        return cls(m["center"], m["digest"])

    def __str__(self) -> str:
        return f"{self.center}-{self.digest}"


def is_patient_pseudonym(text: object) -> bool:
    """True when ``text`` has the shape ingest gives patient pseudonyms."""
    return isinstance(text, str) and PATIENT_RE.match(text) is not None
