"""Normative deviations: OLS feature ~ 1 + age + age² + sex on the controls, checked against statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.stats.outliers_influence import OLSInfluence

from brainage.group.deviations import Z_FLAG, normative_deviations, write_deviations

N = 40


def _cohort(n=N, *, seed=0, n_patients=12):
    """Participants (controls first) and two features: one follows age and sex, one is noise."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    sex = np.array(["F", "M"] * (n // 2))
    control = np.arange(n) < n - n_patients
    keys = pd.Index([f"key{i}" for i in range(n)], name="key")
    parts = pd.DataFrame({
        "participant_id": [f"sub-{i + 1:02d}" for i in range(n)],
        "session": pd.Series(["n/a"] * n, dtype=object).to_numpy(),
        "age": age,
        "sex": sex,
        "group": np.where(control, "control", "patient"),
        "is_control": control,
    }, index=keys)
    features = pd.DataFrame({
        "HarvardOxford_1": 8.0 - 0.04 * age - 0.0004 * (age - 50) ** 2 + 0.5 * (sex == "M")
        + rng.normal(0, 0.15, n),
        "noise": rng.normal(10, 1, n),
    }, index=keys)
    return parts, features


def _statsmodels_design(parts):
    """The same model as statsmodels would fit it (raw age, not the module's centred age)."""
    age = parts["age"].to_numpy(float)
    return np.column_stack([np.ones(len(age)), age, age**2, (parts["sex"] == "M").to_numpy(float)])


def _z(dev, feature):
    return dev.loc[dev["feature"] == feature, "z"].to_numpy()


@pytest.fixture
def deviations():
    """The default cohort, its deviations, the control mask and the statsmodels design."""
    parts, features = _cohort()
    dev = normative_deviations(parts, features)
    return features, dev, parts["is_control"].to_numpy(), _statsmodels_design(parts)


def test_controls_z_is_the_externally_studentized_residual(deviations):
    features, dev, ctrl, X = deviations
    for feature in features:
        fit = sm.OLS(features[feature].to_numpy()[ctrl], X[ctrl]).fit()
        expected = OLSInfluence(fit).resid_studentized_external
        np.testing.assert_allclose(_z(dev, feature)[ctrl], expected, rtol=1e-8, atol=1e-10)


def test_patients_z_is_the_prediction_error_over_its_standard_error(deviations):
    features, dev, ctrl, X = deviations
    for feature in features:
        y = features[feature].to_numpy()
        fit = sm.OLS(y[ctrl], X[ctrl]).fit()
        pred = fit.get_prediction(X[~ctrl])
        # se_obs = sqrt(se_mean² + s²) = s sqrt(1 + h)
        z = (y[~ctrl] - pred.predicted_mean) / pred.se_obs
        np.testing.assert_allclose(_z(dev, feature)[~ctrl], z, rtol=1e-8, atol=1e-10)
        rows = dev[(dev["feature"] == feature) & (dev["group"] == "patient")]
        np.testing.assert_allclose(rows["expected"], pred.predicted_mean, rtol=1e-10)


def test_a_value_far_outside_is_flagged_and_a_typical_one_is_not():
    parts, features = _cohort()
    patients = parts.index[~parts["is_control"]]
    far, typical = patients[0], patients[1]
    ctrl = parts["is_control"].to_numpy()
    fit = sm.OLS(features["HarvardOxford_1"].to_numpy()[ctrl], _statsmodels_design(parts)[ctrl]).fit()
    predicted = fit.predict(_statsmodels_design(parts.loc[[far, typical]]))
    features.loc[far, "HarvardOxford_1"] = predicted[0] - 2.0  # ≈ 13 residual SDs below
    features.loc[typical, "HarvardOxford_1"] = predicted[1] + 0.05  # a third of an SD above
    dev = normative_deviations(parts, features).set_index(["participant_id", "feature"])
    row_far = dev.loc[(parts.loc[far, "participant_id"], "HarvardOxford_1")]
    row_typical = dev.loc[(parts.loc[typical, "participant_id"], "HarvardOxford_1")]
    assert row_far["z"] < -Z_FLAG and bool(row_far["flagged"])
    assert abs(row_typical["z"]) < 1 and not bool(row_typical["flagged"])
    assert row_far["expected"] == pytest.approx(predicted[0])
    assert dev["flagged"].dtype == bool
    np.testing.assert_array_equal(dev["flagged"], dev["z"].abs() > Z_FLAG)


def test_a_controls_expected_value_does_not_use_that_control():
    parts, features = _cohort()
    control = parts.index[3]
    pid = parts.loc[control, "participant_id"]
    before = normative_deviations(parts, features)
    changed = features.copy()
    changed.loc[control, "HarvardOxford_1"] += 5.0
    after = normative_deviations(parts, changed)

    def row(dev, participant):
        return dev[(dev["participant_id"] == participant) & (dev["feature"] == "HarvardOxford_1")].iloc[0]

    assert row(after, pid)["expected"] == pytest.approx(row(before, pid)["expected"], rel=1e-10)
    assert row(after, pid)["value"] == pytest.approx(row(before, pid)["value"] + 5.0)
    assert row(after, pid)["z"] > row(before, pid)["z"] + 3
    # the other controls' expectations do use it
    other = parts.loc[parts.index[4], "participant_id"]
    assert row(after, other)["expected"] != pytest.approx(row(before, other)["expected"], rel=1e-10)


def test_too_few_controls_is_a_clear_error():
    parts, features = _cohort(n=20, n_patients=11)  # 9 controls, 4 parameters
    with pytest.raises(ValueError, match=r"at least 10 controls .*4 parameters\); the cohort has 9"):
        normative_deviations(parts, features)


