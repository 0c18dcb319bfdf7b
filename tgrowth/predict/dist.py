"""Processes and devices for predict/sweep through Lightning Fabric (DDP, SLURM, torchrun all work).

``trainer.devices=2 trainer.strategy=ddp`` launches one process per device (Lightning re-runs the same
command line for the other ranks; under SLURM or torchrun the processes already exist and Lightning reads
their ranks from the environment). Each rank predicts its share of the subjects; rank 0 merges.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig


@dataclass
class Dist:
    fabric: Any
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            self.fabric.barrier()

    def broadcast(self, obj: Any) -> Any:
        return self.fabric.broadcast(obj, src=0) if self.world_size > 1 else obj

    def autocast(self):
        return self.fabric.autocast() if self.fabric is not None else contextlib.nullcontext()


def launch(trainer: DictConfig) -> Dist:
    """Start (or join) the processes described by the ``trainer`` section and return this rank's view."""
    from lightning_fabric import Fabric

    strategy = str(trainer.strategy)
    devices = trainer.devices
    if strategy == "auto" and str(trainer.accelerator) == "cpu" and devices not in ("auto", 1, "1"):
        strategy = "ddp"  # several CPU processes need a process group (gloo)
    fabric = Fabric(accelerator=str(trainer.accelerator), devices=devices, strategy=strategy,
                    num_nodes=int(trainer.num_nodes), precision=str(trainer.precision))
    fabric.launch()
    return Dist(fabric=fabric, rank=int(fabric.global_rank), world_size=int(fabric.world_size), device=fabric.device)
