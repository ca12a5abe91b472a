"""Tests of brainage.pid (closed-form Gaussian PID, bias correction, general solver)."""

import math

import numpy as np
import pytest

from brainage.pid import (
    PIDResult,
    gaussian_pid,
    gaussian_pid_from_cov,
    inverse_normal_transform,
    mi_bias_bits,
)
from brainage.pid_general import gaussian_pid_general

ATOL_EXACT = 1e-6


def chain_cov(sigma2):
    # y ~ N(0,1), Z1 = y + N1, Z2 = Z1 + N, var(N) = sigma2
    return np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 2.0], [1.0, 2.0, 2.0 + sigma2]])


def unique_synergy_cov(rho):
    # Z1 = y + N1, Z2 = N2, corr(N1, N2) = rho
    return np.array([[1.0, 1.0, 0.0], [1.0, 2.0, rho], [0.0, rho, 1.0]])


def redundancy_synergy_cov(rho):
    # Z1 = y + N1, Z2 = y + N2, corr(N1, N2) = rho
    return np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 1.0 + rho], [1.0, 1.0 + rho, 2.0]])


def chain_truth(sigma2):
    i1 = 0.5
    i2 = 0.5 * math.log2((2.0 + sigma2) / (1.0 + sigma2))
    return {"U1": i1 - i2, "U2": 0.0, "R": i2, "S": 0.0}


def unique_synergy_truth(rho):
    return {"U1": 0.5, "U2": 0.0, "R": 0.0, "S": 0.5 * math.log2(1 + 1 / (1 - rho**2)) - 0.5}


def redundancy_synergy_truth(rho):
    return {"U1": 0.0, "U2": 0.0, "R": 0.5, "S": 0.5 * math.log2(1 + 2 / (1 + rho)) - 0.5}


EXACT_CASES = [
    pytest.param(chain_cov(0.5), chain_truth(0.5), id="chain-s0.5"),
    pytest.param(chain_cov(3.0), chain_truth(3.0), id="chain-s3"),
    pytest.param(unique_synergy_cov(0.0), unique_synergy_truth(0.0), id="unique-rho0"),
    pytest.param(unique_synergy_cov(0.6), unique_synergy_truth(0.6), id="unique-rho0.6"),
    pytest.param(redundancy_synergy_cov(0.0), redundancy_synergy_truth(0.0), id="red-rho0"),
    pytest.param(redundancy_synergy_cov(-0.4), redundancy_synergy_truth(-0.4), id="red-rho-0.4"),
    pytest.param(redundancy_synergy_cov(0.7), redundancy_synergy_truth(0.7), id="red-rho0.7"),
]


def sample_from_cov(cov, n, rng):
    chol = np.linalg.cholesky(cov)
    x = rng.standard_normal((n, cov.shape[0])) @ chol.T
    return x[:, 0], x[:, 1:2], x[:, 2:3]


def random_cov(rng, d, dy=1, n_extra=3):
    a = rng.standard_normal((n_extra * (dy + 2 * d), dy + 2 * d))
    # mix so that y is informative about both sources
    a[:, dy:] += 0.7 * a[:, :1]
    return a.T @ a / a.shape[0]


@pytest.mark.parametrize(("cov", "truth"), EXACT_CASES)
def test_exact_cases_from_cov(cov, truth):
    res = gaussian_pid_from_cov(cov, 1, 1)
    for atom, value in truth.items():
        assert getattr(res, atom) == pytest.approx(value, abs=ATOL_EXACT), atom
    assert res.U1 + res.U2 + res.R + res.S == pytest.approx(res.I12, abs=1e-12)
    assert not res.bias_corrected


