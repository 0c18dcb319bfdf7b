"""Growth laws with an optional radiotherapy (RT) effect, as closed forms and as ODEs (torch only).

Everything works on *normalised* series: time ``t`` in days since the subject's first scan and size
divided by the first measured size. ``theta[..., P]`` holds the natural (bounded) parameters in the
order of :attr:`GrowthModel.param_names`; ``t[..., T]`` the query times; ``t_rt[...]`` the RT time
(the authors use the RT *end* day) relative to the first scan, or :data:`NO_RT` when there is none.
Leading dimensions broadcast, so one call evaluates subjects x bootstraps x starts at once.

The RT option (the authors' model, Laslo et al. 2025, ``method.md``): at ``t_RT`` an instantaneous
kill moves ``(1 - SF)`` of the living volume into a damaged compartment, which then follows
``dV_d/dt = -tanh(slope (t - t_RT - delay)) lambda_decay V_d`` (it still swells before ``delay``,
pseudo-progression, and decays after). The living part keeps following its growth law. Observed size =
living + damaged. If RT ended before the first scan, the kill is applied at the first scan (the
observed size is continuous across the kill) while the decay switch keeps the true RT time.

Closed forms: every law here has an explicit flow ``Phi(t; v)``; the damaged compartment integrates
to ``V_d(t) = V_d(t_k) exp(-lambda_decay/slope [logcosh(slope (t - t_RT - delay)) - logcosh(slope
(t_k - t_RT - delay))])``. :func:`simulate_ode` integrates the same equations with
``torchdiffeq.odeint``, piecewise across the kill, batched (each problem's time axis is rescaled so
all kills happen at the same solver time). Extreme parameters are clamped in log space, never NaN/inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = [
    "NO_RT",
    "GrowthModel",
    "MODELS",
    "get_model",
    "register",
    "model_names",
    "simulate",
    "simulate_closed_form",
    "simulate_ode",
    "logcosh",
]

NO_RT = 1.0e6  # "RT time" used for subjects without RT: far beyond any scan
LOG_MAX = 60.0  # sizes are clamped to exp(+-LOG_MAX) x the first size (finite in float32 and float64)
RT_PARAMS = ("SF", "lambda_decay", "delay", "slope")


def logcosh(x: torch.Tensor) -> torch.Tensor:
    """``log(cosh(x))`` without overflow: ``|x| + log(1 + exp(-2|x|)) - log 2``.

    ``log(1 + e)`` rather than ``log1p``: torch's vectorised and scalar ``log1p`` round differently, so an
    element's value would depend on its position in the batch (``e <= 1``: the absolute error is ~1e-16)."""
    a = x.abs()
    return a + torch.log(1.0 + torch.exp(-2.0 * a)) - math.log(2.0)


# --------------------------------------------------------------------------- growth laws (flows)
def _exp_logflow(t, logv, p):
    (lam,) = p
    return logv + lam * t


def _exp_rhs(v, p):
    (lam,) = p
    return lam * v


def _logistic_logflow(t, logv, p):
    lam, k = p
    v = torch.exp(logv.clamp(-LOG_MAX, LOG_MAX))
    e = torch.exp(-lam * t)
    return torch.log(k) + logv - torch.log(v * (1.0 - e) + k * e).clamp_min(-LOG_MAX)


def _logistic_rhs(v, p):
    lam, k = p
    return lam * v * (1.0 - v / k)


def _gompertz_logflow(t, logv, p):
    lam, k = p
    logk = torch.log(k)
    return logk + (logv - logk) * torch.exp(-lam * t)


def _gompertz_rhs(v, p):
    lam, k = p
    return lam * v * (torch.log(k) - torch.log(v.clamp_min(1e-30)))


def _radial_logflow(dim):
    def f(t, logv, p):
        (c,) = p
        r = torch.exp(logv.clamp(-LOG_MAX, LOG_MAX) / dim) + c * t
        return dim * torch.log(r.clamp_min(1e-12))

    return f


def _radial_rhs(dim):
    def f(v, p):
        (c,) = p
        # d/dt (r^dim) = dim c r^(dim-1); stop at r = 0 (no negative sizes)
        return dim * c * v.clamp_min(0.0) ** ((dim - 1.0) / dim) * (v > 1e-12)

    return f


