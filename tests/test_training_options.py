"""A neural estimator's ``training`` options: how the loop runs, never what it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainage.estimators.bundle import load_bundle, save_bundle
from brainage.estimators.registry import make_estimator
from brainage.estimators.regressor import PIDRegressor
from brainage.exceptions import UsageError
from brainage.simulate.tabular import make_pid_dataset


def _fit(**training):
    torch.set_num_threads(1)
    d = make_pid_dataset("synergy", 96, n_features=4, seed=1)
    reg = PIDRegressor(latent_dim=2, hidden=(8,), max_epochs=6, batch_size=16, device="cpu",
                       random_state=3, training=training or None).fit(d.X, d.y)
    return reg, reg.predict(d.X), d


def test_prefetching_gives_the_same_model():
    _, plain, _ = _fit()
    _, ahead, _ = _fit(prefetch=3)
    np.testing.assert_array_equal(plain, ahead)


def test_fused_adam_takes_the_same_steps_up_to_rounding():
    from brainage.models.presets import get_preset
    from brainage.training.trainer import _make_optimizer

    torch.manual_seed(0)
    plain_net = torch.nn.Linear(6, 3)
    fused_net = torch.nn.Linear(6, 3)
    fused_net.load_state_dict(plain_net.state_dict())
    start = plain_net.weight.detach().clone()
    cfg = get_preset("default", lr=0.01)
    plain, _, _ = _make_optimizer(plain_net, cfg)
    fused, _, _ = _make_optimizer(fused_net, cfg, fused=True)
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    x = torch.randn(16, 6)
    for _ in range(5):
        for net, opt in ((plain_net, plain), (fused_net, fused)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(plain_net.parameters(), fused_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    moved = (plain_net.weight.detach() - start).abs().max()
    assert moved > 1e-3  # the steps did move the weights


def test_options_resolve_per_device_and_input():
    reg = PIDRegressor(training={"prefetch": "auto"})
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    volumes, table = {"anat": (1, 8, 8, 8)}, {"anat": (12,)}
    assert reg._training_options(cpu, volumes)["prefetch"] == 0  # two CPU cores: no helper thread
    assert reg._training_options(cuda, volumes)["prefetch"] == 2  # the GPU waits for batches
    assert reg._training_options(cuda, table)["prefetch"] == 0
    opts = PIDRegressor(training={"compile": True, "channels_last": True})._training_options(cpu, table)
    assert opts == {"prefetch": 0, "channels_last": True, "compile_model": True, "fused_adam": None}


@pytest.mark.parametrize("training, message", [
    ({"compiled": True}, "Unknown training option(s) ['compiled']"),
    ({"prefetch": -1}, "training.prefetch must be"),
    ({"prefetch": True}, "training.prefetch must be"),
])
def test_bad_options_are_refused_with_the_known_ones(training, message):
    d = make_pid_dataset("synergy", 40, n_features=4, seed=1)
    with pytest.raises(UsageError) as err:
        PIDRegressor(latent_dim=2, hidden=(8,), max_epochs=1, device="cpu", training=training).fit(d.X, d.y)
    assert message in str(err.value)


def test_group_config_passes_the_options_and_the_bundle_keeps_them(tmp_path):
    est = make_estimator("pidreg", modalities=["m1", "m2"],
                         params={"max_epochs": 3, "latent_dim": 2, "hidden": [8],
                                 "training": {"prefetch": 1}}, random_state=0, device="cpu")
    assert est.training == {"prefetch": 1}
    d = make_pid_dataset("synergy", 64, n_features=4, seed=2)
    est.fit(d.X, d.y)
    path = save_bundle(est, tmp_path / "model")
    again = load_bundle(path)
    assert again.training == {"prefetch": 1}


def test_baselines_take_the_same_options_and_survive_clone():
    from sklearn.base import clone

    est = make_estimator("late_fusion", modalities=["m1", "m2"],
                         params={"max_epochs": 2, "latent_dim": 2, "hidden": [8],
                                 "training": {"prefetch": 1}}, random_state=0, device="cpu")
    assert est.training == {"prefetch": 1}
    assert clone(est).training == {"prefetch": 1}
