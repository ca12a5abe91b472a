"""Age-bias correction: formulas, agreements between methods, per-site fits, leakage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from brainage.exceptions import StatsInputError
from brainage.stats import AgeBiasCorrection, brain_age_metrics


def biased(rng, n, *, slope=0.6, intercept=20.0, noise=4.0, lo=20.0, hi=80.0):
    """Ages and predictions that regress to the mean (predicted = slope·age + intercept + noise)."""
    age = rng.uniform(lo, hi, n)
    return age, slope * age + intercept + rng.normal(0, noise, n)


@pytest.mark.parametrize("method", ["cole", "delange_cole", "smith"])
def test_exact_linear_bias_is_removed_exactly(method):
    age = np.linspace(20, 80, 13)
    pred = 0.5 * age + 25
    out = AgeBiasCorrection(method=method).fit(age, pred).transform(age, pred)
    np.testing.assert_allclose(out, age, atol=1e-9)


def test_hand_checked_formulas():
    age = np.linspace(20, 80, 11)
    pred = 0.5 * age + 25                           # alpha = 0.5, beta = 25
    y, p = np.array([30.0, 60.0]), np.array([45.0, 40.0])
    cole = AgeBiasCorrection(method="cole").fit(age, pred)
    assert cole.pooled_ == pytest.approx({"kind": "linear", "alpha": 0.5, "beta": 25.0})
    np.testing.assert_allclose(cole.transform(y, p), (p - 25) / 0.5)          # [40, 30]
    dlc = AgeBiasCorrection(method="delange_cole").fit(age, pred)
    np.testing.assert_allclose(dlc.transform(y, p), p + y - (0.5 * y + 25))   # [55, 25]


def test_cole_and_delange_cole_rank_corrected_gaps_the_same(rng):
    age, pred = biased(rng, 300)
    y, p = biased(rng, 100)
    cole = AgeBiasCorrection(method="cole").fit(age, pred)
    dlc = AgeBiasCorrection(method="delange_cole").fit(age, pred)
    gap_cole = cole.transform(y, p) - y
    gap_dlc = dlc.transform(y, p) - y
    assert stats.spearmanr(gap_cole, gap_dlc).statistic == pytest.approx(1.0)
    # the exact relation: Cole's corrected gap is de Lange-Cole's divided by the slope
    np.testing.assert_allclose(gap_cole, gap_dlc / cole.pooled_["alpha"], atol=1e-9)


def test_smith_degree_one_equals_delange_cole_in_the_gap(rng):
    age, pred = biased(rng, 250)
    y, p = biased(rng, 80)
    smith = AgeBiasCorrection(method="smith", degree=1).fit(age, pred).transform(y, p)
    dlc = AgeBiasCorrection(method="delange_cole").fit(age, pred).transform(y, p)
    np.testing.assert_allclose(smith, dlc, atol=1e-9)


def test_smith_higher_degree_removes_a_curved_bias(rng):
    age = rng.uniform(20, 80, 400)
    pred = age - 0.01 * (age - 50) ** 2 + rng.normal(0, 3, age.size)   # curved gap-age relation
    y = rng.uniform(20, 80, 400)
    p = y - 0.01 * (y - 50) ** 2 + rng.normal(0, 3, y.size)
    quad = AgeBiasCorrection(method="smith", degree=2).fit(age, pred).transform(y, p) - y
    lin = AgeBiasCorrection(method="smith", degree=1).fit(age, pred).transform(y, p) - y
    # the noise has SD 3; a straight line leaves the curve's SD of ~2.7 years on top of it
    assert np.sqrt(np.mean(quad**2)) < 3.2
    assert np.sqrt(np.mean(lin**2)) > 3.7
    assert abs(stats.pearsonr(lin, (y - 50) ** 2).statistic) > 0.5


@pytest.mark.parametrize("method", ["cole", "delange_cole", "smith"])
def test_held_out_controls_lose_the_age_dependence(rng, method):
    age, pred = biased(rng, 400)
    before = brain_age_metrics(age, pred)["gap_age_spearman"]
    y, p = biased(rng, 300)
    corrected = AgeBiasCorrection(method=method).fit(age, pred).transform(y, p)
    after = brain_age_metrics(y, corrected)["gap_age_spearman"]
    assert before < -0.5
    assert abs(after) < 0.1


def test_none_is_the_identity(rng):
    age, pred = biased(rng, 5)              # "none" needs no minimum sample
    np.testing.assert_array_equal(AgeBiasCorrection(method="none").fit(age, pred).transform(age, pred), pred)


def test_patient_gap_survives_correction(rng):
    age, pred = biased(rng, 400)
    y = rng.uniform(20, 80, 300)
    p = 0.6 * (y + 5.0) + 20 + rng.normal(0, 4, y.size)    # patients: 5 years older brains
    gap = AgeBiasCorrection().fit(age, pred).transform(y, p) - y
    assert np.mean(gap) == pytest.approx(0.6 * 5.0, abs=0.6)   # de Lange-Cole keeps the slope-scaled gap
    gap_cole = AgeBiasCorrection(method="cole").fit(age, pred).transform(y, p) - y
    assert np.mean(gap_cole) == pytest.approx(5.0, abs=1.0)    # Cole rescales it back to years


# ----------------------------------------------------------------- per site
def _sites(rng):
    parts = []
    # site A: 60 controls over the full range, strong bias; B: 40 controls, mild bias,
    # offset; C: 8 controls (too few); D: 30 controls within 3 years (too narrow)
    for site, n, slope, icpt, lo, hi in [
        ("A", 60, 0.5, 25, 20, 80),
        ("B", 40, 0.8, 14, 20, 80),
        ("C", 8, 0.8, 14, 20, 80),
        ("D", 30, 0.8, 14, 50, 53),
    ]:
        a, p = biased(rng, n, slope=slope, intercept=icpt, noise=2.0, lo=lo, hi=hi)
        parts.append((np.full(n, site), a, p))
    site = np.concatenate([s for s, _, _ in parts])
    return site, np.concatenate([a for _, a, _ in parts]), np.concatenate([p for _, _, p in parts])


def test_by_site_fits_each_site_and_records_fallbacks(rng):
    site, age, pred = _sites(rng)
    corr = AgeBiasCorrection(by_site=True).fit(age, pred, site=site)
    assert corr.sites_ == ["A", "B", "C", "D"]
    assert set(corr.fallbacks_) == {"C", "D"}
    assert "8 controls (fewer than 15)" in corr.fallbacks_["C"]
    assert "age range" in corr.fallbacks_["D"] and "less than 5" in corr.fallbacks_["D"]
    assert corr.site_params_["A"]["alpha"] == pytest.approx(0.5, abs=0.05)
    assert corr.site_params_["B"]["alpha"] == pytest.approx(0.8, abs=0.05)
    mask = site == "C"
    assert corr.site_params_["C"] == {"kind": "median_offset", "offset": pytest.approx(np.median(pred[mask] - age[mask]))}
    table = corr.transform_table(age, pred, site=site)
    assert table.loc[mask, "correction"].str.startswith("site C, median offset").all()
    np.testing.assert_allclose(
        table.loc[mask, "gap_corrected"], (pred - age)[mask] - np.median((pred - age)[mask])
    )
    # each well-sampled site's corrected gaps are free of age
    for s in "AB":
        m = site == s
        assert abs(stats.spearmanr(table.loc[m, "gap_corrected"], age[m]).statistic) < 0.1


def test_by_site_is_better_than_pooled_when_sites_differ(rng):
    site, age, pred = _sites(rng)
    keep = np.isin(site, ["A", "B"])
    pooled = AgeBiasCorrection().fit(age[keep], pred[keep]).transform(age[keep], pred[keep]) - age[keep]
    per = AgeBiasCorrection(by_site=True).fit(age[keep], pred[keep], site=site[keep])
    gap = per.transform(age[keep], pred[keep], site=site[keep]) - age[keep]
    a = site[keep] == "A"
    assert abs(stats.spearmanr(gap[a], age[keep][a]).statistic) < 0.1
    assert abs(stats.spearmanr(pooled[a], age[keep][a]).statistic) > 0.3


def test_unseen_site_is_an_error_or_pooled_when_asked(rng):
    site, age, pred = _sites(rng)
    corr = AgeBiasCorrection(by_site=True).fit(age, pred, site=site)
    with pytest.raises(StatsInputError, match=r"site: 'Z' not among the fitted sites \(A, B, C, D\)"):
        corr.transform([40.0], [45.0], site=["Z"])
    pooled = AgeBiasCorrection(by_site=True, unseen_site="pooled").fit(age, pred, site=site)
    with pytest.warns(UserWarning, match="Z were not fitted"):
        table = pooled.transform_table([40.0, 40.0], [45.0, 45.0], site=["Z", "A"])
    assert table["correction"].tolist() == ["pooled (site Z not fitted)", "site A"]
    expected = AgeBiasCorrection().fit(age, pred).transform([40.0], [45.0])
    assert table["predicted_age_corrected"].iloc[0] == pytest.approx(expected[0])


def test_by_site_needs_sites(rng):
    age, pred = biased(rng, 30)
    with pytest.raises(StatsInputError, match="by_site=True needs the site"):
        AgeBiasCorrection(by_site=True).fit(age, pred)


# --------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("kwargs", "age", "pred", "match"),
    [
        ({}, np.arange(9.0) + 20, np.arange(9.0) + 21, "at least 10 controls, got 9"),
        ({}, np.full(12, 40.0), np.arange(12.0), "same age"),
        ({}, np.r_[np.arange(11.0), np.nan], np.arange(12.0), "^age: 1 NaN"),
        ({}, np.arange(12.0), np.arange(11.0), "length mismatch"),
        ({"method": "cole"}, np.arange(12.0) + 20, 60 - np.arange(12.0), "positive slope"),
        ({"method": "beheshti"}, np.arange(12.0), np.arange(12.0), "choose one of cole, delange_cole, smith, none"),
        ({"method": "smith", "degree": 7}, np.arange(12.0), np.arange(12.0), "degree"),
        ({"unseen_site": "drop"}, np.arange(12.0), np.arange(12.0), "unseen_site"),
    ],
    ids=["too-few", "no-age-variance", "nan", "length", "cole-negative-slope", "unknown-method", "degree", "unseen-option"],
)
def test_fit_refuses_bad_input(kwargs, age, pred, match):
    with pytest.raises(StatsInputError, match=match):
        AgeBiasCorrection(**kwargs).fit(age, pred)


def test_transform_before_fit_is_refused():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        AgeBiasCorrection().transform([1.0], [2.0])


# ----------------------------------------------------------------- leakage
@pytest.mark.parametrize("method", ["cole", "delange_cole", "smith"])
@pytest.mark.parametrize("by_site", [False, True], ids=["pooled", "by-site"])
def test_held_out_participants_do_not_leak_into_the_fit(rng, method, by_site):
    age, pred = biased(rng, 200)
    site = np.where(np.arange(200) % 2, "A", "B")
    train, test = np.arange(150), np.arange(150, 200)
    kw = {"site": site[train]} if by_site else {}
    fitted = AgeBiasCorrection(method=method, by_site=by_site).fit(age[train], pred[train], **kw)
    params = json.dumps(fitted.to_dict(), sort_keys=True)
    out = fitted.transform(age[test], pred[test], **({"site": site[test]} if by_site else {}))

    # Perturbing the held-out predictions changes only the perturbed rows' outputs ...
    perturbed = pred[test].copy()
    perturbed[:10] += rng.normal(0, 10, 10)
    out2 = fitted.transform(age[test], perturbed, **({"site": site[test]} if by_site else {}))
    np.testing.assert_array_equal(out2[10:], out[10:])
    assert not np.allclose(out2[:10], out[:10])
    # ... and nothing fitted: the parameters are byte-identical after transforming.
    assert json.dumps(fitted.to_dict(), sort_keys=True) == params
    # Each output depends on its own row only (transforming one row at a time agrees).
    one_by_one = [
        fitted.transform(age[[i]], pred[[i]], **({"site": site[[i]]} if by_site else {}))[0] for i in test
    ]
    np.testing.assert_allclose(one_by_one, out, rtol=0, atol=1e-12)
    # The check can fail: a correction fitted with the held-out rows included differs.
    both = np.r_[train, test]
    leaky = AgeBiasCorrection(method=method, by_site=by_site).fit(
        age[both], np.r_[pred[train], perturbed], **({"site": site[both]} if by_site else {})
    )
    assert json.dumps(leaky.to_dict(), sort_keys=True) != params


def test_round_trip_through_json(rng):
    site, age, pred = _sites(rng)
    corr = AgeBiasCorrection(method="smith", degree=2, by_site=True).fit(age, pred, site=site)
    again = AgeBiasCorrection.from_dict(json.loads(json.dumps(corr.to_dict())))
    np.testing.assert_array_equal(again.transform(age, pred, site=site), corr.transform(age, pred, site=site))
    assert again.fallbacks_ == corr.fallbacks_
    with pytest.raises(StatsInputError, match="stored state lacks"):
        AgeBiasCorrection.from_dict({"params": {}})
