"""Masks as 3D Slicer saves them: cropped to their extent, several segments in one ``.seg.nrrd``.

A crop of the sequence's grid is padded back onto it voxel for voxel (a note says so); a mask that
is not a crop (off the lattice, outside, another spacing or direction, a default header) is still
refused, with the reason, by the plan's check and by the ingest's read alike. Real NIfTI/NRRD files.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from atrx.config.center import CenterConfig, MaskRule
from atrx.geometry import as_grid
from ingest.discover import PatientPlan, SourceRef, StudyPlan, plan_center
from ingest.mask_grid import pad_to_grid, subgrid_offset
from ingest.masks import MaskError, MaskSelection, check_mask, crop_fits, load_mask
from ingest.patient import ingest_patient, source_digest
from ingest.preprocess import PreprocessError, PreprocessParams
from ingest.preprocess.ops import check_same_geometry
from ingest.readers import ReadError, read_mask

SEGMENTS = [("necrosis", 1), ("overall lesion", 2), ("enhancing tumor", 3)]


def _reference(size=(40, 44, 18), spacing=(1.5, 1.5, 3.0), degrees=12.0) -> sitk.Image:
    """An oblique, off-centre grid, as a real series has."""
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(rot.ravel()))
    image.SetOrigin((-31.7, 12.3, -24.9))
    return image


def _phantom(ref: sitk.Image) -> tuple[sitk.Image, np.ndarray]:
    """A head with a lesion on ``ref``'s grid, and its (z, y, x) labelmap (values of SEGMENTS)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in ref.GetSize()[::-1]], indexing="ij"), -1)
    centre = np.array(ref.GetSize()[::-1]) / 2
    r_head = np.linalg.norm((idx - centre) / (centre * 0.85), axis=-1)
    r_les = np.linalg.norm((idx - centre - [1, 3, 4]) / [2.5, 6, 7], axis=-1)
    values = np.where(r_head < 0.85, 400.0, 0.0) + np.where((r_head >= 0.88) & (r_head < 0.98), 900.0, 0.0)
    values = values + np.where(r_les < 1, 300.0, 0.0) + np.random.default_rng(0).normal(0, 5, values.shape) + 20
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.CopyInformation(ref)
    labels = np.where(r_les < 1, 2, 0).astype(np.uint8)
    labels[r_les < 0.5] = 3
    labels[r_les < 0.2] = 1
    return image, labels


def _on(array: np.ndarray, ref: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ref)
    return image


def _slicer_crop(full: sitk.Image) -> sitk.Image:
    """What Slicer saves by default: the bounding box of the segments, geometry kept."""
    box = sitk.LabelShapeStatisticsImageFilter()
    box.Execute(sitk.Cast(full != 0, sitk.sitkUInt8))
    x, y, z, sx, sy, sz = box.GetBoundingBox(1)
    return sitk.RegionOfInterest(full, (sx, sy, sz), (x, y, z))


def _write_seg(path: Path, image: sitk.Image, segments=SEGMENTS) -> str:
    """A 3-D labelmap ``.seg.nrrd`` with Slicer's segment keys (SimpleITK keeps them)."""
    image = sitk.Image(image)
    for i, (name, value) in enumerate(segments):
        image.SetMetaData(f"Segment{i}_ID", f"Segment_{i + 1}")
        image.SetMetaData(f"Segment{i}_Name", name)
        image.SetMetaData(f"Segment{i}_LabelValue", str(value))
        image.SetMetaData(f"Segment{i}_Layer", "0")
        image.SetMetaData(f"Segment{i}_Color", "0.5 0.5 0.5")
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    sitk.WriteImage(image, str(path), True)
    return str(path)


