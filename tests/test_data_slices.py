"""Normalisation, slice selection, sizes, geometry round trips, SliceDataModule batches and the cache."""

import numpy as np
import pytest
import torch

from data_modules.formats import discover
from data_modules.normalise import brain_mask, intensity_stats, normalise
from data_modules.selection import select_slices
from data_modules.slices import (
    SliceDataModule,
    largest_tumour_slice,
    load_slice,
    tumour_area_mm2,
    tumour_volume_mm3,
)
from data_modules.volumes import load_volume, tumour_area_per_slice
from tests.factories import write_authors2d, write_brats, write_longitudinal, write_nifti
from tgrowth.errors import DataError


# --------------------------------------------------------------------------- sizes
def test_areas_and_volumes_exact_with_non_unit_spacing():
    seg = np.zeros((6, 5, 4), dtype=np.int16)
    seg[1:3, 1:4, 1] = 2  # 6 voxels oedema
    seg[2, 2, 2] = 1  # 1 core
    seg[3, 1:3, 2] = 3  # 2 enhancing
    sp = (0.5, 1.5, 3.0)
    assert tumour_volume_mm3(seg, sp) == pytest.approx(9 * 0.5 * 1.5 * 3.0)
    assert tumour_volume_mm3(seg, sp, "core") == pytest.approx(3 * 2.25)
    assert tumour_volume_mm3(seg, sp, "enhancing") == pytest.approx(2 * 2.25)
    assert tumour_volume_mm3(seg, sp, [2]) == pytest.approx(6 * 2.25)
    assert tumour_area_mm2(seg[..., 1], sp[:2]) == pytest.approx(6 * 0.75)
    assert tumour_area_mm2(seg[..., 2], sp[:2], "core") == pytest.approx(3 * 0.75)
    np.testing.assert_allclose(tumour_area_per_slice(seg, sp), [0, 4.5, 2.25, 0])
    assert largest_tumour_slice(seg) == 1
    assert largest_tumour_slice(seg, "core") == 2
    assert largest_tumour_slice(np.zeros((3, 3, 3))) is None
    # batched torch input gives one area per slice
    t = torch.as_tensor(np.moveaxis(seg, -1, 0))
    assert torch.allclose(tumour_area_mm2(t, sp[:2]).float(), torch.tensor([0, 4.5, 2.25, 0]))


def test_unknown_label_set():
    with pytest.raises(DataError, match="unknown tumour label set"):
        tumour_area_mm2(np.zeros((2, 2)), (1, 1), "bogus")


# --------------------------------------------------------------------------- normalisation
def test_normalisation_range_and_background():
    rng = np.random.default_rng(0)
    img = np.zeros((2, 24, 24), np.float32)
    img[:, 2:22, 2:22] = rng.normal(100, 20, (2, 20, 20))
    img[0, 4, 4] = 1e4  # an outlier the percentile clip must absorb
    mask = brain_mask(img)
    assert mask.sum() == 400
    stats = intensity_stats(img, mask, 1.0, 99.0)
    out = normalise(img, mask, stats)
    assert out.dtype == np.float32 and out.min() >= -1.0 and out.max() <= 1.0
    assert np.all(out[:, ~mask] == -1.0)
    inside = out[:, mask]
    assert np.isclose(inside.max(), 1.0) and np.isclose(inside.min(), -1.0)
    # the outlier is clipped, the rest keeps its spread (not squashed to -1 by the outlier)
    assert np.median(inside[0]) > -0.5
    const = normalise(np.where(mask, 5.0, 0.0)[None].astype(np.float32), mask, np.array([[5.0, 5.0]]))
    assert np.all(const[0][mask] == 0.0)


