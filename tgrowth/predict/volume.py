"""3D prediction (``volume=true``): every axial slice with tumour on the prior scan, in one batched sampling pass.

The stages of :mod:`tgrowth.predict.pipeline`, in 3D, for one subject (:func:`predict_volume`):

1. plan (:func:`tgrowth.predict.plan.plan_subject`): the growth ODE is fitted to tumour VOLUMES (mm^3) and
   ``plan.slices`` is the contiguous range of axial slices from the first to the last one holding tumour on the
   prior scan, ``volume_margin_slices`` wider each side (:func:`~tgrowth.predict.plan.volume_slices`);
2. :func:`load_volume_slices`: those slices of the prior (and the real follow-up, and the fitted timepoints
   where the FK model needs them) in the models' geometry; with ``data.resize=window`` ONE window for all
   slices, centred on the prior tumour's in-plane centroid over the slices, so the slices stack into a
   sub-volume ``[S, H, W]`` at the spacing (slice thickness, row, col);
3. :func:`volume_case`: the ODE's volume forecast as targets (``Targets`` in mm^3), the 3D FK forecast on the
   stack where needed (:func:`~tgrowth.predict.targets.fk_forecast`), per-slice shares of the volume
   (``volume_distribution``: the FK forecast's slice areas at the ODE's median volume, or the prior's slice
   areas) and the 3D change zone (anatomy-preserving sampling);
4. :func:`volume_generate`: arms x slices x generations in ONE :func:`~tgrowth.probability.probability_map`
   pass (``prior_index``: each row's slice; ``groups``: arm x slice), chunked by ``sampling.batch_size``.
   Row (arm, slice k, generation g) is guided to ``V_g share_k / thickness`` mm^2 (``V_g`` the ODE volume of
   generation g: the median or bootstrap replicate g) and draws the noise keyed (seed, subject, g): the
   SAME noise on every slice (and every arm), which is how neighbouring slices are kept consistent;
5. the baselines of :mod:`tgrowth.predict.methods` on the stack (a :class:`VolumeCase` is their
   :class:`~tgrowth.predict.methods.Forecastable` in 3D); :func:`volume_rows`: every method scored in
   the input volume's grid (``dice_3d``, ``hd95_3d`` at the voxel spacing, ``volume_error_vs_truth``), plus
   the slice-to-slice consistency (``adjacent_dice``: mean Dice between neighbouring slices' thresholded maps,
   ``adjacent_dice_truth`` the same of the real follow-up);
6. :func:`write_volume_subject`: ``prob_map``/``pred_mean``/``pred_std.nii.gz`` in the input geometry (the
   generated slices filled, the others 0), ``metrics.json``, ``info.json`` (``slices``, ``volume_forecast_mm3``).

Everything outside the generated slices (and the window) is predicted as no tumour by every method. With
``sampling.map_connected`` every method's map keeps only the parts connected (in 3D, across slices) to the prior
tumour (:func:`~tgrowth.predict.methods.connected_maps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from data_modules.geometry import SliceSample, centroid
from data_modules.longitudinal import LongitudinalDataModule
from data_modules.volumes import Volume, tumour_mask
from tgrowth import metrics as M
from tgrowth.diffusion.guidance import SpatialGuidance
from tgrowth.diffusion.sampler import key_seed
from tgrowth.errors import DataError, TgrowthError
from tgrowth.growth.geometry import change_zone, radial_growth_mm
from tgrowth.io import save_nifti, write_json
from tgrowth.predict import plots
from tgrowth.predict.generate import area_guidance, sampler_kwargs, spatial_callback
from tgrowth.predict.methods import Arm, Forecastable, MethodResult, connected_maps, run_baselines
from tgrowth.predict.models import Models, autocast_dtype
from tgrowth.predict.outputs import method_map_files
from tgrowth.predict.plan import Plan
from tgrowth.predict.state import Stopwatch
from tgrowth.predict.targets import (
    FK_METHODS,
    TRUTH_KEY,
    FKPrior,
    Targets,
    brain_of,
    fk_forecast,
    generation_key,
    needs_truth_forecast,
    subject_targets,
    target_key,
)
from tgrowth.probability import probability_map, segmenter_from_logits

__all__ = ["VolumeSlices", "VolumeCase", "load_volume_slices", "volume_case", "volume_generate",
           "volume_rows", "adjacent_dice", "write_volume_subject", "predict_volume", "generated_slices"]


# --------------------------------------------------------------------------- the slices
@dataclass
class VolumeSlices:
    """The generated axial slices ``indices`` of one subject in the models' geometry (one window for all):
    ``prior`` / ``truth`` (None without a follow-up) / ``history`` (per fitted timepoint, the prior last; empty
    unless loaded) as lists of :class:`SliceSample`; ``prior_grid`` / ``truth_grid`` the input volumes
    (axial last) the 3D metrics and NIfTI files use."""

    indices: list[int]
    prior: list[SliceSample]
    truth: list[SliceSample] | None
    labels: Any
    prior_grid: Volume
    truth_grid: Volume | None
    history: list[list[SliceSample]] = field(default_factory=list)

    @property
    def images(self) -> torch.Tensor:
        """``[S, C, H, W]`` the prior slices."""
        return torch.stack([s.image for s in self.prior])

    @property
    def truth_images(self) -> torch.Tensor | None:
        return None if self.truth is None else torch.stack([s.image for s in self.truth])

    def _mask(self, samples: list[SliceSample] | None) -> torch.Tensor | None:
        if samples is None or any(s.seg is None for s in samples):
            return None
        return torch.stack([tumour_mask(s.seg, self.labels) for s in samples])

    @property
    def prior_mask(self) -> torch.Tensor:
        """``[S, H, W]`` the prior tumour on the stack."""
        return self._mask(self.prior)

    @property
    def truth_mask(self) -> torch.Tensor | None:
        return self._mask(self.truth)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """mm per stack axis: (slice thickness, row, col)."""
        s = self.prior[0]
        return float(s.input_spacing_mm[2]), float(s.spacing_mm[0]), float(s.spacing_mm[1])

    @property
    def pixel_area(self) -> float:
        return self.spacing[1] * self.spacing[2]

    @property
    def voxel_volume(self) -> float:
        return self.spacing[0] * self.pixel_area

    @property
    def true_volume(self) -> float | None:
        """The real follow-up's whole-tumour volume (mm^3) in the input grid (None without a segmented one)."""
        m = self.grid_mask("truth")
        return None if m is None else float(m.sum()) * float(np.prod(self.truth_grid.spacing_mm))

    def grid_mask(self, which: str) -> np.ndarray | None:
        """The prior's or the follow-up's whole tumour (``data.labels``) in the input grid ``[X, Y, Z]``."""
        vol = self.prior_grid if which == "prior" else self.truth_grid
        return None if vol is None or vol.seg is None else np.asarray(tumour_mask(vol.seg, self.labels))

    def to_grid(self, stack: torch.Tensor) -> np.ndarray:
        """``[S, H, W]`` or ``[S, C, H, W]`` on the stack -> the input grid ``[X, Y, Z]`` / ``[X, Y, Z, C]`` (axial
        last; the other slices 0), undoing window, crop/pad and resize slice by slice (SliceSample.to_plane)."""
        arr = stack.detach().cpu().float().numpy()
        nx, ny, nz = self.prior_grid.shape
        out = np.zeros((nx, ny, nz) + ((arr.shape[1],) if arr.ndim == 4 else ()), dtype=np.float32)
        for i, k in enumerate(self.indices):
            plane = self.prior[i].to_plane(arr[i])
            out[:, :, k] = np.moveaxis(plane, 0, -1) if arr.ndim == 4 else plane
        return out

    def save(self, path: Path, grid: np.ndarray) -> None:
        """Write an input-grid array as NIfTI in the prior file's layout and affine."""
        save_nifti(path, self.prior_grid.to_file_layout(grid), self.prior_grid.affine)


