"""Ground truth for interpretation checks: regional rates of change and patient subtypes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from brainage.exceptions import UsageError
from brainage.simulate import cli as sim_cli
from brainage.simulate import resolve_params
from brainage.simulate.anatomy import load_atlas, region_kind_indices
from brainage.simulate.latent import draw_cohort
from brainage.simulate.regions import REGIONS_TRUTH_COLUMNS, VENTRICLES_NAME

TRUTH = Path("sourcedata/brainage-truth")
MIX = "structural=0.5,functional=0.5"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four participants, two of them patients (one structural, one functional), via the CLI."""
    root = tmp_path_factory.mktemp("truth") / "ds"
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    sim_cli.add_arguments(parser)
    args = parser.parse_args([
        str(root), "--preset", "test", "--n-subjects", "4", "--seed", "11", "--n-volumes", "12",
        "--patient-fraction", "0.5", "--patient-gap-struct", "7", "--patient-gap-func", "3",
        "--patient-subtypes", MIX,
    ])
    assert sim_cli.run(args) == 0
    return root


@pytest.fixture(scope="module")
def regions(dataset):
    return pd.read_csv(dataset / TRUTH / "regions_truth.tsv", sep="\t")


# --------------------------------------------------------------------------- regional truth
def test_regions_truth_has_every_atlas_region_and_the_ventricles(dataset, regions):
    atlas = load_atlas("HarvardOxford").labels
    assert len(regions) == len(atlas) + 1
    assert list(regions["index"].iloc[:-1].astype(int)) == list(atlas["index"])
    assert list(regions["name"].iloc[:-1]) == list(atlas["name"])
    assert (regions["atlas"] == "HarvardOxford").all()
    last = regions.iloc[-1]
    assert last["name"] == VENTRICLES_NAME and pd.isna(last["index"])
    for column in ("atlas", "index", "name", "lobe", "network", "gm_change_percent_per_decade",
                   "ventricle_growth_mm_per_decade", "coupling_change_per_decade",
                   "global_coupling_change_per_decade", "amplitude_change_per_decade",
                   "structural_rank"):
        assert column in regions.columns
    sidecar = json.loads((dataset / TRUTH / "regions_truth.json").read_text())
    assert list(sidecar) == list(regions.columns) == list(REGIONS_TRUTH_COLUMNS)
    assert all(entry["Description"] for entry in sidecar.values())


def test_ventricles_grow_only_on_their_row_and_change_fastest(regions):
    params = resolve_params("test")
    growth = regions["ventricle_growth_mm_per_decade"]
    assert growth.iloc[-1] == pytest.approx(10 * params.ventricle_growth_mm_per_year)
    assert (growth.iloc[:-1] == 0).all()
    assert regions["gm_change_percent_per_decade"].iloc[-1] == 0
    assert regions["volume_change_percent_per_decade"].iloc[-1] > 0
    assert regions["structural_rank"].iloc[-1] == 1
    ranks = regions["structural_rank"].dropna()
    speed = regions.loc[ranks.index, "volume_change_percent_per_decade"].abs()
    # rank 1 is the fastest: the absolute rate never grows down the ranking
    ordered = speed[ranks.sort_values(kind="stable").index].to_numpy()
    assert np.all(np.diff(ordered) <= 0)
    assert ranks.nunique() > len(ranks) // 2
    assert ranks.min() == 1 and ranks.max() <= len(regions)


def test_weighted_regions_lose_grey_matter_faster(regions):
    params = resolve_params("test")
    table = load_atlas("HarvardOxford").labels.reset_index(drop=True)
    kinds = region_kind_indices(table)
    atlas_rows = regions.iloc[:-1].assign(index=lambda t: t["index"].astype(int))
    rate = atlas_rows.set_index("index")["gm_change_percent_per_decade"]
    plain = atlas_rows.loc[atlas_rows["lobe"] == "occipital", "index"]
    assert rate[plain].to_numpy() == pytest.approx(-1000 * params.gm_loss_per_year)
    weights = dict(params.regional_weights)
    for kind in ("frontal", "insula", "hippocampus"):
        assert len(kinds[kind]) > 0
        assert (rate[kinds[kind]].abs() > rate[plain].abs().max()).all(), kind
        assert rate[kinds[kind]].to_numpy() == pytest.approx(
            -1000 * params.gm_loss_per_year * weights[kind])
    # The realised template rate shows the frontal weighting too, on average.
    realised = atlas_rows.set_index("index")["volume_change_percent_per_decade"]
    assert realised[kinds["frontal"]].mean() < realised[plain].mean() - 0.3
    assert (realised.dropna() < 0).all()


