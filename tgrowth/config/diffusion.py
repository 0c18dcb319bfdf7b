"""Config schemas of `tgrowth train-denoiser|train-regressor|train-segmenter` (owned by the diffusion work).

Sections: ``data`` (the slice data), ``toy_data`` (an in-memory blob set for smoke tests), ``model``
(network sizes), ``diffusion`` (noise schedule), ``optim``, ``trainer`` (Lightning), ``wandb`` and
``ckpt_path`` (``last`` resumes the run in ``output_dir``).

:func:`check_train_config` refuses values the schema's types let through (``data.batch_size=0``,
``optim.lr=0``, ``trainer.max_steps=0``, an ``output_dir`` inside ``data.root``, ...) with a
:class:`~tgrowth.errors.ConfigError` naming the key, before any work.
"""

import math
from dataclasses import dataclass
from typing import Any, Optional

from tgrowth.config.base import RunConfig, TrainerConfig, WandbConfig, doc
from tgrowth.config.data import SliceDataConfig
from tgrowth.errors import ConfigError
from tgrowth.io import refuse_output_inside


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

    schedule: str = doc("linear", "Beta schedule: linear (the authors') or cosine.")
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


@dataclass
class DenoiserModelSettings:
    """ADM UNet sizes (the authors': 128 channels, 2 res blocks, attention at 16, 1 head, learned sigma)."""

    model_channels: int = doc(128, "Base width.")
    channel_mult: list[float] = doc([], "Width multipliers per level; [] = ADM's table for the image size.")
    num_res_blocks: int = doc(2, "Residual blocks per level.")
    attention_resolutions: list[int] = doc([16], "Resolutions (pixels) with self-attention, e.g. [16] = at 16x16.")
    num_heads: int = doc(1, "Attention heads.")
    num_head_channels: int = doc(-1, "Channels per head (overrides num_heads when > 0).")
    dropout: float = doc(0.0, "Dropout in the residual blocks.")
    class_conditional: bool = doc(True, "Condition on the slice label (0 healthy, 1 diseased).")
    class_dropout: float = doc(0.0, "Probability of dropping the label in training (allows y=None at sampling).")
    learn_sigma: bool = doc(True, "Also learn the variances (improved-DDPM hybrid loss: MSE + VLB).")
    use_scale_shift_norm: bool = doc(True, "Timestep embedding scales and shifts the GroupNorm (ADM).")
    channels_last: bool = doc(False, "Train in channels_last memory format (faster convolutions on GPU).")


@dataclass
class RegressorModelSettings:
    """Encoder-half UNet with attention pooling (the authors': depth 4, width 32, attention at 32,16,8)."""

    model_channels: int = doc(32, "Base width ('width').")
    channel_mult: list[float] = doc([], "Width multipliers per level; [] = ADM's table for the image size.")
    num_res_blocks: int = doc(4, "Residual blocks per level ('depth').")
    attention_resolutions: list[int] = doc([32, 16, 8], "Resolutions (pixels) with self-attention.")
    num_head_channels: int = doc(64, "Channels per attention head.")
    dropout: float = doc(0.0, "Dropout in the residual blocks.")
    target: str = doc("area_frac", "Batch key regressed: area_frac (tumour pixels / H*W) or area_mm2.")
    target_scale: float = doc(100.0, "Regressor output = target * target_scale (area_frac * 100 = percent of the slice).")
    channels_last: bool = doc(False, "Train in channels_last memory format.")


@dataclass
class SegmenterModelSettings:
    """Small 2D UNet without timestep embedding; Dice + binary cross-entropy per region."""

    model_channels: int = doc(32, "Base width.")
    channel_mult: list[float] = doc([1, 2, 4, 8], "Width multipliers per level.")
    num_res_blocks: int = doc(2, "Residual blocks per level.")
    attention_resolutions: list[int] = doc([], "Resolutions (pixels) with self-attention (none by default).")
    dropout: float = doc(0.0, "Dropout in the residual blocks.")
    regions: list[str] = doc(["whole"], "Output regions, tumour label sets: whole (always first), core, enhancing (aliases: wt, tc, et).")
    channels_last: bool = doc(False, "Train in channels_last memory format.")


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


@dataclass
class ValReconstructionSettings:
    """Validation by known-image reconstruction: q-sample a validation slice to noise level L, run DDIM back
    with the EMA weights and score the result against the slice (val/ssim, val/ssim_brain, val/psnr)."""

    noise_level: int = doc(200, "L (capped at train_t_max when that is set); the authors sample from 200.")
    num_steps: int = doc(10, "DDIM steps from L to 0 (0: no reconstruction metrics).")
    batches: int = doc(1, "Validation batches reconstructed per validation (the rest give val/loss only).")


