"""Tumour growth probability maps: N guided generations as batches, segmented, reduced voxel-wise.

:func:`probability_map` draws ``num_generations`` follow-up images from one prior slice with
:func:`tgrowth.diffusion.sampler.sample_known_image` in chunks of ``chunk_size`` rows (one batch each; no
Python loop over generations), segments each generated image with ``segmenter`` and returns the voxel-wise
tumour frequency, the mean and standard-deviation images and the per-generation areas.

Genuinely different generations. The reference implementation inverts the prior deterministically and
samples with eta = 0, so its "different seeds" give (nearly) the same image. Here diversity comes from
``eta > 0`` (fresh noise at every step) and/or ``encode="qsample"`` (a different noisy start per
generation), and from per-generation targets (``AreaGuidance(target=[N])``, e.g. one ODE bootstrap
replicate per generation). With ``encode="invert"`` the inversion is computed once per map and shared.

Reproducibility. All randomness is keyed per generation (:class:`~tgrowth.diffusion.sampler.RowNoise`):
generation ``n`` draws its noise from a generator seeded ``noise_seeds[n]`` (default
``key_seed(seed, n)``), so the same seeds give the same map whatever ``chunk_size`` is, and two maps that
share ``noise_seeds`` share each generation's noise (common random numbers for paired comparisons).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tgrowth.diffusion.sampler import RowNoise, encode_prior, key_seed, sample_known_image
from tgrowth.diffusion.schedule import NoiseSchedule
from tgrowth.diffusion.unet import masks_from_logits

__all__ = ["ProbabilityMap", "probability_map", "segmenter_from_logits"]


@dataclass
class ProbabilityMap:
    """``frequency`` [H, W] in [0, 1]; ``mean``/``std`` [C, H, W] (with ``groups``: a leading group axis);
    ``areas`` [N] (pixels x ``pixel_area``); ``masks`` [N, H, W] bool and ``images`` [N, C, H, W] when kept."""

    frequency: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    areas: torch.Tensor
    masks: torch.Tensor | None = None
    images: torch.Tensor | None = None


def segmenter_from_logits(net: Callable[[torch.Tensor], torch.Tensor], threshold: float = 0.5,
                          mode: str = "sigmoid", autocast_dtype: torch.dtype | None = None
                          ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a segmentation network into an ``images -> [B, H, W] bool`` whole-tumour segmenter.

    ``mode="sigmoid"`` (the convention of :class:`tgrowth.diffusion.unet.Segmenter`: channel 0 is the whole
    tumour logit, further channels optional sub-regions): ``sigmoid(logits[:, 0]) > threshold``
    (:func:`~tgrowth.diffusion.unet.masks_from_logits`, as :meth:`Segmenter.segment`).
    ``mode="argmax"`` (softmax over background + K classes): ``argmax > 0``.
    """
    if mode not in ("sigmoid", "argmax"):
        raise ValueError(f"mode must be 'sigmoid' or 'argmax', got {mode!r}")

    def seg(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if autocast_dtype is not None:
                with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
                    out = net(x)
            else:
                out = net(x)
        out = out.float()
        if out.ndim == 3:
            out = out[:, None]
        if mode == "argmax":
            return out.argmax(1) > 0
        return masks_from_logits(out[:, :1], threshold)[:, 0]

    return seg


def _as_mask(m: torch.Tensor, b: int) -> torch.Tensor:
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3 or m.shape[0] != b:
        raise ValueError(f"segmenter must return [B, H, W] (or [B, 1, H, W]) masks; got {tuple(m.shape)}")
    return m if m.dtype == torch.bool else m >= 0.5


def _prior_rows(x_prior: torch.Tensor, prior_index, keep_mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The checked per-generation prior index ``[N]`` (None with one prior)."""
    if prior_index is None:
        if x_prior.ndim != 4 or x_prior.shape[0] != 1:
            raise ValueError(f"x_prior must be one slice [C, H, W] or [1, C, H, W] (several need prior_index), "
                             f"got {tuple(x_prior.shape)}")
        return None
    if x_prior.ndim != 4:
        raise ValueError(f"x_prior must be [P, C, H, W] with prior_index, got {tuple(x_prior.shape)}")
    idx = torch.as_tensor(prior_index, device=x_prior.device).long().reshape(-1)
    p = x_prior.shape[0]
    if idx.shape != (n,) or bool((idx < 0).any()) or bool((idx >= p).any()):
        raise ValueError(f"prior_index must be {n} indices into the {p} priors, got shape {tuple(idx.shape)}")
    if keep_mask is not None and torch.as_tensor(keep_mask).ndim == 3 and torch.as_tensor(keep_mask).shape[0] != p:
        raise ValueError(f"keep_mask has {torch.as_tensor(keep_mask).shape[0]} masks for {p} priors")
    return idx


def _keep_rows(keep_mask: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The keep masks ``[b, 1, H, W]`` of rows whose priors are ``idx`` (``[H, W]``: one mask for all)."""
    k = torch.as_tensor(keep_mask)
    return k[None, None].expand(idx.shape[0], 1, *k.shape) if k.ndim == 2 else k.to(idx.device)[idx][:, None]


def probability_map(
    model,
    schedule: NoiseSchedule,
    x_prior: torch.Tensor,
    segmenter: Callable[[torch.Tensor], torch.Tensor],
    num_generations: int = 50,
    chunk_size: int | None = None,
    seed: int = 0,
    noise_level: int = 200,
    num_steps: int = 200,
    eta: float | torch.Tensor = 0.5,
    encode: str = "invert",
    callbacks: Sequence = (),
    y=None,
    pixel_area: float = 1.0,
    refine_iters: int = 0,
    invert_order: int = 2,
    clip_denoised: float | None = None,
    clip_stage: str = "step",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    keep_generations: bool = False,
    noise_seeds: Sequence[int] | torch.Tensor | None = None,
    keep_mask: torch.Tensor | None = None,
    groups: Sequence[int] | torch.Tensor | None = None,
    prior_index: Sequence[int] | torch.Tensor | None = None,
) -> ProbabilityMap:
    """N generations from one prior slice -> frequency, mean, std images and per-generation areas.

    Args:
        x_prior: the prior slice ``[C, H, W]`` or ``[1, C, H, W]`` (on the sampling device).
        segmenter: ``images [B, C, H, W] -> masks [B, H, W]`` (bool, or probabilities thresholded at 0.5);
            see :func:`segmenter_from_logits`.
        num_generations: N (the authors: 50 to 100).
        chunk_size: rows per batch (default all N at once); lower it to fit memory.
        eta: per-step stochasticity (scalar or ``[N]``); 0 with ``encode="invert"`` gives N identical images.
        callbacks: guidance callbacks; their per-sample tensors have length N (rows of the whole run).
        pixel_area: area of one pixel (e.g. mm^2) for ``areas``.
        seed, noise_seeds: generation n draws its noise from a generator seeded ``noise_seeds[n]`` (length N;
            default ``key_seed(seed, n)``); results do not depend on ``chunk_size``.
        keep_mask: ``[H, W]`` in [0, 1]: anatomy-preserving sampling, the output equals the prior where it is
            1 (see :func:`~tgrowth.diffusion.sampler.sample_known_image`).
        groups: length-N group index (0..G-1) of each generation, e.g. the method it belongs to when several
            methods share one batched pass: ``frequency``/``mean``/``std`` are then reduced per group
            (``[G, H, W]``, ``[G, C, H, W]``); ``areas`` stays ``[N]``.
        prior_index: length-N index of each generation's prior when ``x_prior`` holds several, ``[P, C, H, W]``
            (e.g. the axial slices of a volume sampled in one pass); ``keep_mask`` may then be ``[P, H, W]``
            (one per prior). With ``encode="invert"`` each prior is inverted once. None: one prior (``[1, C, H, W]``).
        Other arguments as in :func:`~tgrowth.diffusion.sampler.sample_known_image`.
    """
    if x_prior.ndim == 3:
        x_prior = x_prior[None]
    n = int(num_generations)
    if n < 1:
        raise ValueError(f"num_generations must be >= 1, got {n}")
    pidx = _prior_rows(x_prior, prior_index, keep_mask, n)
    chunk = n if chunk_size is None else max(1, min(int(chunk_size), n))
    dev = x_prior.device
    eta_all = torch.as_tensor(eta, dtype=x_prior.dtype, device=dev)
    if eta_all.ndim == 1 and eta_all.shape[0] != n:
        raise ValueError(f"per-generation eta has length {eta_all.shape[0]}, expected {n}")
    y_all = None if y is None else torch.as_tensor(y, device=dev)
    if noise_seeds is None:
        noise_seeds = [key_seed(seed, i) for i in range(n)]
    noise = RowNoise(noise_seeds, device=dev)
    if len(noise) != n:
        raise ValueError(f"noise_seeds has length {len(noise)}, expected num_generations={n}")

    x_enc = None
    if encode == "invert":  # one deterministic inversion shared by all generations
        x_enc = encode_prior(model, schedule, x_prior, noise_level, num_steps, "invert", y=None if y_all is None
                             else y_all.reshape(-1)[:1], num_samples=None if pidx is None else x_prior.shape[0],
                             refine_iters=refine_iters,
                             invert_order=invert_order, autocast_dtype=autocast_dtype, channels_last=channels_last)

    grouped = groups is not None
    group = torch.zeros(n, dtype=torch.long, device=dev) if groups is None else torch.as_tensor(groups, device=dev).long()
    if group.shape != (n,) or bool((group < 0).any()):
        raise ValueError(f"groups must be {n} non-negative group indices, got shape {tuple(group.shape)}")
    n_groups = int(group.max()) + 1
    counts = torch.bincount(group, minlength=n_groups).double()
    if bool((counts == 0).any()):
        raise ValueError(f"groups must use every index 0..{n_groups - 1} (empty: {torch.nonzero(counts == 0).flatten().tolist()})")
    c, h, w = x_prior.shape[1:]
    s1 = torch.zeros(n_groups, c, h, w, dtype=torch.float64, device=dev)
    s2 = torch.zeros_like(s1)
    freq = torch.zeros(n_groups, h, w, dtype=torch.float64, device=dev)
    areas, masks_keep, imgs_keep = [], [], []
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=dev)
        b = rows.shape[0]
        eta_k = eta_all[rows] if eta_all.ndim == 1 else eta_all
        y_k = None if y_all is None else (y_all[rows] if y_all.ndim == 1 and y_all.shape[0] == n else y_all)
        if pidx is None:
            x_k, keep_k = x_prior, keep_mask
            x_start = None if x_enc is None else x_enc.expand(b, -1, -1, -1).clone()
        else:  # each row's own prior (and keep mask)
            x_k, keep_k = x_prior[pidx[rows]], None if keep_mask is None else _keep_rows(keep_mask, pidx[rows])
            x_start = None if x_enc is None else x_enc[pidx[rows]].clone()
        imgs = sample_known_image(model, schedule, x_k, noise_level, num_steps, eta=eta_k, encode=encode,
                                  callbacks=callbacks, generator=noise, y=y_k, num_samples=b,
                                  clip_denoised=clip_denoised, clip_stage=clip_stage, autocast_dtype=autocast_dtype,
                                  channels_last=channels_last, rows=rows, x_start=x_start, keep_mask=keep_k)
        with torch.no_grad():
            m = _as_mask(segmenter(imgs), b)
        imgs64, g = imgs.detach().double(), group[rows]
        s1.index_add_(0, g, imgs64)
        s2.index_add_(0, g, imgs64.pow(2))
        freq.index_add_(0, g, m.double())
        areas.append(m.flatten(1).sum(1).double() * pixel_area)
        if keep_generations:
            masks_keep.append(m.cpu())
            imgs_keep.append(imgs.detach().cpu())
    mean = s1 / counts.view(-1, 1, 1, 1)
    std = (s2 / counts.view(-1, 1, 1, 1) - mean**2).clamp(min=0).sqrt()
    frequency = freq / counts.view(-1, 1, 1)
    if not grouped:
        frequency, mean, std = frequency[0], mean[0], std[0]
    return ProbabilityMap(
        frequency=frequency.float(),
        mean=mean.float(),
        std=std.float(),
        areas=torch.cat(areas).float(),
        masks=torch.cat(masks_keep) if keep_generations else None,
        images=torch.cat(imgs_keep) if keep_generations else None,
    )
