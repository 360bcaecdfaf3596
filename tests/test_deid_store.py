"""Pseudonyms are keyed and stable; the Zarr store refuses incomplete versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from atrx.imagestore import IncompleteVersionError, read_version, version_path, write_version
from ingest.deid import pseudonymise_patient, pseudonymise_study, redact_path


def test_pseudonyms_are_keyed_stable_and_center_scoped() -> None:
    a = pseudonymise_patient("A", "CQ0001234", "k1")
    assert a == pseudonymise_patient("A", "CQ0001234", "k1")
    assert a.startswith("A-") and "CQ0001234" not in a
    assert a != pseudonymise_patient("A", "CQ0001234", "k2")
    assert a[2:] != pseudonymise_patient("B", "CQ0001234", "k1")[2:]
    assert pseudonymise_study("A", "x", "1.2.3", "k") != pseudonymise_study("A", "x", "1.2.4", "k")


def test_redacted_paths_are_relative_and_hide_the_raw_id(tmp_path: Path) -> None:
    p = tmp_path / "CQ0001234" / "masks" / "CQ0001234_lesion.nrrd"
    assert redact_path(p, tmp_path, "CQ0001234", "A-abc") == "A-abc/masks/A-abc_lesion.nrrd"


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
