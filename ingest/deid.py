"""Pseudonymisation: keyed hashes turn raw ids into stable, center-scoped pseudonyms.

The raw id never leaves the worker that read it: the store, the catalog and the logs see only
pseudonyms, and file paths are redacted before they are recorded.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path


def _mac(key: str, message: str, n: int) -> str:
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()[:n]


#: the message a key's fingerprint is the keyed hash of (change the suffix only with a migration)
FINGERPRINT_MESSAGE = "atrx-key-fingerprint-v1"


def key_fingerprint(key: str) -> str:
    """HMAC-SHA256 of a fixed message under ``key``, hex: tells keys apart without revealing them."""
    return _mac(key, FINGERPRINT_MESSAGE, 64)


def pseudonymise_patient(center: str, raw_id: str, key: str) -> str:
    """``{center}-{keyed hash}``: stable for a key, unlinkable to the raw id without it."""
    return f"{center}-{_mac(key, f'patient:{center}:{raw_id.strip()}', 12)}"


def pseudonymise_study(center: str, raw_id: str, study_ref: str, key: str) -> str:
    """A study id from a raw reference (a StudyInstanceUID, or a scan date for NIfTI exports)."""
    return "s" + _mac(key, f"study:{center}:{raw_id.strip()}:{study_ref}", 10)


def redact_path(path: str | Path, root: str | Path | None, raw_id: str, pseudo_id: str) -> str:
    """Path relative to the export root with the raw id replaced by the pseudonym, safe to record."""
    text = str(path)
    if root is not None:
        try:
            text = str(Path(path).relative_to(root))
        except ValueError:
            text = Path(path).name
    return redact_text(text, raw_id, pseudo_id)


def redact_text(text: str, raw_id: str, pseudo_id: str) -> str:
    """Replace every occurrence of ``raw_id`` (e.g. in a library's error message) by ``pseudo_id``."""
    return text.replace(raw_id, pseudo_id) if raw_id else text
