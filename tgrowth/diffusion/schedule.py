"""Noise schedules of a DDPM over ``T`` training steps (pure torch; cf. diffusers' schedulers).

``alphas_cumprod[t]`` is \\bar\\alpha_t for t = 0..T-1 (t = 0 is the least noisy step). ``q_sample`` draws
x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I). ``timesteps(num_steps, start)`` gives the
respaced, strictly decreasing sub-sequence of steps that a DDIM sampler visits from ``start`` down to 0.
"""

from __future__ import annotations

import math

import torch

__all__ = ["NoiseSchedule", "linear_betas", "cosine_betas", "make_schedule"]


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
    """Buffers ``betas``, ``alphas_cumprod`` (float64 master copies; cast on use)."""

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0), persistent=False)

    @property
    def num_train_steps(self) -> int:
        return int(self.betas.shape[0])

    def abar(self, t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """\\bar\\alpha_t gathered at integer steps ``t`` (shape of t); t = -1 means 'clean' (abar = 1)."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        one = torch.ones((), dtype=torch.float64, device=self.alphas_cumprod.device)
        out = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], one)
        if like is not None:
            out = out.to(device=like.device, dtype=like.dtype)
        return out

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with a per-sample t of shape [B]."""
        a = self.abar(t, like=x0).view(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def timesteps(self, num_steps: int, start: int | None = None) -> torch.Tensor:
        """``num_steps`` evenly spaced steps from ``start`` (default T-1) down to 0, strictly decreasing."""
        start = self.num_train_steps - 1 if start is None else int(start)
        if not 0 <= start < self.num_train_steps:
            raise ValueError(f"start step {start} outside [0, {self.num_train_steps - 1}]")
        if not 1 <= num_steps <= start + 1:
            raise ValueError(f"num_steps must be in [1, {start + 1}] for start {start}, got {num_steps}")
        steps = torch.linspace(start, 0, num_steps, dtype=torch.float64).round().long()
        return torch.unique_consecutive(steps)


def make_schedule(kind: str = "linear", num_steps: int = 1000) -> NoiseSchedule:
    """``linear`` (authors') or ``cosine`` over ``num_steps`` training steps."""
    makers = {"linear": linear_betas, "cosine": cosine_betas}
    if kind not in makers:
        raise ValueError(f"unknown beta schedule '{kind}'; choose one of {sorted(makers)}")
    return NoiseSchedule(makers[kind](num_steps))
