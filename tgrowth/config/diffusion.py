"""Config schemas of `tgrowth train-denoiser|train-regressor|train-segmenter` (owned by the diffusion work).

Sections: ``data`` (the slice data), ``toy_data`` (an in-memory blob set for smoke tests), ``model``
(exactly the network constructor's arguments, defaults read from the constructor: see :func:`net_default`),
``diffusion`` (noise schedule), ``optim``, ``trainer`` (Lightning), ``wandb`` and ``ckpt_path`` (``last``
resumes the run in ``output_dir``). Top-level keys next to them are the training module's own settings
(``channels_last``; the regressor's ``target`` / ``target_scale``; the segmenter's ``regions``).

Closed choices are enum fields (``diffusion.schedule``, ``target``): OmegaConf refuses any other
value and names the valid ones. Importing this module imports torch (the network defaults).

:func:`check_train_config` refuses values the schema's types let through (``data.batch_size=0``,
``optim.lr=0``, ``trainer.max_steps=0``, an ``output_dir`` inside ``data.root``, ...) with a
:class:`~tgrowth.errors.ConfigError` naming the key, before any work.
"""

import inspect
import math
from dataclasses import dataclass, make_dataclass
from enum import Enum
from typing import Any, Optional

from omegaconf import OmegaConf

from tgrowth.config.base import RunConfig, TrainerConfig, WandbConfig, doc
from tgrowth.config.data import SliceDataConfig
from tgrowth.diffusion.schedule import BetaSchedule
from tgrowth.diffusion.unet import EncoderRegressor, Segmenter, UNet
from tgrowth.errors import ConfigError
from tgrowth.io import refuse_output_inside
from tgrowth.vocab import region_names


@dataclass
class TrainSliceData(SliceDataConfig):
    """2D slice data (``data_modules.slices.SliceDataModule``); root may stay empty with toy_data.enabled."""

    root: str = doc("", "Data set folder (BraTS, longitudinal or the authors' 2D layout).")


@dataclass
class ToyDataSettings:
    """An in-memory set of bright blobs in a dim ellipse ('brain'), for smoke tests and CPU timing only."""

    enabled: bool = doc(False, "Train on the toy blob set instead of data.root (no files needed).")
    n_train: int = doc(256, "Training images.")
    n_val: int = doc(32, "Validation images.")


@dataclass
class DiffusionSettings:
    """The DDPM forward process."""

    schedule: BetaSchedule = doc(BetaSchedule.linear, "Beta schedule: linear (the authors') or cosine.")
    num_steps: int = doc(1000, "Training diffusion steps T.")


@dataclass
class TrainDiffusionSettings(DiffusionSettings):
    """The forward process, and the range of t the network is trained on."""

    train_t_max: int = doc(0, "Train on t in [0, train_t_max) (0: all T steps, as the authors). Known-image sampling from noise level L only visits t < L.")


@dataclass
class OptimSettings:
    """AdamW with linear warm-up."""

    lr: float = doc(1e-4, "Peak learning rate.")
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    warmup_steps: int = doc(0, "Linear learning-rate warm-up steps.")
    ema_decay: float = doc(0.9999, "EMA decay of the weights used for validation and sampling (denoiser only).")


def net_default(cls: type, name: str) -> Any:
    """The default of constructor argument ``name`` of network ``cls``: the one place a network
    hyper-parameter's default lives (the schemas below take theirs from here; tuples become lists)."""
    default = inspect.signature(cls).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{cls.__name__}({name}=...) has no default")
    return list(default) if isinstance(default, tuple) else default


# Type and meaning of every network constructor argument a ``model`` section holds (one entry per argument
# name; a network argument missing here fails at import, so a new one gets documented).
_NET_ARGS: dict[str, tuple[Any, str]] = {
    "model_channels": (int, "Base width (the regressor's 'width')."),
    "channel_mult": (Optional[list[float]], "Width multipliers per level; null = ADM's table for the image size."),  # noqa: UP045
    "num_res_blocks": (int, "Residual blocks per level (the regressor's 'depth')."),
    "attention_resolutions": (list[int], "Resolutions (pixels) with self-attention, e.g. [16] = at 16x16."),
    "num_heads": (int, "Attention heads (when num_head_channels <= 0)."),
    "num_head_channels": (int, "Channels per attention head (> 0: overrides num_heads)."),
    "dropout": (float, "Dropout in the residual blocks."),
    "num_classes": (Optional[int], "null: unconditional; 2: conditioned on the slice label (0 healthy, 1 diseased)."),  # noqa: UP045
    "class_dropout": (float, "Probability of dropping the label in training (allows y=None at sampling)."),
    "learn_sigma": (bool, "Also learn the variances (improved-DDPM hybrid loss: MSE + VLB)."),
    "use_scale_shift_norm": (bool, "Timestep embedding scales and shifts the GroupNorm (ADM)."),
    "time_conditional": (bool, "Feed the timestep embedding (false: an ablation that ignores t)."),
}


