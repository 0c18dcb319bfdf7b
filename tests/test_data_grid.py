"""Timepoints of a subject must share one voxel grid: refused when flipped, axes swapped or shifted, or
resampled onto the first timepoint's grid (align=resample)."""

import json

import nibabel as nib
import numpy as np
import pytest

from data_modules.check import check_dataset
from data_modules.formats import Grid, discover
from data_modules.slices import load_slice
from data_modules.volumes import GRID_TOLERANCE_MM, check_subject_grid, grid_difference, load_volume
from tests.factories import affine_for, write_longitudinal, write_nifti
from tgrowth.cli import main
from tgrowth.config.data import DataCheckConfig, LongitudinalDataConfig
from tgrowth.errors import ConfigError, DataError

KINDS = ("t1n", "t1c", "t2w", "t2f", "seg")
FLIP_X = np.array([[-1.0, 0, 0, 23.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # voxel i at x = 23 - i
SWAP_XY = np.array([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # voxel (i, j) at (x, y) = (j, i)


@pytest.fixture
def root(tmp_path):
    return write_longitudinal(tmp_path / "d", n_subjects=2, n_timepoints=2)


def _arrays(root, scan="SUB02-001"):
    return {k: np.asarray(nib.load(str(root / scan / f"{scan}-{k}.nii.gz")).dataobj) for k in KINDS}


def _rewrite(root, fn, affine, scan="SUB02-001"):
    """Store every file of a scan as ``fn(array)`` with ``affine``."""
    for k, a in _arrays(root, scan).items():
        write_nifti(root / scan / f"{scan}-{k}.nii.gz", fn(a), affine)


def _flip(root):
    _rewrite(root, lambda a: a[::-1], FLIP_X)


def _swap(root):
    _rewrite(root, lambda a: a.transpose(1, 0, 2), SWAP_XY)


def _shift40(root):
    _rewrite(root, lambda a: a, affine_for(origin=(40.0, 0.0, 0.0)))


OFF_GRID = [
    (_flip, ["flipped along left-right (orientation LAS vs RAS)", "voxel positions differ by up to 23 mm"]),
    (_swap, ["shape 20x24x12 vs 24x20x12", "axes swapped (orientation ARS vs RAS)"]),
    (_shift40, ["affine differs by 40 mm translation (origin moved by [40, 0, 0] mm)",
                "voxel positions differ by up to 40 mm (tolerance 0.1 mm)"]),
]


@pytest.mark.parametrize("breaker,messages", OFF_GRID, ids=[b[0].__name__.strip("_") for b in OFF_GRID])
def test_timepoint_off_the_grid_is_refused(root, breaker, messages, capsys):
    breaker(root)
    subj = discover(root).subject("SUB02")
    problems = check_subject_grid(subj)
    assert len(problems) == 1
    p = problems[0]
    assert (p.severity, p.subject, p.timepoint, p.file) == ("error", "SUB02", "001", "SUB02-001-t1n.nii.gz")
    text = str(p)
    assert text.startswith("subject SUB02, timepoint 001, file SUB02-001-t1n.nii.gz: not on the voxel grid of "
                           "timepoint 000 (SUB02-000-t1n.nii.gz): ")
    for m in messages:
        assert m in text, text
    assert "must be co-registered" in text
    assert subj.timepoint("001").align_to is None  # require: nothing is resampled
    # data-check: the same error, for SUB02 only, exit code 1
    rep = check_dataset(root)
    errors = [q for q in rep["all_problems"] if q["severity"] == "error"]
    assert [q["text"] for q in errors] == [text]
    sub = {s["subject"]: s for s in rep["subjects"]}
    assert sub["SUB02"]["problems"] == [f"error: {text}"] and sub["SUB01"]["problems"] == []
    assert main(["data-check", str(root)]) == 1
    out = capsys.readouterr().out
    assert messages[0] in out and "FAILED: 1 error(s)" in out


def test_within_tolerance_passes_and_tolerance_is_a_key(root):
    _rewrite(root, lambda a: a, affine_for(origin=(0.05, 0.0, 0.0)))
    assert check_subject_grid(discover(root).subject("SUB02")) == []
    assert check_dataset(root)["ok"]
    problems = check_subject_grid(discover(root).subject("SUB02"), tolerance_mm=0.01)
    assert len(problems) == 1 and "affine differs by 0.05 mm translation" in str(problems[0])
    rep = check_dataset(root, grid_tolerance_mm=0.01)
    assert rep["n_errors"] == 1
    # one default, in the data code and the config schemas
    assert LongitudinalDataConfig().grid_tolerance_mm == DataCheckConfig().grid_tolerance_mm == GRID_TOLERANCE_MM
    assert LongitudinalDataConfig().align == DataCheckConfig().align == "require"
    with pytest.raises(ConfigError, match="align must be one of require, resample, got 'nearest'"):
        check_subject_grid(discover(root).subject("SUB02"), align="nearest")


def test_grid_difference_names_voxel_size_and_rotation():
    ref = Grid((24, 20, 12), tuple(map(tuple, affine_for((1.0, 1.0, 1.0)))))
    thick = Grid((24, 20, 12), tuple(map(tuple, affine_for((1.0, 1.0, 2.0)))))
    assert grid_difference(ref, thick) == "voxel size 1x1x2 mm vs 1x1x1 mm; voxel positions differ by up to 11 mm (tolerance 0.1 mm)"
    c, s = np.cos(np.radians(5.0)), np.sin(np.radians(5.0))
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    assert grid_difference(ref, Grid((24, 20, 12), tuple(map(tuple, rot)))).startswith("rotated by 5 degrees;")
    assert grid_difference(ref, ref) is None


# --------------------------------------------------------------------------- align=resample
@pytest.mark.parametrize("breaker", [_flip, _swap], ids=["flip", "swap"])
def test_resample_undoes_a_flip_or_axis_swap(root, breaker):
    """The follow-up holds the same world image stored flipped / transposed: resampled, it is the original."""
    original = _arrays(root)
    breaker(root)
    subj = discover(root).subject("SUB02")
    problems = check_subject_grid(subj, align="resample")
    assert len(problems) == 1 and problems[0].severity == "warning"
    assert "resampled onto that grid (align: resample)" in str(problems[0])
    tp = subj.timepoint("001")
    assert tp.align_to is not None and tp.align_to.timepoint == "000"
    vol = load_volume(tp)
    assert vol.file_shape == (24, 20, 12) and np.array_equal(vol.affine, affine_for())
    for i, m in enumerate(("t1n", "t1c", "t2w", "t2f")):
        assert np.allclose(vol.images[i], original[m], atol=1e-4), m
    assert np.array_equal(vol.seg, original["seg"])


def test_resample_of_a_known_shift(root):
    """Stored 4 mm further along x: voxel i of the first grid shows voxel i - 4 of the file; 0 where it has none."""
    original = _arrays(root)
    _rewrite(root, lambda a: a, affine_for(origin=(4.0, 0.0, 0.0)))
    subj = discover(root).subject("SUB02")
    before = load_slice(subj.timepoint("001"), 5, image_size=24)  # in the file's own grid (and now cached)
    assert np.array_equal(before.seg.numpy()[:, 2:22], original["seg"][..., 5])
    check_subject_grid(subj, align="resample")
    vol = load_volume(subj.timepoint("001"))
    want = np.zeros_like(original["t1c"])
    want[4:] = original["t1c"][:-4]
    assert np.array_equal(vol.images[1], want)
    want_seg = np.zeros_like(original["seg"])
    want_seg[4:] = original["seg"][:-4]
    assert np.array_equal(vol.seg, want_seg)
    # load_slice (its volume cache is keyed by the grid too): the same slice as the resampled volume
    s = load_slice(subj.timepoint("001"), 5, image_size=24)  # 24x20 padded to 24x24: 2 columns a side
    assert np.array_equal(s.seg.numpy()[:, 2:22], want_seg[..., 5]) and want_seg[..., 5].any()


def test_resample_without_overlap_is_an_error(root):
    _shift40(root)  # 40 mm along x: the 24 mm box of the follow-up lies beside the first one
    subj = discover(root).subject("SUB02")
    check_subject_grid(subj, align="resample")
    with pytest.raises(DataError, match="SUB02-001-t1n.nii.gz: no voxel of this scan lies inside the grid of "
                                        "timepoint 000"):
        load_volume(subj.timepoint("001"))


def test_data_check_align_resample_warns(root, capsys):
    _swap(root)
    rep = check_dataset(root, align="resample")
    assert rep["ok"] and rep["n_warnings"] == 1
    assert main(["data-check", str(root), "align=resample", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    sub = {s["subject"]: s for s in shown["subjects"]}["SUB02"]
    assert sub["problems"][0].startswith("warning: subject SUB02, timepoint 001") and "axes swapped" in sub["problems"][0]
