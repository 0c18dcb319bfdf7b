"""DDIM sampling, deterministic DDIM inversion and "known-image" sampling (pure torch, no Lightning).

Notation (Song et al., DDIM): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with ``abar_t`` from a
:class:`~tgrowth.diffusion.schedule.NoiseSchedule`; step index ``t = -1`` means "clean" (``abar = 1``).

* :func:`ddim_step` moves ``x_t -> x_s`` (``s < t``) given the eps prediction::

      x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
      sigma  = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)
      x_s    = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps + sigma z

  ``t``, ``s`` and ``eta`` may be scalars or per-sample ``[B]`` tensors.
* :func:`ddim_invert` runs the deterministic (eta = 0) update the other way, ``x_s -> x_t`` with ``t > s``.
  Exact inversion of the eta = 0 sampler needs ``eps(x_t, t)`` at the unknown ``x_t``. ``order=1`` uses
  ``eps(x_s, s)`` (the usual DDIM inversion, as the authors do; first order in the step size);
  ``order=2`` (default) extrapolates linearly in log-SNR from the last two evaluations,
  ``eps(x_s, s) + (eps(x_s, s) - eps(x_r, r)) (lambda_t - lambda_s) / (lambda_s - lambda_r)`` with
  ``lambda = log(abar / (1 - abar)) / 2`` -- second order at no extra model call (a 5-20x smaller
  round-trip error, see tests/test_sampler.py). ``refine_iters > 0`` additionally solves the implicit
  equation ``x_s = ddim_step(x_t, eps(x_t, t))`` by fixed-point iteration so that a later eta = 0 sampling
  run retraces the inversion exactly (at ``refine_iters`` extra model calls per step).
* :func:`sample_known_image` is the authors' inference: encode the prior scan to noise level ``L`` (the
  state after ``L`` of the ``T`` forward steps, i.e. step index ``L - 1``) either by deterministic
  inversion (``encode="invert"``) or by q-sampling (``encode="qsample"``, stochastic), then run
  ``num_steps`` respaced DDIM steps back to the clean image. At every step the guidance callbacks
  (:mod:`tgrowth.diffusion.guidance`) see the state and may replace the eps prediction.

The sequence of visited steps is ``schedule.timesteps(num_steps, start=L - 1)`` followed by the clean
state (-1); inversion visits the same sequence in reverse, so ``num_steps`` model calls each way.

The model is any callable ``model(x, t, y=None) -> eps`` with ``t`` a ``[B]`` long tensor; an output with
twice the input channels (learned sigma, as in ADM) is cut to its first half.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tgrowth.diffusion.schedule import NoiseSchedule, broadcast_batch

__all__ = [
    "DiffusionStep",
    "ddim_sigma",
    "ddim_step",
    "ddim_invert",
    "encode_prior",
    "sample_known_image",
    "sampling_steps",
    "CLIP_STAGES",
    "RowNoise",
    "key_seed",
]


def key_seed(*parts: object) -> int:
    """A 63-bit seed from any key parts, e.g. ``key_seed(seed, subject, generation)`` (stable across runs,
    processes and platforms: SHA-256 of the parts joined by ':')."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class RowNoise:
    """Gaussian noise keyed per sample: row ``r`` of a run draws from its own generator seeded ``seeds[r]``.

    Pass it as ``generator=`` to :func:`sample_known_image` / :func:`encode_prior`. A row's noise (its
    q-sample start, then one draw per stochastic step) then depends on its seed only, never on which other
    rows share its batch: splitting a run into chunks of any size gives the same samples, and two runs that
    give row ``i`` the same seed (e.g. two methods of a paired comparison) share its noise (common random
    numbers). ``seeds`` is a length-N sequence of ints (the whole run); ``rows`` index it.
    """

    def __init__(self, seeds: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu"):
        self.seeds = [int(v) for v in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
        self.device = torch.device(device)
        self._gens: dict[int, torch.Generator] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    def _gen(self, row: int) -> torch.Generator:
        g = self._gens.get(row)
        if g is None:
            if not 0 <= row < len(self.seeds):
                raise ValueError(f"RowNoise has {len(self.seeds)} seeds but row {row} was asked for")
            g = self._gens[row] = torch.Generator(device=self.device).manual_seed(self.seeds[row])
        return g

    def randn(self, shape: Sequence[int], rows: torch.Tensor | Sequence[int], dtype: torch.dtype = torch.float32
              ) -> torch.Tensor:
        """``[len(rows), *shape[1:]]`` noise, row i drawn from the generator of ``rows[i]``."""
        rows = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
        if len(rows) != shape[0]:
            raise ValueError(f"noise for {shape[0]} samples asked with {len(rows)} row indices")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=self._gen(r), device=self.device, dtype=dtype)
                            for r in rows])


