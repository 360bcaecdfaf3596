"""Clinical sheets: delimiters, decimal marks, XLSX, value maps, date formats, bad rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from atrx.config.center import ClinicalSheet
from ingest.clinical import ClinicalSheetError, parse_clinical

COLUMNS = {"patient_id": "Pat-Nr", "age": "Alter", "sex": "Geschlecht", "who_grade": "WHO",
           "vasari_score": "VASARI", "atrx_status": "ATRX", "pathology_date": "Datum"}
VALUES = {"sex": {"1": "male", "2": "female"}, "atrx_status": {"mutiert": "mutant", "wildtyp": "wildtype"}}


def sheet(**kw: object) -> ClinicalSheet:
    return ClinicalSheet.model_validate({"path": "c.csv", "columns": COLUMNS, "values": VALUES,
                                         "delimiter": ";", "decimal": ",", "date_formats": ["%d.%m.%Y"], **kw})


def test_semicolon_comma_decimal_and_codes(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("Pat-Nr;Alter;Geschlecht;WHO;VASARI;ATRX;Datum\n"
                    "2019-0045;52,5;1;3;71,2;mutiert;03.04.2019\n"
                    "2019-0046;61;2;4;70;wildtyp;11.12.2020\n")
    res = parse_clinical(path, sheet())
    assert not res.problems
    a = res.records["2019-0045"]
    assert (a.age, a.sex, a.who_grade, a.vasari_score, a.atrx_status) == (52.5, "male", 3, 71.2, "mutant")
    assert a.pathology_date == dt.date(2019, 4, 3)
    assert res.records["2019-0046"].sex == "female"


def test_bad_cells_are_reported_by_row_column_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("Pat-Nr;Alter;Geschlecht;WHO;VASARI;ATRX;Datum\n"
                    "P1;abc;9;3;70;mutiert;2019-04-03\n"
                    "P2;50;1;3;70;mutiert;03.04.2019\n"
                    "P2;50;1;3;70;mutiert;03.04.2019\n")
    res = parse_clinical(path, sheet())
    by_col = {(p.raw_id, p.column): p for p in res.problems}
    assert by_col[("P1", "Alter")].row == 2 and "not a number" in by_col[("P1", "Alter")].message
    assert "clinical.values.sex" in by_col[("P1", "Geschlecht")].fix
    assert "clinical.date_formats" in by_col[("P1", "Datum")].fix
    assert "duplicate" in by_col[("P2", "Pat-Nr")].message
    assert res.rejected == {"P1", "P2"} and not res.records


def test_wrong_delimiter_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("Pat-Nr,Alter\nP1,50\n")
    with pytest.raises(ClinicalSheetError, match="delimiter"):
        parse_clinical(path, sheet())


def test_xlsx_with_typed_cells(tmp_path: Path) -> None:
    path = tmp_path / "c.xlsx"
    frame = pd.DataFrame({"Pat-Nr": ["C-1"], "Alter": [44], "Geschlecht": [2], "WHO": ["IV"], "VASARI": [72.5],
                          "ATRX": ["wildtyp"], "Datum": [dt.datetime(2021, 5, 6)]})
    frame.to_excel(path, sheet_name="patients", index=False)
    cfg = sheet(path="c.xlsx", sheet="patients", values={**VALUES, "who_grade": {"IV": 4}})
    res = parse_clinical(path, cfg)
    rec = res.records["C-1"]
    assert (rec.sex, rec.who_grade, rec.pathology_date) == ("female", 4, dt.date(2021, 5, 6))
