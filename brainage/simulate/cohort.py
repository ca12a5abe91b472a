"""Write a simulated BIDS cohort and its ground truth.

See ``docs/simulator.md`` for the generative model. Raw files follow BIDS;
the truth lives under ``sourcedata/brainage-truth/`` (ignored by the BIDS
validator), named with the same entities as the pipeline outputs it
corresponds to.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bids import TEMPLATE_SPACE
from ..exceptions import UsageError
from .params import SimulationParams, resolve_params

logger = logging.getLogger(__name__)

__all__ = ["TRUTH_DIR", "simulate_cohort", "simulate_participant"]

#: Folder of the ground truth, relative to the dataset root.
TRUTH_DIR = Path("sourcedata") / "brainage-truth"
#: Task label of the resting-state run.
TASK = "rest"
#: Head centre in template coordinates (mm): the pose rotates about it.
HEAD_CENTRE = np.array([0.0, -18.0, 12.0])
#: Grid of the MNI-space truth maps: nilearn's 2 mm template grid (``res-2``).
TRUTH_RES = 2

_TOP_LEVEL = ("dataset_description.json", "README", "participants.tsv", "participants.json")


def _path(root, **entities) -> Path:
    from ..bids import derivative_path

    return derivative_path(root, **entities)


def _nifti(data, affine, *, zooms=None, tr=None):
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if tr is not None:
        img.header.set_zooms((*img.header.get_zooms()[:3], float(tr)))
    return img


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a non-empty folder that is not a previous simulation; clear a previous one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"OUT_DIR {out_dir} is a file; pass a new or empty folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not (out_dir / TRUTH_DIR / "truth.json").is_file():
        raise UsageError(
            f"OUT_DIR {out_dir} is not empty and is not a previous brainage simulation "
            f"(no {TRUTH_DIR / 'truth.json'}); pass a new or empty folder"
        )
    logger.info("replacing the previous simulation in %s", out_dir)
    for child in out_dir.glob("sub-*"):
        if child.is_dir():
            shutil.rmtree(child)
    shutil.rmtree(out_dir / TRUTH_DIR)
    for name in _TOP_LEVEL:
        (out_dir / name).unlink(missing_ok=True)


def _pose(rng, params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from .anatomy import rigid_matrix

    rot = np.deg2rad(rng.uniform(-params.max_rotation_deg, params.max_rotation_deg, 3))
    trans = rng.uniform(-params.max_translation_mm, params.max_translation_mm, 3)
    # native = R (head − c) + t: the head centre lands at the translation.
    return rigid_matrix(rot, trans - HEAD_CENTRE, center=HEAD_CENTRE), rot, trans


@functools.lru_cache(maxsize=1)
def _truth_grid():
    from ..templates import mni152

    ref = mni152("t1", TRUTH_RES)
    return ref.affine, ref.shape


def _to_truth_grid(volume, affine):
    """Linear resampling of a model-grid volume onto nilearn's 2 mm template grid."""
    from scipy import ndimage

    ref_affine, ref_shape = _truth_grid()
    mat = np.linalg.inv(affine) @ ref_affine
    offset = np.rint(mat[:3, 3]).astype(int)
    end = offset + np.asarray(ref_shape)
    if (np.allclose(mat[:3, :3], np.eye(3)) and np.allclose(mat[:3, 3], offset)
            and np.all(offset >= 0) and np.all(end <= volume.shape)):
        # Same voxel size, whole-voxel shift: linear interpolation is a plain crop.
        crop = volume[offset[0]:end[0], offset[1]:end[1], offset[2]:end[2]]
        return np.array(crop, copy=True), ref_affine
    data = ndimage.affine_transform(volume, mat[:3, :3], offset=mat[:3, 3],
                                    output_shape=tuple(ref_shape), order=1, mode="nearest")
    return data, ref_affine


def _model_resolutions(params: SimulationParams) -> tuple[float, float]:
    vox = float(params.t1_voxel_size)
    t1_res = 1.0 if vox < 1.5 else (2.0 if vox < 3.5 else 3.0)
    bold_res = float(np.clip(params.bold_voxel_size * 2.0 / 3.0, 2.0, 4.0))
    return t1_res, bold_res


