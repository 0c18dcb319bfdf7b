"""Image and segmentation metrics (imports with torch + numpy + scipy; torchmetrics loaded on use).

Images are tensors ``[H, W]``, ``[C, H, W]`` or ``[B, C, H, W]`` (intensities in [-1, 1] by default,
``data_range = 2``); masks are boolean/0-1 arrays ``[H, W]`` (numpy or torch). ``spacing`` is the physical
pixel size (row, col) in mm.

* :func:`ssim`: torchmetrics' SSIM (Gaussian window, sigma 1.5, reflect padding) computed once as a full
  SSIM map and averaged over the whole slice or over a region (``mask``, e.g. the brain); a region mean is
  not something torchmetrics returns, hence the map.
* :func:`psnr`, :func:`mae`, :func:`mse`: optionally restricted to a mask.
* :func:`dice`: ``2|A n B| / (|A| + |B|)``; both masks empty -> 1.0 (perfect agreement on "no tumour"),
  one empty -> 0.0. Own code: a two-line formula whose empty-mask convention we want explicit.
  :func:`dice_per_sample` is the same for a batch of torch masks (the one implementation; the segmenter's
  validation uses it).
* :func:`hd95`: symmetric 95th-percentile Hausdorff distance in mm between the mask boundaries, as MONAI
  defines it: ``max(P95 d(dA -> dB), P95 d(dB -> dA))`` over boundary pixels (pixels of the mask with a
  4-neighbour outside it), distances from scipy's exact Euclidean distance transform with ``sampling =
  spacing``. Both empty -> 0.0; exactly one empty -> ``inf`` (undefined; pass ``one_empty=`` to report a
  finite penalty instead, e.g. ``one_empty="diagonal"``: the image diagonal in mm). Own code because torchmetrics' ``hausdorff_distance``
  has no percentile and MONAI is not a dependency. :func:`mean_hd95`: the mean over a batch of masks with
  the finite ``"diagonal"`` penalty, and the share of pairs it applied to (the segmenter's validation).
* :func:`probability_map_scores`: Dice and HD95 of a probability map thresholded at each level
  (``p >= level``) against the real follow-up tumour.
* :func:`area_error`: signed and absolute relative error of generated vs target areas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "ssim",
    "ssim_map",
    "foreground",
    "psnr",
    "mae",
    "mse",
    "dice",
    "dice_per_sample",
    "hd95",
    "mean_hd95",
    "surface_distances",
    "probability_map_scores",
    "area_error",
]


def _as4d(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected an image [H,W], [C,H,W] or [B,C,H,W], got shape {tuple(x.shape)}")
    return x.double() if not x.is_floating_point() else x


def _mask4d(mask, like: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to(like.device)
    m = m.bool()
    while m.ndim < 4:
        m = m.unsqueeze(0)
    return m.expand_as(like)


def ssim_map(pred, target, data_range: float = 2.0, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM ``[B, C, H, W]`` (torchmetrics, Gaussian window, reflect-padded borders)."""
    # torchmetrics on use only: tgrowth.metrics imports with torch + numpy + scipy (the GPU benchmarks' set)
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    p, t = _as4d(pred), _as4d(target)
    if p.shape != t.shape:
        raise ValueError(f"ssim: shapes differ {tuple(p.shape)} vs {tuple(t.shape)}")
    dtype = torch.promote_types(p.dtype, t.dtype)
    _, full = tm_ssim(p.to(dtype), t.to(dtype), data_range=data_range, sigma=sigma, return_full_image=True,
                      reduction="none")
    return full


def ssim(pred, target, mask=None, data_range: float = 2.0, sigma: float = 1.5) -> float:
    """Mean SSIM over the whole slice, or over the pixels where ``mask`` is true (e.g. the brain).

    Channels are averaged. An empty mask gives nan.
    """
    full = ssim_map(pred, target, data_range, sigma)
    if mask is None:
        return float(full.mean())
    m = _mask4d(mask, full)
    if not bool(m.any()):
        return math.nan
    return float(full[m].mean())


def foreground(image: torch.Tensor, background: float = -1.0, tol: float = 1e-3, keepdim: bool = False) -> torch.Tensor:
    """The brain region of normalised images: pixels where any contrast is above the background value.

    ``image`` is ``[C, H, W]`` or ``[B, C, H, W]`` (tgrowth's normalisation puts everything outside the brain
    at -1); the channel axis (-3) is reduced, kept as size 1 with ``keepdim``.
    """
    return (image > background + tol).any(dim=-3, keepdim=keepdim)


def _masked(pred, target, mask):
    p, t = _as4d(pred), _as4d(target)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ {tuple(p.shape)} vs {tuple(t.shape)}")
    d = (p.double() - t.double())
    if mask is not None:
        d = d[_mask4d(mask, d)]
    return d


def mae(pred, target, mask=None) -> float:
    """Mean absolute error (over ``mask`` if given)."""
    return float(_masked(pred, target, mask).abs().mean())


def mse(pred, target, mask=None) -> float:
    """Mean squared error (over ``mask`` if given)."""
    return float(_masked(pred, target, mask).pow(2).mean())


