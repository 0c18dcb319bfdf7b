"""Stage 4 of predict, evaluation: one metrics row per method (and target day) against the real follow-up.

Every method is scored the same way, on the same slice, spacing and threshold: SSIM (slice, brain and the
change zone around the prior tumour, where generation may change the image), PSNR (slice and zone), MAE of
the predicted mean image; Dice and HD95 (mm; the slice diagonal when one mask is empty) of the
probability map at ``sampling.threshold``; relative area errors against the true follow-up and the ODE target.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from tgrowth import metrics as M
from tgrowth.predict.methods import Arm, Case, MethodResult

__all__ = ["score", "score_row"]


def score_row(case: Case, arm: Arm, r: MethodResult, threshold: float) -> dict[str, Any]:
    """The metrics row of one method's result."""
    plan, sl = case.plan, case.slices
    tgt = float(case.targets.median[arm.day_index])
    pred_area = float(r.areas.mean())
    pmask = (r.prob.cpu() >= threshold).numpy()
    true_area = sl.true_area
    row: dict[str, Any] = {
        "subject": plan.subject, "method": arm.method, "scale": arm.scale,
        "pred_area_mm2": pred_area, "map_area_mm2": float(pmask.sum()) * sl.pixel_area,
        "target_area_mm2": tgt, "prior_area_mm2": sl.prior_area, "true_area_mm2": true_area,
        "guided_to_area_mm2": float(r.targets.mean()) if r.targets is not None and arm.source != "unguided" else None,
        "prior_timepoint": plan.prior.timepoint, "target_timepoint": plan.target.timepoint if plan.target else None,
        "target_day": plan.target_days[arm.day_index], "slice_index": plan.slice_index,
        "area_error_vs_target": abs(pred_area - tgt) / tgt if tgt > 0 else None,
    }
    if sl.truth is not None:
        mean, tr = r.mean.cpu(), sl.truth.image.float()
        zone = case.zone
        row.update(ssim=M.ssim(mean, tr), ssim_brain=M.ssim(mean, tr, mask=M.foreground(tr)), psnr=M.psnr(mean, tr),
                   mae=M.mae(mean, tr), ssim_zone=M.ssim(mean, tr, mask=zone) if zone.any() else None,
                   psnr_zone=M.psnr(mean, tr, mask=zone) if zone.any() else None)
    tmask = sl.truth_mask
    if tmask is not None:
        tmask = tmask.numpy()
        row.update(dice=M.dice(pmask, tmask), hd95=M.hd95(pmask, tmask, sl.prior.spacing_mm, one_empty="diagonal"))
        if true_area and true_area > 0:
            row["area_error_vs_truth"] = abs(pred_area - true_area) / true_area
            row["ode_forecast_error"] = abs(tgt - true_area) / true_area
    return row


def score(cfg: DictConfig, case: Case, results: dict[Arm, MethodResult]) -> list[dict[str, Any]]:
    """One row per method result, in the order of ``results``."""
    return [score_row(case, a, r, float(cfg.sampling.threshold)) for a, r in results.items()]
