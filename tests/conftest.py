import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BRATS2D = SHARED / "data" / "brats2d_sample"


@pytest.fixture
def brats2d_root() -> Path:
    """The real BraTS 2D slices in the authors' layout; tests using it skip where ../shared is absent."""
    if not BRATS2D.is_dir():
        pytest.skip("../shared/data/brats2d_sample not present")
    return BRATS2D