def test_default_mode_regions_carry_the_dmn_coupling_change(regions):
    params = resolve_params("test")
    parcels = regions[regions["bold_parcel"] == 1]
    dmn = parcels[parcels["network"] == "default"]
    assert {"Left_Precuneous_Cortex", "Left_Cingulate_Gyrus_posterior_division"} <= set(dmn["name"])
    assert dmn["coupling_change_per_decade"].to_numpy() == pytest.approx(
        -params.dmn_coupling_loss / 6, abs=1e-6)
    occipital = parcels[parcels["network"] == "occipital"]
    assert len(occipital) > 0
    assert occipital["coupling_change_per_decade"].to_numpy() == pytest.approx(
        -params.network_coupling_loss / 6, abs=1e-6)
    assert parcels["global_coupling_change_per_decade"].to_numpy() == pytest.approx(
        params.global_coupling_gain / 6, abs=1e-6)
    assert parcels["amplitude_change_per_decade"].to_numpy() == pytest.approx(
        -100 * params.bold_signal_change * params.amplitude_loss / 6, abs=1e-6)
    # Ventricles and brain stem are no parcels: no network, no coupling change.
    others = regions[regions["bold_parcel"] == 0]
    assert {"Brain-Stem", "Left_Lateral_Ventricle", VENTRICLES_NAME} <= set(others["name"])
    assert (others["network"].isna() | (others["network"] == "n/a")).all()
    assert (others["coupling_change_per_decade"] == 0).all()


# --------------------------------------------------------------------------- patient subtypes
def test_subtype_excess_goes_into_the_right_latent_age(dataset):
    params = resolve_params("test")
    truth = pd.read_csv(dataset / TRUTH / "participants_truth.tsv", sep="\t")
    public = pd.read_csv(dataset / "participants.tsv", sep="\t")
    assert list(public.columns) == ["participant_id", "age", "sex", "site", "group"]
    patients = truth[truth["group"] == "patient"].set_index("patient_subtype")
    assert sorted(patients.index) == ["functional", "structural"]
    assert patients.loc["structural", ["structural_age_excess", "functional_age_excess"]].tolist() \
        == [7.0, 0.0]
    assert patients.loc["functional", ["structural_age_excess", "functional_age_excess"]].tolist() \
        == [0.0, 3.0]
    assert patients["true_gap"].tolist() == [3.5, 1.5] or patients["true_gap"].tolist() == [1.5, 3.5]
    controls = truth[truth["group"] == "control"]
    assert (controls["patient_subtype"] == "none").all()
    assert (controls[["structural_age_excess", "functional_age_excess"]] == 0).all().all()
    # participants.tsv labels every patient 'patient', whatever the subtype.
    merged = public.merge(truth[["participant_id", "patient_subtype"]], on="participant_id")
    assert (merged.loc[merged["patient_subtype"] != "none", "group"] == "patient").all()
    # The latent ages (what the images are made from) carry exactly the excess.
    span = params.age_max - params.age_min
    s_age = params.age_min + span * norm.cdf(truth["latent_structural"]
                                             / np.hypot(params.struct_loading, 1))
    f_age = params.age_min + span * norm.cdf(truth["latent_functional"]
                                             / np.hypot(params.func_loading, 1))
    np.testing.assert_allclose(truth["structural_age"] - s_age, truth["structural_age_excess"],
                               atol=1e-4)
    np.testing.assert_allclose(truth["functional_age"] - f_age, truth["functional_age_excess"],
                               atol=1e-4)