def load_volume_slices(dm: LongitudinalDataModule, plan: Plan, labels: Any, history: bool = False) -> VolumeSlices:
    """The plan's slices (``plan.slices``) of the prior, the real follow-up and (``history``) the fitted timepoints;
    with ``data.resize=window`` one window for all, centred on the prior tumour's centroid over the slices (the
    brain's centre without tumour in them)."""
    def load(tp):
        return [dm.load_slice(tp, k) for k in plan.slices]

    prior = load(plan.prior)
    truth = load(plan.target) if plan.target is not None else None
    earlier = [load(t) for t in plan.fit_timepoints if t is not plan.prior] if history else []
    if dm.prep.resize == "window":
        masks = [tumour_mask(s.seg, labels) for s in prior if s.seg is not None]
        union = torch.stack(masks).any(0) if masks else None
        big = max(prior, key=lambda s: int(M.foreground(s.image).sum()))
        center = (centroid(union) if union is not None else None) or centroid(M.foreground(big.image))
        size = dm.prep.image_size
        prior = [s.window(center, size) for s in prior]
        truth = None if truth is None else [s.window(center, size) for s in truth]
        earlier = [[s.window(center, size) for s in e] for e in earlier]
    grid = dm.loader.volume(plan.prior)
    truth_grid = dm.loader.volume(plan.target) if plan.target is not None else None
    return VolumeSlices(list(plan.slices), prior, truth, labels, grid, truth_grid, earlier + [prior] if history else [])