def psnr(pred, target, data_range: float = 2.0, mask=None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``; identical images give inf."""
    m = mse(pred, target, mask)
    return math.inf if m == 0 else 10.0 * math.log10(data_range**2 / m)


def _np_mask(m) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().numpy()
    m = np.asarray(m)
    return m.astype(bool) if m.dtype == bool or np.issubdtype(m.dtype, np.integer) else m > 0.5


def dice_per_sample(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Dice of each pair of masks ``[B, ...]`` (bool or 0/1 tensors) as float64 ``[B]``; both empty -> 1.0,
    one empty -> 0.0 (the counts are exact in float64, so a float32 cast equals float32 arithmetic)."""
    if pred.shape != gt.shape:
        raise ValueError(f"dice: shapes differ {tuple(pred.shape)} vs {tuple(gt.shape)}")
    p, g = pred.flatten(1).double(), gt.flatten(1).double()
    inter, total = (p * g).sum(1), p.sum(1) + g.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def dice(pred, gt) -> float:
    """Dice of two binary masks (numpy or torch; probabilities count above 0.5); both empty -> 1.0, one
    empty -> 0.0."""
    a, b = _np_mask(pred), _np_mask(gt)
    if a.shape != b.shape:
        raise ValueError(f"dice: shapes differ {a.shape} vs {b.shape}")
    return float(dice_per_sample(*(torch.from_numpy(np.ascontiguousarray(m))[None] for m in (a, b)))[0])


def _boundary(m: np.ndarray) -> np.ndarray:
    return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(m.ndim, 1),
                                       border_value=0)


def surface_distances(pred, gt, spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each boundary pixel of ``pred`` to the nearest boundary pixel of ``gt``, and back."""
    a, b = _np_mask(pred), _np_mask(gt)
    if a.shape != b.shape:
        raise ValueError(f"hd95: shapes differ {a.shape} vs {b.shape}")
    spacing = tuple(float(s) for s in (spacing if spacing is not None else [1.0] * a.ndim))
    if len(spacing) != a.ndim:
        raise ValueError(f"spacing {spacing} does not match a {a.ndim}-D mask")
    ba, bb = _boundary(a), _boundary(b)
    dt_b = ndimage.distance_transform_edt(~bb, sampling=spacing)
    dt_a = ndimage.distance_transform_edt(~ba, sampling=spacing)
    return dt_b[ba], dt_a[bb]


def hd95(pred, gt, spacing: Sequence[float] | None = None, percentile: float = 95.0,
         one_empty: float | str = math.inf) -> float:
    """Symmetric percentile Hausdorff distance (mm) between mask boundaries (see module docstring).

    Both masks empty -> 0.0; exactly one empty -> ``one_empty`` (default inf; ``"diagonal"``: the image
    diagonal in mm, the finite penalty ``tgrowth predict`` and segmenter validation use).
    """
    a, b = _np_mask(pred), _np_mask(gt)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        if one_empty == "diagonal":
            sp = spacing if spacing is not None else [1.0] * a.ndim
            return float(math.hypot(*(n * float(s) for n, s in zip(a.shape, sp))))
        return float(one_empty)
    d_ab, d_ba = surface_distances(a, b, spacing)
    return float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))


def mean_hd95(pred: torch.Tensor, gt: torch.Tensor, spacing: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean HD95 (mm) of masks ``pred`` vs ``gt`` [B, H, W] and the fraction of pairs with exactly one empty.

    ``spacing`` is ``[B, 2]`` (row, col) mm (None: 1 mm pixels). Both masks empty count 0 mm; exactly one
    empty counts the image diagonal in mm (:func:`hd95` with ``one_empty="diagonal"``, as ``tgrowth
    predict``). Both results are float32 scalars.
    """
    b = gt.shape[0]
    sp = torch.ones(b, 2, dtype=torch.float64) if spacing is None else spacing.detach().cpu().double().view(-1, 2)
    if sp.shape[0] != b:
        raise ValueError(f"spacing has {sp.shape[0]} rows for {b} masks")
    p, g = pred.detach().cpu().bool().numpy(), gt.detach().cpu().bool().numpy()
    vals = [hd95(p[i], g[i], (float(sp[i, 0]), float(sp[i, 1])), one_empty="diagonal") for i in range(b)]
    one = sum(int(p[i].any() != g[i].any()) for i in range(b))
    return torch.tensor(sum(vals) / b, dtype=torch.float32), torch.tensor(one / b, dtype=torch.float32)


def probability_map_scores(prob, gt, spacing: Sequence[float] | None = None,
                           levels: Sequence[float] = (0.5,), one_empty: float | str = math.inf) -> dict[float, dict]:
    """``{level: {"dice", "hd95", "area_px"}}`` of ``prob >= level`` against the real tumour mask ``gt``."""
    p = prob.detach().cpu().numpy() if isinstance(prob, torch.Tensor) else np.asarray(prob)
    g = _np_mask(gt)
    out = {}
    for lv in levels:
        m = p >= lv
        out[float(lv)] = {"dice": dice(m, g), "hd95": hd95(m, g, spacing, one_empty=one_empty),
                          "area_px": int(m.sum())}
    return out


def area_error(generated, target) -> dict[str, torch.Tensor]:
    """``{"rel": (gen - target) / target, "abs_rel": |rel|}`` elementwise (tensors, broadcast)."""
    g = torch.as_tensor(generated, dtype=torch.float64)
    t = torch.as_tensor(target, dtype=torch.float64)
    rel = (g - t) / t
    return {"rel": rel, "abs_rel": rel.abs()}
