"""The batched least-squares fit: problems x bootstrap replicates x starts as tensor dimensions.

A *problem* is one normalised series (a subject, or a cross-validation fold of one) with a mask of
the points it is fitted to. :class:`BatchedFit` holds unconstrained parameters ``u[N, R, K, P]``
(N problems, R replicates, K starts, P parameters), maps them into the (widened) bounds, evaluates
the model (closed form or ``torchdiffeq.odeint``) and minimises the summed squared error of every
(problem, replicate, start) independently. It is a LightningModule run by ``trainer.fit`` (one step
per batch of a dummy loader), so progress bars, accelerators and loggers come from Lightning.

Independence (reproducibility): every random draw of a problem comes from its own generator, seeded
by its key (:func:`problem_key`: the run's seed, the subject and the purpose), so it does not depend
on the other problems, their number or order, or the padding. Levenberg-Marquardt keeps a damping,
an iteration count and a convergence flag per (problem, replicate, start) and freezes each one once
it has converged, so how long the others run never changes it. Without a prior, a problem's fit is a
function of its own data and key only: sums over points run in order (padded zeros change nothing) and
the elementwise maths avoids ops whose vectorised and scalar kernels round differently, so on CPU the
result is bitwise the same in any batch (tested).

Best start: the lowest objective; starts within ``TIE_RTOL``/``TIE_ATOL`` of it tie (a subject with no
more points than parameters has many exact fits) and the one closest to the starting values wins.

Bounded mapping: ``theta = lo + (hi - lo) sigmoid(u)``, or on a log scale
``log theta = log lo + (log hi - log lo) sigmoid(u)`` for positive parameters spanning orders of
magnitude; ``z = sigmoid(u)`` in ``[0, 1]`` is the normalised (log-)parameter.

Population prior (``prior="hierarchical"``): ``z[n, p] ~ Normal(mu_p, sd_p)`` with ``mu``/``sd``
learned jointly with the problems of the same *prior group* (``FitProblems.groups``; per replicate
and start), i.e. a log-normal prior on each positive log-scaled parameter, truncated to its bounds.
The data term is then the Gaussian log-likelihood of relative residuals with SD ``noise``.
``prior=(mu, sd)`` fixes the prior (the ``map`` mode). Groups let one batched fit hold several
independent cohorts, e.g. the cross-validation folds of ``auto``, each with its own prior.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from torch import nn

from tgrowth.ode.models import GrowthModel, simulate_closed_form, simulate_ode

log = logging.getLogger("tgrowth.ode")

LM_ITERS_PER_STEP = 5  # Levenberg-Marquardt iterations per Lightning step (Lightning's per-step cost is ~ms)
SD_FLOOR = 0.02  # prior SD floor in normalised units (a hierarchical MAP must not collapse to sd = 0)
FTOL = 1e-10  # an accepted LM step that lowers the objective by less than this fraction: converged
MAX_DAMPING = 1e6  # no step lowers the objective even this heavily damped: a (local) minimum
TIE_RTOL, TIE_ATOL = 1e-6, 1e-12  # starts whose objectives are this close tie (the nearest to the starting values wins)
STALL_ITERS, STALL_TOL = 20, 1e-6  # this many iterations without lowering the objective by this fraction: converged
BOUND_TOL = 1e-3  # a parameter within this fraction of its (log-)range from a bound is "at the bound"


def problem_key(*parts) -> int:
    """A 63-bit generator seed from ``parts`` (e.g. the run's seed, a subject, a purpose): the same on
    every machine and run, and different for different parts."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class FitProblems:
    """Batched inputs. ``t [N, T]`` days since first scan (padded), ``y [N, R, T]`` normalised sizes
    (replicate 0 is the unperturbed data), ``mask [N, T]`` fitted points, ``t_rt [N]``; ``keys``:
    each problem's generator seed for its starts (default: from the fit's seed and the problem's
    index); ``groups [N]``: each problem's prior group (default: one group)."""

    t: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    t_rt: torch.Tensor
    keys: list[int] | None = None
    groups: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.t.shape[0]


@dataclass
class FitResult:
    theta: torch.Tensor  # [N, R, P] best start per problem and replicate
    sse: torch.Tensor  # [N, R] plain sum of squared errors on the fitted points
    objective: torch.Tensor  # [N, R]
    converged: torch.Tensor  # [N, R] the best start met the convergence test (and the model was not flat there)
    iterations: torch.Tensor  # [N, R] LM iterations the best start took (Adam: steps)
    flat: torch.Tensor  # [N, R, P] the parameter did not move the model at all (e.g. it saturates)
    unit: torch.Tensor  # [N, R, P] normalised (log-)parameters in [0, 1] of the best start
    prior_mu: torch.Tensor | None = None  # [G, R, P]
    prior_sd: torch.Tensor | None = None

    def at_bound(self, tol: float = BOUND_TOL) -> torch.Tensor:
        """``[N, R, P]``: -1 at the lower bound, +1 at the upper bound, 0 inside."""
        return (self.unit >= 1.0 - tol).long() - (self.unit <= tol).long()


def widened_bounds(model: GrowthModel, noise: float, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors widen every bound by the factor (1 + noise)."""
    f = 1.0 + max(float(noise), 0.0)
    lo, hi = [], []
    for a, b in model.bounds:
        lo.append(a / f if a > 0 else a * f)
        hi.append(b * f if b > 0 else b / f)
    return torch.tensor(lo, dtype=dtype), torch.tensor(hi, dtype=dtype)


def bootstrap(y: torch.Tensor, n_bootstrap: int, noise: float, clip: float, keys: list[int],
              lengths: list[int] | None = None) -> torch.Tensor:
    """``y [N, T]`` -> ``[N, 1 + n_bootstrap, T]``: replicate 0 is ``y``, the others are ``y`` times a
    clipped Gaussian factor ``1 + noise * eps`` (``eps`` clipped to +-clip) -- the authors' bootstrap.

    Problem ``i`` draws ``eps`` for its first ``lengths[i]`` points from its own generator seeded with
    ``keys[i]``, so its replicates do not depend on the other problems, their order or the padding."""
    n, width = y.shape
    lengths = list(lengths) if lengths is not None else [width] * n
    eps = torch.zeros((n, n_bootstrap, width), dtype=y.dtype)
    for i, key in enumerate(keys):  # one generator per problem (a loop over problems, not replicates)
        g = torch.Generator().manual_seed(int(key))
        eps[i, :, : lengths[i]] = torch.randn((n_bootstrap, lengths[i]), generator=g, dtype=y.dtype)
    factor = (1.0 + noise * eps.clamp(-clip, clip)).clamp_min(1e-3)
    return torch.cat([y.unsqueeze(1), y.unsqueeze(1) * factor], dim=1)


def _sigmoid(u: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + exp(-u))``: torch's vectorised and scalar ``sigmoid`` round differently, which would make a
    problem's fit depend on its position in the batch; ``exp`` and division round the same everywhere."""
    return 1.0 / (1.0 + torch.exp(-u))


def _seqsum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension in order (a running sum): padded zeros then never change a
    problem's sums, so its fit does not depend on how wide the batch is (``sum`` and ``@`` reorder the
    additions by width)."""
    return x.cumsum(-1)[..., -1]


class _Steps(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class BatchedFit(pl.LightningModule):
    """N problems x R replicates x K starts fitted at once (see the module docstring).

    Starts: start 0 is the model's starting values (the authors'); starts 1..K-1 are drawn around them
    in the unconstrained space (SD ``start_jitter``) from problem i's own generator."""

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
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        self.register_buffer("log_scale", torch.tensor(model.log_scale()))
        self.register_buffer("t", problems.t)
        self.register_buffer("y", problems.y)
        self.register_buffer("mask", problems.mask.to(dtype))
        self.register_buffer("t_rt", problems.t_rt)
        n, r = problems.y.shape[:2]
        k, p = max(int(n_starts), 1), model.n_params
        groups = problems.groups if problems.groups is not None else torch.zeros(n, dtype=torch.long)
        self.register_buffer("groups", groups.long())
        self.n_groups = int(groups.max()) + 1 if n else 1
        self.register_buffer("group_size", torch.bincount(self.groups, minlength=self.n_groups).to(dtype))
        keys = problems.keys if problems.keys is not None else [problem_key(seed, "problem", i) for i in range(n)]
        if len(keys) != n:
            raise ValueError(f"FitProblems.keys has {len(keys)} entries for {n} problems")
        z0 = self.to_unit(torch.tensor(model.starts, dtype=dtype)).clamp(1e-4, 1 - 1e-4)
        u0 = torch.log(z0) - torch.log1p(-z0)  # logit
        self.prior_kind = None
        if prior == "hierarchical":
            self.prior_kind = "hierarchical"
            self.mu = nn.Parameter(z0.expand(self.n_groups, r, k, p).clone())
            self.rho = nn.Parameter(torch.full((self.n_groups, r, k, p), math.log(math.expm1(0.25 - SD_FLOOR)), dtype=dtype))
        elif prior is not None:
            self.prior_kind = "fixed"
            mu, sd = prior
            self.register_buffer("mu_fixed", torch.as_tensor(mu, dtype=dtype).expand(self.n_groups, r, k, p).clone())
            self.register_buffer("sd_fixed", torch.as_tensor(sd, dtype=dtype).clamp_min(SD_FLOOR)
                                 .expand(self.n_groups, r, k, p).clone())
        self.u = nn.Parameter(self._starts(u0, keys, r, k, float(start_jitter)))
        self.converged = False
        self.iteration = 0
        self.log_to_logger = False
        self.register_buffer("damping", torch.full((n, r, k), 1e-2, dtype=dtype))
        self.register_buffer("done", torch.zeros((n, r, k), dtype=torch.bool))  # met the convergence test
        self.register_buffer("frozen", torch.zeros((n, r, k), dtype=torch.bool))  # no longer updated
        self.register_buffer("flat", torch.zeros((n, r, k, p), dtype=torch.bool))  # parameters that do not move the model
        self.register_buffer("iters", torch.zeros((n, r, k), dtype=torch.long))
        self.register_buffer("f_ref", torch.full((n, r, k), math.inf, dtype=dtype))  # objective at the last real progress
        self.register_buffer("it_ref", torch.zeros((n, r, k), dtype=torch.long))  # ... and its iteration
        self.register_buffer("sse_now", torch.full((n, r, k), math.inf, dtype=dtype))

    @staticmethod
    def _starts(u0: torch.Tensor, keys: list[int], r: int, k: int, jitter: float) -> torch.Tensor:
        """``[N, R, K, P]``: start 0 at ``u0``, the others ``u0`` + Gaussian jitter from each problem's generator."""
        n, p = len(keys), u0.shape[0]
        draws = torch.empty((n, r, k - 1, p), dtype=u0.dtype)
        for i, key in enumerate(keys):  # one generator per problem (a loop over problems, not replicates)
            g = torch.Generator().manual_seed(int(key))
            draws[i] = u0 + jitter * torch.randn((r, k - 1, p), generator=g, dtype=u0.dtype)
        return torch.cat([u0.expand(n, r, 1, p), draws], dim=2)

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
        return self.from_unit(_sigmoid(self.u))

    def prior_sd(self) -> torch.Tensor | None:
        """``[G, R, K, P]`` (None without a prior)."""
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

    def _group_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x [N, ...]`` over the problems of each prior group -> ``[G, ...]`` (inf stays in its group)."""
        return torch.zeros((self.n_groups, *x.shape[1:]), dtype=x.dtype, device=x.device).index_add_(0, self.groups, x)

    # ------------------------------------------------------------------ objective
    def _evaluate(self, u, t, y, m, t_rt, mu=None, sd=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(least-squares residual vector [..., M], plain data residuals [..., T]) at ``u [..., P]``;
        ``t``, ``y``, ``m`` ``[..., T]`` and ``t_rt [...]`` broadcast with it.

        Without a prior the objective is ``sum(res**2)``; with one, the data residuals are relative
        (SD ``noise``) and ``(z - mu) / sd`` are appended (a Gaussian prior is extra residuals)."""
        theta = self.from_unit(_sigmoid(u))
        if self.integrator == "odeint":
            pred = simulate_ode(self.model, theta, t, t_rt, **self.ode_kwargs)
        else:
            pred = simulate_closed_form(self.model, theta, t, t_rt)
        data = (pred - y) * m
        if mu is None:
            return data, data
        rel = data / (self.noise * y.clamp_min(1e-6))
        return torch.cat([rel, (_sigmoid(u) - mu) / sd], dim=-1), data

    def residuals(self, u: torch.Tensor, per_problem_prior: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``_evaluate`` at ``u [N, R, K', P]`` (any number of starts K'), the prior of each problem's group."""
        mu = sd = None
        if self.prior_kind is not None and per_problem_prior:
            mu, sd = self.prior_mu()[self.groups], self.prior_sd()[self.groups]
        return self._evaluate(u, self.t[:, None, None, :], self.y[:, :, None, :], self.mask[:, None, None, :],
                              self.t_rt[:, None, None], mu, sd)

    def objective(self, u: torch.Tensor | None = None, per_problem_prior: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective [N, R, K], plain SSE [N, R, K]) at ``u`` (default: the current parameters)."""
        u = self.u if u is None else u
        with_prior = self.prior_kind is not None and per_problem_prior
        res, data = self.residuals(u, with_prior)
        obj = 0.5 * _seqsum(res**2)
        if with_prior:
            obj = obj + torch.log(self.prior_sd()[self.groups]).sum(-1)
        return obj, _seqsum(data**2)

    @torch.no_grad()
    def _update_prior(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form update of each group's prior (joint MAP): mean and SD of its problems' ``z``."""
        z = _sigmoid(u)
        count = self.group_size.view(-1, 1, 1, 1).clamp_min(1.0)
        mu = self._group_sum(z) / count
        sd = (self._group_sum((z - mu[self.groups]) ** 2) / count).sqrt().clamp_min(SD_FLOOR)
        self.mu.data.copy_(mu)
        self.rho.data.copy_(torch.log(torch.expm1((sd - SD_FLOOR).clamp_min(1e-6))))
        return self.prior_mu(), self.prior_sd()

    @torch.no_grad()
    def lm_step(self) -> None:
        """One batched Levenberg-Marquardt iteration on every (problem, replicate, start) not yet frozen;
        Jacobian by forward differences, evaluated for all parameters in one batched model call.
        Each element has its own damping, iteration count and convergence test; a converged element
        is frozen (with a prior: once every problem of its group has converged)."""
        u = self.u.data
        p = u.shape[-1]
        mu_g = sd_g = None
        if self.prior_kind == "hierarchical":
            mu_g, sd_g = self._update_prior(u)
        elif self.prior_kind == "fixed":
            mu_g, sd_g = self.prior_mu(), self.prior_sd()
        idx = (~self.frozen).nonzero(as_tuple=True)  # (n, r, k) of the active elements
        if idx[0].numel() == 0:
            self.converged = True
            return
        n_i, r_i, k_i = idx
        ua = u[idx]  # [E, P]
        t, y, m, t_rt = self.t[n_i], self.y[n_i, r_i], self.mask[n_i], self.t_rt[n_i]
        mu = sd = None
        if mu_g is not None:
            g_i = self.groups[n_i]
            mu, sd = mu_g[g_i, r_i, k_i], sd_g[g_i, r_i, k_i]
        r0, d0 = self._evaluate(ua, t, y, m, t_rt, mu, sd)
        h = (1e-6 if self.integrator == "closed_form" else 1e-4) * (1.0 + ua.abs())  # adaptive solvers: larger steps
        eye = torch.eye(p, dtype=u.dtype, device=u.device)
        up = ua.unsqueeze(0) + eye.view(p, 1, p) * h.unsqueeze(0)  # [P, E, P]
        rp, dp = self._evaluate(up, t, y, m, t_rt, mu, sd)
        jac = ((rp - r0.unsqueeze(0)) / h.t().unsqueeze(-1)).permute(1, 2, 0)  # [E, M, P]
        jac = torch.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0)
        flat = ((dp - d0.unsqueeze(0)) == 0).all(-1).t()  # [E, P]: the parameter does not move the model at all
        a = _seqsum((jac.unsqueeze(-1) * jac.unsqueeze(-2)).movedim(-3, -1))  # J^T J [E, P, P]
        g = _seqsum((jac * r0.unsqueeze(-1)).transpose(-1, -2))  # J^T r [E, P]
        damping = self.damping[idx]
        lam = damping.unsqueeze(-1)
        diag = torch.diagonal(a, dim1=-2, dim2=-1)
        a_damped = a + torch.diag_embed(lam * (diag + 1e-6 * diag.amax(-1, keepdim=True) + 1e-12) + 1e-12)
        sol, info = torch.linalg.solve_ex(a_damped, g.unsqueeze(-1))
        ok = (info == 0).unsqueeze(-1)  # a singular system (flat directions): take a small gradient step instead
        step = torch.where(ok, -sol.squeeze(-1), -1e-3 * g / (g.norm(dim=-1, keepdim=True) + 1e-30))
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0).clamp(-5.0, 5.0)
        u_new = (ua + step).clamp(-30.0, 30.0)
        r1, d1 = self._evaluate(u_new, t, y, m, t_rt, mu, sd)
        f0 = _seqsum(r0**2)
        f1 = torch.nan_to_num(_seqsum(r1**2), nan=math.inf)
        better = f1 < f0
        damping = torch.where(better, damping / 3.0, damping * 2.0).clamp(1e-9, 1e9)
        gain = (f0 - f1) / f0.clamp_min(1e-300)
        f_new = torch.minimum(f0, f1)
        iters = self.iters[idx] + 1
        progress = f_new < self.f_ref[idx] * (1.0 - STALL_TOL)  # (f_ref = inf at the start)
        f_ref = torch.where(progress, f_new, self.f_ref[idx])
        it_ref = torch.where(progress, iters, self.it_ref[idx])
        stalled = iters - it_ref >= STALL_ITERS  # e.g. creeping toward a bound, where the logit map flattens
        done = (better & (gain < FTOL)) | (damping >= MAX_DAMPING) | (f0 <= 1e-300) | stalled
        self.f_ref[idx], self.it_ref[idx] = f_ref, it_ref
        u[idx] = torch.where(better.unsqueeze(-1), u_new, ua)
        self.damping[idx] = damping
        self.iters[idx] = iters
        self.flat[idx] = flat
        self.sse_now[idx] = torch.where(better, _seqsum(d1**2), _seqsum(d0**2))
        self.done[idx] |= done
        if self.prior_kind is None:
            self.frozen |= self.done
        else:  # a group's prior moves while any of its problems does: freeze whole groups
            open_in_group = self._group_sum((~self.done).to(u.dtype))  # [G, R, K]
            self.frozen |= (open_in_group == 0)[self.groups]
        self.converged = bool(self.frozen.all())

    def progress(self) -> dict[str, str]:
        """Progress-bar fields: fits converged so far and the median RMS residual (fraction of the first size)."""
        n_pts = self.mask.sum(-1).clamp_min(1.0)[:, None, None]
        rms = (self.sse_now / n_pts).sqrt().amin(-1)  # best start per problem and replicate
        rms = rms[torch.isfinite(rms)]
        out = {}
        if self.optimizer_kind == "lm":
            out["done"] = f"{int(self.frozen.sum())}/{self.frozen.numel()}"
        out["rms"] = f"{float(rms.median()):.2%}" if rms.numel() else "-"
        return out

    def training_step(self, batch, batch_idx):
        if self.optimizer_kind == "lm":
            for _ in range(LM_ITERS_PER_STEP):  # several cheap iterations per Lightning step
                if self.converged or self.iteration >= self.steps:
                    break
                self.lm_step()
                self.iteration += 1
            if self.log_to_logger:
                self.log("ode_fits_converged", self.frozen.double().mean(), on_step=True, logger=True)
            if (self.converged or self.iteration >= self.steps) and self._trainer is not None:
                self.trainer.should_stop = True  # every fit has converged (or the iteration limit is reached)
            return None
        obj, sse = self.objective()
        self.sse_now.copy_(torch.nan_to_num(sse.detach(), nan=math.inf))
        self.iters += 1
        self.iteration += 1
        if self.log_to_logger:
            self.log("ode_objective", obj.detach().median(), on_step=True, logger=True)
        return obj.sum()

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
        gbest = None
        if self.prior_kind == "hierarchical":  # starts share the group's prior: pick per group and replicate
            gbest = self._group_sum(obj).argmin(-1)  # [G, R]
            best = gbest[self.groups]  # [N, R]
        else:
            # the lowest objective; among starts that tie with it (several exact fits when a subject has no
            # more points than parameters), the one closest to the starting values in normalised units
            tie = obj <= obj.amin(-1, keepdim=True) * (1.0 + TIE_RTOL) + TIE_ATOL
            z0 = self.to_unit(torch.tensor(self.model.starts, dtype=self.u.dtype, device=self.u.device)).clamp(0.0, 1.0)
            dist = ((_sigmoid(self.u) - z0) ** 2).sum(-1)
            best = torch.where(tie, dist, torch.full_like(dist, math.inf)).argmin(-1)  # [N, R]
        idx = best[..., None]

        def pick(x):  # [N, R, K, ...] -> [N, R, ...] at the best start
            i = idx.view(*idx.shape, *([1] * (x.dim() - 3))).expand(*idx.shape, *x.shape[3:])
            return torch.gather(x, 2, i).squeeze(2).cpu()

        res = FitResult(pick(theta), pick(sse), pick(obj), pick(self.fit_converged()), pick(self.iters),
                        pick(self.flat), pick(_sigmoid(self.u)))
        if self.prior_kind is not None:
            mu, sd = self.prior_mu(), self.prior_sd()
            if gbest is None:
                gbest = torch.zeros(mu.shape[:2], dtype=torch.long, device=mu.device)
            gi = gbest[..., None, None].expand(*gbest.shape, 1, mu.shape[-1])
            res.prior_mu = torch.gather(mu, 2, gi).squeeze(2).cpu()
            res.prior_sd = torch.gather(sd, 2, gi).squeeze(2).cpu()
        return res

    def fit_converged(self) -> torch.Tensor:
        """``[N, R, K]``: met the convergence test (Adam: has none) and no growth-law parameter (V0 and
        the law's own; the RT ones may legitimately not act) is flat, i.e. the model does not saturate."""
        ok = ~self.flat[..., : self.model.n_law].any(-1)
        return ok & self.done if self.optimizer_kind == "lm" else ok

    def summary(self) -> str:
        """One log line: iterations, converged / at the limit / flat fits, median RMS residual."""
        n, r, k = self.frozen.shape
        total = self.frozen.numel()
        conv = int(self.fit_converged().sum())
        flat = int(self.flat[..., : self.model.n_law].any(-1).sum())
        limit = int((~self.done).sum()) if self.optimizer_kind == "lm" else 0
        return (f"{self.model.name}: {n} problem(s) x {r} replicate(s) x {k} start(s), {self.iteration} "
                f"{'LM iterations' if self.optimizer_kind == 'lm' else 'Adam steps'}; {conv}/{total} fits converged, "
                f"{limit} stopped at the iteration limit, {flat} flat (the model saturates); "
                f"median RMS residual {self.progress()['rms']} of the first size")


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


class FitProgressBar(TQDMProgressBar):
    """Lightning's bar with the fit's own fields (fits converged, median RMS residual) instead of a loss."""

    def __init__(self):
        super().__init__(refresh_rate=1)

    @property
    def train_description(self) -> str:
        return "ODE fit"

    def get_metrics(self, trainer, pl_module):
        return pl_module.progress()


def run_fit(module: BatchedFit, accelerator: str = "auto", progress_bar: bool = True, logger=None) -> FitResult:
    """``trainer.fit`` the module (at most ``module.steps`` iterations) and return the best start per problem."""
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
            callbacks=[FitProgressBar()] if progress_bar else [],
            num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=max(1, module.lightning_steps() // 10),
        )
        module.log_to_logger = logger is not None
        trainer.fit(module)
    module = module.cpu()
    log.info("ODE fit %s", module.summary())
    return module.result()
