"""The patient FK model (tgrowth.growth.patient): label mapping, calibration, time-scaled forecast, fk mask."""

from __future__ import annotations

import math

import pytest
import torch

from tgrowth.errors import TgrowthError
from tgrowth.growth.fk import VISIBLE_THRESHOLD, simulate_fk, stable_dt
from tgrowth.growth.patient import (
    CORE_DENSITY,
    CORE_THRESHOLD,
    DEFAULT_D_WHITE,
    DEFAULT_RHO,
    FKParams,
    calibrate,
    fk_mask,
    forecast_density,
    initial_density,
    mobility,
)
from tgrowth.growth.tissue import TissueMaps

pytestmark = pytest.mark.usefixtures("one_thread")


def _tissue(n: int = 64, h: float = 1.0, batch: int = 1) -> TissueMaps:
    """A 2D brain: an elliptic white-matter core, a grey-matter rim, a CSF ring outside and a CSF 'ventricle'."""
    y, x = torch.meshgrid(torch.arange(n) * h, torch.arange(n) * h, indexing="ij")
    c = (n - 1) * h / 2
    r = ((x - c) ** 2 + (y - c) ** 2 / 0.7).sqrt()
    brain = r < 0.47 * n * h
    vent = ((x - c - 0.12 * n * h) ** 2 + (y - c + 0.15 * n * h) ** 2).sqrt() < 0.07 * n * h
    csf = (vent | (r > 0.42 * n * h)) & brain
    wm = (r < 0.3 * n * h) & ~csf
    gm = brain & ~csf & ~wm
    return TissueMaps(*(m.float()[None].expand(batch, -1, -1).contiguous() for m in (wm, gm, csf)))


def _disc(n: int, centre: tuple[float, float], r_core: float, r_whole: float, h: float = 1.0) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(n) * h, torch.arange(n) * h, indexing="ij")
    d = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2).sqrt()
    return torch.where(d < r_core, 3, torch.where(d < r_whole, 2, 0))


def _labels(u: torch.Tensor) -> torch.Tensor:
    seg = torch.zeros(u.shape, dtype=torch.long)
    seg[u > VISIBLE_THRESHOLD] = 2
    seg[u > CORE_THRESHOLD] = 3
    return seg


# --------------------------------------------------------------------------- label -> density
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.8, 1.6)])
def test_initial_density_thresholds_give_back_the_segmentation(spacing):
    n = 40
    tissue = _tissue(n, 1.0, batch=2)
    seg = torch.stack([_disc(n, (20, 18), 3, 7), _disc(n, (15, 22), 0, 5)])  # subject 1 has no core
    seg[0, 18, 20] = 1  # a necrotic voxel inside the core
    u = initial_density(seg, spacing, torch.tensor([2.0, 4.0]), tissue)
    whole, core = seg > 0, (seg == 1) | (seg == 3)
    assert torch.equal(u > VISIBLE_THRESHOLD, whole)
    assert torch.equal(u > CORE_THRESHOLD, core)
    assert float(u.max()) < CORE_DENSITY and float(u.min()) >= 0.0
    assert float(u[~tissue.parenchyma() & ~whole].abs().max()) == 0.0  # no tail in CSF / outside the brain
    # the tail: theta_v exp(-e / lambda) at distance e from the whole tumour (along a grid axis here)
    row = 18
    edge = int(torch.nonzero(whole[0, row]).max())
    for k in (1, 3):
        e = k * spacing[1]
        assert float(u[0, row, edge + k]) == pytest.approx(VISIBLE_THRESHOLD * math.exp(-e / 2.0), rel=1e-5)
    # density rises inwards: along the row from outside the tumour to its centre
    prof = u[0, row, 20 : edge + 4].flip(0)
    assert bool((prof[1:] >= prof[:-1]).all()) and float(prof[-1]) > float(prof[0])


