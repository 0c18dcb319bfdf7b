"""Montage PNG of one phantom subject over time (t1c, FLAIR, labels), matplotlib Agg."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LABEL_COLOURS = {1: (0.85, 0.1, 0.1), 2: (0.1, 0.75, 0.2), 3: (1.0, 0.85, 0.0)}


def _display(sl: np.ndarray) -> np.ndarray:
    """(x, y) axial slice -> image rows = anterior at top, radiological-free (left of image = subject right)."""
    return np.flipud(sl.T)


def save_montage(data: dict[str, Any], path: str | Path, voxel_mm: tuple[float, float, float], dpi: int = 80) -> Path:
    """``data``: subject, days, t1c/t2f/seg lists of 3D arrays, rt (start, end). The slice: the largest tumour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tgrowth.io import save_figure

    segs = data["seg"]
    areas = np.stack([(s > 0).sum(axis=(0, 1)) for s in segs]).max(0)
    z = int(areas.argmax())
    n = len(segs)
    rows = [("t1c", data["t1c"]), ("t2f (FLAIR)", data["t2f"]), ("labels", data["seg"])]
    aspect = voxel_mm[1] / voxel_mm[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.9 * n, 1.9 * len(rows) * aspect * 1.15), squeeze=False)
    rt0, rt1 = data["rt"]
    for j in range(n):
        day = data["days"][j]
        if rt0 is None:
            phase = "no RT"
        elif day < rt0:
            phase = "pre-RT"
        elif day <= rt1:
            phase = "during RT"
        else:
            phase = f"+{day - rt1:g} d post-RT"
        for r, (name, vols) in enumerate(rows):
            ax = axes[r, j]
            if name == "labels":
                base = _display(data["t2f"][j][:, :, z]).astype(float)
                lab = _display(segs[j][:, :, z])
                vmax = np.percentile(base[base > 0], 99.5) if (base > 0).any() else 1.0
                rgb = np.repeat((base / vmax).clip(0, 1)[..., None], 3, -1) * 0.8
                for k, col in LABEL_COLOURS.items():
                    rgb[lab == k] = col
                ax.imshow(rgb, interpolation="nearest")
            else:
                sl = _display(vols[j][:, :, z]).astype(float)
                vmax = np.percentile(sl[sl > 0], 99.5) if (sl > 0).any() else 1.0
                ax.imshow(sl, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(f"day {day:g}\n{phase}", fontsize=8)
    rt_txt = "no RT" if rt0 is None else f"RT days {rt0:g}-{rt1:g}"
    fig.suptitle(f"{data['subject']}, axial slice {z} ({rt_txt}); labels: red necrosis, green oedema, yellow enhancing", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)