@pytest.mark.parametrize(("cov", "truth"), EXACT_CASES[::2])
def test_exact_cases_from_large_samples(cov, truth, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    y, z1, z2 = sample_from_cov(cov, 200_000, rng)
    res = gaussian_pid(y, z1, z2)
    for atom, value in truth.items():
        assert getattr(res, atom) == pytest.approx(value, abs=0.01), atom


def test_result_dataclass_is_frozen_and_as_dict():
    res = gaussian_pid_from_cov(redundancy_synergy_cov(0.0), 1, 1)
    assert isinstance(res, PIDResult)
    assert set(res.as_dict()) == {"U1", "U2", "R", "S", "I1", "I2", "I12"}
    assert res.as_dict()["R"] == pytest.approx(0.5, abs=ATOL_EXACT)
    assert res.ci is None
    with pytest.raises(AttributeError):
        res.R = 1.0


def test_invariant_to_per_dimension_scaling():
    rng = np.random.default_rng(1)
    n, d1, d2 = 500, 3, 4
    y = rng.standard_normal(n)
    z1 = y[:, None] * rng.standard_normal(d1) + rng.standard_normal((n, d1))
    z2 = y[:, None] * rng.standard_normal(d2) + rng.standard_normal((n, d2))
    ref = gaussian_pid(y, z1, z2).as_dict()
    scaled = gaussian_pid(
        5.0 * y + 3.0, z1 * rng.uniform(1e-3, 1e3, d1), z2 * rng.uniform(1e-3, 1e3, d2) - 7.0
    ).as_dict()
    for k in ref:
        assert scaled[k] == pytest.approx(ref[k], abs=1e-9), k


def test_one_unique_atom_is_zero_and_identities_hold():
    rng = np.random.default_rng(2)
    cov = random_cov(rng, 5)
    res = gaussian_pid_from_cov(cov, 5, 5)
    assert min(res.U1, res.U2) == 0.0
    assert res.U1 + res.R == pytest.approx(res.I1, abs=1e-12)
    assert res.U2 + res.R == pytest.approx(res.I2, abs=1e-12)
    assert res.U1 + res.U2 + res.R + res.S == pytest.approx(res.I12, abs=1e-12)


def test_mi_bias_values_from_reference():
    assert mi_bias_bits(1, 64, 256) == pytest.approx(0.21, abs=0.005)
    assert mi_bias_bits(1, 128, 256) == pytest.approx(0.50, abs=0.005)
    # symmetric in its dimensions and shrinking with n
    assert mi_bias_bits(3, 5, 100) == pytest.approx(mi_bias_bits(5, 3, 100))
    assert mi_bias_bits(1, 64, 4096) < mi_bias_bits(1, 64, 256)


def test_mi_bias_errors():
    with pytest.raises(ValueError, match="n > d_u"):
        mi_bias_bits(1, 64, 65)
    with pytest.raises(ValueError, match="dimensions must be >= 1"):
        mi_bias_bits(0, 3, 100)


def test_bias_correction_reduces_error_at_n256_d64():
    rng = np.random.default_rng(3)
    d, n = 64, 256
    # y drives a few dimensions of each source; noises partly shared (synergy)
    h1 = np.zeros(d)
    h1[:4] = 0.4
    h2 = np.zeros(d)
    h2[:4] = 0.3
    cov_n = np.eye(2 * d)
    cov_n[:d, d:] = cov_n[d:, :d] = 0.3 * np.eye(d)
    cov = np.zeros((1 + 2 * d, 1 + 2 * d))
    h = np.concatenate([h1, h2])
    cov[0, 0] = 1.0
    cov[0, 1:] = cov[1:, 0] = h
    cov[1:, 1:] = np.outer(h, h) + cov_n
    truth = gaussian_pid_from_cov(cov, d, d).as_dict()
    raw, corr = [], []
    for _ in range(5):
        y, _, _ = sample_from_cov(cov, n, rng)
        x = rng.standard_normal((n, 1 + 2 * d)) @ np.linalg.cholesky(cov).T
        y, z1, z2 = x[:, 0], x[:, 1 : 1 + d], x[:, 1 + d :]
        raw.append(gaussian_pid(y, z1, z2, bias_correction=False).as_dict())
        corr.append(gaussian_pid(y, z1, z2, bias_correction=True).as_dict())
    for key in ("I1", "I12", "S"):
        err_raw = abs(np.mean([r[key] for r in raw]) - truth[key])
        err_corr = abs(np.mean([c[key] for c in corr]) - truth[key])
        assert err_corr < 0.5 * err_raw, (key, err_raw, err_corr)


def test_bias_correction_subtracts_cai_bias():
    rng = np.random.default_rng(4)
    n = 300
    y = rng.standard_normal(n)
    z1 = y[:, None] + 2.0 * rng.standard_normal((n, 3))
    z2 = y[:, None] + 2.0 * rng.standard_normal((n, 2))
    raw = gaussian_pid(y, z1, z2, bias_correction=False)
    cor = gaussian_pid(y, z1, z2, bias_correction=True)
    assert cor.I1 == pytest.approx(raw.I1 - mi_bias_bits(1, 3, n), abs=1e-12)
    assert cor.I2 == pytest.approx(raw.I2 - mi_bias_bits(1, 2, n), abs=1e-12)
    assert cor.I12 == pytest.approx(raw.I12 - mi_bias_bits(1, 5, n), abs=1e-12)
    assert cor.bias_corrected and not raw.bias_corrected
    assert cor.bias["I12"] == pytest.approx(mi_bias_bits(1, 5, n))


def test_bias_corrected_mi_is_clipped_at_zero():
    rng = np.random.default_rng(5)
    n = 40
    y = rng.standard_normal(n)
    res = gaussian_pid(y, rng.standard_normal((n, 10)), rng.standard_normal((n, 10)))
    assert res.I1 >= 0.0 and res.I2 >= 0.0 and res.I12 >= 0.0


def test_from_cov_with_n_applies_bias_correction():
    cov = redundancy_synergy_cov(0.0)
    res = gaussian_pid_from_cov(cov, 1, 1, n=100)
    assert res.I1 == pytest.approx(0.5 - mi_bias_bits(1, 1, 100), abs=1e-12)
    assert res.bias_corrected and res.n == 100


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    y, z1, z2 = sample_from_cov(redundancy_synergy_cov(0.0), 2000, rng)
    res = gaussian_pid(y, z1, z2, n_boot=200, random_state=0)
    assert set(res.ci) == {"U1", "U2", "R", "S", "I1", "I2", "I12"}
    for name in ("R", "S", "I12"):
        lo, hi = res.ci[name]
        assert lo < getattr(res, name) < hi, name
    lo, hi = res.ci["R"]
    assert lo < 0.5 < hi
    assert hi - lo < 0.15
    again = gaussian_pid(y, z1, z2, n_boot=200, random_state=0)
    assert again.ci == res.ci
    narrower = gaussian_pid(y, z1, z2, n_boot=200, ci=0.5, random_state=0)
    assert narrower.ci["R"][1] - narrower.ci["R"][0] < hi - lo


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"n": 6, "d1": 3, "d2": 2}, "too few samples", id="few-samples"),
        pytest.param({"z1_rows": 49}, "expected 50 rows", id="row-mismatch"),
        pytest.param({"nan": True}, "non-finite", id="nan"),
        pytest.param({"dup": True}, "singular covariance", id="duplicate-column"),
        pytest.param({"const": True}, r"zero .*variance at index/indices \[2\]", id="constant-column"),
        pytest.param({"y_linear": True}, "y is a linear function", id="y-exactly-predicted"),
        pytest.param({"y2d": True}, "scalar target", id="vector-y"),
        pytest.param({"z3d": True}, r"shape \(n,\) or \(n, d\)", id="3d-source"),
    ],
)
def test_gaussian_pid_errors(kwargs, match):
    rng = np.random.default_rng(7)
    n = kwargs.get("n", 50)
    d1, d2 = kwargs.get("d1", 2), kwargs.get("d2", 2)
    y = rng.standard_normal(n)
    z1 = rng.standard_normal((kwargs.get("z1_rows", n), d1))
    z2 = rng.standard_normal((n, d2))
    if kwargs.get("nan"):
        z2[3, 1] = np.nan
    if kwargs.get("dup"):
        z2[:, 1] = 2.0 * z1[:, 0]
    if kwargs.get("const"):
        z1[:, 1] = 4.0
    if kwargs.get("y_linear"):
        y = z1[:, 0] - 0.5 * z2[:, 1]
    if kwargs.get("y2d"):
        y = rng.standard_normal((n, 2))
    if kwargs.get("z3d"):
        z1 = rng.standard_normal((n, 2, 2))
    with pytest.raises(ValueError, match=match):
        gaussian_pid(y, z1, z2)


