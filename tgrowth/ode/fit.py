"""The batched least-squares fit: problems x bootstrap replicates x starts as tensor dimensions.

A *problem* is one normalised series (a subject, or a cross-validation fold of one) with a mask of
the points it is fitted to. :class:`BatchedFit` holds unconstrained parameters ``u[N, R, K, P]``
(N problems, R replicates, K starts, P parameters), maps them into the (widened) bounds, evaluates
the model (closed form or ``torchdiffeq.odeint``) and returns the summed squared error; since the
problems are independent and Adam scales every element separately, one optimiser over the whole
tensor is N x R x K independent fits. It is a LightningModule run by ``trainer.fit`` (one step per
batch of a dummy loader), so progress bars, accelerators and loggers come from Lightning.

Bounded mapping: ``theta = lo + (hi - lo) sigmoid(u)``, or on a log scale
``log theta = log lo + (log hi - log lo) sigmoid(u)`` for positive parameters spanning orders of
magnitude; ``z = sigmoid(u)`` in ``[0, 1]`` is the normalised (log-)parameter.

Population prior (``prior="hierarchical"``): ``z[n, p] ~ Normal(mu_p, sd_p)`` with ``mu``/``sd``
learned jointly with the subjects (per replicate and start), i.e. a log-normal prior on each positive
log-scaled parameter, truncated to its bounds. The data term is then the Gaussian log-likelihood of
relative residuals with SD ``noise``. ``prior=(mu, sd)`` fixes the prior (the ``map`` mode).
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import nn

from tgrowth.ode.models import GrowthModel, simulate_closed_form, simulate_ode

LM_ITERS_PER_STEP = 5  # Levenberg-Marquardt iterations per Lightning step (Lightning's per-step cost is ~ms)
SD_FLOOR = 0.02  # prior SD floor in normalised units (a hierarchical MAP must not collapse to sd = 0)


@dataclass
class FitProblems:
    """Batched inputs. ``t [N, T]`` days since first scan (padded), ``y [N, R, T]`` normalised sizes
    (replicate 0 is the unperturbed data), ``mask [N, T]`` fitted points, ``t_rt [N]``."""

    t: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    t_rt: torch.Tensor

    @property
    def n(self) -> int:
        return self.t.shape[0]


@dataclass
class FitResult:
    theta: torch.Tensor  # [N, R, P] best start per problem and replicate
    sse: torch.Tensor  # [N, R] plain sum of squared errors on the fitted points
    objective: torch.Tensor  # [N, R]
    prior_mu: torch.Tensor | None = None  # [R, P]
    prior_sd: torch.Tensor | None = None


def widened_bounds(model: GrowthModel, noise: float, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors widen every bound by the factor (1 + noise)."""
    f = 1.0 + max(float(noise), 0.0)
    lo, hi = [], []
    for a, b in model.bounds:
        lo.append(a / f if a > 0 else a * f)
        hi.append(b * f if b > 0 else b / f)
    return torch.tensor(lo, dtype=dtype), torch.tensor(hi, dtype=dtype)


def bootstrap(y: torch.Tensor, n_bootstrap: int, noise: float, clip: float, generator: torch.Generator) -> torch.Tensor:
    """``y [N, T]`` -> ``[N, 1 + n_bootstrap, T]``: replicate 0 is ``y``, the others are ``y`` times a
    clipped Gaussian factor ``1 + noise * eps`` (``eps`` clipped to +-clip) -- the authors' bootstrap."""
    eps = torch.randn((y.shape[0], n_bootstrap, y.shape[1]), generator=generator, dtype=y.dtype)
    factor = (1.0 + noise * eps.clamp(-clip, clip)).clamp_min(1e-3)
    return torch.cat([y.unsqueeze(1), y.unsqueeze(1) * factor], dim=1)


