"""Tests of the simulated cohort (brainage.simulate)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.exceptions import UsageError
from brainage.simulate import cli as sim_cli
from brainage.simulate import resolve_params, simulate_cohort
from brainage.simulate.bold import couplings, draw_motion, framewise_displacement, parcel_signals
from brainage.simulate.latent import draw_cohort, oracle_mae, true_pid

REPO = Path(__file__).resolve().parents[1]
TRUTH = Path("sourcedata/brainage-truth")
TINY = {"n_volumes": 12}


# --------------------------------------------------------------------------- parameters
def test_presets_set_resolution_and_overrides_win():
    demo = resolve_params("demo")
    assert (demo.t1_voxel_size, demo.bold_voxel_size, demo.n_subjects) == (2.5, 4.0, 40)
    assert resolve_params("default").t1_voxel_size == 1.0
    assert resolve_params("default").n_volumes >= 100
    assert resolve_params("test", n_volumes=30).n_volumes == 30


@pytest.mark.parametrize(
    ("preset", "overrides", "match"),
    [
        ("huge", {}, "unknown simulation preset 'huge'; choose one of default, demo, test"),
        ("test", {"n_subject": 3}, "unknown simulation parameter.*n_subject"),
        ("test", {"noise_correlation": 1.0}, r"noise_correlation must be in \(-1, 1\)"),
        ("test", {"n_volumes": 3}, "n_volumes must be at least 10"),
        ("test", {"atlas": "Harvard_Oxford"}, "atlas id must be alphanumeric"),
    ],
    ids=["preset", "name", "rho", "volumes", "atlas"],
)
def test_bad_parameters_are_refused(preset, overrides, match):
    with pytest.raises(UsageError, match=match):
        resolve_params(preset, **overrides)


# --------------------------------------------------------------------------- latents and PID
@pytest.mark.parametrize("rho", [-0.5, 0.0, 0.4])
def test_true_pid_matches_redundancy_plus_synergy_case(rho):
    params = resolve_params("test", struct_loading=1.0, func_loading=1.0, noise_correlation=rho)
    pid = true_pid(params)
    assert pid["R"] == pytest.approx(0.5)
    assert pid["U1"] == pytest.approx(0.0, abs=1e-12)
    assert pid["U2"] == pytest.approx(0.0, abs=1e-12)
    assert pid["S"] == pytest.approx(0.5 * np.log2(1 + 2 / (1 + rho)) - 0.5)


def test_true_pid_matches_unique_plus_synergy_case():
    rho = 0.6
    params = resolve_params("test", struct_loading=1.0, func_loading=0.0, noise_correlation=rho)
    pid = true_pid(params)
    assert pid["U1"] == pytest.approx(0.5)
    assert pid["R"] == pytest.approx(0.0, abs=1e-12)
    assert pid["S"] == pytest.approx(0.5 * np.log2(1 + 1 / (1 - rho**2)) - 0.5)


def test_default_information_structure_has_every_atom():
    pid = true_pid(resolve_params("default"))
    assert pid["U1"] > 0.3 and pid["R"] > 0.3 and pid["S"] > 0.1
    assert pid["U2"] == pytest.approx(0.0, abs=1e-12)
    assert pid["U1"] + pid["U2"] + pid["R"] + pid["S"] == pytest.approx(pid["I12"])


def test_cohort_latents_follow_the_model():
    params = resolve_params("test", n_subjects=4000, seed=3)
    cohort = draw_cohort(params)
    assert cohort["age"].between(params.age_min, params.age_max).all()
    assert (cohort["group"] == "patient").sum() == round(0.3 * 4000)
    g = cohort["age_gaussianized"]
    assert abs(g.mean()) < 0.06 and abs(g.std() - 1) < 0.05
    a_s = params.struct_loading
    expected = a_s / np.sqrt(a_s**2 + 1)
    assert np.corrcoef(g, cohort["latent_structural"])[0, 1] == pytest.approx(expected, abs=0.02)
    gap = cohort.loc[cohort["group"] == "patient", "true_gap"]
    assert (gap == params.patient_gap).all()
    assert (cohort.loc[cohort["group"] == "control", "true_gap"] == 0).all()


def test_oracle_mae_shrinks_with_stronger_structural_signal():
    weak = oracle_mae(resolve_params("test", struct_loading=1.0), n_draws=50_000)
    strong = oracle_mae(resolve_params("test", struct_loading=4.0), n_draws=50_000)
    assert 0 < strong < weak < 15


# --------------------------------------------------------------------------- functional model
def test_dmn_coupling_and_amplitude_fall_with_functional_age():
    params = resolve_params("default")
    young, old = couplings(25.0, params), couplings(75.0, params)
    assert old["dmn"] < young["dmn"]
    assert old["amplitude"] < young["amplitude"]
    assert old["global"] > young["global"]
    networks = np.array(["default"] * 6 + ["frontal"] * 6)
    rng = np.random.default_rng(0)
    long = resolve_params("default", n_volumes=2000)
    corr_young = np.corrcoef(parcel_signals(rng, networks, 25.0, long).T)[:6, :6]
    corr_old = np.corrcoef(parcel_signals(rng, networks, 75.0, long).T)[:6, :6]
    off = ~np.eye(6, dtype=bool)
    assert corr_young[off].mean() > corr_old[off].mean() + 0.1


def test_motion_starts_at_zero_and_has_spikes():
    params = resolve_params("default")
    motion = draw_motion(np.random.default_rng(1), 120, params)
    assert motion.shape == (120, 6)
    assert np.all(motion[0] == 0)
    fd = framewise_displacement(motion)
    assert np.isnan(fd[0]) and np.nanmax(fd) > 0.4


# --------------------------------------------------------------------------- the dataset
# Simulating this three-participant cohort takes about 30 s: the tests that read it are
# marked slow (`pytest -m "not slow"` leaves them out; `make test` runs them).
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "ds"
    return simulate_cohort(root, n_subjects=3, seed=7, preset="test", **TINY)


@pytest.mark.slow
def test_dataset_has_bids_files_and_participants(dataset):
    table = pd.read_csv(dataset / "participants.tsv", sep="\t")
    assert list(table.columns) == ["participant_id", "age", "sex", "site", "group"]
    assert list(table["participant_id"]) == ["sub-01", "sub-02", "sub-03"]
    description = json.loads((dataset / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw"
    t1 = nib.load(dataset / "sub-02/anat/sub-02_T1w.nii.gz")
    assert t1.shape == (46, 58, 54) and t1.get_data_dtype() == np.int16
    bold = nib.load(dataset / "sub-02/func/sub-02_task-rest_bold.nii.gz")
    sidecar = json.loads((dataset / "sub-02/func/sub-02_task-rest_bold.json").read_text())
    assert bold.shape[3] == TINY["n_volumes"]
    assert bold.header.get_zooms()[3] == pytest.approx(sidecar["RepetitionTime"])
    assert sidecar["TaskName"] == "rest"


@pytest.mark.slow
def test_images_declare_mm_and_seconds(dataset):
    anat = dataset / TRUTH / "sub-01/anat"
    paths = [
        dataset / "sub-01/anat/sub-01_T1w.nii.gz",
        dataset / "sub-01/func/sub-01_task-rest_bold.nii.gz",
        anat / "sub-01_space-MNI152NLin2009aSym_res-2_label-GM_probseg.nii.gz",
        anat / "sub-01_space-MNI152NLin2009aSym_res-2_desc-brain_mask.nii.gz",
        anat / "sub-01_from-T1w_to-MNI152NLin2009aSym_desc-deformation_xfm.nii.gz",
    ]
    for path in paths:
        assert nib.load(path).header.get_xyzt_units() == ("mm", "sec"), path.name


def test_deformation_is_the_same_on_the_grid_and_at_points():
    from brainage.simulate import geometry

    rng = np.random.default_rng(3)
    deformation = geometry.draw_deformation(rng, 2.0, 16.0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-106.0, -142.0, -80.0]
    shape = (20, 24, 18)
    dense, _ = deformation.dense(shape, affine)
    points = geometry.voxel_points(shape, affine)
    at = deformation.at(points, shape, affine).reshape(3, *shape)
    np.testing.assert_allclose(dense, at, atol=1e-4)
    # Lattice points carry the exact spline values.
    exact = deformation.evaluate(points).reshape(3, *shape)
    np.testing.assert_allclose(dense[:, ::2, ::2, ::2], exact[:, ::2, ::2, ::2], atol=1e-4)
    assert 0.5 < float(np.std(exact)) < 4.0


@pytest.mark.slow
def test_t1_has_head_around_brain_and_tissue_contrast(dataset):
    t1 = np.asarray(nib.load(dataset / "sub-01/anat/sub-01_T1w.nii.gz").dataobj, float)
    # Skull-and-scalp voxels exist outside the brain: the volume is not brain-extracted.
    assert (t1 > 100).mean() > 0.25
    # Background (corners) is dark noise, the head is bright.
    assert np.median(t1[:3, :3, :3]) < 60 < np.percentile(t1, 90)


@pytest.mark.slow
def test_truth_files_mirror_pipeline_names(dataset):
    truth = dataset / TRUTH / "sub-01"
    gm = nib.load(truth / "anat/sub-01_space-MNI152NLin2009aSym_res-2_label-GM_probseg.nii.gz")
    assert gm.shape == (99, 117, 95)
    assert np.allclose(gm.affine[:3, 3], [-98, -134, -72])
    tissue = pd.read_csv(truth / "anat/sub-01_desc-tissue_morph.tsv", sep="\t")
    assert list(tissue.columns) == ["gm_ml", "wm_ml", "csf_ml", "tiv_ml", "ventricles_ml"]
    row = tissue.iloc[0]
    assert 400 < row["gm_ml"] < 1000 and row["tiv_ml"] > row["gm_ml"] + row["wm_ml"]
    regional = pd.read_csv(truth / "anat/sub-01_atlas-HarvardOxford_desc-gm_morph.tsv", sep="\t")
    assert list(regional.columns) == ["index", "name", "hemisphere", "lobe", "gm_volume_ml"]
    series = pd.read_csv(truth / "func/sub-01_task-rest_atlas-HarvardOxford_timeseries.tsv",
                         sep="\t")
    relmat = pd.read_csv(truth / ("func/sub-01_task-rest_atlas-HarvardOxford_"
                                  "meas-PearsonCorrelation_relmat.tsv"), sep="\t", index_col=0)
    assert len(series) == TINY["n_volumes"]
    assert list(relmat.columns) == list(series.columns) == list(relmat.index)
    assert np.allclose(relmat.to_numpy(), relmat.to_numpy().T)
    assert np.allclose(np.diag(relmat.to_numpy()), 1.0)
    assert np.allclose(relmat.to_numpy(), np.corrcoef(series.to_numpy().T), atol=1e-4)
    motion = pd.read_csv(truth / "func/sub-01_task-rest_desc-motion_timeseries.tsv", sep="\t")
    assert list(motion.columns[:6]) == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    assert motion["framewise_displacement"].isna().iloc[0]
    xfm = json.loads((truth / "anat/sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json")
                     .read_text())
    pose = np.array(xfm["HeadPose"])
    assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6)


@pytest.mark.slow
def test_cohort_truth_has_pid_oracle_and_latents(dataset):
    truth = json.loads((dataset / TRUTH / "truth.json").read_text())
    assert set(truth["pid_bits"]) >= {"U1", "U2", "R", "S"}
    assert 0 < truth["oracle_mae_years"] < 10
    table = pd.read_csv(dataset / TRUTH / "participants_truth.tsv", sep="\t")
    for column in ("latent_structural", "latent_functional", "true_gap", "head_scale",
                   "t1_rot_x", "gm_ml", "ventricles_ml", "oracle_age"):
        assert column in table.columns


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty and is not a previous brainage simulation"):
        simulate_cohort(tmp_path, n_subjects=1, preset="test")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _read_all(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_and_cli_reruns(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    sim_cli.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "a"), "--preset", "test", "--n-subjects", "1",
                              "--seed", "5", "--n-volumes", "12"])
    assert sim_cli.run(args) == 0
    assert "oracle MAE" in capsys.readouterr().out
    first = _read_all(tmp_path / "a")
    assert any(name.endswith("_T1w.nii.gz") for name in first)
    # Rerunning over a previous simulation replaces it, with identical bytes.
    simulate_cohort(tmp_path / "a", n_subjects=1, seed=5, preset="test", n_volumes=12)
    assert _read_all(tmp_path / "a") == first
    other = simulate_cohort(tmp_path / "b", n_subjects=1, seed=6, preset="test", n_volumes=12)
    assert _read_all(other)["sub-01/anat/sub-01_T1w.nii.gz"] != first["sub-01/anat/sub-01_T1w.nii.gz"]


def _validator() -> str:
    found = os.environ.get("BIDS_VALIDATOR") or shutil.which("bids-validator")
    local = REPO / ".tools/node_modules/.bin/bids-validator"
    if found:
        return found
    if local.exists():
        return str(local)
    pytest.fail(
        "bids-validator not found; install it with "
        "`npm install --prefix .tools bids-validator@1.15.0` (or set BIDS_VALIDATOR)"
    )


@pytest.mark.slow
def test_bids_validator_reports_no_errors(dataset):
    proc = subprocess.run([_validator(), str(dataset), "--json"], capture_output=True,
                          text=True, timeout=300)
    report = json.loads(proc.stdout)
    errors = report["issues"]["errors"]
    assert errors == [], json.dumps(errors, indent=1)[:2000]
    assert report["summary"]["subjects"] == ["01", "02", "03"]


def test_structural_aging_loses_gm_regionally_and_grows_ventricles(aged_test_anatomy):
    from brainage.simulate import anatomy

    _, tpl, young, old = aged_test_anatomy
    assert old["gm"].sum() < 0.9 * young["gm"].sum()
    assert old["ventricles"].sum() > 1.5 * young["ventricles"].sum()
    assert np.allclose(old["gm"] + old["wm"] + old["csf"], tpl.mask, atol=1e-5)
    kinds = anatomy.region_kind_indices(tpl.label_table)
    occipital = tpl.label_table.loc[tpl.label_table["lobe"] == "occipital", "index"]
    for kind in ("frontal", "hippocampus"):
        region = np.isin(tpl.labels, kinds[kind])
        other = np.isin(tpl.labels, occipital)
        loss_region = 1 - old["gm"][region].sum() / young["gm"][region].sum()
        loss_other = 1 - old["gm"][other].sum() / young["gm"][other].sum()
        assert loss_region > loss_other