def test_gaussian_pid_bad_bootstrap_args():
    rng = np.random.default_rng(8)
    y, z1, z2 = sample_from_cov(redundancy_synergy_cov(0.0), 50, rng)
    with pytest.raises(ValueError, match="ci must be in"):
        gaussian_pid(y, z1, z2, n_boot=10, ci=95)
    with pytest.raises(ValueError, match="n_boot must be"):
        gaussian_pid(y, z1, z2, n_boot=-1)


def test_from_cov_errors():
    with pytest.raises(ValueError, match=r"expected the \(4, 4\) covariance"):
        gaussian_pid_from_cov(np.eye(3), 2, 1)
    with pytest.raises(ValueError, match="symmetric"):
        gaussian_pid_from_cov(np.array([[1.0, 0.5, 0], [0.1, 1, 0], [0, 0, 1]]), 1, 1)
    with pytest.raises(ValueError, match="singular covariance"):
        gaussian_pid_from_cov(np.array([[1.0, 1, 1], [1, 1, 1], [1, 1, 1]]), 1, 1)
    with pytest.raises(ValueError, match="non-finite"):
        gaussian_pid_from_cov(np.full((3, 3), np.nan), 1, 1)
    for bad in (np.nan, np.inf):  # only on the diagonal: the matrix is still symmetric
        cov = np.eye(3)
        cov[1, 1] = bad
        with pytest.raises(ValueError, match="non-finite"):
            gaussian_pid_from_cov(cov, 1, 1)
    with pytest.raises(ValueError, match=r"zero \(or negative\) variance at index/indices \[2\]"):
        gaussian_pid_from_cov(np.diag([1.0, 1.0, 0.0]), 1, 1)
    # y = z1 + z2 exactly: the sources are fine, the target is predicted without error
    exact = np.array([[2.0, 1, 1], [1, 1, 0], [1, 0, 1]])
    with pytest.raises(ValueError, match="y is a linear function"):
        gaussian_pid_from_cov(exact, 1, 1)