@dataclass(frozen=True)
class GrowthModel:
    """A growth law, optionally with the RT kill + tanh-switched decay of the damaged compartment.

    ``bounds``/``starts`` are the unwidened bounds and starting values of every parameter (the fit
    widens bounds by ``1 + noise`` as the authors do); ``log_scale`` marks parameters optimised on a
    log scale (positive, spanning orders of magnitude).
    """

    name: str
    law_params: tuple[str, ...]
    law_bounds: tuple[tuple[float, float], ...]
    law_starts: tuple[float, ...]
    logflow: object = field(repr=False)
    rhs: object = field(repr=False)
    rt: bool = False
    rt_bounds: tuple[tuple[float, float], ...] = ()
    rt_starts: tuple[float, ...] = ()
    description: str = ""

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("V0",) + self.law_params + (RT_PARAMS if self.rt else ())

    @property
    def bounds(self) -> tuple[tuple[float, float], ...]:
        return ((0.9, 1.1),) + self.law_bounds + (self.rt_bounds if self.rt else ())

    @property
    def starts(self) -> tuple[float, ...]:
        return (1.0,) + self.law_starts + (self.rt_starts if self.rt else ())

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    @property
    def n_law(self) -> int:
        return 1 + len(self.law_params)

    def effective_n_params(self, has_rt: bool) -> int:
        """Parameters that act on a subject: the RT ones only when it had RT."""
        return self.n_params if (self.rt and has_rt) else self.n_law

    def log_scale(self) -> tuple[bool, ...]:
        return tuple(lo > 0 and hi / lo > 20.0 for lo, hi in self.bounds)

    def split(self, theta: torch.Tensor):
        """``theta[..., P]`` -> (V0, law params, rt params), each ``[..., 1]`` for broadcasting over time."""
        cols = [theta[..., i : i + 1] for i in range(theta.shape[-1])]
        return cols[0], cols[1 : self.n_law], cols[self.n_law :]


MODELS: dict[str, GrowthModel] = {}

# The authors' RT bounds and starts (method.md). SF's start is not stated there: 0.1, mid-range.
AUTHORS_RT_BOUNDS = ((0.001, 0.20), (0.001, 100.0), (0.001, 300.0), (0.001, 600.0))
AUTHORS_RT_STARTS = (0.1, 0.02, 5.0, 1.0)
# Other laws with RT: same decay bounds, but the kill may be mild (SF up to 1).
GENERIC_RT_BOUNDS = ((0.01, 1.0),) + AUTHORS_RT_BOUNDS[1:]
GENERIC_RT_STARTS = (0.5,) + AUTHORS_RT_STARTS[1:]


def register(model: GrowthModel) -> GrowthModel:
    MODELS[model.name] = model
    return model


def _register_law(name, params, bounds, starts, logflow, rhs, rt_bounds, rt_starts, desc):
    register(GrowthModel(name, params, bounds, starts, logflow, rhs, False, (), (), desc))
    register(GrowthModel(f"{name}_rt", params, bounds, starts, logflow, rhs, True, rt_bounds, rt_starts,
                         desc + " + RT kill and delayed decay"))


_register_law("exponential", ("lambda_gr",), ((0.001, 2.0),), (0.02,), _exp_logflow, _exp_rhs,
              AUTHORS_RT_BOUNDS, AUTHORS_RT_STARTS,
              "exponential growth dV/dt = lambda_gr V (exponential_rt is the authors' model)")
_register_law("logistic", ("lambda_gr", "K"), ((1e-4, 2.0), (0.5, 1000.0)), (0.02, 5.0),
              _logistic_logflow, _logistic_rhs, GENERIC_RT_BOUNDS, GENERIC_RT_STARTS,
              "logistic growth dV/dt = lambda_gr V (1 - V/K)")
_register_law("gompertz", ("lambda_gr", "K"), ((1e-4, 1.0), (0.5, 1000.0)), (0.01, 10.0),
              _gompertz_logflow, _gompertz_rhs, GENERIC_RT_BOUNDS, GENERIC_RT_STARTS,
              "Gompertz growth dV/dt = lambda_gr V log(K/V)")


def _radial_models(dim: int) -> dict[str, GrowthModel]:
    out = {}
    for rt in (False, True):
        name = "linear_radial" + ("_rt" if rt else "")
        out[name] = GrowthModel(
            name, ("speed",), ((-0.01, 0.2),), (0.003,), _radial_logflow(dim), _radial_rhs(dim), rt,
            GENERIC_RT_BOUNDS if rt else (), GENERIC_RT_STARTS if rt else (),
            f"radius linear in time, size = (V0^(1/{dim}) + speed t)^{dim} (constant-speed front)"
            + (" + RT kill and delayed decay" if rt else ""),
        )
    return out


