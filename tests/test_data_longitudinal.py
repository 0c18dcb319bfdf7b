"""LongitudinalDataModule: subjects over time, the ODE size table, reference slices, prediction pairs."""

import numpy as np
import pytest
import torch

from data_modules.longitudinal import LongitudinalDataModule
from tests.factories import phantom, write_authors2d, write_longitudinal, write_nifti
from tgrowth.config.data import LongitudinalDataConfig
from tgrowth.errors import DataError

SPACING = (1.0, 1.5, 2.0)


@pytest.fixture
def root(tmp_path):
    return write_longitudinal(tmp_path / "d", n_subjects=2, n_timepoints=3, days=[0, 30, 75], radii=[2, 3, 4],
                              rt=(10, 52), spacing=SPACING, seg_missing=[("SUB02", "002")],
                              splits={"SUB01": "test", "SUB02": "train"})


def _seg(t, subject_index):
    return phantom(radius=[2, 3, 4][t], seed=100 * subject_index + t)[1]


def test_subjects_and_sizes_table_exact(root):
    dm = LongitudinalDataModule(root, image_size=32)
    assert [s.subject for s in dm.subjects] == ["SUB01", "SUB02"]
    vol = dm.sizes_table("volume")
    assert [(r["subject"], r["day"]) for r in vol] == [("SUB01", 0), ("SUB01", 30), ("SUB01", 75), ("SUB02", 0), ("SUB02", 30)]
    assert set(vol[0]) == {"subject", "day", "size", "rt_start_day", "rt_end_day"}
    assert vol[0]["rt_start_day"] == 10.0 and vol[0]["rt_end_day"] == 52.0
    for r, t in zip(vol[:3], range(3)):
        assert r["size"] == pytest.approx((_seg(t, 0) > 0).sum() * 3.0)  # voxel 1 x 1.5 x 2 mm
    # reference slice: the largest-tumour slice of the last segmented timepoint, the same for all timepoints
    k = dm.reference_slice("SUB01")
    assert k == int(np.argmax((_seg(2, 0) > 0).sum(axis=(0, 1))))
    ref = dm.sizes_table("reference")
    for r, t in zip(ref[:3], range(3)):
        assert r["size"] == pytest.approx((_seg(t, 0)[..., k] > 0).sum() * 1.5)
    largest = dm.sizes_table("largest")
    assert largest[2]["size"] == pytest.approx((_seg(2, 0) > 0).sum(axis=(0, 1)).max() * 1.5)
    core = LongitudinalDataModule(root, labels="core").sizes_table("volume")
    assert core[0]["size"] == pytest.approx(np.isin(_seg(0, 0), [1, 3]).sum() * 3.0)
    assert ref[0]["size"] < ref[1]["size"] < ref[2]["size"]  # the factory's tumour grows


def test_from_config_split_and_pairs(root):
    cfg = LongitudinalDataConfig(root=str(root), image_size=24, split="test")
    dm = LongitudinalDataModule.from_config(cfg)
    assert [s.subject for s in dm.subjects] == ["SUB01"]
    pairs = LongitudinalDataModule(root, image_size=24).pairs()
    got = [(p.subject, p.prior.timepoint, p.target.timepoint) for p in pairs]
    # SUB02-002 has no seg: a target, predicted from 001; nothing predicts from it
    assert got == [("SUB01", "000", "001"), ("SUB01", "001", "002"), ("SUB02", "000", "001"), ("SUB02", "001", "002")]
    batch = next(iter(LongitudinalDataModule(root, image_size=24, batch_size=4).predict_dataloader()))
    assert batch["image"].shape == (4, 4, 24, 24) and batch["target_day"].tolist() == [30, 75, 30, 75]
    assert batch["meta"]["slice_index"].dtype == torch.int64


def test_load_slice_at_reference(root, tmp_path):
    dm = LongitudinalDataModule(root, image_size=32, contrasts=["t1c"], cache_dir=str(tmp_path / "c"))
    s = dm.load_slice("SUB02", "002")  # no seg: image only
    assert s.seg is None and s.image.shape == (1, 32, 32) and s.slice_index == dm.reference_slice("SUB02")
    again = dm.load_slice("SUB02", "002")
    assert torch.equal(s.image, again.image)


def test_bad_subject_is_reported_and_left_out(root):
    write_nifti(root / "SUB01-001" / "SUB01-001-seg.nii.gz", np.full((24, 20, 12), 7, np.int16), spacing=SPACING)
    dm = LongitudinalDataModule(root)
    rows = dm.sizes_table("volume")
    assert {r["subject"] for r in rows} == {"SUB02"}
    assert any("SUB01" in str(p) and "SUB01-001-seg.nii.gz" in str(p) and "outside {0,1,2,3}: 7" in str(p)
               for p in dm.problems)
    assert [s.subject for s in dm.subjects] == ["SUB02"]
    with pytest.raises(DataError, match="SUB01-001-seg.nii.gz"):
        LongitudinalDataModule(root, strict=True).sizes_table("volume")


def test_authors2d_is_not_longitudinal(tmp_path):
    with pytest.raises(DataError, match="LongitudinalDataModule needs the longitudinal"):
        LongitudinalDataModule(write_authors2d(tmp_path / "a"))


def test_unknown_setting_is_a_clear_error(root):
    with pytest.raises(DataError, match="image_sise"):
        LongitudinalDataModule(root, image_sise=32)


def test_from_config_ignores_keys_a_command_adds(root):
    from dataclasses import dataclass

    from omegaconf import OmegaConf

    from tgrowth.config.base import doc

    @dataclass
    class PredictData(LongitudinalDataConfig):
        subjects: list = doc([], "extra key of a command")

    cfg = OmegaConf.structured(PredictData(root=str(root), image_size=24, subjects=["SUB01"]))
    dm = LongitudinalDataModule.from_config(cfg)
    assert dm.prep.image_size == 24 and len(dm.subjects) == 2
