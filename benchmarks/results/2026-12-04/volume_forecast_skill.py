"""Session record (sixteenth session): how well growth laws and simple extrapolations forecast a phantom cohort's
last whole-tumour volume from the scans before it, the way predict makes its targets (prior volume x the median
over bootstrap replicates of size(target) / size(prior)). No sampling; reads ``ground_truth.csv``.

Usage: python volume_forecast_skill.py COHORT_DIR SPLIT [JSON_SETTINGS ...]
  SPLIT: train / val / test, nontest (train + val) or all; each JSON_SETTINGS overrides FitSettings, e.g.
  '{"model": "linear_radial_rt"}'. The first setting is the reference the extrapolations are combined with.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
os.environ.setdefault("WANDB_MODE", "disabled")

from tgrowth.config.ode import FitSettings  # noqa: E402
from tgrowth.ode import fit_cohort  # noqa: E402


def series(root: str, split: str) -> dict[str, list[tuple[float, float, float, float]]]:
    """subject -> [(day, volume mm^3, rt_start_day, rt_end_day)] sorted by day."""
    out: dict[str, list] = {}
    with open(Path(root) / "ground_truth.csv") as fh:
        for r in csv.DictReader(fh):
            keep = split == "all" or r["split"] == split or (split == "nontest" and r["split"] != "test")
            if keep:
                out.setdefault(r["subject"], []).append(
                    (float(r["day"]), float(r["whole_tumor_volume_mm3"]), float(r["rt_start_day"]), float(r["rt_end_day"])))
    return {s: sorted(v) for s, v in out.items()}


def ode_targets(ser: dict, settings: dict) -> dict[str, float]:
    """predict's volume target of the last scan from the scans before it, per subject."""
    rows = [{"subject": s, "day": d, "size": v, "rt_start_day": a, "rt_end_day": b}
            for s, x in ser.items() for d, v, a, b in x[:-1]]
    cfg = OmegaConf.merge(OmegaConf.structured(FitSettings),
                          {"size_kind": "volume", "n_bootstrap": 50, "progress_bar": False, **settings})
    fit = fit_cohort(rows, cfg, seed=0)
    out = {}
    for s, x in ser.items():
        (prior_day, prior_vol, _, _), (target_day, _, _, _) = x[-2], x[-1]
        smp = torch.as_tensor(np.asarray(fit.forecast(s, [prior_day, target_day]).samples), dtype=torch.float64)
        out[s] = prior_vol * float((smp[:, 1] / smp[:, 0]).median())
    return out


def radius(v: float) -> float:
    return (3 * v / (4 * math.pi)) ** (1 / 3)


def ball(r: float) -> float:
    return 4 / 3 * math.pi * max(r, 0.0) ** 3


def last_two_line(x) -> float:
    """The equivalent-sphere radius extrapolated linearly through the last two scans."""
    (d1, v1, _, _), (d2, v2, _, _), t = x[-3], x[-2], x[-1][0]
    return ball(radius(v2) + (radius(v2) - radius(v1)) / (d2 - d1) * (t - d2))


def post_trough_line(x) -> float | None:
    """A radius line through the post-RT scans from the smallest one on (None with fewer than two)."""
    fitted, t, rt_end = x[:-1], x[-1][0], x[0][3]
    post = [i for i, p in enumerate(fitted) if p[0] >= rt_end]
    if len(post) < 2:
        return None
    i0 = min(post, key=lambda i: fitted[i][1])
    idx = [i for i in post if i >= i0]
    if len(idx) < 2:
        return None
    d = [fitted[i][0] for i in idx]
    r = [radius(fitted[i][1]) for i in idx]
    md, mr = statistics.mean(d), statistics.mean(r)
    slope = sum((a - md) * (b - mr) for a, b in zip(d, r)) / sum((a - md) ** 2 for a in d)
    return ball(mr + slope * (t - md))


def report(name: str, forecasts: dict[str, float], ser: dict) -> None:
    err, logr = [], []
    for s, f in forecasts.items():
        truth = ser[s][-1][1]
        if truth > 0:  # a tumour gone by the target scan has no relative error
            err.append(abs(f - truth) / truth)
            logr.append(math.log(max(f, 1.0) / truth))
    print(f"| {name} | {statistics.mean(err):.3f} | {statistics.median(err):.3f} | {sorted(err)[int(0.9 * len(err))]:.3f} "
          f"| {statistics.mean(logr):+.2f} | {len(err)} |", flush=True)


def main() -> None:
    root, split = sys.argv[1], sys.argv[2]
    settings = [json.loads(a) for a in sys.argv[3:]] or [{"model": "linear_radial_rt"}]
    ser = series(root, split)
    print(f"# {root} split={split}: {len(ser)} subjects; relative error vs the true last volume (zero truths left out)")
    print("| forecast | mean | median | p90 | log bias | n |\n|---|---|---|---|---|---|")
    ref = None
    for st in settings:
        f = ode_targets(ser, st)
        ref = f if ref is None else ref
        report(json.dumps(st), f, ser)
    line = {s: last_two_line(x) for s, x in ser.items()}
    report("radius linear through the last two scans", line, ser)
    report("geometric mean of the first setting and that line",
           {s: math.sqrt(max(ref[s], 1.0) * max(line[s], 1.0)) for s in ser}, ser)
    trough = {s: post_trough_line(x) for s, x in ser.items()}
    report("radius line from the post-RT trough on (else the first setting)",
           {s: ref[s] if v is None else v for s, v in trough.items()}, ser)
    report("no-change (the prior volume)", {s: x[-2][1] for s, x in ser.items()}, ser)


if __name__ == "__main__":
    main()