def test_initial_density_in_3d_and_empty_segmentations():
    seg = torch.zeros(2, 12, 12, 8, dtype=torch.long)
    seg[0, 4:8, 4:8, 3:5] = 2
    seg[0, 5:7, 5:7, 3:5] = 3
    u = initial_density(seg, (1.0, 1.0, 2.0), 3.0)
    assert torch.equal(u > VISIBLE_THRESHOLD, seg > 0) and torch.equal(u > CORE_THRESHOLD, seg == 3)
    assert float(u[1].abs().max()) == 0.0  # no tumour: no density


# --------------------------------------------------------------------------- fk mask
def test_fk_mask_has_exactly_the_target_size():
    g = torch.Generator().manual_seed(0)
    density = torch.rand(3, 30, 25, generator=g)
    density[1] = 0.5  # all tied
    spacing = (0.9, 1.2)
    target = torch.tensor([100.0, 37.3, 0.0])  # mm^2
    mask = fk_mask(density, target, spacing)
    n = torch.round(target / (0.9 * 1.2)).long()
    assert mask.flatten(1).sum(1).tolist() == n.tolist()
    # the mask holds the densest voxels
    assert float(density[0][mask[0]].min()) >= float(density[0][~mask[0]].max())
    allowed = torch.zeros(3, 30, 25, dtype=torch.bool)
    allowed[:, :5] = True  # 125 voxels
    m2 = fk_mask(density, torch.tensor([1000.0, 10.0, 5.0]), spacing, allowed=allowed)
    assert m2.flatten(1).sum(1).tolist() == [125, 9, 5] and not bool((m2 & ~allowed).any())
    vol = fk_mask(torch.rand(1, 6, 7, 8, generator=g), 40.0, (1.0, 1.0, 2.0))
    assert int(vol.sum()) == 20


# --------------------------------------------------------------------------- forecast
@pytest.fixture(scope="module")
def grown():
    n = 64
    tissue = _tissue(n, 1.0, batch=2)
    seg = torch.stack([_disc(n, (24, 30), 3, 6), _disc(n, (36, 36), 2, 5)])
    params = FKParams.make(torch.tensor([0.2, 0.05]), torch.tensor([0.02, 0.03]))
    state = initial_density(seg, 1.0, params.lam, tissue)
    size0 = (state > VISIBLE_THRESHOLD).flatten(1).sum(1).float()
    return tissue, seg, params, state, size0


def test_forecast_hits_the_target_size_and_stays_out_of_csf(grown):
    tissue, seg, params, state, size0 = grown
    target = size0 * torch.tensor([2.5, 1.7]) + 0.4  # mm^2 (1 mm pixels), not whole pixels
    fc = forecast_density(state, tissue, params, target, 1.0)
    assert fc.reached.all() and not fc.shrink.any()
    assert bool(((fc.size - target).abs() <= 1.0).all()), (fc.size, target)  # the visible region, to a pixel
    mask = fk_mask(fc.density, target, 1.0)
    assert mask.flatten(1).sum(1).tolist() == torch.round(target).long().tolist()
    assert bool((mask | (seg == 0)).all()) and bool(mask[seg > 0].all())  # it grows out of the prior tumour
    outside = ~tissue.parenchyma() & (seg == 0)
    assert float(fc.density[outside].abs().max()) == 0.0
    # the FK clock: tau = rho t, and more growth takes longer
    assert torch.allclose(fc.days, fc.tau / params.rho)
    more = forecast_density(state, tissue, params, target * 1.3, 1.0)
    assert bool((more.tau > fc.tau).all())


