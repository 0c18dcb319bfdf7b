"""Geometric baselines: known answers for growing and shrinking along the signed distance."""

import numpy as np
import pytest
import torch

from tgrowth.growth.geometry import grow_to_area, signed_distance


def disc(shape, center, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= r**2


def test_signed_distance_known_values():
    m = np.zeros((7, 9), bool)
    m[3, 2:5] = True  # a horizontal bar
    sd = signed_distance(m, spacing=(2.0, 1.0))
    assert sd[3, 3] == -2.0  # inside: 2 mm to the nearest background (rows are 2 mm apart)
    assert sd[3, 6] == 2.0 and sd[1, 3] == 4.0  # 2 columns right = 2 mm; 2 rows up = 4 mm
    assert np.isinf(signed_distance(np.zeros((3, 3)))).all()


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.7, 3.0])
def test_exact_area_and_nesting(factor):
    prior = disc((48, 48), (24, 20), 6)
    spacing = (1.5, 1.5)
    target = factor * prior.sum() * 2.25
    g = grow_to_area(prior, target, spacing)
    assert g.sum() == round(target / 2.25)
    if factor >= 1:
        assert (g | prior).sum() == g.sum()  # growing keeps the prior
    else:
        assert (g & ~prior).sum() == 0  # shrinking stays inside it
    # isotropic: the grown mask is a disc about the same centre (within a pixel)
    yy, xx = np.nonzero(g)
    assert abs(yy.mean() - 24) < 0.5 and abs(xx.mean() - 20) < 0.5


def test_region_limits_growth_and_prior_voxels_always_count():
    prior = disc((40, 40), (20, 10), 4)
    brain = np.zeros((40, 40), bool)
    brain[:, :16] = True  # a wall at column 16: growth must go up/down/left
    g = grow_to_area(prior, 3 * prior.sum(), region=brain)
    assert g.sum() == 3 * prior.sum() and not g[:, 16:].any()
    tiny = np.zeros((40, 40), bool)
    assert grow_to_area(prior, 1e9, region=tiny).sum() == prior.sum()  # the prior itself, nothing more
    assert not grow_to_area(np.zeros((5, 5)), 10.0).any()  # nothing to grow
    assert not grow_to_area(prior, 0.0).any()


def test_three_dimensions_and_bad_input():
    zz, yy, xx = np.mgrid[:20, :20, :20]
    ball = (zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 <= 9
    g = grow_to_area(ball, 2 * ball.sum() * 8.0, spacing=(2, 2, 2))
    assert g.sum() == 2 * ball.sum() and g[ball].all()
    with pytest.raises(ValueError, match="spacing has 2 values for a 3-D mask"):
        grow_to_area(ball, 1.0, spacing=(1, 1))
    with pytest.raises(ValueError, match="target must be a finite size >= 0"):
        grow_to_area(ball, float("nan"))


def test_change_zone_and_radial_growth():
    from tgrowth.growth.geometry import change_zone, radial_growth_mm

    assert radial_growth_mm(np.pi * 4, np.pi * 25) == pytest.approx(3.0)  # radius 2 -> 5 mm
    assert radial_growth_mm(100.0, 50.0) == 0.0
    assert radial_growth_mm(4 / 3 * np.pi * 8, 4 / 3 * np.pi * 27, ndim=3) == pytest.approx(1.0)
    prior = disc((40, 40), (20, 20), 5)
    keep = change_zone(prior, 4.0, spacing=(1.0, 1.0))
    sd = signed_distance(prior)
    assert set(np.unique(keep)) == {0.0, 1.0}
    assert (keep[sd <= 4.0] == 0).all() and (keep[sd > 4.0] == 1).all()
    soft = change_zone(prior, 4.0, spacing=(1.0, 1.0), edge_mm=2.0)
    ring = (sd > 4.0) & (sd < 6.0)
    assert ((soft[ring] > 0) & (soft[ring] < 1)).all() and (soft[sd >= 6.0] == 1).all()
    region = np.zeros((40, 40), bool)
    region[:, :20] = True  # the zone is cut at column 20; the tumour itself always counts
    cut = change_zone(prior, 4.0, region=region)
    assert (cut[:, 26:] == 1).all() and (cut[prior] == 0).all()
    assert (change_zone(np.zeros((5, 5)), 3.0) == 1).all()
    with pytest.raises(ValueError, match="must be >= 0"):
        change_zone(prior, -1.0)


def test_connected_to_keeps_the_parts_that_touch_the_mask():
    """Known answers: a part overlapping the mask or a face away from it is kept as it is, probabilities and all;
    a part touching only diagonally, or further, is set to 0; in 3D a part joined across slices is one part."""
    from tgrowth.growth.geometry import connected_to

    p = torch.zeros(7, 7)
    p[1:3, 1:3] = 0.5           # a face away from the mask pixel (2, 3): kept
    p[4, 4] = 1.0               # apart from the mask: removed
    p[5:7, 0] = torch.tensor([0.25, 0.75])  # far away: removed
    m = torch.zeros(7, 7, dtype=torch.bool)
    m[2, 3] = True
    want = torch.zeros(7, 7)
    want[1:3, 1:3] = 0.5
    assert torch.equal(connected_to(p, m), want)
    d = torch.zeros(5, 5)
    d[1, 1] = 0.5
    corner = torch.zeros(5, 5, dtype=torch.bool)
    corner[0, 0] = True  # meets (1, 1) at a corner only: not connected
    assert not connected_to(d, corner).any()
    face = torch.zeros(5, 5, dtype=torch.bool)
    face[0, 1] = True
    assert torch.equal(connected_to(d, face), d)
    v = torch.zeros(3, 4, 4)     # 3D: slice 0 holds the mask's part, slice 2 a part joined to it through slice 1
    v[0, 1, 1], v[1, 1, 1], v[2, 1, 1:3] = 0.2, 0.4, 0.6
    v[2, 3, 3] = 0.9             # on slice 2, apart from everything: removed
    mv = torch.zeros(3, 4, 4, dtype=torch.bool)
    mv[0, 1, 1] = True
    got = connected_to(v, mv)
    assert torch.equal(got[:2], v[:2]) and got[2, 1, 1:3].tolist() == pytest.approx([0.6, 0.6]) and got[2, 3, 3] == 0
    assert not connected_to(v, torch.zeros_like(mv)).any()  # an empty mask keeps nothing
    assert torch.equal(connected_to(torch.zeros(3, 3), m[:3, :3]), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="same shape"):
        connected_to(v, m)
