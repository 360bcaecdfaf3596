"""Read a center's clinical sheet (CSV or XLSX) into normalised records, one problem per bad cell.

Values are mapped through the config's value maps; anything unmapped or unparseable is a problem
naming the sheet, the row, the column, the value and the fix, never a silent NaN. Codes match
ignoring case and surrounding whitespace ('Loss', 'retained ' beside 'loss', 'retained'), and
every such loose match is listed in a note, so nothing is matched behind the engineer's back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from atrx.config.base import shown
from atrx.config.center import ClinicalSheet, code_key
from atrx.errors import InputError

Sex = Literal["male", "female"]
WhoGrade = Literal[3, 4]
AtrxStatus = Literal["mutant", "wildtype"]

CANONICAL: dict[str, dict[str, str | int]] = {
    "sex": {"male": "male", "female": "female"},
    "who_grade": {"3": 3, "4": 4},
    "atrx_status": {"mutant": "mutant", "wildtype": "wildtype"},
}


@dataclass(frozen=True)
class ClinicalRecord:
    """One patient's clinical values and label, in our vocabulary."""

    raw_id: str
    age: float
    sex: Sex
    who_grade: WhoGrade
    vasari_score: float
    atrx_status: AtrxStatus
    pathology_date: dt.date
    scan_date: dt.date | None
    row_hash: str


@dataclass(frozen=True)
class ClinicalProblem:
    """One bad cell (or row): where it is, what is wrong, how to fix it."""

    raw_id: str | None
    row: int  # 1-based data row as a spreadsheet user counts it (header = row 1)
    column: str
    message: str
    fix: str


@dataclass
class ClinicalSheetResult:
    """The usable records by raw id, every problem, and the rows that could not be used."""

    records: dict[str, ClinicalRecord] = field(default_factory=dict)
    problems: list[ClinicalProblem] = field(default_factory=list)
    #: raw ids whose rows could not be used (bad cell or duplicate)
    rejected: set[str] = field(default_factory=set)
    n_rows: int = 0
    #: notes on the sheet as a whole (codes matched ignoring case or whitespace), one per column
    notes: list[str] = field(default_factory=list)


class ClinicalSheetError(InputError):
    """The sheet as a whole cannot be read (missing file, wrong delimiter, missing column)."""


