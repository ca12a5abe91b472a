"""Tests of the PIDReg regularizers (brainage.models.losses)."""

import pytest
import torch

from brainage.models.losses import (
    cs_cmi_loss,
    cs_gaussianity_loss,
    median_distance,
    normality_loss,
)

torch.set_num_threads(1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def leak_batch(seed, n=256, d=4):
    """Return x1, x2 (correlated with x1), a latent that leaks x2 beyond x1 and one that does not."""
    g = gen(seed)
    x1 = torch.randn(n, d, generator=g)
    e = torch.randn(n, d, generator=g)
    x2 = 0.6 * x1 + 0.8 * e  # shares information with x1
    own = torch.tanh(x1)
    clean = own + 0.3 * torch.randn(n, d, generator=g)
    leaking = own + e + 0.3 * torch.randn(n, d, generator=g)  # carries x2 beyond x1
    return x1, x2, clean, leaking


# ---------------------------------------------------------------- CS Gaussianity


@pytest.mark.parametrize("reference", ["sample", "exact"])
def test_cs_gaussianity_near_zero_for_standard_normal_and_large_otherwise(reference):
    g = gen(1)
    a = torch.randn(256, 16, generator=g)
    base = cs_gaussianity_loss(a, generator=gen(2), reference=reference).item()
    assert 0.0 <= base < 0.02
    shifted = cs_gaussianity_loss(a + 2.0, generator=gen(2), reference=reference).item()
    scaled = cs_gaussianity_loss(a / 3.0, generator=gen(2), reference=reference).item()
    assert shifted > 10 * base and shifted > 0.1
    assert scaled > 10 * base and scaled > 0.1


def test_cs_gaussianity_exact_reference_is_the_limit_of_a_large_reference_sample():
    # The sample formula evaluated by hand with a reference sample of 10^6 points
    # (the q-q term from 500 000 independent pairs, plus the 1/n diagonal of an
    # n-point reference sample) converges to the exact expectations (Monte Carlo
    # error about 1e-4 here; leaving out the diagonal would be 5e-3 off).
    g = gen(12)
    n = 90  # 4005 pairs: the loss takes the median of all of them, as done here
    a = torch.randn(n, 8, generator=g, dtype=torch.float64) * 1.3 + 0.4
    d2 = torch.cdist(a, a) ** 2
    iu = torch.triu_indices(n, n, offset=1)
    inv = 0.5 / d2[iu[0], iu[1]].median()
    q = torch.randn(1_000_000, 8, generator=g, dtype=torch.float64)
    log_aa = torch.log(torch.exp(-d2 * inv).mean())
    mean_aq = sum(torch.exp(-torch.cdist(a, c) ** 2 * inv).sum() for c in q.split(100_000)) / (n * len(q))
    e_qq = torch.exp(-((q[:500_000] - q[500_000:]) ** 2).sum(1) * inv).mean()
    by_hand = (log_aa + torch.log(1 / n + (1 - 1 / n) * e_qq) - 2 * torch.log(mean_aq)).item()
    exact = cs_gaussianity_loss(a, reference="exact").item()
    assert exact == pytest.approx(by_hand, abs=5e-4)
    assert exact > 0.02  # far enough from 0 that the comparison means something
    # and a random reference of the batch's own size scatters around it
    draws = [cs_gaussianity_loss(a, generator=gen(s)).item() for s in range(20)]
    assert min(draws) < exact < max(draws)


def test_cs_gaussianity_of_a_stack_equals_one_call_per_modality():
    g = gen(13)
    a = torch.randn(64, 6, generator=g)
    b = torch.randn(64, 6, generator=g) * 2.0 + 1.0
    stacked = cs_gaussianity_loss(torch.stack([a, b]), reference="exact")
    assert stacked.shape == (2,)
    single = [cs_gaussianity_loss(x, reference="exact").item() for x in (a, b)]
    assert stacked.tolist() == pytest.approx(single, rel=1e-6)
    assert cs_gaussianity_loss(torch.stack([a, b]), generator=gen(1)).shape == (2,)
    with pytest.raises(ValueError, match="reference must be one of"):
        cs_gaussianity_loss(a, reference="analytic")


def test_cs_gaussianity_is_reproducible_with_generator():
    a = torch.randn(64, 4, generator=gen(3))
    assert cs_gaussianity_loss(a, generator=gen(5)).item() == cs_gaussianity_loss(a, generator=gen(5)).item()


@pytest.mark.parametrize("reference", ["sample", "exact"])
def test_cs_gaussianity_gradient_pulls_towards_normal(reference):
    a = (torch.randn(128, 4, generator=gen(4)) / 3.0 + 1.0).requires_grad_()
    opt = torch.optim.SGD([a], lr=10.0)
    first = None
    for step in range(30):
        opt.zero_grad()
        loss = cs_gaussianity_loss(a, generator=gen(100 + step), reference=reference)
        loss.backward()
        assert torch.isfinite(a.grad).all()
        first = loss.item() if first is None else first
        opt.step()
    assert loss.item() < 0.5 * first


def test_median_distance():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    # distances 5, 10, 5
    assert median_distance(x).item() == pytest.approx(5.0)
    assert median_distance(torch.ones(5, 3)).item() > 0


def test_median_distance_of_a_large_batch_uses_a_subset_of_pairs_close_to_the_full_median():
    x = torch.randn(256, 16, generator=gen(3)) * torch.linspace(0.5, 2.0, 16)
    d = torch.cdist(x, x)
    iu = torch.triu_indices(256, 256, offset=1)
    full = d[iu[0], iu[1]].median().item()
    assert median_distance(x).item() == pytest.approx(full, rel=0.03)
    assert median_distance(x).item() != full  # a subset, not all 32640 pairs
    small = torch.randn(40, 3, generator=gen(4))
    iu = torch.triu_indices(40, 40, offset=1)
    assert median_distance(small).item() == pytest.approx(torch.cdist(small, small)[iu[0], iu[1]].median().item())


# ---------------------------------------------------------------- CS CMI


@pytest.mark.parametrize("n_mod", [2, 3])
def test_training_cmi_term_with_shared_input_grams_equals_separate_losses(n_mod):
    from brainage.training.trainer import _cmi_term

    g = gen(8)
    mods = [f"m{i}" for i in range(n_mod)]
    xb = {m: torch.randn(64, 2, 3, generator=g) for m in mods}  # image-like inputs are flattened
    z = {m: torch.randn(64, 5, generator=g) for m in mods}
    shared = _cmi_term(z, xb, mods, 1.0).item()
    separate = sum(
        cs_cmi_loss(z[m], torch.cat([xb[o].reshape(64, -1) for o in mods if o != m], dim=1), xb[m]).item()
        for m in mods
    )
    assert shared == pytest.approx(separate, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cs_cmi_separates_leaking_from_clean_latent(seed):
    x1, x2, clean, leaking = leak_batch(seed)
    v_clean = cs_cmi_loss(clean, x2, x1).item()
    v_leak = cs_cmi_loss(leaking, x2, x1).item()
    assert v_leak - v_clean > 0.3, (v_clean, v_leak)


def test_cs_cmi_reference_width_is_inactive():
    x1, x2, _, leaking = leak_batch(0, d=16)
    leaking = leaking.clone().requires_grad_()
    narrow = cs_cmi_loss(leaking, x2, x1, sigma_scale=0.05)
    narrow.backward()
    assert abs(narrow.item()) < 1e-3
    assert leaking.grad.abs().max().item() < 1e-3
    assert cs_cmi_loss(leaking.detach(), x2, x1).item() > 100 * abs(narrow.item())


def test_cs_cmi_gradient_reduces_leak():
    x1, x2, _, leaking = leak_batch(1)
    z = leaking.clone().requires_grad_()
    loss = cs_cmi_loss(z, x2, x1)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().max() > 0
    # a small step against the gradient lowers the loss
    stepped = cs_cmi_loss(z.detach() - 0.5 * z.grad / z.grad.norm(), x2, x1)
    assert stepped.item() < loss.item()


def test_cs_cmi_accepts_image_shaped_inputs():
    g = gen(6)
    x1 = torch.randn(32, 1, 3, 4, 5, generator=g)
    x2 = torch.randn(32, 1, 3, 4, 5, generator=g)
    z = torch.randn(32, 8, generator=g)
    assert torch.isfinite(cs_cmi_loss(z, x2, x1))


def test_cs_cmi_errors():
    z = torch.randn(16, 3, generator=gen(7))
    with pytest.raises(ValueError, match="expected 16 rows"):
        cs_cmi_loss(z, torch.randn(15, 3), torch.randn(16, 3))
    with pytest.raises(ValueError, match="sigma_scale must be > 0"):
        cs_cmi_loss(z, z, z, sigma_scale=0.0)
    bad = z.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        cs_cmi_loss(bad, z, z)


# ---------------------------------------------------------------- normality


def test_normality_loss_small_for_gaussian_large_for_skewed():
    g = gen(8)
    x = torch.randn(256, 9, generator=g) @ torch.randn(9, 9, generator=g)  # correlated Gaussian
    gauss = normality_loss(x).item()
    assert 0.0 <= gauss < 0.005
    assert normality_loss(torch.exp(torch.randn(256, 9, generator=g))).item() > 20 * gauss
    assert normality_loss(torch.randn(256, 9, generator=g) ** 3).item() > 20 * gauss


def test_normality_loss_matches_shapiro_francia_by_hand():
    from scipy import stats

    x = torch.randn(200, 1, generator=gen(9), dtype=torch.float64)
    v = ((x - x.mean()) / x.std()).flatten().sort().values.numpy()
    m = stats.norm.ppf((torch.arange(1, 201).numpy() - 0.375) / 200.25)
    w = stats.pearsonr(v, m)[0] ** 2
    assert normality_loss(x).item() == pytest.approx(-torch.log(torch.tensor(w)).item(), rel=1e-6)


def test_normality_loss_whitens_float32_in_float32_and_falls_back_to_float64():
    g = gen(14)
    x = torch.randn(256, 9, generator=g, dtype=torch.float64) @ torch.randn(9, 9, generator=g,
                                                                             dtype=torch.float64)
    x = x**3  # clearly non-normal, so the value is well above round-off
    ref = normality_loss(x).item()
    assert normality_loss(x.float()).item() == pytest.approx(ref, rel=1e-3)
    # 40 columns that differ by 1e-4 of their scale: the ridged covariance has no
    # float32 Cholesky factor, and the float64 factor of the same values is used.
    base = torch.randn(256, 1, generator=g, dtype=torch.float64)
    near = torch.cat([base + 1e-4 * torch.randn(256, 1, generator=g, dtype=torch.float64)
                      for _ in range(40)], dim=1).float()
    xc = near - near.mean(0)
    cov = xc.T @ xc / 255
    assert torch.linalg.cholesky_ex(cov + 1e-6 * cov.diagonal().mean() * torch.eye(40)).info != 0
    assert normality_loss(near).item() == pytest.approx(normality_loss(near.double()).item(), rel=1e-6)


def test_normality_loss_errors():
    with pytest.raises(ValueError, match="n > d"):
        normality_loss(torch.randn(5, 8))
    with pytest.raises(ValueError, match="non-finite"):
        normality_loss(torch.full((10, 2), float("nan")))


# ---------------------------------------------------------------- precision


def _all_losses(a, x1, x2, joint):
    return [
        cs_gaussianity_loss(a, generator=gen(11)),
        cs_cmi_loss(a, x2, x1),
        normality_loss(joint),
    ]


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_losses_finite_values_and_gradients(autocast):
    g = gen(10)
    x1, x2, _, _ = leak_batch(3, n=128)
    enc = torch.nn.Linear(4, 8)
    y = torch.randn(128, 1, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        a = enc(x1)
        assert a.dtype == (torch.bfloat16 if autocast else torch.float32)
        joint = torch.cat([y.to(a.dtype), a, 0.5 * a + 0.1], dim=1)[:, :9]
        losses = _all_losses(a, x1, x2, joint)
    total = sum(losses)
    total.backward()
    for loss in losses:
        assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(enc.weight.grad).all() and enc.weight.grad.abs().max() > 0


def test_bf16_autocast_close_to_float32():
    x1, x2, _, leaking = leak_batch(4, n=128)
    ref = cs_cmi_loss(leaking, x2, x1).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cs_cmi_loss(leaking.to(torch.bfloat16), x2, x1).item()
    assert out == pytest.approx(ref, abs=0.05)
