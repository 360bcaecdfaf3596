"""Our radiomics wrapper reproduces PyRadiomics' published ``brain1`` baselines.

Every configuration column of the baseline CSVs is run through ``extract_radiomics`` (binary uint8
mask, canonical names) with the exact settings recorded in its ``diagnostics_Configuration_Settings``
row, and compared with upstream's acceptance rule.
"""

from __future__ import annotations

import ast
import csv
from functools import lru_cache
from pathlib import Path

import pytest
import SimpleITK as sitk

from atrx.names import radiomics_feature_name
from features.radiomics import extract_radiomics

DATA = Path(__file__).parent / "data" / "pyradiomics"
ROI, SEQUENCE = "tumor", "t1c"
CONFIGS = [
    "brain1",
    "brain1_2d",
    "brain1_FBN",
    "brain1_combined",
    "brain1_flatRegion",
    "brain1_normalization",
    "brain1_resampling",
    "brain1_resegmentation",
    "brain1_shape2D",
]


@lru_cache(maxsize=1)
def baselines() -> dict[str, dict[str, dict[str, str]]]:
    """{config: {feature class: {row name: cell}}} from every baseline CSV."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for path in sorted((DATA / "baseline").glob("baseline_*_brain1.csv")):
        feature_class = path.name.removeprefix("baseline_").removesuffix("_brain1.csv")
        with path.open(newline="") as f:
            header, *rows = list(csv.reader(f))
        for j, config in enumerate(header[1:], start=1):
            out.setdefault(config, {})[feature_class] = {row[0]: row[j] for row in rows}
    return out


@lru_cache(maxsize=1)
def brain1() -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    image = sitk.ReadImage(str(DATA / "brain1_image.nrrd"))
    mask = sitk.Cast(sitk.ReadImage(str(DATA / "brain1_label.nrrd")), sitk.sitkUInt8)
    # the single-slice mask lies on a 256x256x1 grid; our wrapper takes masks on the image grid
    mask_2d = sitk.Resample(
        sitk.ReadImage(str(DATA / "brain1_label_2D.nrrd")),
        image,
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
        sitk.sitkUInt8,
    )
    return image, mask, mask_2d


def test_every_baseline_configuration_is_covered() -> None:
    tables = baselines()
    assert sorted(tables) == sorted(CONFIGS)
    n_values = sum(
        not key.startswith("diagnostics_")
        for classes in tables.values()
        for rows in classes.values()
        for key in rows
    )
    assert n_values == 674


@pytest.mark.parametrize("config", CONFIGS)
def test_brain1_baseline(config: str) -> None:
    classes = baselines()[config]
    settings_cells = {rows["diagnostics_Configuration_Settings"] for rows in classes.values()}
    assert len(settings_cells) == 1, f"{config}: classes disagree on settings"
    settings = ast.literal_eval(settings_cells.pop())
    params = {
        "imageType": {"Original": {}},
        "featureClass": {feature_class: None for feature_class in classes},
        "setting": settings,
    }
    image, mask, mask_2d = brain1()

    features = extract_radiomics(
        image, mask_2d if config == "brain1_shape2D" else mask, ROI, SEQUENCE, params
    )

    assert not any("diagnostics" in name for name in features)
    failures = []
    n_checked = 0
    for rows in classes.values():
        for key, cell in rows.items():
            if key.startswith("diagnostics_"):
                continue
            name = radiomics_feature_name(ROI, SEQUENCE, key)
            assert name in features, f"{config}: {key} ({name}) not computed"
            baseline, computed = float(cell), features[name]
            ok = computed == 0 if baseline == 0 else abs(1 - computed / baseline) < 0.03
            if not ok:
                failures.append(f"{key}: baseline {baseline!r}, computed {computed!r}")
            n_checked += 1
    assert n_checked > 0
    assert not failures, f"{config}: {len(failures)} of {n_checked} features off:\n" + "\n".join(
        failures
    )