def test_load_slice_contract_and_exact_roundtrip(tmp_path):
    root = write_longitudinal(tmp_path / "d", n_subjects=1, n_timepoints=2, spacing=(1.0, 1.5, 2.0))
    tp = discover(root).subjects[0].timepoints[1]
    s = load_slice(tp, None, image_size=32)  # 24x20 fits: centre pad, no resampling
    assert s.image.shape == (4, 32, 32) and s.image.dtype == torch.float32
    assert float(s.image.min()) == -1.0 and float(s.image.max()) <= 1.0
    assert s.seg.shape == (32, 32) and s.seg.dtype == torch.long
    assert s.spacing_mm == (1.0, 1.5) and s.volume_shape == (24, 20, 12)
    vol = load_volume(tp)
    assert s.slice_index == largest_tumour_slice(vol.seg)
    np.testing.assert_allclose(s.affine, np.diag([1.0, 1.5, 2.0, 1.0]))
    # area in mm^2 survives padding exactly
    assert s.area_mm2() == pytest.approx(tumour_area_mm2(vol.seg[..., s.slice_index], (1.0, 1.5)))
    back = s.to_volume(s.seg.numpy())
    assert back.shape == (24, 20, 12)
    np.testing.assert_array_equal(back[..., s.slice_index], vol.seg[..., s.slice_index])
    assert not back[..., s.slice_index + 1].any()  # other slices zero
    chans = s.to_volume(s.image)
    assert chans.shape == (24, 20, 12, 4)
    # a crop (image smaller than the slice) also inverts exactly on the kept region
    c = load_slice(tp, s.slice_index, image_size=16, resize="crop_or_pad")
    cb = c.to_volume(c.seg.numpy())[..., s.slice_index]
    np.testing.assert_array_equal(cb[4:20, 2:18], vol.seg[4:20, 2:18, s.slice_index])
    assert not cb[:4].any()


def test_resize_roundtrip_keeps_geometry(tmp_path):
    root = write_brats(tmp_path / "b", n_subjects=1, shape=(40, 32, 8), spacing=(1.2, 1.2, 3.0), radius=8)
    tp = discover(root).subjects[0].timepoints[0]
    s = load_slice(tp, None, image_size=20)
    assert s.geometry["mode"] == "resize" and s.image.shape == (4, 20, 20)
    assert s.spacing_mm == pytest.approx((2.4, 2.4))  # 40 px of 1.2 mm -> 20 px of 2.4 mm
    vol = load_volume(tp)
    ref = vol.seg[..., s.slice_index] > 0
    back = s.to_volume(s.seg.numpy())[..., s.slice_index] > 0
    dice = 2 * (ref & back).sum() / (ref.sum() + back.sum())
    assert dice > 0.9  # a 2x down/up sampling keeps the tumour in place
    assert s.area_mm2() == pytest.approx(ref.sum() * 1.44, rel=0.15)


def test_2d_inputs_pass_through(tmp_path):
    root = write_authors2d(tmp_path / "a")
    tp = discover(root).subject("00000003").timepoints[0]
    s = load_slice(tp, None, image_size=24)
    assert s.slice_index == 0 and s.volume_shape == (24, 20) and s.image.shape == (4, 24, 24)
    back = s.to_volume(s.seg.numpy())
    assert back.shape == (24, 20)
    np.testing.assert_array_equal(back, load_volume(tp).seg[..., 0])


# --------------------------------------------------------------------------- selection
def test_slice_selection_on_hand_made_volume():
    seg = np.zeros((8, 8, 10), np.int16)
    seg[2:4, 2:4, 3] = 2  # 4 px
    seg[2:5, 2:5, 4] = 3  # 9 px (largest)
    seg[3, 3, 5] = 1  # 1 px
    brain = np.zeros((8, 8, 10), bool)
    brain[1:7, 1:7, 1:9] = True
    assert select_slices(seg, brain, "all") == [3, 4, 5]
    assert select_slices(seg, brain, "all", min_tumour_pixels=4) == [3, 4]
    assert select_slices(seg, brain, "largest") == [4]
    assert select_slices(seg, brain, "all", labels="enhancing") == [4]
    assert select_slices(seg, brain, "none", indices=[0, -1]) == [0, 9]
    healthy = select_slices(seg, brain, "none", healthy=2)
    assert len(healthy) == 2 and set(healthy) <= {1, 2, 6, 7, 8}  # brain, no tumour
    assert select_slices(seg, brain, "largest", healthy=10) == [1, 2, 4, 6, 7, 8]
    assert select_slices(seg[..., :1], brain[..., :1], "none") == [0]  # 2D: passes through
    with pytest.raises(DataError, match="outside"):
        select_slices(seg, brain, "all", indices=[10])


