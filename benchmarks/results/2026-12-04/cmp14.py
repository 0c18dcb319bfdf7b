"""python cmp14.py REF=path1[+path2] NAME=path[+path] ...: each variant's tgrowth rows against the reference's
(same subjects, seed and noise), and against the reference run's fk and no-change rows; per-subject hd95_3d."""
import statistics as st
import sys

from tgrowth.demo import paired_verdict, verdict_line
from tgrowth.io import read_csv


def f(x):
    try:
        v = float(x)
        return v if v == v else None
    except Exception:
        return None


runs = {}
for arg in sys.argv[1:]:
    name, paths = arg.split("=", 1)
    runs[name] = [r for p in paths.split("+") for r in read_csv(p + "/metrics.csv")]
names = list(runs)
ref = names[0]
base, seen = [], set()
for n in names:  # the baselines: the first run that has them
    for r in runs[n]:
        if r["method"] != "tgrowth" and (r["subject"], r["method"]) not in seen:
            seen.add((r["subject"], r["method"]))
            base.append(r)
for n in names[1:]:
    for m in ["no-change", "fk"]:
        a = {r["subject"]: r["hd95_3d"] for r in runs[n] if r["method"] == m}
        b = {r["subject"]: r["hd95_3d"] for r in base if r["method"] == m}
        if a and any(a[s] != b.get(s) for s in a):
            print(f"WARNING {n}: {m} differs from {ref}")
allr = base + [dict(r, method=n) for n in names for r in runs[n] if r["method"] == "tgrowth"]
cols = ["hd95_3d", "dice_3d", "ssim", "volume_error_vs_truth", "volume_error_vs_target"]
print("| method | n | " + " | ".join(cols) + " |")
for m in dict.fromkeys(r["method"] for r in allr):
    cells, n = [], 0
    for c in cols:
        v = [f(r[c]) for r in allr if r["method"] == m and f(r.get(c)) is not None]
        n = max(n, len(v))
        cells.append(f"{st.mean(v):.3f} ({st.median(v):.3f})" if v else "-")
    print(f"| {m} | {n} | " + " | ".join(cells) + " |")
for n in names:
    print(f"--- {n}")
    for b in ["no-change", "fk"] + [x for x in names if x != n]:
        rr = [dict(r, method="tgrowth") if r["method"] == n else r for r in allr if r["method"] in (n, b)]
        for c, low in [("hd95_3d", True), ("dice_3d", False), ("ssim", False)]:
            v = paired_verdict(rr, c, b, lower_is_better=low)
            a = {r["subject"]: f(r[c]) for r in rr if r["method"] == "tgrowth"}
            bb = {r["subject"]: f(r[c]) for r in rr if r["method"] == b}
            d = [a[s] - bb[s] for s in a if s in bb and a[s] is not None and bb[s] is not None]
            print(" ", verdict_line(v, c), f"[lower {sum(x < -1e-9 for x in d)}, equal "
                  f"{sum(abs(x) <= 1e-9 for x in d)}, higher {sum(x > 1e-9 for x in d)}]")
    t = st.mean(f(r["hd95_3d"]) for r in allr if r["method"] == n)
    nc = st.mean(f(r["hd95_3d"]) for r in allr if r["method"] == "no-change")
    print(f"  ratio {t:.3f}/{nc:.3f} = {t / nc:.3f}x no-change")
print("subject " + " ".join(names) + " no-change fk")
for s in sorted({r["subject"] for r in allr}):
    hd = {r["method"]: f"{f(r['hd95_3d']):.2f}" for r in allr if r["subject"] == s}
    print(s, " ".join(hd.get(m, "-") for m in names + ["no-change", "fk"]))
