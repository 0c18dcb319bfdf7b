"""Noise schedules of a DDPM over ``T`` training steps and the step maths on them (pure torch; cf. diffusers'
schedulers and lucidrains' ``extract``).

``alphas_cumprod[t]`` is \\bar\\alpha_t for t = 0..T-1 (t = 0 is the least noisy step; t = -1 means "clean",
abar = 1). With ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``:

* :meth:`NoiseSchedule.q_sample` draws x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I);
* :meth:`NoiseSchedule.predict_x0` / :meth:`NoiseSchedule.eps_from_x0` convert between the eps and the x0
  prediction at step t; :func:`x0_from_eps` / :func:`eps_from_x0` are the same two formulas given
  ``abar_t`` itself (what a guidance callback holds) -- the one implementation both use::

      x0  = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
      eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)

* :meth:`NoiseSchedule.posterior_mean`, :meth:`~NoiseSchedule.posterior_log_variance` and
  :meth:`~NoiseSchedule.log_beta`: the DDPM posterior q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t,
  beta~_t) with ``c1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t)``, ``c2_t = (1 - abar_{t-1}) sqrt(alpha_t)
  / (1 - abar_t)``, ``beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (log clipped at t = 0 to beta~_1,
  as improved DDPM does), and log beta_t: the two ends of improved DDPM's learned variance;
* :meth:`NoiseSchedule.timesteps` gives the respaced, strictly decreasing sub-sequence of steps a DDIM
  sampler visits from ``start`` down to 0.

Per-step values gathered at ``t`` come back broadcastable against the tensor they act on, through the one
broadcast helper :func:`broadcast_batch` (a scalar, or ``[B]`` -> ``[B, 1, ..., 1]``).
"""

from __future__ import annotations

import math
from enum import Enum

import torch

__all__ = ["BetaSchedule", "NoiseSchedule", "broadcast_batch", "x0_from_eps", "eps_from_x0", "linear_betas",
           "cosine_betas", "make_schedule"]


def broadcast_batch(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or a per-sample ``[B]`` value as a tensor of ``like``'s dtype and device, broadcastable
    against ``like`` (``[B, ...]``): a scalar stays 0-d, ``[B]`` becomes ``[B, 1, ..., 1]``."""
    v = torch.as_tensor(v, device=like.device, dtype=like.dtype)
    if v.ndim == 0:
        return v
    if v.ndim != 1 or v.shape[0] != like.shape[0]:
        raise ValueError(f"per-sample value has shape {tuple(v.shape)}, expected [{like.shape[0]}]")
    return v.view(-1, *([1] * (like.ndim - 1)))


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (``abar_t`` broadcastable against ``x_t``)."""
    return (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """The eps for which :func:`x0_from_eps` gives ``x0``: (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
    return (x_t - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """The linear schedule of Ho et al. (the authors' choice), scaled as in ADM for T != 1000."""
    scale = 1000.0 / num_steps
    return torch.linspace(beta_start * scale, beta_end * scale, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2(((t/T) + s) / (1 + s) * pi / 2)."""
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


class NoiseSchedule(torch.nn.Module):
    """Buffers ``betas``, ``alphas_cumprod`` and the posterior coefficients (float64 master copies, not
    saved: rebuilt from the betas; cast to the dtype of the tensor they act on)."""

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        ac = torch.cumprod(1 - betas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
        post_var = betas * (1 - ac_prev) / (1 - ac)
        buffers = {
            "betas": betas,
            "alphas_cumprod": ac,
            "posterior_mean_coef1": betas * ac_prev.sqrt() / (1 - ac),
            "posterior_mean_coef2": (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac),
            "posterior_log_variance_clipped": torch.log(torch.cat([post_var[1:2], post_var[1:]])),
            "log_betas": torch.log(betas),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    @property
    def num_train_steps(self) -> int:
        return int(self.betas.shape[0])

    def abar(self, t: torch.Tensor | int, like: torch.Tensor | None = None) -> torch.Tensor:
        """\\bar\\alpha_t gathered at integer steps ``t``; t = -1 means 'clean' (abar = 1).

        Without ``like``: float64, the shape of ``t``. With ``like``: in ``like``'s dtype and device and
        broadcastable against it (``t`` a scalar or ``[B]``; see :func:`broadcast_batch`).
        """
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        one = torch.ones((), dtype=torch.float64, device=self.alphas_cumprod.device)
        out = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], one)
        return out if like is None else broadcast_batch(out, like)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with ``t`` a scalar or per-sample ``[B]``."""
        a = self.abar(t, like=x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The x0 prediction at step(s) ``t`` from an eps prediction (:func:`x0_from_eps`)."""
        return x0_from_eps(x_t, eps, self.abar(t, like=x_t))

    def eps_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The eps at step(s) ``t`` whose x0 prediction is ``x0`` (:func:`eps_from_x0`)."""
        return eps_from_x0(x_t, x0, self.abar(t, like=x_t))

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x_0): ``c1_t x0 + c2_t x_t`` (``t`` ``[B]``, 0..T-1)."""
        c1 = broadcast_batch(self.posterior_mean_coef1[t], x_t)
        c2 = broadcast_batch(self.posterior_mean_coef2[t], x_t)
        return c1 * x0 + c2 * x_t

    def posterior_log_variance(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """log beta~_t of q(x_{t-1} | x_t, x_0), clipped at t = 0 to log beta~_1, broadcastable against ``like``."""
        return broadcast_batch(self.posterior_log_variance_clipped[t], like)

    def log_beta(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """log beta_t (the largest reverse-process variance), broadcastable against ``like``."""
        return broadcast_batch(self.log_betas[t], like)

    def timesteps(self, num_steps: int, start: int | None = None) -> torch.Tensor:
        """``num_steps`` evenly spaced steps from ``start`` (default T-1) down to 0, strictly decreasing."""
        start = self.num_train_steps - 1 if start is None else int(start)
        if not 0 <= start < self.num_train_steps:
            raise ValueError(f"start step {start} outside [0, {self.num_train_steps - 1}]")
        if not 1 <= num_steps <= start + 1:
            raise ValueError(f"num_steps must be in [1, {start + 1}] for start {start}, got {num_steps}")
        steps = torch.linspace(start, 0, num_steps, dtype=torch.float64).round().long()
        return torch.unique_consecutive(steps)


class BetaSchedule(str, Enum):
    """The beta schedules :func:`make_schedule` builds (a config field of this type accepts only these)."""

    linear = "linear"  # Ho et al., the authors'
    cosine = "cosine"  # Nichol & Dhariwal

    def __str__(self) -> str:
        return self.value


_BETAS = {BetaSchedule.linear: linear_betas, BetaSchedule.cosine: cosine_betas}


def make_schedule(kind: str | BetaSchedule = "linear", num_steps: int = 1000) -> NoiseSchedule:
    """``linear`` (authors') or ``cosine`` over ``num_steps`` training steps."""
    if kind not in set(BetaSchedule):
        raise ValueError(f"unknown beta schedule '{kind}'; choose one of {[k.value for k in BetaSchedule]}")
    return NoiseSchedule(_BETAS[BetaSchedule(kind)](num_steps))
