"""Every method of one or more ``tgrowth predict`` runs on the same subjects: mean, median and n, the seed-to-seed
spread, and paired verdicts against no-change (and the geometric baselines), as a markdown table.

    python benchmarks/cohort_table.py RUN_DIR [RUN_DIR ...] [--against no-change grow-to-target]
    python benchmarks/cohort_table.py DIR_A+DIR_B             # one run whose subjects were split over folders

Each RUN_DIR holds the ``metrics.csv`` of one predict run (the same config and subjects, different ``seed``);
``DIR_A+DIR_B`` joins the rows of folders that hold different subjects of one run (e.g. two processes on two
halves of a cohort), or different methods on the same subjects (e.g. rows added by a later run with the same
seed and models): a (subject, method) row found in more than one folder is kept once, and only if its scores
(the table's columns) agree in every folder, since a deterministic baseline scored again must come out the same;
otherwise the script stops and names the subject, method and folders. A ``volume=true`` run (3D metrics in its
metrics.csv) gets the 3D columns and verdicts.
Per method and metric the table shows the mean (median) over subjects of the first run, n, and, with two or
more runs, the spread of the per-run means (max - min): a difference between methods smaller than that
spread is not a win. The verdict lines pair subjects (Student-t 95 % CI of the mean paired difference, the
demo's rule) within each run, so run-to-run noise and subject-to-subject spread are both visible.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

from tgrowth.demo import paired_verdict, verdict_line
from tgrowth.io import read_csv
from tgrowth.predict.report import is_volume, summarise

COLUMNS = [("hd95", "map HD95 mm", True), ("dice", "Dice", False), ("ssim", "SSIM", False),
           ("ssim_zone", "SSIM zone", False), ("area_error_vs_truth", "area err/true", True),
           ("area_error_vs_target", "area err/ODE", True)]
COLUMNS_3D = [("hd95_3d", "HD95 3D mm", True), ("dice_3d", "Dice 3D", False), ("ssim", "SSIM", False),
              ("volume_error_vs_truth", "vol err/true", True), ("volume_error_vs_target", "vol err/ODE", True),
              ("adjacent_dice", "adjacent Dice", False)]
VERDICTS = [("hd95", "map HD95", " mm"), ("dice", "Dice", ""), ("area_error_vs_truth", "area error vs truth", "")]
VERDICTS_3D = [("hd95_3d", "HD95 3D", " mm"), ("dice_3d", "Dice 3D", ""), ("volume_error_vs_truth",
                                                                         "volume error vs truth", "")]


def _cell(stats: dict, spread: float | None) -> str:
    mean, median = stats["mean"], stats["median"]
    if stats["n"] == 0:
        return "-"
    s = f"{mean:.3f} ({median:.3f})"
    return s + (f" ±{spread / 2:.3f}" if spread is not None else "")


def table(sums: list[dict], columns: list[tuple[str, str, bool]] = COLUMNS) -> str:
    methods = list(sums[0]["methods"])
    head = "| method | n | " + " | ".join(h for _, h, _ in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for m in methods:
        cells = []
        for c, _, _ in columns:
            means = [s["methods"][m][c]["mean"] for s in sums if m in s["methods"] and s["methods"][m][c]["n"]
                     and math.isfinite(s["methods"][m][c]["mean"])]
            spread = (max(means) - min(means)) if len(means) > 1 else None
            cells.append(_cell(sums[0]["methods"][m][c], spread))
        lines.append(f"| {m} | {sums[0]['methods'][m][columns[0][0]]['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def join(parts: list[tuple[str, list[dict]]]) -> list[dict]:
    """The rows of one run's folders ``[(folder, rows)]``; a (subject, method) row in several folders kept once
    if its scores agree, else ``ValueError`` naming it (see the module docstring)."""
    scores = sorted({c for c, _, _ in COLUMNS + COLUMNS_3D})
    first: dict[tuple[str, str], tuple[str, dict]] = {}
    rows = []
    for folder, part in parts:
        for row in part:
            key = (row.get("subject"), row.get("method"))
            if key not in first:
                first[key] = (folder, row)
                rows.append(row)
                continue
            seen_in, seen = first[key]
            differ = [c for c in scores if c in row and c in seen and row[c] != seen[c]]
            if differ:
                raise ValueError(f"subject {key[0]} method {key[1]} is in {seen_in} and {folder} with different "
                                 f"{', '.join(differ)} ({', '.join(f'{seen[c]} vs {row[c]}' for c in differ)}): "
                                 "not the same run")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--against", nargs="+", default=["no-change", "grow-to-target", "unguided"])
    ap.add_argument("--method", default="tgrowth")
    a = ap.parse_args(argv)
    runs = []
    for r in a.runs:
        parts = []
        for part in str(r).split("+"):
            f = Path(part) / "metrics.csv" if Path(part).is_dir() else Path(part)
            if not f.is_file():
                print(f"cohort_table: no metrics.csv in {part}", file=sys.stderr)
                return 2
            parts.append((part, read_csv(f)))
        try:
            runs.append(join(parts))
        except ValueError as e:
            print(f"cohort_table: {e}", file=sys.stderr)
            return 2
    volume = is_volume(runs[0])
    columns, verdicts = (COLUMNS_3D, VERDICTS_3D) if volume else (COLUMNS, VERDICTS)
    print(f"runs: {', '.join(str(r) for r in a.runs)}")
    print("cells: mean (median) over subjects of the first run" + (", ± half the spread of the per-run means"
                                                                    if len(runs) > 1 else ""))
    print()
    sums = [summarise(rows) for rows in runs]
    print(table(sums, columns))
    print()
    for metric, words, unit in verdicts:
        for b in a.against:
            for i, rows in enumerate(runs):
                v = paired_verdict(rows, metric, b, a.method, lower_is_better=not metric.startswith("dice"))
                if v is None:
                    continue
                print(f"run {i + 1}: " + verdict_line(v, words, unit))
    if len(runs) > 1:
        print()
        for c, h, _ in columns:
            d = [s["methods"].get(a.method, {}).get(c, {}).get("mean") for s in sums]
            d = [x for x in d if x is not None and math.isfinite(x)]
            if len(d) > 1:
                print(f"{a.method} {h}: per-run means {', '.join(f'{x:.3f}' for x in d)} (sd {statistics.stdev(d):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
