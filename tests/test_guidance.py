"""Guidance callbacks with a differentiable area proxy as the "regressor" and an analytic denoiser."""

import pytest
import torch

from tgrowth.diffusion.analytic import GaussianDenoiser
from tgrowth.diffusion.guidance import AnatomyGuidance, AreaGuidance
from tgrowth.diffusion.sampler import sample_known_image
from tgrowth.diffusion.schedule import make_schedule

SCHED = make_schedule("linear")


def area_proxy(x, t=None):
    """Soft fraction of bright pixels: a differentiable stand-in for the tumour-area regressor."""
    return torch.sigmoid(3 * x[:, 0]).mean((-1, -2))


@pytest.fixture(scope="module")
def setup():
    mu = torch.full((1, 1, 16, 16), -0.8)
    mu[..., 4:10, 4:10] = 0.8  # a bright "tumour" on a dark background
    return GaussianDenoiser(SCHED, mu, torch.full_like(mu, 0.3)), mu.clone()


def _gen(model, prior, cbs, n=None, **kw):
    kw.setdefault("num_steps", 40)
    return sample_known_image(model, SCHED, prior, 200, callbacks=cbs, num_samples=n, **kw)


@pytest.mark.parametrize("form,base", [("authors", 100.0), ("loss", 50.0), ("x0", 300.0)])
def test_area_moves_toward_target_more_with_larger_scale(setup, form, base):
    model, prior = setup
    a0 = float(area_proxy(prior))
    for target in (0.4, 0.15):  # grow and shrink
        areas = [float(area_proxy(_gen(model, prior, [AreaGuidance(area_proxy, target, s * base, form=form)])))
                 for s in (0.0, 100.0, 1000.0)]
        err = [abs(a - target) for a in areas]
        assert abs(areas[0] - a0) < 1e-3  # unguided reconstructs the prior's area
        assert err[2] < err[1] < err[0], (form, target, areas)
        assert err[2] < 0.5 * err[0]


def test_zero_scale_equals_unguided_exactly(setup):
    model, prior = setup
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = _gen(model, prior, [], n=3, eta=0.7, generator=g())
    for form in AreaGuidance.FORMS:
        guided = _gen(model, prior, [AreaGuidance(area_proxy, 0.4, 0.0, form=form)], n=3, eta=0.7, generator=g())
        assert torch.equal(plain, guided)
    per_sample_zero = AreaGuidance(area_proxy, torch.tensor([0.1, 0.4, 0.3]), torch.zeros(3))
    assert torch.equal(plain, _gen(model, prior, [per_sample_zero], n=3, eta=0.7, generator=g()))


def test_per_sample_scales_and_targets_equal_separate_runs(setup):
    model, prior = setup
    scales, targets = torch.tensor([0.0, 100.0, 1000.0]), torch.tensor([0.4, 0.1, 0.3])
    batch = _gen(model, prior, [AreaGuidance(area_proxy, targets, scales, boost=0.15)], n=3)
    for i in range(3):
        one = _gen(model, prior, [AreaGuidance(area_proxy, float(targets[i]), float(scales[i]), boost=0.15)])
        assert torch.allclose(batch[i : i + 1], one, atol=1e-5, rtol=0)


def test_loss_form_with_sqrt_schedule_is_the_authors_form(setup):
    model, prior = setup
    a = _gen(model, prior, [AreaGuidance(area_proxy, 0.4, 500.0, form="authors")])
    b = _gen(model, prior, [AreaGuidance(area_proxy, 0.4, 500.0, form="loss", scale_schedule="sqrt_one_minus_abar")])
    c = _gen(model, prior, [AreaGuidance(area_proxy, 0.4, 500.0, form="loss")])
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-3)