def _write_layered(path: Path, layers: np.ndarray, like: sitk.Image, segments: list[tuple[str, int, int]]) -> str:
    """Slicer's 4-D layered ``.seg.nrrd`` (kinds ``list domain domain domain``), written by hand."""
    d = np.array(like.GetDirection()).reshape(3, 3) * np.array(like.GetSpacing())
    vec = " ".join("(" + ",".join(f"{v:.17g}" for v in d[:, k]) + ")" for k in range(3))
    header = ["NRRD0004", "type: unsigned char", "dimension: 4", "space: left-posterior-superior",
              f"sizes: {layers.shape[3]} {' '.join(str(n) for n in like.GetSize())}",
              f"space directions: none {vec}", "kinds: list domain domain domain", "encoding: gzip",
              "space origin: (" + ",".join(f"{v:.17g}" for v in like.GetOrigin()) + ")",
              "Segmentation_MasterRepresentation:=Binary labelmap"]
    for i, (name, value, layer) in enumerate(segments):
        header += [f"Segment{i}_ID:=Segment_{i + 1}", f"Segment{i}_Name:={name}",
                   f"Segment{i}_LabelValue:={value}", f"Segment{i}_Layer:={layer}"]
    data = np.ascontiguousarray(layers.astype(np.uint8)).tobytes()  # (z, y, x, layer): layer fastest
    Path(path).write_bytes(("\n".join(header) + "\n\n").encode() + gzip.compress(data))
    return str(path)


def _rule(segment: str | int | None = None, space: str = "t2f", **kw) -> MaskRule:
    return MaskRule.model_validate({"glob": "*.seg.nrrd", "space": space, **kw,
                                    **({} if segment is None else {"segment": segment})})


def test_a_slicer_crop_is_padded_back_voxel_for_voxel(tmp_path: Path) -> None:
    ref = _reference()
    _, labels = _phantom(ref)
    crop = _slicer_crop(_on(labels, ref))
    assert crop.GetSize() != ref.GetSize() and crop.GetOrigin() != ref.GetOrigin()
    offset = subgrid_offset(as_grid(crop), as_grid(ref))
    assert np.array_equal(pad_to_grid(sitk.GetArrayFromImage(crop), offset, ref.GetSize()), labels)
    loaded = load_mask(_write_seg(tmp_path / "m.seg.nrrd", crop), MaskSelection.of(_rule("overall lesion")), ref,
                       name="lesion", space="t2f", patient="P013")
    padded = loaded.image
    assert padded.GetSize() == ref.GetSize() and loaded.offset == offset
    # every voxel of the crop lands at the physical point it had
    for k, j, i in np.argwhere(sitk.GetArrayViewFromImage(crop) == 2)[::7]:
        here = crop.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        there = padded.TransformIndexToPhysicalPoint((int(i) + offset[0], int(j) + offset[1], int(k) + offset[2]))
        assert np.allclose(here, there, atol=1e-6)
        assert padded[int(i) + offset[0], int(j) + offset[1], int(k) + offset[2]] == 1
    assert loaded.voxels == int((labels == 2).sum()) == int(sitk.GetArrayViewFromImage(padded).sum())
    # a patient with several studies pairs a cropped mask with the study it is a crop of
    assert crop_fits(str(tmp_path / "m.seg.nrrd"), as_grid(ref))
    assert not crop_fits(str(tmp_path / "m.seg.nrrd"), as_grid(_reference(spacing=(1.0, 1.0, 3.0))))
    n, m = int(np.prod(crop.GetSize())), int(np.prod(ref.GetSize()))
    assert loaded.note == (f"mask lesion of patient P013: cropped to {n} of {m} voxels (Slicer-style), "
                           f"padded onto the t2f grid at voxel {offset}")


def _shifted(image: sitk.Image, voxels: tuple[float, float, float]) -> sitk.Image:
    out = sitk.Image(image)
    out.SetOrigin(image.TransformContinuousIndexToPhysicalPoint(voxels))
    return out


