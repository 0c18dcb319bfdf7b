"""Native-resolution tumour windows for training (``data.resize=window``): a transform that cuts the
``size x size`` window of a preprocessed canvas slice centred on its tumour.

Training draws (from torch's global generator, seeded per item by ``data_modules.resumable``): the centre
jitters uniformly by up to ``jitter_mm`` per axis, and a fraction ``healthy_fraction`` of the windows (and
every window of a slice without tumour) is centred on a random brain pixel instead, so the models also see
tissue without tumour. Validation/test windows are deterministic: the tumour's centroid, or the brain's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from data_modules.geometry import centroid, crop_window
from data_modules.volumes import tumour_mask

__all__ = ["TumourWindow", "Compose"]


class TumourWindow:
    """``window(image [C,H,W], seg [H,W], spacing_mm) -> (image [C,S,S], seg [S,S])``."""

    def __init__(self, size: int, labels: Any = "whole", jitter_mm: float = 0.0, healthy_fraction: float = 0.0,
                 random: bool = True):
        if jitter_mm < 0 or not 0 <= healthy_fraction <= 1:
            raise ValueError(f"need jitter_mm >= 0 and 0 <= healthy_fraction <= 1, got {jitter_mm}, {healthy_fraction}")
        self.size, self.labels = int(size), labels
        self.jitter_mm, self.healthy_fraction, self.random = float(jitter_mm), float(healthy_fraction), bool(random)

    def center(self, image: torch.Tensor, seg: torch.Tensor, spacing: Sequence[float]) -> tuple[float, float]:
        tumour = centroid(tumour_mask(seg, self.labels))
        brain = (image > -1.0 + 1e-3).any(0)
        healthy = tumour is None or (self.random and self.healthy_fraction > 0
                                     and float(torch.rand(())) < self.healthy_fraction)
        if healthy:
            if self.random and bool(brain.any()):
                rows, cols = torch.nonzero(brain, as_tuple=True)
                i = int(torch.randint(rows.numel(), ()))
                return float(rows[i]), float(cols[i])
            c = centroid(brain)
            return c if c is not None else ((image.shape[-2] - 1) / 2, (image.shape[-1] - 1) / 2)
        if self.random and self.jitter_mm > 0:
            shift = (torch.rand(2) * 2 - 1) * self.jitter_mm / torch.tensor([float(spacing[0]), float(spacing[1])])
            return tumour[0] + float(shift[0]), tumour[1] + float(shift[1])
        return tumour

    def __call__(self, image: torch.Tensor, seg: torch.Tensor, spacing: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        img, sg, _ = crop_window(image, seg, self.center(image, seg, spacing), self.size)
        return img, sg


class Compose:
    """Apply ``(image, seg, spacing) -> (image, seg)`` transforms in order (None entries are skipped)."""

    def __init__(self, transforms: Sequence[Callable | None]):
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, image: torch.Tensor, seg: torch.Tensor, spacing: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        for t in self.transforms:
            image, seg = t(image, seg, spacing)
        return image, seg