def _key(value: Any) -> str:
    """Cell value as a lookup key: numbers read as 1.0 and strings '1' both become '1'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def read_sheet(path: Path, sheet: ClinicalSheet) -> pd.DataFrame:
    """The raw sheet as strings/numbers, every column kept; errors name the file and the fix."""
    if not path.is_file():
        raise ClinicalSheetError(f"clinical sheet {path} not found",
                                 fix="set clinical.path (relative to source) in the center file")
    fmt = sheet.format
    if fmt == "auto":
        fmt = "xlsx" if path.suffix.lower() in (".xlsx", ".xlsm") else "csv"
    try:
        if fmt == "xlsx":
            frame = pd.read_excel(path, sheet_name=sheet.sheet if sheet.sheet is not None else 0, dtype=object)
        else:
            frame = pd.read_csv(
                path, sep=sheet.delimiter, decimal=sheet.decimal, encoding=sheet.encoding, dtype=str,
                keep_default_na=False,
            )
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise ClinicalSheetError(
            f"clinical sheet {path} could not be read as {fmt} ({e})",
            fix="check clinical.format, clinical.delimiter, clinical.encoding or clinical.sheet",
        ) from e
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [f"{ours} -> {theirs!r}" for ours, theirs in sheet.columns.items() if theirs not in frame.columns]
    if missing:
        hint = ""
        if len(frame.columns) == 1 and fmt == "csv":
            hint = f" (the sheet has one column only: is the delimiter {sheet.delimiter!r} right?)"
        raise ClinicalSheetError(
            f"clinical sheet {path} lacks mapped columns {missing}; its columns are "
            f"{list(frame.columns)}{hint}",
            fix="map each of our columns to the sheet's name under clinical.columns",
        )
    return frame


def _number(value: Any, decimal: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if decimal != ".":
        text = text.replace(".", "").replace(decimal, ".") if text.count(decimal) == 1 else text
    return float(text)


def _date(value: Any, formats: list[str]) -> dt.date:
    if isinstance(value, dt.datetime | pd.Timestamp):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    for fmt in formats:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError(text)


def _loose_note(column: str, matches: Counter[tuple[str, str]], limit: int = 8) -> str:
    """``ATRX: matched 'Loss' (3 rows) as 'loss', 'retained ' as 'retained' by case/whitespace``."""
    parts = [f"{shown(seen)}{f' ({n} rows)' if n > 1 else ''} as {shown(code)}"
             for (seen, code), n in sorted(matches.items())]
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return f"{column}: matched {', '.join(parts[:limit])}{more} by case/whitespace"


def parse_clinical(path: Path, sheet: ClinicalSheet) -> ClinicalSheetResult:
    """Parse every row; a row with any bad cell is rejected as a whole and reported cell by cell."""
    frame = read_sheet(path, sheet)
    result = ClinicalSheetResult(n_rows=len(frame))
    cols = sheet.columns
    seen: dict[str, int] = {}
    exact: dict[str, dict[str, str | int]] = {ours: {} for ours in CANONICAL}
    exact.update({ours: {str(k): v for k, v in codes.items()} for ours, codes in sheet.values.items()})
    loose = {ours: {code_key(k): (k, v) for k, v in exact[ours].items()} for ours in CANONICAL}
    loose_matches: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for i, row in enumerate(frame.to_dict(orient="records")):
        rownum = i + 2
        raw = row[cols["patient_id"]]
        if _is_blank(raw):
            result.problems.append(ClinicalProblem(None, rownum, cols["patient_id"], "empty patient id",
                                                   "fill in the id or delete the row"))
            continue
        raw_id = _key(raw)
        if raw_id in seen:
            result.problems.append(ClinicalProblem(
                raw_id, rownum, cols["patient_id"],
                f"duplicate row for this patient (also row {seen[raw_id]})", "keep one row per patient"))
            result.rejected.add(raw_id)
            result.records.pop(raw_id, None)
            continue
        seen[raw_id] = rownum
        values: dict[str, Any] = {}
        bad = False

        def problem(ours: str, message: str, fix: str, raw_id: str = raw_id, rownum: int = rownum) -> None:
            nonlocal bad
            bad = True
            result.problems.append(ClinicalProblem(raw_id, rownum, cols[ours], message, fix))

        for ours in ("sex", "who_grade", "atrx_status"):
            cell = row[cols[ours]]
            if _is_blank(cell):
                problem(ours, "empty", f"fill in {ours} or exclude the patient")
                continue
            key = _key(cell)
            code, target = key, exact[ours].get(key)
            if target is None:  # case/whitespace variant of a code, else maybe one of our values
                code, target = loose[ours].get(code_key(key), (key, key))
            canon = CANONICAL[ours].get(code_key(target))
            if canon is None:
                problem(ours, f"value {shown(cell)} is not mapped",
                        f"add it to clinical.values.{ours} (targets: {sorted(CANONICAL[ours])})")
                continue
            values[ours] = canon
            written = cell if isinstance(cell, str) else key
            if written not in exact[ours] and written not in CANONICAL[ours]:
                loose_matches[cols[ours]][(written, code if code in exact[ours] else str(canon))] += 1
        for ours in ("age", "vasari_score"):
            cell = row[cols[ours]]
            if _is_blank(cell):  # XLSX cells such as 'n/a' read as missing too
                problem(ours, "empty (or a missing-value mark such as n/a)", f"fill in {ours} or exclude the patient")
                continue
            try:
                number = _number(cell, sheet.decimal)
                if math.isnan(number):
                    raise ValueError
                values[ours] = number
            except (TypeError, ValueError):
                problem(ours, f"{shown(cell)} is not a number",
                        f"write a number (decimal mark {sheet.decimal!r}, see clinical.decimal)")
        for ours in ("pathology_date", "scan_date"):
            if ours not in cols:
                values[ours] = None
                continue
            cell = row[cols[ours]]
            if _is_blank(cell):
                if ours == "pathology_date":
                    problem(ours, "empty", "fill in the pathology (label) date")
                values[ours] = None
                continue
            try:
                values[ours] = _date(cell, sheet.date_formats)
            except ValueError:
                problem(ours, f"date {str(cell)!r} matches none of {sheet.date_formats}",
                        "fix the cell or add its format to clinical.date_formats")
        if "age" in values and not (0 < values["age"] < 120):
            problem("age", f"age {shown(values['age'])} is out of range", "check the age column and its unit (years)")
        if bad:
            result.rejected.add(raw_id)
            continue
        digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()
        result.records[raw_id] = ClinicalRecord(raw_id=raw_id, row_hash=digest[:16], **values)
    result.notes = [_loose_note(column, matches) for column, matches in loose_matches.items()]
    return result
