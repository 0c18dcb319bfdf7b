"""Figures of a cohort fit (matplotlib, Agg): one per subject (the paper's Fig. A style) and a summary."""

from __future__ import annotations

from pathlib import Path

import torch

from tgrowth.ode.cohort import summarise_metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def subject_figure(cohort, subject: str):
    """Observations, median curve, 5-95 % bootstrap band, RT window shaded, held-out points marked."""
    plt = _plt()
    f = cohort.fits[subject]
    ser = f.series
    days = torch.tensor(ser.days, dtype=torch.float64)
    span = float(days[-1] - days[0])
    grid = torch.linspace(float(days[0]), float(days[-1]) + 0.1 * span, 200, dtype=torch.float64)
    fc = cohort.forecast(subject, grid)
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    if ser.has_rt:
        ax.axvspan(ser.rt_start_day, ser.rt_end_day, color="tab:orange", alpha=0.18, label="RT")
    ax.fill_between(grid.numpy(), fc.p05.numpy(), fc.p95.numpy(), color="tab:blue", alpha=0.22, label="5-95 % bootstrap")
    ax.plot(grid.numpy(), fc.median.numpy(), color="tab:blue", lw=2, label=f"median fit ({f.model})")
    n = f.n_fit
    ax.plot(ser.days[:n], ser.sizes[:n], "o", color="black", ms=5, label="fitted observations")
    if len(ser) > n:
        ax.plot(ser.days[n:], ser.sizes[n:], "D", mfc="white", mec="crimson", mew=1.8, ms=7, label="held out")
        ax.axvline(ser.days[n - 1], color="grey", ls=":", lw=1)
    top = 1.6 * max(max(ser.sizes), float(fc.median.max()))
    if float(fc.p95.max()) > top:  # a few replicates swell between scans (pseudo-progression): keep the data readable
        ax.set_ylim(0, top)
        ax.text(0.01, 0.97, "band clipped", transform=ax.transAxes, fontsize=7, va="top", color="grey")
    ax.set_xlabel("day")
    ax.set_ylabel("tumour size")
    title = f"{subject}: {f.model}"
    if f.note:
        title += f"\n{f.note}"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def cohort_figure(cohort, metrics_rows: list[dict], summary: dict | None = None):
    """Left: every subject's normalised series and median curve. Right: held-out forecast vs observed
    (with the two baselines) when points were held out, else R^2 per subject. The cohort figures in
    the title are ``summary`` (``summarise_metrics(metrics_rows)``, what ``summary.json`` holds)."""
    summary = summarise_metrics(metrics_rows) if summary is None else summary
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab20")
    for i, (subj, f) in enumerate(cohort.fits.items()):
        ser = f.series
        c = cmap(i % 20)
        grid = torch.linspace(ser.days[0], ser.days[-1], 100, dtype=torch.float64)
        fc = cohort.forecast(subj, grid)
        a1.plot((grid - ser.days[0]).numpy(), (fc.median / f.y0).numpy(), color=c, lw=1.2)
        a1.plot([d - ser.days[0] for d in ser.days], [s / f.y0 for s in ser.sizes], "o", color=c, ms=3)
    a1.set_yscale("log")
    a1.set_xlabel("days since first scan")
    a1.set_ylabel("size / first size")
    a1.set_title(f"{len(cohort.fits)} subjects: observations and median fits", fontsize=10)
    a1.grid(alpha=0.3, which="both")
    held = [r for r in cohort.forecast_rows() if r["is_holdout"]]
    if held:
        obs = [r["observed"] for r in held]
        lo, hi = min(obs), max(obs)
        a2.plot([lo, hi], [lo, hi], color="grey", lw=1)
        a2.plot(obs, [r["baseline_last"] for r in held], "s", color="tab:grey", ms=4, alpha=0.7, label="last value")
        a2.plot(obs, [r["baseline_linear"] for r in held], "^", color="tab:green", ms=4, alpha=0.7, label="linear (last two)")
        a2.errorbar(obs, [r["median"] for r in held],
                    yerr=[[r["median"] - r["p05"] for r in held], [r["p95"] - r["median"] for r in held]],
                    fmt="o", color="tab:blue", ms=5, capsize=2, label="ODE median (5-95 %)")
        a2.set_xscale("log")
        a2.set_yscale("log")
        a2.set_xlabel("observed held-out size")
        a2.set_ylabel("forecast")
        a2.set_title("held-out: median rel. error ODE {:.3f}, last {:.3f}, linear {:.3f}".format(
            summary["holdout_rel_error_median"], summary["baseline_last_rel_error_median"],
            summary["baseline_linear_rel_error_median"]), fontsize=9)
        a2.legend(fontsize=7)
    else:
        r2 = [r["r2"] for r in metrics_rows]
        a2.bar(range(len(r2)), r2, color="tab:blue")
        a2.set_xticks(range(len(r2)), [r["subject"] for r in metrics_rows], rotation=90, fontsize=6)
        a2.set_ylabel("R^2 (fitted points)")
        a2.set_title("fit quality per subject", fontsize=10)
    a2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def safe_name(subject: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in subject)
    return keep or "subject"


def write_plots(cohort, out: Path, metrics_rows: list[dict], summary: dict | None = None,
                max_subjects: int = 200) -> list[Path]:
    from tgrowth.io import save_figure

    paths = []
    for subj in list(cohort.fits)[:max_subjects]:
        paths.append(save_figure(subject_figure(cohort, subj), out / "plots" / f"{safe_name(subj)}.png"))
    paths.append(save_figure(cohort_figure(cohort, metrics_rows, summary), out / "cohort_summary.png"))
    return paths
