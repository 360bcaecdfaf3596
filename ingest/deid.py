"""Pseudonymisation: keyed hashes turn raw ids into stable, center-scoped pseudonyms, and what an
export's names and messages hold into text safe to record.

The raw id never leaves the worker that read it: the store, the catalog and the logs see only
pseudonyms and keyed tokens. Folder and file names can hold more than the id (a name, a birth
date, an MRN), so a :class:`Redactor` records every name it does not know to be safe as a keyed
token (``#1a2b3c4d.nii.gz``), never as the name with the id cut out. Only the dry run
(``atrx center validate``) shows raw names; it stays on the engineer's machine.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path, PurePath


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


def token_key(center: str, key: str) -> str:
    """The key path tokens are made with, derived from the center's key: a worker that holds it can
    make tokens, not pseudonyms, and a token tells nothing of the center key."""
    return _mac(key, f"path-tokens:{center}", 64)


#: what marks the export root in recorded text, and any other absolute path
SOURCE_MARK, PATH_MARK = "{source}", "{path}"
#: the file types a token keeps (``#1a2b3c4d.nii.gz``), longest first; matched case-insensitively
TOKEN_SUFFIXES = (".seg.nrrd", ".nii.gz", ".tar.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom",
                  ".ima", ".img", ".hdr", ".csv", ".xlsx", ".xls", ".json", ".txt", ".zip", ".gz")
#: folder names exports share, recorded as they are (case-insensitively): they name no one
GENERIC_NAMES = frozenset({"dicom", "nifti", "nrrd", "masks", "mask", "seg", "segmentation", "segmentations",
                           "images", "image", "anat", "derivatives", "sourcedata", "rawdata", "series", "study",
                           "studies", "scans", SOURCE_MARK, ".", ".."})
_NEXT = r"\w^~\-"  # characters that continue a name: a name is replaced only where none touches it
_ABSOLUTE = re.compile(r"(?<![\w}\]#.~-])(?:/|[A-Za-z]:\\)[^\s'\"<>|,;()\[\]]+")


def _weak(name: str) -> bool:
    """A name too short to be sure of in prose (``1``, ``T1``, ``0003``): replaced only inside a path."""
    return len(name) <= 2 or (name.isdigit() and len(name) < 6)


@lru_cache(maxsize=512)
def _pattern(alternatives: tuple[tuple[str, str], ...]) -> re.Pattern[str]:
    """One regex over (text, how it is bounded), longest first, so the longest name wins."""
    parts = []
    for text, bound in alternatives:
        t = re.escape(text)
        if bound == "name":
            parts.append(f"(?<![{_NEXT}.]){t}(?![{_NEXT}])")
        elif bound == "weak":
            parts.append(f"(?<=/){t}(?![{_NEXT}])|(?<![{_NEXT}.]){t}(?=/)")
        else:
            parts.append(t)
    return re.compile("|".join(parts))


@dataclass(frozen=True)
class Redactor:
    """Turns paths and messages about one patient (or one center) into text safe to record.

    ``ids`` raw id -> pseudonym; ``names`` folder or file name -> its recorded form (a pseudonym,
    or a center-file pattern filled with it: ``D-1a2b_lesion.nii.gz``); ``seen`` the other names
    of the patient's folders, recorded as keyed tokens; ``labels`` header text (series
    descriptions) messages quote, recorded as tokens; ``keep`` names recorded as they are
    (lower-case: the center file's own literals, generic and stray-file names). Holds no key but
    :func:`token_key`'s, so it may travel to a worker.
    """

    root: str
    tokens_key: str
    ids: Mapping[str, str] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)
    seen: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    keep: frozenset[str] = frozenset()
    #: whose names these are (a pseudonym; empty: the center's): two patients' files of one name
    #: get two tokens, so a name (a person's, in both file names) links no two pseudonyms
    scope: str = ""

    def token(self, name: str) -> str:
        """``#`` and 8 hex of a keyed hash of ``name`` (in :attr:`scope`), with its file type: the
        same in every run for the same key, so the dry run's report can show which file it is."""
        lower = name.lower()
        suffix = next((name[len(name) - len(s):] for s in TOKEN_SUFFIXES if lower.endswith(s) and lower != s), "")
        return f"#{_mac(self.tokens_key, f'name:{self.scope}:{name}', 8)}{suffix}"

    def label(self, text: str) -> str:
        """A header text (a DICOM SeriesDescription) as its keyed token: free text, typed at the scanner."""
        return f"#{_mac(self.tokens_key, f'header:{self.scope}:{text}', 8)}"

    def component(self, name: str) -> str:
        """One folder or file name as recorded."""
        if name in self.names:
            return self.names[name]
        if name.lower() in self.keep or name.lower() in GENERIC_NAMES or name in self.ids:
            return self.ids.get(name, name)
        return self.token(name)

    def path(self, path: str | PurePath) -> str:
        """A path as recorded: relative to the export, every name by :meth:`component`; a path
        outside the export by its name alone."""
        p = PurePath(path)
        if p.is_absolute():
            for root in self._roots:
                if p.is_relative_to(root):
                    p = p.relative_to(root)
                    break
            else:
                return self.component(p.name)
        return "/".join(self.component(c) for c in p.parts) or "."

    def source_label(self, kind: str, label: str) -> str:
        """A source's label as recorded: a DICOM series' description as its token, a file's path."""
        return self.label(label) if kind == "dicom" else self.path(label)

    def text(self, text: str) -> str:
        """``text`` (ours or a library's) with the export root as ``{source}``, ids as pseudonyms,
        every known name and quoted header text as its token, any other absolute path as ``{path}``."""
        if not text:
            return text
        table = self._table
        present = tuple(sorted(((s, table[s][0]) for s in table if s in text), key=lambda a: (-len(a[0]), a[0])))
        if present:
            text = _pattern(present).sub(lambda m: table[m[0]][1], text)
        return _ABSOLUTE.sub(PATH_MARK, text)

    def merged(self, other: Redactor) -> Redactor:
        """One redactor knowing what both know (``other`` wins where they differ, its scope too:
        merge a patient's into the center's, whose names are tokens already)."""
        names = {**self.names, **{n: self.component(n) for n in self.seen}, **other.names}
        return Redactor(self.root, self.tokens_key, {**self.ids, **other.ids}, names, other.seen,
                        self.labels | other.labels, self.keep | other.keep, other.scope)

    @cached_property
    def _roots(self) -> tuple[Path, ...]:
        root = Path(self.root)
        return tuple(dict.fromkeys((root, root.resolve())))

    @cached_property
    def _table(self) -> dict[str, tuple[str, str]]:
        """Every string to replace -> (how it is bounded, its replacement)."""
        table: dict[str, tuple[str, str]] = {}
        for raw, pid in self.ids.items():
            if raw.strip():
                table[raw] = ("any", pid)
        raw_ids = [raw for raw in self.ids if raw.strip()]
        for name in [*self.seen, *self.names]:
            recorded = self.component(name)
            if recorded != name and name.strip():
                # a name holding an id (a patient's folder, a file named after it) is replaced even
                # inside a longer name: a glob's expansion, a file that is missing
                bound = "any" if any(raw in name for raw in raw_ids) else "weak" if _weak(name) else "name"
                table[name] = (bound, recorded)
        for text in self.labels:
            if text.strip():
                token = self.label(text)
                for quote in ("'", '"'):
                    table[f"{quote}{text}{quote}"] = ("any", f"{quote}{token}{quote}")
                table[repr(text)] = ("any", repr(token))
        for root in self._roots:
            table[str(root)] = ("any", SOURCE_MARK)
        return table