def test_participants_without_a_normative_sex_or_values_are_not_scored():
    parts, features = _cohort()
    patients = parts.index[~parts["is_control"]]
    parts.loc[patients[0], "sex"] = "n/a"  # unknown
    parts.loc[patients[1], "sex"] = "X"  # no control of that sex
    features.loc[patients[2]] = np.nan  # without this modality
    dev = normative_deviations(parts, features)
    by = dev.set_index("participant_id")
    for key in patients[:2]:
        rows = by.loc[parts.loc[key, "participant_id"]]
        assert rows["z"].isna().all() and rows["expected"].isna().all() and not rows["flagged"].any()
    assert parts.loc[patients[2], "participant_id"] not in set(dev["participant_id"])
    assert len(dev) == (N - 1) * features.shape[1]
    # the others are scored as if those participants were not there
    ref = normative_deviations(parts.drop(patients[:3]), features.drop(patients[:3]))
    kept = dev[dev["z"].notna()].reset_index(drop=True)
    np.testing.assert_allclose(kept["z"], ref["z"], rtol=1e-10)


def test_without_any_known_sex_the_model_has_no_sex_term():
    parts, features = _cohort()
    parts["sex"] = "n/a"
    dev = normative_deviations(parts, features)
    ctrl = parts["is_control"].to_numpy()
    X = _statsmodels_design(parts)[:, :3]
    fit = sm.OLS(features["noise"].to_numpy()[ctrl], X[ctrl]).fit()
    np.testing.assert_allclose(_z(dev, "noise")[ctrl], OLSInfluence(fit).resid_studentized_external, rtol=1e-8)


def test_docstring_examples():
    import doctest

    from brainage.group import deviations

    result = doctest.testmod(deviations)
    assert result.attempted >= 1 and result.failed == 0


# --------------------------------------------------------------------------- on disk
CONFIG = """\
name: deviationstest
group:
  inputs:
    anat: {kind: regional, atlas: HarvardOxford, normalize: tiv}
    func: {kind: connectivity, atlas: HarvardOxford}
  models: [ridge]
  primary_model: ridge
"""


def test_write_deviations_scores_the_regional_inputs_of_a_cohort(tmp_path):
    from brainage.atlases import region_table
    from brainage.config import load_config

    from .test_group_level import REGIONS, write_cohort

    bids, deriv = write_cohort(tmp_path, n=30, seed=5)
    (tmp_path / "group.yaml").write_text(CONFIG)
    config = load_config(tmp_path / "group.yaml")
    path = write_deviations(bids, deriv, config)
    assert path == deriv / "group" / "deviations.tsv"
    dev = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["n/a"])
    assert list(dev.columns) == ["participant_id", "session", "group", "modality", "feature", "region", "lobe",
                                 "value", "expected", "z", "flagged", "units"]
    people = pd.read_csv(bids / "participants.tsv", sep="\t")
    n_features = len(REGIONS) + 5  # the atlas regions and the tissue totals
    assert len(dev) == len(people) * n_features
    assert set(dev["modality"]) == {"anat"}  # connectivity is not regional
    names = region_table("HarvardOxford").set_index("index")
    for index, _ in REGIONS:
        rows = dev[dev["feature"] == f"HarvardOxford_{index}"]
        assert set(rows["region"]) == {names.loc[index, "name"]}
        assert set(rows["lobe"]) == {names.loc[index, "lobe"]}
        assert set(rows["units"]) == {"fraction of TIV"}
    totals = dev.drop_duplicates("feature").set_index("feature")
    assert totals.loc["gm_ml", "region"] == "Total_GM" and totals.loc["tiv_ml", "region"] == "TIV"
    assert totals.loc["tiv_ml", "units"] == "mL"  # TIV itself is not divided by TIV
    assert totals.loc["gm_ml", "units"] == "fraction of TIV"
    assert np.isnan(totals.loc["gm_ml", "lobe"])  # n/a
    assert dev["z"].notna().all() and dev["flagged"].isin([True, False]).all()
    # the patients' brains are 6 years older in write_cohort: their regional volumes are lower
    region_rows = dev[dev["feature"].str.startswith("HarvardOxford_")]
    assert region_rows.loc[region_rows["group"] == "patient", "z"].mean() < -1.0
    assert (deriv / "group" / "deviations.json").is_file()


def test_write_deviations_without_a_regional_input_writes_nothing(tmp_path):
    from brainage.config import load_config

    (tmp_path / "group.yaml").write_text(CONFIG.replace(
        "    anat: {kind: regional, atlas: HarvardOxford, normalize: tiv}\n", ""))
    assert write_deviations(tmp_path / "bids", tmp_path / "deriv", load_config(tmp_path / "group.yaml")) is None


def test_a_measure_the_model_fits_exactly_has_no_z():
    rng = np.random.default_rng(3)
    n = 30
    parts = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(n)], "session": None,
                          "age": rng.uniform(20, 80, n), "sex": rng.choice(["F", "M"], n),
                          "group": "control", "is_control": True})
    parts.loc[:4, ["group", "is_control"]] = ["patient", False]
    features = pd.DataFrame({"constant": np.full(n, 500.0), "noisy": rng.normal(10, 1, n)}, index=parts.index)
    dev = normative_deviations(parts, features)
    assert dev.loc[dev["feature"] == "constant", "z"].isna().all()
    assert not dev.loc[dev["feature"] == "constant", "flagged"].any()
    assert dev.loc[dev["feature"] == "noisy", "z"].notna().all()
