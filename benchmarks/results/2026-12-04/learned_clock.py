"""Session record (sixteenth session): a learned size clock on the training cohort, leave-one-out. A ridge
regression of log(V_last / V_prior) on size and time features of the scans before (the last two log growth rates
scaled to the forecast gap, the prior against the pre-RT maximum, the gap, the days since RT, the prior volume),
scored like Table 2c (relative error vs the true last volume, zero truths left out).

Usage: python learned_clock.py COHORT_DIR   (train + validation subjects; 6 scans each)
"""

from __future__ import annotations

import csv
import math
import statistics
import sys

import numpy as np


def main(root: str) -> None:
    ser: dict[str, list] = {}
    with open(f"{root}/ground_truth.csv") as fh:
        for r in csv.DictReader(fh):
            if r["split"] != "test":
                ser.setdefault(r["subject"], []).append(
                    (float(r["day"]), float(r["whole_tumor_volume_mm3"]), float(r["rt_end_day"])))
    feats, target, cases = [], [], []
    for x in ser.values():
        x.sort()
        if x[-1][1] <= 0:
            continue
        v = [max(b, 50.0) for _, b, _ in x]  # 50 mm^3 floor: a vanished tumour has no log
        d = [a for a, _, _ in x]
        gap = d[5] - d[4]
        feats.append([1.0, math.log(v[4] / v[3]) / (d[4] - d[3]) * gap, math.log(v[3] / v[2]) / (d[3] - d[2]) * gap,
                      math.log(v[4] / max(v[:2])), gap / 100, (d[4] - x[0][2]) / 100, math.log(v[4] / 1000)])
        target.append(math.log(x[-1][1] / v[4]))
        cases.append((v[4], x[-1][1]))
    a, y = np.array(feats), np.array(target)
    for lam in (0.1, 1.0, 10.0):
        errs = []
        for i in range(len(y)):
            m = np.arange(len(y)) != i
            w = np.linalg.solve(a[m].T @ a[m] + lam * np.eye(a.shape[1]), a[m].T @ y[m])
            prior, truth = cases[i]
            errs.append(abs(prior * math.exp(a[i] @ w) - truth) / truth)
        print(f"ridge {lam}: leave-one-out rel. error mean {statistics.mean(errs):.3f} median "
              f"{statistics.median(errs):.3f} p90 {sorted(errs)[int(0.9 * len(errs))]:.3f} n {len(errs)}")


if __name__ == "__main__":
    main(sys.argv[1])
