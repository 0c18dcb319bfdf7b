"""``tgrowth synth -c experiments/synth.yaml output_dir=DIR``: write the phantom (longitudinal format)."""

from __future__ import annotations

from omegaconf import DictConfig

from tgrowth.config.base import save_resolved_config
from tgrowth.io import prepare_output_dir


def run(cfg: DictConfig) -> int:
    from tgrowth.synth.cohort import _as_config, generate_cohort

    cfg = _as_config(cfg)  # validates before anything is written
    out = prepare_output_dir(cfg.output_dir, cfg.overwrite)
    save_resolved_config(cfg, out)
    summary = generate_cohort(cfg, prepare=False)
    n_split = {s: sum(1 for v in summary["splits"].values() if v == s) for s in ("train", "val", "test")}
    print(
        f"synth: {len(summary['subjects'])} subjects x {summary['n_timepoints']} timepoints "
        f"(train {n_split['train']}, val {n_split['val']}, test {n_split['test']}), volumes {summary['shape']} at "
        f"{summary['voxel_mm']} mm, in {summary['seconds']:.1f} s -> {out}"
    )
    return 0
