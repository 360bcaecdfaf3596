"""CenterConfig: unknown keys, wrong values and missing pieces are errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from atrx.config import ConfigError
from atrx.config.center import CenterConfig, load_center
from atrx.errors import InputError

BASE = {
    "center": "X",
    "source": "export",
    "format": "dicom",
    "sequences": {
        "t1c": {"dicom": {"SeriesDescription": r"(?i)t1.*\+c"}},
        "t2f": {"dicom": {"SeriesDescription": "(?i)flair"}},
    },
    "masks": {
        "lesion": {"glob": "masks/lesion*.nii.gz", "space": "t2f"},
        "tumor": {"glob": "masks/tumor*.nrrd", "space": "t1c"},
    },
    "clinical": {
        "path": "clinical.csv",
        "columns": {"patient_id": "ID", "age": "Age", "sex": "Sex", "who_grade": "WHO",
                    "vasari_score": "VASARI", "atrx_status": "ATRX", "pathology_date": "Date"},
        "values": {"sex": {"M": "male", "F": "female"}},
    },
    "synthetic": True, "deid": {"key": "k" * 32},
}


def write(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "export").mkdir(exist_ok=True)
    path = tmp_path / "X.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_config_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load_center(write(tmp_path, BASE))
    assert cfg.source_path == (tmp_path / "export").resolve()
    assert cfg.clinical_path == (tmp_path / "export" / "clinical.csv").resolve()
    assert cfg.masks.lesion.labels == [1]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"sequnces": {}}, "sequnces: Extra inputs are not permitted"),
        ({"masks": {**BASE["masks"], "tumor": {"glob": "t.nrrd", "space": "t1"}}}, "masks.tumor.space"),
        ({"masks": {**BASE["masks"], "tumor": {"glob": "t.nrrd", "space": "t1c", "colour": 1}}}, "masks.tumor.colour"),
        ({"sequences": {"t1c": {"dicom": {"SeriesDescription": "("}}, "t2f": BASE["sequences"]["t2f"]}},
         "not a valid regular expression"),
        ({"sequences": {"t1c": {"glob": "*.nii"}, "t2f": BASE["sequences"]["t2f"]}}, "both be chosen"),
        ({"clinical": {**BASE["clinical"], "columns": {"patient_id": "ID"}}}, "lacks"),
        ({"clinical": {**BASE["clinical"], "values": {"sex": {"M": "man"}}}}, "allowed targets"),
        ({"center": "a/b"}, "center"),
        ({"patients": {"id_regex": "^(.+)$"}}, "(?P<patient>"),
        ({"format": "nifti"}, "format is 'nifti'"),
        # paths that name the patient: placeholders are known, and nothing leaves source
        ({"masks": {**BASE["masks"], "lesion": {"glob": "{source}/masks/{patiet}.nii.gz", "space": "t2f"}}},
         "masks.lesion.glob: Value error, unknown placeholder {patiet}"),
        ({"masks": {**BASE["masks"], "lesion": {"glob": "{patiet}.nii.gz", "space": "t2f"}}},
         "allowed: {patient} (the raw patient id), {folder} (the patient folder's name), {source}/"),
        ({"masks": {**BASE["masks"], "lesion": {"glob": "../masks/{patient}.nii.gz", "space": "t2f"}}},
         "masks.lesion.glob: Value error, '..' in '../masks/{patient}.nii.gz' refused"),
        ({"masks": {**BASE["masks"], "tumor": {"glob": ["masks/t.nrrd", "{source}/../t.nrrd"], "space": "t1c"}}},
         "masks.tumor.glob: Value error, '..' in '{source}/../t.nrrd' refused"),
        ({"masks": {**BASE["masks"], "tumor": {"glob": "/data/masks/{patient}.nrrd", "space": "t1c"}}},
         "masks.tumor.glob: Value error, absolute path '/data/masks/{patient}.nrrd' refused"),
        ({"masks": {**BASE["masks"], "tumor": {"glob": "{source}/masks/*.nrrd", "space": "t1c"}}},
         "names no patient"),
        ({"masks": {**BASE["masks"], "tumor": {"glob": "{source}masks/{patient}.nrrd", "space": "t1c"}}},
         "{source} must be followed by '/'"),
        ({"masks": {**BASE["masks"], "tumor": {"glob": "masks/{patient.nrrd", "space": "t1c"}}}, "unbalanced brace"),
        ({"patients": {"glob": "../*"}}, "patients.glob: Value error, '..' in '../*' refused"),
        ({"patients": {"glob": "{patient}"}}, "unknown placeholder {patient} in '{patient}'; allowed: none here"),
        ({"clinical": {**BASE["clinical"], "path": "{patient}.csv"}}, "the clinical sheet is one file per center"),
        ({"clinical": {**BASE["clinical"], "values": {"sex": {"M": "male", "m ": "female"}}}},
         "clinical: Value error, values.sex: codes 'M' -> 'male' and 'm' -> 'female' differ only in case"),
    ],
)
def test_bad_keys_and_values_name_the_file_and_key(tmp_path: Path, patch: dict, expected: str) -> None:
    path = write(tmp_path, {**BASE, **patch})
    with pytest.raises(ConfigError) as err:
        load_center(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_source_folder_is_an_error_with_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, {**BASE, "source": "nowhere"})
    with pytest.raises(ConfigError, match="does not exist; point 'source'"):
        load_center(path)


def test_source_expands_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_ROOT", str(tmp_path))
    cfg = load_center(write(tmp_path, {**BASE, "source": "${EXPORT_ROOT}/export"}))
    assert cfg.source_path == (tmp_path / "export").resolve()
    monkeypatch.delenv("EXPORT_ROOT")
    with pytest.raises(ConfigError, match="EXPORT_ROOT is not set"):
        load_center(write(tmp_path, {**BASE, "source": "${EXPORT_ROOT}/export"}))


def test_not_yaml_and_empty_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("center: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        load_center(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_center(empty)


def test_brats_preset_needs_only_the_clinical_map(tmp_path: Path) -> None:
    cfg = load_center(write(tmp_path, {"center": "B23", "source": "export", "preset": "brats2023",
                                       "clinical": BASE["clinical"], "synthetic": True, "deid": {"key": "k" * 32}}))
    assert cfg.format == "nifti"
    assert cfg.sequences.t1c.glob == "*-t1c.nii.gz"
    assert cfg.masks.lesion.labels == [1, 2, 3] and cfg.masks.tumor.labels == [1, 3]
    assert cfg.masks.tumor.space == "t1c"


def test_preset_values_can_be_overridden(tmp_path: Path) -> None:
    data = {"center": "B23", "source": "export", "preset": "brats2023", "clinical": BASE["clinical"],
            "masks": {"tumor": {"labels": [3]}}, "synthetic": True, "deid": {"key": "k" * 32}}
    cfg = load_center(write(tmp_path, data))
    assert cfg.masks.tumor.labels == [3] and cfg.masks.tumor.glob == "*-seg.nii.gz"


def test_globs_may_name_the_patient_and_start_at_source(tmp_path: Path) -> None:
    masks = {"lesion": {"glob": "{source}/masks/{patient}_lesion.nii.gz", "space": "t2f"},
             "tumor": {"glob": ["{folder}/*tumor*.nrrd", "{source}/seg/{patient}/**/*.nrrd"], "space": "t1c"}}
    clinical = {**BASE["clinical"], "path": "{source}/sheets/clinical.csv"}
    cfg = load_center(write(tmp_path, {**BASE, "masks": masks, "clinical": clinical}))
    assert cfg.masks.tumor.glob == ["{folder}/*tumor*.nrrd", "{source}/seg/{patient}/**/*.nrrd"]
    assert cfg.clinical_path == (tmp_path / "export" / "sheets" / "clinical.csv").resolve()


def test_bids_preset_looks_for_masks_in_derivatives(tmp_path: Path) -> None:
    cfg = load_center(write(tmp_path, {"center": "BIDS", "source": "export", "preset": "bids",
                                       "clinical": BASE["clinical"], "synthetic": True, "deid": {"key": "k" * 32}}))
    assert cfg.masks.lesion.glob == ["**/*_desc-lesion_mask.nii*",
                                     "{source}/derivatives/*/{folder}/**/*_desc-lesion_mask.nii*",
                                     "{source}/segmentations/{folder}/**/*_desc-lesion_mask.nii*"]


def test_a_tab_delimiter_is_kept() -> None:
    cfg = CenterConfig.model_validate({**BASE, "clinical": {**BASE["clinical"], "delimiter": "\t"}})
    assert cfg.clinical.delimiter == "\t"


def test_deid_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = CenterConfig.model_validate({**BASE, "deid": {"key_env": "MY_KEY"}})
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ValueError, match="MY_KEY"):
        cfg.deid.resolve_key()
    monkeypatch.setenv("MY_KEY", "secret-" * 5)
    assert cfg.deid.resolve_key() == "secret-" * 5


# -- keys (issue 14): a literal key only for synthetic data, never shorter than 32 bytes ---------

def test_a_literal_key_is_refused_unless_the_center_is_synthetic(tmp_path: Path) -> None:
    data = {k: v for k, v in BASE.items() if k != "synthetic"}
    with pytest.raises(ConfigError) as e:
        load_center(write(tmp_path, data))
    text = str(e.value)
    assert str(tmp_path / "X.yaml") in text and "deid.key" in text
    assert "deid.key_env" in text and "synthetic: true" in text
    assert "k" * 32 not in text  # the key itself is never shown
    with pytest.raises(ConfigError, match="synthetic: true"):
        load_center(write(tmp_path, {**data, "synthetic": False}))
    cfg = load_center(write(tmp_path, {**data, "synthetic": True}))
    assert cfg.synthetic and cfg.deid.resolve_key() == "k" * 32
    # synthetic is no part of the configuration digest (recorded with every run)
    env_cfg = CenterConfig.model_validate({**data, "deid": {"key_env": "X"}})
    assert CenterConfig.model_validate({**data, "synthetic": True}).digest() == env_cfg.digest()


def test_a_center_reading_its_key_from_the_environment_needs_no_synthetic_flag(tmp_path: Path) -> None:
    data = {**{k: v for k, v in BASE.items() if k != "synthetic"}, "deid": {"key_env": "MY_KEY"}}
    assert load_center(write(tmp_path, data)).synthetic is False


@pytest.mark.parametrize("short", ["k", "x" * 31, "é" * 15])  # 1, 31 and 30 bytes
def test_a_short_literal_key_is_refused_with_how_to_make_one(tmp_path: Path, short: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_center(write(tmp_path, {**BASE, "deid": {"key": short}}))
    text = str(e.value)
    assert "deid.key" in text and "32 bytes" in text and "secrets.token_urlsafe(32)" in text
    assert f"{short!r}" not in text
    assert load_center(write(tmp_path, {**BASE, "deid": {"key": "é" * 16}})).deid.key == "é" * 16  # 32 bytes


def test_a_short_key_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = CenterConfig.model_validate({**BASE, "deid": {"key_env": "MY_KEY"}})
    monkeypatch.setenv("MY_KEY", "x" * 31)
    with pytest.raises(InputError) as e:
        cfg.deid.resolve_key()
    assert "MY_KEY" in str(e.value) and "32 bytes" in str(e.value) and "x" * 31 not in str(e.value)
    assert e.value.fix and "secrets.token_urlsafe(32)" in e.value.fix
    assert e.value.exit_code == 2
    monkeypatch.setenv("MY_KEY", "x" * 32)
    assert cfg.deid.resolve_key() == "x" * 32