def test_truth_json_records_the_mix_and_gaps(dataset):
    truth = json.loads((dataset / TRUTH / "truth.json").read_text())
    assert truth["patient_subtypes"] == {"structural": 0.5, "functional": 0.5}
    assert truth["patient_subtype_gaps_years"] == {
        "structural": {"structural": 7.0, "functional": 0.0},
        "functional": {"structural": 0.0, "functional": 3.0},
    }
    assert truth["patient_subtype_counts"] == {"structural": 1, "functional": 1}
    assert truth["true_patient_gap_structural_years"] == pytest.approx(3.5)
    assert truth["true_patient_gap_functional_years"] == pytest.approx(1.5)
    assert truth["true_patient_gap_years"] == pytest.approx(2.5)
    assert truth["parameters"]["patient_subtypes"] == {"structural": 0.5, "functional": 0.5}


def test_subtype_counts_follow_the_mix_and_leave_other_draws_alone():
    mix = (("shared", 0.4), ("structural", 0.3), ("functional", 0.3))
    plain = draw_cohort(resolve_params("test", n_subjects=1000, seed=4))
    mixed = draw_cohort(resolve_params("test", n_subjects=1000, seed=4, patient_subtypes=mix,
                                       patient_gap_struct=6.0, patient_gap_func=2.0))
    n_patients = (plain["group"] == "patient").sum()
    counts = mixed["patient_subtype"].value_counts()
    assert counts["none"] == 1000 - n_patients
    for name, fraction in mix:
        assert abs(counts[name] - fraction * n_patients) < 1
    for column in ("age", "sex", "site", "group", "latent_structural", "latent_functional"):
        assert plain[column].tolist() == mixed[column].tolist()
    assert (mixed["group"] == np.where(mixed["patient_subtype"] == "none", "control",
                                       "patient")).all()
    excess = mixed.groupby("patient_subtype")[["structural_age_excess", "functional_age_excess"]]
    assert excess.min().equals(excess.max())
    assert excess.first().loc["shared"].tolist() == [6.0, 2.0]
    assert excess.first().loc["structural"].tolist() == [6.0, 0.0]
    assert excess.first().loc["functional"].tolist() == [0.0, 2.0]
    np.testing.assert_allclose(mixed["true_gap"],
                               0.5 * (mixed["structural_age_excess"] + mixed["functional_age_excess"]))


def test_without_subtypes_every_patient_shares_one_gap():
    plain = draw_cohort(resolve_params("test", n_subjects=200, seed=2))
    shared = draw_cohort(resolve_params("test", n_subjects=200, seed=2,
                                        patient_subtypes="shared=1"))
    pd.testing.assert_frame_equal(plain, shared)
    patients = plain[plain["group"] == "patient"]
    assert (patients["patient_subtype"] == "shared").all()
    assert (patients[["structural_age_excess", "functional_age_excess", "true_gap"]] == 5.0).all().all()


@pytest.mark.parametrize(
    ("mix", "match"),
    [
        ("shared=0.5,structural=0.4", "must sum to 1; got 0.9"),
        ("shared=0.5,anatomical=0.5", "unknown patient subtype 'anatomical'; choose among shared"),
        ("shared=1.5,structural=-0.5", r"'shared' must be in \[0, 1\]"),
        ("shared=0.5,shared=0.5", "'shared' is given twice"),
        ("shared:1", "NAME=FRACTION"),
        ("shared=half,structural=0.5", "'shared' must be a number"),
        ((("shared",),), r"\(name, fraction\) pairs"),
    ],
    ids=["sum", "name", "range", "twice", "syntax", "number", "pair"],
)
def test_bad_subtype_mixes_are_refused(mix, match):
    with pytest.raises(UsageError, match=match):
        resolve_params("test", patient_subtypes=mix)


def test_bad_per_modality_gap_is_refused():
    with pytest.raises(UsageError, match="patient_gap_struct must be a finite number"):
        resolve_params("test", patient_gap_struct=float("nan"))