def test_boost_raises_the_target_only_above_t20(setup):
    model, prior = setup
    cb = AreaGuidance(area_proxy, torch.tensor([0.2, 0.4]), 1.0, boost=0.15)
    rows = torch.tensor([1, 0])
    x = torch.zeros(2, 1, 4, 4)
    assert cb.effective_target(torch.tensor([21, 20]), rows, x).tolist() == pytest.approx([0.46, 0.2])
    boosted = float(area_proxy(_gen(model, prior, [AreaGuidance(area_proxy, 0.3, 300.0, boost=0.15)])))
    plain = float(area_proxy(_gen(model, prior, [AreaGuidance(area_proxy, 0.3, 300.0)])))
    assert boosted > plain


def test_callbacks_compose_and_anatomy_term_keeps_background(setup):
    model, prior = setup
    keep = torch.ones(16, 16)
    keep[2:12, 2:12] = 0  # the tumour region (dilated) may change, the rest is kept
    area_cb = AreaGuidance(area_proxy, 0.45, 1e5, record=True)
    free = _gen(model, prior, [area_cb], eta=1.0, generator=torch.Generator().manual_seed(0))
    kept = _gen(model, prior, [area_cb, AnatomyGuidance(keep, weight=0.9)], eta=1.0,
                generator=torch.Generator().manual_seed(0))
    outside = keep.bool()
    d_free = (free[0, 0][outside] - prior[0, 0][outside]).abs().mean()
    d_kept = (kept[0, 0][outside] - prior[0, 0][outside]).abs().mean()
    assert d_kept < 0.5 * d_free
    assert float(area_proxy(kept)) > float(area_proxy(prior)) + 0.03  # the area term still acts inside
    with pytest.raises(ValueError, match="unknown guidance form"):
        AreaGuidance(area_proxy, 0.4, 1.0, form="dps")
    with pytest.raises(ValueError, match="length 2"):
        _gen(model, prior, [AreaGuidance(area_proxy, torch.tensor([0.1, 0.2]), 1.0)], n=3)


@pytest.mark.parametrize("form", ["authors", "loss", "x0", "x0_detached"])
def test_regressor_scale_makes_the_correction_independent_of_output_units(setup, form):
    """A percent regressor (fraction x 100) with regressor_scale=100 gives exactly the correction of a fraction
    regressor at the same scale and fraction target; without it the correction is 100^2 times stronger."""
    from tgrowth.diffusion.sampler import DiffusionStep, _EpsModel

    model, prior = setup
    x = SCHED.q_sample(prior, torch.tensor([199]), torch.randn(prior.shape, generator=torch.Generator().manual_seed(0)))
    t = torch.tensor([199])
    a = SCHED.abar(t, like=x)
    f = _EpsModel(model, None, None, False)
    eps = f(x, t)

    def step():
        return DiffusionStep(x, t, t - 1, a, a, eps, SCHED.predict_x0(x, eps, t), 0, 1, torch.tensor([0]),
                             prior, f, {})

    target = float(area_proxy(prior)) * 1.2
    frac = AreaGuidance(area_proxy, target, 5e4, form=form)(step()) - eps

    def percent(z, tt=None):
        return 100 * area_proxy(z)

    scaled = AreaGuidance(percent, target, 5e4, form=form, regressor_scale=100)(step()) - eps
    raw = AreaGuidance(percent, 100 * target, 5e4, form=form)(step()) - eps
    assert float(frac.abs().mean()) > 0
    assert torch.allclose(scaled, frac, rtol=1e-4, atol=1e-9)
    assert torch.allclose(raw, frac * 1e4, rtol=1e-3)
    with pytest.raises(ValueError, match="regressor_scale must be > 0"):
        AreaGuidance(percent, 0.1, 1.0, regressor_scale=0)


