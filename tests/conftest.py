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


@pytest.fixture(scope="module")
def one_thread():
    """Small per-step tensors: one thread is fastest, above all on a shared CPU (as ``tgrowth synth threads=1``).
    Use per module: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def brats2d_root() -> Path:
    """The real BraTS 2D slices in the authors' layout; tests using it skip where ../shared is absent."""
    if not BRATS2D.is_dir():
        pytest.skip("../shared/data/brats2d_sample not present")
    return BRATS2D


@pytest.fixture(scope="session")
def tiny_predict(tmp_path_factory):
    """A 3-subject longitudinal set (32x32x6) and briefly fitted tiny networks (predict/DDP/sweep tests)."""
    from tests.predict_fixtures import make_data, make_models

    base = tmp_path_factory.mktemp("tiny_predict")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = make_data(base / "data")
        return root, make_models(base / "models", root)
    finally:
        torch.set_num_threads(n)
