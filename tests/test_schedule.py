import math

import pytest
import torch

from tgrowth.diffusion.schedule import cosine_betas, linear_betas, make_schedule


def test_linear_matches_ho_et_al():
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(2e-2)
    s = make_schedule("linear")
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - b, 0))


def test_cosine_abar_closed_form():
    s = make_schedule("cosine", 1000)
    t = torch.tensor([0, 499, 998])
    f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for ti in t.tolist():
        assert s.alphas_cumprod[ti].item() == pytest.approx(f(ti + 1) / f(0), rel=1e-6)
    assert cosine_betas(10).max() <= 0.999


def test_q_sample_and_clean_step():
    s = make_schedule("linear")
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 200, 999])
    xt = s.q_sample(x0, t, eps)
    a = s.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)
    assert s.abar(torch.tensor(-1)).item() == 1.0


def test_respaced_timesteps():
    s = make_schedule("linear")
    ts = s.timesteps(50, start=199)
    assert ts[0].item() == 199 and ts[-1].item() == 0 and len(ts) == 50
    assert bool((ts[:-1] > ts[1:]).all())
    assert s.timesteps(200, start=199).tolist() == list(range(199, -1, -1))
    with pytest.raises(ValueError, match="num_steps"):
        s.timesteps(300, start=199)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_schedule("quadratic")