# --------------------------------------------------------------------------- targets
@dataclass
class VolumeCase(Forecastable):
    """What the 3D stages know about one subject: ``targets`` in mm^3 (the ODE's volume forecast relative to
    ``prior_volume``, the fitted prior volume), ``share [S]`` each slice's part of the target volume, ``keep
    [S, H, W]`` the change zone's keep weight, ``fk`` the 3D FK forecast on the stack (None when unused). As a
    :class:`~tgrowth.predict.methods.Forecastable` it is the stack, so the baselines run on it in 3D."""

    plan: Plan
    slices: VolumeSlices
    targets: Targets
    models: Models
    keep: torch.Tensor
    share: torch.Tensor
    prior_volume: float
    fk: FKPrior | None = None
    generated: torch.Tensor | None = None  # [S] bool: the slices generated (None: all); the others FK-filled
    zone_mm: float | None = None  # the isotropic change zone's reach beyond the prior tumour (mm; None: zone=fk)
    free: torch.Tensor | None = None  # no kept holes in 3D (sampling.keep_prior_holes is 2D only)

    # the Forecastable view of the stack
    subject = property(lambda self: self.plan.subject)
    prior_mask = property(lambda self: self.slices.prior_mask)
    images = property(lambda self: self.slices.images)
    truth_images = property(lambda self: self.slices.truth_images)
    spacing = property(lambda self: self.slices.spacing)
    cell = property(lambda self: self.slices.voxel_volume)
    prior_size = property(lambda self: float(self.slices.prior_mask.sum()) * self.slices.voxel_volume)
    true_size = property(lambda self: self.slices.true_volume)

    def slice_targets(self, mode: str, n: int) -> torch.Tensor:
        """``[S, n]`` per-slice guidance targets (mm^2): generation g's volume x the slice's share / thickness;
        with per-generation FK masks (``guidance.spatial_target=generation``) the share is generation g's mask's."""
        vols = self.targets.per_generation(mode, self.prior_volume, 0, n)
        masks = self.generation_masks
        share = self.share[:, None] if masks is None else _shares(masks)
        return share.double() * vols[None] / self.slices.spacing[0]

    @cached_property
    def generation_masks(self) -> torch.Tensor | None:
        """``[S, n, H, W]`` bool: the FK mask at each generation's own size target (None unless the FK prior has
        them: ``guidance.spatial_target=generation``); stacked once per subject."""
        n = 0
        while self.fk is not None and generation_key(n) in self.fk.sizes:
            n += 1
        return torch.stack([self.fk.mask_of(generation_key(g)) for g in range(n)], 1) if n else None

    def truth_targets(self, n: int) -> torch.Tensor:
        """``[S, n]`` the real follow-up's slice areas (the oracle's targets)."""
        areas = self.slices.truth_mask.flatten(1).sum(1).double() * self.slices.pixel_area
        return areas[:, None].expand(-1, n).clone()


