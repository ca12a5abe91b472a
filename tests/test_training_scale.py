"""The fast training path: whole-batch reads from batch-capable datasets, no per-batch host syncs."""

from __future__ import annotations

import copy
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from brainage.models.baselines import FusionBaselineNet
from brainage.models.encoders import MLPEncoder, SFCNEncoder
from brainage.models.presets import get_preset
from brainage.training import trainer as tr_mod
from brainage.training.datasets import MultiModalData, batch_indices
from brainage.training.trainer import _first_non_finite, train_model
from brainage.training.volume_cache import VolumeCache
from tests.conftest import MNI_AFFINE_2MM

SHAPE = (7, 8, 9)  # distinct sizes per axis so a swapped axis fails


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


class _Items:
    """A dataset of items only (stacked one by one by MultiModalData)."""

    def __init__(self, arr):
        self.arr = arr

    def __len__(self):
        return len(self.arr)

    def __getitem__(self, i):
        return self.arr[int(i)]


class _Batched(_Items):
    """Items plus a ``batch`` method; counts how often each is used."""

    def __init__(self, arr):
        super().__init__(arr)
        self.items = 0
        self.batches = []

    def __getitem__(self, i):
        self.items += 1
        return super().__getitem__(i)

    def batch(self, indices):
        self.batches.append(np.asarray(indices).tolist())
        return self.arr[np.asarray(indices)]


# --------------------------------------------------------------------------- MultiModalData.batch
def test_batch_uses_a_dataset_batch_method_and_equals_the_item_stack():
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(6, 1, *SHAPE)).astype(np.float32)
    ds = _Batched(vols)
    data = MultiModalData({"anat": ds, "ref": _Items(vols)})
    ds.items = 0  # the constructor reads item 0 for the sample shape
    idx = np.array([4, 1, 5])
    out = data.batch(idx)
    assert ds.batches == [[4, 1, 5]]  # one call with the indices in the order asked
    assert ds.items == 0  # no item read one by one
    assert out["anat"].dtype == torch.float32 and out["anat"].shape == (3, 1, *SHAPE)
    torch.testing.assert_close(out["anat"], out["ref"], rtol=0, atol=0)


