"""metrics.csv columns, summary.json statistics and the console table (tgrowth vs the baselines)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tgrowth.io import write_csv, write_json

METRIC_COLUMNS = ["ssim", "ssim_brain", "psnr", "mae", "dice", "hd95", "area_error_vs_truth", "area_error_vs_target",
                  "ode_forecast_error", "ssim_zone", "psnr_zone"]
COLUMNS = ["subject", "method", *METRIC_COLUMNS, "pred_area_mm2", "map_area_mm2", "true_area_mm2",
           "target_area_mm2", "guided_to_area_mm2", "prior_area_mm2", "scale", "prior_timepoint",
           "target_timepoint", "target_day", "slice_index"]
# the console table: (column, header, lower is better)
TABLE = [("hd95", "HD95 mm", True), ("dice", "Dice", False), ("ssim", "SSIM", False), ("psnr", "PSNR", False),
         ("mae", "MAE", True), ("area_error_vs_truth", "AreaErr/true", True),
         ("area_error_vs_target", "AreaErr/ODE", True)]
ERROR_COLUMNS = ["subject", "stage", "error"]
# volume=true (tgrowth.predict.volume): 3D metrics in the input grid and the slice-to-slice consistency
VOLUME_METRICS = ["dice_3d", "hd95_3d", "volume_error_vs_truth", "volume_error_vs_target", "ode_volume_error",
                  "adjacent_dice", "adjacent_dice_truth"]
VOLUME_COLUMNS = ["subject", "method", *VOLUME_METRICS, "ssim", "psnr", "mae", "pred_volume_mm3", "map_volume_mm3",
                  "true_volume_mm3", "target_volume_mm3", "prior_volume_mm3", "scale", "prior_timepoint",
                  "target_timepoint", "target_day", "slice_index", "n_slices"]
# summary.json checks: tgrowth's generated size is off its ODE target by more than this (relative) on a subject
# -> the guidance missed (e.g. a growth rim wider than the sampler draws from its noise level: docs/benchmarks.md)
TARGET_TOLERANCE = 0.15
VOLUME_TABLE = [("hd95_3d", "HD95 3D mm", True), ("dice_3d", "Dice 3D", False), ("ssim", "SSIM", False),
                ("volume_error_vs_truth", "VolErr/true", True), ("volume_error_vs_target", "VolErr/ODE", True),
                ("adjacent_dice", "AdjDice", False)]


def is_volume(rows: Sequence[dict[str, Any]]) -> bool:
    """Rows of a volume=true run (3D metrics)."""
    return any("pred_volume_mm3" in r for r in rows)


def _finite(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def summarise(rows: Sequence[dict[str, Any]], methods: Sequence[str] | None = None) -> dict[str, Any]:
    """Per method and metric: mean, median, n (finite values), n_nonfinite (e.g. HD95 of an empty map)."""
    methods = list(methods) if methods else list(dict.fromkeys(r["method"] for r in rows))
    out: dict[str, Any] = {"n_subjects": len({r["subject"] for r in rows}), "methods": {}}
    volume = is_volume(rows)
    columns = METRIC_COLUMNS + VOLUME_METRICS if volume else METRIC_COLUMNS
    for m in methods:
        mrows = [r for r in rows if r["method"] == m]
        if not mrows:
            continue
        stats: dict[str, Any] = {"n_subjects": len({r["subject"] for r in mrows}), "n_rows": len(mrows)}
        for c in columns:
            vals = [r.get(c) for r in mrows]
            fin = _finite(vals)
            present = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
            stats[c] = {"mean": sum(fin) / len(fin) if fin else float("nan"), "median": _median(fin),
                        "n": len(fin), "n_nonfinite": len(present) - len(fin)}
        out["methods"][m] = stats
    ms = out["methods"]
    out["checks"] = _volume_checks(ms) if volume else _checks(ms)
    reach = _reaches_target(rows, "volume_error_vs_target" if volume else "area_error_vs_target")
    if reach is not None:
        out["checks"]["tgrowth_reaches_its_target"] = reach
    return out


def _reaches_target(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Whether tgrowth's generated size is within TARGET_TOLERANCE of its ODE target on every subject, naming the
    subjects where it is not (the worst relative error too)."""
    errs: dict[str, float] = {}
    for r in rows:
        if r["method"] == "tgrowth" and _finite([r.get(metric)]):
            errs[r["subject"]] = max(errs.get(r["subject"], 0.0), float(r[metric]))
    if not errs:
        return None
    missed = sorted(s for s, e in errs.items() if e > TARGET_TOLERANCE)
    return {"tolerance": TARGET_TOLERANCE, "worst": max(errs.values()), "missed": " ".join(missed) or "none",
            "holds": not missed}


def _beats(ms: dict[str, Any], method: str, other: str, metric: str) -> dict[str, Any] | None:
    """``method``'s mean ``metric`` against ``other``'s (lower is better), when both ran."""
    if method not in ms or other not in ms:
        return None
    a, b = ms[method][metric]["mean"], ms[other][metric]["mean"]
    return {method: a, other: b, "holds": bool(a < b)}


def _volume_checks(ms: dict[str, Any]) -> dict[str, Any]:
    found = {"tgrowth_beats_no_change_on_hd95_3d": _beats(ms, "tgrowth", "no-change", "hd95_3d")}
    return {k: v for k, v in found.items() if v is not None}


def _checks(ms: dict[str, Any]) -> dict[str, Any]:
    found = {"guided_beats_unguided_on_area_error": _beats(ms, "tgrowth", "unguided", "area_error_vs_target"),
             "tgrowth_beats_no_change_on_hd95": _beats(ms, "tgrowth", "no-change", "hd95")}
    return {k: v for k, v in found.items() if v is not None}


def write_tables(out: Path, rows: list[dict[str, Any]], errors: list[dict[str, Any]], methods: Sequence[str],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    order = {m: i for i, m in enumerate(methods)}
    rows = sorted(rows, key=lambda r: (r["subject"], order.get(r["method"], len(order)), str(r.get("target_day"))))
    summary = summarise(rows, methods)
    if extra:
        summary.update(extra)
    summary["n_errors"] = len(errors)
    if rows:
        write_csv(Path(out) / "metrics.csv", rows, VOLUME_COLUMNS if is_volume(rows) else COLUMNS)
    write_csv(Path(out) / "errors.csv", errors, ERROR_COLUMNS)
    write_json(Path(out) / "summary.json", summary)
    return summary


def _fmt(v: float | str) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def format_table(summary: dict[str, Any]) -> str:
    """Mean over subjects per method (median in brackets for HD95)."""
    ms = summary.get("methods", {})
    if not ms:
        return "(no metrics: no subject had a real follow-up to compare with)"
    table = VOLUME_TABLE if any("dice_3d" in st for st in ms.values()) else TABLE
    heads = ["method", "n"] + [h for _, h, _ in table]
    lines = []
    for m, st in ms.items():
        cells = [m, str(st["n_subjects"])]
        for c, _, _ in table:
            cells.append(_fmt(st[c]["mean"]) + ("" if not st[c]["n_nonfinite"] else f" ({st[c]['n_nonfinite']} inf)"))
        lines.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(heads)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    body = [fmt.format(*heads), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in lines]
    body.append("(means over subjects; HD95 and Dice of the probability map at the threshold; area errors relative)")
    for name, c in summary.get("checks", {}).items():
        vals = ", ".join(f"{k}={_fmt(v)}" for k, v in c.items() if k != "holds")
        body.append(f"{name.replace('_', ' ')}: {'yes' if c['holds'] else 'NO'} ({vals})")
    return "\n".join(body)
