"""The study protocol as configuration: ``StudyConfig`` and ``load_study``.

The defaults are the protocol of Liu et al. 2024 (QIMS 14:251), so ``StudyConfig()`` and the
shipped ``training/study.yaml`` describe the same study; a YAML file only needs the keys it
changes. Every level forbids unknown keys, so a misspelt key is a ``ConfigError`` naming the
file and the key instead of a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from atrx.config.base import ConfigError, StrictModel, load_yaml_model
from atrx.names import ROIS, SEQUENCES, view_name

__all__ = [
    "DEFAULT_STUDY_PATH",
    "ConfigError",
    "ImagingModelSpec",
    "StudyConfig",
    "load_study",
]

DEFAULT_STUDY_PATH = Path(__file__).with_name("study.yaml")

FeatureType = Literal["dl", "radiomics", "hybrid"]
RoiName = Literal["edema", "tumor", "overall"]
SequenceName = Literal["t1c", "t2f"]
ClassifierName = Literal["lr", "rf", "svm"]
ClinicalVariable = Literal["age", "sex", "who_grade", "vasari_score"]
StratifyColumn = Literal["sex", "who_grade", "atrx_mutant"]

_TYPE_LABEL = {"dl": "DL", "radiomics": "radiomics", "hybrid": "hybrid"}
_TYPE_KINDS = {"dl": ("dl",), "radiomics": ("rad",), "hybrid": ("rad", "dl")}


class SplitConfig(StrictModel):
    """Development centers split train/validation (4:1, stratified); external test centers."""

    development_centers: list[str] = Field(default_factory=lambda: ["A", "B"], min_length=1)
    test_centers: list[str] = Field(default_factory=lambda: ["C"], min_length=1)
    validation_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    stratify_by: list[StratifyColumn] = Field(
        default_factory=lambda: ["sex", "who_grade"], min_length=1
    )

    @model_validator(mode="after")
    def _disjoint(self) -> SplitConfig:
        both = sorted(set(self.development_centers) & set(self.test_centers))
        if both:
            raise ValueError(
                f"centers {both} are both development and test centers; a test center must be "
                "external (never seen in training)"
            )
        return self


class SeedsConfig(StrictModel):
    """Seeds of every random step, so a run can be repeated exactly."""

    split: int = 0
    cv: int = 0
    selection: int = 0


class SelectionConfig(StrictModel):
    """The feature-selection chain: Welch t-test -> LASSO (CV AUC) -> backward AIC.

    ``lasso_cs`` C values span glmnet's default lambda path (the paper's analyses ran in R):
    ``lasso_min_ratio`` is its ``lambda.min.ratio`` (None: 0.01 with fewer rows than features,
    else 1e-4). ``lasso_max_features`` (not in the paper; default off) keeps only that many LASSO
    features with the largest |coefficient| before the backward AIC search, whose cost grows
    with the square of its input.
    """

    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    lasso_cv: int = Field(10, ge=2)
    lasso_cs: int = Field(20, ge=1)
    lasso_min_ratio: float | None = Field(None, gt=0.0, lt=1.0)
    lasso_max_features: int | None = Field(None, ge=1)
    max_features: int = Field(19, ge=1)


class ImagingConfig(StrictModel):
    """The imaging models: every feature type x ROI, each on all the sequences given.

    ``lr_c`` is the L2 strength (scikit-learn's C) of the imaging LR on the z-scored selected
    features. Not in the paper, whose LR was R's unpenalised ``glm``: with up to 19 features on
    ~120-row folds the classes are often separated, the MLE does not exist, and the imaging score's
    scale then differs several-fold between folds and the final fit, which breaks the fusion LR
    learnt on out-of-fold scores (see docs/decisions.md).
    """

    feature_types: list[FeatureType] = Field(
        default_factory=lambda: ["dl", "radiomics", "hybrid"], min_length=1
    )
    rois: list[RoiName] = Field(default_factory=lambda: list(ROIS), min_length=1)
    sequences: list[SequenceName] = Field(default_factory=lambda: list(SEQUENCES), min_length=1)
    cv_folds: int = Field(5, ge=2)
    #: how the imaging models are ranked: ``auto`` = leave-one-center-out CV when the training
    #: rows come from two or more centers (it predicts transfer to a new center), else ``random``
    #: (stratified ``cv_folds``-fold CV, the paper's); both are always reported
    ranking: Literal["auto", "random", "loco"] = "auto"
    lr_c: float = Field(1.0, gt=0.0)
    compare_classifiers: list[ClassifierName] = Field(
        default_factory=lambda: ["lr", "rf", "svm"], min_length=1
    )

    @field_validator("feature_types", "rois", "sequences", "compare_classifiers")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate entries in {v}")
        return v


class CutoffConfig(StrictModel):
    """How the fusion model's high/low risk cutoff (on its probability) is fixed.

    ``youden``: maximises sensitivity + specificity on the training rows (the out-of-fold fused
    probabilities, see ``training.fusion``); ``fixed``: use ``value`` (the paper reports 0.48).
    """

    policy: Literal["youden", "fixed"] = "youden"
    value: float | None = Field(None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _value_for_fixed(self) -> CutoffConfig:
        if self.policy == "fixed" and self.value is None:
            raise ValueError("policy 'fixed' needs a value in (0, 1), e.g. value: 0.48")
        if self.policy == "youden" and self.value is not None:
            raise ValueError("value is only used with policy 'fixed'; remove it or set policy: fixed")
        return self


class BaselineConfig(StrictModel):
    """A plain first-order model fitted beside the paper's: if the selection chain cannot beat
    it on a new center, the report says so at once (not in the paper).

    An L2 logistic regression (C = ``lr_c``) on the z-scored ``original_firstorder`` radiomics
    features of ``views``, with no selection (:mod:`training.baseline`). Views no imaging model
    uses are read from Feast for it; ``enabled: false`` leaves the protocol as the paper's.
    """

    enabled: bool = True
    views: list[str] = Field(default_factory=lambda: ["rad_overall_t2f", "rad_overall_t1c",
                                                      "rad_tumor_t1c"], min_length=1)
    lr_c: float = Field(1.0, gt=0.0)

    @field_validator("views")
    @classmethod
    def _radiomics_views(cls, v: list[str]) -> list[str]:
        known = [view_name("rad", roi, seq) for roi in ROIS for seq in SEQUENCES]
        bad = [x for x in v if x not in known]
        if bad:
            raise ValueError(f"{bad} are not radiomics views; use some of {known}")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate entries in {v}")
        return v


class DiagnosticsConfig(StrictModel):
    """What the report adds to judge transfer: per-center shift of every selected feature and the
    selection's stability over ``bootstrap`` resamples of the training rows (0 turns it off)."""

    bootstrap: int = Field(20, ge=0)
    seed: int = 0


class HarmonisationConfig(StrictModel):
    """Per-center ComBat on the imaging features (not in the paper; :mod:`training.harmonise`).

    ``combat``: fitted on the training rows only (batch = center, labels unused); every other
    center (the test center, a new one) is mapped by its own location/scale estimates, from its
    features and never its labels. The registered model carries the estimates of its features
    and serving applies them; the report also gives the test AUCs on raw (unharmonised) test
    features. ``none``: the paper's protocol on raw features.
    """

    method: Literal["none", "combat"] = "none"


class NormalisationConfig(StrictModel):
    """Intensities against reference tissue (not in the paper; :mod:`training.reference_norm`).

    ``reference``: the original-image first-order intensities of every radiomics view are
    re-expressed against the median and IQR of normal-appearing brain within 10 mm of the lesion
    (each patient's own, stored with the view by the features job); the registered model applies
    the same map to online features. ``none``: the whole-brain z-score of ingest alone."""

    method: Literal["none", "reference"] = "none"


class FusionConfig(StrictModel):
    """Which clinical variables the fusion LR takes (not in the paper; issue 12).

    ``clinical_selection``: ``loco`` (the default, measured in docs/training.md) = backward
    elimination by leave-one-center-out AUC of the fusion LR on the development centers
    (:mod:`training.clinical_selection`): a variable stays only if what one center teaches about
    it holds in another; ``none`` = all of ``clinical_variables`` (the paper's). The clinical
    model keeps every variable either way."""

    clinical_selection: Literal["none", "loco"] = "loco"


class StabilityConfig(StrictModel):
    """Keep only radiomics features that are stable under small mask and grid perturbations (not
    in the paper; issue 12: the lever that moved held-out-center AUC, docs/training.md).
    ``min_icc``: the ICC(2,1) a radiomics feature needs in the table ``atrx stability`` writes
    (``null``: no filter, the paper's protocol). Deep features are not filtered. ``patients`` and
    ``seed``: the development-center sample ``atrx train`` measures when the table is missing."""

    min_icc: float | None = Field(0.75, ge=0.0, le=1.0)
    patients: int = Field(10, ge=2)
    seed: int = 0


class PromotionConfig(StrictModel):
    """Retraining promotes a candidate when AUC(candidate) >= AUC(production) - margin, both on
    the candidate's validation + test rows. A negative margin demands a strict improvement.

    With no production model yet there is nothing to compare with, so the first model is
    promoted only when the lower bound of the DeLong 95% CI of its AUC on the same rows lies
    above ``first_model_auc_floor`` (``atrx retrain --promote-below-floor`` overrides it)."""

    margin: float = Field(
        0.02, ge=-1.0, le=1.0,
        description="promote when AUC(candidate) >= AUC(production) - margin "
                    "(both on the candidate's validation + test rows)",
    )
    first_model_auc_floor: float = Field(
        0.5, ge=0.0, lt=1.0,
        description="with no production model, promote only when the DeLong 95% CI lower bound "
                    "of the candidate's AUC (validation + test rows) lies above this floor "
                    "(0.5: better than chance); `atrx retrain --promote-below-floor` overrides it",
    )


@dataclass(frozen=True)
class ImagingModelSpec:
    """One of the imaging models: its name, the paper's label and the feature views it uses."""

    name: str
    label: str
    feature_type: str
    roi: str
    views: tuple[str, ...]


class StudyConfig(StrictModel):
    """The whole protocol of one training study (defaults: Liu et al. 2024)."""

    name: str = "liu2024"
    seeds: SeedsConfig = Field(default_factory=SeedsConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    imaging: ImagingConfig = Field(default_factory=ImagingConfig)
    clinical_variables: list[ClinicalVariable] = Field(
        default_factory=lambda: ["age", "sex", "who_grade", "vasari_score"], min_length=1
    )
    cutoff: CutoffConfig = Field(default_factory=CutoffConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    normalisation: NormalisationConfig = Field(default_factory=NormalisationConfig)
    harmonisation: HarmonisationConfig = Field(default_factory=HarmonisationConfig)
    stability: StabilityConfig = Field(default_factory=StabilityConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)

    @field_validator("clinical_variables")
    @classmethod
    def _unique_clinical(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate entries in {v}")
        return v

    def imaging_models(self) -> list[ImagingModelSpec]:
        """The imaging models in the paper's table order (ROI, then feature type)."""
        out = []
        for roi in self.imaging.rois:
            for ftype in self.imaging.feature_types:
                views = tuple(
                    view_name(kind, roi, seq)
                    for kind in _TYPE_KINDS[ftype]
                    for seq in self.imaging.sequences
                )
                out.append(
                    ImagingModelSpec(
                        name=f"{roi}_{ftype}",
                        label=f"{roi.capitalize()} {_TYPE_LABEL[ftype]}",
                        feature_type=ftype,
                        roi=roi,
                        views=views,
                    )
                )
        return out

    def imaging_views(self) -> list[str]:
        """Every imaging feature view some imaging model needs, without repeats."""
        seen: dict[str, None] = {}
        for spec in self.imaging_models():
            seen.update(dict.fromkeys(spec.views))
        return list(seen)

    def baseline_views(self) -> list[str]:
        """The views the first-order baseline reads (none when it is disabled)."""
        return list(self.baseline.views) if self.baseline.enabled else []

    def feature_views(self) -> list[str]:
        """Every feature view the study reads from Feast: the imaging models' views, then the
        baseline's views no imaging model uses (without repeats)."""
        imaging = self.imaging_views()
        return imaging + [v for v in self.baseline_views() if v not in imaging]

    def study_hash(self) -> str:
        """sha256 of the canonical JSON of the full configuration (defaults included)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_study(path: str | os.PathLike[str] | None = None) -> StudyConfig:
    """Read a study YAML (default: ``training/study.yaml``); ``ConfigError`` names file and key."""
    return load_yaml_model(StudyConfig, DEFAULT_STUDY_PATH if path is None else path)
