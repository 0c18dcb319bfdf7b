"""The shared Fisher-Kolmogorov solver (tgrowth.growth.fk): conservation, front speed, no-flux, batching, RT kill."""

from __future__ import annotations

import math

import pytest
import torch

from tgrowth.errors import TgrowthError
from tgrowth.growth.fk import (
    diffusivity,
    face_coefficients,
    fk_step,
    gaussian_blur,
    lq_survival,
    planning_dose,
    simulate_fk,
    stable_dt,
    stable_steps_per_day,
)


def _front(u: torch.Tensor, h: float, level: float = 0.5) -> float:
    """Position (mm) where a 1D profile decreasing along its length first drops below ``level`` (linear interpolation)."""
    i = int(torch.nonzero(u < level).flatten()[0])
    a, b = float(u[i - 1]), float(u[i])
    return (i - 1 + (a - level) / (a - b)) * h


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.75, 1.5)])
def test_planar_front_travels_at_two_sqrt_d_rho(spacing):
    """A front in homogeneous tissue moves at 2 sqrt(D rho) (late times: Bramson's log delay and the 1e-9
    truncation slow it by about 2 %; explicit Euler at the stability bound by 2-3 % more, hence dt / 4)."""
    d, rho = 0.5, 0.1
    hx = spacing[0]
    n = int(320 / hx)
    u0 = torch.zeros(1, n, 3)
    u0[0, : int(4 / hx)] = 0.9
    diff = torch.full((1, n, 3), d)
    out = simulate_fk(u0, diff, rho, spacing, [400.0, 600.0], dt=stable_dt(d, spacing, rho) / 4)
    x1, x2 = (_front(out[0, k, :, 1], hx) for k in (0, 1))
    speed = (x2 - x1) / 200.0
    theory = 2.0 * math.sqrt(d * rho)
    assert abs(speed / theory - 1.0) < 0.03, (speed, theory)
    assert torch.equal(out[0, :, :, 0], out[0, :, :, 2])  # planar: the cross axis stays uniform


