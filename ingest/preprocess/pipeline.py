"""The one engine: take a study, apply the steps in order, record them; or replay a record.

Reorient -> mask-grid checks -> N4 -> rigid T2f->T1c registration -> 1 mm grid over the T1c ->
resample -> brain mask -> z-score -> derived ROIs. Deciding and replaying run the same code:
for each step the engine takes the recorded step (replay) or nothing (decide), lets the step
compute its output from the values it decided or read, and appends the step's record. A replay
must consume the whole record in order, so it cannot silently skip or add a step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from atrx.names import SEQUENCES, SOURCE_MASKS, STORE_ARRAYS
from ingest.preprocess import steps
from ingest.preprocess.ops import Grid, geometry_of, ones_like, reference_from_geometry, require_3d
from ingest.preprocess.params import PreprocessError, PreprocessParams, Space
from ingest.preprocess.records import REPLAY_FIX, StepRecord

__all__ = ["PreprocessedStudy", "preprocess_study", "replay"]


@dataclass
class PreprocessedStudy:
    """The arrays of one study on the common output grid plus the replayable step record."""

    #: t1c, t2f (float32, z-scored) and brain, lesion, tumor, edema, overall (uint8 0/1),
    #: all the same (z, y, x) shape
    arrays: dict[str, np.ndarray]
    #: spacing / origin / direction / size (x, y, z order) of the output grid
    geometry: Grid
    #: every step in order with the parameters and results needed to replay it (JSON-able)
    steps: list[StepRecord] = field(default_factory=list)

    def image(self, name: str) -> sitk.Image:
        """One array as a SimpleITK image on the output grid (for viewing and checks)."""
        img = sitk.GetImageFromArray(self.arrays[name])
        img.CopyInformation(reference_from_geometry(self.geometry))
        return img


class _Pipeline:
    """Runs the study either deciding (``record is None``) or following a recorded step list."""

    def __init__(self, params: PreprocessParams | None, record: list[dict[str, Any]] | None):
        self.params = params
        self._record: Iterator[dict[str, Any]] | None = iter(record) if record is not None else None
        self.steps: list[StepRecord] = []

    def _take(self, name: str) -> dict[str, Any] | None:
        """The next recorded step, which must be ``name``; None when deciding."""
        if self._record is None:
            return None
        rec = next(self._record, None)
        if rec is None:
            raise PreprocessError(f"step record ends early: expected a {name!r} step, found none",
                                  fix=REPLAY_FIX)
        if rec.get("step") != name:
            raise PreprocessError(
                f"step record out of order: expected a {name!r} step, found {rec.get('step')!r}",
                fix=REPLAY_FIX,
            )
        return rec

    def apply(self, step: steps.Step, *data: Any) -> Any:
        """Take (or decide), apply and record one step; returns its output."""
        record, output = step.run(self._take(step.name), self.params, *data)
        self.steps.append(record)
        return output

    def _finish(self) -> None:
        if self._record is not None:
            rest = [r.get("step") for r in self._record]
            if rest:
                raise PreprocessError(f"step record has unknown trailing steps {rest}", fix=REPLAY_FIX)

    def run(self, raw: dict[str, sitk.Image], spaces: dict[str, str]) -> PreprocessedStudy:
        for name, img in raw.items():
            require_3d(img, name)
        for name, space in spaces.items():
            if space not in SEQUENCES:
                raise PreprocessError(f"{name}_space must be one of {SEQUENCES}, got {space!r}",
                                      fix=f"set masks.{name}.space to t1c or t2f in the center file")
        self.apply(steps.inputs, raw, spaces)
        imgs = self.apply(steps.reorient, raw)
        self.apply(steps.check_geometry, imgs, spaces)
        seqs = {s: self.apply(steps.n4_bias_correct, s, imgs[s]) for s in SEQUENCES}
        transforms: dict[str, sitk.Transform | None] = {
            "t1c": None, "t2f": self.apply(steps.register_rigid, seqs)}
        ref = self.apply(steps.output_grid, seqs["t1c"])
        out: dict[str, sitk.Image] = {}
        for s in SEQUENCES:
            out[s] = self.apply(steps.resample, s, seqs[s], ref, s, transforms[s])
        for m in SOURCE_MASKS:
            out[m] = self.apply(steps.resample, m, imgs[m], ref, spaces[m], transforms[spaces[m]])
        coverage = self.apply(steps.resample, "t2f_coverage", ones_like(imgs["t2f"]), ref, "t2f",
                              transforms["t2f"])
        out["brain"] = self.apply(steps.brain_mask, out)
        for s in SEQUENCES:
            out[s] = self.apply(steps.zscore, s, out[s], out["brain"], coverage if s == "t2f" else None)
        arrays = {k: sitk.GetArrayFromImage(out[k]) for k in ("t1c", "t2f", "brain", *SOURCE_MASKS)}
        arrays.update(self.apply(steps.derive_rois, arrays))
        self._finish()
        return PreprocessedStudy(
            arrays={k: arrays[k] for k in STORE_ARRAYS}, geometry=geometry_of(ref), steps=self.steps
        )


def preprocess_study(t1c: sitk.Image, t2f: sitk.Image, lesion: sitk.Image, lesion_space: Space,
                     tumor: sitk.Image, tumor_space: Space, params: PreprocessParams) -> PreprocessedStudy:
    """Run the whole pipeline on one study and record every decision.

    Reorient -> mask-grid checks -> N4 -> rigid T2f->T1c registration -> 1 mm grid over the T1c
    -> resample (images: ``params.image_interpolator``; masks: nearest, through their own
    space's transform, then > 0) -> brain mask (T1c, union lesion and tumor) -> z-score each
    sequence in the brain -> edema = lesion & ~tumor, overall = lesion | tumor.
    """
    return _Pipeline(params, None).run(
        {"t1c": t1c, "t2f": t2f, "lesion": lesion, "tumor": tumor},
        {"lesion": lesion_space, "tumor": tumor_space},
    )


def replay(steps: list[dict[str, Any]], t1c: sitk.Image, t2f: sitk.Image, lesion: sitk.Image,
           lesion_space: Space, tumor: sitk.Image, tumor_space: Space) -> PreprocessedStudy:
    """Rebuild a study's arrays from its recorded ``steps`` without re-deciding anything.

    The recorded bias fields, transform, thresholds and z-score statistics are applied as
    stored (nothing is fitted or optimised), so the arrays do not depend on the thread count
    that replays them. The inputs must be the recorded ones (sha256 checked) and the record
    must come from one of ``REPLAYABLE_VERSIONS`` (1.0.0 records replay with their own brain
    mask rule).
    """
    return _Pipeline(None, steps).run(
        {"t1c": t1c, "t2f": t2f, "lesion": lesion, "tumor": tumor},
        {"lesion": lesion_space, "tumor": tumor_space},
    )