# --------------------------------------------------------------------------- DataModule
def test_slice_datamodule_batches_and_splits(tmp_path):
    root = write_longitudinal(tmp_path / "d", n_subjects=4, n_timepoints=2,
                              splits={"SUB01": "train", "SUB02": "train", "SUB03": "val", "SUB04": "test"})
    dm = SliceDataModule(root, image_size=32, contrasts=["t1c", "t2f"], slices={"tumour": "largest", "healthy": 1},
                         batch_size=3)
    dm.setup()
    assert {t.subject for t, _ in dm.items["train"]} == {"SUB01", "SUB02"}
    assert {t.subject for t, _ in dm.items["val"]} == {"SUB03"}
    assert len(dm.items["train"]) == 2 * 2 * 2  # 2 subjects x 2 timepoints x (largest + 1 healthy)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (3, 2, 32, 32) and batch["seg"].dtype == torch.long
    assert batch["area_mm2"].shape == (3,) and batch["label"].tolist().count(0) >= 1
    for i in range(3):
        px = float((batch["seg"][i] > 0).sum())
        assert batch["area_frac"][i] == pytest.approx(px / 1024)
        assert batch["area_mm2"][i] == pytest.approx(px * 1.0)
        assert batch["label"][i] == int(px > 0)
    assert batch["meta"]["subject"] == ["SUB03"] * 3 and batch["meta"]["spacing_mm"].shape == (3, 2)


def test_cache_gives_identical_slices_and_is_keyed_by_config(tmp_path):
    root = write_brats(tmp_path / "b", n_subjects=3)
    kw = dict(image_size=24, batch_size=4, cache_dir=str(tmp_path / "cache"), splits={"train": 1, "val": 0, "test": 0})
    plain = SliceDataModule(root, **{**kw, "cache_dir": None})
    plain.setup()
    cached = SliceDataModule(root, **kw)
    cached.setup()
    files = sorted((tmp_path / "cache").rglob("*.pt"))
    assert len(files) == len(cached.items["train"]) > 0
    a = plain.dataset_for("train")[0]
    b = cached.dataset_for("train")[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["seg"], b["seg"])
    again = SliceDataModule(root, **kw)
    again.setup()  # the index comes from the cache too
    assert [k for _, k in again.items["train"]] == [k for _, k in cached.items["train"]]
    other = SliceDataModule(root, **{**kw, "image_size": 28})
    other.setup()
    assert len(sorted((tmp_path / "cache").rglob("*.pt"))) == 2 * len(files)  # new config, new entries


def test_augmentation_same_transform_on_image_and_seg(tmp_path):
    root = write_brats(tmp_path / "b", n_subjects=1, radius=4)
    aug = {"enabled": True, "flip_lr": 1.0, "affine_p": 0.0, "intensity_p": 0.0}
    dm = SliceDataModule(root, image_size=24, slices={"tumour": "largest"}, augmentation=aug,
                         splits={"train": 1, "val": 0, "test": 0})
    dm.setup()
    ds = dm.dataset_for("train")
    raw = ds.sample(0)
    item = ds[0]
    assert torch.equal(item["image"], raw.image.flip(-2)) and torch.equal(item["seg"], raw.seg.flip(-2))
    torch.manual_seed(0)
    dm2 = SliceDataModule(root, image_size=24, slices={"tumour": "largest"},
                          augmentation={"enabled": True, "flip_lr": 0.0, "affine_p": 1.0, "rotation_deg": 10,
                                        "intensity_p": 1.0}, splits={"train": 1, "val": 0, "test": 0})
    dm2.setup()
    it = dm2.dataset_for("train")[0]
    assert it["image"].min() >= -1 and it["image"].max() <= 1
    assert set(it["seg"].unique().tolist()) <= {0, 1, 2, 3}
    # tumour pixels of the seg still sit on bright t1c tumour signal after the shared transform
    t1c = it["image"][1]
    assert t1c[it["seg"] > 0].mean() > t1c[(it["seg"] == 0) & (t1c > -1)].mean()


def test_real_authors2d_datamodule(brats2d_root, tmp_path):
    dm = SliceDataModule(brats2d_root, image_size=256, batch_size=4)
    dm.setup()
    assert {k: len(v) for k, v in dm.items.items()} == {"train": 11, "val": 6, "test": 3}
    b = next(iter(dm.test_dataloader()))
    assert b["image"].shape == (3, 4, 256, 256) and b["label"].tolist() == [1, 1, 1]
    assert b["image"].min() >= -1 and b["image"].max() <= 1
    # the README: about 570-650 labelled pixels of 1 mm^2 each; padding 240 -> 256 keeps them all
    assert all(560 <= a <= 660 for a in b["area_mm2"].tolist())
    s = dm.dataset_for("test").sample(0)
    import nibabel as nib

    ref = np.asarray(nib.load(s_seg := str(dm.items["test"][0][0].seg)).dataobj)
    np.testing.assert_array_equal(s.to_volume(s.seg.numpy()), ref.astype(np.int64)), s_seg


