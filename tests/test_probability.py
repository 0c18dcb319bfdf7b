"""Probability maps: batched generations, segmented, reduced; reproducible and genuinely stochastic."""

import pytest
import torch

from tgrowth.diffusion.analytic import GaussianDenoiser
from tgrowth.diffusion.guidance import AreaGuidance
from tgrowth.diffusion.sampler import sample_known_image
from tgrowth.diffusion.schedule import make_schedule
from tgrowth.diffusion.unet import Segmenter, masks_from_logits
from tgrowth.probability import probability_map, segmenter_from_logits

SCHED = make_schedule("linear")


def bright(x):
    return x[:, 0] > 0.0


@pytest.fixture
def setup():
    mu = torch.full((1, 1, 16, 16), -0.8)
    mu[..., 5:11, 5:11] = 0.8
    return GaussianDenoiser(SCHED, mu, torch.full_like(mu, 0.4)), mu[0].clone()


def test_identical_generations_give_their_mask(setup):
    model, prior = setup
    pm = probability_map(model, SCHED, prior, bright, num_generations=6, eta=0.0, encode="invert",
                         num_steps=20, keep_generations=True)
    one = sample_known_image(model, SCHED, prior[None], 200, 20)
    mask = bright(one)[0]
    assert torch.equal(pm.frequency, mask.float())
    assert torch.allclose(pm.mean, one[0], atol=1e-6) and float(pm.std.max()) < 1e-3
    assert pm.areas.tolist() == [float(mask.sum())] * 6
    assert pm.masks.shape == (6, 16, 16) and pm.images.shape == (6, 1, 16, 16)


@pytest.mark.parametrize("encode,eta", [("invert", 1.0), ("qsample", 0.0)])
def test_seeds_reproducible_and_generations_differ(setup, encode, eta):
    model, prior = setup
    kw = dict(num_generations=8, eta=eta, encode=encode, num_steps=20, keep_generations=True, chunk_size=3)
    a = probability_map(model, SCHED, prior, bright, seed=1, **kw)
    b = probability_map(model, SCHED, prior, bright, seed=1, **kw)
    c = probability_map(model, SCHED, prior, bright, seed=2, **kw)
    assert torch.equal(a.frequency, b.frequency) and torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images)
    # the generations of one map are genuinely different samples (also across chunk boundaries)
    flat = a.images.flatten(1)
    d = torch.cdist(flat, flat)
    assert float(d[~torch.eye(8, dtype=torch.bool)].min()) > 0.1
    assert 0 < float(a.std.mean())
    # frequency, mean, std are the reductions of the kept generations
    assert torch.allclose(a.frequency, a.masks.float().mean(0))
    assert torch.allclose(a.mean, a.images.mean(0), atol=1e-6)
    assert torch.allclose(a.std, a.images.std(0, unbiased=False), atol=1e-5)
    assert torch.equal(a.areas, a.masks.flatten(1).sum(1).float())
    # chunks of 3 rows: batches of 3, 3, 2 (plus the shared inversion at batch 1), never one row per generation
    assert set(model.batches) <= {1, 2, 3} and model.batches.count(3) > 0


def test_per_generation_targets_and_pixel_area(setup):
    model, prior = setup

    def area(x, t=None):
        return torch.sigmoid(4 * x[:, 0]).mean((-1, -2))

    targets = torch.tensor([0.05] * 4 + [0.4] * 4)  # prior: 36 of 256 pixels
    pm = probability_map(model, SCHED, prior, bright, num_generations=8, eta=0.5, num_steps=20, chunk_size=4,
                         callbacks=[AreaGuidance(area, targets, 3e4)], pixel_area=0.25, keep_generations=True)
    small, big = pm.areas[:4], pm.areas[4:]
    assert float(big.min()) > 1.5 * 36 * 0.25 and float(small.max()) < 0.6 * 36 * 0.25
    assert torch.equal(pm.areas, pm.masks.flatten(1).sum(1).float() * 0.25)


def test_segmenter_from_logits_and_errors(setup):
    model, prior = setup
    x = torch.randn(2, 1, 4, 4)
    one = segmenter_from_logits(lambda z: z)(x)
    assert torch.equal(one, x[:, 0] > 0)
    # channel 0 is the whole tumour (tgrowth's Segmenter); sub-region channels after it do not matter
    regions = segmenter_from_logits(lambda z: torch.cat([z, torch.full_like(z, 9.0)], 1))(x)
    assert torch.equal(regions, x[:, 0] > 0)
    multi = segmenter_from_logits(lambda z: torch.cat([torch.zeros_like(z), z], 1), mode="argmax")(x)
    assert torch.equal(multi, x[:, 0] > 0)
    # one threshold for a segmented pixel: the Segmenter's own masks, its validation's and the map's agree
    seg = Segmenter(image_size=16, in_channels=1, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                    num_regions=2).eval()
    with torch.no_grad():
        torch.nn.init.normal_(seg.net.out[-1].weight, std=0.3)
    img = torch.randn(3, 1, 16, 16)
    mask = seg.segment(img)
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.equal(segmenter_from_logits(seg)(img), mask)
    assert torch.equal(masks_from_logits(seg(img).detach())[:, 0], mask)
    assert torch.equal(segmenter_from_logits(seg, threshold=0.9)(img), seg.segment(img, threshold=0.9))
    with pytest.raises(ValueError, match="segmenter must return"):
        probability_map(model, SCHED, prior, lambda z: z.flatten(), num_generations=2, num_steps=2)
    with pytest.raises(ValueError, match="one slice"):
        probability_map(model, SCHED, prior.expand(2, 1, 16, 16)[:, None].reshape(2, 1, 16, 16), bright)


