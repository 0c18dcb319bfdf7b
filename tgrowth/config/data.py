"""Config schemas of `tgrowth synth` and `tgrowth data-check` (owned by the data work)."""

from dataclasses import dataclass

from tgrowth.config.base import RunConfig, doc


@dataclass
class SynthConfig(RunConfig):
    """Placeholder until the phantom lands."""


@dataclass
class DataCheckConfig(RunConfig):
    """Placeholder until data-check lands."""

    root: str = doc("???", "Data set folder.")
    json: bool = doc(False, "Print machine-readable JSON.")
