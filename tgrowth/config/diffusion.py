"""Config schemas of `tgrowth train-denoiser|train-regressor|train-segmenter` (owned by the diffusion work)."""

from dataclasses import dataclass

from tgrowth.config.base import RunConfig


@dataclass
class TrainDenoiserConfig(RunConfig):
    """Placeholder."""


@dataclass
class TrainRegressorConfig(RunConfig):
    """Placeholder."""


@dataclass
class TrainSegmenterConfig(RunConfig):
    """Placeholder."""