@dataclass(frozen=True)
class _Individual:
    """One participant's age-independent draws: head size, deformation and the two poses."""

    scale: float
    deformation: object  # geometry.Deformation
    t1_pose: np.ndarray
    t1_rot: np.ndarray
    t1_trans: np.ndarray
    bold_pose: np.ndarray
    bold_rot: np.ndarray
    bold_trans: np.ndarray


def _draw_individual(rng, row: dict, params: SimulationParams) -> _Individual:
    """Draw the head scale, the deformation, then the T1w and the BOLD pose (in that order)."""
    from . import geometry

    sex_shift = params.head_scale_sex if row["sex"] == "M" else -params.head_scale_sex
    scale = float(1.0 + sex_shift + params.head_scale_sd * rng.standard_normal())
    deformation = geometry.draw_deformation(rng, params.deformation_sd_mm,
                                           params.deformation_spacing_mm)
    t1_pose, t1_rot, t1_trans = _pose(rng, params)
    bold_pose, bold_rot, bold_trans = _pose(rng, params)
    return _Individual(scale, deformation, t1_pose, t1_rot, t1_trans,
                       bold_pose, bold_rot, bold_trans)


def _write_t1(out_dir: Path, sub: str, row: dict, site: int, tpl, ind: _Individual,
              params: SimulationParams, rng) -> tuple[dict, np.ndarray]:
    """Age the tissues, synthesise and write the T1w image; return ``(tissues, displacement)``.

    The tissues are on the model grid ``tpl``; the displacement is the deformation's
    dense field on that grid (for the native volumes).
    """
    from ..writing import save_nifti
    from . import aging, anatomy

    displacement, modulation = ind.deformation.dense(tpl.shape, tpl.affine)
    tissues = aging.aged_tissues(tpl, row["structural_age"], params, modulation)
    t1_shape, t1_affine = anatomy.make_grid(params.t1_fov, params.t1_voxel_size)
    gain = 1.0 + 0.12 * site
    t1 = aging.synthesize_t1(
        tpl, tissues, shape=t1_shape, affine=t1_affine, pose=ind.t1_pose, scale=ind.scale,
        deformation=ind.deformation,
        gm_contrast=params.site_value(params.site_gm_contrast, site),
        noise=params.site_value(params.t1_noise, site), gain=gain,
        bias_strength=params.bias_field_strength, rng=rng,
    )
    save_nifti(_nifti(t1, t1_affine),
               _path(out_dir, subject=sub, datatype="anat", suffix="T1w", extension=".nii.gz"))
    return tissues, displacement


def _write_tissue_truth(truth: Path, sub: str, tpl, tissues: dict, displacement,
                        ind: _Individual, params: SimulationParams) -> dict:
    """Write the MNI-space tissue maps and brain mask, and the native tissue and regional volumes.

    Returns the tissue volumes (mL) for ``participants_truth.tsv``.
    """
    import pandas as pd

    from ..writing import atomic_write_tsv, save_nifti
    from . import aging

    anat = {"subject": sub, "datatype": "anat", "space": TEMPLATE_SPACE, "res": str(TRUTH_RES),
            "extension": ".nii.gz"}
    brain = 0.0
    for label, key in (("GM", "gm"), ("WM", "wm"), ("CSF", "csf")):
        data, ref_affine = _to_truth_grid(tissues[key], tpl.affine)
        brain = brain + data
        save_nifti(_nifti(np.clip(data, 0, 1).astype(np.float32), ref_affine),
                   _path(truth, label=label, suffix="probseg", **anat))
    save_nifti(_nifti((brain > 0.5).astype(np.uint8), ref_affine),
               _path(truth, desc="brain", suffix="mask", **anat))
    vols = aging.native_volumes(tpl, tissues, ind.scale, displacement)
    tiv = vols["gm"] + vols["wm"] + vols["csf"] + vols["rim_csf"]
    tissue_row = {"gm_ml": vols["gm"], "wm_ml": vols["wm"], "csf_ml": vols["csf"] + vols["rim_csf"],
                  "tiv_ml": tiv, "ventricles_ml": vols["ventricles"]}
    atomic_write_tsv(
        _path(truth, subject=sub, datatype="anat", desc="tissue", suffix="morph",
              extension=".tsv"),
        pd.DataFrame([tissue_row]).round(3),
    )
    table = tpl.label_table
    regional = pd.DataFrame({
        "index": table["index"].to_numpy(),
        "name": table["name"].to_numpy(),
        "hemisphere": table["hemisphere"].to_numpy() if "hemisphere" in table else "n/a",
        "lobe": table["lobe"].to_numpy() if "lobe" in table else "n/a",
        "gm_volume_ml": [round(vols["labels"][int(v)], 3) for v in table["index"]],
    })
    atomic_write_tsv(_path(truth, subject=sub, datatype="anat", atlas=params.atlas, desc="gm",
                           suffix="morph", extension=".tsv"), regional)
    return tissue_row


