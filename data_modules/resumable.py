"""The training order as a pure function of ``(seed, epoch, position)``, resumable mid-epoch.

:class:`ResumableLoader` (the training loader of ``SliceDataModule`` and the toy blob set): the order and the
augmentation draws are a pure function of ``(seed, epoch, position)``, and Lightning stores the loader's
position in checkpoints, so a run resumed with ``ckpt_path=last`` sees the batches the uninterrupted run
would have seen.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

__all__ = ["ResumableLoader", "ResumableSampler", "SeededItems", "mix_seed"]

log = logging.getLogger("tgrowth.data")


def mix_seed(*ints: int) -> int:
    """One 63-bit seed from non-negative integers (numpy's SeedSequence mixing: nearby inputs, unrelated seeds)."""
    a, b = np.random.SeedSequence([int(i) for i in ints]).generate_state(2, dtype=np.uint64)
    return int((int(a) ^ (int(b) >> 1)) & (2**63 - 1))


class ResumableSampler(torch.utils.data.distributed.DistributedSampler):
    """The training order as a pure function of ``(seed, epoch)``: yields ``(index, item_seed)`` pairs.

    Each epoch: a permutation of the ``n`` items drawn from ``(seed, epoch)`` (``shuffle=False``: in order),
    wrapped around to a multiple of ``num_replicas`` and dealt out by rank as ``DistributedSampler`` does,
    with one seed per position (augmentation draws, see :class:`SeededItems`). ``start`` items of the next
    pass are skipped (set by :class:`ResumableLoader` when it resumes mid-epoch). A ``DistributedSampler``
    subclass, so Lightning calls :meth:`set_epoch` and does not wrap it under DDP.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0):
        # DistributedSampler.__init__ wants a dataset and an initialised process group; set its fields directly
        self.dataset, self.n, self.seed, self.shuffle = range(int(n)), int(n), int(seed), bool(shuffle)
        self.num_replicas, self.rank, self.drop_last = int(num_replicas), int(rank), False
        self.epoch, self.start = 0, 0
        self.num_samples = math.ceil(self.n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``(indices, item seeds)`` for ``epoch``, each ``[num_samples]``."""
        if self.n == 0:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        idx = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        idx = idx.repeat(math.ceil(self.total_size / self.n))[: self.total_size]
        seeds = torch.randint(0, 2**62, (self.total_size,), generator=g)
        return idx[self.rank:: self.num_replicas], seeds[self.rank:: self.num_replicas]

    def __iter__(self):
        idx, seeds = self.order(self.epoch)
        start, self.start = self.start, 0
        return iter(list(zip(idx[start:].tolist(), seeds[start:].tolist())))

    def __len__(self) -> int:
        return self.num_samples


class SeededItems(torch.utils.data.Dataset):
    """``SeededItems(ds)[(index, seed)]`` is ``ds[index]`` drawn with torch's CPU generator seeded from ``seed``
    (and restored afterwards): random augmentation of an item depends on its place in the training order only,
    not on worker processes or on what was drawn before (so it repeats exactly after a resume)."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.dataset[int(index)]


class ResumableLoader(torch.utils.data.DataLoader):
    """A training DataLoader over a :class:`ResumableSampler` whose position Lightning saves in checkpoints.

    ``state_dict()`` -> ``{"epoch", "batches", "items", "seed", "batch_size", "world_size"}`` (batches of
    ``epoch`` already handed out); ``load_state_dict`` makes the next pass over that epoch skip them (if the
    items, seed, batch size or world size changed, the epoch restarts from its beginning, with a warning). Lightning calls both (a DataLoader with
    these methods is "stateful" to it), so ``ckpt_path=last`` continues an interrupted epoch exactly where the
    uninterrupted run would be. Use :meth:`for_trainer` to deal the order out by DDP rank.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0, **kwargs: Any):
        sampler = ResumableSampler(len(dataset), seed, shuffle, num_replicas, rank)  # type: ignore[arg-type]
        super().__init__(SeededItems(dataset), batch_size=batch_size, sampler=sampler, **kwargs)
        self._epoch, self._batches = 0, 0
        self._resume: tuple[int, int] | None = None

    @classmethod
    def for_trainer(cls, trainer: Any, dataset: torch.utils.data.Dataset, batch_size: int, seed: int = 0,
                    **kwargs: Any) -> ResumableLoader:
        """Shard by the trainer's rank / world size (one process when ``trainer`` is None)."""
        rank, world = (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)
        return cls(dataset, batch_size, seed, num_replicas=world, rank=rank, **kwargs)

    def __iter__(self):
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        self._epoch, self._batches = sampler.epoch, 0
        if self._resume is not None and self._resume[0] == sampler.epoch:
            self._batches = self._resume[1]
            sampler.start = self._batches * int(self.batch_size)  # type: ignore[arg-type]
        self._resume = None
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch, done = self._epoch, self._batches
        if done >= len(self):  # the epoch is complete: the next one starts from its beginning
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches": done, **self._layout()}

    def _layout(self) -> dict[str, int]:
        """What the meaning of "batches done" depends on."""
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        return {"items": sampler.n, "seed": sampler.seed, "batch_size": int(self.batch_size),  # type: ignore[arg-type]
                "world_size": sampler.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        epoch = int(state.get("epoch", 0))
        sampler.set_epoch(epoch)
        now = self._layout()
        then = {k: state.get(k) for k in now}
        if then != now:
            show = ", ".join(f"{k} {then[k]} -> {now[k]}" for k in now if then[k] != now[k])
            log.warning("the training data changed since the checkpoint (%s): the interrupted epoch %d restarts from "
                        "its first batch", show, epoch)
            return
        self._resume = (epoch, int(state.get("batches", 0)))
