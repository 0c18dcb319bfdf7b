"""Config schemas of `tgrowth predict`, `tgrowth sweep` and `tgrowth demo` (owned by the end-to-end work)."""

from dataclasses import dataclass

from tgrowth.config.base import RunConfig


@dataclass
class PredictConfig(RunConfig):
    """Placeholder."""


@dataclass
class SweepConfig(RunConfig):
    """Placeholder."""


@dataclass
class DemoConfig(RunConfig):
    """Placeholder."""