_RADIAL = {2: _radial_models(2), 3: _radial_models(3)}
MODELS.update(_RADIAL[2])


def model_names() -> list[str]:
    """Registered model names (``auto`` is handled by the fit, not here)."""
    return list(MODELS)


def get_model(name: str, size_kind: str = "area") -> GrowthModel:
    """The model registered as ``name``; linear-radial uses exponent 2 for areas, 3 for volumes."""
    if name.startswith("linear_radial") and size_kind in ("volume", "voxels"):
        if name in _RADIAL[3]:
            return _RADIAL[3][name]
    if name not in MODELS:
        raise KeyError(f"unknown growth model '{name}'; registered: {', '.join(MODELS)} (or 'auto')")
    return MODELS[name]


# --------------------------------------------------------------------------- closed form
def _kill_time(t_rt: torch.Tensor) -> torch.Tensor:
    return t_rt.clamp_min(0.0)


def simulate_closed_form(model: GrowthModel, theta: torch.Tensor, t: torch.Tensor, t_rt: torch.Tensor) -> torch.Tensor:
    """Normalised size at times ``t`` (closed form). Shapes: theta [..., P], t [..., T], t_rt [...]."""
    v0, law, rtp = model.split(theta)
    logv0 = torch.log(v0)
    t = t.to(theta.dtype)
    log_before = model.logflow(t.clamp_min(0.0), logv0, law)
    if not model.rt:
        return torch.exp(log_before.clamp(-LOG_MAX, LOG_MAX))
    sf, lam_d, delay, slope = rtp
    t_rt = t_rt.to(theta.dtype).unsqueeze(-1)
    tk = _kill_time(t_rt)
    log_at_kill = model.logflow(tk, logv0, law).clamp(-LOG_MAX, LOG_MAX)
    after = t >= tk
    dt = (t - tk).clamp_min(0.0)
    log_living = model.logflow(dt, torch.log(sf) + log_at_kill, law)
    decay = (lam_d / slope) * (logcosh(slope * (t.clamp_min(tk) - t_rt - delay)) - logcosh(slope * (tk - t_rt - delay)))
    log_damaged = torch.log(1.0 - sf.clamp_max(1.0 - 1e-12)) + log_at_kill - decay  # (not log1p: see logcosh)
    total_after = torch.exp(log_living.clamp(-LOG_MAX, LOG_MAX)) + torch.exp(log_damaged.clamp(-LOG_MAX, LOG_MAX))
    total_before = torch.exp(log_before.clamp(-LOG_MAX, LOG_MAX))
    return torch.where(after, total_after, total_before).clamp(math.exp(-LOG_MAX), math.exp(LOG_MAX))


