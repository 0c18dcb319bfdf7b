"""ADM-style 2D networks (pure torch): the denoiser ``UNet``, the noisy-area ``EncoderRegressor`` and the
tumour ``Segmenter``.

Written from the descriptions in Ho et al. (DDPM), Nichol & Dhariwal (improved DDPM) and Dhariwal & Nichol
(ADM, "Diffusion models beat GANs"): residual blocks with GroupNorm and SiLU, a sinusoidal timestep
embedding fed through an MLP into every block (optionally as scale-and-shift of the second norm),
self-attention at configured resolutions, optional class conditioning, optional learned-sigma output.

Contracts (``docs/architecture.md``):

- ``UNet(...)(x, t, y=None) -> eps`` of the shape of ``x``. With ``learn_sigma=True`` the network also
  outputs C variance-interpolation channels; ``forward`` still returns eps only, ``forward_with_var``
  returns ``(eps, v)`` with v in [-1, 1] (improved DDPM's interpolation between beta_t and the posterior
  variance; used by the training loss).
- ``EncoderRegressor(...)(x, t) -> [B]``: the UNet's encoder half with timestep embedding and attention
  pooling; differentiable w.r.t. ``x`` (guidance backpropagates through it).
- ``Segmenter(...)(x) -> logits [B, R, H, W]`` (R regions, channel 0 the whole tumour);
  ``segment(x) -> bool mask [B, H, W]`` of the whole tumour.

``t`` may be an integer/float tensor of shape [B] or a scalar (broadcast); ``y`` a long tensor [B] or an int.
All networks are resolution-agnostic convolutions except where ``image_size`` fixes the attention
placement and the regressor's pooling grid; channels_last inputs work (no ``.view`` on strided tensors).

The constructors' defaults are the authors' sizes (the denoiser's class conditioning and learned sigma off
unless asked for); the training configs' ``model`` sections take their defaults from these signatures
(:mod:`tgrowth.config.diffusion`), so each hyper-parameter's default lives here only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "timestep_embedding",
    "default_channel_mult",
    "ResBlock",
    "AttentionBlock",
    "UNet",
    "EncoderRegressor",
    "Segmenter",
    "masks_from_logits",
]


# --------------------------------------------------------------------------- helpers
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim]: ``[cos(t f_0..f_{h-1}), sin(t f_0..f_{h-1})]`` with
    ``f_i = max_period^(-i/h)``, ``h = dim // 2`` (zero-padded when dim is odd), as in ADM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def default_channel_mult(image_size: int) -> tuple[int, ...]:
    """ADM's channel multipliers per resolution level for a square image of ``image_size``."""
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
    if image_size in table:
        return table[image_size]
    levels = max(1, int(math.log2(max(image_size, 8))) - 3)  # down to about 8x8
    return tuple([1, 2, 2, 4, 4, 4, 4][:levels])


def _resolve_channel_mult(image_size: int, channel_mult: Sequence[float] | None) -> tuple:
    """The given channel multipliers (or the default for the size), checked against the image size."""
    mult = tuple(channel_mult) if channel_mult else default_channel_mult(image_size)
    if image_size % (2 ** (len(mult) - 1)):
        raise ValueError(f"image_size {image_size} is not divisible by 2^{len(mult) - 1} (channel_mult {mult})")
    return mult


def norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups where the channels allow it (fewer, dividing ch, for tiny widths)."""
    return nn.GroupNorm(math.gcd(32, ch), ch)


def zero_module(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


def _as_batch(v: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
    v = torch.as_tensor(v, device=device)
    if v.ndim == 0:
        v = v.expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"expected a scalar or a tensor of shape [{batch}], got {tuple(v.shape)}")
    return v


# --------------------------------------------------------------------------- blocks
class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + timestep embedding (add, or scale/shift of the second norm), GroupNorm-SiLU-
    dropout-conv (zero-initialised), plus a 1x1 skip where the width changes. ``emb_ch=0``: no embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float = 0.0, scale_shift: bool = True):
        super().__init__()
        self.scale_shift = scale_shift and emb_ch > 0
        self.in_layers = nn.Sequential(norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = (
            nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if self.scale_shift else out_ch)) if emb_ch > 0 else None
        )
        self.out_norm = norm(out_ch)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers(x)
        if self.emb_layers is not None:
            e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
                h = self.out_norm(h) * (1 + scale) + shift
            else:
                h = self.out_norm(h + e)
        else:
            h = self.out_norm(h)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions (GroupNorm, qkv 1x1, SDPA, zero-initialised proj)."""

    def __init__(self, ch: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        if num_head_channels > 0:
            if ch % num_head_channels:
                raise ValueError(f"attention width {ch} is not a multiple of num_head_channels={num_head_channels}")
            num_heads = ch // num_head_channels
        if ch % num_heads:
            raise ValueError(f"attention width {ch} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_module(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # [B, heads, HW, d]
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(a)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Sequential):
    """A sequence of layers; residual blocks also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


# --------------------------------------------------------------------------- encoder shared by all three nets
class _Encoder(nn.Module):
    """Input conv + per-level [ResBlock (+Attention)] x num_res_blocks + Downsample, then the middle block.
    Keeps the widths of every stage output (the UNet's skip connections)."""

    def __init__(self, in_channels, model_channels, channel_mult, num_res_blocks, attention_ds, emb_ch,
                 dropout, num_heads, num_head_channels, scale_shift):
        super().__init__()
        self.stages = nn.ModuleList([Stage(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        self.skip_widths = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            out = int(mult * model_channels)
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, out, emb_ch, dropout, scale_shift)]
                ch = out
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, num_heads, num_head_channels))
                self.stages.append(Stage(*layers))
                self.skip_widths.append(ch)
            if level != len(channel_mult) - 1:
                self.stages.append(Stage(Downsample(ch)))
                self.skip_widths.append(ch)
                ds *= 2
        self.middle = Stage(
            ResBlock(ch, ch, emb_ch, dropout, scale_shift),
            AttentionBlock(ch, num_heads, num_head_channels),
            ResBlock(ch, ch, emb_ch, dropout, scale_shift),
        )
        self.out_ch, self.out_ds = ch, ds

    def forward(self, x, emb):
        skips = []
        for stage in self.stages:
            x = stage(x, emb)
            skips.append(x)
        return self.middle(x, emb), skips


def _attention_ds(image_size: int, attention_resolutions: Sequence[int]) -> set[int]:
    """Attention resolutions in pixels (e.g. 16 means 'at 16x16') -> downsampling factors."""
    ds = set()
    for r in attention_resolutions:
        r = int(r)
        if r <= 0 or image_size % r:
            raise ValueError(f"attention resolution {r} does not divide image_size {image_size}")
        ds.add(image_size // r)
    return ds


class _TimeEmbed(nn.Module):
    def __init__(self, model_channels: int, emb_ch: int):
        super().__init__()
        self.model_channels = model_channels
        self.mlp = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.model_channels).to(self.mlp[0].weight.dtype))


