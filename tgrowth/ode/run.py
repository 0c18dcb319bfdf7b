"""``tgrowth fit-ode``: fit the growth ODE to a size table, forecast, write tables, plots and a report.

Outputs in ``output_dir``: ``params.csv`` (subject, model, parameter, median, p05, p95, point),
``forecast.csv`` (subject, day, observed, median, p05, p95, is_holdout, ...), ``metrics.csv``
(R^2, nRMSE, AIC, BIC, held-out and baseline errors, notes), ``model_comparison.csv`` (AIC/BIC and CV
error of every candidate per subject), ``errors.csv`` when a subject was skipped, ``plots/<subject>.png``,
``cohort_summary.png``, ``summary.json`` and the resolved ``config.yaml``.
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from tgrowth.config.base import save_resolved_config
from tgrowth.io import atomic_write_text, prepare_output_dir, write_csv, write_json

log = logging.getLogger("tgrowth.ode")


def report(cohort, metrics: list[dict], summary: dict) -> str:
    lines = [f"{'subject':<16} {'model':<18} {'n':>3} {'R2':>7} {'nRMSE':>7} {'AIC':>8} {'held-out err':>12}  note"]
    for m in metrics:
        err = f"{m['holdout_rel_error']:.3f}" if "holdout_rel_error" in m else "-"
        lines.append(f"{m['subject']:<16} {m['model']:<18} {m['n_fit']:>3} {m['r2']:>7.3f} {m['nrmse']:>7.3f} "
                     f"{m['aic']:>8.2f} {err:>12}  {m['note']}")
    if "holdout_rel_error_median" in summary:
        lines.append(
            "held-out relative error (median / mean): ODE bootstrap median {:.3f} / {:.3f}; ODE point fit {:.3f} / {:.3f}; "
            "last value {:.3f} / {:.3f}; linear (last two) {:.3f} / {:.3f}; inside 5-95 % band {:.0%}".format(
                summary["holdout_rel_error_median"], summary["holdout_rel_error_mean"],
                summary["holdout_rel_error_point_median"], summary["holdout_rel_error_point_mean"],
                summary["baseline_last_rel_error_median"], summary["baseline_last_rel_error_mean"],
                summary["baseline_linear_rel_error_median"], summary["baseline_linear_rel_error_mean"],
                summary["holdout_in_band_mean"]))
    if summary.get("not_converged") or summary.get("at_bound"):
        lines.append(f"flagged fits: {summary['not_converged']} not converged, {summary['at_bound']} with a parameter "
                     "at a bound (metrics.csv: converged, at_bound, note)")
    return "\n".join(lines)


def run(cfg: DictConfig) -> int:
    from tgrowth.ode.cohort import fit_cohort
    from tgrowth.ode.fit import cpu_threads
    from tgrowth.tracking import start_wandb_run

    out = prepare_output_dir(cfg.output_dir, cfg.overwrite)
    save_resolved_config(cfg, out)
    wb = start_wandb_run(cfg, "fit-ode")
    try:
        cohort = fit_cohort(cfg.data.areas_csv, cfg.fit, seed=int(cfg.seed), strict=bool(cfg.strict))
        with cpu_threads(0):  # tables and plots: many tiny tensor ops, fastest on one thread
            _write_outputs(cfg, out, cohort, wb)
    finally:
        if wb is not None:
            wb.finish()
    return 0


def _write_outputs(cfg: DictConfig, out, cohort, wb) -> None:
    from tgrowth.ode.cohort import summarise_metrics

    metrics = cohort.metrics_rows()
    write_csv(out / "params.csv", cohort.params_rows())
    forecast_rows = cohort.forecast_rows()
    write_csv(out / "forecast.csv", forecast_rows)
    write_csv(out / "metrics.csv", metrics)
    comparison = cohort.comparison_rows()
    if comparison:
        write_csv(out / "model_comparison.csv", comparison)
    if cohort.errors:
        write_csv(out / "errors.csv", cohort.errors, columns=["subject", "row", "message"])
        for e in cohort.errors:
            print(f"tgrowth fit-ode: skipped subject '{e['subject']}': {e['message']}", file=sys.stderr)
    for subj, f in cohort.fits.items():
        if f.flags:
            print(f"tgrowth fit-ode: warning: subject '{subj}' ({f.model}): {'; '.join(f.flags)}", file=sys.stderr)
    summary = summarise_metrics(metrics)
    summary["skipped_subjects"] = len(cohort.errors)
    summary["notes"] = cohort.notes
    write_json(out / "summary.json", summary)
    if cfg.plots:
        from tgrowth.ode.plots import write_plots

        write_plots(cohort, out, metrics, summary, int(cfg.plot_max_subjects))
    text = report(cohort, metrics, summary)
    print(text)
    atomic_write_text(out / "report.txt", text + "\n")
    if wb is not None:
        import wandb

        wb.log({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        wb.log({"metrics": wandb.Table(columns=list(metrics[0]), data=[[m.get(k) for k in metrics[0]] for m in metrics])})
        if (out / "cohort_summary.png").is_file():
            wb.log({"cohort_summary": wandb.Image(str(out / "cohort_summary.png"))})
    print(f"wrote {out}/ (params.csv, forecast.csv, metrics.csv"
          + (", model_comparison.csv" if comparison else "") + (", errors.csv" if cohort.errors else "")
          + (", plots" if cfg.plots else "") + ")")
