"""Per-subject figures of `tgrowth predict`: the panel, the growth curve and the montage over days."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax: Any, img: np.ndarray, title: str, **kw: Any) -> None:
    ax.imshow(img, cmap=kw.pop("cmap", "gray"), origin="lower", **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def panel(path: Path, *, subject: str, contrast: str, prior: np.ndarray, gen_mean: np.ndarray,
          prob: np.ndarray, truth: np.ndarray | None, truth_seg: np.ndarray | None,
          prior_seg: np.ndarray | None, titles: dict[str, str], threshold: float = 0.5) -> Path:
    """prior | generated mean | probability-map contours over the real follow-up | difference map."""
    from tgrowth.io import save_figure

    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    vr = dict(vmin=-1, vmax=1)
    _show(axes[0], prior, titles.get("prior", "prior"), **vr)
    if prior_seg is not None and prior_seg.any():
        axes[0].contour(prior_seg.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
    _show(axes[1], gen_mean, titles.get("mean", "generated mean"), **vr)
    back = truth if truth is not None else gen_mean
    _show(axes[2], back, titles.get("overlay", "probability map"), **vr)
    levels = [lv for lv in (0.1, threshold, 0.9) if prob.max() >= lv]
    if levels:
        cs = axes[2].contour(prob, levels=levels, cmap="autumn", linewidths=1.0)
        axes[2].clabel(cs, fontsize=6, fmt="%.1f")
    if truth_seg is not None and truth_seg.any():
        axes[2].contour(truth_seg.astype(float), levels=[0.5], colors="cyan", linewidths=1.0, linestyles="--")
    diff = gen_mean - prior
    lim = float(max(np.abs(diff).max(), 1e-3))
    _show(axes[3], diff, titles.get("diff", "generated mean - prior"), cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.suptitle(f"{subject} ({contrast}); contours: orange/red = p(tumour) 0.1/{threshold}/0.9, "
                 "cyan dashed = real follow-up, yellow = prior", fontsize=9)
    return save_figure(fig, path)


def growth_curve(path: Path, *, subject: str, obs_days: Sequence[float], obs_sizes: Sequence[float],
                 curve_days: np.ndarray, median: np.ndarray, p05: np.ndarray, p95: np.ndarray,
                 prior_day: float, targets: Sequence[dict[str, Any]], rt: tuple[float | None, float | None],
                 model: str, unit: str = "mm$^2$") -> Path:
    """Observed sizes, ODE median and 5-95 % band, the target(s), the generated areas and the truth."""
    from tgrowth.io import save_figure

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if rt[0] is not None and rt[1] is not None:
        ax.axvspan(rt[0], rt[1], color="tab:purple", alpha=0.12, label="RT")
    ax.fill_between(curve_days, p05, p95, color="tab:blue", alpha=0.2, label="ODE 5-95 %")
    ax.plot(curve_days, median, color="tab:blue", label=f"ODE median ({model})")
    ax.plot(obs_days, obs_sizes, "ko", label="observed (fit)")
    ax.axvline(prior_day, color="gray", lw=0.8, ls=":")
    for i, t in enumerate(targets):
        first = i == 0
        ax.plot([t["day"]], [t["target_area_mm2"]], "b*", ms=11, label="guidance target" if first else None)
        if t.get("generated_area_mm2") is not None:
            lo, hi = t.get("generated_area_p05"), t.get("generated_area_p95")
            yerr = None if lo is None else [[t["generated_area_mm2"] - lo], [hi - t["generated_area_mm2"]]]
            ax.errorbar([t["day"] + 0.8], [t["generated_area_mm2"]], yerr=yerr, fmt="s", color="tab:orange",
                        capsize=3, label="generated (tgrowth)" if first else None)
        if t.get("true_area_mm2") is not None:
            ax.plot([t["day"]], [t["true_area_mm2"]], "rx", ms=10, mew=2, label="real follow-up" if first else None)
    ax.set_xlabel("day")
    ax.set_ylabel(f"tumour area on the slice ({unit})")
    ax.set_title(subject)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def montage(path: Path, *, subject: str, prior: np.ndarray, means: Sequence[np.ndarray], probs: Sequence[np.ndarray],
            days: Sequence[float], areas: Sequence[float], threshold: float = 0.5) -> Path:
    """Row 1: prior then the generated mean at each day; row 2: the probability maps."""
    from tgrowth.io import save_figure

    plt = _plt()
    n = len(days) + 1
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    _show(axes[0, 0], prior, "prior (day +0)", vmin=-1, vmax=1)
    axes[1, 0].axis("off")
    for j, (m, p, d, a) in enumerate(zip(means, probs, days, areas), start=1):
        _show(axes[0, j], m, f"day +{d:g}: target {a:.0f} mm$^2$", vmin=-1, vmax=1)
        if p.max() >= threshold:
            axes[0, j].contour(p, levels=[threshold], colors="orange", linewidths=0.8)
        _show(axes[1, j], p, "p(tumour)", cmap="magma", vmin=0, vmax=1)
    fig.suptitle(f"{subject}: predicted follow-ups over time", fontsize=10)
    return save_figure(fig, path)


def volume_montage(path: Path, *, subject: str, slices: Sequence[int], images: np.ndarray, prob: np.ndarray,
                   truth_seg: np.ndarray | None, prior_seg: np.ndarray, threshold: float = 0.5,
                   max_slices: int = 6) -> Path:
    """A 3D prediction, a few axial slices evenly spread over the generated ones: the probability map in colour
    over the real follow-up (``images [S, H, W]``; the prior where there is none), the real tumour (cyan dashed)
    and the prior tumour (yellow); ``prob`` / ``truth_seg`` / ``prior_seg`` are ``[S, H, W]`` on the same stack."""
    from tgrowth.io import save_figure

    plt = _plt()
    pick = np.unique(np.linspace(0, len(slices) - 1, min(max_slices, len(slices))).round().astype(int))
    fig, axes = plt.subplots(1, len(pick), figsize=(2.6 * len(pick), 3.0), squeeze=False)
    for ax, i in zip(axes[0], pick):
        _show(ax, images[i], f"slice {slices[i]}", vmin=-1, vmax=1)
        ax.imshow(np.ma.masked_less(prob[i], 0.05), cmap="autumn_r", vmin=0, vmax=1, alpha=0.55, origin="lower")
        if prior_seg[i].any():
            ax.contour(prior_seg[i].astype(float), levels=[0.5], colors="yellow", linewidths=0.7)
        if truth_seg is not None and truth_seg[i].any():
            ax.contour(truth_seg[i].astype(float), levels=[0.5], colors="cyan", linewidths=1.0, linestyles="--")
        if prob[i].max() >= threshold:
            ax.contour(prob[i], levels=[threshold], colors="red", linewidths=0.8)
    fig.suptitle(f"{subject}: p(tumour) (colour; red = {threshold}) over the real follow-up; cyan dashed = real "
                 "tumour, yellow = prior", fontsize=9)
    return save_figure(fig, path)
