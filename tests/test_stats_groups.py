"""Tests of brainage.stats.groups: Cohen's d, the group model, per-site meta-analysis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats

from brainage.exceptions import StatsInputError
from brainage.stats import groups
from brainage.stats.groups import GROUP_COLUMNS, cohens_d, compare_groups
from brainage.stats.sites import POOLED_COLUMNS, _pool, per_site

Z95 = stats.norm.ppf(0.975)


def _two_groups(rng, n_c=40, n_p=30, shift=2.0):
    gap = np.r_[rng.normal(0, 2, n_c), rng.normal(shift, 3, n_p)]
    return pd.DataFrame({"gap_corrected": gap, "group": ["control"] * n_c + ["patient"] * n_p})


def _cohort(rng, n_c=300, n_p=300, effect=5.0, age_slope=0.15, site_effects=None):
    """Simulated cohort: patients older than controls, gap rising with age."""
    sites = ["s1", "s2", "s3", "s4"]
    site_effects = site_effects or {}
    age = np.r_[rng.uniform(20, 60, n_c), rng.uniform(35, 75, n_p)]
    group = np.array(["control"] * n_c + ["patient"] * n_p, dtype=object)
    sex = rng.choice(["F", "M"], n_c + n_p)
    site = rng.choice(sites, n_c + n_p)
    site_offset = np.select([site == s for s in sites], [0.0, 1.0, -1.0, 0.5])
    per_site_effect = np.array([site_effects.get(s, effect) for s in site])
    gap = (
        per_site_effect * (group == "patient")
        + age_slope * (age - 45)
        + 0.5 * (sex == "M")
        + site_offset
        + rng.normal(0, 3, n_c + n_p)
    )
    return pd.DataFrame({"gap_corrected": gap, "group": group, "age": age, "sex": sex, "site": site})


# ---------------------------------------------------------------------------
# cohens_d
# ---------------------------------------------------------------------------


def test_cohens_d_hand_checked_case():
    r = cohens_d([1, 2, 3], [3, 4, 5])
    # means 2 and 4, both variances 1 -> pooled SD 1 -> d = -2
    assert r["d"] == pytest.approx(-2.0)
    # se = sqrt(6/9 + 4/12) = 1
    assert r["se"] == pytest.approx(1.0)
    assert r["ci_low"] == pytest.approx(-2.0 - Z95)
    assert r["ci_high"] == pytest.approx(-2.0 + Z95)
    assert (r["n_a"], r["n_b"]) == (3, 3)


def test_cohens_d_symmetric_and_interval_contains_d():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 2, 25), rng.normal(0, 1.5, 40)
    ab, ba = cohens_d(a, b), cohens_d(b, a)
    assert ab["d"] == pytest.approx(-ba["d"])
    assert ab["se"] == pytest.approx(ba["se"])
    assert ab["ci_low"] == pytest.approx(-ba["ci_high"])
    assert ab["ci_low"] < ab["d"] < ab["ci_high"]
    narrow = cohens_d(a, b, confidence=0.5)
    assert ab["ci_low"] < narrow["ci_low"] < narrow["d"] < narrow["ci_high"] < ab["ci_high"]


def test_cohens_d_matches_independent_computation():
    rng = np.random.default_rng(1)
    a, b = rng.normal(3, 2, 17), rng.normal(1, 4, 23)
    ss = ((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()
    sp = np.sqrt(ss / (a.size + b.size - 2))
    d = (a.mean() - b.mean()) / sp
    n = a.size + b.size
    se = np.sqrt(n / (a.size * b.size) + d**2 / (2 * n))
    z = stats.norm.ppf(0.95)
    r = cohens_d(a, b, confidence=0.9)
    assert r["d"] == pytest.approx(d, rel=1e-12)
    assert r["se"] == pytest.approx(se, rel=1e-12)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((d - z * se, d + z * se), rel=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        ([1.0], [1.0, 2.0], "at least 2 values"),
        ([1.0, 2.0], [3.0], "at least 2 values"),
        ([1.0, np.nan, 2.0], [1.0, 2.0], "NaN"),
        ([2.0, 2.0], [5.0, 5.0, 5.0], "pooled standard deviation is zero"),
    ],
)
def test_cohens_d_errors(a, b, match):
    with pytest.raises(StatsInputError, match=match):
        cohens_d(a, b)


def test_cohens_d_bad_confidence():
    with pytest.raises(StatsInputError, match="confidence"):
        cohens_d([1, 2], [3, 5], confidence=95)


# ---------------------------------------------------------------------------
# compare_groups
# ---------------------------------------------------------------------------


def test_no_covariates_equals_mean_difference_and_closed_form_hc3():
    rng = np.random.default_rng(2)
    t = _two_groups(rng)
    r = compare_groups(t, covariates=())
    assert list(r.columns) == list(GROUP_COLUMNS)
    assert len(r) == 1
    row = r.iloc[0]
    c = t.loc[t.group == "control", "gap_corrected"].to_numpy()
    p = t.loc[t.group == "patient", "gap_corrected"].to_numpy()
    assert row["mean_gap"] == pytest.approx(p.mean() - c.mean(), rel=1e-10)
    # HC3 with a group indicator: leverage 1/n_g, so Var(mean_g) = s_g^2 / (n_g - 1)
    se = np.sqrt(c.var(ddof=1) / (c.size - 1) + p.var(ddof=1) / (p.size - 1))
    assert row["se"] == pytest.approx(se, rel=1e-10)
    df = c.size + p.size - 2
    tq = stats.t.ppf(0.975, df)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(
        (row["mean_gap"] - tq * se, row["mean_gap"] + tq * se), rel=1e-10
    )
    assert row["p"] == pytest.approx(2 * stats.t.sf(abs(row["mean_gap"] / se), df), rel=1e-8)
    assert row["raw_mean_gap"] == pytest.approx(p.mean())
    assert row["reference_mean_gap"] == pytest.approx(c.mean())
    d = cohens_d(p, c)
    assert (row["cohens_d"], row["d_ci_low"], row["d_ci_high"]) == pytest.approx(
        (d["d"], d["ci_low"], d["ci_high"])
    )
    assert row["n"] == p.size and r.attrs["n_reference"] == c.size
    assert row["model"] == "gap_corrected ~ C(group, Treatment(reference='control'))"
    assert row["dropped_covariates"] == ""
    assert r.attrs["dropped_covariates"] == {}


def test_simulated_recovery_and_age_adjustment():
    rng = np.random.default_rng(3)
    t = _cohort(rng)
    r = compare_groups(t)
    row = r.iloc[0]
    assert row["ci_low"] < 5.0 < row["ci_high"]
    assert abs(row["mean_gap"] - 5.0) < 1.0
    raw_diff = row["raw_mean_gap"] - row["reference_mean_gap"]
    # patients are ~15 years older and the gap rises 0.15/year: the raw difference is ~7.25
    assert raw_diff - row["mean_gap"] > 1.0
    assert not (row["ci_low"] < raw_diff < row["ci_high"])
    assert r.attrs["formula"] == (
        "gap_corrected ~ C(group, Treatment(reference='control')) + age + age2 + C(sex) + C(site)"
    )
    # the same model fitted directly, age2 = centred square of age
    direct = smf.ols(
        "gap_corrected ~ C(group, Treatment(reference='control')) + age + age2 + C(sex) + C(site)",
        data=t.assign(age2=(t.age - t.age.mean()) ** 2),
    ).fit(cov_type="HC3")
    name = "C(group, Treatment(reference='control'))[T.patient]"
    assert row["mean_gap"] == pytest.approx(direct.params[name], rel=1e-10)
    assert row["se"] == pytest.approx(direct.bse[name], rel=1e-10)


def test_age2_column_in_table_is_used_as_given():
    rng = np.random.default_rng(4)
    t = _cohort(rng, n_c=60, n_p=60)
    t["age2"] = t.age**2  # uncentred, supplied by the user
    r = compare_groups(t, covariates=("age2",))
    direct = smf.ols("gap_corrected ~ C(group, Treatment(reference='control')) + age2", data=t).fit(
        cov_type="HC3"
    )
    assert r.iloc[0]["mean_gap"] == pytest.approx(direct.params.iloc[1], rel=1e-10)
    centred = compare_groups(t.drop(columns="age2"), covariates=("age2",))
    assert centred.iloc[0]["mean_gap"] != pytest.approx(r.iloc[0]["mean_gap"], rel=1e-6)


def test_dropped_covariates_are_reported():
    rng = np.random.default_rng(5)
    t = _cohort(rng, n_c=50, n_p=50).assign(site="only-site", scanner=np.nan)
    r = compare_groups(t, covariates=("age", "age2", "sex", "site", "bmi", "scanner"))
    expected = {
        "site": "constant: one level among the 100 participants used",
        "bmi": "absent: no such column",
        "scanner": "all missing",
    }
    assert r.attrs["dropped_covariates"] == expected
    assert r.attrs["formula"] == "gap_corrected ~ C(group, Treatment(reference='control')) + age + age2 + C(sex)"
    assert r.iloc[0]["model"] == r.attrs["formula"]
    text = r.iloc[0]["dropped_covariates"]
    assert text.split("; ") == [f"{k} ({v})" for k, v in expected.items()]
    no_age = compare_groups(t.drop(columns="age"), covariates=("age", "age2"))
    assert set(no_age.attrs["dropped_covariates"]) == {"age", "age2"}
    assert "derive" in no_age.attrs["dropped_covariates"]["age2"]
    assert no_age.attrs["formula"] == "gap_corrected ~ C(group, Treatment(reference='control'))"


def test_constant_numeric_covariate_dropped():
    rng = np.random.default_rng(6)
    t = _two_groups(rng).assign(age=50.0)
    r = compare_groups(t, covariates=("age", "age2"))
    assert r.attrs["dropped_covariates"]["age"].startswith("constant: zero variance")
    assert r.attrs["dropped_covariates"]["age2"].startswith("constant: zero variance")


def test_missing_values_excluded_and_counted():
    rng = np.random.default_rng(7)
    t = _cohort(rng, n_c=40, n_p=40)
    t.loc[[0, 1, 50], "gap_corrected"] = np.nan
    t.loc[2, "group"] = None
    t.loc[[3, 60], "age"] = np.nan
    r = compare_groups(t, covariates=("age", "sex"))
    assert r.attrs["n_excluded_missing"] == 4
    assert r.attrs["n_excluded_missing_covariates"] == 2
    assert r.attrs["n_used"] == 80 - 6
    complete = t.dropna(subset=["gap_corrected", "group", "age"])
    direct = smf.ols("gap_corrected ~ C(group, Treatment(reference='control')) + age + C(sex)", data=complete).fit(
        cov_type="HC3"
    )
    assert r.iloc[0]["mean_gap"] == pytest.approx(direct.params.iloc[1], rel=1e-10)


def test_multiple_patient_groups_one_model():
    rng = np.random.default_rng(8)
    n = 40
    t = pd.DataFrame(
        {
            "gap_corrected": np.r_[rng.normal(0, 2, n), rng.normal(3, 2, n), rng.normal(-1, 2, n)],
            "group": ["control"] * n + ["SCZ"] * n + ["MDD"] * n,
            "age": rng.uniform(20, 60, 3 * n),
        }
    )
    plain = compare_groups(t, covariates=())
    assert plain["group"].tolist() == ["MDD", "SCZ"]
    means = t.groupby("group")["gap_corrected"].mean()
    for _, row in plain.iterrows():
        assert row["mean_gap"] == pytest.approx(means[row["group"]] - means["control"], rel=1e-10)
        assert row["reference_mean_gap"] == pytest.approx(means["control"])
    adjusted = compare_groups(t, covariates=("age",))
    direct = smf.ols("gap_corrected ~ C(group, Treatment(reference='control')) + age", data=t).fit(cov_type="HC3")
    for _, row in adjusted.iterrows():
        name = f"C(group, Treatment(reference='control'))[T.{row['group']}]"
        assert row["mean_gap"] == pytest.approx(direct.params[name], rel=1e-10)
        assert row["se"] == pytest.approx(direct.bse[name], rel=1e-10)


def test_reference_as_tuple_pools_labels():
    rng = np.random.default_rng(9)
    t = _two_groups(rng)
    t.loc[t.index[:15], "group"] = "HC"
    r = compare_groups(t, covariates=(), reference=("control", "HC"))
    merged = compare_groups(t.assign(group=t.group.replace("HC", "control")), covariates=())
    assert r["group"].tolist() == ["patient"]
    for col in ("mean_gap", "se", "p", "cohens_d", "reference_mean_gap"):
        assert r.iloc[0][col] == pytest.approx(merged.iloc[0][col], rel=1e-12)
    assert r.attrs["reference"] == ("control", "HC")
    assert "Treatment(reference='control|HC')" in r.attrs["formula"]
    # exact matching: with only "control" as reference, "HC" is a group of its own
    assert compare_groups(t, covariates=())["group"].tolist() == ["HC", "patient"]


def test_small_group_dropped_with_reason():
    rng = np.random.default_rng(10)
    t = _two_groups(rng)
    t.loc[len(t)] = [1.0, "rare"]
    r = compare_groups(t, covariates=())
    assert r["group"].tolist() == ["patient"]
    assert r.attrs["dropped_groups"]["rare"].startswith("fewer than 2 participants with complete data (n=1)")
    assert r.iloc[0]["mean_gap"] == pytest.approx(compare_groups(t.iloc[:-1], covariates=()).iloc[0]["mean_gap"])


def test_singleton_site_participant_excluded_not_nan():
    rng = np.random.default_rng(11)
    t = _cohort(rng, n_c=40, n_p=40)
    t.loc[0, "site"] = "lonely"
    r = compare_groups(t, covariates=("age", "site"))
    assert r.attrs["n_excluded_leverage_one"] == 1
    without = compare_groups(t.iloc[1:], covariates=("age", "site"))
    assert np.isfinite(r.iloc[0]["se"])
    assert r.iloc[0]["se"] == pytest.approx(without.iloc[0]["se"], rel=1e-10)
    assert r.iloc[0]["mean_gap"] == pytest.approx(without.iloc[0]["mean_gap"], rel=1e-10)


def test_errors():
    rng = np.random.default_rng(12)
    t = _two_groups(rng)
    with pytest.raises(StatsInputError, match=r"no participant labelled 'HC'.*labels found: \['control', 'patient'\].*reference="):
        compare_groups(t, reference="HC", covariates=())
    with pytest.raises(StatsInputError, match="column 'gap_corrected' not in the table"):
        compare_groups(t.rename(columns={"gap_corrected": "gap"}), covariates=())
    with pytest.raises(StatsInputError, match="column 'dx' not in the table"):
        compare_groups(t, group="dx", covariates=())
    with pytest.raises(StatsInputError, match="DataFrame"):
        compare_groups(t.to_numpy(), covariates=())
    tiny = pd.DataFrame(
        {
            "gap_corrected": [0.0, 1.0, 2.0, 3.0],
            "group": ["control", "control", "patient", "patient"],
            "age": [20.0, 30.0, 45.0, 60.0],
            "sex": ["F", "M", "F", "M"],
        }
    )
    with pytest.raises(StatsInputError, match="too few participants for the model: 4 .* 4 parameters"):
        compare_groups(tiny, covariates=("age", "sex"))
    with pytest.raises(StatsInputError, match="reference group .* has 1 participant"):
        compare_groups(t.iloc[39:], covariates=())
    with pytest.raises(StatsInputError, match="no group other than the reference"):
        compare_groups(t.iloc[:41], covariates=())
    confounded = t.assign(site=np.where(t.group == "control", "A", "B"))
    with pytest.raises(StatsInputError, match="rank-deficient"):
        compare_groups(confounded, covariates=("site",))


# ---------------------------------------------------------------------------
# per_site
# ---------------------------------------------------------------------------


def _dl_by_hand(b, v):
    w = 1 / v
    fe = (w * b).sum() / w.sum()
    q = (w * (b - fe) ** 2).sum()
    k = b.size
    c = w.sum() - (w**2).sum() / w.sum()
    tau2 = max(0.0, (q - (k - 1)) / c)
    ws = 1 / (v + tau2)
    est = (ws * b).sum() / ws.sum()
    se = 1 / np.sqrt(ws.sum())
    i2 = max(0.0, (q - (k - 1)) / q) * 100
    return est, se, tau2, q, i2


def test_per_site_homogeneous_recovers_effect_and_matches_hand_dl():
    rng = np.random.default_rng(13)
    t = _cohort(rng, n_c=240, n_p=240)
    res = per_site(t)
    sites, pooled = res.sites, res.pooled
    assert list(sites.columns) == ["site", *GROUP_COLUMNS, "note"]
    assert list(pooled.columns) == list(POOLED_COLUMNS)
    assert res["pooled"] is pooled and res.method == "dl"
    assert sites["site"].tolist() == ["s1", "s2", "s3", "s4"]
    assert (sites["note"] == "").all()
    row = pooled.iloc[0]
    assert row["k_sites"] == 4
    assert row["ci_low"] < 5.0 < row["ci_high"]
    assert abs(row["estimate"] - 5.0) < 1.0
    assert row["i2"] < 25.0
    b, v = sites["mean_gap"].to_numpy(), sites["se"].to_numpy() ** 2
    est, se, tau2, q, i2 = _dl_by_hand(b, v)
    assert row["estimate"] == pytest.approx(est, rel=1e-10)
    assert row["se"] == pytest.approx(se, rel=1e-10)
    assert row["tau2"] == pytest.approx(tau2, abs=1e-12)
    assert row["q"] == pytest.approx(q, rel=1e-10)
    assert row["i2"] == pytest.approx(i2, abs=1e-10)
    assert row["q_p"] == pytest.approx(stats.chi2.sf(q, 3), rel=1e-10)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((est - Z95 * se, est + Z95 * se), rel=1e-10)
    assert row["p"] == pytest.approx(2 * stats.norm.sf(abs(est / se)), rel=1e-6, abs=1e-300)
    # each site row is compare_groups on that site alone
    s2 = compare_groups(t[t.site == "s2"], covariates=("age", "age2", "sex"))
    assert sites.loc[sites.site == "s2", "mean_gap"].iloc[0] == pytest.approx(s2.iloc[0]["mean_gap"], rel=1e-12)


def test_per_site_heterogeneous_site_gives_high_i2():
    rng = np.random.default_rng(14)
    t = _cohort(rng, n_c=240, n_p=240, site_effects={"s4": 15.0})
    for method in ("dl", "iterated"):
        row = per_site(t, method=method).pooled.iloc[0]
        assert row["i2"] > 75.0
        assert row["tau2"] > 5.0
        assert row["q_p"] < 1e-3
    sites = per_site(t).sites
    b, v = sites["mean_gap"].to_numpy(), sites["se"].to_numpy() ** 2
    est, se, tau2, _, _ = _dl_by_hand(b, v)
    row = per_site(t).pooled.iloc[0]
    assert (row["estimate"], row["se"], row["tau2"]) == pytest.approx((est, se, tau2), rel=1e-10)
    # Paule-Mandel: tau2 solves sum w* (b - mu)^2 = k - 1
    pm = per_site(t, method="pm").pooled.iloc[0]
    w = 1 / (v + pm["tau2"])
    mu = (w * b).sum() / w.sum()
    assert (w * (b - mu) ** 2).sum() == pytest.approx(3.0, abs=1e-3)
    assert pm["estimate"] == pytest.approx(mu, rel=1e-8)


def test_dl_negative_tau2_truncated_to_fixed_effect():
    b, se = np.array([1.0, 1.01, 0.99]), np.sqrt([0.1, 0.2, 0.3])
    r = _pool(b, se, "dl", 0.05)
    w = 1 / se**2
    assert r["tau2"] == 0.0
    assert r["estimate"] == pytest.approx((w * b).sum() / w.sum(), rel=1e-12)
    assert r["se"] == pytest.approx(1 / np.sqrt(w.sum()), rel=1e-12)
    assert r["i2"] == 0.0


def test_per_site_small_site_noted_and_excluded_from_pooling():
    rng = np.random.default_rng(15)
    t = _cohort(rng, n_c=200, n_p=200)
    t = pd.concat(
        [
            t,
            pd.DataFrame(
                {
                    "gap_corrected": [0.0, 1.0, 9.0],
                    "group": ["control", "control", "patient"],
                    "age": [30.0, 40.0, 50.0],
                    "sex": ["F", "M", "F"],
                    "site": "s5",
                }
            ),
        ],
        ignore_index=True,
    )
    res = per_site(t)
    s5 = res.sites.loc[res.sites.site == "s5"].iloc[0]
    assert s5["note"] == "fewer than 2 'patient' participants at this site (n=1)"
    assert np.isnan(s5["mean_gap"]) and np.isnan(s5["se"]) and s5["n"] == 1
    assert res.pooled.iloc[0]["k_sites"] == 4
    kept = res.sites.loc[res.sites.note == ""]
    est, *_ = _dl_by_hand(kept["mean_gap"].to_numpy(), kept["se"].to_numpy() ** 2)
    assert res.pooled.iloc[0]["estimate"] == pytest.approx(est, rel=1e-10)


def test_per_site_too_few_sites_gives_nan_row_not_error():
    rng = np.random.default_rng(16)
    t = _cohort(rng, n_c=60, n_p=60)
    t = t[t.site.isin(["s1", "s2"])].copy()
    t.loc[(t.site == "s2") & (t.group == "control"), "site"] = "s1"  # s2 keeps only patients
    res = per_site(t)
    assert res.sites.loc[res.sites.site == "s2", "note"].iloc[0].startswith("fewer than 2 reference")
    row = res.pooled.iloc[0]
    assert row["k_sites"] == 1
    assert np.isnan(row["estimate"]) and np.isnan(row["i2"])
    assert "fewer than 2 sites" in row["note"]


def test_per_site_errors():
    rng = np.random.default_rng(17)
    t = _cohort(rng, n_c=30, n_p=30)
    with pytest.raises(StatsInputError, match="column 'scanner' not in the table"):
        per_site(t, site="scanner")
    with pytest.raises(StatsInputError, match="method"):
        per_site(t, method="reml")
    with pytest.raises(StatsInputError, match="labels found"):
        per_site(t, reference="HC")


def test_per_site_is_part_of_the_groups_contract():
    assert groups.per_site is per_site
    assert groups.POOLED_COLUMNS is POOLED_COLUMNS
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        groups.nothing  # noqa: B018
