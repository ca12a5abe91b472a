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


def test_mlp_encoder_rejects_mismatched_dropout():
    with pytest.raises(ValueError, match="2 hidden layers but 3 dropout"):
        MLPEncoder(10, hidden=(16, 8), dropout=(0.1, 0.1, 0.1))


@pytest.mark.parametrize("shape", [(7, 8, 9), (13, 11, 5)], ids=["7x8x9", "13x11x5"])
def test_sfcn_multichannel_any_spatial_size(shape):
    enc = SFCNEncoder(in_channels=2, out_dim=6, channels=(4, 8, 8), final_channels=8).eval()
    out = enc(torch.randn(3, 2, *shape))
    assert out.shape == (3, 6)
    assert torch.isfinite(out).all()


def test_sfcn_width_scales_channels():
    narrow = SFCNEncoder(channels=(8, 16), final_channels=8, width=0.5, out_dim=4)
    wide = SFCNEncoder(channels=(8, 16), final_channels=8, width=2.0, out_dim=4)
    n_narrow = sum(p.numel() for p in narrow.parameters())
    n_wide = sum(p.numel() for p in wide.parameters())
    assert n_wide > 4 * n_narrow


def test_sfcn_single_channel_accepts_4d_batch():
    enc = SFCNEncoder(in_channels=1, out_dim=3, channels=(4,), final_channels=4).eval()
    assert enc(torch.randn(2, 7, 8, 9)).shape == (2, 3)


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
    assert build_encoder(spec, out_dim=5).out_dim == 5


def test_encoder_spec_rejects_5d():
    with pytest.raises(ValueError, match="Cannot choose an encoder"):
        encoder_spec_for((1, 2, 3, 4, 5))
