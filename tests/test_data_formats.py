"""Discovery of the three formats, subject splits, and the real authors' 2D sample."""

from pathlib import Path

import numpy as np
import pytest

from data_modules.formats import discover
from data_modules.splits import assign_splits, ratio_split, split_sizes
from tests.factories import write_authors2d, write_brats, write_longitudinal
from tgrowth.errors import DataError


def test_discover_longitudinal(tmp_path):
    root = write_longitudinal(tmp_path / "d", n_subjects=2, n_timepoints=3, days=[0, 14.5, 60], rt=(3, 45),
                              seg_missing=[("SUB02", "002")])
    ds = discover(root)
    assert ds.format == "longitudinal"
    assert [s.subject for s in ds.subjects] == ["SUB01", "SUB02"]
    s1 = ds.subject("SUB01")
    assert [t.timepoint for t in s1.timepoints] == ["000", "001", "002"]
    assert [t.day for t in s1.timepoints] == [0.0, 14.5, 60.0]
    assert (s1.rt_start_day, s1.rt_end_day) == (3.0, 45.0)
    assert sorted(s1.timepoints[0].images) == ["t1c", "t1n", "t2f", "t2w"]
    assert s1.timepoints[0].images["t2f"].name == "SUB01-000-t2f.nii.gz"
    assert ds.subject("SUB02").timepoints[2].seg is None
    # a missing seg is a warning (a timepoint to be predicted), not an error
    assert ds.errors == [] and len(ds.problems) == 1 and ds.problems[0].severity == "warning"
    assert "SUB02-002-seg.nii.gz" in str(ds.problems[0])


def test_discover_longitudinal_without_rt(tmp_path):
    root = write_longitudinal(tmp_path / "d", n_subjects=1, n_timepoints=2, rt=None)
    s = discover(root).subjects[0]
    assert s.rt_start_day is None and s.rt_end_day is None


def test_discover_brats_and_authors2d(tmp_path):
    ds = discover(write_brats(tmp_path / "b", n_subjects=2))
    assert ds.format == "brats" and [s.subject for s in ds.subjects] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    tp = ds.subjects[0].timepoints[0]
    assert tp.timepoint == "000" and tp.day == 0.0 and tp.seg.name == "BraTS-GLI-00000-000-seg.nii.gz"
    ds = discover(write_authors2d(tmp_path / "a"))
    assert ds.format == "authors2d" and ds.problems == []
    by = {s.subject: s for s in ds.subjects}
    assert [t.source_slice for t in by["00000001"].timepoints] == [3, 4]
    assert by["00000003"].split == "test"
    assert by["00000003"].timepoints[0].seg.name == "00000003_7-label.nii.gz"  # from test_labels/


def test_unknown_layout_is_a_clear_error(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="cannot tell the data format"):
        discover(tmp_path / "x")
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")


def test_real_authors2d_sample(brats2d_root):
    ds = discover(brats2d_root)
    assert ds.format == "authors2d" and ds.errors == []
    by = {s.subject: s for s in ds.subjects}
    assert sorted(by) == ["00002000", "00004000", "00044000"]
    assert [t.source_slice for t in by["00004000"].timepoints] == list(range(20, 31))
    assert {s.subject: s.split for s in ds.subjects} == {"00002000": "val", "00004000": "train", "00044000": "test"}
    # validation / testing labels live in test_labels/
    assert all(t.seg is not None for s in ds.subjects for t in s.timepoints)


# --------------------------------------------------------------------------- splits
def _subjects(n):
    from data_modules.formats import Subject

    return [Subject(f"P{i:03d}") for i in range(n)]


def test_hash_splits_disjoint_deterministic_and_by_ratio():
    subs = _subjects(50)
    a, _ = assign_splits(subs, None, (0.6, 0.2, 0.2), seed=0)
    b, _ = assign_splits(list(reversed(subs)), None, (0.6, 0.2, 0.2), seed=0)
    assert a == b  # independent of the order subjects come in
    assert set(a) == {s.subject for s in subs}  # every subject in exactly one split (a dict)
    counts = {k: list(a.values()).count(k) for k in ("train", "val", "test")}
    assert counts == {"train": 30, "val": 10, "test": 10}
    c, _ = assign_splits(subs, None, (0.6, 0.2, 0.2), seed=1)
    assert c != a  # the seed matters
    small, _ = assign_splits(_subjects(3), None, (0.8, 0.1, 0.1))
    assert sorted(small.values()) == ["test", "train", "val"]


