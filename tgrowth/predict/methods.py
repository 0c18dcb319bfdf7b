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
from dataclasses import dataclass, replace
from typing import Any

import torch
from omegaconf import DictConfig

from tgrowth.config.predict import METHODS
from tgrowth.errors import TgrowthError
from tgrowth.growth.geometry import connected_to, grow_to_area
from tgrowth.metrics import foreground
from tgrowth.predict.models import Models
from tgrowth.predict.plan import Plan, SubjectSlices
from tgrowth.predict.targets import TRUTH_KEY, FKPrior, Targets, target_key
from tgrowth.probability import segmenter_from_logits

__all__ = ["Arm", "Forecastable", "Case", "MethodResult", "GENERATIVE", "BASELINES", "method_arms", "run_baselines",
           "connected_maps"]


@dataclass(frozen=True)
class Arm:
    """One method at one target day (and scale): ``source`` is where a generative arm's target comes from
    (``ode``, ``unguided``: no guidance, ``oracle``: the true follow-up area) or ``baseline``."""

    method: str
    source: str
    scale: float = 0.0
    day_index: int = 0

    @property
    def key(self) -> str:
        """The arm's name in ``info.json`` and its map's file stem: the method, with ``/day<j>`` after the first day."""
        return self.method if self.day_index == 0 else f"{self.method}/day{self.day_index}"


class Forecastable:
    """What the baselines read of one subject, the same in 2D (:class:`Case`: one slice) and in 3D
    (:class:`tgrowth.predict.volume.VolumeCase`: the stack of generated slices), so each baseline is written once.

    Subclasses provide ``models``, ``targets`` (sizes in the unit of :attr:`cell`), ``fk``, ``free`` and the
    properties ``subject``, ``prior_mask`` ``[..., H, W]``, ``images`` ``[..., C, H, W]`` (the prior scan),
    ``truth_images`` (None without a follow-up), ``spacing`` (mm per mask axis), ``cell`` (mm^2 per pixel or
    mm^3 per voxel), ``prior_size`` and ``true_size`` (None without a segmented follow-up)."""

    free: torch.Tensor | None

    def admissible(self, masks: torch.Tensor) -> torch.Tensor:
        """Tumour masks ``[..., H, W]`` without the pixels every forecast leaves tumour-free (unchanged without)."""
        return masks if self.free is None else masks & ~self.free.to(masks.device)


@dataclass
class Case(Forecastable):
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

    # the Forecastable view of one slice
    subject = property(lambda self: self.plan.subject)
    prior_mask = property(lambda self: self.slices.prior_mask)
    images = property(lambda self: self.slices.prior.image)
    truth_images = property(lambda self: None if self.slices.truth is None else self.slices.truth.image)
    spacing = property(lambda self: self.slices.prior.spacing_mm)
    cell = property(lambda self: self.slices.pixel_area)
    prior_size = property(lambda self: self.slices.prior_area)
    true_size = property(lambda self: self.slices.true_area)


@dataclass
class MethodResult:
    """``prob`` [H, W] tumour probability, ``mean``/``std`` [C, H, W] predicted image, ``areas`` [N] mm^2 of each
    generation (one value for a baseline), ``targets`` [N] mm^2 the generations were guided to (None: not guided)."""

    prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    areas: torch.Tensor
    targets: torch.Tensor | None = None


# --------------------------------------------------------------------------- baselines (2D and 3D)
def _fixed(case: Forecastable, mask: torch.Tensor, image: torch.Tensor) -> MethodResult:
    """A deterministic forecast: a 0/1 map (:meth:`Forecastable.admissible`), an image, no spread."""
    m = case.admissible(torch.as_tensor(mask).bool())
    return MethodResult(m.float(), image.float(), torch.zeros_like(image),
                        torch.tensor([float(m.sum()) * case.cell], dtype=torch.float64))


def segment(models: Models, images: torch.Tensor) -> torch.Tensor:
    """The trained segmenter's whole-tumour masks ``[..., H, W]`` (CPU) of images ``[..., C, H, W]`` (one slice,
    a batch or a stack)."""
    net = models.segmenter
    flat = images.reshape(-1, *images.shape[-3:])
    masks = segmenter_from_logits(net)(flat.to(next(net.parameters()).device)).cpu()
    return masks.reshape(*images.shape[:-3], *masks.shape[-2:])


def no_change(case: Forecastable, day: int) -> MethodResult:
    """The prior scan and its tumour as the forecast."""
    return MethodResult(case.prior_mask.float(), case.images.float(), torch.zeros_like(case.images),
                        torch.tensor([case.prior_size], dtype=torch.float64))


