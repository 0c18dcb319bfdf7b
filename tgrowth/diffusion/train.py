"""``tgrowth train-denoiser|train-regressor|train-segmenter``: config -> networks -> LightningModule -> Trainer.

Each run writes into ``output_dir``: ``config.yaml`` (resolved), ``checkpoints/{best-step*,last}.ckpt``
(Lightning, for resuming with ``ckpt_path=last``), the sampler's model file ``<kind>.pt`` (best checkpoint by
the validation metric, denoiser with EMA weights; see :mod:`tgrowth.diffusion.checkpoints`) and
``metrics.json`` (the last logged metrics) and ``train.log`` (Lightning's messages and warnings). wandb runs
offline by default; resuming continues the same wandb run (its id is kept in ``output_dir/wandb_run_id``).

The config is checked before any work (:func:`tgrowth.config.diffusion.check_train_config`). Resuming with
``ckpt_path=last`` gives the weights of an uninterrupted run: the data order (``ResumableLoader``) and every
random draw of a training step (``seed_training_batch``) depend on the step, not on the process history.
The console shows one progress line (steps / max_steps, loss, steps per second, validation metrics); the
rest goes to ``train.log``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import nn

from data_modules.slices import SliceDataModule
from tgrowth.config.base import constructor_kwargs, save_resolved_config
from tgrowth.config.diffusion import check_train_config
from tgrowth.diffusion.checkpoints import (
    check_resume_checkpoint,
    checkpoint_callbacks,
    export_from_lightning,
    resolve_ckpt_path,
)
from tgrowth.diffusion.modules import DenoiserModule, RegressorModule, SegmenterModule
from tgrowth.diffusion.schedule import NoiseSchedule, make_schedule
from tgrowth.diffusion.toydata import BlobDataModule
from tgrowth.diffusion.unet import EncoderRegressor, Segmenter, UNet
from tgrowth.errors import ConfigError, TgrowthError
from tgrowth.io import make_writable_dir, prepare_output_dir, write_json
from tgrowth.tracking import RUN_ID_FILE, ensure_run_id, make_wandb_logger, trainer_kwargs
from tgrowth.vocab import region_names

log = logging.getLogger(__name__)

__all__ = ["train_denoiser", "train_regressor", "train_segmenter", "build_denoiser", "build_regressor", "build_segmenter",
           "StepProgress", "LOG_FILE"]

LOG_FILE = "train.log"


def _common_meta(cfg: DictConfig, kind: str) -> dict[str, Any]:
    contrasts = list(cfg.data.contrasts)
    if not contrasts:
        raise ConfigError("data.contrasts is empty: name at least one contrast, e.g. data.contrasts=[t1c]")
    labels = cfg.data.labels
    return {"kind": kind, "image_size": cfg.data.image_size, "contrasts": contrasts, "in_channels": len(contrasts),
            "labels": labels if isinstance(labels, str) else [int(v) for v in labels], "experiment": cfg.experiment}


# --------------------------------------------------------------------------- networks from config
def _network(cls: type, cfg: DictConfig, meta: dict[str, Any], **derived: Any) -> nn.Module:
    """``cls(**cfg.model)`` with the arguments the data fix; records class and arguments in ``meta``."""
    kwargs = constructor_kwargs(cfg.model, image_size=meta["image_size"], in_channels=meta["in_channels"], **derived)
    try:
        net = cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from exc
    meta["network"] = {"class": cls.__name__, "kwargs": kwargs}
    return net


def _schedule_meta(cfg: DictConfig) -> dict[str, Any]:
    d = cfg.diffusion
    return {"schedule": {"kind": d.schedule.value, "num_steps": d.num_steps}, "train_t_max": d.train_t_max or d.num_steps}


def build_denoiser(cfg: DictConfig) -> tuple[UNet, dict[str, Any]]:
    """(UNet, meta) from a TrainDenoiserConfig."""
    meta = _common_meta(cfg, "denoiser")
    net = _network(UNet, cfg, meta)
    meta.update(_schedule_meta(cfg), class_labels={"healthy": 0, "diseased": 1} if net.num_classes else None,
                learn_sigma=net.learn_sigma)
    return net, meta


def build_regressor(cfg: DictConfig) -> tuple[EncoderRegressor, dict[str, Any]]:
    """(EncoderRegressor, meta) from a TrainRegressorConfig; meta["area"] says what the output means."""
    meta = _common_meta(cfg, "regressor")
    net = _network(EncoderRegressor, cfg, meta)
    meta.update(_schedule_meta(cfg), area={"key": cfg.target.value, "scale": cfg.target_scale})
    return net, meta


def build_segmenter(cfg: DictConfig) -> tuple[Segmenter, dict[str, Any]]:
    """(Segmenter, meta) from a TrainSegmenterConfig; one output channel per entry of ``regions``."""
    meta = _common_meta(cfg, "segmenter")
    regions = region_names(list(cfg.regions), key="regions")  # canonical names, whole first
    net = _network(Segmenter, cfg, meta, num_regions=len(regions))
    meta.update(regions=regions)
    return net, meta


def _schedule(cfg: DictConfig) -> NoiseSchedule:
    return make_schedule(cfg.diffusion.schedule, cfg.diffusion.num_steps)


# --------------------------------------------------------------------------- data
def make_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    d = cfg.data
    if cfg.toy_data.enabled:
        return BlobDataModule(n_train=cfg.toy_data.n_train, n_val=cfg.toy_data.n_val, image_size=d.image_size,
                              channels=len(d.contrasts), batch_size=d.batch_size, seed=cfg.seed)
    if not d.root:
        raise ConfigError("data.root is empty: set it to a data set folder (or toy_data.enabled=true for a smoke test)")
    return SliceDataModule.from_config(d, strict=cfg.strict, seed=cfg.seed)


# --------------------------------------------------------------------------- console
class StepProgress(ProgressBar):
    """One clean progress line: ``<kind> step 40/150 | loss 0.1234 | 3.1 steps/s`` (+ validation metrics).

    On a terminal the line is rewritten in place (at most 4 times a second); otherwise a new line is written
    every ``every`` steps (default: about 5 % of ``max_steps``) and after each validation, and a last line
    when training ends.
    """

    def __init__(self, kind: str, stream: Any = None, every: int | None = None):
        super().__init__()
        self.kind, self._stream, self._every = kind, stream, every
        self._enabled = True
        self._t0 = self._shown = 0.0
        self._s0 = self._last = -1
        self._pending = False

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def stream(self):
        return self._stream or sys.stdout

    def _tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self, trainer: pl.Trainer, validation: bool = False) -> str:
        step, total = int(trainer.global_step), int(trainer.max_steps)
        parts = [f"{self.kind} step {step}/{total}" if total > 0 else
                 f"{self.kind} step {step} (epoch {trainer.current_epoch + 1})"]
        m = {k: float(v) for k, v in trainer.progress_bar_metrics.items() if isinstance(v, (int, float))}
        if "train/loss" in m:
            parts.append(f"loss {m['train/loss']:.4f}")
        elapsed = time.monotonic() - self._t0
        if step > self._s0 >= 0 and elapsed > 0:
            parts.append(f"{(step - self._s0) / elapsed:.2f} steps/s")
        if validation:
            parts.append(" ".join(f"{k} {v:.4f}" for k, v in sorted(m.items()) if k.startswith("val/")))
        return " | ".join(p for p in parts if p)

    def _write(self, text: str, newline: bool = True) -> None:
        if not self._enabled:
            return
        self._pending = False
        if self._tty():
            self.stream.write("\r" + text.ljust(100) + ("\n" if newline else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._s0, self._last = time.monotonic(), int(trainer.global_step), int(trainer.global_step)
        if self._every is None:
            total = int(trainer.max_steps)
            self._every = max(int(trainer.log_every_n_steps), total // 20 if total > 0 else 0, 1)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending:  # no validation came after the step that was due: its line now
            self._write(self.line(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step == self._last:  # gradient accumulation: report once per optimiser step
            return
        self._last = step
        if self._tty():
            now = time.monotonic()
            if now - self._shown >= 0.25:
                self._shown = now
                self._write(self.line(trainer), newline=False)
        elif self._every and step % self._every == 0:
            self._pending = True  # written at the next batch, or merged into a validation line at this step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._write(self.line(trainer, validation=True))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending or self._tty():
            self._write(self.line(trainer))
        elapsed = time.monotonic() - self._t0
        self._write(f"{self.kind} done: step {int(trainer.global_step)} ({int(trainer.global_step) - self._s0} steps "
                    f"in {elapsed:.0f} s)")


# Lightning messages that say nothing about this run: kept in train.log, not counted as warnings
_NOISE = ("isinstance(treespec, LeafSpec)", "module(s) in eval mode at the start of training", "Checkpoint directory",
          "does not have many workers", "is smaller than the logging interval")


@contextlib.contextmanager
def _lightning_to_log_file(path: Path):
    """Lightning's info lines (accelerator, tips, "fit stopped"), every warning raised while training and our
    own log lines go to ``path``; Lightning's lines and the warnings no longer reach the console. Yields a
    list that collects the warnings' one-line texts (except the known noise in ``_NOISE``)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
        lg = logging.getLogger(name)
        saved.append((lg, lg.handlers[:], lg.propagate, lg.level))
        lg.handlers, lg.propagate = [handler], False
        lg.setLevel(logging.INFO)
    ours = logging.getLogger("tgrowth")
    ours.addHandler(handler)
    caught: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None):
        text = f"{category.__name__}: {str(message).strip()} ({filename}:{lineno})"
        if not any(n in text for n in _NOISE):
            caught.append(text)
        handler.emit(logging.LogRecord("warnings", logging.WARNING, filename, lineno, text, None, None))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            yield caught
    finally:
        ours.removeHandler(handler)
        for lg, handlers, propagate, level in saved:
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)
        handler.close()