def _shares(masks: torch.Tensor) -> torch.Tensor:
    """``[S, n]`` each slice's part of each generation's mask ``masks [S, n, H, W]``."""
    per = masks.flatten(2).sum(2).double()
    return per / per.sum(0, keepdim=True).clamp_min(1.0)


def _uses_fk(cfg: DictConfig, arms: list[Arm]) -> bool:
    return (str(cfg.volume_distribution) == "fk" or any(a.method in FK_METHODS for a in arms) or int(cfg.volume_fill_slices) > 0
            or str(cfg.sampling.zone) == "fk" or float(cfg.guidance.spatial_weight) > 0)


def _zone_upper(targets: Targets, prior_volume: float) -> float:
    """The ODE's 95th-percentile volume forecast (mm^3): the size the change zone is made for."""
    return prior_volume * float(targets.ratios.quantile(0.95, dim=0).max())


def _fk_sizes(cfg: DictConfig, targets: Targets, prior_volume: float, true_volume: float | None,
              arms: list[Arm]) -> dict[str, float]:
    sizes = {target_key(0): float(targets.median[0])}
    g = cfg.guidance
    if str(g.spatial_target) == "generation" and float(g.spatial_weight) > 0 and any(a.source == "ode" for a in arms):
        vols = targets.per_generation(str(g.target), prior_volume, 0, int(cfg.sampling.num_generations))
        sizes.update({generation_key(i): float(v) for i, v in enumerate(vols)})
    if str(cfg.sampling.zone) == "fk":
        sizes["zone"] = _zone_upper(targets, prior_volume)
    oracle_map = float(cfg.guidance.spatial_weight) > 0 or int(cfg.volume_fill_slices) > 0
    if needs_truth_forecast(oracle_map, arms, true_volume):
        sizes[TRUTH_KEY] = true_volume
    return sizes


def _keep(cfg: DictConfig, vs: VolumeSlices, targets: Targets, prior_volume: float,
          fk: FKPrior | None) -> tuple[torch.Tensor, float | None]:
    """The 3D change zone's keep weight ``[S, H, W]`` (as :func:`~tgrowth.predict.targets.zone_keep`, in 3D: the
    radial growth of a ball from the prior volume to the ODE's upper band, plus ``zone_margin_mm``) and that reach
    (mm; None for ``zone=fk``)."""
    s = cfg.sampling
    brain = brain_of(vs.images.transpose(0, 1)).numpy()
    prior = vs.prior_mask
    if str(s.zone) == "fk":
        region = (fk.density_of("zone") > float(s.zone_fk_level)) | prior
        keep = change_zone(region.numpy(), 0.0, vs.spacing, region=brain, edge_mm=float(s.zone_edge_mm))
        return torch.from_numpy(keep).float(), None
    grow = radial_growth_mm(prior_volume, _zone_upper(targets, prior_volume), ndim=3) + float(s.zone_margin_mm)
    keep = change_zone(prior.numpy(), grow, vs.spacing, region=brain, edge_mm=float(s.zone_edge_mm))
    return torch.from_numpy(keep).float(), grow


def volume_case(cfg: DictConfig, plan: Plan, vs: VolumeSlices, fit: Any, models: Models, arms: list[Arm]) -> VolumeCase:
    """Targets, the FK forecast (where used), the per-slice shares and the change zone of one subject."""
    prior_volume = float(plan.sizes[-1])  # the fitted prior volume (mm^3)
    targets = subject_targets(fit, plan, prior_volume)
    if targets.ratios is None:
        raise DataError(f"subject {plan.subject}: the ODE's forecast has no positive prior volume")
    fk = None
    if _uses_fk(cfg, arms):
        sizes = _fk_sizes(cfg, targets, prior_volume, vs.true_volume, arms)
        segs = [torch.stack([torch.where(tumour_mask(s.seg, vs.labels), s.seg, 0).long() for s in h])
                for h in vs.history]
        fk = fk_forecast(plan, vs.images.transpose(0, 1), vs.prior_mask, segs, vs.spacing, sizes, models.contrasts)
    if str(cfg.volume_distribution) == "fk":
        per_slice = fk.mask_of(target_key(0)).flatten(1).sum(1).double()
    else:
        per_slice = vs.prior_mask.flatten(1).sum(1).double()
    share = per_slice / per_slice.sum().clamp_min(1.0)
    keep, zone_mm = _keep(cfg, vs, targets, prior_volume, fk)
    generated = None
    if int(cfg.volume_fill_slices) > 0:
        generated = generated_slices(vs.indices, vs.grid_mask("prior"), int(cfg.volume_margin_slices))
    return VolumeCase(plan, vs, targets, models, keep, share, prior_volume, fk, generated, zone_mm)


