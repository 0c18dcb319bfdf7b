"""``tgrowth data-check ROOT [--json]``: validate a data set (any of the three formats) before a long run.

Per subject and timepoint: which files exist, shape and spacing (checked to agree across contrasts and
seg), seg labels in {0,1,2,3}, finite voxels, no all-zero contrast, whole-tumour volume (mm^3; for 2D
inputs the area times the slice thickness) and the largest axial tumour area (mm^2) with its slice. Per
subject: the ``timeline.csv`` rules of discovery and that all timepoints share the first timepoint's voxel
grid (:func:`data_modules.volumes.check_subject_grid`). Problems name subject, timepoint and file. Exit code
1 when any error was found, 0 otherwise (warnings do not fail).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from data_modules.formats import CONTRASTS, DataSet, Problem, Timepoint, discover
from data_modules.volumes import (
    GRID_TOLERANCE_MM,
    axial_perm,
    check_subject_grid,
    inspect_timepoint,
    read_nifti,
    tumour_area_per_slice,
    tumour_volume_mm3,
)
from tgrowth.config.base import save_resolved_config
from tgrowth.errors import DataError
from tgrowth.io import prepare_output_dir, write_csv, write_json

__all__ = ["check_dataset", "format_text", "run"]

log = logging.getLogger("tgrowth.data")


def _ptext(p: Problem) -> str:
    return f"{p.severity}: {p}"


def _timepoint_report(tp: Timepoint, contrasts, is2d_source: bool) -> tuple[dict, list[Problem]]:
    vol, problems = inspect_timepoint(tp, contrasts, report_missing=False)
    files = {m: (tp.images[m].name if m in tp.images else None) for m in contrasts}
    files["seg"] = tp.seg.name if tp.seg is not None else None
    entry: dict[str, Any] = {
        "timepoint": tp.timepoint, "day": float(tp.day), "files": files,
        "shape": None, "spacing_mm": None,
        "whole_tumor_volume_mm3": None, "max_axial_area_mm2": None, "max_area_slice": None,
    }
    if tp.source_slice is not None:
        entry["slice"] = tp.source_slice
    seg = spacing = None
    if vol is not None:
        entry["shape"] = list(vol.file_shape)
        entry["spacing_mm"] = [float(v) for v in _file_spacing(vol)]
        seg, spacing = vol.seg, vol.spacing_mm
    elif tp.seg is not None and not any(p.file == tp.seg.name for p in problems):
        try:  # images are broken but the seg is fine: still report the sizes
            data, affine, sp = read_nifti(tp.seg, tp.subject, tp.timepoint)
            if set(np.unique(data).tolist()) <= {0, 1, 2, 3}:
                perm = axial_perm(affine, data.ndim)
                seg = np.transpose(data if data.ndim == 3 else data[..., None], perm)
                spacing = tuple(float(sp[p]) for p in perm)
                entry["shape"] = list(data.shape)
                entry["spacing_mm"] = [float(v) for v in sp[: data.ndim]]
        except DataError:
            pass
    if seg is not None:
        areas = tumour_area_per_slice(seg, spacing, "whole")
        entry["whole_tumor_volume_mm3"] = float(tumour_volume_mm3(seg, spacing, "whole"))
        entry["max_axial_area_mm2"] = float(areas.max(initial=0.0))
        if areas.max(initial=0.0) > 0:
            k = int(np.argmax(areas))
            entry["max_area_slice"] = tp.source_slice if (is2d_source and tp.source_slice is not None) else k
    return entry, problems


def _file_spacing(vol) -> list[float]:
    inv = np.argsort(vol.perm)
    sp = [vol.spacing_mm[i] for i in inv]
    return sp[: len(vol.file_shape)]


def check_dataset(root: str | Path, format: str = "auto", contrasts=CONTRASTS,  # noqa: A002
                  grid_tolerance_mm: float = GRID_TOLERANCE_MM, align: str = "require") -> dict:
    """The full report as a JSON-ready dict (see the module docstring).

    ``grid_tolerance_mm`` / ``align`` as in :func:`data_modules.volumes.check_subject_grid`: with
    ``align="require"`` a timepoint off its subject's grid is an error, with ``"resample"`` a warning (sizes
    are reported as measured in each file's own grid).
    """
    ds: DataSet = discover(root, format, contrasts)
    contrasts = tuple(contrasts)
    is2d = ds.format == "authors2d"
    placed: set[int] = set()
    subjects = []
    all_problems: list[Problem] = list(ds.problems)
    for subj in ds.subjects:
        tps = []
        for tp in subj.timepoints:
            entry, problems = _timepoint_report(tp, contrasts, is2d)
            all_problems.extend(problems)
            mine = [p for p in ds.problems if p.subject == subj.subject and p.timepoint == tp.timepoint
                    and (not is2d or re.search(rf"{re.escape(subj.subject)}_{tp.source_slice}[/-]", p.file or ""))]
            placed.update(id(p) for p in mine)
            entry["problems"] = [_ptext(p) for p in mine + problems]
            tps.append(entry)
        sub_problems = [p for p in ds.problems if p.subject == subj.subject and id(p) not in placed]
        placed.update(id(p) for p in sub_problems)
        grid_problems = check_subject_grid(subj, grid_tolerance_mm, align)  # after the reports: files as they are
        all_problems.extend(grid_problems)
        sub_problems += grid_problems
        item = {"subject": subj.subject, "rt_start_day": subj.rt_start_day, "rt_end_day": subj.rt_end_day,
                "timepoints": tps, "problems": [_ptext(p) for p in sub_problems]}
        if subj.split is not None:
            item["split"] = subj.split
        subjects.append(item)
    rest = [p for p in ds.problems if id(p) not in placed]
    n_err = sum(p.severity == "error" for p in all_problems)
    n_warn = sum(p.severity == "warning" for p in all_problems)
    return {
        "format": ds.format, "root": str(ds.root), "contrasts": list(contrasts),
        "subjects": subjects, "problems": [_ptext(p) for p in rest],
        "n_subjects": len(ds.subjects), "n_timepoints": sum(len(s.timepoints) for s in ds.subjects),
        "n_errors": n_err, "n_warnings": n_warn, "ok": n_err == 0,
        "all_problems": [p.as_dict() for p in all_problems],
    }


def _num(v: Any, unit: str) -> str:
    return "-" if v is None else f"{v:.1f} {unit}"


def format_text(report: dict) -> str:
    lines = [f"data-check {report['root']}: format {report['format']}, {report['n_subjects']} subject(s), "
             f"{report['n_timepoints']} timepoint(s)"]
    for s in report["subjects"]:
        rt = ""
        if s.get("rt_start_day") is not None or s.get("rt_end_day") is not None:
            rt = f" (RT day {s.get('rt_start_day')} to {s.get('rt_end_day')})"
        split = f" [{s['split']}]" if s.get("split") else ""
        lines.append(f"{s['subject']}{split}{rt}")
        for t in s["timepoints"]:
            present = " ".join(k for k, v in t["files"].items() if v)
            missing = [k for k, v in t["files"].items() if not v]
            shape = "x".join(map(str, t["shape"])) if t["shape"] else "?"
            spacing = "x".join(f"{v:g}" for v in t["spacing_mm"]) if t["spacing_mm"] else "?"
            where = f" slice {t['slice']}" if "slice" in t else ""
            at = f" @ slice {t['max_area_slice']}" if t["max_area_slice"] is not None else ""
            lines.append(
                f"  {t['timepoint']}{where} day {t['day']:g}: files {present or '-'}"
                + (f" (missing {' '.join(missing)})" if missing else "")
                + f" | shape {shape}, spacing {spacing} mm | whole tumour {_num(t['whole_tumor_volume_mm3'], 'mm3')},"
                f" max axial area {_num(t['max_axial_area_mm2'], 'mm2')}{at}"
            )
            lines.extend(f"    {p}" for p in t["problems"])
        lines.extend(f"  {p}" for p in s["problems"])
    lines.extend(f"{p}" for p in report["problems"])
    verdict = "OK" if report["ok"] else "FAILED"
    lines.append(f"{verdict}: {report['n_errors']} error(s), {report['n_warnings']} warning(s)")
    return "\n".join(lines)


def run(cfg) -> int:
    """CLI entry point (``tgrowth data-check``): prints text or JSON; exit 1 on errors."""
    report = check_dataset(cfg.root, cfg.format, list(cfg.contrasts), float(cfg.grid_tolerance_mm), str(cfg.align))
    if cfg.output_dir:
        out = prepare_output_dir(cfg.output_dir, cfg.overwrite)
        save_resolved_config(cfg, out)
        write_json(out / "report.json", report)
        write_csv(out / "errors.csv", report["all_problems"], ["severity", "subject", "timepoint", "file", "message"])
    shown = {k: v for k, v in report.items() if k != "all_problems"}
    print(json.dumps(shown, indent=2) if cfg.json else format_text(report))
    return 0 if report["ok"] else 1