def test_batch_from_the_volume_cache_equals_the_item_stack(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(5):
        p = tmp_path / f"sub-{i:02d}_GM.nii.gz"
        nib.save(nib.Nifti1Image(rng.uniform(0, 1.5, SHAPE).astype(np.float32), MNI_AFFINE_2MM), p)
        paths.append(str(p))
    cache = VolumeCache.open(tmp_path / "cache", paths, [f"sub-{i:02d}" for i in range(5)], name="anat")
    ds = cache.dataset()
    data = MultiModalData({"anat": ds})
    calls = []
    real = type(ds).batch
    monkeypatch.setattr(type(ds), "batch", lambda self, idx, **kw: calls.append(1) or real(self, idx, **kw))
    idx = np.array([3, 0, 4, 3])
    got = data.batch(idx)["anat"]
    assert calls == [1]
    stacked = torch.stack([torch.as_tensor(ds[int(i)]) for i in idx])
    assert got.shape == (4, 1, *SHAPE) and got.dtype == torch.float32
    torch.testing.assert_close(got, stacked, rtol=0, atol=0)


# --------------------------------------------------------------------------- no per-batch syncs
def _baseline_setup(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = {"a": rng.normal(size=(n, 5)).astype(np.float32), "b": rng.normal(size=(n, 3)).astype(np.float32)}
    y = X["a"][:, 0] + 0.5 * X["b"][:, 1] + 0.1 * rng.normal(size=n)
    y_std = (y - y.mean()) / y.std()
    torch.manual_seed(0)
    net = FusionBaselineNet({"a": MLPEncoder(5, out_dim=4, hidden=(8,), dropout=0.1),
                             "b": MLPEncoder(3, out_dim=4, hidden=(8,), dropout=0.1)},
                            latent_dim=4, hidden=(8,), dropout=(0.1,))
    cfg = get_preset("default", latent_dim=4, hidden=(8,), dropout=(0.1,), batch_size=16, max_epochs=1)
    return net, MultiModalData(X), y_std, cfg


def _per_batch_epoch_mean(net, data, y_std, idx, cfg, seed):
    """The former trainer's epoch: a float(loss) per batch, their numpy mean."""
    torch.manual_seed(seed)
    opt, _, _ = tr_mod._make_optimizer(net, cfg)
    net.train()
    losses = []
    for b in batch_indices(idx, cfg.batch_size, shuffle=True, seed=seed, epoch=0):
        xb = data.batch(b)
        loss = torch.mean((net(xb)["pred"].float() - torch.as_tensor(y_std[b], dtype=torch.float32)) ** 2)
        assert torch.isfinite(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)), len(losses)


@pytest.mark.parametrize("check_every", [0, 1, 4], ids=["per-epoch", "per-batch", "every-4"])
def test_epoch_mean_training_loss_equals_the_per_batch_float_mean(check_every):
    net, data, y_std, cfg = _baseline_setup()
    ref_net = copy.deepcopy(net)
    idx = np.arange(len(y_std))
    res = train_model(net, data, y_std, idx, np.array([], dtype=int), cfg, seed=3, device="cpu",
                      loss_check_every=check_every)
    expected, n_batches = _per_batch_epoch_mean(ref_net, data, y_std, idx, cfg, seed=3)
    assert n_batches == 6
    assert res.history[0]["train_loss"] == pytest.approx(expected, rel=1e-12, abs=0)
    # the same optimization: the trained weights agree with the reference loop's
    for p, q in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("check_every", [0, 1, 2], ids=["per-epoch", "per-batch", "every-2"])
def test_a_nan_loss_still_stops_training_with_the_same_error(check_every):
    net, data, y_std, cfg = _baseline_setup()
    y_bad = y_std.copy()
    y_bad[7] = np.nan
    with pytest.raises(FloatingPointError, match=r"^Training loss became nan at epoch 0; lower the "
                                                  r"learning rate or check the inputs for extreme"):
        train_model(net, data, y_bad, np.arange(len(y_bad)), np.array([], dtype=int), cfg,
                    device="cpu", loss_check_every=check_every)
    if check_every == 1:  # checked before each step, as the former per-batch check: no NaN step
        assert all(torch.isfinite(p).all() for p in net.parameters())


def test_an_infinite_loss_is_reported_as_the_first_bad_value():
    losses = [torch.tensor(v, dtype=torch.float64) for v in (1.0, math.inf, math.nan, 2.0)]
    assert float(_first_non_finite(losses)) == math.inf
    assert _first_non_finite(losses[:1]) is None
    assert _first_non_finite([]) is None


def test_no_host_sync_per_batch(monkeypatch):
    """The losses are checked once per epoch (one stack), not once per batch."""
    net, data, y_std, cfg = _baseline_setup()
    checks = []
    real = tr_mod._first_non_finite
    monkeypatch.setattr(tr_mod, "_first_non_finite", lambda losses: checks.append(len(losses)) or real(losses))
    cfg = cfg.__class__.from_dict({**cfg.to_dict(), "max_epochs": 2})
    train_model(net, data, y_std, np.arange(len(y_std)), np.array([], dtype=int), cfg, device="cpu",
                loss_check_every=0)
    assert checks == [6, 6]  # one check of the epoch's six batch losses, per epoch
    checks.clear()
    # the CPU default checks before every step (a sync costs nothing there), as before
    train_model(net, data, y_std, np.arange(len(y_std)), np.array([], dtype=int), cfg, device="cpu")
    assert checks == [1] * 12
    checks.clear()
    train_model(net, data, y_std, np.arange(len(y_std)), np.array([], dtype=int), cfg, device="cpu",
                loss_check_every=4)
    assert checks == [4, 2, 4, 2]
    with pytest.raises(ValueError, match="loss_check_every must be 0"):
        train_model(net, data, y_std, np.arange(len(y_std)), np.array([], dtype=int), cfg, device="cpu",
                    loss_check_every=-1)


def test_channels_last_gives_the_same_training_up_to_rounding():
    rng = np.random.default_rng(2)
    X = {"a": rng.normal(size=(12, 1, *SHAPE)).astype(np.float32)}
    y = rng.normal(size=12)

    def net():
        torch.manual_seed(0)
        return FusionBaselineNet({"a": SFCNEncoder(in_channels=1, out_dim=4, channels=(4, 8),
                                                   final_channels=4, dropout=0.0)},
                                 latent_dim=4, hidden=(4,), dropout=(0.0,))

    cfg = get_preset("default", latent_dim=4, hidden=(4,), dropout=(0.0,), batch_size=4, max_epochs=2)
    a, b = net(), net()
    ra = train_model(a, MultiModalData(X), y, np.arange(12), np.arange(8, 12), cfg, device="cpu")
    rb = train_model(b, MultiModalData(X), y, np.arange(12), np.arange(8, 12), cfg, device="cpu",
                     channels_last=True)
    conv = [m for m in b.modules() if isinstance(m, torch.nn.Conv3d)][1]  # 4 -> 8 channels
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not conv.weight.is_contiguous()
    for ea, eb in zip(ra.history, rb.history):
        assert eb["train_loss"] == pytest.approx(ea["train_loss"], rel=1e-5)
        # Looser: the convolution biases before batch norm get pure rounding-noise gradients,
        # which Adam scales to lr-sized steps; the running means that follow them differ a little.
        assert eb["val_loss"] == pytest.approx(ea["val_loss"], rel=2e-2)