def generated_slices(indices: list[int], prior_grid_mask: np.ndarray, margin: int) -> torch.Tensor:
    """``[S]`` bool over the stack's axial ``indices``: the slices from the first to the last holding prior tumour
    in the input grid (``[X, Y, Z]``, axial last), ``margin`` wider each side, as :func:`~tgrowth.predict.plan.
    volume_slices` chose them; with ``volume_fill_slices`` the stack is wider and the rest are FK-filled."""
    hit = np.flatnonzero(np.asarray(prior_grid_mask).any((0, 1)))
    k = torch.as_tensor(indices)
    if hit.size == 0:
        return torch.zeros_like(k, dtype=torch.bool)
    return (k >= int(hit[0]) - margin) & (k <= int(hit[-1]) + margin)


# --------------------------------------------------------------------------- generation
def _spatial(cfg: DictConfig, vc: VolumeCase, arms: list[Arm], n: int, dt: torch.dtype | None,
             device: torch.device) -> SpatialGuidance | None:
    """Spatial guidance toward the 3D FK mask, slice by slice (group arm x slice), as in 2D."""
    w = float(cfg.guidance.spatial_weight)
    if w == 0 or vc.fk is None:
        return None
    gen = _gen_index(vc)
    s = len(gen)
    weights = torch.cat([torch.full((s * n,), 0.0 if a.source == "unguided" else w) for a in arms])
    per_gen = vc.generation_masks
    if per_gen is None:  # one map per (arm, slice)
        maps = torch.cat([vc.fk.mask_of(_arm_key(a))[gen] for a in arms])
        return spatial_callback(cfg, vc.models, maps, weights, torch.arange(len(arms) * s).repeat_interleave(n), dt,
                                device)
    # one map per row (arm, slice, generation): the ODE arm's generation g toward its own size's mask
    maps = torch.cat([per_gen[gen].flatten(0, 1) if a.source == "ode" else
                      vc.fk.mask_of(_arm_key(a))[gen].repeat_interleave(n, 0) for a in arms])
    return spatial_callback(cfg, vc.models, maps, weights, torch.arange(len(arms) * s * n), dt, device)


def _arm_key(arm: Arm) -> str:
    """The FK prior row an arm's spatial map and filled slices take: the true size for the oracle, else the
    ODE's median target."""
    return TRUTH_KEY if arm.source == "oracle" else target_key(0)


def _gen_index(vc: VolumeCase) -> torch.Tensor:
    """The generated slices' positions in the stack."""
    s = len(vc.slices.indices)
    return torch.arange(s) if vc.generated is None else vc.generated.nonzero().flatten()


def _fill(vc: VolumeCase, arm: Arm, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An arm's forecast on the FK-filled slices: ``[S, H, W]`` (0 on the generated ones) and the ``[n]``
    generations' volumes there (mm^3). The fk method's mask at the arm's target volume (the true one for the
    oracle; none for unguided); with per-generation masks (``guidance.spatial_target=generation``) the ODE arm's
    generation g takes its own size's mask, and the map their frequency, as on a generated slice."""
    vs = vc.slices
    out = torch.zeros_like(vs.prior_mask, dtype=torch.float32)
    none = torch.zeros(n, dtype=torch.float64)
    if vc.generated is None or vc.fk is None or arm.source == "unguided":
        return out, none
    filled = ~vc.generated
    per_gen = vc.generation_masks
    if arm.source == "ode" and per_gen is not None:
        out[filled] = per_gen[filled].float().mean(1)
        return out, per_gen[filled].transpose(0, 1).flatten(1).sum(1).double() * vs.voxel_volume
    key = _arm_key(arm)
    if key not in vc.fk.sizes:
        return out, none
    out[filled] = vc.fk.mask_of(key)[filled].float()
    return out, none + float(out.sum()) * vs.voxel_volume