def _write_t1_transform_truth(truth: Path, sub: str, ind: _Individual,
                              params: SimulationParams) -> None:
    """Write the true T1w-to-MNI map: the deformation's control vectors and the pose JSON."""
    from ..writing import atomic_write_json, save_nifti

    deformation, scale, t1_pose = ind.deformation, ind.scale, ind.t1_pose
    control = deformation.coefficients[:3].transpose(1, 2, 3, 0)[:, :, :, None, :]
    deformation_path = _path(truth, subject=sub, datatype="anat", from_="T1w",
                             to=TEMPLATE_SPACE, desc="deformation", suffix="xfm",
                             extension=".nii.gz")
    save_nifti(_nifti(control.astype(np.float32), deformation.affine), deformation_path)
    atomic_write_json(
        _path(truth, subject=sub, datatype="anat", from_="T1w", to=TEMPLATE_SPACE,
              mode="image", suffix="xfm", extension=".json"),
        {
            "Description": (
                "True map from T1w scanner coordinates x (mm, RAS) to MNI152NLin2009aSym "
                "coordinates: g = inv(HeadPose) @ x / HeadScale; m = g + u(g), where u is the "
                "cubic B-spline interpolation (scipy.ndimage.map_coordinates, order 3, "
                "mode 'nearest') of the control vectors in DeformationFile (RAS mm, grid "
                "affine in its header, shape X x Y x Z x 1 x 3)."
            ),
            "HeadPose": t1_pose.round(8).tolist(),
            "HeadScale": round(scale, 8),
            "AffineNativeToMNI": (np.diag([1 / scale] * 3 + [1.0]) @ np.linalg.inv(t1_pose))
            .round(8).tolist(),
            "DeformationFile": deformation_path.name,
            "DeformationSD_mm": params.deformation_sd_mm,
        },
    )


def _write_bold(out_dir: Path, sub: str, row: dict, ind: _Individual,
                params: SimulationParams, rng):
    """Synthesise and write the resting-state run; return ``(parcels, signals, motion)``.

    Anatomy at a fixed reference age, signals from the functional age. Random draws
    in order: parcel signals, head motion, then the image's own noise.
    """
    from ..writing import atomic_write_json, save_nifti
    from . import aging, anatomy, bold

    _, bold_res = _model_resolutions(params)
    btpl = anatomy.load_templates(bold_res, params.atlas, params.regional_weights)
    ref_age = 0.5 * (params.age_min + params.age_max)
    b_displacement, b_modulation = ind.deformation.dense(btpl.shape, btpl.affine)
    btissues = aging.aged_tissues(btpl, ref_age, params, b_modulation)
    parcels, networks = bold.parcels_of(btpl)
    signals = bold.parcel_signals(rng, networks, row["functional_age"], params)
    motion = bold.draw_motion(rng, params.n_volumes, params)
    b_shape, b_affine = anatomy.make_grid(params.bold_fov, params.bold_voxel_size)
    data = bold.synthesize_bold(
        btpl, btissues, signals, parcels["index"].to_numpy(), shape=b_shape, affine=b_affine,
        pose=ind.bold_pose, scale=ind.scale, displacement=b_displacement, motion=motion,
        functional_age=row["functional_age"], params=params, rng=rng,
    )
    func = {"subject": sub, "datatype": "func", "task": TASK}
    save_nifti(_nifti(data, b_affine, tr=params.repetition_time),
               _path(out_dir, suffix="bold", extension=".nii.gz", **func))
    atomic_write_json(_path(out_dir, suffix="bold", extension=".json", **func), {
        "TaskName": TASK,
        "RepetitionTime": params.repetition_time,
        "EchoTime": 0.03,
        "FlipAngle": 75,
        "MagneticFieldStrength": 3,
        "SkullStripped": False,
        "TaskDescription": "Simulated resting state, eyes open (brainage simulator).",
    })
    return parcels, signals, motion