def _not_crops(ref: sitk.Image, crop: sitk.Image) -> dict[str, tuple[sitk.Image, str]]:
    respaced = sitk.Image(crop)
    respaced.SetSpacing((1.0, 1.0, 3.0))
    turned = sitk.Image(crop)
    turned.SetDirection(ref.GetDirection()[3:6] + ref.GetDirection()[0:3] + ref.GetDirection()[6:])
    beyond = crop.GetSize()[0] + ref.GetSize()[0] - crop.GetSize()[0] // 2
    return {
        "half a voxel off": (_shifted(crop, (0.5, 0.0, 0.0)), "voxel off the image's lattice along x"),
        "outside": (_shifted(crop, (float(beyond), 0.0, 0.0)), "lies outside the image's grid"),
        "spacing": (respaced, "its spacing differs"),
        "direction": (turned, "its direction differs"),
    }


@pytest.mark.parametrize("case", ["half a voxel off", "outside", "spacing", "direction"])
def test_a_mask_that_is_not_a_crop_is_refused_by_plan_and_ingest(tmp_path: Path, case: str) -> None:
    ref = _reference()
    image, labels = _phantom(ref)
    mask, reason = _not_crops(ref, _slicer_crop(_on(labels, ref)))[case]
    path = _write_seg(tmp_path / "m.seg.nrrd", mask)
    (finding,) = check_mask(path, _rule("overall lesion"), as_grid(ref), "lesion")
    assert finding.blocking and finding.what.startswith("mask lesion does not match the geometry of t2f (")
    assert reason in finding.what and "re-export" in finding.fix
    with pytest.raises(MaskError, match=reason):
        subgrid_offset(as_grid(mask), as_grid(ref))
    # the ingest reads it as drawn, and the preprocessing's geometry check refuses it
    read = read_mask(SourceRef("file", (path,), "m.seg.nrrd"), _rule("overall lesion"), image, "lesion")
    with pytest.raises(PreprocessError, match="does not lie on its image's grid"):
        check_same_geometry(read, image, "mask 'lesion' (drawn on t2f)")


def test_a_default_header_is_refused_even_where_its_numbers_fit(tmp_path: Path) -> None:
    # a 1 mm axial image whose origin is on integers: a header-less crop would "fit" at (4, 6, 2)
    ref = sitk.Image([30, 32, 20], sitk.sitkUInt8)
    ref.SetOrigin((-4.0, -6.0, -2.0))
    blank = sitk.GetImageFromArray(np.ones((5, 6, 7), np.uint8))  # origin 0, spacing 1, identity
    path = str(tmp_path / "blank.nii.gz")
    sitk.WriteImage(blank, path)
    (finding,) = check_mask(path, _rule(labels=[1]), as_grid(ref), "tumor")
    assert finding.blocking and "does not match the geometry of t2f" in finding.what
    assert "default header (origin 0, spacing 1, identity direction)" in finding.what
    # and the full-size header-less mask on a real (oblique) header, as before
    real = _reference()
    full = sitk.GetImageFromArray(np.ones(real.GetSize()[::-1], np.uint8))
    sitk.WriteImage(full, path)
    (finding,) = check_mask(path, _rule(labels=[1]), as_grid(real), "tumor")
    assert finding.blocking and "does not match the geometry of t2f" in finding.what
    assert "default header" in finding.what


def test_segments_are_chosen_by_name_or_label_value(tmp_path: Path) -> None:
    ref = _reference()
    _, labels = _phantom(ref)
    path = _write_seg(tmp_path / "m.seg.nrrd", _on(labels, ref))
    for wanted, value in (("overall lesion", 2), ("Enhancing Tumor ", 3), (1, 1), ("3", 3), ("Segment_2", 2)):
        loaded = load_mask(path, MaskSelection.of(_rule(wanted)), ref)
        assert loaded.segment is not None and loaded.segment.label_value == value, wanted
        assert np.array_equal(sitk.GetArrayViewFromImage(loaded.image), (labels == value).astype(np.uint8))
        assert loaded.note is None  # on the full grid: nothing to say
    with pytest.raises(MaskError, match="no segment named 'edema'") as e:
        load_mask(path, MaskSelection.of(_rule("edema")), ref, name="lesion")
    assert "'necrosis' (label 1, layer 0), 'overall lesion' (label 2" in e.value.message
    assert e.value.fix == 'set masks.lesion.segment to one of those names, e.g. segment: "necrosis"'