def test_bad_subject_reported_and_others_go_on(tmp_path):
    root = write_longitudinal(tmp_path / "d", n_subjects=3, n_timepoints=2,
                              splits={"SUB01": "train", "SUB02": "train", "SUB03": "train"})
    nan = np.full((24, 20, 12), np.nan, np.float32)
    write_nifti(root / "SUB02-001" / "SUB02-001-t1c.nii.gz", nan)
    dm = SliceDataModule(root, image_size=24)
    dm.setup()
    assert {t.subject for t, _ in dm.items["train"]} == {"SUB01", "SUB03"}
    errs = [str(p) for p in dm.problems if p.severity == "error"]
    assert len(errs) == 1 and "SUB02" in errs[0] and "SUB02-001-t1c.nii.gz" in errs[0] and "NaN/Inf" in errs[0]
    dm.write_errors_csv(tmp_path / "errors.csv")
    assert "SUB02-001-t1c.nii.gz" in (tmp_path / "errors.csv").read_text()
    with pytest.raises(DataError, match="SUB02.*NaN/Inf"):
        SliceDataModule(root, image_size=24, strict=True).setup()


def test_axial_axis_follows_the_affine(tmp_path):
    """A volume stored with the superior-inferior axis first: slices are cut along it and mapped back."""
    from data_modules.formats import Timepoint
    from tests.factories import phantom

    images, seg = phantom((12, 24, 20), center=(6, 11, 9), radius=4)
    aff = np.zeros((4, 4))
    aff[0, 1], aff[1, 2], aff[2, 0], aff[3, 3] = 1.0, 1.25, 2.0, 1.0  # voxel axis 0 -> z (S), 1 -> x, 2 -> y
    paths = {m: write_nifti(tmp_path / f"S-000-{m}.nii.gz", images[m], aff) for m in images}
    segp = write_nifti(tmp_path / "S-000-seg.nii.gz", seg, aff)
    tp = Timepoint("S", "000", 0.0, paths, segp)
    s = load_slice(tp, None, image_size=32)
    counts = (seg > 0).sum(axis=(1, 2))
    assert s.slice_index == int(np.argmax(counts))
    assert s.spacing_mm == (1.0, 1.25) and s.volume_shape == (12, 24, 20)
    back = s.to_volume(s.seg.numpy())
    assert back.shape == (12, 24, 20)
    np.testing.assert_array_equal(back[s.slice_index], seg[s.slice_index])
    assert not back[s.slice_index - 1].any()
    assert s.area_mm2() == pytest.approx(counts.max() * 1.25)


def test_augmentation_is_built_once_and_handed_to_the_train_set(tmp_path):
    from data_modules.augment import SliceAugmentation

    root = write_brats(tmp_path / "b", n_subjects=3, radius=4)
    dm = SliceDataModule(root, image_size=24, augmentation={"enabled": True, "flip_lr": 1.0, "affine_p": 0.0},
                         splits={"train": 1, "val": 0, "test": 0})
    train = dm.dataset_for("train")
    assert isinstance(train.transform, SliceAugmentation) and dm.dataset_for("val").transform is None
    assert [type(t).__name__ for t in train.transform.spatial.transforms] == ["RandomFlip"]
    assert train.transform.intensity_p == 0.5  # the schema default
    off = SliceDataModule(root, image_size=24, splits={"train": 1, "val": 0, "test": 0})
    assert off.dataset_for("train").transform is None


def test_unknown_settings_are_clear_errors(tmp_path):
    root = write_brats(tmp_path / "b", n_subjects=1)
    with pytest.raises(DataError, match=r"invalid SliceDataModule settings: unknown key\(s\) image_sise \(settings: root,"):
        SliceDataModule(root, image_sise=32)
    with pytest.raises(DataError, match="invalid SliceSelectionConfig settings: Key 'tumor' not in 'SliceSelectionConfig'"):
        SliceDataModule(root, slices={"tumor": "largest"})
    with pytest.raises(DataError, match="SliceDataModule needs a data root"):
        SliceDataModule.from_config({"image_size": 32})