def test_split_sizes_one_rule_for_data_and_synth():
    from tgrowth.synth import assign_splits as synth_splits

    cases = {  # (n, ratios): (train, val, test)
        (20, (0.7, 0.15, 0.15)): (14, 3, 3), (16, (0.625, 0.125, 0.25)): (10, 2, 4), (3, (0.8, 0.1, 0.1)): (1, 1, 1),
        (2, (0.8, 0.1, 0.1)): (1, 0, 1), (2, (0.5, 0.5, 0.0)): (2, 0, 0), (1, (0.0, 0.0, 1.0)): (1, 0, 0),
        (4, (0.01, 0.9, 0.09)): (1, 2, 1), (5, (1.0, 0.0, 0.0)): (5, 0, 0), (0, (0.8, 0.1, 0.1)): (0, 0, 0),
    }
    for (n, ratios), want in cases.items():
        assert tuple(split_sizes(n, ratios).values()) == want, (n, ratios)
        names = [f"P{i:03d}" for i in range(n)]
        data, _ = assign_splits(_subjects(n), None, ratios, seed=3)
        synth = synth_splits(names, list(ratios), seed=3)
        for got in (data, synth):
            assert tuple(list(got.values()).count(k) for k in ("train", "val", "test")) == want, (n, ratios)
    assert ratio_split(["c", "a", "b"], (1, 1, 1), sequence=("val", "test", "train")) == {"c": "val", "a": "test", "b": "train"}
    with pytest.raises(DataError, match=r"split ratios must be >= 0 and not all 0, got train=-1.0, val=0.0, test=1.0"):
        split_sizes(4, (-1, 0, 1))


def test_splits_csv_wins_and_reports_unlisted(tmp_path):
    root = write_longitudinal(tmp_path / "d", n_subjects=3, n_timepoints=2,
                              splits={"SUB01": "test", "SUB02": "train", "GHOST": "val"})
    ds = discover(root)
    split, problems = assign_splits(ds.subjects, root)
    assert split["SUB01"] == "test" and split["SUB02"] == "train" and split["SUB03"] in ("train", "val", "test")
    texts = [str(p) for p in problems]
    assert any("SUB03" in t and "not listed in splits.csv" in t for t in texts)
    assert any("GHOST" in t and "not in the data set" in t for t in texts)


def test_split_file_conflict_is_an_error(tmp_path):
    root = write_longitudinal(tmp_path / "d", n_subjects=1, n_timepoints=2)
    (Path(root) / "splits.csv").write_text("subject,split\nSUB01,train\nSUB01,test\n")
    _, problems = assign_splits(discover(root).subjects, root)
    assert any(p.severity == "error" and "two splits" in str(p) and "SUB01" in str(p) for p in problems)


def test_factory_volumes_are_deterministic(tmp_path):
    from tests.factories import phantom

    a, sa = phantom(seed=3)
    b, sb = phantom(seed=3)
    assert np.array_equal(sa, sb) and all(np.array_equal(a[m], b[m]) for m in a)


# --------------------------------------------------------------------------- CSV encodings, seg warnings
@pytest.mark.parametrize("bom,eol", [(True, "\n"), (False, "\r\n"), (True, "\r\n")], ids=["bom", "crlf", "bom+crlf"])
def test_timeline_and_splits_with_bom_or_crlf(tmp_path, bom, eol):
    """Excel's "CSV UTF-8" writes a byte-order mark and CRLF line ends: both are read like plain files."""
    root = write_longitudinal(tmp_path / "d", n_subjects=3, n_timepoints=2, days=[0, 14.5], rt=(3, 45),
                              splits={"SUB01": "test", "SUB02": "train", "SUB03": "val"})
    for name in ("timeline.csv", "splits.csv"):
        text = (root / name).read_text().replace("\n", eol)
        (root / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    ds = discover(root)
    assert ds.problems == []
    s = ds.subject("SUB02")
    assert [t.day for t in s.timepoints] == [0.0, 14.5] and (s.rt_start_day, s.rt_end_day) == (3.0, 45.0)
    split, problems = assign_splits(ds.subjects, root)
    assert problems == [] and split == {"SUB01": "test", "SUB02": "train", "SUB03": "val"}


def test_missing_seg_warning_says_what_it_means_for_the_first_timepoint(tmp_path):
    root = write_longitudinal(tmp_path / "d", n_subjects=1, n_timepoints=3, seg_missing=[("SUB01", "000"), ("SUB01", "002")])
    ds = discover(root)
    assert ds.errors == []
    by_tp = {p.timepoint: str(p) for p in ds.problems}
    assert by_tp["000"] == ("subject SUB01, timepoint 000, file SUB01-000-seg.nii.gz: no segmentation SUB01-000-seg.nii.gz"
                            " (the first timepoint is never a timepoint to be predicted, and without a seg it cannot be"
                            " used for the growth fit)")
    assert "to be predicted; it is left out of the growth fit" in by_tp["002"]
    assert "fine for a timepoint to be predicted" not in by_tp["000"]
