"""The baselines of tgrowth.predict.methods are written once and run in 2D (a Case) and 3D (a VolumeCase) alike:
known answers on a toy Forecastable, with the voxel spacing honoured in 3D."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tgrowth.errors import TgrowthError
from tgrowth.predict.methods import BASELINES, Forecastable


@dataclass
class Toy(Forecastable):
    """The Forecastable view with plain fields: a one-voxel prior tumour in the middle, brain everywhere."""

    shape: tuple
    spacing: tuple
    target: float
    free: torch.Tensor | None = None
    fk: None = None
    models: None = None
    truth_images: None = None
    true_size: None = None
    subject: str = "TOY-1"
    prior_mask: torch.Tensor = field(init=False)
    images: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.prior_mask = torch.zeros(self.shape, dtype=torch.bool)
        self.prior_mask[tuple(n // 2 for n in self.shape)] = True
        self.images = torch.zeros((*self.shape[:-2], 2, *self.shape[-2:]))  # [..., C, H, W], all brain
        self.targets = SimpleNamespace(median=torch.tensor([self.target]))

    cell = property(lambda self: float(np.prod(self.spacing)))
    prior_size = property(lambda self: float(self.prior_mask.sum()) * self.cell)


def grown(toy: Toy) -> torch.Tensor:
    r = BASELINES["grow-to-target"](toy, 0)
    assert r.prob.shape == toy.shape and r.mean.shape == toy.images.shape
    assert float(r.areas[0]) == pytest.approx(float(r.prob.sum()) * toy.cell)
    return r.prob.bool()


def test_grow_to_target_in_3d_follows_the_voxel_spacing():
    # isotropic 1 mm: 7 voxels are the voxel and its 6 face neighbours (all at 1 mm)
    m = grown(Toy((5, 5, 5), (1.0, 1.0, 1.0), 7.0))
    cross = np.zeros((5, 5, 5), bool)
    cross[2, 2, 2] = cross[1, 2, 2] = cross[3, 2, 2] = cross[2, 1, 2] = cross[2, 3, 2] = cross[2, 2, 1] = cross[2, 2, 3] = True
    assert np.array_equal(m.numpy(), cross)
    # 2 mm slices: the in-plane ring (1 mm, then 1.41 mm) comes before the slices above and below (2 mm), so
    # 9 voxels (18 mm^3) are a 3 x 3 square in the middle slice only
    m = grown(Toy((5, 5, 5), (2.0, 1.0, 1.0), 18.0))
    assert m[2].sum() == 9 and m[2, 1:4, 1:4].all() and m.sum() == 9


def test_the_same_baselines_run_on_one_slice():
    m = grown(Toy((5, 5), (1.0, 1.0), 5.0))  # 2D: the pixel and its 4 neighbours
    assert m.sum() == 5 and m[2, 1:4].all() and m[1:4, 2].all()
    toy = Toy((5, 5), (2.0, 2.0), 4.0)
    r = BASELINES["no-change"](toy, 0)
    assert r.prob.sum() == 1 and float(r.areas[0]) == 4.0  # one 2 x 2 mm pixel
    r = BASELINES["segmenter-on-truth"](toy, 0)  # no follow-up: nothing to measure
    assert r.prob.sum() == 0 and r.prob.shape == (5, 5)
    assert torch.equal(BASELINES["grow-to-truth"](toy, 0).prob, BASELINES["no-change"](toy, 0).prob)


def test_kept_holes_and_a_missing_fk_prior():
    toy = Toy((5, 5, 5), (1.0, 1.0, 1.0), 7.0)
    toy.free = torch.zeros((5, 5, 5), dtype=torch.bool)
    toy.free[1, 2, 2] = True  # the size is reached outside the kept voxel
    m = grown(toy)
    assert m.sum() == 7 and not m[1, 2, 2] and m[3, 2, 2]
    with pytest.raises(TgrowthError, match="TOY-1.*fk"):
        BASELINES["fk"](toy, 0)


def test_fk_to_truth_takes_the_fk_priors_truth_row():
    """fk-to-truth is the FK prior's forecast at the true size (its ``truth`` row), through the same admissible
    filter; without a follow-up it is the prior (as grow-to-truth), an empty follow-up gives an empty map, and a
    prior without the truth row is refused naming the subject."""
    toy = Toy((5, 5), (1.0, 1.0), 5.0)
    truth_row = torch.zeros((5, 5), dtype=torch.bool)
    truth_row[1:4, 1:3] = True  # 6 pixels, off-centre: not what geometry would grow
    rows = {"target0": torch.zeros((5, 5), dtype=torch.bool), "truth": truth_row}
    toy.fk = SimpleNamespace(sizes={"target0": 5.0, "truth": 6.0}, mask_of=lambda key: rows[key])
    toy.true_size = 6.0
    r = BASELINES["fk-to-truth"](toy, 0)
    assert torch.equal(r.prob.bool(), truth_row) and float(r.areas[0]) == 6.0
    toy.free = torch.zeros((5, 5), dtype=torch.bool)
    toy.free[1, 1] = True  # a kept hole: every method's mask goes through case.admissible
    assert BASELINES["fk-to-truth"](toy, 0).prob.sum() == 5
    toy.true_size = 0.0
    assert BASELINES["fk-to-truth"](toy, 0).prob.sum() == 0
    toy.true_size = None
    assert torch.equal(BASELINES["fk-to-truth"](toy, 0).prob, BASELINES["no-change"](toy, 0).prob)
    toy.true_size, toy.fk = 6.0, SimpleNamespace(sizes={"target0": 5.0}, mask_of=None)
    with pytest.raises(TgrowthError, match="TOY-1.*fk-to-truth"):
        BASELINES["fk-to-truth"](toy, 0)