def _write_functional_truth(truth: Path, sub: str, row: dict, ind: _Individual,
                            params: SimulationParams, parcels, signals, motion):
    """Write the parcel time series, their correlations, the motion and the BOLD-to-MNI map.

    Returns ``(coupling, moves)``: the true couplings of the functional age and the
    motion table with framewise displacement.
    """
    import pandas as pd

    from ..writing import atomic_write_json, atomic_write_tsv
    from . import bold

    func = {"subject": sub, "datatype": "func", "task": TASK}
    coupling = bold.couplings(row["functional_age"], params)
    names = parcels["name"].astype(str).tolist()
    percent = pd.DataFrame(signals * coupling["amplitude"] * 100.0, columns=names)
    atomic_write_tsv(_path(truth, atlas=params.atlas, suffix="timeseries", extension=".tsv",
                           **func), percent.round(5))
    relmat = pd.DataFrame(np.corrcoef(signals.T), index=names, columns=names)
    relmat.index.name = "name"
    atomic_write_tsv(_path(truth, atlas=params.atlas, meas="PearsonCorrelation",
                           suffix="relmat", extension=".tsv", **func), relmat.round(6), index=True)
    moves = pd.DataFrame(motion, columns=list(bold.MOTION_COLUMNS))
    moves["framewise_displacement"] = bold.framewise_displacement(motion)
    atomic_write_tsv(_path(truth, desc="motion", suffix="timeseries", extension=".tsv", **func),
                     moves.round(8))
    atomic_write_json(
        _path(truth, from_="bold", to=TEMPLATE_SPACE, mode="image", suffix="xfm",
              extension=".json", **func),
        {
            "Description": (
                "True map from BOLD scanner coordinates x of volume t to MNI152NLin2009aSym: "
                "h = inv(HeadPose) @ inv(M_t) @ x, then the T1w deformation of the same "
                "participant (g = h / HeadScale; m = g + u(g)). M_t is the rigid motion of "
                "volume t (desc-motion_timeseries.tsv; rotations R = Rz Ry Rx in radians about "
                "the scanner origin, the centre of the field of view, then translation in mm)."
            ),
            "HeadPose": ind.bold_pose.round(8).tolist(),
            "HeadScale": round(ind.scale, 8),
        },
    )
    return coupling, moves


def simulate_participant(out_dir, row: dict, index: int, params: SimulationParams) -> dict:
    """Simulate and write one participant's images and truth.

    Parameters
    ----------
    out_dir : path-like
        Dataset root.
    row : dict
        The participant's row of :func:`~brainage.simulate.latent.draw_cohort`.
    index : int
        Position in the cohort (seeds this participant's random draws).
    params : SimulationParams

    Returns
    -------
    dict
        Pose, head size and true volumes for ``participants_truth.tsv``.
    """
    from . import anatomy

    out_dir = Path(out_dir)
    truth = out_dir / TRUTH_DIR
    sub = row["participant_id"].removeprefix("sub-")
    # One generator for all of the participant's draws, in a fixed order: individual
    # anatomy and poses, T1w noise, then BOLD signals, motion and noise.
    rng = np.random.default_rng([params.seed, 1, index])
    site = int(row["site"].removeprefix("site")) - 1
    t1_res, _ = _model_resolutions(params)
    tpl = anatomy.load_templates(t1_res, params.atlas, params.regional_weights)

    ind = _draw_individual(rng, row, params)
    tissues, displacement = _write_t1(out_dir, sub, row, site, tpl, ind, params, rng)
    tissue_row = _write_tissue_truth(truth, sub, tpl, tissues, displacement, ind, params)
    _write_t1_transform_truth(truth, sub, ind, params)
    parcels, signals, motion = _write_bold(out_dir, sub, row, ind, params, rng)
    coupling, moves = _write_functional_truth(truth, sub, row, ind, params, parcels, signals,
                                              motion)
    return {
        "participant_id": row["participant_id"],
        "head_scale": ind.scale,
        **{f"t1_rot_{a}": r for a, r in zip("xyz", ind.t1_rot)},
        **{f"t1_trans_{a}": t for a, t in zip("xyz", ind.t1_trans)},
        **{f"bold_rot_{a}": r for a, r in zip("xyz", ind.bold_rot)},
        **{f"bold_trans_{a}": t for a, t in zip("xyz", ind.bold_trans)},
        "mean_fd": float(np.nanmean(moves["framewise_displacement"])),
        "dmn_coupling": coupling["dmn"],
        "global_coupling": coupling["global"],
        "bold_amplitude": coupling["amplitude"],
        **tissue_row,
    }


