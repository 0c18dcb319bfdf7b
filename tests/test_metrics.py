"""Metrics on hand-made shapes with known answers."""

import math

import numpy as np
import pytest
import torch

from tgrowth.metrics import (
    area_error,
    dice,
    dice_per_sample,
    foreground,
    hd95,
    mae,
    mse,
    probability_map_scores,
    psnr,
    ssim,
)


def disc(shape, center_mm, radius_mm, spacing=(1.0, 1.0)):
    """Pixels whose physical centre lies inside a disc (so anisotropic spacing gives an ellipse in pixels)."""
    r = np.arange(shape[0])[:, None] * spacing[0]
    c = np.arange(shape[1])[None, :] * spacing[1]
    return (r - center_mm[0]) ** 2 + (c - center_mm[1]) ** 2 <= radius_mm**2


def offset_discs_hd(r, d, q):
    """Continuous answer: boundary point at angle th of disc A (radius r) to the circle of disc B (offset d)."""
    th = np.linspace(0, 2 * np.pi, 200001)
    dist = np.abs(np.sqrt(r**2 + d**2 - 2 * r * d * np.cos(th)) - r)
    return np.percentile(dist, q)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 1.5), (2.0, 1.0)])
def test_hd95_two_discs_at_known_offset(spacing):
    shape = (int(120 / spacing[0]), int(120 / spacing[1]))
    tol = max(spacing)  # "within a pixel"
    a = disc(shape, (60, 55), 25, spacing)
    # concentric discs: every boundary point is exactly r2 - r1 away
    b = disc(shape, (60, 55), 33, spacing)
    assert hd95(a, b, spacing) == pytest.approx(8.0, abs=tol)
    # same radius, offset 9 mm along a diagonal: Hausdorff = 9, HD95 from the continuous formula
    off = 9 / math.sqrt(2)
    c = disc(shape, (60 + off, 55 + off), 25, spacing)
    assert hd95(a, c, spacing, percentile=100) == pytest.approx(9.0, abs=tol)
    assert hd95(a, c, spacing) == pytest.approx(offset_discs_hd(25, 9, 95), abs=tol)
    assert hd95(a, c, spacing) == hd95(c, a, spacing)
    # spacing matters: offset 9 mm along the rows is 9 / spacing[0] pixels
    e = disc(shape, (69, 55), 25, spacing)
    assert hd95(a, e, spacing, percentile=100) == pytest.approx(9.0, abs=tol)
    assert hd95(a, e, percentile=100) == pytest.approx(9.0 / spacing[0], abs=1.0 / spacing[0])


def test_hd95_and_dice_empty_masks():
    z = np.zeros((10, 10), bool)
    m = z.copy()
    m[3:6, 3:6] = True
    assert hd95(z, z) == 0.0 and dice(z, z) == 1.0
    assert hd95(m, z) == math.inf and hd95(z, m) == math.inf and dice(m, z) == 0.0
    assert hd95(m, z, one_empty=99.0) == 99.0
    # the image diagonal in mm: 10 rows of 2 mm and 10 columns of 1 mm
    assert hd95(z, m, (2.0, 1.0), one_empty="diagonal") == pytest.approx(math.hypot(20.0, 10.0))
    assert hd95(m, z, one_empty="diagonal") == pytest.approx(math.hypot(10.0, 10.0))
    assert hd95(m, m) == 0.0 and dice(m, m) == 1.0


def test_dice_known_overlap_and_input_types():
    a = np.zeros((10, 10), bool)
    b = a.copy()
    a[0:4, 0:5] = True  # 20 px
    b[2:6, 0:5] = True  # 20 px, 10 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(torch.from_numpy(a), torch.from_numpy(b).float()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, b[:5])


