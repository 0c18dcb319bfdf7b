"""How far does a generated tumour grow? Per subject of 3D runs: prior, ODE target and generated volumes, and
the radial growth each implies (the radius of a ball of that volume minus the prior's), from info.json.
usage: python rim.py RUN_DIR [RUN_DIR...]"""

import json
import math
import sys
from pathlib import Path


def radius(v_mm3):
    return (3 * v_mm3 / (4 * math.pi)) ** (1 / 3)


print("| subject | prior ml | target ml | generated ml | generated / target | rim asked mm | rim drawn mm |")
print("|---|---|---|---|---|---|---|")
for run in sys.argv[1:]:
    for f in sorted(Path(run).glob("*/info.json")):
        d = json.loads(f.read_text())
        p, t, g = d["prior_volume_mm3"], d["target_volume_mm3"], d["generated_volume_mm3"]["mean"]
        print(f"| {d['subject']} | {p / 1e3:.1f} | {t / 1e3:.1f} | {g / 1e3:.1f} | {g / t:.2f} | "
              f"{radius(t) - radius(p):.2f} | {radius(g) - radius(p):.2f} |")
