"""Tests of the differentiable Gaussian PID (brainage.models.pid_torch)."""

import numpy as np
import pytest
import torch

from brainage.models.pid_torch import PID_KEYS, gaussian_pid_torch, gaussian_pid_torch_from_cov
from brainage.pid import gaussian_pid, gaussian_pid_from_cov, mi_bias_bits

torch.set_num_threads(1)


def make_batch(n=256, d1=8, d2=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    z1 = y[:, None] * 0.5 * torch.randn(d1, generator=g, dtype=torch.float64) + torch.randn(
        n, d1, generator=g, dtype=torch.float64
    )
    noise = torch.randn(n, d2, generator=g, dtype=torch.float64)
    z2 = y[:, None] * 0.3 + 0.5 * z1[:, :1] + noise
    return y.to(dtype), z1.to(dtype), z2.to(dtype)


def numpy_pid(y, z1, z2, **kw):
    return gaussian_pid(y.double().numpy(), z1.detach().double().numpy(), z2.double().numpy(), **kw).as_dict()


@pytest.mark.parametrize("bias_correction", [True, False], ids=["corrected", "raw"])
def test_matches_numpy_float64(bias_correction):
    y, z1, z2 = make_batch()
    ref = numpy_pid(y, z1, z2, bias_correction=bias_correction)
    exact = gaussian_pid_torch(y, z1, z2, bias_correction=bias_correction, eps=0.0)
    ridged = gaussian_pid_torch(y, z1, z2, bias_correction=bias_correction)
    assert set(exact) == set(PID_KEYS)
    for k in PID_KEYS:
        assert exact[k].ndim == 0 and exact[k].dtype == torch.float64
        assert float(exact[k]) == pytest.approx(ref[k], abs=1e-9), k
        assert float(ridged[k]) == pytest.approx(ref[k], abs=1e-5), k


def test_matches_numpy_at_d64_n256():
    y, z1, z2 = make_batch(n=256, d1=64, d2=64, seed=1)
    ref = numpy_pid(y, z1, z2)
    out = gaussian_pid_torch(y, z1, z2)
    for k in PID_KEYS:
        assert float(out[k]) == pytest.approx(ref[k], abs=1e-5), k


def test_float32_inputs_close_to_numpy():
    y, z1, z2 = make_batch(dtype=torch.float32)
    ref = numpy_pid(y, z1, z2)
    out = gaussian_pid_torch(y, z1, z2)
    for k in PID_KEYS:
        assert float(out[k]) == pytest.approx(ref[k], abs=1e-4), k


def test_y_column_vector_accepted():
    y, z1, z2 = make_batch()
    a = gaussian_pid_torch(y, z1, z2)
    b = gaussian_pid_torch(y[:, None], z1, z2)
    for k in PID_KEYS:
        assert float(a[k]) == float(b[k])


def test_from_cov_exact_case():
    # Z1 = y + N1, Z2 = y + N2, corr(N1, N2) = 0.5: R = 0.5, S = 0.5 log2(1 + 2/1.5) - 0.5
    cov = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 1.5], [1.0, 1.5, 2.0]], dtype=torch.float64)
    out = gaussian_pid_torch_from_cov(cov, 1, 1)
    assert float(out["R"]) == pytest.approx(0.5, abs=1e-6)
    assert float(out["S"]) == pytest.approx(0.5 * np.log2(1 + 2 / 1.5) - 0.5, abs=1e-6)
    assert float(out["U1"]) == pytest.approx(0.0, abs=1e-6)
    ref = gaussian_pid_from_cov(cov.numpy(), 1, 1, n=50).as_dict()
    corrected = gaussian_pid_torch_from_cov(cov, 1, 1, n=50)
    for k in PID_KEYS:
        assert float(corrected[k]) == pytest.approx(ref[k], abs=1e-9), k


def test_bias_correction_difference_is_cai_bias():
    y, z1, z2 = make_batch(n=300, d1=5, d2=4)
    raw = gaussian_pid_torch(y, z1, z2, bias_correction=False)
    cor = gaussian_pid_torch(y, z1, z2, bias_correction=True)
    assert float(raw["I12"] - cor["I12"]) == pytest.approx(mi_bias_bits(1, 9, 300), abs=1e-12)


def test_gradients_finite_and_nonzero():
    y, z1, z2 = make_batch(n=256, d1=16, d2=16)
    z1 = z1.clone().requires_grad_()
    z2 = z2.clone().requires_grad_()
    out = gaussian_pid_torch(y, z1, z2)
    (out["S"] + out["R"] + out["U1"] + out["U2"]).backward()
    for g in (z1.grad, z2.grad):
        assert torch.isfinite(g).all()
        assert g.abs().max() > 0


def test_gradient_matches_finite_difference():
    y, z1, z2 = make_batch(n=64, d1=3, d2=2, seed=3)
    z1 = z1.clone().requires_grad_()
    i12 = gaussian_pid_torch(y, z1, z2, eps=0.0)["I12"]
    i12.backward()
    h = 1e-6
    z1p = z1.detach().clone()
    z1p[5, 1] += h
    num = (float(gaussian_pid_torch(y, z1p, z2, eps=0.0)["I12"]) - i12.item()) / h
    assert float(z1.grad[5, 1]) == pytest.approx(num, rel=1e-4, abs=1e-8)


def test_near_singular_batch_is_finite_with_ridge():
    y, z1, z2 = make_batch(n=128, d1=4, d2=4)
    z1 = z1.clone()
    z1[:, 3] = z1[:, 2]  # collapsed latent dimension: exactly singular covariance
    z1.requires_grad_()
    out = gaussian_pid_torch(y, z1, z2)
    out["S"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    assert torch.isfinite(z1.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_works_under_autocast(dtype):
    y, z1, z2 = make_batch(n=256, d1=8, d2=8, dtype=torch.float32)
    lin = torch.nn.Linear(8, 8).double().float()
    ref = gaussian_pid_torch(y, lin(z1), z2)
    with torch.autocast("cpu", dtype=dtype):
        h = lin(z1)
        assert h.dtype == dtype  # autocast is active for the encoder output
        out = gaussian_pid_torch(y, h, z2)
    out["S"].backward()
    for k in PID_KEYS:
        assert out[k].dtype == torch.float64
        assert torch.isfinite(out[k])
    # only the half-precision rounding of h differs
    assert out["I12"].item() == pytest.approx(ref["I12"].item(), abs=0.05)
    assert torch.isfinite(lin.weight.grad).all()


@pytest.mark.parametrize(
    ("case", "match"),
    [
        pytest.param("few", "too few samples", id="few-samples"),
        pytest.param("rows", "expected 256 rows", id="row-mismatch"),
        pytest.param("nan", "non-finite", id="nan"),
        pytest.param("const", "zero variance", id="constant"),
        pytest.param("vector-y", "scalar target", id="vector-y"),
    ],
)
def test_errors(case, match):
    y, z1, z2 = make_batch()
    if case == "few":
        y, z1, z2 = y[:10], z1[:10], z2[:10]
    elif case == "rows":
        z2 = z2[:-1]
    elif case == "nan":
        z1 = z1.clone()
        z1[0, 0] = float("nan")
    elif case == "const":
        z2 = z2.clone()
        z2[:, 0] = 1.0
    elif case == "vector-y":
        y = torch.stack([y, y], dim=1)
    with pytest.raises(ValueError, match=match):
        gaussian_pid_torch(y, z1, z2)


def test_from_cov_shape_error():
    with pytest.raises(ValueError, match=r"expected the \(4, 4\) covariance"):
        gaussian_pid_torch_from_cov(torch.eye(3), 2, 1)