def test_inverse_normal_transform_formula_and_ties():
    from scipy.stats import norm

    y = np.array([10.0, -2.0, 3.0, 3.0, 7.0])
    out = inverse_normal_transform(y)
    # zero-based average ranks: 4, 0, 1.5, 1.5, 3
    expected = norm.ppf((np.array([4.0, 0.0, 1.5, 1.5, 3.0]) + 0.5) / 6.0)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert out[2] == out[3]
    assert np.all(np.diff(out[np.argsort(y, kind="stable")]) >= 0)
    np.testing.assert_allclose(inverse_normal_transform(y[:, None]), expected)


def test_inverse_normal_transform_is_near_standard_normal():
    rng = np.random.default_rng(9)
    out = inverse_normal_transform(rng.exponential(size=5000) ** 3)
    assert abs(out.mean()) < 0.01
    assert out.std() == pytest.approx(1.0, abs=0.02)


def test_inverse_normal_transform_errors():
    with pytest.raises(ValueError, match="non-finite"):
        inverse_normal_transform([1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="1-D array"):
        inverse_normal_transform(np.ones((3, 2)))
    with pytest.raises(ValueError, match="at least 2 values"):
        inverse_normal_transform([1.0])


@pytest.mark.parametrize(("cov", "truth"), EXACT_CASES)
def test_general_solver_exact_cases(cov, truth):
    res = gaussian_pid_general(cov, 1, 1, 1)
    for atom, value in truth.items():
        assert getattr(res, atom) == pytest.approx(value, abs=1e-4), atom


@pytest.mark.parametrize("d", [1, 3, 8])
def test_general_solver_matches_closed_form(d):
    rng = np.random.default_rng(10 + d)
    cov = random_cov(rng, d)
    closed = gaussian_pid_from_cov(cov, d, d).as_dict()
    general = gaussian_pid_general(cov, 1, d, d).as_dict()
    for k in closed:
        assert general[k] == pytest.approx(closed[k], abs=1e-4), k


def test_general_solver_vector_target():
    rng = np.random.default_rng(11)
    cov = random_cov(rng, 3, dy=2)
    res = gaussian_pid_general(cov, 2, 3, 3)
    for atom in ("U1", "U2", "R", "S"):
        assert getattr(res, atom) > -1e-6, atom
    assert res.U1 + res.R == pytest.approx(res.I1, abs=1e-9)
    assert res.U1 + res.U2 + res.R + res.S == pytest.approx(res.I12, abs=1e-9)
    # the union information cannot exceed I12 (P itself is feasible)
    assert res.S >= -1e-6


def test_general_solver_errors():
    with pytest.raises(ValueError, match=r"expected the \(5, 5\) covariance"):
        gaussian_pid_general(np.eye(4), 2, 2, 1)
    with pytest.raises(ValueError, match="singular covariance"):
        gaussian_pid_general(np.ones((3, 3)), 1, 1, 1)
