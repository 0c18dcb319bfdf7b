"""`tgrowth data-check` on good and broken folders, and every bad input the issue lists."""

import json
import shutil

import numpy as np
import pytest

from data_modules.check import check_dataset
from data_modules.formats import discover
from data_modules.slices import load_slice
from tests.factories import phantom, truncate, write_authors2d, write_brats, write_longitudinal, write_nifti
from tgrowth.cli import main
from tgrowth.errors import DataError


@pytest.fixture
def good(tmp_path):
    return write_longitudinal(tmp_path / "d", n_subjects=2, n_timepoints=3, spacing=(1.0, 1.5, 2.0))


def test_data_check_good_folder_text_and_json(good, capsys):
    assert main(["data-check", str(good)]) == 0
    text = capsys.readouterr().out
    assert "format longitudinal, 2 subject(s), 6 timepoint(s)" in text and "OK: 0 error(s)" in text
    assert main(["data-check", str(good), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["format"] == "longitudinal" and rep["problems"] == []
    s = rep["subjects"][0]
    assert s["subject"] == "SUB01"
    t = s["timepoints"][2]
    assert set(t) >= {"timepoint", "day", "whole_tumor_volume_mm3", "max_axial_area_mm2", "max_area_slice", "problems"}
    assert t["timepoint"] == "002" and t["day"] == 75.0 and t["problems"] == []
    # exact sizes from the factory's seg and the 1 x 1.5 x 2 mm voxels
    _, seg = phantom(radius=4.0, seed=2)
    assert t["whole_tumor_volume_mm3"] == pytest.approx((seg > 0).sum() * 3.0)
    per_slice = (seg > 0).sum(axis=(0, 1))
    assert t["max_area_slice"] == int(np.argmax(per_slice))
    assert t["max_axial_area_mm2"] == pytest.approx(per_slice.max() * 1.5)
    assert t["shape"] == [24, 20, 12] and t["spacing_mm"] == [1.0, 1.5, 2.0]


def test_data_check_writes_report_when_asked(good, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["data-check", str(good), f"output_dir={out}"]) == 0
    assert json.loads((out / "report.json").read_text())["ok"] is True
    assert (out / "errors.csv").read_text().startswith("severity,subject,timepoint,file,message")


def test_data_check_2d_volume_is_area_times_thickness(tmp_path):
    rep = check_dataset(write_authors2d(tmp_path / "a"))
    t = {s["subject"]: s for s in rep["subjects"]}["00000003"]["timepoints"][0]
    assert t["slice"] == 7 and t["max_area_slice"] == 7
    assert t["whole_tumor_volume_mm3"] == pytest.approx(t["max_axial_area_mm2"] * 1.0) and t["max_axial_area_mm2"] > 0


def test_data_check_real_sample(brats2d_root):
    rep = check_dataset(brats2d_root)
    assert rep["ok"] and rep["format"] == "authors2d" and rep["n_timepoints"] == 20
    test = {s["subject"]: s for s in rep["subjects"]}["00044000"]["timepoints"]
    assert [t["max_area_slice"] for t in test] == [42, 43, 44]
    assert all(560 <= t["max_axial_area_mm2"] <= 660 for t in test)


# --------------------------------------------------------------------------- bad inputs
def _nan(root):
    a = np.asarray(phantom()[0]["t1c"])
    a[3, 3, 3] = np.inf
    write_nifti(root / "SUB02-001" / "SUB02-001-t1c.nii.gz", a)


def _labels(root):
    seg = phantom()[1]
    seg[5, 5, 5] = 4
    write_nifti(root / "SUB02-001" / "SUB02-001-seg.nii.gz", seg, spacing=(1.0, 1.5, 2.0))


def _shape(root):
    write_nifti(root / "SUB02-001" / "SUB02-001-t2w.nii.gz", phantom((24, 20, 10))[0]["t2w"], spacing=(1.0, 1.5, 2.0))


def _affine(root):
    write_nifti(root / "SUB02-001" / "SUB02-001-t2w.nii.gz", phantom()[0]["t2w"], spacing=(1.0, 1.0, 2.0))


def _zero_contrast(root):
    write_nifti(root / "SUB02-001" / "SUB02-001-t2f.nii.gz", np.zeros((24, 20, 12)), spacing=(1.0, 1.5, 2.0))


def _empty(root):
    for m in ("t1n", "t1c", "t2w", "t2f"):
        write_nifti(root / "SUB02-001" / f"SUB02-001-{m}.nii.gz", np.zeros((24, 20, 12)), spacing=(1.0, 1.5, 2.0))


def _missing(root):
    (root / "SUB02-001" / "SUB02-001-t2f.nii.gz").unlink()


def _truncated(root):
    truncate(root / "SUB02-001" / "SUB02-001-t1n.nii.gz", 0.5)


def _garbage(root):
    (root / "SUB02-001" / "SUB02-001-t1n.nii.gz").write_bytes(b"this is not a nifti file")


def _timeline_row_without_folder(root):
    shutil.rmtree(root / "SUB02-001")


def _folder_without_row(root):
    shutil.copytree(root / "SUB02-002", root / "SUB02-003")


def _days(root):
    tl = root / "timeline.csv"
    tl.write_text(tl.read_text().replace("SUB02,002,75", "SUB02,002,20"))


BAD = [
    (_missing, "missing modality t2f", "SUB02-001-t2f.nii.gz"),
    (_shape, "shape (24, 20, 10) of t2w", "SUB02-001-t2w.nii.gz"),
    (_affine, "affine of t2w", "SUB02-001-t2w.nii.gz"),
    (_nan, "NaN/Inf voxel", "SUB02-001-t1c.nii.gz"),
    (_labels, "labels outside {0,1,2,3}: 4", "SUB02-001-seg.nii.gz"),
    (_empty, "empty brain", "SUB02-001-t1n.nii.gz"),
    (_zero_contrast, "contrast t2f (SUB02-001-t2f.nii.gz) is all zero", "SUB02-001-t2f.nii.gz"),
    (_truncated, "cannot read NIfTI", "SUB02-001-t1n.nii.gz"),
    (_garbage, "cannot read NIfTI", "SUB02-001-t1n.nii.gz"),
    (_timeline_row_without_folder, "folder SUB02-001/ not found", "SUB02-001"),
    (_folder_without_row, "folder SUB02-003 has no row in timeline.csv", "SUB02-003"),
    (_days, "days must increase", "timeline.csv"),
]


@pytest.mark.parametrize("breaker,message,file", BAD, ids=[b[0].__name__.strip("_") for b in BAD])
def test_bad_input_is_reported_with_subject_and_file(good, breaker, message, file, capsys):
    breaker(good)
    rep = check_dataset(good)
    errors = [p for p in rep["all_problems"] if p["severity"] == "error"]
    assert errors, "the broken input was not reported"
    hit = [p for p in errors if message in p["text"]]
    assert hit, [p["text"] for p in errors]
    assert all(p["subject"] == "SUB02" and file in p["text"] for p in hit)
    assert not [p for p in errors if p["subject"] == "SUB01"]  # the good subject is untouched
    # the CLI exits non-zero and prints the message
    assert main(["data-check", str(good)]) == 1
    out = capsys.readouterr().out
    assert message in out and "FAILED" in out


VOXEL_BAD = BAD[:9]  # the problems found by reading the files


@pytest.mark.parametrize("breaker,message,file", VOXEL_BAD, ids=[b[0].__name__.strip("_") for b in VOXEL_BAD])
def test_bad_voxels_raise_when_loading(good, breaker, message, file):
    breaker(good)
    ds = discover(good)
    tp = ds.subject("SUB02").timepoint("001")
    with pytest.raises(DataError) as exc:
        load_slice(tp, 5, image_size=24)
    assert "SUB02" in str(exc.value) and file in str(exc.value) and message in str(exc.value)


def test_bad_timeline_strict_raises(good):
    _days(good)
    with pytest.raises(DataError, match="subject SUB02.*days must increase"):
        discover(good, strict=True)


def test_timeline_missing_column(tmp_path):
    root = write_longitudinal(tmp_path / "d", n_subjects=1, n_timepoints=2)
    (root / "timeline.csv").write_text("subject,timepoint,day\nSUB01,000,0\nSUB01,001,10\n")
    with pytest.raises(DataError, match="missing column.*rt_start_day"):
        discover(root)


def test_brats_missing_modality(tmp_path):
    root = write_brats(tmp_path / "b", n_subjects=2)
    (root / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1c.nii.gz").unlink()
    rep = check_dataset(root)
    assert not rep["ok"]
    assert any("BraTS-GLI-00001-000-t1c.nii.gz" in p["text"] and "missing modality t1c" in p["text"]
               for p in rep["all_problems"])


# --------------------------------------------------------------------------- timeline problems, per subject
def _duplicate_timepoint(root):
    tl = root / "timeline.csv"
    tl.write_text(tl.read_text() + "SUB02,001,40,10,52\n")


def _unsorted_days(root):  # days 0 / 90 / 75: timepoint 002 is earlier than 001
    tl = root / "timeline.csv"
    tl.write_text(tl.read_text().replace("SUB02,001,30,", "SUB02,001,90,"))


def _inconsistent_rt(root):
    tl = root / "timeline.csv"
    tl.write_text(tl.read_text().replace("SUB02,002,75,10,52", "SUB02,002,75,12,52"))


TIMELINE_BAD = [
    (_duplicate_timepoint, "timeline.csv row 8: duplicate row for subject SUB02 timepoint 001"),
    (_unsorted_days, "days must increase with the timepoint number, but timepoint 002 has day 75 after timepoint 001 with day 90"),
    (_inconsistent_rt, "rt_start_day/rt_end_day differ between rows of subject SUB02"),
    (_folder_without_row, "folder SUB02-003 has no row in timeline.csv (add subject=SUB02, timepoint=003)"),
]


@pytest.mark.parametrize("breaker,message", TIMELINE_BAD, ids=[b[0].__name__.strip("_") for b in TIMELINE_BAD])
def test_timeline_problems_are_errors_of_their_subject(good, breaker, message):
    breaker(good)
    ds = discover(good)
    errs = ds.subject_errors()
    assert list(errs) == ["SUB02"], errs  # attributed to the subject, the other one is usable
    assert any(message in m for m in errs["SUB02"]), errs["SUB02"]
    assert all(m.startswith("subject SUB02") for m in errs["SUB02"])
    assert [s.subject for s in ds.good_subjects()] == ["SUB01"]
    # data-check reports the same error from the same discovery
    rep = check_dataset(good)
    assert not rep["ok"]
    assert [p["text"] for p in rep["all_problems"] if p["severity"] == "error"] == errs["SUB02"]
    with pytest.raises(DataError, match="subject SUB02"):
        discover(good, strict=True)


def test_subject_errors_empty_for_good_data_and_warnings_do_not_count(tmp_path):
    root = write_longitudinal(tmp_path / "d", n_subjects=2, n_timepoints=3, seg_missing=[("SUB01", "002")])
    ds = discover(root)
    assert ds.subject_errors() == {} and len(ds.problems) == 1 and ds.problems[0].severity == "warning"