@pytest.mark.parametrize("shape, spacing", [((24, 20), (1.0, 1.5)), ((14, 12, 10), (1.0, 1.0, 2.0))])
def test_mass_conserved_without_growth_and_nothing_enters_csf(shape, spacing):
    g = torch.Generator().manual_seed(0)
    p_wm = torch.rand((2,) + shape, generator=g)
    p_gm = 1.0 - p_wm
    csf = torch.zeros((2,) + shape, dtype=torch.bool)
    csf[:, shape[0] // 2 :] = True  # half of the grid is CSF: D = 0 there
    p_wm, p_gm = p_wm.masked_fill(csf, 0.0), p_gm.masked_fill(csf, 0.0)
    diff = diffusivity(p_wm, p_gm, torch.tensor([0.3, 0.1]), torch.tensor([0.06, 0.02]))
    assert float(diff[csf].abs().max()) == 0.0
    u0 = torch.zeros((2,) + shape)
    u0[(slice(None), shape[0] // 2 - 1) + tuple(s // 2 for s in shape[1:])] = 0.7
    out = simulate_fk(u0, diff, 0.0, spacing, [0.0, 10.0, 40.0])
    for k in range(3):
        assert torch.allclose(out[:, k].flatten(1).sum(1), torch.tensor([0.7, 0.7]), rtol=1e-5)
    assert float(out[:, -1][csf].abs().max()) == 0.0
    assert float(out[:, -1][~csf].min()) >= 0.0
    assert bool((out[:, -1] > 0).flatten(1).sum(1).gt(10).all())  # it did spread (within the tissue half)


def test_batch_equals_one_by_one():
    g = torch.Generator().manual_seed(1)
    b, shape = 3, (20, 18)
    u0 = (torch.rand((b,) + shape, generator=g) > 0.97).float() * 0.8
    diff = torch.rand((b,) + shape, generator=g) * torch.tensor([0.1, 0.3, 0.5]).reshape(b, 1, 1)
    rho = torch.tensor([0.01, 0.03, 0.05])
    dt = stable_dt(0.5, (1.0, 1.0), 0.05)
    together = simulate_fk(u0, diff, rho, 1.0, [0.0, 7.0, 30.0], dt=dt)
    for i in range(b):
        alone = simulate_fk(u0[i : i + 1], diff[i : i + 1], rho[i : i + 1], 1.0, [0.0, 7.0, 30.0], dt=dt)
        assert torch.equal(alone[0], together[i])


def test_rt_fractions_kill_with_linear_quadratic_survival():
    """Without diffusion and growth each fraction multiplies the cells by S; a fraction's day is imaged before it."""
    u0 = torch.zeros(2, 8, 8)
    u0[:, 3:5, 3:5] = 0.8
    diff = torch.zeros(2, 8, 8)
    s = lq_survival(torch.tensor(2.0), 0.1, 0.01)
    assert float(s) == pytest.approx(math.exp(-0.2 - 0.04))
    out = simulate_fk(u0, diff, 0.0, 1.0, [0.0, 1.0, 2.5, 4.0], dt=0.5, fraction_days=[[1.0, 2.0, 3.0], []], survival=s)
    cell = out[:, :, 3, 3]
    assert cell[0].tolist() == pytest.approx([0.8, 0.8, 0.8 * float(s) ** 2, 0.8 * float(s) ** 3], rel=1e-6)
    assert cell[1].tolist() == pytest.approx([0.8] * 4)  # no fractions: untouched


def test_fk_step_is_logistic_without_diffusion():
    u = torch.full((1, 4, 4), 0.3)
    faces = face_coefficients(torch.zeros(1, 4, 4), 1.0)
    new = fk_step(u, faces, 0.5, 0.05)
    assert torch.allclose(new, torch.full((1, 4, 4), 0.3 + 0.05 * 0.3 * 0.7))
    assert torch.equal(u, torch.full((1, 4, 4), 0.3))  # input untouched


def test_stable_steps_bounds_and_anisotropy():
    assert stable_dt(0.5, (1.0, 1.0, 1.0)) == pytest.approx(0.8 / 3.0)
    assert stable_dt(0.5, (1.0, 1.0)) == pytest.approx(0.4)
    assert stable_dt(0.5, (0.5, 2.0), rho_max=0.5) == pytest.approx(0.8 / (2 * 0.5 * (4.0 + 0.25)))
    assert stable_dt(0.01, (1.0, 1.0), rho_max=0.5) == pytest.approx(0.2)  # the reaction bound
    # the phantom's scalar form and the general form agree
    assert stable_steps_per_day(0.6, 2.0, rho_max=0.08) == stable_steps_per_day(0.6, (2.0, 2.0, 2.0), rho_max=0.08)


def test_blur_and_dose_work_on_2d_slices():
    x = torch.zeros(2, 21, 21)
    x[:, 10, 10] = 1.0
    y = gaussian_blur(x, torch.tensor([1.0, 2.0]))
    assert torch.allclose(y.flatten(1).sum(1), torch.ones(2), atol=1e-5)
    assert float(y[0, 10, 10]) > float(y[1, 10, 10])
    dose = planning_dose(x > 0.5, margin_vox=3, penumbra_vox=1.0)
    assert float(dose[0, 7:14, 7:14].min()) == 1.0 and float(dose[0, 10, 16]) < 0.5


def test_bad_input_is_named():
    with pytest.raises(TgrowthError, match="2D"):
        simulate_fk(torch.zeros(5), torch.zeros(5), 0.1, 1.0, [1.0])
    with pytest.raises(TgrowthError, match="spacing: expected 2 values"):
        simulate_fk(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), 0.1, (1.0, 1.0, 1.0), [1.0])
    with pytest.raises(TgrowthError, match="diffusivity shape"):
        simulate_fk(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5), 0.1, 1.0, [1.0])
    with pytest.raises(TgrowthError, match="increasing"):
        simulate_fk(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), 0.1, 1.0, [3.0, 1.0])


