"""Who the synthetic patients are: Table 1 of Liu et al. 2024, identities, dates and latent truth.

Everything here is cheap (no images), so tests can check the clinical table at full scale and
the ATRX signal on hundreds of patients in well under a second.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from ingest.synth.acquire import Motion, draw_motion
from ingest.synth.centers import CENTERS, SIZES, SPECS
from ingest.synth.effects import CenterEffects, effects_for
from ingest.synth.phantom import LATENT, HeadParams, draw_head_params

GROUPS = ("mutant", "wildtype")  # "ATRX(+)" in the paper is the mutant (loss of expression)


@dataclass(frozen=True)
class Cell:
    """One center x ATRX group of Table 1."""

    n: int
    male: int
    female: int
    who3: int
    who4: int
    age: tuple[float, float]  # mean, SD
    vasari: tuple[float, float]


TABLE1: dict[str, dict[str, Cell]] = {
    "A": {"mutant": Cell(44, 29, 15, 2, 42, (52.7, 12.3), (71.7, 5.5)),
          "wildtype": Cell(38, 18, 20, 17, 21, (53.6, 11.4), (73.5, 7.2))},
    "B": {"mutant": Cell(59, 32, 27, 29, 30, (53.6, 14.3), (70.7, 5.9)),
          "wildtype": Cell(53, 33, 20, 35, 18, (54.4, 10.9), (72.8, 6.2))},
    "C": {"mutant": Cell(17, 9, 8, 7, 10, (45.4, 12.4), (71.5, 9.3)),
          "wildtype": Cell(23, 14, 9, 7, 16, (58.3, 15.2), (71.5, 6.2))},
}

AGE_RANGE = (18, 89)
VASARI_RANGE = (40.0, 100.0)
SCAN_DATES = (dt.date(2017, 1, 1), dt.date(2022, 6, 30))


def rng_for(seed: int, *keys: int | str) -> np.random.Generator:
    """An independent, platform-stable stream per (seed, keys): no draw order couples patients."""
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *ints]))


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def scaled_cell(cell: Cell, scale: float) -> Cell:
    """``cell`` with every count times ``scale`` (at least 2 patients), margins kept summing to n."""
    n = max(2, _round_half_up(cell.n * scale))

    def split(a: int, b: int) -> tuple[int, int]:
        exact = np.array([a, b], dtype=float) * n / cell.n
        base = np.floor(exact).astype(int)
        rest = n - int(base.sum())
        order = np.argsort(-(exact - base), kind="stable")
        base[order[:rest]] += 1
        return int(base[0]), int(base[1])

    male, female = split(cell.male, cell.female)
    who3, who4 = split(cell.who3, cell.who4)
    return Cell(n, male, female, who3, who4, cell.age, cell.vasari)


def matched_values(
    mean: float, sd: float, n: int, unit: float, bounds: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """``n`` values on a ``unit`` lattice whose mean and SD (ddof=1) match ``mean``/``sd``.

    Standard normals are standardised so the moments are exact before rounding; the rounding is
    done with largest remainders so the sum (hence the mean) stays exact to one unit, and draws
    that leave the bounds or miss the moments by more than 0.05 are redrawn (tiny cells that
    cannot hit them keep the closest draw).
    """
    best, best_err = None, np.inf
    for _ in range(500):
        z = rng.standard_normal(n)
        z = (z - z.mean()) / (z.std(ddof=1) if n > 1 else 1.0)
        exact = (mean + sd * z) / unit
        base = np.floor(exact)
        rest = _round_half_up(float(exact.sum())) - int(base.sum())
        order = np.argsort(-(exact - base), kind="stable")
        base[order[:rest]] += 1
        values = base * unit
        if values.min() < bounds[0] or values.max() > bounds[1]:
            continue
        err = max(abs(values.mean() - mean), abs(values.std(ddof=1) - sd) if n > 1 else 0.0)
        if err < best_err:
            best, best_err = values, err
        if err <= 0.05:
            break
    if best is None:
        raise ValueError(f"cannot draw {n} values with mean {mean} and SD {sd} inside {bounds}")
    return best


def clinical_table(scale: float = 1.0, seed: int = 0, centers: tuple[str, ...] = CENTERS) -> pd.DataFrame:
    """The clinical variables of every patient, shaped like Table 1 (no identities, no images).

    Columns: center, patient_index (order within the center), atrx (mutant/wildtype),
    sex (male/female), who_grade (3/4), age (int years), vasari (1 decimal).
    """
    frames = []
    for ci, center in enumerate(CENTERS):
        if center not in centers:
            continue
        rng = rng_for(seed, "clinical", ci)
        parts = []
        for group in GROUPS:
            cell = scaled_cell(TABLE1[center][group], scale)
            sex = rng.permutation(np.array(["male"] * cell.male + ["female"] * cell.female))
            who = rng.permutation(np.array([3] * cell.who3 + [4] * cell.who4))
            age = matched_values(*cell.age, cell.n, 1.0, AGE_RANGE, rng).astype(int)
            vasari = np.round(matched_values(*cell.vasari, cell.n, 0.1, VASARI_RANGE, rng), 1)
            parts.append(pd.DataFrame({"center": center, "atrx": group, "sex": sex, "who_grade": who,
                                       "age": age, "vasari": vasari}))
        frame = pd.concat(parts, ignore_index=True)
        frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
        frame.insert(1, "patient_index", np.arange(len(frame)))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class PatientPlan:
    """Everything needed to render and export one patient (picklable, so workers get it whole)."""

    seed: int
    center: str
    index: int
    patient_id: str
    atrx: str
    sex: str
    age: int
    who_grade: int
    vasari: float
    scan_date: dt.date
    pathology_date: dt.date
    birth_date: dt.date
    study_time: str
    name: str
    referring: str
    accession: str
    head: HeadParams
    motion: Motion
    t2f_tilt_deg: float
    fov_shift_mm: tuple[float, float, float]
    gain_jitter: tuple[float, float]  # t1c, t2f
    effects: CenterEffects  # the center's acquisition and annotation effects (or NO_EFFECTS)
    size: str = "compact"  # fields of view: centers.SIZES (the images only; nothing else changes)

    @property
    def mutant(self) -> bool:
        return self.atrx == "mutant"

    def phi(self) -> dict[str, str]:
        """The identifying DICOM attributes planted in every file of this patient."""
        spec = SPECS[self.center]
        return {
            "PatientName": self.name,
            "PatientID": self.patient_id,
            "PatientBirthDate": self.birth_date.strftime("%Y%m%d"),
            "PatientSex": "M" if self.sex == "male" else "F",
            "PatientAge": f"{self.age:03d}Y",
            "InstitutionName": spec.hospital,
            "InstitutionAddress": spec.address,
            "ReferringPhysicianName": self.referring,
            "AccessionNumber": self.accession,
            "StationName": spec.station,
            "OperatorsName": "TECH^" + spec.code,
        }


def _patient_ids(center: str, n: int, years: list[int], rng: np.random.Generator) -> list[str]:
    if center == "A":
        return [f"CQ{k:07d}" for k in rng.choice(np.arange(1000, 2_000_000), n, replace=False)]
    if center == "B":
        nums = rng.choice(np.arange(1, 10_000), n, replace=False)
        return [f"{y}-{k:04d}" for y, k in zip(years, nums, strict=True)]
    return [f"C-{k:04d}" for k in rng.choice(np.arange(1, 1000), n, replace=False)]


def _birth_date(scan: dt.date, age: int, days_before: int) -> dt.date:
    year = scan.year - age
    try:
        anniversary = scan.replace(year=year)
    except ValueError:  # 29 February
        anniversary = dt.date(year, 2, 28)
    return anniversary - dt.timedelta(days=days_before)


def center_plan(center: str, scale: float = 1.0, seed: int = 0, center_effects: bool = True,
                size: str = "compact") -> list[PatientPlan]:
    """The patients of one center, in ``patient_index`` order.

    ``center_effects`` only chooses how they are acquired and annotated, ``size`` the fields of
    view (``centers.SIZES``): every other field, the ATRX label and the latent properties
    included, is the same either way.
    """
    if size not in SIZES:
        raise ValueError(f"unknown synthetic scan size {size!r}; choose one of {', '.join(SIZES)}")
    fx = effects_for(center, center_effects)
    ci = CENTERS.index(center)
    table = clinical_table(scale, seed, centers=(center,))
    spec = SPECS[center]
    n = len(table)
    span = (SCAN_DATES[1] - SCAN_DATES[0]).days
    meta = [rng_for(seed, "meta", ci, i) for i in range(n)]
    scans = [SCAN_DATES[0] + dt.timedelta(days=int(r.integers(0, span + 1))) for r in meta]
    ids = _patient_ids(center, n, [s.year for s in scans], rng_for(seed, "ids", ci))
    plans = []
    for i, row in enumerate(table.itertuples(index=False)):
        r = meta[i]
        given = spec.given_male if row.sex == "male" else spec.given_female
        name = f"{spec.surnames[r.integers(len(spec.surnames))]}^{given[r.integers(len(given))]}"
        minutes = int(r.integers(7 * 60, 19 * 60))
        params_rng = rng_for(seed, "params", ci, i)
        head = draw_head_params(params_rng, row.atrx == "mutant")
        motion = draw_motion(params_rng, head.head_center)
        lo, hi = spec.t2f.tilt_deg
        plans.append(PatientPlan(
            seed=seed,
            center=center,
            index=i,
            patient_id=ids[i],
            atrx=str(row.atrx),
            sex=str(row.sex),
            age=int(row.age),
            who_grade=int(row.who_grade),
            vasari=float(row.vasari),
            scan_date=scans[i],
            pathology_date=scans[i] + dt.timedelta(days=int(r.integers(3, 22))),
            birth_date=_birth_date(scans[i], int(row.age), int(r.integers(1, 365))),
            study_time=f"{minutes // 60:02d}{minutes % 60:02d}{int(r.integers(60)):02d}",
            name=name,
            referring=spec.referring[r.integers(len(spec.referring))],
            accession=f"{int(r.integers(10**9, 10**10))}",
            head=head,
            motion=motion,
            t2f_tilt_deg=float(params_rng.uniform(lo, hi)) if hi > 0 else 0.0,
            fov_shift_mm=tuple(float(v) for v in params_rng.uniform(-4.0, 4.0, 3)),
            gain_jitter=(float(np.exp(params_rng.normal(0, 0.1))), float(np.exp(params_rng.normal(0, 0.1)))),
            effects=fx,
            size=size,
        ))
    return plans


def cohort_plan(scale: float = 1.0, seed: int = 0, centers: tuple[str, ...] = CENTERS,
                center_effects: bool = True, size: str = "compact") -> list[PatientPlan]:
    """All patients of ``centers``; a center's plan does not depend on which others are drawn."""
    return [p for c in CENTERS if c in centers
            for p in center_plan(c, scale, seed, center_effects, size)]