@dataclass
class TrainDenoiserConfig(_TrainCommon):
    """Train the DDPM denoiser."""

    model: DenoiserModelSettings = doc(DenoiserModelSettings(), "UNet.")
    diffusion: TrainDiffusionSettings = doc(TrainDiffusionSettings(), "Noise schedule and t range.")
    val_reconstruction: ValReconstructionSettings = doc(ValReconstructionSettings(), "Reconstruction SSIM / PSNR "
                                                        "in validation.")


@dataclass
class TrainRegressorConfig(_TrainCommon):
    """Train the noisy tumour-area regressor."""

    model: RegressorModelSettings = doc(RegressorModelSettings(), "Encoder regressor.")
    diffusion: TrainDiffusionSettings = doc(TrainDiffusionSettings(), "Noise schedule (the denoiser's) and t range.")
    val_t_bins: int = doc(5, "Validation error is reported in this many bins of t.")


@dataclass
class TrainSegmenterConfig(_TrainCommon):
    """Train the tumour segmenter."""

    model: SegmenterModelSettings = doc(SegmenterModelSettings(), "Segmentation UNet.")


# --------------------------------------------------------------------------- value checks
def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_train_config(cfg: Any) -> None:
    """Refuse out-of-range values of a training config (any of the three schemas), naming the key.

    Raises :class:`ConfigError` such as ``data.batch_size must be >= 1, got 0``. Checks only what is cheap
    and certain; the networks' own argument checks (e.g. channel counts) run when they are built.
    """

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{key} must be {rule}, got {_get(cfg, key)!r}")

    def at_least(key: str, low: int) -> None:
        need(int(_get(cfg, key)) >= low, key, f">= {low}")

    def fraction(key: str) -> None:  # [0, 1)
        v = float(_get(cfg, key))
        need(0.0 <= v < 1.0, key, "in [0, 1)")

    need(0 <= int(cfg.seed) < 2**32, "seed", "in [0, 2^32)")
    at_least("data.batch_size", 1)
    at_least("data.image_size", 1)
    at_least("data.num_workers", 0)
    if cfg.toy_data.enabled:
        at_least("toy_data.n_train", 1)
        at_least("toy_data.n_val", 1)
    lr = float(cfg.optim.lr)
    need(math.isfinite(lr) and lr > 0, "optim.lr", "> 0")
    wd = float(cfg.optim.weight_decay)
    need(math.isfinite(wd) and wd >= 0, "optim.weight_decay", ">= 0")
    at_least("optim.warmup_steps", 0)
    fraction("optim.ema_decay")
    t = cfg.trainer
    need(int(t.max_steps) == -1 or int(t.max_steps) >= 1, "trainer.max_steps", ">= 1 (or -1: use max_epochs)")
    if t.max_epochs is not None:
        need(int(t.max_epochs) == -1 or int(t.max_epochs) >= 1, "trainer.max_epochs", ">= 1 (or -1 / null)")
    at_least("trainer.accumulate_grad_batches", 1)
    at_least("trainer.log_every_n_steps", 1)
    if t.gradient_clip_val is not None:
        need(float(t.gradient_clip_val) > 0, "trainer.gradient_clip_val", "> 0 (or null: off)")
    at_least("val_images", 0)
    at_least("num_threads", 0)
    if "dropout" in cfg.model:
        fraction("model.dropout")
    if "class_dropout" in cfg.model:
        fraction("model.class_dropout")
    if "target_scale" in cfg.model:
        v = float(cfg.model.target_scale)
        need(math.isfinite(v) and v > 0, "model.target_scale", "> 0")
    if "diffusion" in cfg:
        at_least("diffusion.num_steps", 1)
        T = int(cfg.diffusion.num_steps)
        need(0 <= int(cfg.diffusion.train_t_max) <= T, "diffusion.train_t_max",
             f"in [0, diffusion.num_steps={T}] (0: all steps)")
    if "val_reconstruction" in cfg:
        at_least("val_reconstruction.noise_level", 1)
        at_least("val_reconstruction.num_steps", 0)
        at_least("val_reconstruction.batches", 0)
    if "val_t_bins" in cfg:
        at_least("val_t_bins", 1)
    if not cfg.toy_data.enabled:
        refuse_output_inside(cfg.output_dir, cfg.data.root)
