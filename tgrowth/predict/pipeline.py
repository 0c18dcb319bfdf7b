"""`tgrowth predict`: sizes -> ODE -> targets -> guided generations -> probability maps -> files and metrics.

Per subject of a longitudinal data set (format 2):

1. the axial slice (largest tumour on the prior scan's seg, or ``data.slice``) and the tumour area on it at
   every timepoint before the target (mm^2, model geometry);
2. the growth ODE fitted on those areas (all subjects in one batched fit), forecast at the target day:
   per bootstrap replicate the relative change ``r_b = size_b(target) / size_b(prior)``; the guidance target
   is ``prior area x median(r)`` (``guidance.target=median``) or ``prior area x r_b`` per generation
   (``bootstrap``);
3. N generations per method from the prior scan, ALL methods (and target days, and sweep scales) in one
   batched sampling pass with per-sample targets and scales, segmented -> probability map, mean, std;
4. NIfTI (input geometry), info.json, PNGs; 5. metrics vs the real follow-up, merged by rank 0.

Methods: ``tgrowth`` (ODE target, guidance.scale), ``unguided`` (same sampler, scale 0), ``oracle-area``
(guided to the true follow-up area), ``no-change`` (the prior scan and its tumour as the forecast).
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from data_modules.volumes import check_subject_grid, label_set
from tgrowth.config.predict import check_predict_config
from tgrowth.diffusion.sampler import key_seed
from tgrowth.errors import ConfigError, DataError, TgrowthError
from tgrowth.predict import report, state
from tgrowth.predict.dist import Dist, launch

log = logging.getLogger("tgrowth.predict")


# --------------------------------------------------------------------------- arms (methods x targets x scales)
@dataclass(frozen=True)
class Arm:
    """One set of N generations: a method name, where its target comes from, its scale, its target day."""

    method: str
    kind: str  # "ode" | "unguided" | "oracle" | "prior"
    scale: float = 0.0
    day_index: int = 0


def default_arms(cfg: DictConfig) -> list[Arm]:
    days = list(cfg.target.days)
    scale = float(cfg.guidance.scale)
    if days:  # future days: no real follow-up, so only the method itself (one arm per day)
        return [Arm("tgrowth", "ode", scale, j) for j in range(len(days))]
    kinds = {"tgrowth": ("ode", scale), "unguided": ("unguided", 0.0), "oracle-area": ("oracle", scale),
             "no-change": ("prior", 0.0)}
    return [Arm(m, *kinds[m]) for m in cfg.methods]  # names checked by check_predict_config


# --------------------------------------------------------------------------- models
@dataclass
class Models:
    denoiser: torch.nn.Module
    schedule: Any
    regressor: torch.nn.Module
    segmenter: torch.nn.Module
    image_size: int
    contrasts: list[str]
    area_key: str
    area_scale: float
    class_label: int | None
    meta: dict[str, Any] = field(default_factory=dict)


def load_models(cfg: DictConfig, device: torch.device) -> Models:
    """Load the three checkpoints, checking paths, kinds, image sizes and contrasts against each other."""
    from tgrowth.diffusion.checkpoints import load_denoiser, load_regressor, load_segmenter

    for key in ("denoiser", "regressor", "segmenter"):
        p = cfg.checkpoints[key]
        if not p or not Path(str(p)).is_file():
            raise TgrowthError(f"checkpoints.{key}: file not found: {p} (train it with `tgrowth train-{key}` "
                               f"and pass checkpoints.{key}=<output_dir>/{key}.pt)")
    want_size = cfg.data.image_size
    want_contrasts = list(cfg.data.contrasts) if cfg.data.contrasts else None
    den, schedule, dmeta = load_denoiser(cfg.checkpoints.denoiser, want_size, want_contrasts, map_location=device)
    size, contrasts = int(dmeta["image_size"]), list(dmeta.get("contrasts") or want_contrasts or [])
    reg, rmeta = load_regressor(cfg.checkpoints.regressor, size, contrasts, map_location=device)
    seg, smeta = load_segmenter(cfg.checkpoints.segmenter, size, contrasts, map_location=device)
    for net in (den, reg, seg):
        net.eval().requires_grad_(False)
    area = rmeta.get("area")
    if not isinstance(area, dict) or "key" not in area or "scale" not in area:
        raise TgrowthError(f"{cfg.checkpoints.regressor}: the regressor's model file does not say what it outputs "
                           "(meta 'area' with 'key' and 'scale'), so guidance.scale cannot be put in its units; "
                           "re-export it with this version of tgrowth")
    key, area_scale = str(area["key"]), float(area["scale"])
    if key not in ("area_frac", "area_mm2") or not area_scale > 0:
        raise TgrowthError(f"{cfg.checkpoints.regressor}: regressor output {key!r} x {area_scale} is not an area "
                           "(area_frac or area_mm2 times a positive scale)")
    label = 1 if getattr(den, "num_classes", None) else None
    return Models(den, schedule, reg, seg, size, contrasts, key, area_scale, label,
                  {"denoiser": dmeta, "regressor": rmeta, "segmenter": smeta})


def check_models(cfg: DictConfig, models: Models) -> None:
    """Config against the model files, before any subject is touched: one ConfigError listing every problem."""
    dmeta, rmeta, smeta = (models.meta[k] for k in ("denoiser", "regressor", "segmenter"))
    problems: list[str] = []
    T = models.schedule.num_train_steps
    L = int(cfg.sampling.noise_level)
    if not 1 <= L <= T:
        problems.append(f"config key 'sampling.noise_level' must be in 1..{T} (the denoiser's schedule), got {L}")
    for kind, meta in (("denoiser", dmeta), ("regressor", rmeta)):
        t_max = meta.get("train_t_max")
        if t_max is not None and L > int(t_max):
            problems.append(f"config key 'sampling.noise_level' is {L}, above the {kind}'s train_t_max {int(t_max)} "
                            f"({cfg.checkpoints[kind]} never saw noisier inputs); use sampling.noise_level<={int(t_max)}")
    dsched, rsched = dmeta.get("schedule") or {}, rmeta.get("schedule") or {}
    if dsched and rsched and (dsched.get("kind"), int(dsched.get("num_steps", 0))) != (
            rsched.get("kind"), int(rsched.get("num_steps", 0))):
        problems.append(f"the regressor {cfg.checkpoints.regressor} was trained with the noise schedule {rsched}, the "
                        f"denoiser {cfg.checkpoints.denoiser} with {dsched}: guidance would read the wrong noise level")
    want = label_set(cfg.data.labels)
    for kind, meta in (("denoiser", dmeta), ("regressor", rmeta), ("segmenter", smeta)):
        if meta.get("labels") is not None and label_set(meta["labels"]) != want:
            problems.append(f"the {kind} {cfg.checkpoints[kind]} was trained on tumour labels {list(label_set(meta['labels']))}"
                            f", but data.labels={cfg.data.labels!r} means {list(want)}")
    if problems:
        raise ConfigError("; ".join(problems))


# --------------------------------------------------------------------------- planning
@dataclass
class Plan:
    subject: str
    prior: Any  # data_modules Timepoint
    target: Any | None  # Timepoint of the real follow-up (None: future days only)
    fit_timepoints: list[Any]
    target_days: list[float]
    slice_index: int
    sizes: list[float]  # area (mm^2) on the slice at each fit timepoint
    rt: tuple[float | None, float | None]
    seed: int
    has_target_images: bool = False


def subject_seed(seed: int, subject: str) -> int:
    """Per-subject seed independent of rank, order and which subjects run: same outputs 1 or N processes."""
    return (int(seed) * 1_000_003 + zlib.crc32(subject.encode())) % (2**31 - 1)


def _slice(cfg: DictConfig, models: Models, tp: Any, index: int | None):
    from data_modules.slices import load_slice

    return load_slice(tp, index, models.contrasts, models.image_size, resize=str(cfg.data.resize),
                      normalisation=cfg.data.normalisation, labels=cfg.data.labels)


def select_subjects(cfg: DictConfig, dataset: Any) -> list[Any]:
    subjects = list(dataset.subjects)
    if cfg.data.subjects:
        names = {s.subject for s in subjects}
        missing = [s for s in cfg.data.subjects if s not in names]
        if missing:
            raise DataError(f"data.subjects: {missing} not found in {cfg.data.root}")
        wanted = set(cfg.data.subjects)
        return [s for s in subjects if s.subject in wanted]
    split = cfg.data.split
    if split in (None, "", "all"):
        return subjects
    from data_modules.splits import assign_splits

    sp = cfg.data.splits
    splits, _ = assign_splits(subjects, cfg.data.root, (sp.train, sp.val, sp.test), int(sp.seed), str(sp.file))
    chosen = [s for s in subjects if splits.get(s.subject) == split]
    if not chosen:
        raise DataError(f"data.split={split}: no subject of {cfg.data.root} is in the {split} split "
                        f"(splits: {sorted(set(splits.values()))}); use data.split=all or data.subjects=[...]")
    return chosen


def data_problems(cfg: DictConfig, dataset: Any, subjects: list[Any]) -> list[list[str]]:
    """``[[reason, ...] per subject]`` for the selected subjects: the error-level problems `tgrowth data-check` finds
    (timeline.csv, folders and files from discovery; every timepoint on the first one's voxel grid, or resampled
    onto it with ``data.align=resample``). An empty list: the subject is usable. Must run before loading slices
    (the grid check tells the loader what to resample)."""
    errs = dataset.subject_errors()
    out: list[list[str]] = []
    for subj in subjects:
        grid = check_subject_grid(subj, float(cfg.data.grid_tolerance_mm), str(cfg.data.align))
        out.append(list(errs.get(subj.subject, [])) + [str(p) for p in grid if p.severity == "error"])
    return out


def plan_subject(cfg: DictConfig, models: Models, subj: Any) -> Plan:
    """Pick the prior/target timepoints and the slice, and measure the areas the ODE is fitted to."""
    name = subj.subject
    tps = sorted(subj.timepoints, key=lambda t: t.day)
    days = list(cfg.target.days)
    if days:
        with_seg = [t for t in tps if t.seg is not None]
        if not with_seg:
            raise DataError(f"subject {name}: no timepoint has a segmentation; nothing to fit the growth ODE to")
        prior, target, before = with_seg[-1], None, with_seg
    else:
        if cfg.target.timepoint is None:
            target = tps[-1]
        else:
            want = str(cfg.target.timepoint)
            match = [t for t in tps if t.timepoint == want
                     or (want.isdigit() and t.timepoint.isdigit() and int(t.timepoint) == int(want))]  # 001 read as 1
            if not match:
                raise DataError(f"subject {name}: no timepoint {want} (has {', '.join(t.timepoint for t in tps)})")
            target = match[0]
        before = [t for t in tps if t.day < target.day and t.seg is not None]
        if not before:
            raise DataError(f"subject {name}: no segmented timepoint before the target timepoint {target.timepoint}; "
                            "nothing to predict from")
        prior = before[-1]
    n_min = max(1, int(cfg.target.min_timepoints))
    prior_only = bool(OmegaConf.select(cfg, "ode.population_prior", default=False))
    if len(before) < n_min and not prior_only:
        tp_list = ", ".join(t.timepoint for t in before)
        where = f"before the target timepoint {target.timepoint}" if target is not None else "with a segmentation"
        raise DataError(f"subject {name}: only {len(before)} usable timepoint(s) ({tp_list}) {where}; the growth ODE "
                        f"needs at least {n_min}. Skipped (set ode.population_prior=true for a prior-only forecast)")
    missing = [c for c in models.contrasts if c not in prior.images]
    if missing:
        raise DataError(f"subject {name}: prior timepoint {prior.timepoint} lacks the contrast(s) {', '.join(missing)} "
                        f"the models need ({', '.join(models.contrasts)})")
    has_target_images = False
    if target is not None:
        present = [c for c in models.contrasts if c in target.images]
        missing = [c for c in models.contrasts if c not in target.images]
        if present and missing:
            raise DataError(f"subject {name}: target timepoint {target.timepoint} lacks the contrast(s) "
                            f"{', '.join(missing)} needed to compare with the prediction "
                            f"({', '.join(models.contrasts)}); add the files or predict an earlier timepoint")
        has_target_images = bool(present)
    # slice
    sl = str(cfg.data.slice)
    if cfg.data.slice_index is not None:
        index = int(cfg.data.slice_index)
    elif sl == "largest_prior":
        index = _slice(cfg, models, prior, None).slice_index
    elif sl == "largest_target":
        if target is None or target.seg is None:
            raise DataError(f"subject {name}: data.slice=largest_target needs a segmented target timepoint")
        index = _slice(cfg, models, target, None).slice_index
    else:
        try:
            index = int(sl)
        except ValueError:
            raise TgrowthError(f"data.slice must be largest_prior, largest_target or an integer, got {sl!r}") from None
    sizes = [_slice(cfg, models, t, index).area_mm2(cfg.data.labels) for t in before]
    target_days = [float(prior.day) + float(d) for d in days] if days else [float(target.day)]
    return Plan(name, prior, target, before, target_days, index, sizes, (subj.rt_start_day, subj.rt_end_day),
                subject_seed(cfg.seed, name), has_target_images)


def ode_rows(plans: list[Plan]) -> list[dict[str, Any]]:
    rows = []
    for p in plans:
        for t, s in zip(p.fit_timepoints, p.sizes):
            rows.append({"subject": p.subject, "day": float(t.day), "size": float(s),
                         "rt_start_day": p.rt[0], "rt_end_day": p.rt[1]})
    return rows


def fit_ode(cfg: DictConfig, plans: list[Plan]):
    """One batched fit of every planned subject (identical on every rank: same rows, same seed)."""
    from tgrowth.ode import fit_cohort

    return fit_cohort(ode_rows(plans), cfg.ode, seed=int(cfg.seed))


# --------------------------------------------------------------------------- one subject
def guidance_units(models: Models, pixel_area: float) -> tuple[float, float]:
    """(mm^2 per unit of slice fraction, regressor output per unit of slice fraction) on this slice.

    ``guidance.scale`` is defined with areas as a fraction of the slice (the authors' units), whatever the
    regressor outputs: targets are converted mm^2 -> fraction, and the regressor's output is divided by the
    second number (``AreaGuidance(regressor_scale=...)``), from its model file's ``area`` metadata.
    """
    mm2_per_frac = pixel_area * float(models.image_size**2)
    if models.area_key == "area_frac":
        return mm2_per_frac, models.area_scale
    return mm2_per_frac, models.area_scale * mm2_per_frac


def _autocast_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype | None:
    """trainer.precision -> the sampler's autocast dtype (the sampling state itself stays float32)."""
    p = str(cfg.trainer.precision)
    if p in ("bf16-mixed", "bf16", "bf16-true"):
        return torch.bfloat16
    if p in ("16-mixed", "16", "16-true") and device.type == "cuda":
        return torch.float16
    return None


def forecast_targets(cfg: DictConfig, fit: Any, plan: Plan, prior_area: float) -> dict[str, Any]:
    """ODE forecast at the target day(s) and the per-generation relative changes."""
    days = [float(plan.prior.day)] + plan.target_days
    fc = fit.forecast(plan.subject, days)
    samples = torch.as_tensor(np.asarray(fc.samples), dtype=torch.float64)  # [B, 1 + D]
    med = torch.as_tensor(np.asarray(fc.median), dtype=torch.float64)
    if prior_area > 0 and bool((samples[:, :1] > 0).all()):
        ratios = samples[:, 1:] / samples[:, :1]  # [B, D]
        median_ratio = ratios.median(dim=0).values
        target_median = prior_area * median_ratio
    else:  # no tumour on the prior slice: use the forecast sizes themselves
        ratios = None
        target_median = med[1:]
    if not bool(torch.isfinite(target_median).all()):
        raise DataError(f"subject {plan.subject}: the ODE forecast is not finite ({target_median.tolist()})")
    return {"forecast": fc, "ratios": ratios, "target_median": target_median, "samples": samples}


def _gen_targets(cfg: DictConfig, fc: dict[str, Any], prior_area: float, day_index: int, n: int) -> torch.Tensor:
    """Per-generation targets (mm^2): the ODE median for all, or generation g <- bootstrap replicate g mod B."""
    if str(cfg.guidance.target) == "median" or fc["ratios"] is None:
        return fc["target_median"][day_index].expand(n).clone()
    b = fc["ratios"].shape[0]
    return prior_area * fc["ratios"][torch.arange(n) % b, day_index]


def predict_subject(cfg: DictConfig, models: Models, fit: Any, plan: Plan, arms: list[Arm], out: Path,
                    device: torch.device) -> dict[str, Any]:
    """Generate, measure and write one subject. Returns its info dict (also written as info.json)."""
    from tgrowth import metrics as M
    from tgrowth.diffusion.guidance import AreaGuidance
    from tgrowth.io import save_nifti, write_json
    from tgrowth.probability import probability_map, segmenter_from_logits

    t0 = time.time()
    sdir = state.subject_dir(out, plan.subject)
    prior_s = _slice(cfg, models, plan.prior, plan.slice_index)
    labels = cfg.data.labels
    prior_area = prior_s.area_mm2(labels)
    pixel_area = float(prior_s.spacing_mm[0] * prior_s.spacing_mm[1])
    truth_s = _slice(cfg, models, plan.target, plan.slice_index) if plan.has_target_images else None
    true_area = truth_s.area_mm2(labels) if (truth_s is not None and truth_s.seg is not None) else None
    fc = forecast_targets(cfg, fit, plan, prior_area)
    n = int(cfg.sampling.num_generations)

    # rows of the one batched sampling pass: N per generative arm
    gen_arms = [a for a in arms if a.kind != "prior" and not (a.kind == "oracle" and true_area is None)]
    targets_mm2, scales = [], []
    for a in gen_arms:
        if a.kind == "oracle":
            targets_mm2.append(torch.full((n,), float(true_area), dtype=torch.float64))
        else:
            targets_mm2.append(_gen_targets(cfg, fc, prior_area, a.day_index, n))
        scales.append(torch.full((n,), float(a.scale) if a.kind != "unguided" else 0.0))
    results: dict[Arm, dict[str, Any]] = {}
    if gen_arms:
        mm2_per_frac, reg_per_frac = guidance_units(models, pixel_area)
        target_frac = (torch.cat(targets_mm2) / mm2_per_frac).float().to(device)
        scale_all = torch.cat(scales).to(device)
        guidance = AreaGuidance(models.regressor, target=target_frac, scale=scale_all, form=str(cfg.guidance.form),
                                boost=float(cfg.guidance.high_noise_boost), boost_above_t=int(cfg.guidance.boost_above_t),
                                autocast_dtype=_autocast_dtype(cfg, device), regressor_scale=reg_per_frac)
        dt = _autocast_dtype(cfg, device)
        L = int(cfg.sampling.noise_level)
        steps = int(cfg.sampling.num_steps or L)
        encode = sampling_encode(cfg)
        x_prior = prior_s.image.to(device)[None]
        pm = probability_map(
            models.denoiser, models.schedule, x_prior,
            segmenter_from_logits(models.segmenter, autocast_dtype=dt),  # sigmoid of channel 0 = whole tumour
            num_generations=n * len(gen_arms), chunk_size=int(cfg.sampling.batch_size), seed=plan.seed,
            noise_level=L, num_steps=steps, eta=float(cfg.sampling.eta), encode=encode, callbacks=[guidance],
            y=models.class_label, pixel_area=pixel_area, autocast_dtype=dt, keep_generations=True,
            invert_order=int(cfg.sampling.invert_order), refine_iters=int(cfg.sampling.invert_refine_iters),
            # generation g of every method shares its noise (common random numbers), keyed by (seed, subject, g)
            noise_seeds=[key_seed(int(cfg.seed), plan.subject, g) for _ in gen_arms for g in range(n)])
        for i, a in enumerate(gen_arms):
            rows = slice(i * n, (i + 1) * n)
            imgs = pm.images[rows].double()
            masks = pm.masks[rows]
            results[a] = {"prob": masks.double().mean(0).float(), "mean": imgs.mean(0).float(),
                          "std": imgs.std(0, unbiased=False).float(), "areas": pm.areas[rows].double().cpu(),
                          "targets": targets_mm2[i]}
    for a in arms:
        if a.kind == "prior":
            pmask = (prior_s.seg > 0) if prior_s.seg is not None else torch.zeros(prior_s.image.shape[1:], dtype=torch.bool)
            from data_modules.volumes import tumour_mask

            if prior_s.seg is not None:
                pmask = tumour_mask(prior_s.seg, labels)
            results[a] = {"prob": pmask.float(), "mean": prior_s.image.float(), "std": torch.zeros_like(prior_s.image),
                          "areas": torch.tensor([prior_area], dtype=torch.float64), "targets": None}

    # metrics against the real follow-up
    thr = float(cfg.sampling.threshold)
    rows_out: list[dict[str, Any]] = []
    ode_target = fc["target_median"]
    tmask = None
    if truth_s is not None and truth_s.seg is not None:
        from data_modules.volumes import tumour_mask

        tmask = tumour_mask(truth_s.seg, labels).numpy()
    for a, r in results.items():
        day_i = a.day_index
        tgt = float(ode_target[day_i])
        pred_area = float(r["areas"].mean())
        pmask = (r["prob"] >= thr).numpy()
        row: dict[str, Any] = {
            "subject": plan.subject, "method": a.method, "scale": a.scale if a.kind not in ("unguided", "prior") else 0.0,
            "pred_area_mm2": pred_area, "map_area_mm2": float(pmask.sum()) * pixel_area,
            "target_area_mm2": tgt, "prior_area_mm2": prior_area, "true_area_mm2": true_area,
            "guided_to_area_mm2": (float(r["targets"].mean()) if r["targets"] is not None and a.kind != "unguided" else None),
            "prior_timepoint": plan.prior.timepoint,
            "target_timepoint": plan.target.timepoint if plan.target is not None else None,
            "target_day": plan.target_days[day_i], "slice_index": plan.slice_index,
            "area_error_vs_target": abs(pred_area - tgt) / tgt if tgt > 0 else None,
        }
        if truth_s is not None:
            mean, tr = r["mean"].cpu(), truth_s.image.float()
            row.update(ssim=M.ssim(mean, tr), ssim_brain=M.ssim(mean, tr, mask=M.foreground(tr)), psnr=M.psnr(mean, tr),
                       mae=M.mae(mean, tr))
        if tmask is not None:
            row.update(dice=M.dice(pmask, tmask), hd95=M.hd95(pmask, tmask, prior_s.spacing_mm, one_empty="diagonal"))
            if true_area and true_area > 0:
                row["area_error_vs_truth"] = abs(pred_area - true_area) / true_area
                row["ode_forecast_error"] = abs(tgt - true_area) / true_area
        rows_out.append(row)

    # files: the tgrowth arm (first ode arm per day) in the input geometry
    files: dict[str, Any] = {}
    main = [a for a in results if a.kind == "ode"]
    per_day = {}
    for a in main:
        per_day.setdefault(a.day_index, a)
    contrasts = list(models.contrasts)
    multi = bool(list(cfg.target.days))
    targets_info = []
    for j, a in sorted(per_day.items()):
        r = results[a]
        sub = f"day{plan.target_days[j] - float(plan.prior.day):+04.0f}" if multi else ""
        d = sdir / sub if sub else sdir
        save_nifti(d / "prob_map.nii.gz", prior_s.to_volume(r["prob"].cpu().numpy().astype(np.float32)), prior_s.affine)
        save_nifti(d / "pred_mean.nii.gz", prior_s.to_volume(r["mean"].cpu().numpy().astype(np.float32)), prior_s.affine)
        save_nifti(d / "pred_std.nii.gz", prior_s.to_volume(r["std"].cpu().numpy().astype(np.float32)), prior_s.affine)
        rel = (Path(sub) if sub else Path("."))
        areas = r["areas"]
        targets_info.append({
            "day": plan.target_days[j], "days_after_prior": plan.target_days[j] - float(plan.prior.day),
            "target_area_mm2": float(ode_target[j]),
            "ode": {"median": float(np.asarray(fc["forecast"].median)[1 + j]), "p05": float(np.asarray(fc["forecast"].p05)[1 + j]),
                    "p95": float(np.asarray(fc["forecast"].p95)[1 + j])},
            "generated_area_mm2": float(areas.mean()), "generated_area_p05": float(areas.quantile(0.05)),
            "generated_area_p95": float(areas.quantile(0.95)),
            "true_area_mm2": true_area if not multi else None,
            "files": {k: str(rel / f"{k}.nii.gz") for k in ("prob_map", "pred_mean", "pred_std")},
        })
    first = targets_info[0] if targets_info else None
    ode_model = fit.model_name(plan.subject) if hasattr(fit, "model_name") else str(cfg.ode.model)
    if first is not None:
        files.update(first["files"])

    if cfg.plots and first is not None:
        from tgrowth.predict import plots

        ci = contrasts.index("t2f") if "t2f" in contrasts else 0
        a0 = per_day[0]
        r0 = results[a0]
        plots.panel(sdir / "panel.png", subject=plan.subject, contrast=contrasts[ci],
                    prior=prior_s.image[ci].numpy(), gen_mean=r0["mean"][ci].cpu().numpy(), prob=r0["prob"].cpu().numpy(),
                    truth=None if truth_s is None else truth_s.image[ci].numpy(),
                    truth_seg=tmask, prior_seg=None if prior_s.seg is None else (prior_s.seg > 0).numpy(),
                    titles={"prior": f"prior {plan.prior.timepoint} (day {plan.prior.day:g}), {prior_area:.0f} mm2",
                            "mean": f"generated mean (N={n}), target {first['target_area_mm2']:.0f} mm2",
                            "overlay": (f"p(tumour) over real {plan.target.timepoint}" if truth_s is not None
                                        else "p(tumour) over the generated mean"),
                            "diff": "generated mean - prior"}, threshold=thr)
        files["panel"] = "panel.png"
        curve_days = np.linspace(min(float(t.day) for t in plan.fit_timepoints), max(plan.target_days) * 1.02 + 1, 120)
        cf = fit.forecast(plan.subject, curve_days.tolist())
        tg = [dict(t, generated_area_mm2=t["generated_area_mm2"]) for t in targets_info]
        if not multi and true_area is not None:
            tg[0]["true_area_mm2"] = true_area
        plots.growth_curve(sdir / "growth_curve.png", subject=plan.subject, obs_days=[float(t.day) for t in plan.fit_timepoints],
                           obs_sizes=plan.sizes, curve_days=curve_days, median=np.asarray(cf.median), p05=np.asarray(cf.p05),
                           p95=np.asarray(cf.p95), prior_day=float(plan.prior.day), targets=tg, rt=plan.rt, model=ode_model)
        files["growth_curve"] = "growth_curve.png"
        if multi:
            plots.montage(sdir / "montage.png", subject=plan.subject, prior=prior_s.image[ci].numpy(),
                          means=[results[per_day[j]]["mean"][ci].cpu().numpy() for j in sorted(per_day)],
                          probs=[results[per_day[j]]["prob"].cpu().numpy() for j in sorted(per_day)],
                          days=[t["days_after_prior"] for t in targets_info],
                          areas=[t["target_area_mm2"] for t in targets_info], threshold=thr)
            files["montage"] = "montage.png"

    fc0 = fc["forecast"]
    info = {
        "subject": plan.subject,
        "prior_timepoint": plan.prior.timepoint,
        "target_timepoint": plan.target.timepoint if plan.target is not None else None,
        "prior_day": float(plan.prior.day),
        "target_day": plan.target_days[0] if not multi else plan.target_days,
        "slice_index": int(plan.slice_index),
        "contrasts": contrasts,
        "ode": {"model": ode_model, "median": float(np.asarray(fc0.median)[1]), "p05": float(np.asarray(fc0.p05)[1]),
                "p95": float(np.asarray(fc0.p95)[1]), "fit_days": [float(t.day) for t in plan.fit_timepoints],
                "fit_sizes_mm2": [float(s) for s in plan.sizes],
                "relative_change_median": (float(ode_target[0] / prior_area) if prior_area > 0 else None),
                "n_bootstrap": int(fc["samples"].shape[0])},
        "target_area_mm2": float(ode_target[0]) if not multi else [float(v) for v in ode_target],
        "prior_area_mm2": prior_area,
        "true_area_mm2": true_area,
        "guidance": {k: v for k, v in OmegaConf.to_container(cfg.guidance, resolve=True).items()},
        "sampling": {k: v for k, v in OmegaConf.to_container(cfg.sampling, resolve=True).items()},
        "seed": plan.seed,
        "image_size": models.image_size,
        "pixel_spacing_mm": list(prior_s.spacing_mm),
        "targets": targets_info,
        "methods": {(a.method if a.day_index == 0 else f"{a.method}/day{a.day_index}"):
                    {"generated_area_mm2": float(r["areas"].mean()), "scale": a.scale} for a, r in results.items()},
        "files": files,
        "seconds": round(time.time() - t0, 2),
        "device": str(device),
    }
    write_json(sdir / "metrics.json", rows_out)
    write_json(sdir / "info.json", info)  # last: marks the subject finished (resume)
    return info


def sampling_encode(cfg: DictConfig) -> str:
    """The sampler's encode mode for ``sampling.encode`` (checked by check_predict_config)."""
    return {"noise": "qsample", "invert": "invert"}[str(cfg.sampling.encode)]


# --------------------------------------------------------------------------- the run
def predict_run(cfg: DictConfig, dist: Dist, arms: list[Arm] | None = None, *, command: str = "predict",
                console: bool = True) -> dict[str, Any] | None:
    """Predict every selected subject (this rank's share), then merge on rank 0; returns the summary there."""
    from tqdm.auto import tqdm

    from data_modules.formats import discover

    out = Path(cfg.output_dir)
    check_predict_config(cfg)
    arms = arms or default_arms(cfg)
    models = load_models(cfg, dist.device)
    check_models(cfg, models)
    dataset = discover(cfg.data.root, format=str(cfg.data.format), contrasts=models.contrasts)
    subjects = select_subjects(cfg, dataset)
    plans: list[Plan] = []
    skipped: dict[str, str] = {}
    for subj, reasons in zip(subjects, data_problems(cfg, dataset, subjects)):
        try:
            if reasons:  # the checks of `tgrowth data-check`: timeline, files, one voxel grid per subject
                raise DataError("; ".join(reasons))
            plans.append(plan_subject(cfg, models, subj))
        except TgrowthError as exc:
            if cfg.strict:
                raise
            skipped[subj.subject] = str(exc)
    fit, fit_errors = None, {}
    if plans:
        try:
            fit = fit_ode(cfg, plans)
            fit_errors = {str(e["subject"]): str(e["message"]) for e in (fit.errors or [])}
        except DataError as exc:  # no subject could be fitted at all
            fit_errors = {p.subject: str(exc) for p in plans}
    ok = [p for p in plans if p.subject not in fit_errors]
    for p in plans:
        if p.subject in fit_errors:
            skipped[p.subject] = f"subject {p.subject}: growth ODE fit failed: {fit_errors[p.subject]}"
    if cfg.strict and skipped:
        raise DataError(next(iter(skipped.values())))
    if dist.is_main:
        for s, msg in skipped.items():
            state.record_error(out, s, "plan", msg)
            log.warning("skipped: %s", msg)
    pending = [p for p in ok if not state.is_done(out, p.subject)]
    done_before = len(ok) - len(pending)
    mine = state.split_for_rank(pending, dist.rank, dist.world_size)
    if console and dist.is_main:
        print(f"predict: {len(subjects)} subject(s) selected, {len(ok)} to predict"
              f"{f', {done_before} already finished (resume)' if done_before else ''}"
              f"{f', {len(skipped)} skipped' if skipped else ''}; {dist.world_size} process(es) on {dist.device}; "
              f"{len(arms)} method(s) x N={cfg.sampling.num_generations} generations per subject", flush=True)
    failed = False
    bar = tqdm(mine, desc=f"predict rank {dist.rank}" if dist.world_size > 1 else "predict", unit="subject",
               disable=not cfg.trainer.enable_progress_bar, position=dist.rank, leave=True)
    for plan in bar:
        bar.set_postfix_str(plan.subject)
        try:
            state.clear_error(out, plan.subject)
            predict_subject(cfg, models, fit, plan, arms, out, dist.device)
        except TgrowthError as exc:
            state.record_error(out, plan.subject, "predict", str(exc))
            log.warning("subject %s failed: %s", plan.subject, exc)
            if cfg.strict:
                failed = True
                break
    bar.close()
    dist.barrier()
    if cfg.strict:
        _, _, errs = state.collect(out, [p.subject for p in ok])
        if failed or errs:
            raise TgrowthError(errs[0]["error"] if errs else "a subject failed (strict=true)")
    if not dist.is_main:
        return None
    names = [s.subject for s in subjects]
    rows, infos, errors = state.collect(out, names)
    methods = list(dict.fromkeys(r["method"] for r in rows)) or [a.method for a in arms]
    summary = report.write_tables(out, rows, errors, methods, extra={
        "command": command, "n_selected": len(subjects), "n_predicted": len(infos), "world_size": dist.world_size,
        "experiment": cfg.experiment})
    return {"summary": summary, "rows": rows, "infos": infos, "errors": errors}


def run(cfg: DictConfig) -> int:
    """`tgrowth predict` entry point (every rank runs it; rank 0 owns the folder policy, merge and wandb)."""
    from tgrowth.config.base import save_resolved_config
    from tgrowth.predict import track

    check_predict_config(cfg)  # before the output folder is touched
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    dist = launch(cfg.trainer)
    err = None
    if dist.is_main:
        try:
            state.prepare_predict_dir(cfg)
            save_resolved_config(cfg, cfg.output_dir)
        except TgrowthError as exc:
            err = str(exc)
    err = dist.broadcast(err)
    if err:
        raise TgrowthError(err)
    dist.barrier()
    t0 = time.time()
    res = predict_run(cfg, dist)
    if res is None:
        return 0
    out = Path(cfg.output_dir)
    wb = track.start(cfg, "predict")
    try:
        track.log_predict(wb, res["rows"], res["infos"], res["summary"], out)
    finally:
        if wb is not None:
            wb.finish()
    print()
    print(report.format_table(res["summary"]))
    print(f"\npredict: {len(res['infos'])} subject(s) in {time.time() - t0:.1f} s; outputs in {out}/:")
    print("  <subject>/prob_map.nii.gz, pred_mean.nii.gz, pred_std.nii.gz (input geometry; contrasts on axis 4), "
          "info.json, panel.png, growth_curve.png")
    print(f"  metrics.csv, summary.json, errors.csv ({len(res['errors'])} problem(s))")
    if wb is not None:
        print(f"  wandb ({cfg.wandb.mode}): {Path(cfg.wandb.dir or out) / 'wandb'}")
    if not res["infos"]:
        raise TgrowthError(f"no subject was predicted ({len(res['errors'])} skipped or failed: see {out / 'errors.csv'})")
    return 0 if not res["errors"] or not cfg.strict else 1
