"""A tiny in-memory slice set that follows the ``SliceDataModule`` batch contract (for tests and CPU timing).

Each image: a dim ellipse ("brain") with per-contrast intensities, in about half of the images a bright
disc ("tumour": label 2 outside, label 1 in the inner core, as in BraTS necrosis/oedema) at a random place
and size, plus Gaussian noise; values in [-1, 1]. Batches: ``image [B,C,H,W]``, ``seg [B,H,W]`` (long),
``area_mm2 [B]`` (1 mm pixels), ``area_frac [B]``, ``label [B]`` (0 healthy, 1 diseased), ``meta``.
Generated at once (batched over images) from a seed.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from data_modules.slices import ResumableLoader

__all__ = ["make_blobs", "BlobDataset", "BlobDataModule"]


def make_blobs(n: int, image_size: int = 32, channels: int = 2, seed: int = 0, p_tumour: float = 0.6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = image_size
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    yy, xx = yy[None] / s, xx[None] / s  # [1, H, W] in [0, 1)
    brain = (((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.36) ** 2) <= 1.0  # [1, H, W]
    has = torch.rand(n, generator=g) < p_tumour
    cy = 0.5 + (torch.rand(n, generator=g) - 0.5) * 0.4
    cx = 0.5 + (torch.rand(n, generator=g) - 0.5) * 0.3
    r = 0.06 + torch.rand(n, generator=g) * 0.12
    d = ((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2).sqrt()  # [N, H, W]
    outer = (d <= r[:, None, None]) & has[:, None, None] & brain
    inner = (d <= 0.5 * r[:, None, None]) & outer
    seg = outer.long() * 2 - inner.long()  # 2 oedema, 1 core, 0 background
    brain_level = torch.linspace(-0.2, 0.2, channels)
    tumour_level = torch.linspace(0.9, 0.5, channels)
    core_level = torch.linspace(0.3, 0.7, channels)
    img = torch.full((n, channels, s, s), -1.0)
    img = torch.where(brain[:, None], brain_level[None, :, None, None].expand(n, channels, s, s), img)
    img = torch.where(outer[:, None], tumour_level[None, :, None, None].expand(n, channels, s, s), img)
    img = torch.where(inner[:, None], core_level[None, :, None, None].expand(n, channels, s, s), img)
    img = (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(-1, 1)
    area = outer.flatten(1).sum(1).float()
    return {
        "image": img,
        "seg": seg,
        "area_mm2": area,
        "area_frac": area / (s * s),
        "label": (area > 0).long(),
    }


class BlobDataset(Dataset):
    def __init__(self, n: int, image_size: int = 32, channels: int = 2, seed: int = 0):
        self.data = make_blobs(n, image_size, channels, seed)

    def __len__(self) -> int:
        return int(self.data["image"].shape[0])

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.data.items()}
        item["meta"] = {"subject": f"blob{i:04d}", "index": i}
        return item


class BlobDataModule(pl.LightningDataModule):
    """Lightning data module over :class:`BlobDataset` (train and val from different seeds)."""

    def __init__(self, n_train: int = 256, n_val: int = 32, image_size: int = 32, channels: int = 2,
                 batch_size: int = 16, seed: int = 0):
        super().__init__()
        self.n_train, self.n_val, self.image_size, self.channels = n_train, n_val, image_size, channels
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train_set"):
            self.train_set = BlobDataset(self.n_train, self.image_size, self.channels, self.seed)
            self.val_set = BlobDataset(self.n_val, self.image_size, self.channels, self.seed + 10_000)

    def train_dataloader(self) -> DataLoader:  # the same resumable training order as the real data
        return ResumableLoader.for_trainer(self.trainer, self.train_set, self.batch_size, self.seed,
                                           drop_last=len(self.train_set) >= self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)
