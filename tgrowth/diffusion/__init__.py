"""Guided diffusion: noise schedule, networks, DDIM sampler and guidance (pure torch), model files.

The public API (everything else lives in the submodules)::

    from tgrowth.diffusion import (NoiseSchedule, make_schedule, UNet, EncoderRegressor, Segmenter,
                                   sample_known_image, ddim_step, ddim_invert, AreaGuidance, SoftArea,
                                   probability_map, load_denoiser, load_regressor, load_segmenter)

Importing ``tgrowth.diffusion`` needs torch (+ numpy, scipy) only: the Lightning modules
(:mod:`tgrowth.diffusion.modules`) and the training command (:mod:`tgrowth.diffusion.train`, omegaconf) are
not imported here; import them by name.
"""

from tgrowth.diffusion.checkpoints import load_denoiser, load_regressor, load_segmenter
from tgrowth.diffusion.guidance import AreaGuidance, SoftArea
from tgrowth.diffusion.sampler import ddim_invert, ddim_step, sample_known_image
from tgrowth.diffusion.schedule import NoiseSchedule, make_schedule
from tgrowth.diffusion.unet import EncoderRegressor, Segmenter, UNet

__all__ = [
    "NoiseSchedule",
    "make_schedule",
    "UNet",
    "EncoderRegressor",
    "Segmenter",
    "sample_known_image",
    "ddim_step",
    "ddim_invert",
    "AreaGuidance",
    "SoftArea",
    "probability_map",
    "load_denoiser",
    "load_regressor",
    "load_segmenter",
]


def __getattr__(name: str):
    # tgrowth.probability builds on tgrowth.diffusion.sampler, so an import of it here at the top would be
    # circular whenever tgrowth.probability is imported first: it is looked up on first use instead (PEP 562).
    if name == "probability_map":
        from tgrowth.probability import probability_map

        return probability_map
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
