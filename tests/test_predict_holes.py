"""sampling.keep_prior_holes and sampling.clip_denoised: the prior tumour's holes stay tumour-free in every
forecast; the x0 clamp keeps generated images in range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_predict_fk import _case, _grid, _image, _sample
from tgrowth.diffusion.schedule import make_schedule
from tgrowth.growth.geometry import enclosed_free
from tgrowth.predict.methods import Case, grow_to_target, grow_to_truth, no_change
from tgrowth.predict.plan import SubjectSlices
from tgrowth.predict.targets import Targets
from tgrowth.probability import probability_map

pytestmark = pytest.mark.usefixtures("one_thread")


def test_enclosed_free_is_the_masks_holes_in_2d_and_3d():
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False                      # an enclosed hole
    ring[0:3, 0] = True                     # touches the border: no hole made with it
    assert np.argwhere(enclosed_free(ring)).tolist() == [[4, 4]]
    notch = ring.copy()
    notch[4, 2:5] = False                   # the hole opened to the outside: not enclosed any more
    assert not enclosed_free(notch).any()
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    cube[2, 2, 2] = False
    assert np.argwhere(enclosed_free(cube)).tolist() == [[2, 2, 2]]


def _holed_case(target_mm2: float, true_mm2: float | None = None) -> Case:
    """A prior tumour of radius 6 mm with a 5-pixel hole at its centre; free = the hole."""
    plan, sl = _case([(0.0, 6.0, 0.0)])
    y, x = _grid()
    seg = sl.prior.seg.clone()
    seg[((x - 17.0) ** 2 + (y - 20.0) ** 2) <= 1.0] = 0
    prior = _sample(sl.prior.image, seg, 0.0)
    truth = None
    if true_mm2 is not None:
        truth = _sample(sl.prior.image, seg, 30.0)
    slices = SubjectSlices(prior, truth, "whole", [prior])
    free = torch.from_numpy(enclosed_free(slices.prior_mask.numpy()))
    targets = Targets(forecast=None, median=torch.tensor([target_mm2], dtype=torch.float64), ratios=None)
    return Case(plan, slices, targets, None, torch.ones(free.shape), None, free)


def test_forecasts_leave_the_prior_holes_tumour_free_and_still_reach_their_area():
    case = _holed_case(target_mm2=200.0)
    hole = case.free
    assert int(hole.sum()) == 5 and not bool((case.slices.prior_mask & hole).any())
    grown = grow_to_target(case, 0)
    assert not bool(grown.prob.bool()[hole].any())          # the hole stays tumour-free
    assert float(grown.prob.sum()) == pytest.approx(200.0)  # and the target area is reached elsewhere (1 mm pixels)
    assert torch.equal(no_change(case, 0).prob.bool(), case.slices.prior_mask)  # the prior has the hole already
    without = Case(case.plan, case.slices, case.targets, None, case.keep, None, None)
    assert bool(grow_to_target(without, 0).prob.bool()[hole].all())  # the plain rule fills it first
    assert torch.equal(case.admissible(torch.ones(2, *hole.shape, dtype=torch.bool))[:, hole],
                       torch.zeros(2, 5, dtype=torch.bool))


def test_grow_to_truth_with_holes_holds_the_true_area():
    case = _holed_case(target_mm2=150.0, true_mm2=1.0)
    true_area = case.slices.true_area
    res = grow_to_truth(case, 0)
    assert float(res.prob.sum()) == pytest.approx(true_area) and not bool(res.prob.bool()[case.free].any())


def test_clip_denoised_keeps_generated_images_in_range():
    schedule = make_schedule("linear", 100)
    image, _ = _image()

    def pushy(x, t, y=None):  # an eps that drives x0 far below -1 at every step
        return torch.full_like(x, 3.0)

    def seg(x):
        return x[:, 0] > 0

    kw = dict(num_generations=2, noise_level=20, num_steps=5, eta=0.5, encode="qsample")
    free = probability_map(pushy, schedule, image, seg, **kw, keep_generations=True)
    clamped = probability_map(pushy, schedule, image, seg, **kw, keep_generations=True, clip_denoised=1.0)
    assert float(free.images.min()) < -1.5
    assert float(clamped.images.min()) >= -1.0 - 1e-6 and float(clamped.images.max()) <= 1.0 + 1e-6
