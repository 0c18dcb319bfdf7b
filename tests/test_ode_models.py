"""Growth laws: closed form vs torchdiffeq, gradients through the solver, extreme parameters."""

import math

import pytest
import torch

from tgrowth.ode.fit import cpu_threads
from tgrowth.ode.models import MODELS, NO_RT, get_model, logcosh, simulate, simulate_closed_form, simulate_ode


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(0):  # tiny tensors: one thread is much faster on a busy 2-core machine
        yield


T = torch.tensor([0.0, 12.0, 40.0, 61.0, 95.0, 160.0, 230.0], dtype=torch.float64)


def _thetas(model):
    """Starts, plus variants that exercise the RT terms (fast switch, late switch, strong decay)."""
    th = torch.tensor(model.starts, dtype=torch.float64).expand(4, -1).clone()
    if model.rt:
        th[1, -1], th[1, -2] = 0.3, 30.0  # slope, delay
        th[2, -3], th[2, -2], th[2, -1] = 0.05, 80.0, 2.0
        th[3, -4] = 0.5 if model.bounds[-4][1] >= 0.5 else 0.15
    return th


@pytest.mark.parametrize("name", list(MODELS))
def test_closed_form_matches_odeint(name):
    model = get_model(name)
    th = _thetas(model)
    t = T.expand(4, -1)
    t_rt = torch.tensor([45.0, 45.0, -10.0, NO_RT], dtype=torch.float64)  # RT inside, RT before 1st scan, none
    exact = simulate_closed_form(model, th, t, t_rt)
    ode = simulate_ode(model, th, t, t_rt, rtol=1e-9, atol=1e-12)
    rel = ((exact - ode).abs() / exact).max().item()
    assert rel < 1e-4, f"{name}: closed form vs odeint max relative error {rel}"


def test_authors_model_by_hand():
    """exponential_rt at known parameters, against the formula written out by hand."""
    v0, lam, sf, lam_d, delay, slope, t_rt = 1.0, 0.01, 0.2, 0.05, 20.0, 0.5, 50.0
    th = torch.tensor([v0, lam, sf, lam_d, delay, slope], dtype=torch.float64)
    t = torch.tensor([30.0, 50.0, 100.0], dtype=torch.float64)
    got = simulate("exponential_rt", th, t, t_rt)
    vk = math.exp(lam * t_rt)

    def want(tt):
        if tt < t_rt:
            return math.exp(lam * tt)
        living = sf * vk * math.exp(lam * (tt - t_rt))
        lc = lambda x: math.log(math.cosh(x))  # noqa: E731
        damaged = (1 - sf) * vk * math.exp(-lam_d / slope * (lc(slope * (tt - t_rt - delay)) - lc(-slope * delay)))
        return living + damaged

    for g, tt in zip(got.tolist(), t.tolist()):
        assert g == pytest.approx(want(tt), rel=1e-10)


def test_logcosh_stable():
    x = torch.tensor([-1e6, -30.0, 0.0, 2.0, 1e6], dtype=torch.float64)
    ref = torch.tensor([1e6 - math.log(2), 30 - math.log(2), 0.0, math.log(math.cosh(2.0)), 1e6 - math.log(2)],
                       dtype=torch.float64)
    assert torch.allclose(logcosh(x), ref, rtol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_extreme_parameters_stay_finite(name):
    model = get_model(name)
    g = torch.Generator().manual_seed(0)
    lo = torch.tensor([b[0] for b in model.bounds], dtype=torch.float64) / 1.5
    hi = torch.tensor([b[1] for b in model.bounds], dtype=torch.float64) * 1.5
    corners = torch.stack([lo, hi, lo + (hi - lo) * torch.rand(model.n_params, generator=g, dtype=torch.float64)])
    th = torch.cat([corners, lo + (hi - lo) * torch.rand(200, model.n_params, generator=g, dtype=torch.float64)])
    t = torch.linspace(0, 3000, 25, dtype=torch.float64).expand(th.shape[0], -1)
    t_rt = torch.full((th.shape[0],), 40.0, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        y = simulate_closed_form(model, th.to(dtype), t.to(dtype), t_rt.to(dtype))
        assert torch.isfinite(y).all() and (y >= 0).all()
    th = th.clone().requires_grad_(True)
    simulate_closed_form(model, th, t, t_rt).sum().backward()
    assert torch.isfinite(th.grad).all()


def test_gradient_through_solver_matches_finite_differences():
    model = get_model("exponential_rt")
    th = torch.tensor([1.0, 0.012, 0.15, 0.03, 25.0, 0.4], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 30.0, 70.0, 120.0, 200.0], dtype=torch.float64)
    t_rt = torch.tensor(50.0, dtype=torch.float64)
    obs = torch.tensor([1.0, 1.3, 0.9, 0.7, 0.8], dtype=torch.float64)

    def loss(theta):  # theta [..., 6] -> [...]
        return ((simulate_ode(model, theta, t, t_rt, rtol=1e-10, atol=1e-12) - obs) ** 2).sum(-1)

    loss(th).backward()
    with torch.no_grad():  # central differences, all 12 perturbed parameter vectors in one batched solve
        h = 1e-6 * th.detach().abs().clamp_min(1e-3)
        e = torch.diag(h)
        both = loss(torch.cat([th.detach() + e, th.detach() - e]))
        fd = (both[:6] - both[6:]) / (2 * h)
    assert torch.allclose(th.grad, fd, rtol=1e-4, atol=1e-7), (th.grad, fd)
    # and the solver's gradient equals the closed form's
    th2 = th.detach().clone().requires_grad_(True)
    ((simulate_closed_form(model, th2, t, t_rt) - obs) ** 2).sum().backward()
    assert torch.allclose(th.grad, th2.grad, rtol=1e-4, atol=1e-7)


def test_linear_radial_is_linear_in_radius():
    th = torch.tensor([1.0, 0.01], dtype=torch.float64)
    t = torch.tensor([0.0, 50.0, 100.0], dtype=torch.float64)
    area = simulate("linear_radial", th, t)
    assert torch.allclose(area.sqrt(), 1.0 + 0.01 * t)
    vol = simulate("linear_radial", th, t, size_kind="volume")
    assert torch.allclose(vol ** (1 / 3), 1.0 + 0.01 * t)


def test_unknown_model_name():
    with pytest.raises(KeyError, match="unknown growth model 'expo'"):
        get_model("expo")
