"""LightningModules that orchestrate training; the networks are plain ``nn.Module``s passed in.

- :class:`DenoiserModule`: epsilon prediction on x_t = q_sample(x0, t, eps) at uniformly random t (all T
  steps, or t < ``t_max``: known-image sampling from noise level L only needs t < L); with a
  learned-sigma UNet the improved-DDPM hybrid loss (MSE + variational bound with the mean frozen). EMA
  weights (``ema_model``) are used for validation and for the exported sampler weights. Validation also
  reconstructs the first ``recon_batches`` batches as the sampler does (q-sample to noise level L, then
  ``recon_steps`` DDIM steps back) and logs ``val/ssim`` (whole slice), ``val/ssim_brain`` (pixels where
  any contrast is above the background value -1) and ``val/psnr`` of the reconstruction.
- :class:`RegressorModule`: predicts ``batch[target] * target_scale`` (e.g. percent of the slice that is
  tumour) from q-sampled noisy images at random t; validation reports the absolute error in bins of t.
- :class:`SegmenterModule`: Dice + binary cross-entropy per tumour region; reports validation Dice of the
  whole tumour (and the all-background baseline's Dice on the same images) and ``val/hd95`` in mm (the
  batch's pixel spacing; both masks empty = 0 mm, exactly one empty = the image diagonal in mm, as in
  ``tgrowth predict``), with ``val/hd95_one_empty`` the fraction of slices where that penalty applied
  (:func:`tgrowth.metrics.dice_per_sample`, :func:`tgrowth.metrics.mean_hd95`; a pixel is tumour where
  :func:`~tgrowth.diffusion.unet.masks_from_logits` says so).

The step maths (x0 from eps, the DDPM posterior of the variational bound) is the schedule's
(:class:`~tgrowth.diffusion.schedule.NoiseSchedule`).

All three: AdamW with linear warm-up, ``train/loss`` and ``train/lr`` logged; before each training batch torch's
generators are seeded from ``(seed, rank, global step, batch index)`` (:func:`seed_training_batch`), so the
noise, t, label-dropout and dropout draws repeat exactly when a run resumes from a checkpoint; gradient clipping and bf16 come
from the Trainer (``trainer.gradient_clip_val``, ``trainer.precision=bf16-mixed``). Each module stores
``meta`` (kind, image size, contrasts, network class and arguments, ...) in its hyper-parameters so a
checkpoint is self-describing (see :mod:`tgrowth.diffusion.checkpoints`).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from data_modules.slices import mix_seed
from data_modules.volumes import tumour_mask
from tgrowth import metrics
from tgrowth.diffusion.sampler import sample_known_image
from tgrowth.diffusion.schedule import NoiseSchedule
from tgrowth.diffusion.unet import masks_from_logits

__all__ = ["DenoiserModule", "RegressorModule", "SegmenterModule", "region_targets", "seed_training_batch"]


# --------------------------------------------------------------------------- shared pieces
def _adamw_with_warmup(module: pl.LightningModule, params, lr: float, weight_decay: float, warmup_steps: int):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(0, int(warmup_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm) if warm else 1.0)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def seed_training_batch(module: pl.LightningModule, batch_idx: int) -> int:
    """Seed torch's generators (CPU and every GPU) from ``(hparams.seed, rank, global_step, batch_idx)``.

    Everything a training batch draws (t, noise, label dropout, dropout) is then a pure function of where
    training is, not of what ran before: a run resumed from a checkpoint draws what the uninterrupted run
    drew at that step. Returns the seed.
    """
    seed = mix_seed(int(module.hparams.get("seed", 0)), module.global_rank, module.global_step, batch_idx)
    torch.manual_seed(seed)
    return seed


def _log_lr(module: pl.LightningModule) -> None:
    if module._trainer is not None and module.trainer.optimizers:
        module.log("train/lr", module.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)


def _to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def _log_images(module: pl.LightningModule, key: str, rows: list[torch.Tensor], captions: list[str]) -> None:
    """Log a grid (one row per tensor [N, H, W] in [-1, 1] or [0, 1]) if the logger can take images."""
    logger = module.logger
    if logger is None or not hasattr(logger, "log_image") or not rows:
        return
    grid = torch.cat([torch.cat(list(r.float().clamp(-1, 1).cpu()), dim=1) for r in rows], dim=0)
    grid = ((grid - grid.min()) / (grid.max() - grid.min() + 1e-8) * 255).round().to(torch.uint8).numpy()
    logger.log_image(key=key, images=[grid], caption=[" / ".join(captions)], step=module.global_step)


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of images in [-1, 1] quantised to 256 levels (Ho et al.'s decoder)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs


# --------------------------------------------------------------------------- denoiser
class DenoiserModule(pl.LightningModule):
    """DDPM training of a :class:`~tgrowth.diffusion.unet.UNet` (eps prediction, EMA, optional learned sigma).

    Args:
        model: the UNet (plain nn.Module). ``ema_model`` is a frozen copy updated after every optimiser step.
        schedule: the :class:`NoiseSchedule` (its T is the training range of t).
        meta: self-description stored in checkpoints (kind, image_size, contrasts, network, schedule, ...).
    """

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, lr: float = 1e-4, weight_decay: float = 0.0,
                 warmup_steps: int = 0, ema_decay: float = 0.9999, channels_last: bool = False,
                 val_images: int = 4, t_max: int | None = None, meta: dict[str, Any] | None = None,
                 recon_noise_level: int = 200, recon_steps: int = 10, recon_batches: int = 1, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "schedule"])
        self.model = model
        self.ema_model = copy.deepcopy(model).requires_grad_(False).eval()
        self.schedule = schedule
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.ema_model.to(memory_format=torch.channels_last)
        self._ema_step = -1
        self.T = T = schedule.num_train_steps
        self.t_max = min(int(t_max), T) if t_max else T  # t is drawn from [0, t_max)

    # ---- pieces
    def _labels(self, batch: dict, train: bool) -> torch.Tensor | None:
        m = self.model
        if getattr(m, "num_classes", None) is None:
            return None
        y = batch["label"].long()
        p = float(getattr(m, "class_dropout", 0.0))
        if train and p > 0:
            drop = torch.rand(y.shape, device=y.device) < p
            y = torch.where(drop, torch.full_like(y, m.num_classes), y)
        return y

    def vlb_terms(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-sample variational-bound term in bits/dim with the predicted mean frozen (improved DDPM)."""
        x0, xt, eps, v = x0.float(), xt.float(), eps.detach().float(), v.float()
        s = self.schedule
        true_mean, model_mean = s.posterior_mean(x0, xt, t), s.posterior_mean(s.predict_x0(xt, eps, t), xt, t)
        min_log, max_log = s.posterior_log_variance(t, xt), s.log_beta(t, xt)
        frac = (v.clamp(-1, 1) + 1) / 2
        model_logvar = frac * max_log + (1 - frac) * min_log
        kl = _normal_kl(true_mean, min_log, model_mean, model_logvar).flatten(1).mean(1) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).flatten(1).mean(1) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def diffusion_loss(self, model: nn.Module, batch: dict, t: torch.Tensor, noise: torch.Tensor, train: bool) -> dict[str, torch.Tensor]:
        x0 = _to_memory_format(batch["image"], self.channels_last)
        xt = self.schedule.q_sample(x0, t, noise)
        eps, v = model.forward_with_var(xt, t, self._labels(batch, train))
        mse = (eps.float() - noise.float()).pow(2).flatten(1).mean(1)
        out = {"mse": mse, "loss": mse}
        if v is not None:
            vb = self.vlb_terms(x0, xt, t, eps, v) * (self.T / 1000.0)
            out["vb"], out["loss"] = vb, mse + vb
        return out

    # ---- Lightning hooks
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        seed_training_batch(self, batch_idx)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x0 = batch["image"]
        t = torch.randint(0, self.t_max, (x0.shape[0],), device=x0.device)
        terms = self.diffusion_loss(self.model, batch, t, torch.randn_like(x0), train=True)
        loss = terms["loss"].mean()
        b = x0.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/mse", terms["mse"].mean(), batch_size=b)
        if "vb" in terms:
            self.log("train/vb", terms["vb"].mean(), batch_size=b)
        _log_lr(self)
        return loss

    @torch.no_grad()
    def update_ema(self) -> None:
        step = self.global_step
        decay = min(float(self.hparams.ema_decay), (1 + step) / (10 + step))  # short warm-up of the EMA
        ema_p = [p for p in self.ema_model.parameters()]
        cur_p = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - decay)
        for be, bc in zip(self.ema_model.buffers(), self.model.buffers()):
            be.copy_(bc)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.global_step != self._ema_step:  # once per optimiser step (gradient accumulation aware)
            self._ema_step = self.global_step
            self.update_ema()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x0 = batch["image"]
        g = torch.Generator(device="cpu").manual_seed(1000 + batch_idx)  # same t and noise every validation
        t = torch.randint(0, self.t_max, (x0.shape[0],), generator=g).to(x0.device)
        noise = torch.randn(x0.shape, generator=g).to(x0.device, x0.dtype)
        terms = self.diffusion_loss(self.ema_model, batch, t, noise, train=False)
        self.log("val/loss", terms["loss"].mean(), prog_bar=True, sync_dist=True, batch_size=x0.shape[0])
        self.log("val/mse", terms["mse"].mean(), sync_dist=True, batch_size=x0.shape[0])
        if batch_idx < int(self.hparams.recon_batches) and int(self.hparams.recon_steps) > 0:
            self._validate_reconstruction(batch, noise)
        if batch_idx == 0 and self.hparams.val_images > 0 and self.logger is not None:
            n = min(int(self.hparams.val_images), x0.shape[0])
            tt = torch.full((n,), self.t_max // 4, device=x0.device, dtype=torch.long)
            xt = self.schedule.q_sample(x0[:n], tt, noise[:n])
            y = self._labels({"label": batch["label"][:n]}, train=False) if "label" in batch else None
            x0_hat = self.schedule.predict_x0(xt, self.ema_model(xt, tt, y), tt).clamp(-1, 1)
            _log_images(self, "val/denoise", [x0[:n, 0], xt[:n, 0], x0_hat[:, 0]],
                        [f"clean / x_t at t={self.t_max // 4} / EMA prediction of x0 (channel 0)"])

    def reconstruct(self, x0: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x0 q-sampled to noise level L (``recon_noise_level``, capped at ``t_max``), then ``recon_steps``
        deterministic DDIM steps back with the EMA weights: what known-image sampling does, unguided."""
        level = max(1, min(int(self.hparams.recon_noise_level), self.t_max))
        t = torch.full((x0.shape[0],), level - 1, device=x0.device, dtype=torch.long)
        xl = self.schedule.q_sample(x0, t, noise)
        return sample_known_image(self.ema_model, self.schedule, x0, level, int(self.hparams.recon_steps), y=y,
                                  x_start=xl, channels_last=self.channels_last)

    def _validate_reconstruction(self, batch: dict, noise: torch.Tensor) -> None:
        x0 = batch["image"].float()
        y = self._labels(batch, train=False) if "label" in batch else None
        rec = self.reconstruct(x0, noise.float(), y).clamp(-1, 1)
        full = metrics.ssim_map(rec, x0).float()  # [B, C, H, W]
        brain = metrics.foreground(x0, keepdim=True).expand_as(full)
        b = x0.shape[0]
        # per-slice brain-region mean (a slice with no brain pixel falls back to its whole-slice mean)
        n_brain = brain.flatten(1).sum(1)
        ssim_brain = torch.where(n_brain > 0, (full * brain).flatten(1).sum(1) / n_brain.clamp(min=1),
                                 full.flatten(1).mean(1))
        mse = (rec - x0).pow(2).flatten(1).mean(1).clamp(min=1e-10)
        self.log("val/ssim", full.flatten(1).mean(1).mean(), prog_bar=True, sync_dist=True, batch_size=b)
        self.log("val/ssim_brain", ssim_brain.mean(), sync_dist=True, batch_size=b)
        self.log("val/psnr", (10 * torch.log10(4.0 / mse)).mean(), sync_dist=True, batch_size=b)

    def configure_optimizers(self):
        h = self.hparams
        return _adamw_with_warmup(self, self.model.parameters(), h.lr, h.weight_decay, h.warmup_steps)


# --------------------------------------------------------------------------- regressor
class RegressorModule(pl.LightningModule):
    """Noisy-image area regression: ``model(x_t, t) ≈ batch[target] * target_scale`` for t ~ U{0..t_max-1}
    (``t_max``: None = all T steps; guidance from noise level L only visits t < L)."""

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, target: str = "area_frac", target_scale: float = 100.0,
                 lr: float = 1e-4, weight_decay: float = 0.0, warmup_steps: int = 0, val_t_bins: int = 5,
                 t_max: int | None = None, channels_last: bool = False, meta: dict[str, Any] | None = None,
                 seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "schedule"])
        self.model = model
        self.schedule = schedule
        self.T = min(int(t_max), schedule.num_train_steps) if t_max else schedule.num_train_steps
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        edges = torch.linspace(0, self.T, val_t_bins + 1).round().long()
        self.register_buffer("t_edges", edges, persistent=False)
        self._val_err: list[torch.Tensor] = []

    def target(self, batch: dict) -> torch.Tensor:
        return batch[self.hparams.target].float() * float(self.hparams.target_scale)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        seed_training_batch(self, batch_idx)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x0 = _to_memory_format(batch["image"], self.channels_last)
        t = torch.randint(0, self.T, (x0.shape[0],), device=x0.device)
        pred = self.model(self.schedule.q_sample(x0, t, torch.randn_like(x0)), t)
        loss = F.mse_loss(pred.float(), self.target(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        _log_lr(self)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Every image at one t drawn inside each bin (fixed seed): absolute error per bin."""
        x0 = _to_memory_format(batch["image"], self.channels_last)
        b, nb = x0.shape[0], len(self.t_edges) - 1
        g = torch.Generator(device="cpu").manual_seed(2000 + batch_idx)
        lo, hi = self.t_edges[:-1].cpu(), self.t_edges[1:].cpu()
        t = (lo[None] + (torch.rand(b, nb, generator=g) * (hi - lo)[None]).long()).clamp(max=self.T - 1)  # [B, nb]
        noise = torch.randn((nb, *x0.shape), generator=g).to(x0.device, x0.dtype)
        xt = self.schedule.q_sample(x0.repeat(nb, 1, 1, 1), t.T.reshape(-1).to(x0.device), noise.flatten(0, 1))
        pred = self.model(_to_memory_format(xt, self.channels_last), t.T.reshape(-1).to(x0.device)).float().view(nb, b)
        err = (pred - self.target(batch)[None]).abs()  # [nb, B]
        self._val_err.append(err.detach())
        self.log("val/loss", err.pow(2).mean(), prog_bar=True, sync_dist=True, batch_size=b)
        self.log("val/mae", err.mean(), sync_dist=True, batch_size=b)

    def on_validation_epoch_end(self) -> None:
        if not self._val_err:
            return
        err = torch.cat(self._val_err, dim=1).mean(dim=1)  # per bin
        self._val_err.clear()
        for i, e in enumerate(err):
            self.log(f"val/mae_t{int(self.t_edges[i])}-{int(self.t_edges[i + 1]) - 1}", e, sync_dist=True)

    def configure_optimizers(self):
        h = self.hparams
        return _adamw_with_warmup(self, self.model.parameters(), h.lr, h.weight_decay, h.warmup_steps)


# --------------------------------------------------------------------------- segmenter
def region_targets(seg: torch.Tensor, regions: list[str] | tuple[str, ...]) -> torch.Tensor:
    """Label map [B, H, W] -> float targets [B, R, H, W]: membership of each region's label set
    (``tgrowth.vocab.LABEL_SETS``: whole, core, enhancing; aliases wt, tc, et)."""
    return torch.stack([tumour_mask(seg, r) for r in regions], dim=1).float()


def _batch_spacing(batch: dict) -> torch.Tensor | None:
    meta = batch.get("meta")
    sp = meta.get("spacing_mm") if isinstance(meta, dict) else None
    return sp if isinstance(sp, torch.Tensor) else None


class SegmenterModule(pl.LightningModule):
    """Tumour segmentation: soft Dice + binary cross-entropy per region; ``val/dice`` (whole tumour)."""

    def __init__(self, model: nn.Module, regions: list[str] | tuple[str, ...] = ("wt",), lr: float = 1e-3,
                 weight_decay: float = 0.0, warmup_steps: int = 0, channels_last: bool = False,
                 val_images: int = 4, meta: dict[str, Any] | None = None, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.regions = list(regions)
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def loss_terms(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        inter = (p * target).flatten(2).sum(-1)
        denom = p.flatten(2).sum(-1) + target.flatten(2).sum(-1)
        soft_dice = (2 * inter + 1.0) / (denom + 1.0)
        return bce, 1 - soft_dice.mean()

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        seed_training_batch(self, batch_idx)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = _to_memory_format(batch["image"], self.channels_last)
        bce, dice_loss = self.loss_terms(self.model(x), region_targets(batch["seg"], self.regions))
        loss = bce + dice_loss
        b = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/bce", bce, batch_size=b)
        self.log("train/dice_loss", dice_loss, batch_size=b)
        _log_lr(self)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = _to_memory_format(batch["image"], self.channels_last)
        logits = self.model(x)
        target = region_targets(batch["seg"], self.regions)
        bce, dice_loss = self.loss_terms(logits, target)
        pred = masks_from_logits(logits)
        gt = target > 0.5
        b = x.shape[0]

        def dice(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # mean over the batch, float32
            return metrics.dice_per_sample(p, g).float().mean()

        self.log("val/loss", bce + dice_loss, sync_dist=True, batch_size=b)
        self.log("val/dice", dice(pred[:, 0], gt[:, 0]), prog_bar=True, sync_dist=True, batch_size=b)
        self.log("val/dice_all_background", dice(torch.zeros_like(gt[:, 0]), gt[:, 0]), sync_dist=True, batch_size=b)
        for i, r in enumerate(self.regions[1:], start=1):
            self.log(f"val/dice_{r}", dice(pred[:, i], gt[:, i]), sync_dist=True, batch_size=b)
        hd, one_empty = metrics.mean_hd95(pred[:, 0], gt[:, 0], _batch_spacing(batch))
        self.log("val/hd95", hd, sync_dist=True, batch_size=b)
        self.log("val/hd95_one_empty", one_empty, sync_dist=True, batch_size=b)
        if batch_idx == 0 and self.hparams.val_images > 0 and self.logger is not None:
            n = min(int(self.hparams.val_images), x.shape[0])
            _log_images(self, "val/segmentation", [x[:n, 0], gt[:n, 0].float() * 2 - 1, pred[:n, 0].float() * 2 - 1],
                        ["image (channel 0) / ground truth / prediction (whole tumour)"])

    def configure_optimizers(self):
        h = self.hparams
        return _adamw_with_warmup(self, self.model.parameters(), h.lr, h.weight_decay, h.warmup_steps)
