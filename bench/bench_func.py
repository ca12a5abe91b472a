"""Benchmark of the functional stage: one 10-minute run (300 volumes, TR 2 s, 3 mm).

Writes ``bench/results/func.json`` with machine info, versions and:

- ``stage``: wall time per step of the functional stage (motion, registration,
  resampling, confounds, parcels, maps, QC), total wall time, peak memory (RSS of
  the worker process), on one simulated participant;
- ``motion``: time per volume and accuracy against the simulator's true motion
  for antspyx ``motion_correction`` with its defaults (on a subset of volumes),
  lighter ANTs settings, and the settings the stage uses;
- ``accuracy``: parcel time series and connectivity against the simulator's truth.

Usage::

    .venv/bin/python bench/bench_func.py [--volumes 300] [--motion-subset 20] [--out DIR]

Timings taken while other jobs share the CPU are inflated; the JSON records the
load average at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")


def _machine():
    import ants
    import nilearn

    import brainage

    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "brainage": brainage.__version__, "antspyx": ants.__version__,
        "nilearn": nilearn.__version__, "numpy": np.__version__,
        "itk_threads": os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"),
    }


def _motion_error(est, truth, ref):
    """RMS displacement error (mm) of points within 50 mm of the brain centre, per volume."""
    from brainage.func.motion import params_to_affine

    rng = np.random.default_rng(0)
    pts = rng.normal(size=(300, 3))
    pts = 50 * pts / np.linalg.norm(pts, axis=1, keepdims=True) + [0.0, -18.0, 18.0]
    pts = np.c_[pts, np.ones(len(pts))]
    inv0 = np.linalg.inv(est[ref]) @ params_to_affine(truth[ref])
    out = []
    for e, t in zip(est, truth):
        d = ((e @ inv0 - params_to_affine(t)) @ pts.T)[:3]
        out.append(float(np.sqrt(np.mean(np.sum(d**2, axis=0)))))
    return np.array(out)


def bench_motion(bold_path, truth_motion, subset: int):
    """Compare motion-estimation settings for time per volume and accuracy."""
    import ants
    import nibabel as nib

    from brainage.antsutils import to_ants
    from brainage.func.motion import (
        affine_to_params,
        ants_to_ras,
        estimate_motion,
        framewise_displacement,
    )

    img = nib.as_closest_canonical(nib.load(bold_path))
    data = np.asarray(img.dataobj, np.float32)
    n = data.shape[3]
    results = {}

    def summary(name, affines, seconds, n_done, ref, **extra):
        truth = truth_motion[: len(affines)]
        err = _motion_error(affines, truth, ref)
        fd_true = framewise_displacement(truth)
        fd_est = framewise_displacement(np.array([affine_to_params(a) for a in affines]))
        big = fd_true > 0.3
        results[name] = {
            "seconds_per_volume": round(seconds / n_done, 4),
            "extrapolated_seconds_300_volumes": round(300 * seconds / n_done, 1),
            "volumes": n_done, "rms_error_mm_median": round(float(np.median(err)), 4),
            "rms_error_mm_max": round(float(np.max(err)), 4),
            "fd_slope_on_true": round(float(np.polyfit(fd_true[1:], fd_est[1:], 1)[0]), 3),
            "fd_ratio_median_true_fd_above_0.3": round(float(np.median(fd_est[big] / fd_true[big])),
                                                       3) if big.any() else None,
            "load_average": os.getloadavg()[0], **extra,
        }
        print(name, results[name], flush=True)

    # antspyx motion_correction, defaults and lighter settings (subset of volumes)
    sub = nib.Nifti1Image(data[..., :subset], img.affine)
    sub.header.set_xyzt_units("mm", "sec")
    sub_ants = ants.from_nibabel_nifti(sub)
    fixed = to_ants(nib.Nifti1Image(data[..., 0], img.affine))
    for name, kwargs in (
        ("antspyx motion_correction defaults (BOLDRigid)", {}),
        ("antspyx motion_correction Rigid meansquares 2x1 shrink, 20x5 iterations",
         {"type_of_transform": "Rigid", "aff_metric": "meansquares",
          "aff_iterations": (20, 5), "aff_shrink_factors": (2, 1),
          "aff_smoothing_sigmas": (1, 0)}),
    ):
        t0 = time.perf_counter()
        mc = ants.motion_correction(sub_ants, fixed=fixed, **kwargs)
        seconds = time.perf_counter() - t0
        affines = np.array([ants_to_ras(ants.read_transform(p[0]))
                            for p in mc["motion_parameters"]])
        summary(name, affines, seconds, subset, 0)
    for name, kwargs, n_use in (
        ("brainage: 6 mm copies, Mattes MI in a head mask, 10 % samples, 10 iterations, "
         "each volume from the identity, 1 process", {}, n),
        ("brainage settings, 2 worker processes", {"n_jobs": 2}, n),
        ("brainage settings, start from previous volume", {"init_previous": True}, 4 * subset),
        ("brainage settings, 20 % samples", {"sampling": 0.2}, 4 * subset),
        ("brainage settings with meansquares", {"metric": "meansquares"}, 4 * subset),
        ("brainage settings, 20 iterations", {"iterations": 20}, 4 * subset),
        ("brainage settings, no downsampling", {"target_mm": 1.0}, 2 * subset),
    ):
        n_use = min(n, n_use)
        part = nib.Nifti1Image(data[..., :n_use], img.affine)
        t0 = time.perf_counter()
        res = estimate_motion(part, reference_index=0, **kwargs)
        seconds = time.perf_counter() - t0
        summary(name, res.affines, seconds, n_use, 0)
    return results


def _within_dmn(relmat, networks, fisher: bool = True):
    """Mean Fisher z (or Pearson r) over pairs of default-mode regions."""
    dmn = np.array([n.lower().startswith("default") or n.lower() in ("dmn", "dm")
                    for n in networks])
    r = relmat[np.ix_(dmn, dmn)]
    z = np.arctanh(np.clip(r, -0.999, 0.999)) if fisher else r
    iu = np.triu_indices(int(dmn.sum()), 1)
    return float(np.nanmean(z[iu]))


def _slope_ratio_ci(frame, column, n_boot: int = 4000, seed: int = 0):
    """Slope of ``column`` on age over the truth's slope, with a bootstrap over participants.

    Participants are resampled with replacement (the same draw for ours and the truth,
    so the ratio is paired); draws with fewer than 3 distinct ages are skipped.
    Returns the 2.5, 50 and 97.5 percentiles of the ratio.
    """
    rng = np.random.default_rng(seed)
    age = frame["age"].to_numpy()
    ours, truth = frame[column].to_numpy(), frame["dmn_truth"].to_numpy()
    ratios = []
    for _ in range(n_boot):
        i = rng.integers(0, len(frame), len(frame))
        if len(np.unique(age[i])) < 3:
            continue
        ratios.append(np.polyfit(age[i], ours[i], 1)[0] / np.polyfit(age[i], truth[i], 1)[0])
    return [round(float(v), 3) for v in np.percentile(ratios, [2.5, 50, 97.5])]


def _t1_to_mni_error(out, root, sub, template, brain):
    """Distance (mm) between the structural stage's MNI -> T1w map and the true one.

    Over the template brain voxels of ``template``'s grid; the truth is the
    simulator's head pose, size and deformation (a diagnostic: it reads the truth).
    """
    import ants
    import nibabel as nib

    from brainage.antsutils import to_ants
    from brainage.outputs import anat_outputs
    from brainage.simulate.bold import true_mni_to_native
    from brainage.simulate.geometry import read_true_geometry

    anat = anat_outputs(out, sub, resolution=2.0)
    ijk = np.argwhere(brain)
    mni = ijk @ template.affine[:3, :3].T + template.affine[:3, 3]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        field = ants.image_read(ants.apply_transforms(
            fixed=to_ants(template), moving=to_ants(nib.load(anat.t1w)),
            transformlist=[str(anat.xfm_t1w_to_mni)], compose=tmp + "/c_")).numpy()
    disp = field[tuple(ijk.T)].astype(np.float64)
    disp[:, :2] *= -1.0  # LPS -> RAS
    pose, scale, deformation = read_true_geometry(root, sub)
    true_t1 = true_mni_to_native(mni, pose, scale, deformation)
    return np.linalg.norm(mni + disp - true_t1, axis=1)


def _dmn_true_geometry(root, out, sub, names, networks, resolution):
    """Within-DMN Fisher z from the simulator's TRUE motion and geometry (diagnostic only).

    The raw run is resampled to MNI with the true transforms
    (:func:`brainage.simulate.bold.true_bold_in_mni`), then parcels, confounds (the
    stage's own table: its motion estimates, WM/CSF, scrubbing) and cleaning are the
    stage's; only the spatial mapping differs from the pipeline's.
    """
    import nibabel as nib
    import pandas as pd

    from brainage.atlases import load_atlas
    from brainage.func.denoise import clean_signals
    from brainage.func.features import connectivity, parcel_signals
    from brainage.simulate.bold import true_bold_in_mni
    from brainage.templates import mni_grid

    template, tmask = mni_grid(resolution)
    brain = np.asarray(tmask.dataobj) > 0
    data = true_bold_in_mni(root, sub, template, brain)
    func = out / sub / "func"
    conf = pd.read_csv(func / f"{sub}_task-rest_desc-confounds_timeseries.tsv", sep="\t",
                       na_values="n/a")
    qc = json.loads((func / f"{sub}_task-rest_desc-qc_bold.json").read_text())
    kept = np.flatnonzero(conf["motion_outlier"].to_numpy() == 0)
    raw = parcel_signals(nib.Nifti1Image(data, template.affine), load_atlas("HarvardOxford"),
                         nib.Nifti1Image(brain.astype(np.uint8), template.affine))[names]
    ok = ~raw.isna().any(axis=0).to_numpy()
    cleaned = pd.DataFrame(np.nan, index=range(len(kept)), columns=names)
    cleaned.loc[:, ok] = clean_signals(raw.loc[:, ok].to_numpy(),
                                       conf[qc["confound_regressors"]].fillna(0).to_numpy(),
                                       kept, tr=2.0, high_pass=0.008, low_pass=0.09)
    return _within_dmn(connectivity(cleaned, "correlation").to_numpy(), networks)


def bench_age_effect(n_subjects: int, out_dir: Path, nprocs: int = 2, n_volumes: int = 100,
                     bold_mm: float = 4.0, config: str = "demo", true_geometry: bool = False,
                     t1_mm: float = 4.0):
    """Age slope of within-DMN connectivity in controls: ours against the simulator's truth."""
    import pandas as pd

    from brainage.bids import discover_inputs
    from brainage.config import config_to_dict, load_config, parse_config
    from brainage.parallel import run_participants
    from brainage.simulate import simulate_cohort
    from brainage.simulate.bold import network_of
    from brainage.stages import resolve_stages

    root = out_dir / "cohort"
    if not root.exists():
        simulate_cohort(root, n_subjects=n_subjects, preset="test", seed=5, n_volumes=n_volumes,
                        bold_voxel_size=bold_mm, t1_voxel_size=t1_mm, patient_fraction=0.0,
                        n_jobs=nprocs)
    cfg = config_to_dict(load_config(config))
    cfg["run"].update(nprocs=nprocs)
    cfg["func"].update(output_resolution=min(4.0, bold_mm))
    t0 = time.perf_counter()
    summary = run_participants(discover_inputs(root), resolve_stages(["anat", "func"]),
                               parse_config(cfg), out_dir / "cohort_out", nprocs=nprocs)
    wall = time.perf_counter() - t0
    table = pd.read_csv(root / "participants.tsv", sep="\t")
    truth_dir = root / "sourcedata" / "brainage-truth"
    rows = []
    name = "atlas-HarvardOxford_meas-PearsonCorrelation_relmat.tsv"
    for _, row in table[table["group"] == "control"].iterrows():
        sub = row["participant_id"]
        ours = out_dir / "cohort_out" / sub / "func" / f"{sub}_task-rest_{name}"
        if not ours.is_file():
            continue
        true = pd.read_csv(truth_dir / sub / "func" / f"{sub}_task-rest_{name}", sep="\t",
                           index_col=0)
        est = pd.read_csv(ours, sep="\t", index_col=0).loc[true.index, true.columns]
        from brainage.atlases import load_atlas

        labels = load_atlas("HarvardOxford").labels.set_index("name").loc[true.index]
        networks = network_of(labels.reset_index())
        iu = np.triu_indices(len(true), 1)
        qc = json.loads((ours.parent / f"{sub}_task-rest_desc-qc_bold.json").read_text())
        from brainage.templates import mni_grid

        template, tmask = mni_grid(4.0)
        err = _t1_to_mni_error(out_dir / "cohort_out", root, sub, template,
                               np.asarray(tmask.dataobj) > 0)
        extra = {"t1_to_mni_error_mm_median": float(np.median(err)),
                 "t1_to_mni_error_mm_p90": float(np.percentile(err, 90))}
        if true_geometry:
            extra["dmn_true_geometry"] = _dmn_true_geometry(
                root, out_dir / "cohort_out", sub, list(true.index), networks,
                min(4.0, bold_mm))
        rows.append({"participant_id": sub, "age": row["age"], **extra,
                     "dmn_ours": _within_dmn(est.to_numpy(), networks),
                     "dmn_truth": _within_dmn(true.to_numpy(), networks),
                     "dmn_r_ours": _within_dmn(est.to_numpy(), networks, fisher=False),
                     "dmn_r_truth": _within_dmn(true.to_numpy(), networks, fisher=False),
                     "tissue_regressors": [c for c in qc["confound_regressors"]
                                           if c in ("white_matter", "csf")],
                     "relmat_r": float(np.corrcoef(est.to_numpy()[iu],
                                                   true.to_numpy()[iu])[0, 1])})
    frame = pd.DataFrame(rows)
    slope_ours = float(np.polyfit(frame["age"], frame["dmn_ours"], 1)[0])
    slope_truth = float(np.polyfit(frame["age"], frame["dmn_truth"], 1)[0])
    r_ours = float(np.polyfit(frame["age"], frame["dmn_r_ours"], 1)[0])
    r_truth = float(np.polyfit(frame["age"], frame["dmn_r_truth"], 1)[0])
    ratio = slope_ours / slope_truth
    more = {}
    if true_geometry:
        slope_geo = float(np.polyfit(frame["age"], frame["dmn_true_geometry"], 1)[0])
        more = {"true_geometry_dmn_fisher_z_per_decade": round(10 * slope_geo, 4),
                "true_geometry_ratio": round(slope_geo / slope_truth, 3),
                "true_geometry_ratio_bootstrap_95": _slope_ratio_ci(frame, "dmn_true_geometry"),
                "true_geometry_note": "diagnostic only: the same stage outputs (confounds, "
                "scrubbing, parcels, cleaning) on BOLD resampled with the simulator's true "
                "motion and geometry instead of the pipeline's registration"}
    return {
        "n_controls": len(frame), "wall_seconds_anat_func": round(wall, 1),
        "failed": [r.subject for r in summary.failed],
        "excluded": [r.subject for r in summary.excluded],
        "dmn_fisher_z_per_decade_ours": round(10 * slope_ours, 4),
        "dmn_fisher_z_per_decade_truth": round(10 * slope_truth, 4),
        "ratio_ours_over_truth": round(ratio, 3),
        "ratio_bootstrap_95": _slope_ratio_ci(frame, "dmn_ours"),
        "ratio_bootstrap_note": "2.5/50/97.5 percentiles of the slope ratio, participants "
                                "resampled with replacement (4000 draws, paired)",
        "mean_dmn_fisher_z_ours": round(float(frame["dmn_ours"].mean()), 4),
        "mean_dmn_fisher_z_truth": round(float(frame["dmn_truth"].mean()), 4),
        "t1_to_mni_error_mm_median": round(float(frame["t1_to_mni_error_mm_median"].median()), 2),
        **more,
        "same_sign": bool(np.sign(slope_ours) == np.sign(slope_truth)),
        "within_30_percent": bool(0.7 <= ratio <= 1.3),
        "dmn_pearson_r_per_decade_ours": round(10 * r_ours, 4),
        "dmn_pearson_r_per_decade_truth": round(10 * r_truth, 4),
        "ratio_pearson_r": round(r_ours / r_truth, 3),
        "relmat_r_median": round(float(frame["relmat_r"].median()), 3),
        "participants": frame.round(4).to_dict(orient="records"),
        "load_average_end": os.getloadavg(),
        "bold_mm": bold_mm, "n_volumes": n_volumes, "t1_mm": t1_mm,
        "config": config,
        "note": "within-DMN mean Fisher z (and Pearson r) regressed on age in controls; truth "
                "from the simulator's true parcel signals (test preset, T1 t1_mm, BOLD bold_mm, "
                "n_volumes volumes); tissue_regressors: the WM/CSF means each participant's "
                "denoising used; t1_to_mni_error: distance between the structural stage's "
                "MNI -> T1w map and the true one over the template brain (4 mm grid)",
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=300)
    parser.add_argument("--motion-subset", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("/tmp/brainage-bench-func"))
    parser.add_argument("--age-cohort", type=int, default=0,
                        help="also simulate N participants and measure the age effect on "
                             "within-DMN connectivity (only this part runs if --only-age)")
    parser.add_argument("--only-age", action="store_true")
    parser.add_argument("--age-volumes", type=int, default=100)
    parser.add_argument("--age-bold-mm", type=float, default=4.0)
    parser.add_argument("--age-config", default="demo",
                        help="pipeline configuration of the age cohort (demo or default)")
    parser.add_argument("--age-true-geometry", action="store_true",
                        help="also measure the age effect with the simulator's true motion and "
                             "geometry in place of the pipeline's registration (diagnostic)")
    parser.add_argument("--age-t1-mm", type=float, default=4.0,
                        help="T1w voxel size of the simulated age cohort (the test preset's 4 mm)")
    parser.add_argument("--age-key", default="age_effect",
                        help="results key of the age measurement (to keep several)")
    parser.add_argument("--keep-motion", action="store_true",
                        help="reuse the motion comparison of the previous results file")
    args = parser.parse_args(argv)
    dest = Path(__file__).parent / "results" / "func.json"
    if args.only_age:
        age = bench_age_effect(args.age_cohort, args.out, n_volumes=args.age_volumes,
                               bold_mm=args.age_bold_mm, config=args.age_config,
                               true_geometry=args.age_true_geometry, t1_mm=args.age_t1_mm)
        result = json.loads(dest.read_text()) if dest.is_file() else {"machine": _machine()}
        result[args.age_key] = age
        print(result[args.age_key], flush=True)
        dest.write_text(json.dumps(result, indent=2, default=str) + "\n")
        return

    import pandas as pd

    from brainage.bids import discover_inputs
    from brainage.config import config_to_dict, load_config, parse_config
    from brainage.func.motion import MOTION_COLUMNS
    from brainage.parallel import run_participants
    from brainage.simulate import simulate_cohort
    from brainage.stages import record_path, resolve_stages

    result = {"machine": _machine(), "settings": vars(args) | {"out": str(args.out)}}
    dest = Path(__file__).parent / "results" / "func.json"
    root = args.out / "ds"
    if not root.exists():
        simulate_cohort(root, n_subjects=1, preset="default", seed=11, n_volumes=args.volumes,
                        t1_voxel_size=2.5)
    cfg = config_to_dict(load_config("demo"))
    cfg["func"].update(output_resolution=3.0)
    cfg["run"].update(nprocs=1, threads_per_process=2)
    config = parse_config(cfg)
    out = args.out / "out"
    parts = discover_inputs(root)
    run_participants(parts, resolve_stages(["anat"]), config, out, nprocs=1)
    # func alone, in a fresh worker process, timed
    for rec in out.glob("sub-*/log/*func_provenance.json"):
        rec.unlink()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    summary = run_participants(parts, resolve_stages(["anat", "func"]), config, out, nprocs=1)
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    record = json.loads(record_path(out, "01", "func").read_text())
    result["stage"] = {
        "status": [(r.subject, r.stage, r.status) for r in summary.done + summary.failed],
        "stage_seconds": record["seconds"], "wall_seconds_including_worker_start": round(wall, 1),
        "steps_seconds": record["timings"],
        "peak_rss_gb_worker": round(peak_kb / 1024**2, 2),
        "peak_rss_note": "max RSS of any worker process of this script (the anat worker "
                         f"before: {before / 1024**2:.2f} GB)",
        "target": "<= 120 s wall and <= 4 GB on 2 CPU cores",
    }
    print(json.dumps(result["stage"], indent=1), flush=True)

    truth = root / "sourcedata" / "brainage-truth" / "sub-01" / "func"
    func = out / "sub-01" / "func"
    ours = pd.read_csv(func / "sub-01_task-rest_atlas-HarvardOxford_timeseries.tsv", sep="\t",
                       na_values="n/a")
    true = pd.read_csv(truth / "sub-01_task-rest_atlas-HarvardOxford_timeseries.tsv", sep="\t")
    rows = ours[true.columns].notna().all(axis=1).to_numpy()
    r = [np.corrcoef(ours.loc[rows, c], true.loc[rows, c])[0, 1] for c in true.columns]
    name = "sub-01_task-rest_atlas-HarvardOxford_meas-PearsonCorrelation_relmat.tsv"
    a = pd.read_csv(func / name, sep="\t", index_col=0)
    b = pd.read_csv(truth / name, sep="\t", index_col=0)
    iu = np.triu_indices(len(b), 1)
    rc = np.corrcoef(a.loc[b.index, b.columns].to_numpy()[iu], b.to_numpy()[iu])[0, 1]
    qc = json.loads((func / "sub-01_task-rest_desc-qc_bold.json").read_text())
    result["accuracy"] = {
        "parcel_timeseries_r_median": round(float(np.median(r)), 3),
        "connectivity_r": round(float(rc), 3),
        "qc": {k: qc[k] for k in ("mean_fd", "max_fd", "percent_scrubbed", "tsnr",
                                  "motion_model", "flags")},
    }
    print(result["accuracy"], flush=True)

    truth_motion = pd.read_csv(truth / "sub-01_task-rest_desc-motion_timeseries.tsv",
                               sep="\t")[list(MOTION_COLUMNS)].to_numpy()
    previous = json.loads(dest.read_text()) if dest.is_file() else {}
    if args.keep_motion and "motion" in previous:
        result["motion"] = previous["motion"]
    else:
        result["motion"] = bench_motion(root / "sub-01/func/sub-01_task-rest_bold.nii.gz",
                                        truth_motion, args.motion_subset)
    if args.age_cohort:
        result["age_effect"] = bench_age_effect(args.age_cohort, args.out)
    for key in [k for k in previous if k.startswith("age_effect") and k not in result]:
        result[key] = previous[key]  # merge: keep the last age measurements
    result["machine"]["load_average_end"] = os.getloadavg()
    dest.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("wrote", dest)


if __name__ == "__main__":
    main()
