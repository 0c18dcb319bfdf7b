"""Stage 3 of predict, generation: every generative arm of a subject in ONE batched sampling pass.

N generations per arm, per-sample targets and scales (one :class:`~tgrowth.diffusion.guidance.AreaGuidance`),
chunked by ``sampling.batch_size``, segmented, and reduced once per arm by
``probability_map(groups=arm index)``. Generation g of every arm draws the same noise, keyed by
(seed, subject, g): common random numbers make the paired comparison between methods less noisy, and the
batch size never changes a result. With ``sampling.preserve_anatomy`` only the change zone is generated
(``keep_mask``: the prior is kept outside it, exactly); every generation's mask leaves out ``case.free``
(:meth:`~tgrowth.predict.methods.Case.admissible`). With ``guidance.spatial_weight > 0`` a
:class:`~tgrowth.diffusion.guidance.SpatialGuidance` follows the area guidance (:func:`spatial_guidance`).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from tgrowth.diffusion.guidance import AreaGuidance, SoftArea, SpatialGuidance
from tgrowth.diffusion.sampler import key_seed
from tgrowth.predict.methods import Arm, Case, MethodResult
from tgrowth.predict.models import autocast_dtype, guidance_units
from tgrowth.predict.targets import TRUTH_KEY, target_key
from tgrowth.probability import probability_map, segmenter_from_logits

__all__ = ["generative_arms", "arm_targets", "area_guidance", "spatial_guidance", "spatial_callback", "sampler_kwargs",
           "generate"]

ENCODE = {"noise": "qsample", "invert": "invert"}  # config name -> the sampler's name


def sampler_kwargs(s: DictConfig) -> dict:
    """The ``sampling`` section as :func:`~tgrowth.probability.probability_map` arguments (the ones every pass shares)."""
    return dict(chunk_size=int(s.batch_size), noise_level=int(s.noise_level), num_steps=int(s.num_steps or s.noise_level),
                eta=float(s.eta), encode=ENCODE[str(s.encode)], invert_order=int(s.invert_order),
                refine_iters=int(s.invert_refine_iters),
                clip_denoised=None if s.clip_denoised is None else float(s.clip_denoised), clip_stage=str(s.clip_stage))


def generative_arms(case: Case, arms: list[Arm]) -> list[Arm]:
    """The arms that sample (oracle-area needs a real follow-up area)."""
    return [a for a in arms if a.source != "baseline" and not (a.source == "oracle" and case.slices.true_area is None)]


def arm_targets(cfg: DictConfig, case: Case, arm: Arm, n: int) -> torch.Tensor:
    """``[n]`` target areas (mm^2) of one generative arm."""
    if arm.source == "oracle":
        return torch.full((n,), float(case.slices.true_area), dtype=torch.float64)
    return case.targets.per_generation(str(cfg.guidance.target), case.slices.prior_area, arm.day_index, n)


def area_guidance(cfg: DictConfig, case: Case, targets_mm2: torch.Tensor, scales: torch.Tensor,
                  dt: torch.dtype | None, device: torch.device) -> AreaGuidance:
    """The guidance callback: targets as fractions of the slice; the regressor read in fractions, or, for
    ``guidance.form=segmenter``, the segmenter's soft tumour fraction of the x0 prediction."""
    g, models = cfg.guidance, case.models
    mm2_per_frac, reg_per_frac = guidance_units(models, case.slices.pixel_area)
    if str(g.form) == "segmenter":
        measure, form, reg_per_frac = SoftArea(models.segmenter, temperature=float(g.segmenter_temperature)), \
            "x0_detached", 1.0
    else:
        measure, form = models.regressor, str(g.form)
    return AreaGuidance(measure, target=(targets_mm2 / mm2_per_frac).float().to(device), scale=scales.to(device),
                        form=form, boost=float(g.high_noise_boost), boost_above_t=int(g.boost_above_t),
                        autocast_dtype=dt, regressor_scale=reg_per_frac)


def spatial_guidance(cfg: DictConfig, case: Case, arms: list[Arm], n: int, dt: torch.dtype | None,
                     device: torch.device) -> SpatialGuidance | None:
    """The spatial guidance callback toward the FK forecast (None when ``guidance.spatial_weight`` is 0 or the
    prior slice has no tumour: then the FK model cannot say where). Arm a's samples are steered toward the ``fk``
    method's mask at its target: the ODE target of its day, the true area for ``oracle-area``; ``unguided``
    samples get weight 0 (left bit for bit as they are)."""
    w = float(cfg.guidance.spatial_weight)
    if w == 0 or case.fk is None or not bool(case.slices.prior_mask.any()):
        return None
    maps = torch.stack([case.fk.mask_of(TRUTH_KEY if a.source == "oracle" else target_key(a.day_index)) for a in arms])
    weights = torch.cat([torch.full((n,), 0.0 if a.source == "unguided" else w) for a in arms])
    return spatial_callback(cfg, case.models, maps, weights, torch.arange(len(arms)).repeat_interleave(n), dt, device)


def spatial_callback(cfg: DictConfig, models, maps: torch.Tensor, weights: torch.Tensor, groups: torch.Tensor,
                     dt: torch.dtype | None, device: torch.device) -> SpatialGuidance:
    """The ``guidance`` section's spatial term toward ``maps`` ``[K, H, W]`` (``groups`` [N]: each sample's map,
    ``weights`` [N]), measured by the segmenter's soft mask; the one place 2D and 3D build it."""
    g = cfg.guidance
    soft = SoftArea(models.segmenter, temperature=float(g.segmenter_temperature))
    return SpatialGuidance(soft.soft_mask, maps.float().to(device), weights.to(device), groups=groups,
                           autocast_dtype=dt, tolerance=float(g.spatial_tolerance),
                           scale_schedule=str(g.spatial_schedule))


def generate(cfg: DictConfig, case: Case, arms: list[Arm], device: torch.device) -> dict[Arm, MethodResult]:
    """The generative arms' results (an empty dict when there is none)."""
    arms = generative_arms(case, arms)
    if not arms:
        return {}
    n, models, sl = int(cfg.sampling.num_generations), case.models, case.slices
    targets = [arm_targets(cfg, case, a, n) for a in arms]
    scales = torch.cat([torch.full((n,), a.scale if a.source != "unguided" else 0.0) for a in arms])
    dt = autocast_dtype(str(cfg.trainer.precision), device)
    guidance = area_guidance(cfg, case, torch.cat(targets), scales, dt, device)
    spatial = spatial_guidance(cfg, case, arms, n, dt, device)
    s = cfg.sampling
    whole = segmenter_from_logits(models.segmenter, autocast_dtype=dt)  # sigmoid of channel 0 = whole tumour
    pm = probability_map(
        models.denoiser, models.schedule, sl.prior.image.to(device)[None], lambda x: case.admissible(whole(x)),
        num_generations=n * len(arms), **sampler_kwargs(s),
        callbacks=[guidance] if spatial is None else [guidance, spatial], y=models.class_label, pixel_area=sl.pixel_area,
        autocast_dtype=dt,
        noise_seeds=[key_seed(int(cfg.seed), case.plan.subject, i) for _ in arms for i in range(n)],
        keep_mask=case.keep.to(device) if s.preserve_anatomy else None,
        groups=torch.arange(len(arms)).repeat_interleave(n))
    return {a: MethodResult(pm.frequency[i], pm.mean[i], pm.std[i], pm.areas[i * n:(i + 1) * n].double().cpu(), targets[i])
            for i, a in enumerate(arms)}
