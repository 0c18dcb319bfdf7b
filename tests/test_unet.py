import math

import pytest
import torch

from tgrowth.diffusion.unet import EncoderRegressor, Segmenter, UNet, timestep_embedding


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core box runs these small convolutions far faster on one thread
    yield
    torch.set_num_threads(old)


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised output layers make a fresh UNet output 0; give every weight a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _tiny_unet(**kw):
    args = dict(image_size=32, in_channels=2, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(16,))
    args.update(kw)
    return UNet(**args)


def test_timestep_embedding_matches_formula():
    t = torch.tensor([0, 1, 17, 999])
    dim = 6
    emb = timestep_embedding(t, dim)
    for b, tb in enumerate(t.tolist()):
        for i in range(3):
            f = 10000.0 ** (-i / 3)
            assert emb[b, i].item() == pytest.approx(math.cos(tb * f), abs=1e-5)
            assert emb[b, 3 + i].item() == pytest.approx(math.sin(tb * f), abs=1e-5)
    odd = timestep_embedding(t, 7)
    assert odd.shape == (4, 7) and torch.equal(odd[:, :6], emb) and torch.all(odd[:, 6] == 0)


def test_unet_shapes_learned_sigma_and_broadcast():
    torch.manual_seed(0)
    m = _randomise(_tiny_unet(learn_sigma=True)).eval()
    x = torch.randn(3, 2, 32, 32)
    t = torch.tensor([0, 500, 999])
    eps = m(x, t)
    assert eps.shape == x.shape
    e2, v = m.forward_with_var(x, t)
    assert v.shape == x.shape and torch.equal(e2, eps)
    assert m.forward_raw(x, t).shape == (3, 4, 32, 32)
    # a scalar t is broadcast over the batch
    assert torch.allclose(m(x, 7), m(x, torch.full((3,), 7)))
    # other resolutions run (convolutions), e.g. 64x64
    assert m(torch.randn(1, 2, 64, 64), t[:1]).shape == (1, 2, 64, 64)
    # float64 networks work too (e.g. for exact-arithmetic checks)
    m64 = _randomise(_tiny_unet(learn_sigma=True)).double().eval()
    assert m64(x.double(), t).dtype == torch.float64
    with pytest.raises(ValueError, match="shape \\[3\\]"):
        m(x, torch.tensor([1, 2]))


def test_timestep_changes_output():
    m = _randomise(_tiny_unet()).eval()
    x = torch.randn(2, 2, 32, 32)
    assert not torch.allclose(m(x, 10), m(x, 900))


def test_class_conditioning_changes_output_and_needs_y():
    m = _randomise(_tiny_unet(num_classes=2)).eval()
    x = torch.randn(2, 2, 32, 32)
    t = torch.tensor([100, 100])
    healthy, diseased = m(x, t, torch.tensor([0, 0])), m(x, t, torch.tensor([1, 1]))
    assert (healthy - diseased).abs().max() > 1e-3
    assert torch.allclose(m(x, t, 1), diseased)
    with pytest.raises(ValueError, match="class-conditioned: pass y"):
        m(x, t)
    # with class dropout the learned 'no class' token allows y=None
    m2 = _randomise(_tiny_unet(num_classes=2, class_dropout=0.1)).eval()
    assert m2(x, t).shape == x.shape and not torch.allclose(m2(x, t), m2(x, t, 1))


def test_channels_last_gives_same_output():
    m = _randomise(_tiny_unet(num_classes=2)).eval()
    x = torch.randn(2, 2, 32, 32)
    t = torch.tensor([3, 300])
    ref = m(x, t, 1)
    m_cl = m.to(memory_format=torch.channels_last)
    out = m_cl(x.contiguous(memory_format=torch.channels_last), t, 1)
    assert torch.allclose(out, ref, atol=1e-5)


def test_regressor_shape_and_gradient_wrt_x():
    r = _randomise(EncoderRegressor(image_size=32, in_channels=2, model_channels=16, channel_mult=(1, 2, 2),
                                    num_res_blocks=1, attention_resolutions=(16, 8), num_head_channels=16))
    x = torch.randn(4, 2, 32, 32, requires_grad=True)
    out = r(x, torch.tensor([0, 10, 200, 999]))
    assert out.shape == (4,)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.shape == x.shape and g.abs().sum() > 0
    # each output depends on its own image only
    (g0,) = torch.autograd.grad(r(x, 5)[0], x)
    assert g0[1:].abs().max() == 0 and g0[0].abs().sum() > 0
    with pytest.raises(ValueError, match="wrong image size"):
        r(torch.randn(1, 2, 64, 64), 0)


def test_segmenter_shapes_and_mask():
    s = Segmenter(image_size=32, in_channels=2, model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_regions=3)
    x = torch.randn(2, 2, 32, 32)
    logits = s(x)
    assert logits.shape == (2, 3, 32, 32)
    mask = s.segment(x)
    assert mask.dtype == torch.bool and mask.shape == (2, 32, 32)
    assert torch.equal(mask, torch.sigmoid(logits[:, 0]) > 0.5)


def test_bad_sizes_are_reported():
    with pytest.raises(ValueError, match="does not divide image_size"):
        _tiny_unet(attention_resolutions=(12,))
    with pytest.raises(ValueError, match="not divisible by 2"):
        UNet(image_size=30, in_channels=1, model_channels=8, channel_mult=(1, 2, 2), attention_resolutions=())
