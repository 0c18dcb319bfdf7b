"""The methods of a predict run, each one function or one generative arm, all scored the same way.

A method produces a :class:`MethodResult` (probability map, mean and std images, areas) for one subject
(:class:`Case`) and target day. Two kinds:

* **generative** (``GENERATIVE``): N guided generations of the diffusion model; the methods share one batched
  sampling pass (:mod:`tgrowth.predict.generate`) and differ only in their guidance target and scale;
* **baselines** (``BASELINES``): plain functions ``f(case, day) -> MethodResult`` (no sampling).

The names (the ``methods`` config key's vocabulary, with a help line each) are
:data:`tgrowth.config.predict.METHODS`; this module maps each name to its implementation (checked at import).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from tgrowth.config.predict import METHODS
from tgrowth.errors import TgrowthError
from tgrowth.growth.geometry import grow_to_area
from tgrowth.metrics import foreground
from tgrowth.predict.models import Models
from tgrowth.predict.plan import Plan, SubjectSlices
from tgrowth.predict.targets import FKPrior, Targets, target_key
from tgrowth.probability import segmenter_from_logits

__all__ = ["Arm", "Case", "MethodResult", "GENERATIVE", "BASELINES", "method_arms"]


@dataclass(frozen=True)
class Arm:
    """One method at one target day (and scale): ``source`` is where a generative arm's target comes from
    (``ode``, ``unguided``: no guidance, ``oracle``: the true follow-up area) or ``baseline``."""

    method: str
    source: str
    scale: float = 0.0
    day_index: int = 0


@dataclass
class Case:
    """What every stage after the plan knows about one subject; ``keep`` [H, W] is the change zone's keep weight
    (0 in the zone: see :func:`tgrowth.predict.targets.zone_keep`); ``fk`` the subject's FK forecast where the run
    uses it (:func:`tgrowth.predict.targets.fk_prior`), else None; ``free`` [H, W] bool the pixels every forecast
    leaves tumour-free (``sampling.keep_prior_holes``: the prior tumour's enclosed holes), else None."""

    plan: Plan
    slices: SubjectSlices
    targets: Targets
    models: Models
    keep: torch.Tensor
    fk: FKPrior | None = None
    free: torch.Tensor | None = None

    @property
    def zone(self) -> torch.Tensor:
        """The change zone as a mask (where the keep weight is below 1)."""
        return self.keep < 1

    def admissible(self, masks: torch.Tensor) -> torch.Tensor:
        """Tumour masks ``[..., H, W]`` without the pixels every forecast leaves tumour-free (unchanged without)."""
        return masks if self.free is None else masks & ~self.free.to(masks.device)


@dataclass
class MethodResult:
    """``prob`` [H, W] tumour probability, ``mean``/``std`` [C, H, W] predicted image, ``areas`` [N] mm^2 of each
    generation (one value for a baseline), ``targets`` [N] mm^2 the generations were guided to (None: not guided)."""

    prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    areas: torch.Tensor
    targets: torch.Tensor | None = None


# --------------------------------------------------------------------------- baselines
def _fixed(case: Case, mask: torch.Tensor, image: torch.Tensor) -> MethodResult:
    """A deterministic forecast: a 0/1 map (:meth:`Case.admissible`), an image, no spread."""
    m = case.admissible(torch.as_tensor(mask).bool())
    return MethodResult(m.float(), image.float(), torch.zeros_like(image),
                        torch.tensor([float(m.sum()) * case.slices.pixel_area], dtype=torch.float64))


def segment(models: Models, images: torch.Tensor) -> torch.Tensor:
    """The trained segmenter's whole-tumour masks ``[B, H, W]`` (CPU) of slice images ``[B, C, H, W]``."""
    net = models.segmenter
    return segmenter_from_logits(net)(images.to(next(net.parameters()).device)).cpu()


def _segment(case: Case, image: torch.Tensor) -> torch.Tensor:
    """The whole-tumour mask of one slice image."""
    return segment(case.models, image[None])[0]


def no_change(case: Case, day: int) -> MethodResult:
    """The prior scan and its tumour as the forecast."""
    s = case.slices
    return MethodResult(s.prior_mask.float(), s.prior.image.float(), torch.zeros_like(s.prior.image),
                        torch.tensor([s.prior_area], dtype=torch.float64))


def no_change_segmenter(case: Case, day: int) -> MethodResult:
    """The prior scan, its tumour measured by the learned segmenter (the segmenter error the generated rows carry)."""
    s = case.slices
    return _fixed(case, _segment(case, s.prior.image), s.prior.image)


def segmenter_on_truth(case: Case, day: int) -> MethodResult:
    """The learned segmenter on the REAL follow-up: the floor any generated image is measured through (an oracle;
    its image metrics are trivially perfect). Without a follow-up: nothing to measure (empty map, prior image)."""
    s = case.slices
    if s.truth is None:
        return _fixed(case, torch.zeros(s.prior.image.shape[1:], dtype=torch.bool), s.prior.image)
    return _fixed(case, _segment(case, s.truth.image), s.truth.image)


def _grow(case: Case, area: float | None) -> MethodResult:
    s = case.slices
    if area is None:  # no follow-up area to grow to
        return no_change(case, 0)
    region = case.admissible(foreground(s.prior.image)).numpy()  # the area is reached outside the kept holes
    mask = grow_to_area(s.prior_mask.numpy(), area, s.prior.spacing_mm, region=region)
    return _fixed(case, torch.from_numpy(mask), s.prior.image)


def grow_to_target(case: Case, day: int) -> MethodResult:
    """The prior tumour grown or shrunk along its signed distance, inside the brain, to the ODE's target area (no
    images, no learning); the prior scan as the image."""
    return _grow(case, float(case.targets.median[day]))


def grow_to_truth(case: Case, day: int) -> MethodResult:
    """As grow-to-target, to the TRUE follow-up area (an oracle: what geometry alone does with a perfect size)."""
    return _grow(case, case.slices.true_area)


def fk_forecast(case: Case, day: int) -> MethodResult:
    """The patient Fisher-Kolmogorov forecast at the ODE's target area (the ODE is the size clock, the FK model the
    shape): its ``round(target / pixel area)`` densest pixels inside the brain (:class:`~tgrowth.predict.targets.FKPrior`);
    the prior scan as the image. An empty prior slice gives an empty mask (as grow-to-target)."""
    if case.fk is None:
        raise TgrowthError(f"subject {case.plan.subject}: the fk method needs the FK prior (targets.fk_prior)")
    s = case.slices
    return _fixed(case, case.fk.mask_of(target_key(day)), s.prior.image)


GENERATIVE: dict[str, str] = {"tgrowth": "ode", "unguided": "unguided", "oracle-area": "oracle"}
BASELINES: dict[str, Callable[[Case, int], MethodResult]] = {
    "no-change": no_change, "no-change-segmenter": no_change_segmenter, "segmenter-on-truth": segmenter_on_truth,
    "grow-to-target": grow_to_target, "grow-to-truth": grow_to_truth, "fk": fk_forecast}
if set(GENERATIVE) | set(BASELINES) != set(METHODS):
    raise ImportError(f"tgrowth.predict.methods implements {sorted(set(GENERATIVE) | set(BASELINES))}, but the "
                      f"config names {sorted(METHODS)}")


def method_arms(cfg: DictConfig) -> list[Arm]:
    """The arms of ``cfg.methods``; with ``target.days`` only tgrowth, one arm per day (no real follow-up)."""
    scale = float(cfg.guidance.scale)
    if list(cfg.target.days):
        return [Arm("tgrowth", "ode", scale, j) for j in range(len(cfg.target.days))]
    arms = []
    for m in cfg.methods:
        source = GENERATIVE.get(m, "baseline")
        arms.append(Arm(m, source, 0.0 if source in ("unguided", "baseline") else scale))
    return arms


def run_baselines(case: Case, arms: list[Arm]) -> dict[Arm, Any]:
    """The baseline arms' results."""
    return {a: BASELINES[a.method](case, a.day_index) for a in arms if a.source == "baseline"}
