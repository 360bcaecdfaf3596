"""Value maps match codes ignoring case and surrounding whitespace, say so, and print numbers plainly."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from atrx.config.base import format_validation_error, shown
from atrx.config.center import CenterConfig, ClinicalSheet
from ingest.clinical import parse_clinical
from ingest.discover import plan_center

COLUMNS = {"patient_id": "ID", "age": "Age", "sex": "Sex", "who_grade": "WHO", "vasari_score": "VASARI",
           "atrx_status": "ATRX", "pathology_date": "Date"}
VALUES = {"sex": {"M": "male", "F": "female"}, "who_grade": {"III": 3, "IV": 4},
          "atrx_status": {"loss": "mutant", "retained": "wildtype"}}
HEADER = "ID,Age,Sex,WHO,VASARI,ATRX,Date\n"


def sheet(**kw: object) -> ClinicalSheet:
    return ClinicalSheet.model_validate({"path": "c.csv", "columns": COLUMNS, "values": VALUES, **kw})


def test_case_and_whitespace_variants_match_and_are_listed_in_a_note(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "P1,50,M,IV,70,Loss,2020-01-01\n"
                             "P2,51,m ,iv,70,retained ,2020-01-01\n"
                             "P3,52,F,III,70,Loss,2020-01-01\n"
                             "P4,53,F,III,70, LOSS,2020-01-01\n"
                             "P5,54,F,III,70,loss,2020-01-01\n")
    res = parse_clinical(path, sheet())
    assert not res.problems
    assert [res.records[p].atrx_status for p in ("P1", "P2", "P3", "P4", "P5")] == \
        ["mutant", "wildtype", "mutant", "mutant", "mutant"]
    assert res.records["P2"].sex == "male" and res.records["P2"].who_grade == 4
    assert sorted(res.notes) == [
        "ATRX: matched ' LOSS' as 'loss', 'Loss' (2 rows) as 'loss', 'retained ' as 'retained' by case/whitespace",
        "Sex: matched 'm ' as 'M' by case/whitespace",
        "WHO: matched 'iv' as 'IV' by case/whitespace",
    ]


def test_our_own_values_match_in_any_case_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "P1,50,male,4,70,Mutant,2020-01-01\nP2,50,female,3,70,wildtype,2020-01-01\n")
    res = parse_clinical(path, sheet(values={}))
    assert (res.records["P1"].atrx_status, res.records["P2"].atrx_status) == ("mutant", "wildtype")
    assert res.notes == ["ATRX: matched 'Mutant' as 'mutant' by case/whitespace"]


def test_exact_codes_give_no_note_and_unknown_codes_stay_problems(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "P1,50,M,IV,70,loss,2020-01-01\nP2,50,M,IV,70,lost,2020-01-01\n")
    res = parse_clinical(path, sheet())
    assert not res.notes
    assert [(p.raw_id, p.message) for p in res.problems] == [("P2", "value 'lost' is not mapped")]


def test_codes_that_collide_after_normalisation_are_refused() -> None:
    with pytest.raises(ValidationError, match="differ only in case or surrounding whitespace") as err:
        sheet(values={"atrx_status": {"Loss": "mutant", "loss": "wildtype"}})
    assert "values.atrx_status" in str(err.value)
    same = sheet(values={"atrx_status": {"Loss": "mutant", "loss": "mutant"}})  # redundant, not ambiguous
    assert same.values["atrx_status"] == {"Loss": "mutant", "loss": "mutant"}


def test_notes_reach_the_dry_run_as_non_blocking_clinical_problems(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "clinical.csv").write_text(HEADER + "P1,50,M,IV,70,Loss,2020-01-01\n")
    cfg = CenterConfig.model_validate({
        "center": "V", "source": str(export), "format": "nifti", "synthetic": True, "deid": {"key": "k" * 32},
        "sequences": {"t1c": {"glob": "*t1c.nii.gz"}, "t2f": {"glob": "*t2f.nii.gz"}},
        "masks": {"lesion": {"glob": "*lesion.nii.gz", "space": "t2f"},
                  "tumor": {"glob": "*tumor.nii.gz", "space": "t1c"}},
        "clinical": {"path": "clinical.csv", "columns": COLUMNS, "values": VALUES}})
    notes = [p for p in plan_center(cfg, "k" * 32).problems if "case/whitespace" in p.what]
    assert [(p.what, p.blocking, p.stage, p.file) for p in notes] == [
        ("ATRX: matched 'Loss' as 'loss' by case/whitespace", False, "clinical", "clinical.csv")]


def test_numbers_in_messages_print_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.xlsx"
    pd.DataFrame({"ID": ["P1", "P2"], "Age": [130.5, 40], "Sex": ["M", 11.929], "WHO": ["IV", "IV"],
                  "VASARI": ["7O", "n/a"], "ATRX": ["loss", "loss"],
                  "Date": [dt.datetime(2020, 1, 1)] * 2}).to_excel(path, index=False)
    messages = {(p.raw_id, p.column): p.message for p in parse_clinical(path, sheet(path="c.xlsx")).problems}
    assert messages[("P1", "Age")] == "age 130.5 is out of range"
    assert messages[("P2", "Sex")] == "value 11.929 is not mapped"
    assert messages[("P1", "VASARI")] == "'7O' is not a number"
    assert messages[("P2", "VASARI")].startswith("empty")
    assert "np." not in " ".join(messages.values())


@pytest.mark.parametrize(("value", "text"), [
    (np.float64(11.929), "11.929"), (np.float32(0.1), "0.1"), (np.int64(4), "4"), (130.0, "130"),
    (np.bool_(True), "True"), ("Loss ", "'Loss '"), ((np.float64(1.5), 2), "(1.5, 2)"), (None, "None"),
])
def test_shown_prints_numpy_scalars_as_plain_numbers(value: object, text: str) -> None:
    assert shown(value) == text


def test_config_errors_show_numpy_inputs_as_numbers() -> None:
    with pytest.raises(ValidationError) as err:
        ClinicalSheet.model_validate({"path": "c.csv", "columns": COLUMNS, "delimiter": np.float64(11.929)})
    assert format_validation_error(err.value) == [
        "delimiter: Input should be a valid string (got 11.929); fix the value"]
