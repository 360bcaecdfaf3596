"""The redactors of a plan: what every recorded path and message of a center is made safe with.

A patient's :class:`~ingest.deid.Redactor` knows every name under its folder (and its sources
beside it), the center file's patterns that name its files, and the header texts its messages
quote; the center's knows every raw id and patient folder, and the folders that matched no id.
Built once per plan, so the dry run can show each raw path beside the token the ingest records.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath

from atrx.config.base import split_source
from atrx.config.center import CenterConfig
from atrx.names import SEQUENCES, SOURCE_MASKS
from ingest.deid import Redactor, pseudonymise_patient, token_key
from ingest.discover.dicom_input import STRAY_NAMES
from ingest.discover.plan import PatientPlan

__all__ = ["center_redactor", "patient_redactor"]

_WILD = re.compile(r"(\{patient\}|\{folder\}|\*|\?)")


def _patterns(cfg: CenterConfig) -> list[str]:
    """Every path pattern of the center file: patient folders, sequence and mask globs, the sheet."""
    out = [cfg.patients.glob, cfg.clinical.path]
    for rule in [getattr(cfg.sequences, s) for s in SEQUENCES] + [getattr(cfg.masks, m) for m in SOURCE_MASKS]:
        globs = rule.glob
        out.extend([] if globs is None else [globs] if isinstance(globs, str) else list(globs))
    return out


def _components(cfg: CenterConfig) -> list[str]:
    """The names of the center file's patterns, one path component each (``masks``, ``{patient}_lesion.nii.gz``)."""
    out = []
    for pattern in _patterns(cfg):
        rest = split_source(pattern)[1].replace("\\", "/")
        out.extend(c for c in rest.split("/") if c and c != "**" and "[" not in c)
    return out


def _literals(cfg: CenterConfig) -> frozenset[str]:
    """Names written in the center file itself (no placeholder, no wildcard): recorded as they are."""
    return frozenset(c.lower() for c in _components(cfg) if not _WILD.search(c))


def _fill(template: str, name: str, raw_id: str, folder: str, pid: str) -> str | None:
    """``name`` with the raw id or folder name that ``template`` puts in it replaced by ``pid``;
    None unless every placeholder or wildcard of it holds exactly the id or the folder name."""
    pieces = _WILD.split(template)
    regex = "".join(re.escape(p) if i % 2 == 0 else ("(.)" if p == "?" else "(.*)") for i, p in enumerate(pieces))
    m = re.fullmatch(regex, name)
    if m is None or not all(g in (raw_id, folder) or (g == "" and w == "*")
                            for g, w in zip(m.groups(), pieces[1::2], strict=True)):
        return None
    return "".join(p if i % 2 == 0 else (pid if m[i // 2 + 1] else "") for i, p in enumerate(pieces))


def center_redactor(cfg: CenterConfig, key: str, folders: Mapping[str, Sequence[Path]], unmatched: Iterable[Path],
                    clinical_ids: Iterable[str] = ()) -> Redactor:
    """The center's redactor: every raw id (folders and clinical rows) to its pseudonym; a patient's
    folder to its pseudonym (a second folder of the same id, a copy: ``D-1a2b#3c4d5e6f``); a folder
    that matched no id, and the folders above the patients, to their tokens."""
    root = cfg.source_path
    base = Redactor(str(root), token_key(cfg.center, key), keep=_literals(cfg) | STRAY_NAMES)
    ids = {raw: pseudonymise_patient(cfg.center, raw, key) for raw in {*folders, *clinical_ids} if raw.strip()}
    names: dict[str, str] = {}
    seen = {f.name for f in unmatched}
    for raw, fs in folders.items():
        for i, f in enumerate(sorted(fs)):  # the first by sorted path is the one planned
            names[f.name] = ids[raw] if i == 0 else ids[raw] + base.token(f.name)
            if f.is_relative_to(root):
                seen.update(f.relative_to(root).parts[:-1])
    return Redactor(base.root, base.tokens_key, ids, names, frozenset(seen), keep=base.keep)


def _walk(folder: Path) -> set[str]:
    """Every folder and file name under ``folder`` (links not followed)."""
    names: set[str] = set()
    for _, dirs, files in os.walk(folder):
        names.update(dirs)
        names.update(files)
    return names


def patient_redactor(center: Redactor, cfg: CenterConfig, plan: PatientPlan) -> Redactor:
    """One patient's redactor: its own raw id, folder, names and header texts, nothing of any other
    patient (it travels with the patient to a worker; the driver merges it with ``center``'s)."""
    folder = Path(plan.folder)
    root = Path(center.root)
    seen = _walk(folder)
    outside = [f for s in plan.studies for role in (*SEQUENCES, *SOURCE_MASKS) for f in getattr(s, role).files]
    outside += [p.file for p in plan.problems if p.file]
    for f in outside:
        p = PurePath(f)
        rel = p.relative_to(root) if p.is_absolute() and p.is_relative_to(root) else p
        seen.update(rel.parts if not rel.is_absolute() else (rel.name,))
    if folder.is_relative_to(root):
        seen.update(folder.relative_to(root).parts[:-1])
    templates = [c for c in _components(cfg) if _WILD.search(c)]
    names: dict[str, str] = {}
    for name in seen:
        filled = next((f for t in templates if (f := _fill(t, name, plan.raw_id, folder.name, plan.patient_id))), None)
        if filled is not None:
            names[name] = filled
    names[folder.name] = plan.patient_id
    return Redactor(center.root, center.tokens_key, {plan.raw_id: plan.patient_id}, names,
                    frozenset(seen - set(names)), frozenset(plan.header_texts), center.keep, plan.patient_id)