def _write_top_level(out_dir: Path, cohort, params: SimulationParams) -> None:
    from .. import __version__
    from ..writing import atomic_write_json, atomic_write_text, atomic_write_tsv

    atomic_write_json(out_dir / "dataset_description.json", {
        "Name": "brainage simulated cohort",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["brainage developers"],
        "GeneratedBy": [{
            "Name": "brainage simulate",
            "Version": __version__,
            "Description": f"preset {params.preset}, seed {params.seed}, "
                           f"{params.n_subjects} participants",
        }],
    })
    atomic_write_text(out_dir / "README", (
        "Simulated cohort written by `brainage simulate`.\n\n"
        "T1-weighted and resting-state BOLD images synthesised from the MNI ICBM152 2009a\n"
        "templates with known aging effects, head poses, motion and noise. The ground truth\n"
        f"(latent aging variables, brain-age gaps, transforms, motion, MNI-space tissue maps,\n"
        f"parcel time series and connectivity, PID atoms) is in {TRUTH_DIR.as_posix()}/.\n"
        "The generative model is described in the brainage documentation (docs/simulator.md).\n"
    ))
    atomic_write_tsv(out_dir / "participants.tsv",
                     cohort[["participant_id", "age", "sex", "site", "group"]])
    atomic_write_json(out_dir / "participants.json", {
        "age": {"Description": "age at scan", "Units": "year"},
        "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
        "site": {"Description": "acquisition site (scanner)"},
        "group": {"Description": "clinical group",
                  "Levels": {"control": "healthy control",
                             "patient": "patient (accelerated brain aging)"}},
    })


def _patient_truth(cohort, params: SimulationParams) -> dict:
    """Return the true patient gaps and subtypes for ``truth.json``."""
    gaps = params.subtype_gaps()
    mix = dict(params.subtype_mix)
    struct = sum(f * gaps[k][0] for k, f in mix.items())
    func = sum(f * gaps[k][1] for k, f in mix.items())
    if not params.patient_subtypes and params.patient_gap_struct is None \
            and params.patient_gap_func is None:
        mean = params.patient_gap  # the gap added to both latent ages, as always
    else:
        mean = 0.5 * (struct + func)
    patients = cohort.loc[cohort["group"] == "patient", "patient_subtype"]
    return {
        "true_patient_gap_years": mean,
        "true_patient_gap_structural_years": struct,
        "true_patient_gap_functional_years": func,
        "patient_subtypes": mix,
        "patient_subtype_gaps_years": {
            k: {"structural": gaps[k][0], "functional": gaps[k][1]} for k in mix
        },
        "patient_subtype_counts": {k: int((patients == k).sum()) for k in mix},
        "patient_gap_description": (
            "Patients' latent ages exceed what their age gives by a true excess that depends on "
            "their subtype (participants_truth.tsv: patient_subtype, structural_age_excess, "
            "functional_age_excess): 'shared' adds the structural and the functional gap to "
            "both latent ages, 'structural' only to the structural age, 'functional' only to "
            "the functional age. true_patient_gap_years is the expected mean over patients of "
            "the mean of the two excesses (patient_gap when every patient is shared with one "
            "gap); the structural and functional keys are the expected excess of each latent "
            "age over patients, from the subtype fractions (patient_subtypes)."
        ),
    }