def volume_generate(cfg: DictConfig, vc: VolumeCase, arms: list[Arm], device: torch.device) -> dict[Arm, MethodResult]:
    """Every generative arm on every generated slice in one batched pass; per arm a :class:`MethodResult` with
    ``prob [S, H, W]``, ``mean``/``std [S, C, H, W]`` on the whole stack (FK-filled slices: :func:`_fill`, the
    prior image, no spread), ``areas`` = the N generations' VOLUMES (mm^3, the filled slices' added) and
    ``targets`` their target volumes."""
    arms = [a for a in arms if a.source != "baseline" and not (a.source == "oracle" and vc.slices.truth_mask is None)]
    if not arms:
        return {}
    gen = _gen_index(vc)
    n, s, models, vs = int(cfg.sampling.num_generations), len(gen), vc.models, vc.slices
    full = [vc.truth_targets(n) if a.source == "oracle" else vc.slice_targets(str(cfg.guidance.target), n)
            for a in arms]  # [S_all, n] mm^2 each
    per_arm = [t[gen] for t in full]  # [S, n]: the generated slices
    scales = torch.cat([torch.full((s * n,), a.scale if a.source != "unguided" else 0.0) for a in arms])
    dt = autocast_dtype(str(cfg.trainer.precision), device)
    guidance = area_guidance(cfg, vc, torch.cat([t.reshape(-1) for t in per_arm]), scales, dt, device)
    spatial = _spatial(cfg, vc, arms, n, dt, device)
    sp = cfg.sampling
    rows = len(arms) * s * n  # row = (arm a, slice k, generation g), g fastest
    pm = probability_map(
        models.denoiser, models.schedule, vs.images[gen].to(device),
        segmenter_from_logits(models.segmenter, autocast_dtype=dt), num_generations=rows, **sampler_kwargs(sp),
        callbacks=[guidance] if spatial is None else [guidance, spatial], y=models.class_label,
        pixel_area=vs.pixel_area, autocast_dtype=dt,
        noise_seeds=[key_seed(int(cfg.seed), vc.plan.subject, g) for _ in arms for _ in range(s) for g in range(n)],
        keep_mask=vc.keep[gen].to(device) if sp.preserve_anatomy else None,
        groups=torch.arange(len(arms) * s).repeat_interleave(n),
        prior_index=torch.arange(s).repeat_interleave(n).repeat(len(arms)))
    vols = pm.areas.double().cpu().reshape(len(arms), s, n).sum(1) * vs.spacing[0]
    out = {}
    for i, a in enumerate(arms):
        (fill, filled_volume), rows_i = _fill(vc, a, n), slice(i * s, (i + 1) * s)
        prob = fill.to(pm.frequency.device, copy=True)
        mean, std = vs.images.to(pm.mean, copy=True), torch.zeros_like(vs.images).to(pm.std)
        prob[gen], mean[gen], std[gen] = pm.frequency[rows_i], pm.mean[rows_i], pm.std[rows_i]
        out[a] = MethodResult(prob, mean, std, vols[i] + filled_volume, full[i].sum(0) * vs.spacing[0])
    return out


# --------------------------------------------------------------------------- evaluation
def adjacent_dice(masks: torch.Tensor) -> float | None:
    """Mean Dice between neighbouring slices of ``masks [S, H, W]`` over the pairs where either is non-empty
    (None when there is no such pair): how consistent a stack of slices is from one slice to the next."""
    m = torch.as_tensor(masks).bool()
    if m.shape[0] < 2:
        return None
    a, b = m[:-1].flatten(1), m[1:].flatten(1)
    used = (a | b).any(1)
    if not bool(used.any()):
        return None
    d = M.dice_per_sample(a[used].reshape(-1, *m.shape[1:]), b[used].reshape(-1, *m.shape[1:]))
    return float(d.double().mean())