def _mirror(name: str, net: type, derived: set[str], about: str) -> type:
    """A ``model`` section schema: a field for each argument of ``net``'s constructor except ``derived`` (those
    the data fix), typed and described by ``_NET_ARGS``, defaulting to the constructor's default."""
    args = [a for a in inspect.signature(net).parameters if a not in derived]
    fields = [(a, _NET_ARGS[a][0], doc(net_default(net, a), _NET_ARGS[a][1])) for a in args]
    cls = make_dataclass(name, fields)
    cls.__doc__, cls.__module__ = about, __name__
    return cls


# The ``model`` sections: exactly the network constructor's arguments except image_size (data.image_size),
# in_channels (len(data.contrasts)), the UNet's out_channels (= in_channels: eps has the image's channels)
# and the segmenter's num_regions (len(regions)). ``build_*`` in tgrowth.diffusion.train calls
# ``Network(**constructor_kwargs(cfg.model, image_size=..., in_channels=...))``.
DenoiserModelSettings = _mirror(
    "DenoiserModelSettings", UNet, {"image_size", "in_channels", "out_channels"},
    "``tgrowth.diffusion.unet.UNet`` arguments (the authors' sizes; class conditioning and learned sigma off "
    "unless set, as experiments/models/denoiser_paper.yaml does).")
RegressorModelSettings = _mirror(
    "RegressorModelSettings", EncoderRegressor, {"image_size", "in_channels"},
    "``tgrowth.diffusion.unet.EncoderRegressor`` arguments (the authors': depth 4, width 32, attention at 32, "
    "16, 8).")
SegmenterModelSettings = _mirror(
    "SegmenterModelSettings", Segmenter, {"image_size", "in_channels", "num_regions"},
    "``tgrowth.diffusion.unet.Segmenter`` arguments: a small 2D UNet without timestep embedding.")


class RegressorTarget(str, Enum):
    """The batch key the regressor learns (a config field of this type accepts only these)."""

    area_frac = "area_frac"  # tumour pixels / (H * W)
    area_mm2 = "area_mm2"  # tumour area in mm^2

    def __str__(self) -> str:
        return self.value


@dataclass
class _TrainCommon(RunConfig):
    data: TrainSliceData = doc(TrainSliceData(), "Slice data (see tgrowth data-check).")
    toy_data: ToyDataSettings = doc(ToyDataSettings(), "Toy in-memory data (smoke tests).")
    optim: OptimSettings = doc(OptimSettings(), "Optimiser.")
    trainer: TrainerConfig = doc(TrainerConfig(), "Lightning Trainer.")
    wandb: WandbConfig = doc(WandbConfig(), "Experiment tracking.")
    ckpt_path: Optional[str] = doc(  # noqa: UP045 (OmegaConf structured configs)
        None, "Resume from a Lightning checkpoint: 'last' (output_dir/checkpoints/last.ckpt), 'best' or a path.")
    val_images: int = doc(4, "Validation images logged to wandb per validation (0: none).")
    num_threads: int = doc(0, "torch CPU threads (0: torch's default; on a busy shared CPU, 1 is often fastest).")
    channels_last: bool = doc(False, "Train in channels_last memory format (faster convolutions on GPU).")


@dataclass
class ValReconstructionSettings:
    """Validation by known-image reconstruction: q-sample a validation slice to noise level L, run DDIM back
    with the EMA weights and score the result against the slice (val/ssim, val/ssim_brain, val/psnr)."""

    noise_level: int = doc(200, "L (capped at train_t_max when that is set); the authors sample from 200.")
    num_steps: int = doc(10, "DDIM steps from L to 0 (0: no reconstruction metrics).")
    batches: int = doc(1, "Validation batches reconstructed per validation (the rest give val/loss only).")


_CHANNELS_LAST = {"model.channels_last": "channels_last is a top-level key now (a training setting, not a network "
                                          "argument)"}


@dataclass
class TrainDenoiserConfig(_TrainCommon):
    """Train the DDPM denoiser."""

    RENAMED = {**_CHANNELS_LAST, "model.class_conditional": "use model.num_classes: 2 (conditioned on the slice "
                                                            "label, was class_conditional=true) or null (false)"}

    model: DenoiserModelSettings = doc(DenoiserModelSettings(), "UNet.")
    diffusion: TrainDiffusionSettings = doc(TrainDiffusionSettings(), "Noise schedule and t range.")
    val_reconstruction: ValReconstructionSettings = doc(ValReconstructionSettings(), "Reconstruction SSIM / PSNR "
                                                        "in validation.")