def test_several_segments_and_none_chosen_is_a_clear_error(tmp_path: Path) -> None:
    ref = _reference()
    image, labels = _phantom(ref)
    path = _write_seg(tmp_path / "m.seg.nrrd", _on(labels, ref))
    (finding,) = check_mask(path, _rule(), as_grid(ref), "lesion")
    assert finding.blocking and "masks.lesion: the segmentation has 3 segments" in finding.what
    assert "'enhancing tumor' (label 3, layer 0)" in finding.what
    assert finding.fix == 'set masks.lesion.segment in the center file, e.g. segment: "necrosis"'
    with pytest.raises(ReadError, match="has 3 segments") as e:
        read_mask(SourceRef("file", (path,), "m.seg.nrrd"), _rule(), image, "lesion")
    assert e.value.fix and "segment:" in e.value.fix
    # labels written in the center file keep working on a 3-D labelmap (as before segments)
    loaded = load_mask(path, MaskSelection.of(_rule(labels=[1, 3])), ref)
    assert loaded.segment is None and loaded.voxels == int(np.isin(labels, [1, 3]).sum())
    # one segment and no choice: that one
    one = _write_seg(tmp_path / "one.seg.nrrd", _on((labels == 2).astype(np.uint8) * 5, ref), [("lesion", 5)])
    assert load_mask(one, MaskSelection.of(_rule()), ref).voxels == int((labels == 2).sum())


def test_layered_seg_nrrd_reads_each_segment_from_its_layer(tmp_path: Path) -> None:
    ref = _reference()
    image, labels = _phantom(ref)
    lesion, tumor = labels > 0, labels == 3  # overlapping segments: Slicer puts them on two layers
    layers = np.stack([lesion.astype(np.uint8), tumor.astype(np.uint8)], axis=-1)
    full = _write_layered(tmp_path / "full.seg.nrrd", layers, ref, [("overall lesion", 1, 0), ("tumor", 1, 1)])
    for name, truth in (("overall lesion", lesion), ("tumor", tumor)):
        loaded = load_mask(full, MaskSelection.of(_rule(name)), ref)
        assert loaded.segment is not None and loaded.segment.name == name
        assert np.array_equal(sitk.GetArrayViewFromImage(loaded.image), truth.astype(np.uint8))
    with pytest.raises(MaskError, match="label value 1 is used by 2 segments on different layers"):
        load_mask(full, MaskSelection.of(_rule(1)), ref)
    with pytest.raises(MaskError, match="has 2 segments"):  # layered: labels cannot choose
        load_mask(full, MaskSelection.of(_rule(labels=[1])), ref)
    # cropped and layered, as Slicer saves overlapping segments by default
    x, y, z = 6, 9, 3
    size = (ref.GetSize()[0] - 12, ref.GetSize()[1] - 16, ref.GetSize()[2] - 5)
    like = sitk.RegionOfInterest(_on(labels, ref), size, (x, y, z))
    cropped = _write_layered(tmp_path / "crop.seg.nrrd", layers[z:z + size[2], y:y + size[1], x:x + size[0]], like,
                             [("overall lesion", 1, 0), ("tumor", 1, 1)])
    findings = check_mask(cropped, _rule("tumor", space="t1c"), as_grid(ref), "tumor", "P013")
    assert [f.blocking for f in findings] == [False] and "padded onto the t1c grid at voxel (6, 9, 3)" in findings[0].what
    read = read_mask(SourceRef("file", (cropped,), "crop.seg.nrrd"), _rule("tumor"), image, "tumor")
    assert np.array_equal(sitk.GetArrayViewFromImage(read), tumor.astype(np.uint8))
    check_same_geometry(read, image, "mask 'tumor' (drawn on t1c)")  # on the grid: no error