@pytest.mark.parametrize("encode,eta", [("invert", 1.0), ("qsample", 0.5)])
def test_chunking_never_changes_a_map(setup, encode, eta):
    """Noise is keyed per generation, so the batch split is invisible (it was seeded per chunk before)."""
    model, prior = setup
    kw = dict(num_generations=7, eta=eta, encode=encode, num_steps=10, keep_generations=True, seed=5)
    whole = probability_map(model, SCHED, prior, bright, chunk_size=None, **kw)
    for chunk in (1, 3, 4):
        part = probability_map(model, SCHED, prior, bright, chunk_size=chunk, **kw)
        assert torch.allclose(part.images, whole.images, atol=1e-6), chunk
        assert torch.equal(part.masks, whole.masks)


def test_shared_noise_seeds_give_common_random_numbers(setup):
    """Generation i of two maps with the same noise seeds sees the same noise: with a zero guidance scale the
    'two methods' are then identical row by row, and the generations of one map still differ."""
    from tgrowth.diffusion.sampler import key_seed

    model, prior = setup
    seeds = [key_seed(3, "SUB01", i) for i in range(4)]
    kw = dict(num_generations=8, eta=0.8, encode="qsample", num_steps=10, keep_generations=True, chunk_size=3)
    both = probability_map(model, SCHED, prior, bright, noise_seeds=seeds + seeds, **kw)
    assert torch.allclose(both.images[:4], both.images[4:], atol=1e-6)
    assert float((both.images[0] - both.images[1]).abs().max()) > 0.1
    with pytest.raises(ValueError, match="noise_seeds has length 3"):
        probability_map(model, SCHED, prior, bright, num_generations=2, num_steps=2, noise_seeds=[1, 2, 3])


def test_groups_reduce_once_per_group(setup):
    """Several methods in one pass: per-group frequency/mean/std equal the reductions of each group's rows."""
    model, prior = setup
    groups = [0, 1, 0, 2, 1, 2, 2]
    pm = probability_map(model, SCHED, prior, bright, num_generations=7, eta=0.8, encode="qsample", num_steps=10,
                         keep_generations=True, chunk_size=3, groups=groups)
    assert pm.frequency.shape == (3, 16, 16) and pm.mean.shape == (3, 1, 16, 16) and pm.areas.shape == (7,)
    g = torch.tensor(groups)
    for k in range(3):
        rows = g == k
        assert torch.allclose(pm.frequency[k], pm.masks[rows].float().mean(0))
        assert torch.allclose(pm.mean[k], pm.images[rows].mean(0), atol=1e-6)
        assert torch.allclose(pm.std[k], pm.images[rows].std(0, unbiased=False), atol=1e-5)
    with pytest.raises(ValueError, match=r"groups must use every index 0\.\.2 \(empty: \[1\]\)"):
        probability_map(model, SCHED, prior, bright, num_generations=3, num_steps=2, groups=[0, 2, 2])


@pytest.mark.parametrize("encode,eta", [("invert", 0.5), ("qsample", 0.5)])
def test_several_priors_in_one_pass_equal_one_pass_per_prior(setup, encode, eta):
    """prior_index: every generation from its own prior (and keep mask), e.g. the slices of a volume in one
    batched pass; each prior's group equals a separate single-prior map with the same noise seeds."""
    model, prior = setup
    other = prior.flip(-1) * 0.5
    priors = torch.stack([prior, other])
    keep = torch.zeros(2, 16, 16)
    keep[1, :, :4] = 1.0  # the second prior keeps its four left columns
    seeds = [11, 12, 13]
    kw = dict(eta=eta, encode=encode, num_steps=10)
    both = probability_map(model, SCHED, priors, bright, num_generations=6, chunk_size=4, keep_mask=keep,
                           noise_seeds=seeds * 2, prior_index=[0, 0, 0, 1, 1, 1], groups=[0, 0, 0, 1, 1, 1], **kw)
    for i, p in enumerate((prior, other)):
        one = probability_map(model, SCHED, p, bright, num_generations=3, noise_seeds=seeds, keep_mask=keep[i], **kw)
        assert torch.allclose(both.mean[i], one.mean, atol=1e-5) and torch.equal(both.frequency[i], one.frequency)
        assert torch.allclose(both.areas[3 * i:3 * i + 3], one.areas)
    assert torch.allclose(both.mean[1][..., :4], other[..., :4], atol=1e-5)  # kept exactly where keep is 1
    with pytest.raises(ValueError, match="prior_index must be 6 indices into the 2 priors"):
        probability_map(model, SCHED, priors, bright, num_generations=6, prior_index=[0, 1, 2, 0, 1, 0], **kw)
    with pytest.raises(ValueError, match="several need prior_index"):
        probability_map(model, SCHED, priors, bright, num_generations=6, **kw)