def simulate_cohort(out_dir, *, n_subjects: int | None = None, seed: int = 0,
                    preset: str = "default", n_jobs: int = 1, **overrides) -> Path:
    """Simulate a BIDS cohort with ground truth.

    Parameters
    ----------
    out_dir : path-like
        Destination; must be new, empty, or a previous simulation (replaced).
    n_subjects : int, optional
        Number of participants (default: the preset's).
    seed : int
        Random seed; the same seed and parameters give byte-identical files.
    preset : {"default", "demo", "test"}
        Resolution and run length (see :data:`~brainage.simulate.params.PRESETS`).
    n_jobs : int
        Participants simulated in parallel (processes).
    **overrides
        Any field of :class:`~brainage.simulate.params.SimulationParams`.

    Returns
    -------
    pathlib.Path
        The dataset root.

    Raises
    ------
    UsageError
        Bad parameters, or ``out_dir`` holds something else.

    Examples
    --------
    >>> import tempfile
    >>> root = simulate_cohort(tempfile.mkdtemp() + "/ds", n_subjects=1, preset="test")
    >>> sorted(p.name for p in root.iterdir())[:3]
    ['README', 'dataset_description.json', 'participants.json']
    """
    import pandas as pd

    from ..writing import atomic_write_json, atomic_write_tsv
    from . import anatomy
    from .latent import draw_cohort, oracle_mae, oracle_predict, true_pid
    from .regions import REGIONS_TRUTH_COLUMNS, regional_truth

    params = resolve_params(preset, n_subjects=n_subjects, seed=seed, **overrides)
    out_dir = Path(out_dir).resolve()
    _check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cohort = draw_cohort(params)
    pid = true_pid(params)
    # Build the model grids once here so that worker processes inherit them.
    t1_res, bold_res = _model_resolutions(params)
    tpl = anatomy.load_templates(t1_res, params.atlas, params.regional_weights)
    btpl = anatomy.load_templates(bold_res, params.atlas, params.regional_weights)

    rows = cohort.to_dict("records")
    if n_jobs > 1 and len(rows) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
            futures = [pool.submit(simulate_participant, out_dir, row, i, params)
                       for i, row in enumerate(rows)]
            extra = [f.result() for f in futures]
    else:
        extra = []
        for i, row in enumerate(rows):
            extra.append(simulate_participant(out_dir, row, i, params))
            logger.info("simulated %s (%d/%d)", row["participant_id"], i + 1, len(rows))

    _write_top_level(out_dir, cohort, params)
    truth = cohort.merge(pd.DataFrame(extra), on="participant_id")
    truth["oracle_age"] = oracle_predict(
        truth["latent_structural"].to_numpy(), truth["latent_functional"].to_numpy(), params
    )
    atomic_write_tsv(out_dir / TRUTH_DIR / "participants_truth.tsv", truth.round(6))
    atomic_write_tsv(out_dir / TRUTH_DIR / "regions_truth.tsv", regional_truth(params, tpl, btpl))
    atomic_write_json(out_dir / TRUTH_DIR / "regions_truth.json", REGIONS_TRUTH_COLUMNS)
    controls = truth[truth["group"] == "control"]
    sample_mae = float(np.mean(np.abs(controls["age"] - controls["oracle_age"]))) \
        if len(controls) else None
    atomic_write_json(out_dir / TRUTH_DIR / "truth.json", {
        "generator": "brainage.simulate",
        "pid_bits": pid,
        "pid_description": (
            "Exact Gaussian PID of the Gaussianized age g with respect to the structural (1) "
            "and functional (2) latent aging variables, for controls (the population model)."
        ),
        "oracle_mae_years": oracle_mae(params),
        "oracle_mae_sample_controls_years": sample_mae,
        "oracle_description": (
            "MAE of the posterior median of age given both latents: the best any predictor "
            "can do from these images in the population (oracle_mae_years, Monte Carlo) and "
            "on this cohort's controls (oracle_mae_sample_controls_years)."
        ),
        **_patient_truth(cohort, params),
        "space": TEMPLATE_SPACE,
        "truth_resolution_mm": TRUTH_RES,
        "atlas": params.atlas,
        "parameters": params.to_dict(),
    })
    logger.info("simulated %d participants in %.1f s into %s", len(rows),
                time.perf_counter() - start, out_dir)
    return out_dir
