"""python cmp13.py QUANT_PREFIX BOOT_PREFIX: the quantiles preset's tgrowth rows against the bootstrap run's rows
(same seed and noise)."""

import statistics as st
import sys

from tgrowth.demo import paired_verdict, verdict_line
from tgrowth.io import read_csv


def rows(p):
    return read_csv(p + "_a/metrics.csv") + read_csv(p + "_b/metrics.csv")


def f(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def hd(s, m):
    return next((round(f(r["hd95_3d"]), 2) for r in allr if r["subject"] == s and r["method"] == m), None)


Q = rows(sys.argv[1])  # the quantiles run (prefix of _a/_b)
V = rows(sys.argv[2])  # the bootstrap run
# baselines must match
for m in ["no-change", "fk", "grow-to-target"]:
    a = {r["subject"]: r["hd95_3d"] for r in Q if r["method"] == m}
    b = {r["subject"]: r["hd95_3d"] for r in V if r["method"] == m}
    print(m, "identical to v12 run:", a == b, len(a))
allr = [r for r in Q if r["method"] == "tgrowth"] + [
    dict(r, method="tgrowth-bootstrap") if r["method"] == "tgrowth" else r for r in V
]
methods = list(dict.fromkeys(r["method"] for r in allr))
print("| method | n | hd95_3d | dice_3d | ssim | vol err/true | vol err/ODE | adjacent dice |")
for m in methods:
    cells = []
    for c in ["hd95_3d", "dice_3d", "ssim", "volume_error_vs_truth", "volume_error_vs_target", "adjacent_dice"]:
        v = [f(r[c]) for r in allr if r["method"] == m and f(r.get(c)) is not None]
        if c == "hd95_3d":
            n = len(v)
        cells.append(f"{st.mean(v):.3f} ({st.median(v):.3f})" if v else "-")
    print(f"| {m} | {n} | " + " | ".join(cells) + " |")
for base in ["no-change", "fk", "grow-to-target", "unguided", "tgrowth-bootstrap", "oracle-area"]:
    for c, low in [("hd95_3d", True), ("dice_3d", False), ("volume_error_vs_truth", True), ("ssim", False)]:
        v = paired_verdict(allr, c, base, lower_is_better=low)
        b = {r["subject"]: f(r[c]) for r in allr if r["method"] == base}
        a = {r["subject"]: f(r[c]) for r in allr if r["method"] == "tgrowth"}
        d = [a[s] - b[s] for s in a if s in b]
        counts = (sum(x < -1e-9 for x in d), sum(abs(x) <= 1e-9 for x in d), sum(x > 1e-9 for x in d))
        print(verdict_line(v, c), "[lower {}, equal {}, higher {}]".format(*counts))
t = st.mean(f(r["hd95_3d"]) for r in allr if r["method"] == "tgrowth")
nc = st.mean(f(r["hd95_3d"]) for r in allr if r["method"] == "no-change")
print(f"ratio {t:.3f}/{nc:.3f} = {t / nc:.3f}x")
for s in sorted({r["subject"] for r in allr}):
    print(s, hd(s, "tgrowth"), hd(s, "tgrowth-bootstrap"), hd(s, "no-change"), hd(s, "fk"))
