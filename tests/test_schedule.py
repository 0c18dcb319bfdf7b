import math

import pytest
import torch

from tgrowth.diffusion.schedule import (
    BetaSchedule,
    broadcast_batch,
    cosine_betas,
    eps_from_x0,
    linear_betas,
    make_schedule,
    x0_from_eps,
)


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


def test_broadcast_batch_scalars_rows_and_bad_shapes():
    like = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    assert broadcast_batch(0.5, like).shape == () and broadcast_batch(0.5, like).dtype == torch.float64
    b = broadcast_batch(torch.tensor([1.0, 2.0, 3.0]), like)
    assert b.shape == (3, 1, 1, 1) and b.dtype == torch.float64 and b[2].item() == 3.0
    with pytest.raises(ValueError, match=r"per-sample value has shape \(2,\), expected \[3\]"):
        broadcast_batch(torch.ones(2), like)


def test_x0_and_eps_conversions_invert_each_other_at_the_schedule_steps():
    s = make_schedule("linear")
    x0, eps = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 200, 999])
    xt = s.q_sample(x0, t, eps)
    assert torch.allclose(s.predict_x0(xt, eps, t), x0, atol=1e-9)
    assert torch.allclose(s.eps_from_x0(xt, x0, t), eps, atol=1e-9)
    # the abar-level formulas are the same numbers; a scalar t broadcasts; t = -1 is the clean state
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.equal(x0_from_eps(xt, eps, a), s.predict_x0(xt, eps, t))
    assert torch.equal(eps_from_x0(xt, x0, a), s.eps_from_x0(xt, x0, t))
    assert torch.equal(s.predict_x0(xt, eps, 200), s.predict_x0(xt, eps, torch.full((3,), 200)))
    assert torch.equal(s.predict_x0(xt, eps, -1), xt)


def test_posterior_matches_the_ddpm_closed_form():
    """q(x_{t-1} | x_t, x_0) from Bayes' rule on the forward process, computed here from the betas alone."""
    s = make_schedule("cosine", 50)
    b = s.betas
    abar = torch.cumprod(1 - b, 0)
    x0, xt = torch.randn(2, 1, 3, 3, dtype=torch.float64), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    for t in (1, 17, 49):
        tt = torch.full((2,), t)
        # product of N(x_t; sqrt(alpha_t) x, beta_t) and N(x; sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) in x
        prec = (1 - b[t]) / b[t] + 1 / (1 - abar[t - 1])
        mean = ((1 - b[t]).sqrt() / b[t] * xt + abar[t - 1].sqrt() / (1 - abar[t - 1]) * x0) / prec
        assert torch.allclose(s.posterior_mean(x0, xt, tt), mean, atol=1e-10)
        assert torch.allclose(s.posterior_log_variance(tt, xt), (1 / prec).log().expand(2, 1, 1, 1), atol=1e-10)
        assert torch.allclose(s.log_beta(tt, xt), b[t].log().expand(2, 1, 1, 1))
    # at t = 0 the posterior variance is 0: its log is clipped to that of t = 1 (improved DDPM)
    assert torch.equal(s.posterior_log_variance(torch.tensor([0]), xt[:1]), s.posterior_log_variance(torch.tensor([1]), xt[:1]))


def test_beta_schedule_choices_are_the_enum():
    assert [k.value for k in BetaSchedule] == ["linear", "cosine"]
    assert torch.equal(make_schedule(BetaSchedule.cosine, 10).betas, make_schedule("cosine", 10).betas)
    with pytest.raises(ValueError, match=r"unknown beta schedule 'quadratic'; choose one of \['linear', 'cosine'\]"):
        make_schedule("quadratic")
