"""Stage 5 of predict, the outputs of one subject in ``<output_dir>/<subject>/``.

``prob_map.nii.gz``, ``pred_mean.nii.gz``, ``pred_std.nii.gz`` of the main method (the first ODE-guided arm of
each target day; ``day+030/...`` per day with ``target.days``) in the input volume's geometry; ``panel.png``,
``growth_curve.png`` (and ``montage.png`` over days); with ``method_maps`` every method's tumour probability
as ``methods/<method>.nii.gz`` (:func:`method_map_files`); ``metrics.json`` (the subject's rows) and ``info.json``,
written last: a subject is finished when its info.json exists (resume).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tgrowth.io import save_nifti, write_json
from tgrowth.predict import plots
from tgrowth.predict.methods import Arm, Case, MethodResult

__all__ = ["main_arms", "method_map_files", "write_maps", "write_plots", "subject_info", "write_subject"]

MAPS = ("prob_map", "pred_mean", "pred_std")


def main_arms(results: dict[Arm, MethodResult]) -> dict[int, Arm]:
    """The arm whose maps are written, per target day: the first ODE-guided one."""
    per_day: dict[int, Arm] = {}
    for a in results:
        if a.source == "ode":
            per_day.setdefault(a.day_index, a)
    return dict(sorted(per_day.items()))


def method_map_files(results: dict[Arm, MethodResult], save: Callable[[Path, torch.Tensor], None],
                     sdir: Path) -> dict[str, str]:
    """Every method's tumour probability map (``save(path, prob)`` writes it in the input geometry) as
    ``methods/<method>.nii.gz`` (``<method>_day<j>`` after the first target day); returns {arm key: file}."""
    files = {}
    for a, r in results.items():
        rel = Path("methods") / (a.key.replace("/", "_") + ".nii.gz")
        save(sdir / rel, r.prob.detach().float().cpu())
        files[a.key] = str(rel)
    return files


def write_maps(case: Case, results: dict[Arm, MethodResult], sdir: Path) -> list[dict[str, Any]]:
    """The NIfTI maps per target day (input geometry); returns the per-day entries of info.json."""
    plan, sl, multi = case.plan, case.slices, case.plan.multi_day
    out = []
    for j, a in main_arms(results).items():
        r = results[a]
        after = plan.target_days[j] - float(plan.prior.day)
        sub = f"day{after:+04.0f}" if multi else ""
        for name, arr in zip(MAPS, (r.prob, r.mean, r.std)):
            vol = sl.prior.to_volume(arr.cpu().numpy().astype(np.float32))
            save_nifti((sdir / sub if sub else sdir) / f"{name}.nii.gz", vol, sl.prior.affine)
        out.append({
            "day": plan.target_days[j], "days_after_prior": after, "target_area_mm2": float(case.targets.median[j]),
            "ode": case.targets.band(j),
            "generated_area_mm2": float(r.areas.mean()), "generated_area_p05": float(r.areas.quantile(0.05)),
            "generated_area_p95": float(r.areas.quantile(0.95)), "true_area_mm2": sl.true_area if not multi else None,
            "files": {k: str((Path(sub) if sub else Path(".")) / f"{k}.nii.gz") for k in MAPS},
        })
    return out


def write_plots(cfg: DictConfig, case: Case, results: dict[Arm, MethodResult], days: list[dict[str, Any]], fit: Any,
                sdir: Path) -> dict[str, str]:
    """panel.png, growth_curve.png (and montage.png over several days); returns the files written."""
    plan, sl, contrasts = case.plan, case.slices, case.models.contrasts
    per_day, thr = main_arms(results), float(cfg.sampling.threshold)
    ci = contrasts.index("t2f") if "t2f" in contrasts else 0
    r0, truth, tmask = results[per_day[0]], sl.truth, sl.truth_mask
    plots.panel(sdir / "panel.png", subject=plan.subject, contrast=contrasts[ci],
                prior=sl.prior.image[ci].numpy(), gen_mean=r0.mean[ci].cpu().numpy(), prob=r0.prob.cpu().numpy(),
                truth=None if truth is None else truth.image[ci].numpy(),
                truth_seg=None if tmask is None else tmask.numpy(),
                prior_seg=None if sl.prior.seg is None else (sl.prior.seg > 0).numpy(),
                titles={"prior": f"prior {plan.prior.timepoint} (day {plan.prior.day:g}), {sl.prior_area:.0f} mm2",
                        "mean": f"generated mean (N={int(cfg.sampling.num_generations)}), "
                                f"target {days[0]['target_area_mm2']:.0f} mm2",
                        "overlay": (f"p(tumour) over real {plan.target.timepoint}" if truth is not None
                                    else "p(tumour) over the generated mean"),
                        "diff": "generated mean - prior"}, threshold=thr)
    curve_days = np.linspace(min(float(t.day) for t in plan.fit_timepoints), max(plan.target_days) * 1.02 + 1, 120)
    cf = fit.forecast(plan.subject, curve_days.tolist())
    tg = [dict(t) for t in days]
    if not plan.multi_day and sl.true_area is not None:
        tg[0]["true_area_mm2"] = sl.true_area
    plots.growth_curve(sdir / "growth_curve.png", subject=plan.subject, obs_days=[float(t.day) for t in plan.fit_timepoints],
                       obs_sizes=plan.sizes, curve_days=curve_days, median=np.asarray(cf.median), p05=np.asarray(cf.p05),
                       p95=np.asarray(cf.p95), prior_day=float(plan.prior.day), targets=tg, rt=plan.rt,
                       model=fit.model_name(plan.subject))
    files = {"panel": "panel.png", "growth_curve": "growth_curve.png"}
    if plan.multi_day:
        plots.montage(sdir / "montage.png", subject=plan.subject, prior=sl.prior.image[ci].numpy(),
                      means=[results[a].mean[ci].cpu().numpy() for a in per_day.values()],
                      probs=[results[a].prob.cpu().numpy() for a in per_day.values()],
                      days=[t["days_after_prior"] for t in days], areas=[t["target_area_mm2"] for t in days],
                      threshold=thr)
        files["montage"] = "montage.png"
    return files


def subject_info(cfg: DictConfig, case: Case, results: dict[Arm, MethodResult], days: list[dict[str, Any]],
                 files: dict[str, str], fit: Any) -> dict[str, Any]:
    """The info.json record of one subject."""
    plan, sl, tg = case.plan, case.slices, case.targets
    multi, band = plan.multi_day, tg.band(0)
    return {
        "subject": plan.subject, "prior_timepoint": plan.prior.timepoint,
        "target_timepoint": plan.target.timepoint if plan.target is not None else None,
        "prior_day": float(plan.prior.day), "target_day": plan.target_days if multi else plan.target_days[0],
        "slice_index": int(plan.slice_index), "contrasts": list(case.models.contrasts),
        "ode": {"model": fit.model_name(plan.subject), **band, "fit_days": [float(t.day) for t in plan.fit_timepoints],
                "fit_sizes_mm2": [float(s) for s in plan.sizes],
                "relative_change_median": float(tg.median[0] / sl.prior_area) if sl.prior_area > 0 else None,
                "n_bootstrap": int(np.asarray(tg.forecast.samples).shape[0])},
        "target_area_mm2": [float(v) for v in tg.median] if multi else float(tg.median[0]),
        "prior_area_mm2": sl.prior_area, "true_area_mm2": sl.true_area,
        "guidance": OmegaConf.to_container(cfg.guidance, resolve=True),
        "sampling": OmegaConf.to_container(cfg.sampling, resolve=True),
        "seed": plan.seed, "image_size": case.models.image_size, "pixel_spacing_mm": list(sl.prior.spacing_mm),
        "targets": days,
        "methods": {a.key: {"generated_area_mm2": float(r.areas.mean()), "scale": a.scale} for a, r in results.items()},
        "files": files,
        **({"fk": case.fk.info()} if case.fk is not None else {}),
    }


def write_subject(cfg: DictConfig, case: Case, results: dict[Arm, MethodResult], rows: list[dict[str, Any]], fit: Any,
                  sdir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Maps, plots, metrics.json, then info.json (last: it marks the subject finished)."""
    days = write_maps(case, results, sdir)
    files = dict(days[0]["files"]) if days else {}
    if cfg.method_maps:
        sl = case.slices
        files["methods"] = method_map_files(
            results, lambda path, p: save_nifti(path, sl.prior.to_volume(p.numpy().astype(np.float32)), sl.prior.affine),
            sdir)
    if cfg.plots and days:
        files.update(write_plots(cfg, case, results, days, fit, sdir))
    info = {**subject_info(cfg, case, results, days, files, fit), **extra}
    write_json(sdir / "metrics.json", rows)
    write_json(sdir / "info.json", info)
    return info
