import pytest
import torch

from brainage.models.encoders import MLPEncoder, SFCNEncoder, build_encoder, encoder_spec_for


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_mlp_encoder_shape_and_final_batchnorm():
    enc = MLPEncoder(10, out_dim=4, hidden=(16, 8), dropout=0.1).train()
    out = enc(torch.randn(32, 10))
    assert out.shape == (32, 4)
    # the latent ends in batch normalisation: zero mean, unit variance per unit in training
    assert torch.allclose(out.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(out.var(0, unbiased=False), torch.ones(4), atol=1e-3)


def _grads_reach_every_parameter(enc, x):
    enc.zero_grad()
    out = enc(x)
    # a fixed random read-out (a sum of squares is constant under the final batch norm)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    # a bias just before a batch norm has no gradient in theory, so only weights must get one
    missing = [name for name, p in enc.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all()
               or (name.endswith("weight") and not p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reaches {missing}"


def test_mlp_encoder_is_seeded_input_dependent_and_trainable():
    x = torch.randn(16, 10)
    torch.manual_seed(3)
    a = MLPEncoder(10, out_dim=4, hidden=(16, 8), dropout=0.1).eval()
    torch.manual_seed(3)
    b = MLPEncoder(10, out_dim=4, hidden=(16, 8), dropout=0.1).eval()
    torch.manual_seed(4)
    c = MLPEncoder(10, out_dim=4, hidden=(16, 8), dropout=0.1).eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)  # same seed, same weights
        assert not torch.allclose(a(x), c(x))
        # in eval mode each row depends on its own input only, and on every feature
        x2 = x.clone()
        x2[0] += 1.0
        out, out2 = a(x), a(x2)
        assert not torch.allclose(out[0], out2[0])
        torch.testing.assert_close(out[1:], out2[1:])
    _grads_reach_every_parameter(a.train(), x)


def test_mlp_encoder_rejects_mismatched_dropout():
    with pytest.raises(ValueError, match="2 hidden layers but 3 dropout"):
        MLPEncoder(10, hidden=(16, 8), dropout=(0.1, 0.1, 0.1))


@pytest.mark.parametrize("shape", [(7, 8, 9), (13, 11, 5)], ids=["7x8x9", "13x11x5"])
def test_sfcn_multichannel_any_spatial_size(shape):
    enc = SFCNEncoder(in_channels=2, out_dim=6, channels=(4, 8, 8), final_channels=8).eval()
    x = torch.randn(3, 2, *shape)
    out = enc(x)
    assert out.shape == (3, 6)
    assert torch.isfinite(out).all()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), out, rtol=0, atol=0)  # eval mode: deterministic
        # each participant's latent depends on its own volume only, and on both channels
        for channel in (0, 1):
            x2 = x.clone()
            x2[0, channel] = torch.randn(shape)
            out2 = enc(x2)
            assert not torch.allclose(out2[0], out[0]), f"channel {channel} is ignored"
            torch.testing.assert_close(out2[1:], out[1:])
    _grads_reach_every_parameter(enc.train(), x)


def test_sfcn_same_seed_same_weights_and_outputs():
    x = torch.randn(2, 1, 7, 8, 9)
    outs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        enc = SFCNEncoder(in_channels=1, out_dim=3, channels=(4, 8), final_channels=4).eval()
        with torch.no_grad():
            outs.append(enc(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.allclose(outs[0], outs[2])


def test_sfcn_width_scales_channels():
    narrow = SFCNEncoder(channels=(8, 16), final_channels=8, width=0.5, out_dim=4)
    wide = SFCNEncoder(channels=(8, 16), final_channels=8, width=2.0, out_dim=4)
    n_narrow = sum(p.numel() for p in narrow.parameters())
    n_wide = sum(p.numel() for p in wide.parameters())
    assert n_wide > 4 * n_narrow


def test_sfcn_single_channel_accepts_4d_batch():
    enc = SFCNEncoder(in_channels=1, out_dim=3, channels=(4,), final_channels=4).eval()
    x = torch.randn(2, 7, 8, 9)
    with torch.no_grad():
        out = enc(x)
        assert out.shape == (2, 3)
        # (n, X, Y, Z) is read as (n, 1, X, Y, Z): the same latents
        torch.testing.assert_close(out, enc(x.unsqueeze(1)), rtol=0, atol=0)
        assert not torch.allclose(out[0], out[1])


def test_sfcn_wrong_channels_message():
    enc = SFCNEncoder(in_channels=2, out_dim=3, channels=(4,), final_channels=4)
    with pytest.raises(ValueError, match=r"expects a batch of shape \(n, 2, X, Y, Z\)"):
        enc(torch.randn(2, 3, 7, 8, 9))


@pytest.mark.parametrize(
    ("shape", "kind", "key", "value"),
    [((12,), "mlp", "in_features", 12), ((7, 8, 9), "sfcn", "in_channels", 1),
     ((2, 7, 8, 9), "sfcn", "in_channels", 2)],
    ids=["vector", "volume", "multichannel"],
)
def test_encoder_spec_for_shapes(shape, kind, key, value):
    spec = encoder_spec_for(shape)
    assert spec["kind"] == kind and spec[key] == value
    enc = build_encoder(spec, out_dim=5)
    assert enc.out_dim == 5
    assert isinstance(enc, MLPEncoder if kind == "mlp" else SFCNEncoder)
    # the built encoder takes a batch of exactly that sample shape
    x = torch.randn(4, *shape)
    out = enc.eval()(x)
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    _grads_reach_every_parameter(enc.train(), x)


def test_encoder_spec_rejects_5d():
    with pytest.raises(ValueError, match="Cannot choose an encoder"):
        encoder_spec_for((1, 2, 3, 4, 5))


def test_a_linear_encoder_refuses_more_latents_than_inputs():
    from brainage.exceptions import UsageError
    from brainage.models.encoders import MLPEncoder

    with pytest.raises(UsageError, match="set latent_dim to at most 3, or add a hidden layer"):
        MLPEncoder(3, out_dim=4, hidden=(), dropout=())
    assert MLPEncoder(3, out_dim=3, hidden=(), dropout=()).out_dim == 3
    assert MLPEncoder(3, out_dim=4, hidden=(8,), dropout=0.0).out_dim == 4