def test_ssim_identity_brain_region_and_agreement_with_skimage():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 48, 48, generator=g) * 2 - 1
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    brain = torch.from_numpy(disc((48, 48), (24, 24), 15))
    y = x.clone()
    y[..., ~brain] = -1.0  # background outside r=15: the slice differs, the core r<=9 (window radius 5) does not
    assert ssim(y, x, mask=disc_t(48, 24, 9)) == pytest.approx(1.0, abs=1e-6)
    assert ssim(y, x) < 0.8
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    s = ssim(noisy, x)
    assert 0 < s < 0.95
    # torchmetrics' map agrees with scikit-image's (Gaussian weights, sigma 1.5) away from the borders
    sk = pytest.importorskip("skimage.metrics")
    _, full = sk.structural_similarity(noisy[0, 0].double().numpy(), x[0, 0].double().numpy(), data_range=2.0,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True)
    inner = torch.zeros(48, 48, dtype=torch.bool)
    inner[6:-6, 6:-6] = True
    assert ssim(noisy.double(), x.double(), mask=inner) == pytest.approx(full[6:-6, 6:-6].mean(), abs=1e-6)


def disc_t(n, c, r):
    return torch.from_numpy(disc((n, n), (c, c), r))


def test_psnr_mae_mse_known_values():
    t = torch.zeros(1, 8, 8)
    p = torch.full((1, 8, 8), 0.1)
    p[0, 0, 0] = 0.5
    assert mae(p, t) == pytest.approx((63 * 0.1 + 0.5) / 64)
    assert mse(p, t) == pytest.approx((63 * 0.01 + 0.25) / 64)
    m = torch.ones(8, 8, dtype=torch.bool)
    m[0, 0] = False
    assert mse(p, t, mask=m) == pytest.approx(0.01)
    assert psnr(p, t, mask=m) == pytest.approx(10 * math.log10(4 / 0.01))
    assert psnr(t, t) == math.inf


def test_probability_map_scores_at_levels_and_area_error():
    shape = (64, 64)
    big, small = disc(shape, (32, 32), 20), disc(shape, (32, 32), 10)
    prob = 0.3 * big + 0.5 * small  # 0.8 inside the small disc, 0.3 in the ring
    res = probability_map_scores(prob, small, spacing=(1.0, 1.0), levels=(0.25, 0.5, 0.9))
    assert res[0.5]["dice"] == 1.0 and res[0.5]["hd95"] == 0.0
    assert res[0.25]["hd95"] == pytest.approx(10.0, abs=1.0) and res[0.25]["area_px"] == big.sum()
    assert res[0.25]["dice"] == pytest.approx(2 * small.sum() / (small.sum() + big.sum()))
    assert res[0.9]["dice"] == 0.0 and res[0.9]["hd95"] == math.inf
    e = area_error(torch.tensor([110.0, 90.0]), torch.tensor([100.0, 100.0]))
    assert e["rel"].tolist() == pytest.approx([0.1, -0.1]) and e["abs_rel"].tolist() == pytest.approx([0.1, 0.1])


def test_foreground_is_any_contrast_above_background():
    img = torch.full((2, 4, 4), -1.0)
    img[0, 1, 1] = -0.5  # brain in contrast 0 only
    img[1, 2, 3] = 0.2  # brain in contrast 1 only
    img[1, 0, 0] = -1 + 1e-4  # within the tolerance of the background
    m = foreground(img)
    assert m.shape == (4, 4) and m.sum() == 2 and m[1, 1] and m[2, 3] and not m[0, 0]
    mb = foreground(img[None].expand(3, -1, -1, -1), keepdim=True)
    assert mb.shape == (3, 1, 4, 4) and torch.equal(mb[2, 0], m)


def test_dice_per_sample_is_dice_for_each_pair():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(64, 9, 11, generator=g) < torch.rand(64, 1, 1, generator=g)
    b = torch.rand(64, 9, 11, generator=g) < torch.rand(64, 1, 1, generator=g)
    a[0], b[0], b[1] = False, False, False  # both empty; one empty
    d = dice_per_sample(a, b)
    assert d.dtype == torch.float64 and d[0] == 1.0 and d[1] == 0.0
    assert d.tolist() == [dice(x, y) for x, y in zip(a, b)]
    # exact counts: its float32 cast is what float32 arithmetic gives (the segmenter's logged val/dice)
    p, q = a.flatten(1).float(), b.flatten(1).float()
    inter, total = (p * q).sum(1), p.sum(1) + q.sum(1)
    assert torch.equal(d.float(), torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)))
    with pytest.raises(ValueError, match="dice: shapes differ"):
        dice_per_sample(a, b[:, :5])