def rescan(plan: PatientPlan, center: str, center_effects: bool = True) -> PatientPlan:
    """The same patient planned for acquisition at ``center``: a travelling-subject scan.

    Anatomy, tumour, latent ATRX properties, motion and gain jitter stay; the scanner, grids,
    effects and annotators become ``center``'s. Fine texture detail is redrawn (the render stream
    is keyed by center), so use it to measure center effects on identical patients, not as a file
    of the cohort. An oblique center gets the middle of its tilt range when the plan had none.
    """
    lo, hi = SPECS[center].t2f.tilt_deg
    tilt = 0.0 if not hi else plan.t2f_tilt_deg if plan.center == center else (lo + hi) / 2.0
    return replace(plan, center=center, effects=effects_for(center, center_effects), t2f_tilt_deg=tilt)


def truth_row(plan: PatientPlan) -> dict[str, Any]:
    """One line of ``truth.csv``: identity, label, latent properties and nuisance geometry."""
    head = plan.head
    row: dict[str, Any] = {
        "center": plan.center,
        "patient_index": plan.index,
        "patient_id": plan.patient_id,
        "atrx_status": plan.atrx,
        "sex": plan.sex,
        "age": plan.age,
        "who_grade": plan.who_grade,
        "vasari": plan.vasari,
        "scan_date": plan.scan_date.isoformat(),
    }
    row.update({p.name: getattr(head, p.name) for p in LATENT})
    row["edema_ratio"] = float(np.exp(head.edema_log_ratio))
    row["tumor_radius_mm"] = head.tumor_radius_mm
    for axis, v in zip("xyz", head.tumor_center, strict=True):
        row[f"tumor_center_{axis}"] = v
    for axis, v in zip("xyz", plan.motion.rotation_deg, strict=True):
        row[f"t2f_rotation_{axis}_deg"] = v
    for axis, v in zip("xyz", plan.motion.shift_mm, strict=True):
        row[f"t2f_shift_{axis}_mm"] = v
    for axis, v in zip("xyz", plan.motion.center, strict=True):
        row[f"t2f_motion_center_{axis}"] = v
    row["t2f_tilt_deg"] = plan.t2f_tilt_deg
    return row


def truth_table(scale: float = 1.0, seed: int = 0, centers: tuple[str, ...] = CENTERS) -> pd.DataFrame:
    """``truth.csv`` without the realised volumes (which need the images): fast ground truth."""
    return pd.DataFrame([truth_row(p) for p in cohort_plan(scale, seed, centers)])


def plan_dict(plan: PatientPlan) -> dict[str, Any]:
    """The plan as plain data (dates as ISO strings), e.g. for debugging a single patient."""
    out = asdict(plan)
    for k in ("scan_date", "pathology_date", "birth_date"):
        out[k] = out[k].isoformat()
    return out