def _randn(shape: Sequence[int], generator, rows: torch.Tensor | None, device, dtype) -> torch.Tensor:
    """Noise from a plain ``torch.Generator`` (or the global RNG), or per row from a :class:`RowNoise`."""
    if isinstance(generator, RowNoise):
        rows = torch.arange(shape[0]) if rows is None else rows
        return generator.randn(shape, rows, dtype).to(device)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def ddim_sigma(abar_t: torch.Tensor, abar_s: torch.Tensor, eta: torch.Tensor | float) -> torch.Tensor:
    """DDIM's sigma_{t->s}(eta); eta = 1 is the DDPM posterior std, eta = 0 deterministic."""
    return eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).clamp(min=0).sqrt()


def ddim_step(
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor | int,
    t_prev: torch.Tensor | int,
    eta: torch.Tensor | float = 0.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: float | None = None,
) -> torch.Tensor:
    """One DDIM update ``x_t -> x_{t_prev}`` (``t_prev < t``; -1 = clean). Per-sample ``t``/``t_prev``/``eta``.

    ``noise`` (or a draw from ``generator``) is used only where ``eta > 0``. ``clip_denoised`` clamps the
    x0 prediction to ``[-c, c]`` and recomputes eps from it (as guided-diffusion does); None leaves it.
    """
    abar_t, abar_s = schedule.abar(t, like=x_t), schedule.abar(t_prev, like=x_t)
    x0 = schedule.predict_x0(x_t, eps, t)
    if clip_denoised is not None:
        x0 = x0.clamp(-clip_denoised, clip_denoised)
        eps = schedule.eps_from_x0(x_t, x0, t)
    eta_t = broadcast_batch(eta, x_t)
    sigma = ddim_sigma(abar_t, abar_s, eta_t)
    out = abar_s.sqrt() * x0 + (1 - abar_s - sigma**2).clamp(min=0).sqrt() * eps
    if noise is None and not (isinstance(eta, (int, float)) and eta == 0) and bool((eta_t != 0).any()):
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
    if noise is not None:  # sigma is 0 where eta is 0, so those rows are unchanged
        out = out + sigma * noise
    return out


def sampling_steps(schedule: NoiseSchedule, noise_level: int, num_steps: int) -> torch.Tensor:
    """The steps a known-image run visits: ``timesteps(num_steps, start=noise_level - 1)`` then -1 (clean)."""
    if not 1 <= noise_level <= schedule.num_train_steps:
        raise ValueError(f"noise_level must be in [1, {schedule.num_train_steps}], got {noise_level}")
    ts = schedule.timesteps(num_steps, start=noise_level - 1)
    return torch.cat([ts, ts.new_tensor([-1])])


@dataclass
class DiffusionStep:
    """What a guidance callback sees at one sampling step (all tensors batch-first, ``B`` samples).

    ``t``/``t_prev`` are ``[B]`` long step indices, ``abar_t``/``abar_prev`` ``[B, 1, 1, 1]``; ``eps`` and
    ``x0`` are the current (possibly already adjusted by earlier callbacks) eps and x0 predictions;
    ``rows`` are the samples' row indices in the whole run (so per-sample targets/scales of length N can be
    indexed when a run is processed in chunks); ``state`` is this callback's own dict, kept across steps of
    one run; ``eps_fn(x, t)`` re-runs the denoiser (for guidance that differentiates through it).
    """

    x_t: torch.Tensor
    t: torch.Tensor
    t_prev: torch.Tensor
    abar_t: torch.Tensor
    abar_prev: torch.Tensor
    eps: torch.Tensor
    x0: torch.Tensor
    index: int
    num_steps: int
    rows: torch.Tensor
    x_prior: torch.Tensor | None
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    state: dict = field(default_factory=dict)


