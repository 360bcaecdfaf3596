"""Synthetic multicenter cohort: what three hospitals would export, shaped like Liu et al. 2024 Table 1.

See docs/synthetic_cohort.md for the model (latent ATRX signal, formats, planted PHI).
"""

from ingest.synth.centers import CENTERS, center_config, center_yaml, write_center_configs
from ingest.synth.cohort import TABLE1, clinical_table, cohort_plan, rescan, truth_table
from ingest.synth.dicom import write_dicom_series
from ingest.synth.effects import EFFECTS, NO_EFFECTS, CenterEffects, effects_for
from ingest.synth.export import (
    CohortSummary,
    PatientResult,
    generate_cohort,
    render_patient,
    write_clinical,
    write_patient,
)
from ingest.synth.phantom import LATENT, HeadParams, synth_head

__all__ = [
    "CENTERS",
    "EFFECTS",
    "LATENT",
    "NO_EFFECTS",
    "TABLE1",
    "CenterEffects",
    "CohortSummary",
    "HeadParams",
    "PatientResult",
    "center_config",
    "center_yaml",
    "clinical_table",
    "cohort_plan",
    "effects_for",
    "generate_cohort",
    "render_patient",
    "rescan",
    "synth_head",
    "truth_table",
    "write_center_configs",
    "write_clinical",
    "write_dicom_series",
    "write_patient",
]