def test_soft_area_of_a_segmenter_guides_on_the_x0_prediction(setup):
    """A 'segmenter' that never sees noise (a fixed logit map of x) steers the area through x0_hat; the
    x0_detached form costs no denoiser backward pass and still moves the area toward the target."""
    from tgrowth.diffusion.guidance import SoftArea

    model, prior = setup

    class Seg(torch.nn.Module):
        def forward(self, x):
            return 6 * x[:, :1]  # logit: bright = tumour

    area = SoftArea(Seg())
    x = torch.full((2, 1, 4, 4), -1.0)
    x[1, 0, :2] = 1.0
    assert torch.allclose(area(x), torch.tensor([torch.sigmoid(torch.tensor(-6.0)),
                                                 0.5 * (torch.sigmoid(torch.tensor(6.0)) + torch.sigmoid(torch.tensor(-6.0)))]))
    a0 = float(area(prior))
    for target in (0.45, 0.05):
        got = [float(area(_gen(model, prior, [AreaGuidance(area, target, s, form="x0_detached")]))) for s in (0.0, 3e2, 3e3)]
        err = [abs(g - target) for g in got]
        assert abs(got[0] - a0) < 1e-2 and err[2] < err[1] < err[0], (target, got)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SoftArea(Seg(), temperature=0)


# --------------------------------------------------------------------------- spatial guidance
def _pixel_proxy(x):
    """Soft per-pixel 'tumour' mask of bright pixels: the spatial counterpart of area_proxy."""
    return torch.sigmoid(3 * x[:, 0])


def test_spatial_guidance_gradient_equals_the_hand_computed_one():
    """eps <- eps + w_b sqrt(1 - abar) grad_{x_t} 0.5 mean_p (s - m)^2 with s = sigmoid(a x0_hat[:, 0]) and
    x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar), eps fixed: per pixel the gradient is
    (s - m) / P * a s (1 - s) / sqrt(abar) on channel 0 and 0 on channel 1; a weight-0 row is untouched."""
    from tgrowth.diffusion.guidance import SpatialGuidance
    from tgrowth.diffusion.sampler import DiffusionStep

    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(3, 2, 3, 4, generator=g), torch.randn(3, 2, 3, 4, generator=g)
    maps = (torch.rand(2, 3, 4, generator=g) > 0.5).float()  # K = 2 target maps
    groups = torch.tensor([1, 0, 1, 0])  # a run of N = 4; this batch holds rows 2, 0, 1
    rows = torch.tensor([2, 0, 1])
    weight = torch.tensor([7.0, 0.0, 2.5, 1.0])
    abar = torch.tensor(0.36)
    step = DiffusionStep(x, torch.full((3,), 50), torch.full((3,), 40), abar.reshape(1, 1, 1, 1), abar, eps,
                         x, 0, 1, rows, None, None, {})
    out = SpatialGuidance(_pixel_proxy, maps, weight, groups=groups)(step)

    x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    s = torch.sigmoid(3 * x0[:, 0])
    m = maps[groups[rows]]
    grad = torch.zeros_like(x)
    grad[:, 0] = (s - m) / 12 * 3 * s * (1 - s) / abar.sqrt()
    want = eps + (weight[rows] * (1 - abar).sqrt()).view(-1, 1, 1, 1) * grad
    assert torch.allclose(out, want, rtol=1e-5, atol=1e-7)
    assert torch.equal(out[2], eps[2])  # run row 1 has weight 0: bit for bit
    assert float((out[:2] - eps[:2]).abs().amax((1, 2, 3)).min()) > 1e-3
    assert step.state["last_loss"].tolist() == pytest.approx((0.5 * ((s - m) ** 2).mean((1, 2))).tolist(), rel=1e-5)
    with pytest.raises(ValueError, match="groups must index the 2 target maps"):
        SpatialGuidance(_pixel_proxy, maps, 1.0, groups=torch.tensor([0, 2]))