class _EpsModel:
    """Wraps ``model(x, t, y)`` with autocast, channels_last, float32 output and learned-sigma cutting."""

    def __init__(self, model, y, autocast_dtype, channels_last):
        self.model, self.y = model, y
        self.autocast_dtype, self.channels_last = autocast_dtype, channels_last

    def _y(self, batch: int):
        y = self.y
        if y is None:
            return None
        y = torch.as_tensor(y)
        if y.ndim == 0 or y.shape[0] == 1:
            y = y.reshape(1).expand(batch)
        return y

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: Any = "default") -> torch.Tensor:
        t = t.clamp(min=0).long().to(x.device)  # the clean state (-1) is fed to the network as step 0
        yy = self._y(x.shape[0]) if isinstance(y, str) else y
        if yy is not None:
            yy = yy.to(x.device)
        xin = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        if self.autocast_dtype is not None:
            ctx = torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)
        else:
            ctx = contextlib.nullcontext()
        with ctx:
            eps = self.model(xin, t) if yy is None else self.model(xin, t, yy)
        if eps.shape[1] == 2 * x.shape[1]:
            eps = eps[:, : x.shape[1]]
        return eps.to(x.dtype)


class _ClampedEps:
    """An eps model whose x0 prediction is clamped to ``[-c, c]`` (eps recomputed from the clamped x0)."""

    def __init__(self, f, schedule: NoiseSchedule, c: float):
        self.f, self.schedule, self.c = f, schedule, float(c)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: Any = "default") -> torch.Tensor:
        eps, t = self.f(x, t, y), t.clamp(min=0)  # the model reads -1 (clean) as step 0, so does this
        x0 = self.schedule.predict_x0(x, eps, t).clamp(-self.c, self.c)
        return self.schedule.eps_from_x0(x, x0, t).to(x.dtype)


CLIP_STAGES = ("step", "denoiser")


