"""Offline estimate (fourteenth session) from a run's saved maps (method_maps=true): the generated slices whose
prior tumour area is below A mm^2 take the fk mask instead, as the FK-filled slices do (A = 0: only the margin
slices, which hold no prior tumour: volume_margin_slices 1 -> 0 with one more FK-filled slice, the same stack),
then map_connected as in predict; hd95_3d and dice_3d as volume_row computes them.
usage: python edgefill.py RUN_DIR --data COHORT_ROOT --areas 0 50"""
import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from tgrowth import metrics as M
from tgrowth.growth.geometry import connected_to
from tgrowth.predict.volume import _hd95_3d

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("--data", required=True)
ap.add_argument("--areas", nargs="+", type=float, default=[0, 1, 20, 50, 100])
a = ap.parse_args()
res = {}
for sd in sorted(Path(a.run).glob("*/methods")):
    subj = sd.parent.name
    info = json.loads((sd.parent / "info.json").read_text())
    segs = {tp: nib.load(str(Path(a.data) / f"{subj}-{tp}" / f"{subj}-{tp}-seg.nii.gz"))
            for tp in (info["prior_timepoint"], info["target_timepoint"])}
    prior, truth = (np.asarray(segs[info[k]].dataobj) > 0 for k in ("prior_timepoint", "target_timepoint"))
    sp = segs[info["target_timepoint"]].header.get_zooms()[:3]
    tg = np.asarray(nib.load(str(sd / "tgrowth.nii.gz")).dataobj).astype(np.float32)
    fk = np.asarray(nib.load(str(sd / "fk.nii.gz")).dataobj).astype(np.float32)
    gen = info["slices"]
    pix = sp[0] * sp[1]
    for A in a.areas:
        p = tg.copy()
        for z in gen:
            if prior[..., z].sum() * pix < A or A == 0 and not prior[..., z].any():
                p[..., z] = fk[..., z]
        p = connected_to(torch.from_numpy(p), torch.from_numpy(prior)).numpy()
        m = p >= 0.5
        res.setdefault(A, []).append((subj, _hd95_3d(m, truth, sp), M.dice(m, truth)))
    res.setdefault("tgrowth", []).append((subj, _hd95_3d(tg >= 0.5, truth, sp), 0))
    res.setdefault("fk", []).append((subj, _hd95_3d(fk >= 0.5, truth, sp), 0))
for k, v in res.items():
    print(k, f"mean hd95 {np.mean([x[1] for x in v]):.3f} median {np.median([x[1] for x in v]):.3f} dice {np.mean([x[2] for x in v]):.3f} n={len(v)}", " ".join(f"{s[-2:]}:{h:.2f}" for s, h, _ in v))