def _study(tmp_path: Path, cropped: bool) -> tuple[PatientPlan, CenterConfig]:
    folder = tmp_path / ("crop" if cropped else "full") / "P013"
    folder.mkdir(parents=True)
    ref = _reference(degrees=0.0)
    image, labels = _phantom(ref)
    for seq in ("t1c", "t2f"):
        sitk.WriteImage(image, str(folder / f"P013-{seq}.nii.gz"))
    seg = _on(labels, ref)
    path = _write_seg(folder / "P013.seg.nrrd", _slicer_crop(seg) if cropped else seg)
    cfg = CenterConfig.model_validate({
        "center": "T", "source": str(folder.parent), "format": "nifti", "base_dir": str(tmp_path),
        "sequences": {"t1c": {"glob": "*-t1c.nii.gz"}, "t2f": {"glob": "*-t2f.nii.gz"}},
        "masks": {"lesion": {"glob": "*.seg.nrrd", "space": "t2f", "segment": "overall lesion"},
                  "tumor": {"glob": "*.seg.nrrd", "space": "t1c", "segment": 3}},
        "clinical": {"path": "clinical.csv", "columns": {
            "patient_id": "id", "age": "age", "sex": "sex", "who_grade": "who", "vasari_score": "vasari",
            "atrx_status": "atrx", "pathology_date": "date", "scan_date": "scan"}},
        "synthetic": True, "deid": {"key": "k" * 32},
    })
    (folder.parent / "clinical.csv").write_text("id,age,sex,who,vasari,atrx,date,scan\nP013,50,female,4,70,mutant,2021-01-01,2020-12-01\n")

    def ref_(p: Path) -> SourceRef:
        return SourceRef("file", (str(p),), p.name)

    plan = PatientPlan("P013", "T-0123456789ab", str(folder), studies=[StudyPlan(
        "s0123456789", None, ref_(folder / "P013-t1c.nii.gz"), ref_(folder / "P013-t2f.nii.gz"),
        ref_(Path(path)), ref_(Path(path)))])
    return plan, cfg


def test_ingest_of_a_cropped_seg_nrrd_equals_that_of_the_full_mask(tmp_path: Path) -> None:
    params = PreprocessParams(n4_enabled=False, registration="none")
    arrays = {}
    for cropped in (False, True):
        plan, cfg = _study(tmp_path, cropped)
        (out,) = ingest_patient(plan, cfg, str(tmp_path / f"images{cropped}.zarr"), params, {})
        assert out.status == "ingested", (out.reason, out.fix)
        arrays[cropped] = out.roi_voxels
        assert out.sources["lesion"]["segment"] == "overall lesion" and out.sources["tumor"]["segment"] == 3
    assert arrays[True] == arrays[False] and arrays[True]["tumor"] > 0 and arrays[True]["edema"] > 0


def test_the_source_hash_changes_only_where_a_segment_is_set(tmp_path: Path) -> None:
    plan, cfg = _study(tmp_path, cropped=False)
    study = plan.studies[0]
    with_segment, _ = source_digest(study, "p", cfg)
    masks = cfg.masks.model_copy(update={"lesion": cfg.masks.lesion.model_copy(update={"segment": None}),
                                         "tumor": cfg.masks.tumor.model_copy(update={"segment": None})})
    plain_cfg = cfg.model_copy(update={"masks": masks})
    plain, sources = source_digest(study, "p", plain_cfg)
    assert plain != with_segment and "segment" not in sources["lesion"]
    assert set(sources["lesion"]) == {"sha256", "n_files", "kind", "space", "labels"}  # as before segments


def test_validate_accepts_a_cropped_seg_nrrd_with_a_note(tmp_path: Path) -> None:
    plan, cfg = _study(tmp_path, cropped=True)
    center = plan_center(cfg, "k" * 32)
    (patient,) = center.patients
    assert patient.ok, [p.what for p in patient.problems]
    notes = [p.what for p in patient.problems if not p.blocking]
    assert any("mask lesion of patient P013: cropped to" in n and "padded onto the t2f grid" in n for n in notes)
    assert any("mask tumor of patient P013: cropped to" in n and "padded onto the t1c grid" in n for n in notes)
