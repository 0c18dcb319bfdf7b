"""Config schema of `tgrowth runs compare` (reads finished run folders; writes nothing unless --csv)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tgrowth.config.base import doc


@dataclass
class RunsCompareConfig:
    """`tgrowth runs compare DIR [DIR ...]`: the key metrics of run folders side by side."""

    dirs: list[str] = doc([], "Run folders (output_dir of predict, sweep grid points, fit-ode or a training "
                              "command); the bare arguments of the command.")
    csv: Optional[str] = doc(None, "Also write the comparison here: one row per run and metric "
                                   "(run, kind, metric, mean, median, n, n_nonfinite).")
    methods: list[str] = doc([], "Predict methods to show (empty: every method in the runs).")