def _hd95_3d(pred: np.ndarray, truth: np.ndarray, spacing) -> float:
    """HD95 (mm) of two input-grid masks, computed in their bounding box (+2 voxels: the same distances);
    one empty mask: the grid's diagonal (as in 2D)."""
    if not pred.any() or not truth.any():
        return M.hd95(pred, truth, spacing, one_empty="diagonal")
    idx = np.argwhere(pred | truth)
    lo, hi = np.maximum(idx.min(0) - 2, 0), idx.max(0) + 3
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return M.hd95(pred[box], truth[box], spacing)


def volume_row(vc: VolumeCase, arm: Arm, r: MethodResult, threshold: float) -> dict[str, Any]:
    """One method's metrics row in 3D (the input grid) and on the stack."""
    plan, vs = vc.plan, vc.slices
    tgt, pred = float(vc.targets.median[arm.day_index]), float(r.areas.mean())
    pgrid = vs.to_grid(r.prob) >= threshold
    true_volume = vc.true_size
    row: dict[str, Any] = {
        "subject": plan.subject, "method": arm.method, "scale": arm.scale,
        "pred_volume_mm3": pred, "map_volume_mm3": float(pgrid.sum()) * float(np.prod(vs.prior_grid.spacing_mm)),
        "target_volume_mm3": tgt, "prior_volume_mm3": vc.prior_volume, "true_volume_mm3": true_volume,
        "prior_timepoint": plan.prior.timepoint, "target_timepoint": plan.target.timepoint if plan.target else None,
        "target_day": plan.target_days[arm.day_index], "slice_index": plan.slice_index, "n_slices": len(vs.indices),
        "volume_error_vs_target": abs(pred - tgt) / tgt if tgt > 0 else None,
        "adjacent_dice": adjacent_dice(r.prob.cpu() >= threshold),
    }
    truth = vs.grid_mask("truth")
    if truth is not None:
        spacing = vs.truth_grid.spacing_mm
        row.update(dice_3d=M.dice(pgrid, truth), hd95_3d=_hd95_3d(pgrid, truth, spacing),
                   adjacent_dice_truth=adjacent_dice(vs.truth_mask))
        if true_volume:
            row.update(volume_error_vs_truth=abs(pred - true_volume) / true_volume,
                       ode_volume_error=abs(tgt - true_volume) / true_volume)
        mean, tr = r.mean.cpu().float(), vs.truth_images.float()
        row.update(ssim=M.ssim(mean, tr), psnr=M.psnr(mean, tr), mae=M.mae(mean, tr))
    return row


def volume_rows(cfg: DictConfig, vc: VolumeCase, results: dict[Arm, MethodResult]) -> list[dict[str, Any]]:
    return [volume_row(vc, a, r, float(cfg.sampling.threshold)) for a, r in results.items()]


# --------------------------------------------------------------------------- outputs
def _info(cfg: DictConfig, vc: VolumeCase, results: dict[Arm, MethodResult], fit: Any, main: Arm | None) -> dict[str, Any]:
    plan, vs, tg = vc.plan, vc.slices, vc.targets
    r = results[main] if main is not None else None
    return {
        "subject": plan.subject, "prior_timepoint": plan.prior.timepoint,
        "target_timepoint": plan.target.timepoint if plan.target is not None else None,
        "prior_day": float(plan.prior.day), "target_day": plan.target_days[0], "slice_index": int(plan.slice_index),
        "volume": True, "slices": [vs.indices[int(i)] for i in _gen_index(vc)],
        "filled_slices": [] if vc.generated is None else [k for k, g in zip(vs.indices, vc.generated.tolist()) if not g],
        "contrasts": list(vc.models.contrasts),
        "volume_forecast_mm3": tg.band(0), "prior_volume_mm3": vc.prior_volume, "true_volume_mm3": vc.true_size,
        "target_volume_mm3": float(tg.median[0]), "volume_distribution": str(cfg.volume_distribution),
        "slice_share": [float(v) for v in vc.share], "change_zone_mm": vc.zone_mm,
        "ode": {"model": fit.model_name(plan.subject), **tg.band(0), "fit_days": [float(t.day) for t in plan.fit_timepoints],
                "fit_sizes_mm3": [float(s) for s in plan.sizes], "n_bootstrap": int(np.asarray(tg.forecast.samples).shape[0])},
        "generated_volume_mm3": None if r is None else {"mean": float(r.areas.mean()), "p05": float(r.areas.quantile(0.05)),
                                                        "p95": float(r.areas.quantile(0.95))},
        "guidance": OmegaConf.to_container(cfg.guidance, resolve=True),
        "sampling": OmegaConf.to_container(cfg.sampling, resolve=True),
        "seed": plan.seed, "image_size": vc.models.image_size, "voxel_spacing_mm": list(vs.spacing),
        "methods": {a.method: {"generated_volume_mm3": float(x.areas.mean()), "scale": a.scale} for a, x in results.items()},
        **({"fk": vc.fk.info()} if vc.fk is not None else {}),
    }


