"""MRI rendering and BraTS labels for the phantom, batched over subjects.

Labels (BraTS 2023): 1 necrotic core, 2 oedema / infiltration, 3 enhancing tumour. From the simulated fields
(``u`` cells, ``n`` necrosis, ``d`` treatment damage, ``e`` the oedema field = a Gaussian blur of
``u + n + k_pp d``), inside brain tissue:

- whole tumour: ``max(u + n + d, e) > VISIBLE_THRESHOLD``;
- enhancing: whole tumour and (``u > enh_threshold`` (per subject: low for hemispheric high-grade,
  high for the mostly non-enhancing midline tumours) or ``d > 0.25``, treatment-related enhancement: with the necrosis rule below a band of intermediate damage);
- necrotic core: whole tumour and ``n + d > 0.5`` (overrides enhancing, so enhancement forms a ring).

Images: tissue mixture (grey/white/CSF probabilities) with per-contrast intensities; t1n keeps the real
MNI T1 texture; lesion signals blended in by smooth weights (oedema, cells, necrosis; t1c adds enhancement);
then a smooth multiplicative bias field, Rician noise inside the brain, skull-stripped background 0
(BraTS convention), stored as int16 with white matter near 1000 on T1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tgrowth.growth.fk import VISIBLE_THRESHOLD
from tgrowth.vocab import CONTRASTS

DAMAGE_ENHANCEMENT = 0.25
NECROSIS_THRESHOLD = 0.5

#: intensities relative to white matter on T1: (grey, white, csf, oedema, tumour cells, necrosis)
INTENSITY = {
    "t1n": (0.72, 1.00, 0.30, 0.72, 0.62, 0.35),
    "t1c": (0.72, 1.00, 0.30, 0.72, 0.62, 0.33),
    "t2w": (0.80, 0.58, 1.60, 1.15, 1.05, 1.40),
    "t2f": (0.82, 0.62, 0.18, 1.35, 1.15, 0.65),
}
ENHANCEMENT = 0.75  # t1c: enhancing tissue reaches about 1.4 x white matter


def _ramp(x: torch.Tensor, lo: float | torch.Tensor, hi: float | torch.Tensor) -> torch.Tensor:
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


def labels(fields: torch.Tensor, tissue: torch.Tensor, enh_threshold: torch.Tensor) -> torch.Tensor:
    """``fields [B, 4, ...]`` (u, n, d, e), ``tissue [B, ...]`` (gm + wm) -> ``[B, ...]`` uint8 labels."""
    u, n, d, e = fields.unbind(1)
    c = u + n + d
    inside = tissue > 0.35
    wt = (torch.maximum(c, e) > VISIBLE_THRESHOLD) & inside
    thr = enh_threshold.reshape((-1,) + (1,) * (u.dim() - 1))
    enh = wt & ((u > thr) | (d > DAMAGE_ENHANCEMENT))
    nec = wt & ((n + d) > NECROSIS_THRESHOLD)
    out = torch.zeros(u.shape, dtype=torch.uint8)
    out[wt] = 2
    out[enh] = 3
    out[nec] = 1
    return out


def smooth_noise(shape: tuple[int, ...], generator: torch.Generator, lattice: int = 4) -> torch.Tensor:
    """A smooth random field in about [-1, 1] of spatial ``shape`` (trilinear upsampling of a coarse lattice)."""
    coarse = torch.randn((1, 1, lattice, lattice, lattice), generator=generator)
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0]


def render(
    anatomy: torch.Tensor,
    fields: torch.Tensor,
    enh_threshold: torch.Tensor,
    tissue_jitter: torch.Tensor,
    generators: list[torch.Generator],
    bias_strength: torch.Tensor,
    noise_level: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One timepoint for a batch of subjects.

    ``anatomy [B, 5, X, Y, Z]`` (t1, gm, wm, csf, mask), ``fields [B, 4, X, Y, Z]`` (u, n, d, e),
    ``tissue_jitter [B, 4, 3]`` (per contrast multipliers of grey/white/CSF intensities),
    ``bias_strength [B]``, ``noise_level [B]`` (fraction of white-matter signal), one generator per subject.
    Returns images ``[B, 4, X, Y, Z]`` int16 and labels ``[B, X, Y, Z]`` uint8.
    """
    t1, gm, wm, csf, mask = anatomy.unbind(1)
    u, n, d, e = fields.unbind(1)
    tissue = gm + wm
    seg = labels(fields, tissue, enh_threshold)
    brain = mask > 0.5
    lesion_ok = tissue.clamp(0.0, 1.0)
    w_oed = _ramp(torch.maximum(e, u + n + d), 0.5 * VISIBLE_THRESHOLD, 1.5 * VISIBLE_THRESHOLD) * lesion_ok
    w_tum = _ramp(u, 0.1, 0.7) * lesion_ok
    w_nec = _ramp(n + d, 0.3, 0.7) * lesion_ok
    thr = enh_threshold.reshape(-1, 1, 1, 1)
    w_enh = torch.maximum(_ramp(u, thr - 0.1, thr + 0.05), _ramp(d, DAMAGE_ENHANCEMENT - 0.05, DAMAGE_ENHANCEMENT + 0.05))
    w_enh = w_enh * (1.0 - w_nec) * lesion_ok

    # the template T1 texture relative to its tissue model (keeps real anatomy detail in every contrast)
    t1_model = 0.72 * gm + 1.0 * wm + 0.30 * csf
    texture = torch.where(brain, t1 / 0.87 - t1_model, torch.zeros_like(t1))

    bsz = anatomy.shape[0]
    shape = tuple(anatomy.shape[2:])
    images = []
    for ci, name in enumerate(CONTRASTS):
        g, w, c, v_oed, v_tum, v_nec = INTENSITY[name]
        jit = tissue_jitter[:, ci].reshape(bsz, 3, 1, 1, 1)
        base = g * jit[:, 0] * gm + w * jit[:, 1] * wm + c * jit[:, 2] * csf
        sign = 1.0 if name in ("t1n", "t1c") else -0.6
        img = base + sign * texture
        img = img + (v_oed - img) * w_oed
        img = img + (v_tum - img) * w_tum
        img = img + (v_nec - img) * w_nec
        if name == "t1c":
            img = img + ENHANCEMENT * w_enh
        images.append(img)
    img = torch.stack(images, 1).clamp_min(0.0)  # [B, 4, ...]

    out = torch.empty_like(img)
    for b, gen in enumerate(generators):
        for ci in range(len(CONTRASTS)):
            bias = torch.exp(bias_strength[b] * smooth_noise(shape, gen))
            gain = 1.0 + 0.05 * torch.randn((), generator=gen)
            sigma = noise_level[b]
            n1 = torch.randn(shape, generator=gen) * sigma
            n2 = torch.randn(shape, generator=gen) * sigma
            x = img[b, ci] * bias * gain
            out[b, ci] = torch.sqrt((x + n1) ** 2 + n2**2)
    out = torch.where(brain[:, None], out, torch.zeros_like(out))
    return torch.round(out * 1000.0).clamp(0, 32767).to(torch.int16), seg
