"""The first patients of each center of an ``atrx synth`` cohort, read as ingest reads them (the
ingest benchmarks' shared input)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from atrx.config.center import load_center
from ingest.discover import plan_center
from ingest.readers import read_image, read_mask

#: a fixed pseudonymisation key: the benchmarks need the plans, not secret ids
BENCH_KEY = "benchmark-key-" * 3


def first_studies(cohort: Path, per_center: int) -> Iterator[tuple[Any, Any, Any]]:
    """(center config, patient plan, its first study) of the first ``per_center`` plannable
    patients of every center, centers in file-name order."""
    for path in sorted((cohort / "centers").glob("*.yaml")):
        cfg = load_center(path)
        for plan in [p for p in plan_center(cfg, BENCH_KEY).patients if p.ok][:per_center]:
            yield cfg, plan, plan.studies[0]


def read_study(cfg: Any, study: Any) -> tuple[dict[str, sitk.Image], dict[str, sitk.Image]]:
    """The study's T1c and T2f, and its lesion and tumor masks on the image they were drawn on."""
    images = {"t1c": read_image(study.t1c), "t2f": read_image(study.t2f)}
    masks = {m: read_mask(getattr(study, m), getattr(cfg.masks, m),
                          images[getattr(cfg.masks, m).space], m) for m in ("lesion", "tumor")}
    return images, masks