# --------------------------------------------------------------------------- the denoiser
class UNet(nn.Module):
    """ADM UNet: ``UNet(...)(x, t, y=None) -> eps`` ([B, C, H, W]).

    Args:
        image_size: side of the square training images (fixes where attention sits).
        in_channels: image channels (contrasts). ``out_channels`` defaults to ``in_channels``.
        model_channels: base width; level i has ``channel_mult[i] * model_channels`` channels.
        channel_mult: widths per level (None: ADM's table for ``image_size``).
        num_res_blocks: residual blocks per level.
        attention_resolutions: resolutions in pixels where self-attention is applied (e.g. ``(16,)``).
        num_heads / num_head_channels: attention heads (``num_head_channels > 0`` fixes the head width).
        dropout: in the residual blocks.
        num_classes: None (unconditional) or the number of classes (2: healthy 0 / diseased 1).
        class_dropout: probability, in training, of replacing y by a learned "no class" token; when > 0 the
            model also accepts ``y=None`` (classifier-free style), otherwise a class-conditioned model needs y.
        learn_sigma: also output the variance-interpolation channels (improved DDPM).
        use_scale_shift_norm: the embedding scales and shifts the second norm (ADM) instead of adding.
        time_conditional: False builds the same UNet without timestep embedding (``t`` is ignored).
    """

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 4,
        model_channels: int = 128,
        out_channels: int | None = None,
        channel_mult: Sequence[float] | None = None,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        num_heads: int = 1,
        num_head_channels: int = -1,
        dropout: float = 0.0,
        num_classes: int | None = None,
        class_dropout: float = 0.0,
        learn_sigma: bool = False,
        use_scale_shift_norm: bool = True,
        time_conditional: bool = True,
    ):
        super().__init__()
        channel_mult = _resolve_channel_mult(image_size, channel_mult)
        self.image_size, self.in_channels = image_size, in_channels
        self.out_channels = out_channels or in_channels
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes or None
        self.class_dropout = float(class_dropout)
        self.time_conditional = time_conditional
        emb_ch = 4 * model_channels if time_conditional or self.num_classes else 0
        self.time_embed = _TimeEmbed(model_channels, emb_ch) if time_conditional else None
        self.label_emb = nn.Embedding(self.num_classes + (1 if class_dropout > 0 else 0), emb_ch) if self.num_classes else None

        attn_ds = _attention_ds(image_size, attention_resolutions)
        self.encoder = _Encoder(in_channels, model_channels, channel_mult, num_res_blocks, attn_ds, emb_ch,
                                dropout, num_heads, num_head_channels, use_scale_shift_norm)
        ch, ds = self.encoder.out_ch, self.encoder.out_ds
        skips = list(self.encoder.skip_widths)
        self.decoder = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out = int(mult * model_channels)
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), out, emb_ch, dropout, use_scale_shift_norm)]
                ch = out
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, num_heads, num_head_channels))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.decoder.append(Stage(*layers))
        final_out = self.out_channels * (2 if learn_sigma else 1)
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, final_out, 3, padding=1)))

    def embed(self, t: torch.Tensor | float | None, y: torch.Tensor | int | None, batch: int, device) -> torch.Tensor | None:
        emb = None
        if self.time_embed is not None:
            emb = self.time_embed(_as_batch(t, batch, device))
        if self.label_emb is not None:
            if y is None:
                if self.class_dropout <= 0:
                    raise ValueError("this UNet is class-conditioned: pass y (0 healthy, 1 diseased)")
                y = self.num_classes  # the learned "no class" token
            y = _as_batch(y, batch, device).long()
            e = self.label_emb(y)
            emb = e if emb is None else emb + e
        return emb

    def forward_raw(self, x: torch.Tensor, t: torch.Tensor | float | None = None, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """All output channels: [B, C, H, W], or [B, 2C, H, W] with learned sigma (eps, then v)."""
        emb = self.embed(t, y, x.shape[0], x.device)
        h, skips = self.encoder(x, emb)
        for stage in self.decoder:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def forward_with_var(self, x, t, y=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(eps, v)``; v (in [-1, 1] after tanh-free clamping by the loss) is None without learned sigma."""
        out = self.forward_raw(x, t, y)
        if not self.learn_sigma:
            return out, None
        eps, v = out.split(self.out_channels, dim=1)
        return eps, v

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | None = None, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """The predicted noise eps, shape of x (variance channels, if any, dropped)."""
        out = self.forward_raw(x, t, y)
        return out[:, : self.out_channels] if self.learn_sigma else out

    predict_eps = forward


# --------------------------------------------------------------------------- the regressor
class AttentionPool2d(nn.Module):
    """CLIP/ADM attention pooling: the mean token (plus learned positions) attends over all positions."""

    def __init__(self, spatial: int, ch: int, num_head_channels: int, out_dim: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(ch, spatial * spatial + 1) / ch**0.5)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.out = nn.Conv1d(ch, out_dim, 1)
        self.num_heads = max(1, ch // num_head_channels) if num_head_channels > 0 else 1
        if ch % self.num_heads:
            raise ValueError(f"pooling width {ch} is not divisible by {self.num_heads} heads")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        if x.shape[-1] != self.pos.shape[-1]:
            raise ValueError(f"regressor pooling expects {self.pos.shape[-1] - 1} positions, got {x.shape[-1] - 1}: wrong image size")
        x = x + self.pos[None].to(x.dtype)
        qkv = self.qkv(x).reshape(b, 3, self.num_heads, c // self.num_heads, -1)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))
        a = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # only the pooled token's output is used
        a = a.transpose(-1, -2).reshape(b, c, 1)
        return self.out(a)[:, :, 0]


class EncoderRegressor(nn.Module):
    """The UNet encoder half + timestep embedding + attention pooling: ``(x, t) -> [B]`` (a scalar per image,
    e.g. the normalised tumour area of the clean image behind the noisy ``x``)."""

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 4,
        model_channels: int = 32,
        channel_mult: Sequence[float] | None = None,
        num_res_blocks: int = 4,
        attention_resolutions: Sequence[int] = (32, 16, 8),
        num_heads: int = 1,
        num_head_channels: int = 64,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
    ):
        super().__init__()
        channel_mult = _resolve_channel_mult(image_size, channel_mult)
        self.image_size, self.in_channels = image_size, in_channels
        emb_ch = 4 * model_channels
        self.time_embed = _TimeEmbed(model_channels, emb_ch)
        attn_ds = _attention_ds(image_size, [r for r in attention_resolutions if image_size % int(r) == 0 and int(r) <= image_size])
        self.encoder = _Encoder(in_channels, model_channels, channel_mult, num_res_blocks, attn_ds, emb_ch,
                                dropout, num_heads, num_head_channels, use_scale_shift_norm)
        ch, ds = self.encoder.out_ch, self.encoder.out_ds
        pool_heads = num_head_channels if num_head_channels > 0 and ch % num_head_channels == 0 else -1
        self.out = nn.Sequential(norm(ch), nn.SiLU())
        self.pool = AttentionPool2d(image_size // ds, ch, pool_heads, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        emb = self.time_embed(_as_batch(t, x.shape[0], x.device))
        h, _ = self.encoder(x, emb)
        return self.pool(self.out(h))[:, 0]


# --------------------------------------------------------------------------- the segmenter
class Segmenter(nn.Module):
    """A small 2D UNet without timestep embedding: ``(x) -> logits [B, R, H, W]`` for R tumour regions
    (channel 0: whole tumour; optional BraTS sub-regions after it, e.g. tumour core, enhancing tumour)."""

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 4,
        model_channels: int = 32,
        channel_mult: Sequence[float] | None = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (),
        num_regions: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.image_size, self.in_channels, self.num_regions = image_size, in_channels, num_regions
        self.net = UNet(
            image_size=image_size, in_channels=in_channels, model_channels=model_channels, out_channels=num_regions,
            channel_mult=channel_mult, num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
            dropout=dropout, time_conditional=False,
        )
        # the UNet zero-initialises its output conv (right for eps); a segmenter starts from small random logits
        nn.init.normal_(self.net.out[-1].weight, std=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def segment(self, x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """Whole-tumour mask [B, H, W] (bool): sigmoid(logit of channel 0) > threshold."""
        return masks_from_logits(self.forward(x)[:, :1], threshold)[:, 0]


def masks_from_logits(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Region masks [B, R, H, W] (bool) from segmenter logits [B, R, H, W]: ``sigmoid(logit) > threshold``.

    The one definition of a segmented pixel (the segmenter's validation, :meth:`Segmenter.segment` and
    :func:`tgrowth.probability.segmenter_from_logits` use it); channel 0 is the whole tumour.
    """
    return torch.sigmoid(logits.float()) > threshold