def _moments(u: torch.Tensor, spacing: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mass ``[B]``, centre ``[B, nd]`` and covariance ``[B, nd, nd]`` (mm) of densities ``u [B, ...]``."""
    nd = u.dim() - 1
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) * h for n, h in zip(u.shape[1:], spacing)], indexing="ij")
    x = torch.stack(axes, -1).reshape(-1, nd)  # [N, nd]
    w = u.double().flatten(1)  # [B, N]
    mass = w.sum(1)
    mean = w @ x / mass[:, None]
    d = x[None] - mean[:, None]  # [B, N, nd]
    cov = torch.einsum("bn,bni,bnj->bij", w, d, d) / mass[:, None, None]
    return mass, mean, cov


@pytest.mark.parametrize("shape, spacing, scale", [
    ((61, 61), (1.0, 1.0), [[3.0, 1.0], [1.0, 1.0]]),
    ((29, 41, 21), (1.0, 1.0, 1.5), [[1.0, 4.0, 1.0], [2.0, 1.0, 0.5]]),
])
def test_diagonal_tensor_spreads_a_point_with_variance_two_d_s_t_per_axis(shape, spacing, scale):
    """Pure diffusion from a point in homogeneous tissue: the density's variance along axis a is exactly
    2 D s_a t (the exact reference: a Gaussian with those variances; the explicit scheme reproduces the
    second moments exactly while the spread stays off the grid edge; ``dt`` divides ``t``), no covariance,
    mass conserved (up to the 1e-9 truncation of the far tail)."""
    d, t, dt = 0.5, 6.0, 0.05
    b = len(scale)
    u0 = torch.zeros((b,) + shape)
    u0[(slice(None),) + tuple(n // 2 for n in shape)] = 1.0
    diff = torch.full((b,) + shape, d)
    s = torch.tensor(scale)
    out = simulate_fk(u0, diff, 0.0, spacing, [t], dt=dt, axis_scale=s)[:, 0]
    mass, mean, cov = _moments(out, spacing)
    assert torch.allclose(mass, torch.ones(b, dtype=torch.float64), rtol=1e-4)
    centre = torch.tensor([n // 2 * h for n, h in zip(shape, spacing)], dtype=torch.float64)
    assert torch.allclose(mean, centre.expand(b, -1), atol=1e-4)
    expected = 2.0 * d * s.double() * t  # [B, nd]
    assert torch.allclose(torch.diagonal(cov, dim1=1, dim2=2), expected, rtol=2e-3)
    off = cov - torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))
    assert float(off.abs().max()) < 1e-3
    # all-ones factors are the isotropic solver itself
    ones = simulate_fk(u0, diff, 0.0, spacing, [t], axis_scale=torch.ones(b, len(shape)), dt=dt)
    assert torch.equal(ones, simulate_fk(u0, diff, 0.0, spacing, [t], dt=dt))


def test_diagonal_tensor_keeps_the_no_flux_walls():
    """An anisotropic tensor still lets nothing into D = 0 (CSF): the harmonic face mean is scaled, not replaced."""
    u0 = torch.zeros(1, 20, 20)
    u0[0, 5, 10] = 1.0
    diff = torch.full((1, 20, 20), 0.4)
    diff[0, 10:] = 0.0
    out = simulate_fk(u0, diff, 0.0, 1.0, [30.0], axis_scale=torch.tensor([[5.0, 1.0]]))[:, 0]
    assert float(out[0, 10:].abs().max()) == 0.0
    assert float(out.sum()) == pytest.approx(1.0, rel=1e-5)


def test_bad_axis_scale_is_named():
    diff = torch.ones(2, 4, 4)
    with pytest.raises(TgrowthError, match=r"axis_scale: expected shape \(2, 2\)"):
        face_coefficients(diff, 1.0, torch.ones(2, 3))
    with pytest.raises(TgrowthError, match="axis_scale: factors must be positive"):
        face_coefficients(diff, 1.0, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
