"""Config schema of `tgrowth synth` (owned by the phantom work)."""

from dataclasses import dataclass

from tgrowth.config.base import RunConfig


@dataclass
class SynthConfig(RunConfig):
    """Placeholder until the phantom lands."""
