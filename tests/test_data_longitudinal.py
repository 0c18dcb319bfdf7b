"""LongitudinalDataModule: subjects over time, the ODE size table, reference slices, prediction pairs."""

import numpy as np
import pytest
import torch

from data_modules.formats import discover
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
        slice: str = doc("largest_prior", "extra key of a command")

    cfg = OmegaConf.structured(PredictData(root=str(root), image_size=24, slice="largest_target"))
    dm = LongitudinalDataModule.from_config(cfg)
    assert dm.prep.image_size == 24 and len(dm.subjects) == 2


# --------------------------------------------------------------------------- the plan stage of predict
def _flip_scan(root, scan="SUB02-001"):
    """Store a scan flipped along x with the matching affine: the same anatomy, off its subject's grid."""
    import nibabel as nib

    flip_x = np.array([[-1.0, 0, 0, 23.0], [0, 1.5, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    for k in ("t1n", "t1c", "t2w", "t2f", "seg"):
        path = root / scan / f"{scan}-{k}.nii.gz"
        write_nifti(path, np.asarray(nib.load(str(path)).dataobj)[::-1], flip_x)


def test_selected_subjects_split_and_names(root):
    assert [s.subject for s in LongitudinalDataModule(root).selected()] == ["SUB01", "SUB02"]
    assert [s.subject for s in LongitudinalDataModule(root, split="all").selected()] == ["SUB01", "SUB02"]
    assert [s.subject for s in LongitudinalDataModule(root, split="train").selected()] == ["SUB02"]
    # subjects win over split, and come in name order whatever order they are given in
    dm = LongitudinalDataModule(root, split="test", subjects=["SUB02", "SUB01"])
    assert [s.subject for s in dm.selected()] == ["SUB01", "SUB02"]
    with pytest.raises(DataError, match=rf"^data.subjects: \['SUB09', 'X'\] not found in {root}$"):
        LongitudinalDataModule(root, subjects=["SUB01", "SUB09", "X"]).selected()
    with pytest.raises(DataError) as err:
        LongitudinalDataModule(root, split="val").selected()
    assert str(err.value) == (f"data.split=val: no subject of {root} is in the val split (splits: ['test', 'train']);"
                              " use data.split=all or data.subjects=[...]")
    from tgrowth.config.predict import PredictDataConfig  # a command's section: subjects reach the module

    picked = LongitudinalDataModule.from_config(PredictDataConfig(root=str(root), split="train", subjects=["SUB01"]))
    assert [s.subject for s in picked.selected()] == ["SUB01"] and [s.subject for s in picked.subjects] == ["SUB01"]


def test_problems_of_discovery_and_grid(root):
    (root / "SUB01-001" / "SUB01-001-t2f.nii.gz").unlink()
    _flip_scan(root)
    dm = LongitudinalDataModule(root)
    sub1, sub2 = dm.selected()
    assert dm.problems_of(sub1) == [f"subject SUB01, timepoint 001, file SUB01-001-t2f.nii.gz: missing modality t2f: "
                                    f"{root}/SUB01-001/SUB01-001-t2f.nii.gz not found"]
    assert dm.problems_of(sub2) == [
        "subject SUB02, timepoint 001, file SUB02-001-t1n.nii.gz: not on the voxel grid of timepoint 000 "
        "(SUB02-000-t1n.nii.gz): flipped along left-right (orientation LAS vs RAS); voxel positions differ by up to "
        "23 mm (tolerance 0.1 mm). The timepoints of a subject must be co-registered on one voxel grid (align: "
        "resample resamples them onto the first timepoint's grid)"]
    resampled = LongitudinalDataModule(root, align="resample", contrasts=["t1c"])
    assert resampled.problems_of(resampled.subject("SUB02")) == []
    assert resampled.subject("SUB02").timepoint("001").align_to is not None


def test_load_slice_is_the_model_geometry_load_slice(root, tmp_path):
    from data_modules.slices import load_slice

    settings = dict(contrasts=["t2f", "t1c"], image_size=16, resize="resize", labels="core",
                    normalisation={"lower_percentile": 2.0, "upper_percentile": 98.0})
    for cache in (None, str(tmp_path / "cache")):
        dm = LongitudinalDataModule(root, cache_dir=cache, **settings)
        for tp in dm.subject("SUB01").timepoints:
            for k in (None, 3, -2):
                got = dm.load_slice(tp, k)
                want = load_slice(tp, k, **settings)
                assert got.slice_index == want.slice_index and got.spacing_mm == want.spacing_mm
                assert torch.equal(got.image, want.image) and torch.equal(got.seg, want.seg)
        assert cache is None or len(list((tmp_path / "cache").rglob("slice_*.pt"))) == 3 * 3  # largest, 3, 10
    again = LongitudinalDataModule(root, cache_dir=str(tmp_path / "cache"), **settings)
    tp = again.subject("SUB01").timepoint("002")
    assert torch.equal(again.load_slice(tp, 3).image, load_slice(tp, 3, **settings).image)  # read from the cache


def test_load_slice_runs_the_grid_check_first(root):
    from data_modules.slices import load_slice
    from data_modules.volumes import check_subject_grid

    _flip_scan(root)
    dm = LongitudinalDataModule(root, align="resample", image_size=24)
    tp = dm.subject("SUB02").timepoint("001")
    got = dm.load_slice(tp, 5)  # no problems_of before: the module checks the grid itself
    assert tp.align_to is not None
    ref = discover(root).subject("SUB02")
    check_subject_grid(ref, 0.1, "resample")
    want = load_slice(ref.timepoint("001"), 5, image_size=24)
    assert torch.equal(got.image, want.image) and torch.equal(got.seg, want.seg)
    assert not torch.equal(got.image, load_slice(discover(root).subject("SUB02").timepoint("001"), 5, image_size=24).image)


def test_constructor_arguments_are_the_schema_fields():
    import inspect
    from dataclasses import MISSING, fields

    from data_modules.slices import SliceDataModule
    from tgrowth.config.data import SliceDataConfig

    for cls, schema in ((LongitudinalDataModule, LongitudinalDataConfig), (SliceDataModule, SliceDataConfig)):
        params = inspect.signature(cls.__init__).parameters
        for f in fields(schema):
            assert f.name in params, (cls.__name__, f.name)
            default = f.default if f.default is not MISSING else f.default_factory()
            p = params[f.name].default
            if f.name == "root":
                continue
            if hasattr(default, "__dataclass_fields__"):
                assert p is None, (cls.__name__, f.name)  # None: the section's defaults
            else:
                assert (list(p) if isinstance(p, tuple) else p) == default, (cls.__name__, f.name)
