"""`tgrowth predict`: the stages, in order, for every selected subject.

1. plan (:mod:`~tgrowth.predict.plan`): subjects, prior and target scans, slice, the areas the ODE is fitted to;
2. targets (:mod:`~tgrowth.predict.targets`): one batched growth-ODE fit, per subject the guidance targets, the
   FK prior where the run uses it (computed once per subject) and the change zone;
3. generate (:mod:`~tgrowth.predict.generate`): every generative method in one batched sampling pass;
   baselines (:mod:`~tgrowth.predict.methods`) as plain functions;
4. evaluate (:mod:`~tgrowth.predict.evaluate`): one metrics row per method against the real follow-up;
5. outputs (:mod:`~tgrowth.predict.outputs`): NIfTI in the input geometry, plots, info.json.

Rank 0 prepares the folder (:mod:`~tgrowth.predict.state`), merges the tables (:mod:`~tgrowth.predict.report`)
and logs to wandb (:mod:`~tgrowth.predict.track`); each rank predicts its share of the subjects.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from data_modules.longitudinal import LongitudinalDataModule
from tgrowth.config.base import save_resolved_config
from tgrowth.config.predict import check_predict_config
from tgrowth.errors import DataError, TgrowthError
from tgrowth.growth.geometry import enclosed_free
from tgrowth.predict import evaluate, outputs, report, state, track
from tgrowth.predict.dist import Dist, launch
from tgrowth.predict.generate import generate
from tgrowth.predict.methods import Arm, Case, connected_maps, method_arms, run_baselines
from tgrowth.predict.models import Models, check_models, load_models
from tgrowth.predict.plan import Plan, load_slices, plan_subjects
from tgrowth.predict.targets import fit_growth, fk_prior, fk_sizes, subject_targets, uses_fk, zone_keep
from tgrowth.predict.volume import predict_volume

log = logging.getLogger("tgrowth.predict")

__all__ = ["predict_one", "predict_run", "run"]


def predict_one(cfg: DictConfig, models: Models, dm: LongitudinalDataModule, fit: Any, plan: Plan, arms: list[Arm],
                out: Path, device: torch.device) -> dict[str, Any]:
    """All stages after the plan for one subject; returns its info.json record."""
    if cfg.volume:  # 3D: every tumour slice in one batched pass (tgrowth.predict.volume)
        return predict_volume(cfg, models, dm, fit, plan, arms, state.subject_dir(out, plan.subject), device)
    clock = state.Stopwatch()
    with_fk = uses_fk(cfg, arms)
    slices = load_slices(dm, plan, cfg.data.labels, history=with_fk)
    clock.lap("load")
    targets = subject_targets(fit, plan, slices.prior_area)
    fk = fk_prior(plan, slices, fk_sizes(cfg, slices, targets, arms), models.contrasts) if with_fk else None
    s = cfg.sampling
    keep = zone_keep(slices, targets, s.zone_margin_mm, s.zone_edge_mm, str(s.zone), fk, float(s.zone_fk_level))
    free = torch.from_numpy(enclosed_free(slices.prior_mask.numpy())) if s.keep_prior_holes else None
    if free is not None:  # the prior's holes are kept from the prior scan, like the outside of the zone
        keep = torch.maximum(keep, free.float())
    case = Case(plan, slices, targets, models, keep, fk, free)
    clock.lap("targets")  # the ODE targets, the FK calibration and forecast (where used), the change zone
    results = generate(cfg, case, arms, device)
    clock.lap("generate")
    results.update(run_baselines(case, arms))
    results = connected_maps(cfg, case, results)
    clock.lap("baselines")
    rows = evaluate.score(cfg, case, results)
    clock.lap("evaluate")
    return outputs.write_subject(cfg, case, results, rows, fit, state.subject_dir(out, plan.subject),
                                 clock.record(device=str(device)))


def _fit(cfg: DictConfig, plans: list[Plan], skipped: dict[str, str]) -> tuple[Any, list[Plan]]:
    """The growth ODE of every planned subject; subjects whose fit failed move to ``skipped``."""
    fit, fit_errors = None, {}
    if plans:
        try:
            fit = fit_growth(cfg, plans)
            fit_errors = {str(e["subject"]): str(e["message"]) for e in (fit.errors or [])}
        except DataError as exc:  # no subject could be fitted at all
            fit_errors = {p.subject: str(exc) for p in plans}
    for s, msg in fit_errors.items():
        skipped[s] = f"subject {s}: growth ODE fit failed: {msg}"
    if cfg.strict and skipped:
        raise DataError(next(iter(skipped.values())))
    return fit, [p for p in plans if p.subject not in fit_errors]


def _predict_share(cfg: DictConfig, dist: Dist, mine: list[Plan], run_one) -> bool:
    """Predict this rank's subjects (progress bar per rank); returns True when strict mode stopped at a failure."""
    out = Path(cfg.output_dir)
    bar = tqdm(mine, desc=f"predict rank {dist.rank}" if dist.world_size > 1 else "predict", unit="subject",
               disable=not cfg.trainer.enable_progress_bar, position=dist.rank, leave=True)
    for plan in bar:
        bar.set_postfix_str(plan.subject)
        try:
            state.clear_error(out, plan.subject)
            run_one(plan)
        except TgrowthError as exc:
            state.record_error(out, plan.subject, "predict", str(exc))
            log.warning("subject %s failed: %s", plan.subject, exc)
            if cfg.strict:
                bar.close()
                return True
    bar.close()
    return False