def no_change_segmenter(case: Forecastable, day: int) -> MethodResult:
    """The prior scan, its tumour measured by the learned segmenter (the segmenter error the generated rows carry)."""
    return _fixed(case, segment(case.models, case.images), case.images)


def segmenter_on_truth(case: Forecastable, day: int) -> MethodResult:
    """The learned segmenter on the REAL follow-up: the floor any generated image is measured through (an oracle;
    its image metrics are trivially perfect). Without a follow-up: nothing to measure (empty map, prior image)."""
    truth = case.truth_images
    if truth is None:
        return _fixed(case, torch.zeros_like(case.prior_mask, dtype=torch.bool), case.images)
    return _fixed(case, segment(case.models, truth), truth)


def _grow(case: Forecastable, size: float | None) -> MethodResult:
    if size is None:  # no follow-up size to grow to
        return no_change(case, 0)
    region = case.admissible(foreground(case.images)).numpy()  # the size is reached outside the kept holes
    mask = grow_to_area(case.prior_mask.numpy(), size, case.spacing, region=region)
    return _fixed(case, torch.from_numpy(mask), case.images)


def grow_to_target(case: Forecastable, day: int) -> MethodResult:
    """The prior tumour grown or shrunk along its signed distance, inside the brain, to the ODE's target area (in
    3D: volume; no images, no learning); the prior scan as the image."""
    return _grow(case, float(case.targets.median[day]))


def grow_to_truth(case: Forecastable, day: int) -> MethodResult:
    """As grow-to-target, to the TRUE follow-up size (an oracle: what geometry alone does with a perfect size)."""
    return _grow(case, case.true_size)


def fk_forecast(case: Forecastable, day: int) -> MethodResult:
    """The patient Fisher-Kolmogorov forecast at the ODE's target size (the ODE is the size clock, the FK model the
    shape): its ``round(target / cell)`` densest pixels (voxels) inside the brain
    (:class:`~tgrowth.predict.targets.FKPrior`); the prior scan as the image. An empty prior gives an empty mask
    (as grow-to-target)."""
    if case.fk is None:
        raise TgrowthError(f"subject {case.subject}: the fk method needs the FK prior (targets.fk_prior)")
    return _fixed(case, case.fk.mask_of(target_key(day)), case.images)


def fk_to_truth(case: Forecastable, day: int) -> MethodResult:
    """As fk, at the TRUE follow-up size (an oracle: the FK shape with a perfect size clock, as grow-to-truth is the
    isotropic shape with one). ``oracle-area`` is guided to the same size, so the two differ by the shape alone.
    Without a follow-up: the prior (as grow-to-truth); a follow-up without tumour: an empty mask."""
    size = case.true_size
    if size is None:
        return no_change(case, 0)
    if size <= 0:
        return _fixed(case, torch.zeros_like(case.prior_mask, dtype=torch.bool), case.images)
    if case.fk is None or TRUTH_KEY not in case.fk.sizes:
        raise TgrowthError(f"subject {case.subject}: the fk-to-truth method needs the FK prior's forecast to the true size")
    return _fixed(case, case.fk.mask_of(TRUTH_KEY), case.images)


GENERATIVE: dict[str, str] = {"tgrowth": "ode", "unguided": "unguided", "oracle-area": "oracle"}
BASELINES: dict[str, Callable[[Case, int], MethodResult]] = {
    "no-change": no_change, "no-change-segmenter": no_change_segmenter, "segmenter-on-truth": segmenter_on_truth,
    "grow-to-target": grow_to_target, "grow-to-truth": grow_to_truth, "fk": fk_forecast,
    "fk-to-truth": fk_to_truth}
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


def run_baselines(case: Forecastable, arms: list[Arm]) -> dict[Arm, Any]:
    """The baseline arms' results (2D or 3D)."""
    return {a: BASELINES[a.method](case, a.day_index) for a in arms if a.source == "baseline"}


def connected_maps(cfg: DictConfig, case: Forecastable, results: dict[Arm, MethodResult]) -> dict[Arm, MethodResult]:
    """With ``sampling.map_connected``: every method's map kept on the parts of its support that touch the prior
    tumour (:func:`~tgrowth.growth.geometry.connected_to`; 2D or, on a stack, 3D); unchanged otherwise."""
    if not cfg.sampling.map_connected:
        return results
    prior = case.prior_mask
    return {a: replace(r, prob=connected_to(r.prob, prior.to(r.prob.device))) for a, r in results.items()}