def _half_log_snr(abar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (abar.log() - (-abar).log1p())


def ddim_invert(
    model,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    noise_level: int = 200,
    num_steps: int = 200,
    y=None,
    refine_iters: int = 0,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    order: int = 2,
) -> torch.Tensor:
    """Deterministic DDIM inversion of clean images ``x0`` [B, C, H, W] to noise level ``noise_level``.

    Visits the steps of :func:`sampling_steps` in reverse. Each update ``x_s -> x_t`` is
    ``sqrt(abar_t) x0_hat(x_s, eps) + sqrt(1 - abar_t) eps``, with ``eps = eps(x_s, s)`` for ``order=1``
    (the usual DDIM inversion) or, for ``order=2``, that value extrapolated linearly in log-SNR to step
    ``t`` from the previous evaluation (no extra model call; the first step, from the clean state, is
    first order). With ``refine_iters = k`` the eps is then re-evaluated ``k`` times at the current
    ``x_t`` guess (fixed point of the eta = 0 sampling step), which makes inversion followed by sampling
    exact in the limit.
    """
    if order not in (1, 2):
        raise ValueError(f"inversion order must be 1 or 2, got {order!r}")
    if refine_iters < 0:
        raise ValueError(f"refine_iters must be >= 0, got {refine_iters}")
    f = _EpsModel(model, y, autocast_dtype, channels_last)
    steps = sampling_steps(schedule, noise_level, num_steps).flip(0)  # -1, ..., L - 1
    x = x0
    b = x.shape[0]
    prev: tuple[torch.Tensor, torch.Tensor] | None = None  # (eps, lambda) of the previous noisy step
    with torch.no_grad():
        for s, t in zip(steps[:-1].tolist(), steps[1:].tolist()):
            ts, tt = torch.full((b,), s, dtype=torch.long), torch.full((b,), t, dtype=torch.long)
            abar_s, abar_t = schedule.abar(s, like=x), schedule.abar(t, like=x)
            eps = eps_s = f(x, ts)
            if order == 2 and s >= 0:
                lam_s, lam_t = _half_log_snr(abar_s.double()), _half_log_snr(abar_t.double())
                if prev is not None:
                    eps = eps_s + (eps_s - prev[0]) * ((lam_t - lam_s) / (lam_s - prev[1])).to(x.dtype)
                prev = (eps_s, lam_s)
            xt = schedule.q_sample(schedule.predict_x0(x, eps, s), t, eps)
            for _ in range(refine_iters):
                eps = f(xt, tt)
                xt = schedule.q_sample(schedule.predict_x0(x, eps, s), t, eps)
            x = xt
    return x


def encode_prior(
    model,
    schedule: NoiseSchedule,
    x_prior: torch.Tensor,
    noise_level: int,
    num_steps: int,
    encode: str = "invert",
    generator: torch.Generator | None = None,
    num_samples: int | None = None,
    y=None,
    refine_iters: int = 0,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    invert_order: int = 2,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The prior scan(s) at noise level L: inverted once per distinct prior, or q-sampled per sample.

    With ``num_samples`` and a single prior ``[1, C, H, W]`` the result is expanded to ``num_samples``
    rows (the deterministic inversion is computed once, not per generation). ``generator`` may be a
    :class:`RowNoise` (then ``rows`` are the samples' indices in it; default ``arange``).
    """
    if x_prior.ndim != 4:
        raise ValueError(f"x_prior must be [B, C, H, W], got shape {tuple(x_prior.shape)}")
    n = x_prior.shape[0] if num_samples is None else int(num_samples)
    if x_prior.shape[0] not in (1, n):
        raise ValueError(f"x_prior has {x_prior.shape[0]} rows; expected 1 or num_samples={n}")
    if encode == "invert":
        y_enc = y
        if x_prior.shape[0] == 1 and y is not None and torch.as_tensor(y).ndim > 0:
            y_enc = torch.as_tensor(y).reshape(-1)[:1]
        x = ddim_invert(model, schedule, x_prior, noise_level, num_steps, y=y_enc, refine_iters=refine_iters,
                        autocast_dtype=autocast_dtype, channels_last=channels_last, order=invert_order)
        return x.expand(n, *x.shape[1:]).clone()
    if encode == "qsample":
        x = x_prior.expand(n, *x_prior.shape[1:])
        noise = _randn(x.shape, generator, rows, x.device, x.dtype)
        return schedule.q_sample(x, torch.full((n,), noise_level - 1, dtype=torch.long), noise)
    raise ValueError(f"encode must be 'invert' or 'qsample', got {encode!r}")


def _known_region(keep_mask: torch.Tensor | None, schedule: NoiseSchedule, x_l: torch.Tensor, prior: torch.Tensor,
                  start: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(keep, z)`` for anatomy-preserving sampling (None, None without a mask): the mask in ``x_l``'s dtype
    with leading singleton dimensions, and the noise of each sample's encoding ``x_l`` of the prior at step
    ``start``."""
    if keep_mask is None:
        return None, None
    keep = torch.as_tensor(keep_mask, device=x_l.device, dtype=x_l.dtype)
    while keep.ndim < x_l.ndim:
        keep = keep.unsqueeze(0)
    if bool(((keep < 0) | (keep > 1)).any()):
        raise ValueError("keep_mask values must be in [0, 1]")
    return keep, schedule.eps_from_x0(x_l, prior, start)


def sample_known_image(
    model, schedule: NoiseSchedule, x_prior: torch.Tensor, noise_level: int = 200, num_steps: int = 200,
    eta: torch.Tensor | float = 0.0, encode: str = "invert", callbacks: Sequence = (),
    generator: torch.Generator | None = None, y=None, num_samples: int | None = None,
    invert_steps: int | None = None, refine_iters: int = 0, clip_denoised: float | None = None,
    autocast_dtype: torch.dtype | None = None, channels_last: bool = False, rows: torch.Tensor | None = None,
    x_start: torch.Tensor | None = None, invert_order: int = 2, keep_mask: torch.Tensor | None = None,
    clip_stage: str = "step",
) -> torch.Tensor:
    """The authors' inference: encode ``x_prior`` to noise level ``noise_level``, then guided DDIM to 0.

    Args:
        model: ``model(x, t, y=None) -> eps``; put it in eval mode (and compile it) before calling.
        x_prior: ``[B, C, H, W]`` prior scan(s); with ``num_samples`` a single ``[1, ...]`` prior is shared
            by ``num_samples`` generations (batch = generations x guidance settings).
        noise_level: L of T; the authors use 200 of 1000.
        num_steps: respaced DDIM steps from L to 0 (25, 50, 100, 200, ...).
        eta: stochasticity (scalar or per-sample ``[B]``); 0 is deterministic DDIM.
        encode: "invert" (deterministic DDIM inversion, the authors' choice) or "qsample" (stochastic).
        callbacks: guidance callbacks ``cb(step: DiffusionStep) -> eps | None``, applied in order.
        generator: the source of all randomness (q-sample noise and eta > 0 noise) for reproducibility: a
            ``torch.Generator``, or a :class:`RowNoise` keyed per sample (indexed by ``rows``) so that results
            do not depend on how a run is split into batches.
        y: class label(s) for a class-conditional model (scalar or ``[B]``).
        invert_steps: steps of the inversion (default ``num_steps``).
        refine_iters: fixed-point refinement iterations of the inversion (see :func:`ddim_invert`).
        invert_order: 1 (plain DDIM inversion, the authors') or 2 (log-SNR extrapolated eps, same cost).
        clip_denoised: clamp the x0 prediction to ``[-c, c]`` at each step (None: no clamp).
        clip_stage: where ``clip_denoised`` clamps. ``"step"``: the x0 of each DDIM step, after the guidance
            callbacks (guided-diffusion's ``clip_denoised``; the clamp can take back part of a guidance step).
            ``"denoiser"``: the denoiser's own x0 prediction, before the callbacks, which then see an in-range
            x0 (and an ``eps_fn`` that clamps too) and whose step is kept as it is.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the model under autocast (state kept in float32).
        channels_last: feed the model channels-last tensors (convert the model too for full effect).
        rows: the samples' indices in the whole run, passed to callbacks (default ``arange(B)``).
        x_start: skip encoding and start from this ``x_L`` (e.g. an inversion computed once and reused).
        keep_mask: anatomy-preserving sampling (RePaint-style known-region conditioning): ``[H, W]`` or
            ``[B|1, 1, H, W]`` in [0, 1], 1 where the output must be the prior scan. After every step to ``s``
            the sample becomes ``keep * (sqrt(abar_s) x_prior + sqrt(1 - abar_s) z) + (1 - keep) * x_s``, where
            ``z = (x_L - sqrt(abar_L) x_prior) / sqrt(1 - abar_L)`` is the noise of the sample's own encoding
            (q-sample or inversion), so the known region follows one consistent noisy trajectory of the prior
            and ends exactly on it (abar = 1 at the clean state); a soft edge (values between 0 and 1) blends
            the generated change zone into it.

    Returns:
        The generated clean images ``[B, C, H, W]`` in the dtype of ``x_prior``.
    """
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"guidance callback {cb!r} is not callable")
    if clip_stage not in CLIP_STAGES:
        raise ValueError(f"unknown clip_stage {clip_stage!r}; choose one of {list(CLIP_STAGES)}")
    if rows is not None:
        rows = torch.as_tensor(rows, device=x_prior.device)
    if x_start is None:
        x = encode_prior(model, schedule, x_prior, noise_level, invert_steps or num_steps, encode, generator,
                         num_samples, y, refine_iters, autocast_dtype, channels_last, invert_order, rows)
    else:
        x = x_start.clone()
    b = x.shape[0]
    prior = x_prior if x_prior.shape[0] == b else x_prior.expand(b, *x_prior.shape[1:])
    f = _EpsModel(model, y, autocast_dtype, channels_last)
    if clip_denoised is not None and clip_stage == "denoiser":
        f, clip_denoised = _ClampedEps(f, schedule, clip_denoised), None  # clamped once, before the callbacks
    rows = torch.arange(b, device=x.device) if rows is None else rows.to(x.device)
    steps = sampling_steps(schedule, noise_level, num_steps).tolist()
    keep, z_known = _known_region(keep_mask, schedule, x, prior, steps[0])
    states: list[dict] = [{} for _ in callbacks]
    eta_t = broadcast_batch(eta, x)
    stochastic = bool((eta_t != 0).any())  # one host sync per run, not per step
    eta_arg = eta_t.flatten() if eta_t.ndim else float(eta_t)
    with torch.no_grad():
        for i, (t, s) in enumerate(zip(steps[:-1], steps[1:])):
            tt = torch.full((b,), t, dtype=torch.long, device=x.device)
            ss = torch.full((b,), s, dtype=torch.long, device=x.device)
            abar_t, abar_s = schedule.abar(t, like=x), schedule.abar(s, like=x)
            eps = f(x, tt)
            x0 = schedule.predict_x0(x, eps, t)
            for cb, st in zip(callbacks, states):
                new = cb(DiffusionStep(x, tt, ss, abar_t, abar_s, eps, x0, i, len(steps) - 1, rows, prior, f, st))
                if new is not None:
                    eps = new.to(x.dtype)
                    x0 = schedule.predict_x0(x, eps, t)
            noise = _randn(x.shape, generator, rows, x.device, x.dtype) if stochastic else None
            x = ddim_step(schedule, x, eps, t, s, eta_arg, noise=noise, clip_denoised=clip_denoised)
            if keep is not None:
                x = keep * schedule.q_sample(prior, s, z_known) + (1 - keep) * x
    return x