# --------------------------------------------------------------------------- the run
def _seed(cfg: DictConfig) -> None:
    """Seed before the networks are built, so the same seed gives the same initial weights."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)


def _writable_output_dir(cfg: DictConfig) -> Path:
    """Create output_dir (refusing a non-empty one unless overwrite / ckpt_path) and check that it is writable."""
    out = Path(cfg.output_dir)
    try:
        out = prepare_output_dir(out, cfg.overwrite, resume=bool(cfg.ckpt_path),
                                 resume_hint="ckpt_path=last to continue the training run in it")
    except OSError as exc:
        raise TgrowthError(f"output_dir {out} cannot be written: {exc.strerror or exc}") from None
    return make_writable_dir(out)


def _fit(cfg: DictConfig, kind: str, module: pl.LightningModule, monitor: str, mode: str) -> int:
    resume = resolve_ckpt_path(cfg.ckpt_path, Path(cfg.output_dir))
    if resume is not None:
        check_resume_checkpoint(resume, kind)
    # under DDP every rank runs this command (Lightning re-runs it for ranks > 0 once rank 0 has started; SLURM
    # and torchrun start them together): only the first prepares output_dir, the others find it prepared
    first = rank_zero_only.rank == 0
    out = _writable_output_dir(cfg) if first else Path(cfg.output_dir)
    if cfg.ckpt_path and resume is None:
        log.info("ckpt_path=%s: no checkpoint in %s yet, starting from scratch", cfg.ckpt_path, out / "checkpoints")
    if first and resume is None and not cfg.ckpt_path:  # a fresh run: old checkpoints and wandb id do not carry over
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / RUN_ID_FILE).unlink(missing_ok=True)
    if first:
        save_resolved_config(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    datamodule = make_datamodule(cfg)

    if cfg.wandb.enabled and cfg.wandb.mode != "disabled" and not cfg.wandb.run_id:
        ensure_run_id(cfg)
    with _lightning_to_log_file(out / LOG_FILE) as caught:
        logger = make_wandb_logger(cfg, f"train-{kind}")
        callbacks = checkpoint_callbacks(out, monitor, mode)
        kwargs = trainer_kwargs(cfg.trainer)
        if kwargs.get("enable_progress_bar", True):
            callbacks = [*callbacks, StepProgress(kind)]
        n_params = sum(p.numel() for p in module.model.parameters())
        (log.info if first else log.debug)("%s: %s, %.2f M trainable parameters; %s", kind, type(module.model).__name__, n_params / 1e6,
                 f"resuming from {resume}" if resume else "from scratch")
        try:
            trainer = pl.Trainer(default_root_dir=str(out), logger=logger if logger is not None else False,
                                 callbacks=callbacks, **kwargs)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"trainer: {exc}") from exc
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    if caught:
        log.info("%s: %d warning(s) while training, in %s", kind, len(caught), out / LOG_FILE)

    if trainer.is_global_zero:
        ckpt = callbacks[0].best_model_path or callbacks[0].last_model_path
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        metrics.update(global_step=int(trainer.global_step), checkpoint=str(ckpt))
        write_json(out / "metrics.json", metrics)
        if ckpt:
            path = export_from_lightning(ckpt, out / f"{kind}.pt")
            log.info("%s: model file %s (from %s)", kind, path, Path(ckpt).name)
    if logger is not None:
        import wandb  # optional heavy package: imported only when a wandb run was opened

        wandb.finish()
    return 0


def _optim(cfg: DictConfig) -> dict[str, Any]:
    o = cfg.optim
    return {"lr": o.lr, "weight_decay": o.weight_decay, "warmup_steps": o.warmup_steps}


def train_denoiser(cfg: DictConfig) -> int:
    check_train_config(cfg)
    _seed(cfg)
    net, meta = build_denoiser(cfg)
    rec = cfg.val_reconstruction
    module = DenoiserModule(net, _schedule(cfg), **_optim(cfg), ema_decay=cfg.optim.ema_decay,
                            channels_last=cfg.channels_last, val_images=cfg.val_images,
                            t_max=cfg.diffusion.train_t_max or None, meta=meta, recon_noise_level=rec.noise_level,
                            recon_steps=rec.num_steps, recon_batches=rec.batches, seed=cfg.seed)
    return _fit(cfg, "denoiser", module, monitor="val/loss", mode="min")


def train_regressor(cfg: DictConfig) -> int:
    check_train_config(cfg)
    _seed(cfg)
    net, meta = build_regressor(cfg)
    module = RegressorModule(net, _schedule(cfg), target=cfg.target.value, target_scale=cfg.target_scale,
                             **_optim(cfg), val_t_bins=cfg.val_t_bins, t_max=cfg.diffusion.train_t_max or None,
                             channels_last=cfg.channels_last, meta=meta, seed=cfg.seed)
    return _fit(cfg, "regressor", module, monitor="val/loss", mode="min")


def train_segmenter(cfg: DictConfig) -> int:
    check_train_config(cfg)
    _seed(cfg)
    net, meta = build_segmenter(cfg)
    module = SegmenterModule(net, regions=meta["regions"], **_optim(cfg), channels_last=cfg.channels_last,
                             val_images=cfg.val_images, meta=meta, seed=cfg.seed)
    return _fit(cfg, "segmenter", module, monitor="val/dice", mode="max")