# --------------------------------------------------------------------------- torchdiffeq ODE
def simulate_ode(
    model: GrowthModel,
    theta: torch.Tensor,
    t: torch.Tensor,
    t_rt: torch.Tensor,
    method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict | None = None,
) -> torch.Tensor:
    """The same model integrated with ``torchdiffeq.odeint``, piecewise across the RT kill.

    Batched: each problem's time axis is mapped to solver time ``s``: ``[0, t_k] -> [0, 1]`` before
    the kill and ``[t_k, t_end] -> [1, 2]`` after it, so one ``odeint`` call covers every problem, the
    kill is applied to all states at ``s = 1``, and gradients flow through the solver.
    ``theta [..., P]``, ``t [..., T]`` (non-negative), ``t_rt [...]``.
    """
    from torchdiffeq import odeint

    dtype = theta.dtype
    batch = torch.broadcast_shapes(theta.shape[:-1], t.shape[:-1], t_rt.shape)
    T = t.shape[-1]
    th = theta.expand(*batch, theta.shape[-1]).reshape(-1, theta.shape[-1])
    tt = t.to(dtype).expand(*batch, T).reshape(-1, T).clamp_min(0.0)
    tr = t_rt.to(dtype).expand(batch).reshape(-1)
    n = th.shape[0]
    v0, law, rtp = model.split(th)  # each [n, 1]
    law = [p[:, 0] for p in law]
    t_end = tt.max(dim=-1).values.clamp_min(1e-9)
    if model.rt:
        sf, lam_d, delay, slope = (p[:, 0] for p in rtp)
        tk = _kill_time(tr)
        kills = tk <= t_end  # the kill happens within the queried span
    else:
        tk = torch.full_like(tr, NO_RT)
        kills = torch.zeros_like(tr, dtype=torch.bool)
    t_a = torch.where(kills, tk, t_end)  # length of segment A
    span_b = torch.where(kills, (t_end - tk).clamp_min(1e-9), torch.ones_like(t_end))
    seg_b = kills.unsqueeze(-1) & (tt >= tk.unsqueeze(-1))
    s_query = torch.where(seg_b, 1.0 + (tt - tk.unsqueeze(-1)) / span_b.unsqueeze(-1),
                          tt / t_a.clamp_min(1e-12).unsqueeze(-1))
    s_query = torch.where(~seg_b & (t_a.unsqueeze(-1) <= 0), torch.zeros_like(s_query), s_query)
    def rhs_a(s, y):
        vl = y[:, 0]
        return torch.stack([t_a * model.rhs(vl, law), torch.zeros_like(vl)], dim=-1)

    def rhs_b(s, y):
        vl, vd = y[:, 0], y[:, 1]
        tr_s = tk + (s - 1.0) * span_b
        dvl = model.rhs(vl, law)
        if model.rt:
            dvd = -torch.tanh(slope * (tr_s - tr - delay)) * lam_d * vd
        else:
            dvd = torch.zeros_like(vd)
        scale = torch.where(kills, span_b, torch.zeros_like(span_b))
        return torch.stack([scale * dvl, scale * dvd], dim=-1)

    opts = dict(options or {})
    y0 = torch.stack([v0[:, 0], torch.zeros_like(v0[:, 0])], dim=-1)
    grid_a = torch.unique(torch.cat([s_query[~seg_b].detach(), s_query.new_tensor([0.0, 1.0])])).sort().values
    grid_a = grid_a[(grid_a >= 0) & (grid_a <= 1)]
    ys_a = odeint(rhs_a, y0, grid_a, method=method, rtol=rtol, atol=atol, options=opts)  # [Ga, n, 2]
    out = torch.empty(n, T, dtype=dtype, device=theta.device)
    idx_a = torch.searchsorted(grid_a, s_query.detach().clamp(0, 1).contiguous())
    size_a = ys_a.sum(-1).transpose(0, 1)  # [n, Ga]
    out = torch.gather(size_a, 1, idx_a.clamp_max(grid_a.numel() - 1))
    if model.rt and bool(kills.any()):
        y_k = ys_a[-1]
        vl_k = y_k[:, 0]
        y1 = torch.stack([torch.where(kills, sf * vl_k, vl_k), torch.where(kills, (1 - sf) * vl_k, y_k[:, 1])], dim=-1)
        grid_b = torch.unique(torch.cat([s_query[seg_b].detach(), s_query.new_tensor([1.0, 2.0])])).sort().values
        ys_b = odeint(rhs_b, y1, grid_b, method=method, rtol=rtol, atol=atol, options=opts)
        size_b = ys_b.sum(-1).transpose(0, 1)
        idx_b = torch.searchsorted(grid_b, s_query.detach().clamp(1, 2).contiguous())
        out = torch.where(seg_b, torch.gather(size_b, 1, idx_b.clamp_max(grid_b.numel() - 1)), out)
    out = torch.nan_to_num(out, nan=math.exp(LOG_MAX), posinf=math.exp(LOG_MAX), neginf=0.0)
    return out.clamp(math.exp(-LOG_MAX), math.exp(LOG_MAX)).reshape(*batch, T)


def simulate(model: GrowthModel | str, theta: torch.Tensor, t: torch.Tensor, t_rt: torch.Tensor | float = NO_RT,
             integrator: str = "closed_form", size_kind: str = "area", **ode_kwargs) -> torch.Tensor:
    """Normalised sizes at ``t`` for parameters ``theta`` (closed form or ``odeint``)."""
    if isinstance(model, str):
        model = get_model(model, size_kind)
    if not torch.is_tensor(theta):
        theta = torch.as_tensor(theta, dtype=torch.float64)
    t = torch.as_tensor(t, dtype=theta.dtype, device=theta.device)
    t_rt = torch.as_tensor(t_rt, dtype=theta.dtype, device=theta.device)
    if integrator == "closed_form":
        return simulate_closed_form(model, theta, t, t_rt)
    if integrator == "odeint":
        return simulate_ode(model, theta, t, t_rt, **ode_kwargs)
    raise ValueError(f"integrator must be closed_form or odeint, got '{integrator}'")
