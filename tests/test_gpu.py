"""CUDA path of PIDReg: run with ``pytest -m gpu`` on a machine with an NVIDIA GPU.

The default test run deselects these (``-m "not gpu"`` in pyproject's addopts);
on a machine without CUDA, ``pytest -m gpu`` fails loudly instead of skipping,
so a GPU check can never pass by doing nothing.
"""

import numpy as np
import pytest
import torch

from brainage.estimators.regressor import PIDRegressor
from brainage.models.losses import cs_cmi_loss, cs_gaussianity_loss, normality_loss
from brainage.models.pid_torch import gaussian_pid_torch
from brainage.pid import gaussian_pid
from brainage.simulate.tabular import make_pid_dataset

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _needs_cuda():
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device (run them with -m gpu on a GPU)"


def test_gaussian_pid_torch_on_cuda_matches_numpy():
    rng = np.random.default_rng(0)
    y = rng.standard_normal(512)
    z1 = np.outer(y, rng.normal(0, 0.3, 16)) + rng.standard_normal((512, 16))
    z2 = np.outer(y, rng.normal(0, 0.2, 16)) + rng.standard_normal((512, 16)) + 0.5 * z1
    ref = gaussian_pid(y, z1, z2)
    out = gaussian_pid_torch(*(torch.from_numpy(a).to(CUDA) for a in (y, z1, z2)))
    for atom in ("U1", "U2", "R", "S", "I12"):
        assert out[atom].device.type == "cuda"
        assert float(out[atom]) == pytest.approx(getattr(ref, atom), abs=1e-6)


def test_regularizers_under_bf16_autocast_on_cuda_close_to_cpu_float32():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(256, 8, generator=g)
    x2 = 0.6 * x1 + 0.8 * torch.randn(256, 8, generator=g)
    z = torch.tanh(x1) + (x2 - 0.6 * x1) + 0.3 * torch.randn(256, 8, generator=g)
    joint = torch.cat([torch.randn(256, 1, generator=g), z, x1], dim=1)
    ref_cmi = cs_cmi_loss(z, x2, x1).item()
    ref_norm = normality_loss(joint).item()
    zc = z.to(CUDA).requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        cmi = cs_cmi_loss(zc.to(torch.bfloat16), x2.to(CUDA), x1.to(CUDA))
        gauss = cs_gaussianity_loss(zc, generator=torch.Generator(device=CUDA).manual_seed(1))
        norm = normality_loss(torch.cat([joint[:, :1].to(CUDA), zc, x1.to(CUDA)], dim=1))
    (cmi + gauss + norm).backward()
    assert torch.isfinite(zc.grad).all() and zc.grad.abs().max() > 0
    assert cmi.item() == pytest.approx(ref_cmi, abs=0.05)
    assert norm.item() == pytest.approx(ref_norm, rel=1e-3, abs=1e-6)


def test_pidregressor_trains_on_cuda_with_bf16_and_reloads_on_cpu(tmp_path):
    train = make_pid_dataset("redundancy", 1024, n_features=16, seed=0, map_seed=0)
    test = make_pid_dataset("redundancy", 512, n_features=16, seed=1, map_seed=0)
    reg = PIDRegressor(latent_dim=8, hidden=(32,), max_epochs=25, batch_size=128, random_state=0,
                       device="cuda").fit(train.X, train.y)
    assert reg.device_.startswith("cuda")
    assert all(np.isfinite(h["train_loss"]) for h in reg.history_)
    pred = reg.predict(test.X)
    r2 = 1 - np.mean((pred - test.y) ** 2) / np.var(test.y)
    assert r2 > 0.3
    atoms = reg.pid_["m1|m2"]
    assert all(np.isfinite(v) for v in atoms.values())
    path = tmp_path / "model"
    reg.save(path)
    loaded = PIDRegressor.load(path)  # the fitted model predicts on the CPU
    np.testing.assert_allclose(loaded.predict(test.X), pred, rtol=1e-6, atol=1e-6)