def test_forecast_spreads_further_in_white_than_in_grey_matter():
    n = 48
    wm = torch.zeros(1, n, n)
    wm[:, :, : n // 2] = 1.0  # left half white, right half grey
    tissue = TissueMaps(wm, 1.0 - wm, torch.zeros(1, n, n))
    seg = _disc(n, (n / 2 - 0.5, n / 2 - 0.5), 2, 4)[None]
    reach = {}
    for ratio in (0.2, 1.0):
        params = FKParams.make(0.1, 0.02, grey_white_ratio=ratio)
        state = initial_density(seg, 1.0, params.lam, tissue, grey_white_ratio=ratio)
        fc = forecast_density(state, tissue, params, 300.0, 1.0)
        cols = (fc.density[0] > VISIBLE_THRESHOLD).any(0).nonzero().flatten()
        reach[ratio] = (n / 2 - 0.5 - float(cols.min()), float(cols.max()) - (n / 2 - 0.5))
    assert reach[1.0][0] == reach[1.0][1]  # same diffusivity: symmetric
    assert reach[0.2][0] >= reach[0.2][1] + 4  # D_grey = 0.2 D_white: reaches 11.5 vs 6.5 mm


def test_shrinking_recedes_along_the_density(grown):
    tissue, seg, params, state, size0 = grown
    target = size0 * 0.5
    fc = forecast_density(state, tissue, params, target, 1.0)
    assert fc.shrink.all() and torch.equal(fc.density, state) and float(fc.tau.abs().max()) == 0.0
    mask = fk_mask(fc.density, target, 1.0)
    core = seg == 3
    for b in range(2):
        if int(core[b].sum()) <= int(mask[b].sum()):
            assert bool(mask[b][core[b]].all())  # the core goes last
        assert not bool((mask[b] & (seg[b] == 0)).any())


def test_forecast_batch_equals_one_by_one(grown):
    tissue, seg, params, state, size0 = grown
    target = size0 * torch.tensor([2.0, 0.8])
    both = forecast_density(state, tissue, params, target, 1.0)
    for i in range(2):
        one = forecast_density(state[i : i + 1], tissue.select([i]), params.select([i]), target[i : i + 1], 1.0)
        assert torch.equal(one.density[0], both.density[i]) and float(one.tau[0]) == float(both.tau[i])


def test_forecast_in_3d_and_an_unreachable_target():
    n = 20
    wm = torch.ones(1, n, n, 10)
    tissue = TissueMaps(wm, torch.zeros_like(wm), torch.zeros_like(wm))
    seg = torch.zeros(1, n, n, 10, dtype=torch.long)
    seg[0, 8:12, 8:12, 4:6] = 2
    params = FKParams.make(0.1, 0.02)
    state = initial_density(seg, (1.0, 1.0, 2.0), params.lam, tissue)
    fc = forecast_density(state, tissue, params, 800.0, (1.0, 1.0, 2.0))
    assert bool(fc.reached.all()) and abs(float(fc.size[0]) - 800.0) <= 2.0  # to a voxel (2 mm^3)
    short = forecast_density(state, tissue, params, 10 * n * n * 10 * 2.0, (1.0, 1.0, 2.0), max_tau=2.0)
    assert not bool(short.reached.any()) and 2.0 <= float(short.tau[0]) < 2.1
    # the grid fills up and growth stalls: stopped STALL_TAU (10) later, well before max_tau (60)
    stalled = forecast_density(state, tissue, params, 10 * n * n * 10 * 2.0, (1.0, 1.0, 2.0))
    assert not bool(stalled.reached.any()) and float(stalled.size[0]) == n * n * 10 * 2.0
    assert 10.0 < float(stalled.tau[0]) < 20.0
    nothing = forecast_density(torch.zeros_like(state), tissue, params, 100.0, (1.0, 1.0, 2.0))
    assert not bool(nothing.reached.any()) and float(nothing.density.abs().max()) == 0.0


# --------------------------------------------------------------------------- calibration
def test_calibration_recovers_known_parameters():
    """Segmentations simulated by the same FK model (from the label mapping) give back lambda, rho, D_white.

    Subject 0: lambda 3 mm, rho 0.025/day; subject 1: lambda 1.8 mm, rho 0.04/day (grey/white 0.2), three
    scans 0/30/60 days, a fourth after an RT-like shrink (leaves the fit); subject 2 has one scan only.
    """
    n = 56
    tissue = _tissue(n, 1.0, batch=3)
    lam = torch.tensor([3.0, 1.8, 2.0])
    rho = torch.tensor([0.025, 0.04, 0.03])
    seg0 = torch.stack([_disc(n, (22, 28), 3, 6), _disc(n, (30, 24), 2.5, 5.5), _disc(n, (28, 28), 2, 5)])
    u0 = initial_density(seg0, 1.0, lam, tissue)
    diff = (rho * lam**2).reshape(3, 1, 1) * mobility(tissue, 0.2)
    days = [0.0, 30.0, 60.0]
    sim = simulate_fk(u0, diff, rho, 1.0, days, dt=stable_dt(0.25, (1.0, 1.0), 0.04) / 4)
    segs = torch.stack([seg0] + [_labels(sim[:, k]) for k in (1, 2)] + [seg0], 1)  # the 4th: back to the start
    valid = torch.tensor([[True, True, True, True], [True, True, True, True], [True, False, False, False]])
    cal = calibrate(segs, torch.tensor([days + [90.0]] * 3), tissue, 1.0, valid=valid,
                    lambdas=(1.0, 8.0, 7), refine=5)
    assert cal.calibrated.tolist() == [True, True, False]
    assert cal.n_intervals.tolist() == [2, 2, 0]  # (0, 1), (0, 2); the shrink to day 90 is left out
    p = cal.params
    for b in range(2):
        assert float(p.lam[b]) == pytest.approx(float(lam[b]), rel=0.08)
        assert float(p.rho[b]) == pytest.approx(float(rho[b]), rel=0.12)
        assert float(p.d_white[b]) == pytest.approx(float(rho[b] * lam[b] ** 2), rel=0.15)
        assert float(cal.score[b]) > 0.9
    assert float(p.d_white[2]) == pytest.approx(DEFAULT_D_WHITE) and float(p.rho[2]) == pytest.approx(DEFAULT_RHO)
    assert torch.allclose(p.grey_white_ratio, torch.full((3,), 0.2))
    # a subject alone gets exactly what it gets in the batch (per-subject crops, inert padding)
    alone = calibrate(segs[1:2], torch.tensor([days + [90.0]]), tissue.select([1]), 1.0, lambdas=(1.0, 8.0, 7), refine=5)
    assert float(alone.params.d_white[0]) == float(p.d_white[1]) and float(alone.params.rho[0]) == float(p.rho[1])
    # the whole grid (no crop) agrees closely: the 30 mm margin holds the growth
    whole = calibrate(segs[:1], torch.tensor([days + [90.0]]), tissue.select([0]), 1.0, lambdas=(1.0, 8.0, 7), refine=5,
                      crop_margin_mm=None)
    assert float(whole.params.lam[0]) == pytest.approx(float(p.lam[0]), rel=0.02)
    assert float(whole.params.rho[0]) == pytest.approx(float(p.rho[0]), rel=0.02)


def test_calibration_bad_input_is_named():
    tissue = _tissue(16, 1.0, batch=1)
    segs = torch.zeros(1, 2, 16, 16, dtype=torch.long)
    with pytest.raises(TgrowthError, match="case-3: timepoints 0 and 1 are on the same day"):
        calibrate(segs, torch.tensor([[5.0, 5.0]]), tissue, 1.0, subjects=["case-3"])
    with pytest.raises(TgrowthError, match="tissue shape"):
        calibrate(torch.zeros(1, 2, 16, 15, dtype=torch.long), torch.tensor([[0.0, 5.0]]), tissue, 1.0)
    with pytest.raises(TgrowthError, match="lambda grid"):
        calibrate(segs, torch.tensor([[0.0, 5.0]]), tissue, 1.0, lambdas=(4.0, 1.0, 5))
    with pytest.raises(TgrowthError, match="target sizes"):
        fk_mask(torch.zeros(1, 4, 4), -1.0, 1.0)
    with pytest.raises(TgrowthError, match="rho must be positive"):
        FKParams.make(0.1, 0.0)
