"""``tgrowth synth -c experiments/synth.yaml output_dir=DIR``: write the phantom (longitudinal format)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from tgrowth.config.base import save_resolved_config
from tgrowth.errors import TgrowthError
from tgrowth.io import prepare_output_dir
from tgrowth.vocab import CONTRASTS

__all__ = ["SYNTH_FILES", "prepare_synth_dir", "run"]

# the files synth writes at the top of output_dir (besides the <prefix>-NNNNN-TTT/ scan folders)
SYNTH_FILES: tuple[str, ...] = ("config.yaml", "timeline.csv", "splits.csv", "ground_truth.csv", "montage.png",
                                "summary.json")
# keys only a synth config has: config.yaml (written first) or summary.json["config"] carrying them marks the folder
_SIGNATURE = ("sim_box_mm", "sim_voxel_mm", "subject_prefix", "midline_fraction", "n_timepoints", "growth", "rt")
_SCAN_KINDS = (*CONTRASTS, "seg")


def _synth_config(out: Path) -> dict[str, Any] | None:
    """The config of the synth run that wrote ``out`` (from config.yaml or summary.json), or None."""
    found: list[Any] = []
    try:
        found.append(yaml.safe_load((out / "config.yaml").read_text()))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass
    try:
        found.append(json.loads((out / "summary.json").read_text()).get("config"))
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        pass
    for cfg in found:
        if isinstance(cfg, dict) and all(k in cfg for k in _SIGNATURE):
            return cfg
    return None


def _own_entries(out: Path, prefix: str) -> tuple[list[Path], list[str]]:
    """(entries synth wrote, names of entries it did not write) in ``out``."""
    folder = re.compile(rf"^{re.escape(prefix)}-\d{{5}}-\d{{3}}$")
    own, foreign = [], []
    for p in sorted(out.iterdir()):
        if p.is_file() and p.name in SYNTH_FILES:
            own.append(p)
        elif p.is_dir() and folder.match(p.name):
            extra = sorted(q.name for q in p.iterdir() if q.name not in {f"{p.name}-{k}.nii.gz" for k in _SCAN_KINDS})
            if extra:
                foreign.extend(f"{p.name}/{n}" for n in extra)
            else:
                own.append(p)
        else:
            foreign.append(p.name + ("/" if p.is_dir() else ""))
    return own, foreign


def prepare_synth_dir(path: str | Path, overwrite: bool) -> Path:
    """``prepare_output_dir`` for synth: ``overwrite=true`` replaces only synth's own earlier output.

    A non-empty ``output_dir`` is written into only when it holds an earlier synth data set (its
    ``config.yaml`` or ``summary.json`` carries a synth config) and nothing else: those files and scan
    folders are removed first, so a smaller or renamed cohort leaves no stale scans. A folder with any
    other content (a real data set, another run) is refused with :class:`TgrowthError`, untouched.
    """
    out = Path(path)
    if overwrite and out.is_dir() and any(out.iterdir()):
        cfg = _synth_config(out)
        if cfg is None:
            raise TgrowthError(
                f"output_dir {out} is not empty and was not written by tgrowth synth (no config.yaml or summary.json"
                " of a synth run); overwrite=true only replaces synth's own earlier output, never another data set."
                " Choose a new output_dir, or empty this one yourself"
            )
        own, foreign = _own_entries(out, str(cfg["subject_prefix"]))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise TgrowthError(
                f"output_dir {out} holds an earlier synth data set but also files synth did not write ({shown});"
                " overwrite=true replaces only synth's own output. Move them away or choose a new output_dir"
            )
        for p in own:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    return prepare_output_dir(out, overwrite)


def run(cfg: DictConfig) -> int:
    from tgrowth.synth.cohort import _as_config, generate_cohort

    cfg = _as_config(cfg)  # validates before anything is written
    out = prepare_synth_dir(cfg.output_dir, cfg.overwrite)
    save_resolved_config(cfg, out)
    summary = generate_cohort(cfg, prepare=False)
    n_split = {s: sum(1 for v in summary["splits"].values() if v == s) for s in ("train", "val", "test")}
    print(
        f"synth: {len(summary['subjects'])} subjects x {summary['n_timepoints']} timepoints "
        f"(train {n_split['train']}, val {n_split['val']}, test {n_split['test']}), volumes {summary['shape']} at "
        f"{summary['voxel_mm']} mm, in {summary['seconds']:.1f} s -> {out}"
    )
    return 0