def predict_run(cfg: DictConfig, dist: Dist, arms: list[Arm] | None = None, *, command: str = "predict",
                console: bool = True) -> dict[str, Any] | None:
    """Predict every selected subject (this rank's share), then merge on rank 0; returns the summary there."""
    out = Path(cfg.output_dir)
    check_predict_config(cfg)
    arms = arms or method_arms(cfg)
    models = load_models(cfg, dist.device)
    check_models(cfg, models)
    dm = LongitudinalDataModule.from_config(cfg.data, strict=False)  # strict: plan_subjects stops at a bad subject
    subjects, plans, skipped = plan_subjects(cfg, dm)
    t0 = time.time()
    fit, ok = _fit(cfg, plans, skipped)
    if console and dist.is_main and plans:
        print(f"predict: growth ODE ({cfg.ode.model}) fitted to {len(plans)} subject(s) in {time.time() - t0:.1f} s"
              f"{f'; {len(plans) - len(ok)} failed' if len(ok) < len(plans) else ''}", flush=True)
    if dist.is_main:
        for s, msg in skipped.items():
            state.record_error(out, s, "plan", msg)
            log.warning("skipped: %s", msg)
    pending = [p for p in ok if not state.is_done(out, p.subject)]
    if console and dist.is_main:
        done = len(ok) - len(pending)
        print(f"predict: {len(subjects)} subject(s) selected, {len(ok)} to predict"
              f"{f', {done} already finished (resume)' if done else ''}"
              f"{f', {len(skipped)} skipped' if skipped else ''}; {dist.world_size} process(es) on {dist.device}; "
              f"{len(arms)} method(s) x N={cfg.sampling.num_generations} generations per subject", flush=True)
    mine = state.split_for_rank(pending, dist.rank, dist.world_size)
    failed = _predict_share(cfg, dist, mine, lambda p: predict_one(cfg, models, dm, fit, p, arms, out, dist.device))
    dist.barrier()
    if cfg.strict:
        _, _, errs = state.collect(out, [p.subject for p in ok])
        if failed or errs:
            raise TgrowthError(errs[0]["error"] if errs else "a subject failed (strict=true)")
    if not dist.is_main:
        return None
    rows, infos, errors = state.collect(out, [s.subject for s in subjects])
    methods = list(dict.fromkeys(r["method"] for r in rows)) or [a.method for a in arms]
    summary = report.write_tables(out, rows, errors, methods, extra={
        "command": command, "n_selected": len(subjects), "n_predicted": len(infos), "world_size": dist.world_size,
        "experiment": cfg.experiment})
    return {"summary": summary, "rows": rows, "infos": infos, "errors": errors}


def _print_outputs(cfg: DictConfig, res: dict[str, Any], seconds: float, wandb_on: bool) -> None:
    out = Path(cfg.output_dir)
    print()
    print(report.format_table(res["summary"]))
    print(f"\npredict: {len(res['infos'])} subject(s) in {seconds:.1f} s; outputs in {out}/:")
    stages = state.stage_medians(res["infos"])
    if stages:
        print("  seconds per subject (median): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    files = ["info.json"] + (["montage.png (a few generated slices)"] if cfg.volume and cfg.plots else []) \
        + (["panel.png", "growth_curve.png"] if cfg.plots and not cfg.volume else []) \
        + (["methods/<method>.nii.gz (every method's map)"] if cfg.method_maps else [])
    print("  <subject>/prob_map.nii.gz, pred_mean.nii.gz, pred_std.nii.gz (input geometry; contrasts on axis 4), "
          + ", ".join(files))
    print(f"  metrics.csv, summary.json, errors.csv ({len(res['errors'])} problem(s))")
    if wandb_on:
        print(f"  wandb ({cfg.wandb.mode}): {Path(cfg.wandb.dir or out) / 'wandb'}")


def run(cfg: DictConfig) -> int:
    """`tgrowth predict` entry point (every rank runs it; rank 0 owns the folder policy, merge and wandb)."""
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
    wb = track.start(cfg, "predict")
    try:
        track.log_predict(wb, res["rows"], res["infos"], res["summary"], Path(cfg.output_dir))
    finally:
        if wb is not None:
            wb.finish()
    _print_outputs(cfg, res, time.time() - t0, wb is not None)
    if not res["infos"]:
        raise TgrowthError(f"no subject was predicted ({len(res['errors'])} skipped or failed: see "
                           f"{Path(cfg.output_dir) / 'errors.csv'})")
    return 0 if not res["errors"] or not cfg.strict else 1
