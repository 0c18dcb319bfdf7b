"""The stress check of the FK prior: does ``fk`` keep its edge over ``grow-to-target`` when the phantom's growth
law is outside the FK model's family? One markdown table over several ``tgrowth predict`` runs, one per cohort.

    python benchmarks/stress_table.py control=RUN_DIR aniso=RUN_DIR ... [--method fk] [--baseline grow-to-target]

Each ``NAME=RUN_DIR`` holds the ``metrics.csv`` of one predict run; the first one is the reference (the
in-family control). Both methods grow the prior tumour to the same (ODE) area, so their difference is the
shape alone. Per cohort: both methods' mean (median) map HD95 and Dice, the paired difference ``method -
baseline`` (Student-t 95 % CI over the subjects, the demo's rule) and on how many subjects the method is
better / equal / worse. Then, where the cohorts hold the same subjects (same synth seed: only the growth law differs), the
change of that per-subject difference against the reference: does the edge shrink out of family? Last,
from each subject's ``info.json``, how well the calibrated FK model reproduced the earlier scans (its
calibration score) in each cohort, paired against the reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from tgrowth.demo import _value, paired_verdict
from tgrowth.io import read_csv

METRICS = (("hd95", "map HD95 mm", True), ("dice", "Dice", False))


def _key(r: dict[str, Any]) -> tuple:
    return r["subject"], str(r.get("target_timepoint") or ""), str(r.get("target_day") or "")


def differences(rows: list[dict[str, Any]], metric: str, method: str, baseline: str) -> dict[tuple, float]:
    """Per (subject, target): ``method - baseline`` on ``metric`` where both are finite."""
    base = {_key(r): _value(r.get(metric)) for r in rows if r["method"] == baseline}
    out = {}
    for r in rows:
        if r["method"] == method:
            a, b = _value(r.get(metric)), base.get(_key(r))
            if a is not None and b is not None:
                out[_key(r)] = a - b
    return out


def _ci(v: dict[str, Any] | None) -> str:
    if v is None:
        return "-"
    if v["ci"] is None:
        return f"{v['diff']:+.3f} (n=1)"
    return f"{v['diff']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]"


def _stats(rows: list[dict[str, Any]], method: str, metric: str) -> str:
    vals = [x for r in rows if r["method"] == method for x in [_value(r.get(metric))] if x is not None]
    return f"{statistics.fmean(vals):.3f} ({statistics.median(vals):.3f})" if vals else "-"


def cohort_table(runs: dict[str, list[dict[str, Any]]], method: str, baseline: str) -> str:
    """Per cohort and metric: both methods, the paired difference with its CI and verdict, the win count."""
    head = ["cohort", "n"]
    for _, words, _ in METRICS:
        head += [f"{method} {words}", f"{baseline} {words}", f"{method} - {baseline} [95% CI]", "verdict",
                 "better/equal/worse"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in runs.items():
        cells = [name]
        n = None
        for metric, _, lower in METRICS:
            v = paired_verdict(rows, metric, baseline, method, lower_is_better=lower)
            d = differences(rows, metric, method, baseline)
            if n is None:  # the first metric's (HD95's) pairs
                n = len(d)
            wins = sum((x < 0) if lower else (x > 0) for x in d.values())
            same = sum(x == 0 for x in d.values())
            cells += [_stats(rows, method, metric), _stats(rows, baseline, metric), _ci(v),
                      "-" if v is None else v["verdict"], f"{wins}/{same}/{len(d) - wins - same}"]
        cells.insert(1, str(n))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shift_table(runs: dict[str, list[dict[str, Any]]], method: str, baseline: str) -> str:
    """Per non-reference cohort: the change of ``method - baseline`` against the reference, paired by subject."""
    ref_name, ref_rows = next(iter(runs.items()))
    head = ["cohort", "n paired"]
    for _, words, _ in METRICS:
        head += [f"change of {method} - {baseline} {words} vs {ref_name} [95% CI]",
                 f"{method}'s edge"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in list(runs.items())[1:]:
        cells = [name]
        n = None
        for metric, _, lower in METRICS:
            pairs = [{"subject": k[0], "target_timepoint": k[1], "target_day": k[2], "method": who, "d": x}
                     for who, rr in ((name, rows), (ref_name, ref_rows))
                     for k, x in differences(rr, metric, method, baseline).items()]
            v = paired_verdict(pairs, "d", ref_name, name, lower_is_better=lower)
            if n is None:  # the first metric's (HD95's) pairs
                n = 0 if v is None else v["n"]
            edge = {"better": "larger", "worse": "smaller", "tie": "no change shown", "too few": "-"}
            cells += [_ci(v), "-" if v is None else edge[v["verdict"]]]
        cells.insert(1, str(n))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calibration_rows(run: Path) -> list[dict[str, Any]]:
    """Per subject of a predict run (``<subject>/info.json``, key ``fk``): calibrated, score, lambda, rho."""
    out = []
    for f in sorted(run.glob("*/info.json")):
        fk = json.loads(f.read_text()).get("fk")
        if fk:
            out.append({"subject": f.parent.name, "calibrated": bool(fk.get("calibrated")), "score": fk.get("score"),
                        "lambda_mm": fk.get("lambda_mm"), "rho_per_day": fk.get("rho_per_day")})
    return out


def calibration_table(cal: dict[str, list[dict[str, Any]]]) -> str:
    """Per cohort: how many subjects the FK model was fitted to, and how well it reproduced their earlier scans
    (the calibration score: mean Dice of its forecasts of the earlier segmentations), paired against the
    reference cohort (the first)."""
    ref_name = next(iter(cal))
    lines = ["| cohort | calibrated | score: mean (median) | score change vs " + ref_name + " [95% CI] | verdict | "
             "lambda mm: median | rho 1/day: median |", "|---|---|---|---|---|---|---|"]
    for name, rows in cal.items():
        fitted = [r for r in rows if r["calibrated"] and _value(r["score"]) is not None]
        sc = [float(r["score"]) for r in fitted]
        if not sc:
            lines.append(f"| {name} | 0/{len(rows)} | - | - | - | - | - |")
            continue
        pairs = [{"subject": r["subject"], "method": who, "score": r["score"]}
                 for who, rr in ((name, fitted), (ref_name, [r for r in cal[ref_name] if r["calibrated"]])) for r in rr]
        v = None if name == ref_name else paired_verdict(pairs, "score", ref_name, name, lower_is_better=False)
        lam = statistics.median(float(r["lambda_mm"]) for r in fitted)
        rho = statistics.median(float(r["rho_per_day"]) for r in fitted)
        lines.append(f"| {name} | {len(fitted)}/{len(rows)} | {statistics.fmean(sc):.3f} ({statistics.median(sc):.3f}) | "
                     f"{_ci(v) if v else '-'} | {v['verdict'] if v else '-'} | {lam:.2f} | {rho:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    ap.add_argument("--method", default="fk")
    ap.add_argument("--baseline", default="grow-to-target")
    a = ap.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {}
    cal: dict[str, list[dict[str, Any]]] = {}
    for spec in a.runs:
        name, eq, path = spec.partition("=")
        if not eq or not name or not path:
            print(f"stress_table: expected NAME=RUN_DIR, got {spec!r}", file=sys.stderr)
            return 2
        f = Path(path) / "metrics.csv" if Path(path).is_dir() else Path(path)
        if not f.is_file():
            print(f"stress_table: no metrics.csv in {path}", file=sys.stderr)
            return 2
        runs[name] = read_csv(f)
        cal[name] = calibration_rows(f.parent)
    print(f"runs: {', '.join(a.runs)}")
    print(f"cells: mean (median) over subjects; differences {a.method} - {a.baseline}, paired by subject")
    print()
    print(cohort_table(runs, a.method, a.baseline))
    if len(runs) > 1:
        print()
        print(shift_table(runs, a.method, a.baseline))
    if any(cal.values()):
        print()
        print(calibration_table(cal))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
