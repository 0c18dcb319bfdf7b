"""`tgrowth predict`: the end-to-end pipeline (growth ODE + guided diffusion) as a command and a library.

- :func:`run` (the CLI entry point, ``tgrowth predict -c experiments/predict.yaml data.root=... output_dir=...``)
- :mod:`tgrowth.predict.pipeline`: the stages in order (``predict_run``, ``predict_one``):
  :mod:`~tgrowth.predict.plan` -> :mod:`~tgrowth.predict.targets` -> :mod:`~tgrowth.predict.generate` (and the
  baselines of :mod:`~tgrowth.predict.methods`) -> :mod:`~tgrowth.predict.evaluate` -> :mod:`~tgrowth.predict.outputs`
- :mod:`tgrowth.predict.models`: the three model files, checked against the config
- :mod:`tgrowth.predict.state`: output-dir policy, resume, rank split and merge
- :mod:`tgrowth.predict.report`: metrics.csv / summary.json / the console table
- :mod:`tgrowth.predict.track`: wandb logging (stable metric names) and an offline-run reader
- :mod:`tgrowth.predict.plots`: panel, growth curve, montage
- :mod:`tgrowth.predict.dist`: processes and devices (Lightning Fabric: DDP, SLURM, torchrun)
"""

from __future__ import annotations

from typing import Any


def run(cfg: Any) -> int:
    from tgrowth.predict.pipeline import run as _run

    return _run(cfg)


__all__ = ["run"]