def test_spatial_guidance_tolerance_and_schedule_against_the_hand_computed_gradient():
    """With tolerance tol the per-pixel loss is 0.5 relu(|s - m| - tol)^2: pixels within tol of the target get no
    push, the others (s - m - tol sign(s - m)) / P * a s (1 - s) / sqrt(abar); the schedule one_minus_abar
    multiplies the weight by 1 - abar. tol = 0 with the constant schedule is the squared error bit for bit."""
    from tgrowth.diffusion.guidance import SpatialGuidance
    from tgrowth.diffusion.sampler import DiffusionStep

    g = torch.Generator().manual_seed(5)
    x, eps = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    m = (torch.rand(4, 4, generator=g) > 0.5).float()
    abar = torch.tensor(0.49)

    def step():
        return DiffusionStep(x, torch.full((2,), 50), torch.full((2,), 40), abar.reshape(1, 1, 1, 1), abar, eps,
                             x, 0, 1, torch.arange(2), None, None, {})

    x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    s = torch.sigmoid(3 * x0[:, 0])
    d = s - m
    tol = 0.45
    assert bool((d.abs() <= tol).any()) and bool((d.abs() > tol).any())  # both kinds of pixel occur
    push = torch.where(d.abs() > tol, d - tol * d.sign(), torch.zeros_like(d))
    grad = (push / 16 * 3 * s * (1 - s) / abar.sqrt())[:, None]
    out = SpatialGuidance(_pixel_proxy, m, 4.0, tolerance=tol, scale_schedule="one_minus_abar")(step())
    assert torch.allclose(out, eps + 4.0 * (1 - abar) * (1 - abar).sqrt() * grad, rtol=1e-5, atol=1e-7)
    within = (d.abs() <= tol)[:, None]
    assert torch.equal(out[within], eps[within])  # pixels already on the right side are not pushed
    plain = SpatialGuidance(_pixel_proxy, m, 4.0)(step())
    assert torch.equal(SpatialGuidance(_pixel_proxy, m, 4.0, tolerance=0.0, scale_schedule="constant")(step()), plain)
    with pytest.raises(ValueError, match="tolerance must be in"):
        SpatialGuidance(_pixel_proxy, m, 1.0, tolerance=1.0)


def test_zero_spatial_weight_leaves_sampling_bitwise_unchanged(setup):
    from tgrowth.diffusion.guidance import SpatialGuidance

    model, prior = setup
    target = torch.zeros(16, 16)
    target[8:14, 8:14] = 1
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    area = AreaGuidance(area_proxy, 0.3, 300.0)
    plain = _gen(model, prior, [area], n=3, eta=0.7, generator=g())
    for w in (0.0, torch.zeros(3)):
        got = _gen(model, prior, [area, SpatialGuidance(_pixel_proxy, target, w)], n=3, eta=0.7, generator=g())
        assert torch.equal(plain, got)
    # a batch mixing weights: the weight-0 rows equal the run without the term, bit for bit
    mixed = _gen(model, prior, [area, SpatialGuidance(_pixel_proxy, target, torch.tensor([0.0, 5e3, 0.0]))],
                 n=3, eta=0.7, generator=g())
    assert torch.equal(mixed[[0, 2]], plain[[0, 2]]) and not torch.allclose(mixed[1], plain[1], atol=1e-3)


def test_spatial_guidance_moves_the_tumour_toward_the_target_map(setup):
    """The prior's bright square sits at 4:10; the target map is a square of the same size at 7:13. The share of
    the soft tumour mask inside the target rises with the weight, the hard mask lands on the target (Dice 0.25
    -> 1), and the area term keeps the size."""
    from tgrowth.diffusion.guidance import SpatialGuidance

    model, prior = setup
    target = torch.zeros(16, 16)
    target[7:13, 7:13] = 1
    area = AreaGuidance(area_proxy, float(area_proxy(prior)), 300.0)
    share, dice, sizes = [], [], []
    for w in (0.0, 2e3, 2e4):
        x = _gen(model, prior, [area, SpatialGuidance(_pixel_proxy, target, w)])
        s, hard = _pixel_proxy(x)[0], x[0, 0] > 0
        share.append(float((s * target).sum() / s.sum()))
        dice.append(float(2 * (hard & target.bool()).sum() / (hard.sum() + target.sum())))
        sizes.append(float(area_proxy(x)))
    assert share[0] < share[1] < share[2], share
    assert dice[0] == pytest.approx(0.25) and dice[2] == pytest.approx(1.0), dice
    assert max(abs(a - sizes[0]) for a in sizes) < 0.03, sizes
