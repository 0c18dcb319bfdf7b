"""An exact denoiser for Gaussian data: the reference the sampler, guidance and maps are tested against.

For data ``x0 ~ N(mu, diag(sd^2))`` the noisy marginal is ``x_t ~ N(sqrt(abar_t) mu, abar_t sd^2 + 1 - abar_t)``,
so the optimal eps prediction ``E[eps | x_t]`` has the closed form

    eps(x_t, t) = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu) / (abar_t sd^2 + 1 - abar_t).

Any sampler error measured with it is the sampler's own (no network error), which makes it the known answer
for DDIM steps, inversion round trips (``benchmarks/inversion.py``) and guidance tests. Pure torch.
"""

from __future__ import annotations

import torch
from torch import nn

from tgrowth.diffusion.schedule import NoiseSchedule

__all__ = ["GaussianDenoiser"]


class GaussianDenoiser(nn.Module):
    """``model(x, t, y=None) -> eps`` for Gaussian data with per-pixel mean ``mu`` and std ``sd``.

    ``mu``/``sd`` broadcast against ``x`` ([1, C, H, W] or scalars). ``calls`` counts forward calls and
    ``batches`` records their batch sizes (for tests of batching and model-call budgets).
    """

    def __init__(self, schedule: NoiseSchedule, mu: torch.Tensor | float, sd: torch.Tensor | float):
        super().__init__()
        self.schedule = schedule
        self.mu, self.sd = torch.as_tensor(mu), torch.as_tensor(sd)
        self.calls = 0
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        self.calls += 1
        self.batches.append(x.shape[0])
        a = self.schedule.abar(t, like=x)
        mu, sd = self.mu.to(x), self.sd.to(x)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * sd**2 + 1 - a)
