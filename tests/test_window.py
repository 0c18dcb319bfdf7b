"""Native-resolution tumour windows: known crops, exact paste-back, training windows, predict in windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_modules.formats import discover
from data_modules.geometry import centroid, crop_window, window_bounds
from data_modules.preprocess import load_slice
from data_modules.slices import SliceDataModule
from data_modules.window import TumourWindow
from tests.factories import write_longitudinal


def test_window_bounds_and_crop_known_answers():
    assert window_bounds(10.0, 4, 30) == (-8, -18)  # pixels 8..11 of the axis
    assert window_bounds(1.0, 6, 30) == (2, -26)  # pixels -2..3: starts 2 pixels before the axis
    img = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6)
    seg = torch.arange(30).reshape(5, 6)
    w, s, b = crop_window(img, seg, (0.0, 5.0), 4)
    assert b == [[2, -3], [-3, 1]]
    assert torch.equal(w[:, 2:, :3], img[:, :2, 3:]) and (w[:, :2] == -1).all() and (w[:, :, 3] == -1).all()
    assert torch.equal(s[2:, :3], seg[:2, 3:]) and (s[:2] == 0).all()
    assert centroid(torch.zeros(3, 3)) is None and centroid(seg == 7) == (1.0, 1.0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    # 40 x 36 slices, 2 x 1.5 mm pixels: a window of 16 pixels never resamples
    return write_longitudinal(tmp_path_factory.mktemp("win"), n_subjects=3, n_timepoints=2, shape=(40, 36, 8),
                              spacing=(2.0, 1.5, 3.0), radii=[3.0, 4.0],
                              splits={"SUB01": "train", "SUB02": "val", "SUB03": "test"})


def test_window_mode_keeps_native_pixels_and_pastes_back_exactly(root):
    tp = discover(root).subjects[0].timepoints[1]
    canvas = load_slice(tp, None, image_size=16, resize="window")
    assert canvas.image.shape[-2:] == (40, 40) and canvas.spacing_mm == pytest.approx((2.0, 1.5))
    c = centroid(canvas.seg > 0)
    win = canvas.window(c, 16)
    assert win.image.shape == (4, 16, 16) and win.spacing_mm == canvas.spacing_mm
    assert win.seg.sum() == canvas.seg.sum()  # the whole tumour is inside the window
    assert abs(centroid(win.seg > 0)[0] - 7.5) <= 1.0 and abs(centroid(win.seg > 0)[1] - 7.5) <= 1.0
    vol = win.to_volume(win.seg.numpy())  # back into the file: exactly the seg's tumour at the slice
    full = canvas.to_volume(canvas.seg.numpy())
    assert np.array_equal(vol, full)
    img = win.to_volume(win.image.numpy())
    inside = vol > 0
    assert np.allclose(img[inside], canvas.to_volume(canvas.image.numpy())[inside])
    with pytest.raises(Exception, match="already a window"):
        win.window(c, 8)


def test_training_windows_centred_on_the_tumour_with_jitter_and_healthy_windows(root):
    dm = SliceDataModule(root, image_size=16, resize="window", contrasts=["t1n", "t1c", "t2w", "t2f"],
                         slices={"tumour": "all", "healthy": 1}, batch_size=4,
                         window={"jitter_mm": 4.0, "healthy_fraction": 0.0})
    dm.setup()
    val = dm.dataset_for("val")
    for i in range(len(val)):
        item = val[i]
        assert item["image"].shape == (4, 16, 16)
        if item["label"]:  # validation windows: exactly on the tumour's centroid
            c = centroid(item["seg"] > 0)
            assert abs(c[0] - 7.5) <= 1.0 and abs(c[1] - 7.5) <= 1.0
    torch.manual_seed(0)
    win = TumourWindow(16, jitter_mm=4.0)
    s = load_slice(discover(root).subjects[0].timepoints[1], None, image_size=16, resize="window")
    centres = torch.tensor([win.center(s.image, s.seg, s.spacing_mm) for _ in range(200)])
    base = torch.tensor(centroid(s.seg > 0))
    off = (centres - base) * torch.tensor(s.spacing_mm)
    assert off.abs().max() <= 4.0 + 1e-6 and off.std(0).min() > 1.0  # uniform jitter up to 4 mm per axis
    healthy = TumourWindow(16, healthy_fraction=1.0)
    brain = (s.image > -1 + 1e-3).any(0)
    for _ in range(20):
        r, c = healthy.center(s.image, s.seg, s.spacing_mm)
        assert brain[int(r), int(c)]


def test_predict_in_native_windows_pastes_maps_back_into_the_input_geometry(tiny_predict, tmp_path):
    """Slices of 48 x 44 pixels, 32-pixel models: predict cuts a window around the prior tumour (no resampling)
    and writes the maps back into the full input volume, zero outside the window."""
    import json

    import nibabel as nib

    from tests.predict_fixtures import predict_overrides
    from tgrowth.cli import main

    _, models = tiny_predict
    root = write_longitudinal(tmp_path / "d", n_subjects=2, n_timepoints=3, shape=(48, 44, 6), radii=[3.0, 4.0, 5.5],
                              splits={"SUB01": "test", "SUB02": "test"})
    out = tmp_path / "p"
    torch.set_num_threads(1)
    assert main(["predict", "-c", "experiments/predict.yaml", *predict_overrides(
        root, models, out, "data.resize=window", "data.subjects=[SUB01]", "methods=[tgrowth,no-change]",
        "plots=false")]) == 0
    info = json.loads((out / "SUB01" / "info.json").read_text())
    k = info["slice_index"]
    prob = nib.load(str(out / "SUB01" / "prob_map.nii.gz"))
    mean = nib.load(str(out / "SUB01" / "pred_mean.nii.gz")).get_fdata()
    ref = nib.load(str(root / "SUB01-002" / "SUB01-002-t1n.nii.gz"))
    assert prob.shape == ref.shape and np.allclose(prob.affine, ref.affine)
    written = np.abs(mean[:, :, k]).sum(-1) > 0
    rows, cols = np.nonzero(written)
    assert rows.max() - rows.min() + 1 <= 32 and cols.max() - cols.min() + 1 <= 32  # one 32-pixel window
    assert written.sum() < 48 * 44
    prior_seg = np.asarray(nib.load(str(root / "SUB01-001" / "SUB01-001-seg.nii.gz")).dataobj)[:, :, k] > 0
    assert written[prior_seg].all()  # the window holds the prior tumour
    assert info["pixel_spacing_mm"] == [1.0, 1.0]