class _Steps(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class BatchedFit(pl.LightningModule):
    """N problems x R replicates x K starts fitted at once (see the module docstring)."""

    def __init__(self, model: GrowthModel, problems: FitProblems, *, n_starts: int = 4, start_jitter: float = 1.0,
                 noise: float = 0.1, steps: int = 400, lr: float = 0.08, integrator: str = "closed_form",
                 ode_kwargs: dict | None = None, prior: str | tuple | None = None, seed: int = 0,
                 optimizer: str = "lm"):
        super().__init__()
        if optimizer not in ("lm", "adam"):
            raise ValueError(f"optimizer must be lm or adam, got '{optimizer}'")
        self.model = model
        self.optimizer_kind = optimizer
        self.automatic_optimization = optimizer == "adam"
        self.steps, self.lr, self.integrator = int(steps), float(lr), integrator
        self.ode_kwargs = dict(ode_kwargs or {})
        self.noise = float(noise)
        dtype = problems.y.dtype
        lo, hi = widened_bounds(model, noise, dtype)
        log_scale = torch.tensor(model.log_scale())
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        self.register_buffer("log_scale", log_scale)
        self.register_buffer("t", problems.t)
        self.register_buffer("y", problems.y)
        self.register_buffer("mask", problems.mask.to(dtype))
        self.register_buffer("t_rt", problems.t_rt)
        n, r = problems.y.shape[:2]
        k, p = max(int(n_starts), 1), model.n_params
        start = torch.tensor(model.starts, dtype=dtype)
        z0 = self.to_unit(start).clamp(1e-4, 1 - 1e-4)
        u0 = torch.log(z0) - torch.log1p(-z0)  # logit
        g = torch.Generator().manual_seed(int(seed))
        jitter = torch.randn((n, r, k, p), generator=g, dtype=dtype) * float(start_jitter)
        jitter[:, :, 0] = 0.0  # start 0: the authors' starting values
        self.u = nn.Parameter(u0.expand(n, r, k, p) + jitter)
        self.converged = False
        self.log_to_logger = False
        self.register_buffer("damping", torch.full((n, r, k), 1e-2, dtype=dtype))
        self.prior_kind = None
        if prior == "hierarchical":
            self.prior_kind = "hierarchical"
            self.mu = nn.Parameter(z0.expand(r, k, p).clone())
            self.rho = nn.Parameter(torch.full((r, k, p), math.log(math.expm1(0.25 - SD_FLOOR)), dtype=dtype))
        elif prior is not None:
            self.prior_kind = "fixed"
            mu, sd = prior
            self.register_buffer("mu_fixed", torch.as_tensor(mu, dtype=dtype).expand(r, k, p).clone())
            self.register_buffer("sd_fixed", torch.as_tensor(sd, dtype=dtype).clamp_min(SD_FLOOR).expand(r, k, p).clone())

    # ------------------------------------------------------------------ parameter maps
    def to_unit(self, theta: torch.Tensor) -> torch.Tensor:
        lo, hi = self.lo, self.hi
        llo, lhi = torch.log(lo.abs().clamp_min(1e-30)), torch.log(hi.abs().clamp_min(1e-30))
        zlog = (torch.log(theta.clamp_min(1e-30)) - llo) / (lhi - llo)
        zlin = (theta - lo) / (hi - lo)
        return torch.where(self.log_scale, zlog, zlin)

    def from_unit(self, z: torch.Tensor) -> torch.Tensor:
        lo, hi = self.lo, self.hi
        llo, lhi = torch.log(lo.abs().clamp_min(1e-30)), torch.log(hi.abs().clamp_min(1e-30))
        return torch.where(self.log_scale, torch.exp(llo + (lhi - llo) * z), lo + (hi - lo) * z)

    def theta(self) -> torch.Tensor:
        return self.from_unit(torch.sigmoid(self.u))

    def prior_sd(self) -> torch.Tensor | None:
        if self.prior_kind == "hierarchical":
            return SD_FLOOR + nn.functional.softplus(self.rho)
        if self.prior_kind == "fixed":
            return self.sd_fixed
        return None

    def prior_mu(self) -> torch.Tensor | None:
        if self.prior_kind == "hierarchical":
            return self.mu
        if self.prior_kind == "fixed":
            return self.mu_fixed
        return None

    # ------------------------------------------------------------------ objective
    def predict(self, theta: torch.Tensor) -> torch.Tensor:
        t = self.t[:, None, None, :]
        t_rt = self.t_rt[:, None, None]
        if self.integrator == "odeint":
            return simulate_ode(self.model, theta, t, t_rt, **self.ode_kwargs)
        return simulate_closed_form(self.model, theta, t, t_rt)

    def residuals(self, u: torch.Tensor, mu=None, sd=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(least-squares residual vector [..., M], plain data residuals [..., T]) at ``u [..., N, R, K, P]``.

        Without a prior the objective is ``sum(res**2)``; with one, the data residuals are relative
        (SD ``noise``) and ``(z - mu) / sd`` are appended (a Gaussian prior is extra residuals)."""
        theta = self.from_unit(torch.sigmoid(u))
        pred = self.predict(theta)
        y = self.y[:, :, None, :]
        m = self.mask[:, None, None, :]
        data = (pred - y) * m
        if self.prior_kind is None:
            return data, data
        rel = data / (self.noise * y.clamp_min(1e-6))
        z = torch.sigmoid(u)
        mu = self.prior_mu() if mu is None else mu
        sd = self.prior_sd() if sd is None else sd
        return torch.cat([rel, (z - mu) / sd], dim=-1), data

    def objective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective [N, R, K], plain SSE [N, R, K])."""
        res, data = self.residuals(self.u)
        obj = 0.5 * (res**2).sum(-1)
        if self.prior_kind is not None:
            obj = obj + torch.log(self.prior_sd()).sum(-1)
        return obj, (data**2).sum(-1)

    @torch.no_grad()
    def lm_step(self) -> torch.Tensor:
        """One batched Levenberg-Marquardt iteration on every (problem, replicate, start); Jacobian by
        forward differences, evaluated for all parameters in one batched model call."""
        u = self.u.data
        p = u.shape[-1]
        mu = sd = None
        if self.prior_kind == "hierarchical":  # closed-form update of the prior (joint MAP), then LM on u
            z = torch.sigmoid(u)
            mu = z.mean(0)
            sd = ((z - mu) ** 2).mean(0).sqrt().clamp_min(SD_FLOOR)
            self.mu.data.copy_(mu)
            self.rho.data.copy_(torch.log(torch.expm1((sd - SD_FLOOR).clamp_min(1e-6))))
            sd = self.prior_sd()
        r0, _ = self.residuals(u, mu, sd)
        h = (1e-6 if self.integrator == "closed_form" else 1e-4) * (1.0 + u.abs())  # adaptive solvers: larger steps
        eye = torch.eye(p, dtype=u.dtype, device=u.device)
        up = u.unsqueeze(0) + eye.view(p, 1, 1, 1, p) * h.unsqueeze(0)  # [P, N, R, K, P]
        rp, _ = self.residuals(up, mu, sd)
        jac = ((rp - r0.unsqueeze(0)) / h.permute(3, 0, 1, 2).unsqueeze(-1)).permute(1, 2, 3, 4, 0)  # [N,R,K,M,P]
        jac = torch.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0)
        a = jac.transpose(-1, -2) @ jac
        g = (jac.transpose(-1, -2) @ r0.unsqueeze(-1)).squeeze(-1)
        lam = self.damping.unsqueeze(-1)
        diag = torch.diagonal(a, dim1=-2, dim2=-1)
        a_damped = a + torch.diag_embed(lam * (diag + 1e-6 * diag.amax(-1, keepdim=True) + 1e-12) + 1e-12)
        sol, info = torch.linalg.solve_ex(a_damped, g.unsqueeze(-1))
        ok = (info == 0).unsqueeze(-1)  # a singular system (flat directions): take a small gradient step instead
        step = torch.where(ok, -sol.squeeze(-1), -1e-3 * g / (g.norm(dim=-1, keepdim=True) + 1e-30))
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0).clamp(-5.0, 5.0)
        u_new = (u + step).clamp(-30.0, 30.0)
        r1, _ = self.residuals(u_new, mu, sd)
        f0 = (r0**2).sum(-1)
        f1 = torch.nan_to_num((r1**2).sum(-1), nan=math.inf)
        better = f1 < f0
        self.u.data.copy_(torch.where(better.unsqueeze(-1), u_new, u))
        self.damping.copy_(torch.where(better, self.damping / 3.0, self.damping * 2.0).clamp(1e-9, 1e9))
        gain = torch.where(better, (f0 - f1) / f0.clamp_min(1e-300), torch.zeros_like(f0))
        self.converged = bool(((self.damping >= 1e6) | (better & (gain < 1e-12))).all())
        return 0.5 * torch.minimum(f0, f1)

    def training_step(self, batch, batch_idx):
        if self.optimizer_kind == "lm":
            for _ in range(LM_ITERS_PER_STEP):  # several cheap iterations per Lightning step
                obj = self.lm_step()
                if self.converged:
                    break
            self.log("loss", obj.sum() / obj.numel(), prog_bar=True, on_step=True, logger=self.log_to_logger)
            if self.converged and self._trainer is not None:
                self.trainer.should_stop = True  # every problem has converged
            return None
        obj, _ = self.objective()
        loss = obj.sum()
        if batch_idx % LM_ITERS_PER_STEP == 0:
            self.log("loss", loss.detach() / obj.numel(), prog_bar=True, on_step=True, logger=self.log_to_logger)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        for p in self.parameters():
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)

    def configure_optimizers(self):
        if self.optimizer_kind == "lm":
            return None
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.steps, 1), eta_min=self.lr * 0.01)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def lightning_steps(self) -> int:
        if self.optimizer_kind == "lm":
            return -(-self.steps // LM_ITERS_PER_STEP)
        return self.steps

    def train_dataloader(self):
        return torch.utils.data.DataLoader(_Steps(self.lightning_steps()), batch_size=None, shuffle=False)

    # ------------------------------------------------------------------ result
    @torch.no_grad()
    def result(self) -> FitResult:
        obj, sse = self.objective()
        obj = torch.nan_to_num(obj, nan=math.inf)
        theta = self.theta()
        if self.prior_kind == "hierarchical":  # starts share the prior: pick per replicate on the joint objective
            best = obj.sum(0).argmin(-1)  # [R]
            best = best.expand(obj.shape[0], -1)
        else:
            best = obj.argmin(-1)  # [N, R]
        idx = best[..., None]
        pick = torch.gather(theta, 2, idx[..., None].expand(*idx.shape, theta.shape[-1])).squeeze(2)
        res = FitResult(pick.cpu(), torch.gather(sse, 2, idx).squeeze(2).cpu(), torch.gather(obj, 2, idx).squeeze(2).cpu())
        if self.prior_kind is not None:
            b = best[0]
            mu, sd = self.prior_mu(), self.prior_sd()
            ar = torch.arange(mu.shape[0], device=mu.device)
            res.prior_mu, res.prior_sd = mu[ar, b].cpu(), sd[ar, b].cpu()
        return res


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*returned `None`, this fit will run with no optimizer.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*TreeSpec.*")


@contextmanager
def cpu_threads(n_elements: int, small: int = 2_000_000):
    """Small elementwise workloads run far faster on one CPU thread (no OpenMP hand-off, which is
    very costly on a busy machine); large ones keep torch's thread count."""
    before = torch.get_num_threads()
    if n_elements < small and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def run_fit(module: BatchedFit, accelerator: str = "auto", progress_bar: bool = True, logger=None) -> FitResult:
    """``trainer.fit`` the module (``module.steps`` steps) and return the best start per problem."""
    _quiet_lightning()
    with cpu_threads(module.u.numel() * module.t.shape[-1]):
        return _run_fit(module, accelerator, progress_bar, logger)


def _run_fit(module: BatchedFit, accelerator: str, progress_bar: bool, logger) -> FitResult:
    if module.steps > 0:
        if accelerator == "auto" and module.y.dtype == torch.float64 and not torch.cuda.is_available():
            accelerator = "cpu"
        trainer = pl.Trainer(
            accelerator=accelerator, devices=1, max_steps=module.lightning_steps(), max_epochs=1, logger=logger or False,
            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress_bar,
            num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=max(1, module.lightning_steps() // 10),
        )
        module.log_to_logger = logger is not None
        trainer.fit(module)
    return module.cpu().result()