@dataclass
class TrainRegressorConfig(_TrainCommon):
    """Train the noisy tumour-area regressor."""

    RENAMED = {**_CHANNELS_LAST, "model.target": "target is a top-level key now (what the regressor learns)",
               "model.target_scale": "target_scale is a top-level key now (what the regressor learns)"}

    model: RegressorModelSettings = doc(RegressorModelSettings(), "Encoder regressor.")
    diffusion: TrainDiffusionSettings = doc(TrainDiffusionSettings(), "Noise schedule (the denoiser's) and t range.")
    target: RegressorTarget = doc(RegressorTarget.area_frac, "Batch key regressed: area_frac (tumour pixels / H*W) or area_mm2.")
    target_scale: float = doc(100.0, "Regressor output = target * target_scale (area_frac * 100 = percent of the slice).")
    val_t_bins: int = doc(5, "Validation error is reported in this many bins of t.")


@dataclass
class TrainSegmenterConfig(_TrainCommon):
    """Train the tumour segmenter."""

    RENAMED = {**_CHANNELS_LAST, "model.regions": "regions is a top-level key now (num_regions of the network "
                                                  "follows from it)"}

    model: SegmenterModelSettings = doc(SegmenterModelSettings(), "Segmentation UNet.")
    regions: list[str] = doc(["whole"], "Output regions, tumour label sets of tgrowth.vocab: whole (always first), "
                             "core, enhancing (aliases: wt, tc, et).")


# --------------------------------------------------------------------------- value checks
def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _shown(value: Any) -> str:
    """A config value as the user wrote it (enums by name, lists plain)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, enum_to_str=True)
    return repr(value.name if isinstance(value, Enum) else value)


def check_train_config(cfg: Any) -> None:
    """Refuse out-of-range values of a training config (any of the three schemas), naming the key.

    Raises :class:`ConfigError` such as ``data.batch_size must be >= 1, got 0``. Checks only what is cheap
    and certain; closed choices (diffusion.schedule, target) are enum fields the schema itself
    checks; the networks' own argument checks (e.g. channel counts) run when they are built.
    """

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{key} must be {rule}, got {_shown(_get(cfg, key))}")

    def at_least(key: str, low: int) -> None:
        need(_get(cfg, key) >= low, key, f">= {low}")

    def fraction(key: str) -> None:  # [0, 1)
        need(0.0 <= _get(cfg, key) < 1.0, key, "in [0, 1)")

    def positive(key: str) -> None:
        need(math.isfinite(_get(cfg, key)) and _get(cfg, key) > 0, key, "> 0")

    need(0 <= cfg.seed < 2**32, "seed", "in [0, 2^32)")
    at_least("data.batch_size", 1)
    at_least("data.image_size", 1)
    at_least("data.num_workers", 0)
    if cfg.toy_data.enabled:
        at_least("toy_data.n_train", 1)
        at_least("toy_data.n_val", 1)
    positive("optim.lr")
    need(math.isfinite(cfg.optim.weight_decay) and cfg.optim.weight_decay >= 0, "optim.weight_decay", ">= 0")
    at_least("optim.warmup_steps", 0)
    fraction("optim.ema_decay")
    t = cfg.trainer
    need(t.max_steps == -1 or t.max_steps >= 1, "trainer.max_steps", ">= 1 (or -1: use max_epochs)")
    if t.max_epochs is not None:
        need(t.max_epochs == -1 or t.max_epochs >= 1, "trainer.max_epochs", ">= 1 (or -1 / null)")
    at_least("trainer.accumulate_grad_batches", 1)
    at_least("trainer.log_every_n_steps", 1)
    if t.gradient_clip_val is not None:
        need(t.gradient_clip_val > 0, "trainer.gradient_clip_val", "> 0 (or null: off)")
    at_least("val_images", 0)
    at_least("num_threads", 0)
    fraction("model.dropout")
    if "class_dropout" in cfg.model:
        fraction("model.class_dropout")
    if "num_classes" in cfg.model:
        need(cfg.model.num_classes in (None, 2), "model.num_classes",
             "null (unconditional) or 2 (the slice labels: 0 healthy, 1 diseased)")
    if "target_scale" in cfg:
        positive("target_scale")
    if "regions" in cfg:
        region_names(list(cfg.regions), key="regions")  # whole first, then label sets of the one vocabulary
    if "diffusion" in cfg:
        at_least("diffusion.num_steps", 1)
        T = cfg.diffusion.num_steps
        need(0 <= cfg.diffusion.train_t_max <= T, "diffusion.train_t_max", f"in [0, diffusion.num_steps={T}] (0: all steps)")
    if "val_reconstruction" in cfg:
        at_least("val_reconstruction.noise_level", 1)
        at_least("val_reconstruction.num_steps", 0)
        at_least("val_reconstruction.batches", 0)
    if "val_t_bins" in cfg:
        at_least("val_t_bins", 1)
    if not cfg.toy_data.enabled:
        refuse_output_inside(cfg.output_dir, cfg.data.root)