def _montage(cfg: DictConfig, vc: VolumeCase, r: MethodResult, path: Path) -> Path:
    """montage.png: a few generated slices, the map over the real follow-up (the prior's t2f or first contrast)."""
    vs, contrasts = vc.slices, list(vc.models.contrasts)
    ci = contrasts.index("t2f") if "t2f" in contrasts else 0
    back = vs.truth_images if vs.truth_images is not None else vs.images
    tm = vs.truth_mask
    return plots.volume_montage(path, subject=vc.plan.subject, slices=vs.indices, images=back[:, ci].numpy(),
                                prob=r.prob.cpu().numpy(), truth_seg=None if tm is None else tm.numpy(),
                                prior_seg=vs.prior_mask.numpy(), threshold=float(cfg.sampling.threshold))


def write_volume_subject(cfg: DictConfig, vc: VolumeCase, results: dict[Arm, MethodResult], rows: list[dict[str, Any]],
                         fit: Any, sdir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """The main (first ODE-guided) arm's maps in the input geometry, montage.png (with ``plots``), every method's
    map (with ``method_maps``), metrics.json, then info.json (last)."""
    main = next((a for a in results if a.source == "ode"), None)
    files = {}
    if main is not None:
        r = results[main]
        for name, arr in (("prob_map", r.prob), ("pred_mean", r.mean), ("pred_std", r.std)):
            vc.slices.save(sdir / f"{name}.nii.gz", vc.slices.to_grid(arr))
            files[name] = f"{name}.nii.gz"
        if cfg.plots:
            files["montage"] = _montage(cfg, vc, r, sdir / "montage.png").name
    if cfg.method_maps:
        files["methods"] = method_map_files(results, lambda path, p: vc.slices.save(path, vc.slices.to_grid(p)), sdir)
    info = {**_info(cfg, vc, results, fit, main), "files": files, **extra}
    write_json(sdir / "metrics.json", rows)
    write_json(sdir / "info.json", info)
    return info


def predict_volume(cfg: DictConfig, models: Models, dm: LongitudinalDataModule, fit: Any, plan: Plan,
                   arms: list[Arm], sdir: Path, device: torch.device) -> dict[str, Any]:
    """All stages after the plan for one subject in 3D; returns its info.json record."""
    clock = Stopwatch()
    if plan.multi_day:
        raise TgrowthError("volume=true needs a real follow-up timepoint (target.days is not supported)")
    vs = load_volume_slices(dm, plan, cfg.data.labels, history=_uses_fk(cfg, arms))
    clock.lap("load")
    vc = volume_case(cfg, plan, vs, fit, models, arms)
    clock.lap("targets")  # the ODE volume targets, the 3D FK calibration and forecast (where used), the zone
    results = volume_generate(cfg, vc, arms, device)
    clock.lap("generate")
    results.update(run_baselines(vc, arms))
    results = connected_maps(cfg, vc, results)
    clock.lap("baselines")
    rows = volume_rows(cfg, vc, results)
    clock.lap("evaluate")
    return write_volume_subject(cfg, vc, results, rows, fit, sdir, clock.record(device=str(device)))
