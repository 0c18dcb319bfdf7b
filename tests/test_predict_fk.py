"""predict's FK prior (tgrowth.predict.targets: fk_prior, FKPrior, zone_keep with zone=fk) on hand-made slices."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.formats import Timepoint
from data_modules.slices import SliceSample
from tgrowth.errors import TgrowthError
from tgrowth.growth.geometry import distance_to
from tgrowth.growth.patient import DEFAULT_D_WHITE, DEFAULT_RHO
from tgrowth.predict.methods import Arm
from tgrowth.predict.plan import Plan, SubjectSlices
from tgrowth.predict.targets import FKPrior, Targets, fk_prior, needs_truth_forecast, zone_keep

N = 40
C4 = ["t1n", "t1c", "t2w", "t2f"]
H = 1.0  # mm


pytestmark = pytest.mark.usefixtures("one_thread")


def _grid():
    y, x = torch.meshgrid(torch.arange(N) * H, torch.arange(N) * H, indexing="ij")
    return y, x


def _image():
    """[4, N, N] in [-1, 1]: white matter inside, grey matter around it, CSF at the rim, -1 outside the brain."""
    y, x = _grid()
    r = ((x - 19.5) ** 2 + (y - 19.5) ** 2).sqrt()
    brain, wm = r < 19, r < 11
    csf = (r > 16) & brain
    gm = brain & ~wm & ~csf
    g = torch.Generator().manual_seed(0)
    t1 = wm * 0.8 + gm * 0.4 + csf * -0.6
    t2 = wm * -0.5 + gm * 0.0 + csf * 0.8
    img = torch.stack([t1, t1 + 0.1 * wm, t2, 0.3 * t1]) + 0.03 * torch.randn(4, N, N, generator=g)
    return torch.where(brain, img.clamp(-0.95, 1), torch.full_like(img, -1.0)), brain


def _seg(radius: float, core: float) -> torch.Tensor:
    y, x = _grid()
    d = ((x - 17.0) ** 2 + (y - 20.0) ** 2).sqrt()
    return torch.where(d < core, 3, torch.where(d < radius, 2, 0)).long()


def _sample(image, seg, day) -> SliceSample:
    return SliceSample(image=image, seg=seg, spacing_mm=(H, H), affine=np.eye(4), volume_shape=(N, N, 1), slice_index=0,
                       subject="S", timepoint=f"{int(day):03d}", day=float(day))


def _case(history: list[tuple[float, float, float]]) -> tuple[Plan, SubjectSlices]:
    """(plan, slices) of subject S: ``history`` of (day, radius, core radius), the last one the prior."""
    image, _ = _image()
    samples = [_sample(image, _seg(r, c), d) for d, r, c in history]
    tps = [Timepoint("S", s.timepoint, s.day, {}, Path("seg.nii.gz")) for s in samples]
    plan = Plan("S", tps[-1], None, tps, [tps[-1].day + 30.0], 0, [s.area_mm2() for s in samples], (None, None), 0)
    return plan, SubjectSlices(samples[-1], None, "whole", samples)


def test_fk_prior_masks_have_exactly_the_sizes_inside_the_brain():
    plan, slices = _case([(0.0, 4.0, 2.0), (40.0, 6.0, 3.0)])
    prior = slices.prior_mask
    a0 = float(prior.sum()) * H * H
    sizes = {"target0": a0 * 1.5, "zone": a0 * 2.0}
    fk = fk_prior(plan, slices, sizes, C4)
    _, brain = _image()
    assert fk.calibration is not None and bool(fk.calibration.calibrated[0])  # one growing interval
    assert fk.reached.tolist() == [True, True]
    for key, size in sizes.items():
        m = fk.mask_of(key)
        assert int(m.sum()) == round(size / (H * H))  # exactly the size
        assert not (m & ~brain).any() and m[prior].all()  # inside the brain, grown from the prior tumour
        # the mask is the densest pixels of the forecast: every pixel in it at least as dense as any outside
        d = fk.density_of(key)
        assert float(d[m].min()) >= float(d[~m].max())
    assert fk.density_of("zone").sum() > fk.density_of("target0").sum()
    assert list(fk.info()["forecasts"]) == ["target0", "zone"] and fk.info()["calibrated"] is True
    with pytest.raises(KeyError, match="no forecast 'truth'"):
        fk.mask_of("truth")


def test_fk_prior_with_one_timepoint_uses_the_documented_defaults():
    plan, slices = _case([(40.0, 6.0, 3.0)])
    fk = fk_prior(plan, slices, {"target0": 150.0}, C4)
    p = fk.calibration.params
    assert not bool(fk.calibration.calibrated[0])
    assert float(p.d_white[0]) == pytest.approx(DEFAULT_D_WHITE) and float(p.rho[0]) == pytest.approx(DEFAULT_RHO)
    assert fk.info()["lambda_mm"] == pytest.approx(math.sqrt(DEFAULT_D_WHITE / DEFAULT_RHO), rel=1e-6)
    assert int(fk.mask_of("target0").sum()) == 150


def test_fk_prior_beyond_the_reachable_tissue_and_without_a_prior_tumour():
    """A target larger than the tissue the FK model can reach (CSF rim): the forecast says so (reached False)
    and the mask still has the size, the rest of it the brain pixels closest to the prior tumour. An empty prior
    slice: no forecast, empty masks."""
    plan, slices = _case([(40.0, 6.0, 3.0)])
    _, brain = _image()
    big = float(brain.sum()) - 20.0
    fk = fk_prior(plan, slices, {"target0": big}, C4)
    m = fk.mask_of("target0")
    assert fk.reached.tolist() == [False] and int(m.sum()) == round(big) and not (m & ~brain).any()
    left = brain & ~m  # the 20 brain pixels left out are the farthest from the prior tumour (ties aside)
    dist = distance_to(slices.prior_mask[None], (H, H))[0]
    reachable = fk.density_of("target0") > 0
    assert bool((m & ~reachable).any())  # the fallback was used
    assert float(dist[left].min()) >= float(dist[m & ~reachable].max())
    plan0, empty = _case([(40.0, 0.0, 0.0)])
    fk0 = fk_prior(plan0, empty, {"target0": 50.0}, C4)
    assert fk0.calibration is None and not fk0.masks.any() and fk0.masks.shape == (1, N, N)


def _targets(upper_ratio: float) -> Targets:
    ratios = torch.full((4, 1), upper_ratio, dtype=torch.float64)
    return Targets(forecast=None, median=torch.tensor([1.0], dtype=torch.float64), ratios=ratios)


def test_fk_zone_is_where_the_forecast_density_exceeds_the_level():
    """zone=fk with a hand-made density: keep is 0 exactly where density > level or the prior tumour (inside the
    brain), 1 elsewhere without an edge; with an edge it ramps over edge_mm; outside the brain always 1."""
    _, slices = _case([(40.0, 6.0, 3.0)])
    _, brain = _image()
    y, x = _grid()
    density = (0.9 * torch.exp(-((x - 24.0) ** 2 + (y - 20.0) ** 2).sqrt() / 4.0)) * brain  # off-centre blob
    fk = FKPrior({"zone": 200.0}, density[None], torch.zeros(1, N, N, dtype=torch.bool), torch.ones(1, dtype=torch.bool),
                 brain)
    level = 0.05
    zone = ((density > level) | slices.prior_mask) & brain
    keep = zone_keep(slices, _targets(1.5), 6.0, 0.0, "fk", fk, level)
    assert torch.equal(keep == 0, zone) and bool((keep[~zone] == 1).all())
    soft = zone_keep(slices, _targets(1.5), 6.0, 3.0, "fk", fk, level)
    d = distance_to(zone[None], (H, H))[0]
    want = torch.where(brain, (d / 3.0).clamp(0, 1), torch.ones_like(d))
    assert torch.allclose(soft, want.float(), atol=1e-6)
    assert bool((soft[d > 3.0] == 1).all())  # far from the tumour the prior is kept
    iso = zone_keep(slices, _targets(1.5), 6.0, 0.0)  # the default: unchanged isotropic zone
    assert not torch.equal(iso, keep)
    with pytest.raises(TgrowthError, match="sampling.zone=fk needs the FK prior"):
        zone_keep(slices, _targets(1.5), 6.0, 0.0, "fk", None, level)


def test_the_truth_row_is_asked_for_by_fk_to_truth_or_an_oracle_map():
    """The FK forecast's TRUTH_KEY row: wanted by the fk-to-truth method, or by an oracle arm when its map uses
    the FK forecast; never without a follow-up; a follow-up without tumour (0) still gets it (an empty mask)."""
    fkt, oracle, fk = Arm("fk-to-truth", "baseline"), Arm("oracle-area", "oracle", 1.0), Arm("fk", "baseline")
    assert needs_truth_forecast(False, [fk, fkt], 120.0)
    assert not needs_truth_forecast(False, [fk, oracle], 120.0)  # the oracle's map does not use the FK forecast
    assert needs_truth_forecast(True, [oracle], 120.0) and needs_truth_forecast(True, [oracle], 0.0)
    assert not needs_truth_forecast(True, [oracle, fkt], None)
