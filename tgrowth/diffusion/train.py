"""``tgrowth train-denoiser|train-regressor|train-segmenter``: config -> networks -> LightningModule -> Trainer.

Each run writes into ``output_dir``: ``config.yaml`` (resolved), ``checkpoints/{best-step*,last}.ckpt``
(Lightning, for resuming with ``ckpt_path=last``), the sampler's model file ``<kind>.pt`` (best checkpoint by
the validation metric, denoiser with EMA weights; see :mod:`tgrowth.diffusion.checkpoints`) and
``metrics.json`` (the last logged metrics). wandb runs offline by default; resuming continues the same
wandb run (its id is kept in ``output_dir/wandb_run_id``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tgrowth.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["train_denoiser", "train_regressor", "train_segmenter", "build_denoiser", "build_regressor", "build_segmenter"]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _common_meta(cfg: DictConfig, kind: str) -> dict[str, Any]:
    contrasts = [str(c) for c in _plain(cfg.data.contrasts)]
    if not contrasts:
        raise ConfigError("data.contrasts is empty: name at least one contrast, e.g. data.contrasts=[t1c]")
    labels = _plain(cfg.data.labels)
    return {"kind": kind, "image_size": int(cfg.data.image_size), "contrasts": contrasts, "in_channels": len(contrasts),
            "labels": labels if isinstance(labels, str) else [int(v) for v in labels], "experiment": str(cfg.experiment)}


# --------------------------------------------------------------------------- networks from config
def build_denoiser(cfg: DictConfig):
    """(UNet, meta) from a TrainDenoiserConfig."""
    from tgrowth.diffusion.unet import UNet

    meta = _common_meta(cfg, "denoiser")
    m = cfg.model
    kwargs = dict(
        image_size=meta["image_size"], in_channels=meta["in_channels"], model_channels=int(m.model_channels),
        channel_mult=[float(c) for c in m.channel_mult] or None, num_res_blocks=int(m.num_res_blocks),
        attention_resolutions=[int(r) for r in m.attention_resolutions], num_heads=int(m.num_heads),
        num_head_channels=int(m.num_head_channels), dropout=float(m.dropout),
        num_classes=2 if m.class_conditional else None, class_dropout=float(m.class_dropout),
        learn_sigma=bool(m.learn_sigma), use_scale_shift_norm=bool(m.use_scale_shift_norm),
    )
    net = _make(UNet, kwargs)
    meta.update(network={"class": "UNet", "kwargs": kwargs},
                schedule={"kind": str(cfg.diffusion.schedule), "num_steps": int(cfg.diffusion.num_steps)},
                class_labels={"healthy": 0, "diseased": 1} if m.class_conditional else None,
                learn_sigma=bool(m.learn_sigma),
                train_t_max=int(cfg.diffusion.train_t_max) or int(cfg.diffusion.num_steps))
    return net, meta


def build_regressor(cfg: DictConfig):
    from tgrowth.diffusion.unet import EncoderRegressor

    meta = _common_meta(cfg, "regressor")
    m = cfg.model
    if m.target not in ("area_frac", "area_mm2"):
        raise ConfigError(f"model.target must be area_frac or area_mm2, got '{m.target}'")
    kwargs = dict(
        image_size=meta["image_size"], in_channels=meta["in_channels"], model_channels=int(m.model_channels),
        channel_mult=[float(c) for c in m.channel_mult] or None, num_res_blocks=int(m.num_res_blocks),
        attention_resolutions=[int(r) for r in m.attention_resolutions], num_head_channels=int(m.num_head_channels),
        dropout=float(m.dropout),
    )
    net = _make(EncoderRegressor, kwargs)
    meta.update(network={"class": "EncoderRegressor", "kwargs": kwargs},
                schedule={"kind": str(cfg.diffusion.schedule), "num_steps": int(cfg.diffusion.num_steps)},
                area={"key": str(m.target), "scale": float(m.target_scale)},
                train_t_max=int(cfg.diffusion.train_t_max) or int(cfg.diffusion.num_steps))
    return net, meta


def build_segmenter(cfg: DictConfig):
    from tgrowth.diffusion.unet import Segmenter

    meta = _common_meta(cfg, "segmenter")
    m = cfg.model
    regions = [str(r) for r in m.regions]
    if not regions or regions[0] != "wt" or any(r not in ("wt", "tc", "et") for r in regions):
        raise ConfigError(f"model.regions must start with wt and use wt/tc/et, got {regions}")
    kwargs = dict(
        image_size=meta["image_size"], in_channels=meta["in_channels"], model_channels=int(m.model_channels),
        channel_mult=[float(c) for c in m.channel_mult] or None, num_res_blocks=int(m.num_res_blocks),
        attention_resolutions=[int(r) for r in m.attention_resolutions], num_regions=len(regions),
        dropout=float(m.dropout),
    )
    net = _make(Segmenter, kwargs)
    meta.update(network={"class": "Segmenter", "kwargs": kwargs}, regions=regions)
    return net, meta


def _make(cls, kwargs):
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from exc


def _schedule(cfg: DictConfig):
    from tgrowth.diffusion.schedule import make_schedule

    try:
        return make_schedule(str(cfg.diffusion.schedule), int(cfg.diffusion.num_steps))
    except ValueError as exc:
        raise ConfigError(f"diffusion.schedule: {exc}") from exc


# --------------------------------------------------------------------------- data
def make_datamodule(cfg: DictConfig):
    d = cfg.data
    if cfg.toy_data.enabled:
        from tgrowth.diffusion.toydata import BlobDataModule

        return BlobDataModule(n_train=int(cfg.toy_data.n_train), n_val=int(cfg.toy_data.n_val),
                              image_size=int(d.image_size), channels=len(d.contrasts),
                              batch_size=int(d.batch_size), seed=int(cfg.seed))
    if not str(d.root):
        raise ConfigError("data.root is empty: set it to a data set folder (or toy_data.enabled=true for a smoke test)")
    from data_modules.slices import SliceDataModule

    return SliceDataModule.from_config(d, strict=bool(cfg.strict))


# --------------------------------------------------------------------------- the run
def _seed(cfg: DictConfig) -> None:
    """Seed before the networks are built, so the same seed gives the same initial weights."""
    import pytorch_lightning as pl

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if int(cfg.num_threads) > 0:
        torch.set_num_threads(int(cfg.num_threads))


def _fit(cfg: DictConfig, kind: str, module, monitor: str, mode: str) -> int:
    import pytorch_lightning as pl

    from tgrowth.config.base import save_resolved_config
    from tgrowth.diffusion.checkpoints import checkpoint_callbacks, export_from_lightning, resolve_ckpt_path
    from tgrowth.io import prepare_output_dir, write_json
    from tgrowth.tracking import RUN_ID_FILE, ensure_run_id, make_wandb_logger, trainer_kwargs

    out = Path(cfg.output_dir)
    resume = resolve_ckpt_path(cfg.ckpt_path, out)
    if cfg.ckpt_path and resume is None:
        log.info("ckpt_path=%s: no checkpoint in %s yet, starting from scratch", cfg.ckpt_path, out / "checkpoints")
    out = prepare_output_dir(out, cfg.overwrite, resume=bool(cfg.ckpt_path))
    if resume is None and not cfg.ckpt_path:  # a fresh run: old checkpoints and wandb id do not carry over
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / RUN_ID_FILE).unlink(missing_ok=True)
    save_resolved_config(cfg, out)
    datamodule = make_datamodule(cfg)

    if cfg.wandb.enabled and cfg.wandb.mode != "disabled" and not cfg.wandb.run_id:
        ensure_run_id(cfg)
    logger = make_wandb_logger(cfg, f"train-{kind}")
    callbacks = checkpoint_callbacks(out, monitor, mode)
    try:
        trainer = pl.Trainer(default_root_dir=str(out), logger=logger if logger is not None else False,
                             callbacks=callbacks, **trainer_kwargs(cfg.trainer))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"trainer: {exc}") from exc
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)

    if trainer.is_global_zero:
        ckpt = callbacks[0].best_model_path or callbacks[0].last_model_path
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        metrics.update(global_step=int(trainer.global_step), checkpoint=str(ckpt))
        write_json(out / "metrics.json", metrics)
        if ckpt:
            path = export_from_lightning(ckpt, out / f"{kind}.pt")
            log.info("%s: model file %s (from %s)", kind, path, Path(ckpt).name)
    if logger is not None:
        import wandb

        wandb.finish()
    return 0


def train_denoiser(cfg: DictConfig) -> int:
    from tgrowth.diffusion.modules import DenoiserModule

    _seed(cfg)
    net, meta = build_denoiser(cfg)
    module = DenoiserModule(net, _schedule(cfg), lr=float(cfg.optim.lr), weight_decay=float(cfg.optim.weight_decay),
                            warmup_steps=int(cfg.optim.warmup_steps), ema_decay=float(cfg.optim.ema_decay),
                            channels_last=bool(cfg.model.channels_last), val_images=int(cfg.val_images),
                            t_max=int(cfg.diffusion.train_t_max) or None, meta=meta,
                            recon_noise_level=int(cfg.val_reconstruction.noise_level),
                            recon_steps=int(cfg.val_reconstruction.num_steps),
                            recon_batches=int(cfg.val_reconstruction.batches))
    return _fit(cfg, "denoiser", module, monitor="val/loss", mode="min")


def train_regressor(cfg: DictConfig) -> int:
    from tgrowth.diffusion.modules import RegressorModule

    _seed(cfg)
    net, meta = build_regressor(cfg)
    module = RegressorModule(net, _schedule(cfg), target=str(cfg.model.target), target_scale=float(cfg.model.target_scale),
                             lr=float(cfg.optim.lr), weight_decay=float(cfg.optim.weight_decay),
                             warmup_steps=int(cfg.optim.warmup_steps), val_t_bins=int(cfg.val_t_bins),
                             t_max=int(cfg.diffusion.train_t_max) or None,
                             channels_last=bool(cfg.model.channels_last), meta=meta)
    return _fit(cfg, "regressor", module, monitor="val/loss", mode="min")


def train_segmenter(cfg: DictConfig) -> int:
    from tgrowth.diffusion.modules import SegmenterModule

    _seed(cfg)
    net, meta = build_segmenter(cfg)
    module = SegmenterModule(net, regions=meta["regions"], lr=float(cfg.optim.lr), weight_decay=float(cfg.optim.weight_decay),
                             warmup_steps=int(cfg.optim.warmup_steps), channels_last=bool(cfg.model.channels_last),
                             val_images=int(cfg.val_images), meta=meta)
    return _fit(cfg, "segmenter", module, monitor="val/dice", mode="max")
