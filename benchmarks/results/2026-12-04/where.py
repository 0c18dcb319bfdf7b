"""Where does a 3D tgrowth map lose to the fk mask? Per subject: the two directed 95th percentiles of each
map against the truth, and per axial slice the areas and the worst boundary distances.
usage: python where.py RUN_DIR [RUN_DIR...] --data /work/data/cohortA [--slices]"""
import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from tgrowth import metrics as M

ap = argparse.ArgumentParser()
ap.add_argument("runs", nargs="+")
ap.add_argument("--data", required=True)
ap.add_argument("--slices", action="store_true")
ap.add_argument("--methods", nargs="+", default=["tgrowth", "fk"])
a = ap.parse_args()
for run in a.runs:
    for sd in sorted(Path(run).glob("*/methods")):
        subj = sd.parent.name
        info = json.loads((sd.parent / "info.json").read_text())
        tp = info["target_timepoint"]
        seg = nib.load(str(Path(a.data) / f"{subj}-{tp}" / f"{subj}-{tp}-seg.nii.gz"))
        truth = np.asarray(seg.dataobj) > 0
        sp = seg.header.get_zooms()[:3]
        out = [subj]
        per = {}
        for m in a.methods:
            p = np.asarray(nib.load(str(sd / f"{m}.nii.gz")).dataobj) >= 0.5
            d_pt, d_tp = M.surface_distances(p, truth, sp)
            hd = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
            out.append(f"{m}: hd {hd:5.2f} p->t {np.percentile(d_pt,95):5.2f} t->p {np.percentile(d_tp,95):5.2f} "
                       f"vol {p.sum()*np.prod(sp):7.0f}")
            per[m] = p
        out.append(f"truth vol {truth.sum()*np.prod(sp):7.0f}")
        print(" | ".join(out))
        if a.slices:
            z = np.flatnonzero((per[a.methods[0]] | per[a.methods[1]] | truth).any((0, 1)))
            for k in z:
                row = [f"  z{k:3d} truth {truth[..., k].sum():4d}"]
                for m in a.methods:
                    p = per[m][..., k]
                    row.append(f"{m} {p.sum():4d} (+{(p & ~truth[..., k]).sum():3d} -{(~p & truth[..., k]).sum():3d})")
                print(" ".join(row))
