"""Training augmentation of preprocessed slices, built once and handed to the dataset (as torchio datasets take
a prebuilt ``transform``): a random torchio spatial transform applied identically to image and seg, then
per-contrast gain/offset jitter inside the brain. Random draws come from torch's global generator (seeded per
item by ``data_modules.resumable.SeededItems``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch

from tgrowth.config.data import AugmentationConfig, as_section

__all__ = ["SliceAugmentation"]


class SliceAugmentation:
    """``aug(image [C,H,W], seg [H,W], spacing_mm) -> (image, seg)``; arguments as :class:`AugmentationConfig`
    (probabilities, rotation in degrees, relative scale, translation in mm, intensity jitter stds)."""

    def __init__(self, flip_lr: float = 0.5, flip_ap: float = 0.0, affine_p: float = 0.5, rotation_deg: float = 5.0,
                 scale: float = 0.05, translation_mm: float = 2.0, intensity_p: float = 0.5,
                 intensity_gain: float = 0.05, intensity_shift: float = 0.05):
        import torchio as tio  # heavy: only training with augmentation needs it

        transforms = []
        if flip_lr > 0:
            transforms.append(tio.RandomFlip(axes=(0,), flip_probability=flip_lr))
        if flip_ap > 0:
            transforms.append(tio.RandomFlip(axes=(1,), flip_probability=flip_ap))
        if affine_p > 0:
            s, r, t = scale, rotation_deg, translation_mm
            transforms.append(tio.RandomAffine(
                scales=(1 - s, 1 + s, 1 - s, 1 + s, 1, 1), degrees=(0, 0, 0, 0, -r, r), translation=(-t, t, -t, t, 0, 0),
                isotropic=False, default_pad_value=-1.0, image_interpolation="linear", label_interpolation="nearest",
                p=affine_p,
            ))
        self.spatial = tio.Compose(transforms) if transforms else None
        self.intensity_p, self.intensity_gain, self.intensity_shift = intensity_p, intensity_gain, intensity_shift

    @classmethod
    def from_config(cls, cfg: AugmentationConfig | dict | None) -> SliceAugmentation | None:
        """None unless ``enabled``."""
        aug = as_section(cfg, AugmentationConfig)
        if not aug.enabled:
            return None
        return cls(**{k: float(v) for k, v in asdict(aug).items() if k != "enabled"})

    def __call__(self, image: torch.Tensor, seg: torch.Tensor, spacing: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spatial is not None:
            import torchio as tio  # heavy (see __init__); a module attribute would not pickle to loader workers

            aff = np.diag([float(spacing[0]), float(spacing[1]), 1.0, 1.0])
            subj = tio.Subject(image=tio.ScalarImage(tensor=image[..., None].clone(), affine=aff),
                               seg=tio.LabelMap(tensor=seg[None, ..., None].clone(), affine=aff))
            subj = self.spatial(subj)
            image = subj["image"].data[..., 0].float()
            seg = subj["seg"].data[0, ..., 0].round().long()
        if self.intensity_p > 0 and float(torch.rand(())) < self.intensity_p:
            C = image.shape[0]
            gain = 1.0 + self.intensity_gain * torch.randn(C, 1, 1)
            shift = self.intensity_shift * torch.randn(C, 1, 1)
            brain = image > -1.0
            jittered = ((image + 1.0) * gain - 1.0 + shift).clamp(-1.0, 1.0)
            image = torch.where(brain, jittered, image)
        return image.contiguous(), seg.contiguous()
