"""Pseudonyms are keyed and stable; the Zarr store refuses incomplete versions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from atrx.imagestore import IncompleteVersionError, read_version, version_path, write_version
from ingest.deid import Redactor, pseudonymise_patient, pseudonymise_study, token_key


def test_pseudonyms_are_keyed_stable_and_center_scoped() -> None:
    a = pseudonymise_patient("A", "CQ0001234", "k1")
    assert a == pseudonymise_patient("A", "CQ0001234", "k1")
    assert a.startswith("A-") and "CQ0001234" not in a
    assert a != pseudonymise_patient("A", "CQ0001234", "k2")
    assert a[2:] != pseudonymise_patient("B", "CQ0001234", "k1")[2:]
    assert pseudonymise_study("A", "x", "1.2.3", "k") != pseudonymise_study("A", "x", "1.2.4", "k")


def test_redacted_paths_are_relative_and_hide_every_raw_name(tmp_path: Path) -> None:
    folder = "CQ0001234_DOE^JANE"
    red = Redactor(str(tmp_path), token_key("A", "k" * 32), {"CQ0001234": "A-abc"},
                   {folder: "A-abc", "CQ0001234_lesion.nrrd": "A-abc_lesion.nrrd"},
                   frozenset({"DOE_JANE_t1.nrrd", "1"}), keep=frozenset({"masks"}), scope="A-abc")
    assert red.path(tmp_path / folder / "masks" / "CQ0001234_lesion.nrrd") == "A-abc/masks/A-abc_lesion.nrrd"
    token = red.path(f"{folder}/DOE_JANE_t1.nrrd")
    assert re.fullmatch(r"A-abc/#[0-9a-f]{8}\.nrrd", token) and token == red.path(f"{folder}/DOE_JANE_t1.nrrd")
    assert red.path("/elsewhere/DOE_JANE_t1.nrrd") == token.removeprefix("A-abc/")  # outside: its name only
    other = Redactor(red.root, red.tokens_key, scope="A-def")
    assert other.token("DOE_JANE_t1.nrrd") != red.token("DOE_JANE_t1.nrrd")  # per patient: no link
    message = (f"ITK ERROR: cannot read {tmp_path}/{folder}/1/DOE_JANE_t1.nrrd (label 1); "
               f"see /var/log/x.txt for CQ0001234")
    text = red.text(message)
    assert text == (f"ITK ERROR: cannot read {{source}}/A-abc/{red.token('1')}/{token.removeprefix('A-abc/')} "
                    "(label 1); see {path} for A-abc")


def test_write_read_and_refuse_incomplete(tmp_path: Path) -> None:
    root = str(tmp_path / "images.zarr")
    path = version_path("A", "A-abc", "s1", 1)
    arrays = {"t1c": np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32),
              "tumor": np.zeros((5, 6, 7), np.uint8)}
    digest = write_version(root, path, arrays, {"note": "x"})
    back, attrs = read_version(root, path)
    assert attrs["complete"] and attrs["content_hash"] == digest
    np.testing.assert_array_equal(back["t1c"], arrays["t1c"])
    # an interrupted write: the group exists, the mark does not
    group = zarr.open_group(store=root, path=version_path("A", "A-abc", "s1", 2), mode="w")
    group.attrs["complete"] = False
    with pytest.raises(IncompleteVersionError, match="re-run `atrx ingest`"):
        read_version(root, version_path("A", "A-abc", "s1", 2))
