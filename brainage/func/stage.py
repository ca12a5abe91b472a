"""The functional stage: one participant's BOLD runs → confounds, parcels, connectivity, maps, QC.

Outputs (per run; ``task``/``run``/``session`` entities of the raw run)::

    func/sub-XX_task-rest_desc-confounds_timeseries.tsv
    func/sub-XX_task-rest_atlas-<Atlas>_timeseries.tsv           cleaned, z-scored; scrubbed rows n/a
    func/sub-XX_task-rest_atlas-<Atlas>_meas-PearsonCorrelation_relmat.tsv
    func/sub-XX_task-rest_atlas-<Atlas>_meas-FisherZ_relmat.tsv
    func/sub-XX_task-rest_atlas-<Atlas>_meas-PartialCorrelation_relmat.tsv   (if configured)
    func/sub-XX_task-rest_space-MNI152NLin2009aSym_res-3_desc-<map>_boldmap.nii.gz
    func/sub-XX_task-rest_space-MNI152NLin2009aSym_res-3_desc-brain_mask.nii.gz
    func/sub-XX_task-rest_desc-qc_bold.json
    figures/sub-XX_task-rest_desc-carpet_bold.svg
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..bids import TEMPLATE_SPACE
from ..exceptions import InputFileError, ProcessingError
from ..outputs import res_label

__all__ = ["input_files", "run"]

logger = logging.getLogger(__name__)


def input_files(inputs, derivatives_dir=None) -> list:
    """List the files the functional stage reads for one participant (for its fingerprint).

    Each raw BOLD run and its sidecar; with fMRIPrep derivatives also, per run,
    fMRIPrep's MNI-space BOLD, its brain mask and its confounds file, so that a
    changed fMRIPrep output makes the stage run again. Missing fMRIPrep files add
    nothing here; the stage itself reports them.

    Parameters
    ----------
    inputs : brainage.bids.ParticipantInputs
    derivatives_dir : path-like, optional
        fMRIPrep derivatives given with ``--derivatives``.

    Returns
    -------
    list of pathlib.Path
    """
    from .fmriprep import find_fmriprep_run

    files = [p for run in inputs.bold for p in (run.path, run.sidecar) if p is not None]
    if derivatives_dir is None:
        return files
    for run in inputs.bold:
        try:
            found = find_fmriprep_run(derivatives_dir, inputs.subject, run.entities)
        except InputFileError:
            continue
        files += [p for p in (found["bold"], found["mask"], found["confounds"]) if p]
    return files


def run(ctx) -> dict:
    """Run the functional stage for ``ctx.subject`` (see the module docstring).

    Parameters
    ----------
    ctx : brainage.stages.StageContext

    Returns
    -------
    dict
        Per-run QC summaries; ``excluded`` (with ``reason``) when no run has enough
        clean data.

    Raises
    ------
    InputFileError
        A BOLD run or its sidecar cannot be used.
    ProcessingError
        A processing step failed.
    """
    cfg = ctx.config.func
    if not cfg.enabled:
        return {"skipped": "func.enabled is false"}
    if not ctx.inputs.bold:
        return {"excluded": True, "reason": "no BOLD run in the dataset for this participant"}
    runs = {}
    for bold_run in ctx.inputs.bold:
        ents = {k: bold_run.entities.get(k) for k in ("session", "task", "run", "acquisition")}
        key = "_".join(f"{k}-{v}" for k, v in ents.items() if v is not None) or "bold"
        runs[key] = _process_run(ctx, bold_run, ents)
    summary = {"runs": runs}
    excluded = [r for r in runs.values() if r.get("excluded")]
    if len(excluded) == len(runs):
        summary["excluded"] = True
        summary["reason"] = "; ".join(r["reason"] for r in excluded)
    return summary


def _out(ctx, ents, **more):
    keep = {"session": ents.get("session"), "task": ents.get("task"), "run": ents.get("run"),
            "acquisition": ents.get("acquisition")}
    return ctx.path(**keep, **more)


def _native_to_mni(ctx, bold_run, cfg, template, tmask):
    """Load, motion-correct, register and resample a raw run; returns the MNI data."""
    import nibabel as nib

    from ..outputs import anat_outputs
    from .load import load_bold
    from .motion import estimate_motion
    from .registration import check_overlap, register_epi_to_t1, resample_to_mni

    with ctx.step("load"):
        anat = anat_outputs(ctx.output_dir, ctx.subject,
                            resolution=ctx.config.anat.output_resolution)
        loaded = load_bold(bold_run.path, bold_run.sidecar, dummy_scans=cfg.dummy_scans,
                           min_volumes=cfg.min_volumes)
        t1w = nib.load(anat.t1w)
        brain = nib.load(anat.brain_mask)
        overlap = check_overlap(loaded.img, brain, bold_run.path)
    with ctx.step("motion"):
        motion = estimate_motion(loaded.img, iterations=cfg.motion_iterations,
                                 n_jobs=ctx.config.run.threads_per_process,
                                 work_dir=ctx.work_dir / "motion")
    with ctx.step("registration"):
        reg = register_epi_to_t1(motion.reference, t1w, brain, ctx.work_dir / "coreg")
    with ctx.step("resample"):
        data, coverage = resample_to_mni(loaded.img, motion.affines, reg["transform"],
                                         str(anat.xfm_t1w_to_mni), template, ctx.work_dir,
                                         mask=np.asarray(tmask.dataobj) > 0)
    tissues = {}
    from nilearn.image import resample_to_img

    for name, path in (("gm", anat.gm_mni), ("wm", anat.wm_mni), ("csf", anat.csf_mni)):
        img = resample_to_img(nib.load(path), template, interpolation="linear",
                              force_resample=True, copy_header=True)
        tissues[name] = np.asarray(img.dataobj, np.float32)
    subject_mask = resample_to_img(nib.load(anat.brain_mask_mni), template,
                                   interpolation="nearest", force_resample=True, copy_header=True)
    mask = (np.asarray(tmask.dataobj) > 0) & (np.asarray(subject_mask.dataobj) > 0) & coverage
    brain_total = (np.asarray(tmask.dataobj) > 0).sum()
    return {
        "data": data, "tr": loaded.tr, "params": motion.params, "fd": None, "mask": mask,
        "tissues": tissues, "dropped": loaded.dropped, "n_total": loaded.n_total,
        "warnings": loaded.warnings,
        "extra_qc": {
            "registration_mutual_information": reg["mutual_information"],
            "fov_brain_overlap": overlap,
            "motion_reference_volume": motion.reference_index,
        },
        "coverage": float(mask.sum() / max(brain_total, 1)),
        "external_confounds": None,
    }


def _fmriprep_to_mni(ctx, bold_run, ents, cfg, template, tmask):
    import nibabel as nib
    from nilearn.image import resample_to_img

    from .fmriprep import find_fmriprep_run, needed_columns, read_confounds
    from .load import read_sidecar, repetition_time

    with ctx.step("load"):
        found = find_fmriprep_run(ctx.derivatives_dir, ctx.subject, ents)
        img = nib.load(found["bold"])
        if img.ndim != 4:
            raise InputFileError(found["bold"], f"the image is {img.ndim}D; expected 4D",
                                 "Point --derivatives at fMRIPrep's output folder")
        sidecar = read_sidecar(bold_run.sidecar)
        tr, warnings = repetition_time(img, sidecar, bold_run.path, bold_run.sidecar)
        table = read_confounds(found["confounds"], needed_columns(
            tissue=not cfg.acompcor_components, n_acompcor=cfg.acompcor_components,
            global_signal=cfg.global_signal))
        if len(table) != img.shape[3]:
            raise InputFileError(found["confounds"],
                                 f"{len(table)} rows but the BOLD has {img.shape[3]} volumes",
                                 "Use the confounds file of the same fMRIPrep run")
    with ctx.step("resample"):
        res = resample_to_img(img, template, interpolation="continuous", force_resample=True,
                              copy_header=True)
        data = np.asarray(res.dataobj, np.float32)[..., cfg.dummy_scans:]
        table = table.iloc[cfg.dummy_scans:].reset_index(drop=True)
        mask = np.asarray(tmask.dataobj) > 0
        if found["mask"] is not None:
            m = resample_to_img(nib.load(found["mask"]), template, interpolation="nearest",
                                force_resample=True, copy_header=True)
            mask &= np.asarray(m.dataobj) > 0
        mask &= data.std(axis=-1) > 0
    if data.shape[-1] < cfg.min_volumes:
        raise InputFileError(found["bold"], f"only {data.shape[-1]} volumes left; at least "
                             f"{cfg.min_volumes} are needed",
                             "Lower func.min_volumes if you accept less data")
    from .motion import MOTION_COLUMNS

    return {
        "data": data, "tr": tr, "params": table[list(MOTION_COLUMNS)].fillna(0).to_numpy(),
        "fd": table["framewise_displacement"].fillna(0).to_numpy()
        if "framewise_displacement" in table.columns else None,
        "mask": mask, "tissues": None, "dropped": cfg.dummy_scans, "n_total": img.shape[3],
        "warnings": warnings, "extra_qc": {"source": str(found["bold"])},
        "coverage": float(mask.sum() / max((np.asarray(tmask.dataobj) > 0).sum(), 1)),
        "external_confounds": table,
    }


def _process_run(ctx, bold_run, ents) -> dict:
    """Process one BOLD run and write its outputs (see the module docstring).

    The steps: bring the run onto the MNI grid (:func:`_native_to_mni`, or
    :func:`_fmriprep_to_mni` with ``--derivatives``); build and write its
    confounds table (:func:`_confounds_table`); choose the confound regressors
    that the clean volumes can afford (:func:`_cleaning_model`); QC metrics
    (:func:`_qc_record`) and the carpet plot; then, unless too little clean data is left (the run is
    excluded, with its reason), the brain mask, the parcel time series and
    connectivity matrices of each atlas (:func:`_write_parcels`) and the voxel
    maps (:func:`_voxel_maps`).

    Parameters
    ----------
    ctx : brainage.stages.StageContext
    bold_run : brainage.bids.BoldRun
        The raw run.
    ents : dict
        Its ``session``, ``task``, ``run`` and ``acquisition`` entities.

    Returns
    -------
    dict
        ``qc`` (without its warnings); ``excluded`` and ``reason`` for an excluded run.

    Raises
    ------
    InputFileError
        The run, its sidecar or an fMRIPrep input cannot be used.
    ProcessingError
        Too few brain voxels of the MNI grid are covered by the run, or a step failed.
    """
    import nibabel as nib

    from ..templates import mni_grid
    from ..writing import atomic_write_json, atomic_write_tsv, save_nifti

    cfg = ctx.config.func
    template, tmask = mni_grid(cfg.output_resolution)
    prep = _to_mni(ctx, bold_run, ents, cfg, template, tmask)
    data, mask, tr = prep["data"], prep["mask"], prep["tr"]
    n_vol = data.shape[-1]
    affine = template.affine

    with ctx.step("confounds"):
        table, fd, scrub, tissue_masks = _confounds_table(data, mask, prep, cfg)
        atomic_write_tsv(_out(ctx, ents, datatype="func", desc="confounds", suffix="timeseries",
                              extension=".tsv"), table.round(6))
    cleaning = _cleaning_model(ctx, table, scrub, prep["dropped"], tr, cfg)
    qc = _qc_record(prep, table, fd, scrub, cleaning, tissue_masks)
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    mni = {"space": TEMPLATE_SPACE, "res": res_label(cfg.output_resolution)}
    with ctx.step("qc"):
        img4d = nib.Nifti1Image(data, affine)
        img4d.header.set_xyzt_units("mm", "sec")
        _carpet(ctx, ents, img4d, mask_img, tr, fd, scrub, qc)
    reason = _too_little_clean_data(len(cleaning.kept), n_vol, cfg)
    if reason:
        qc.update(excluded=True, reason=reason)
        atomic_write_json(_out(ctx, ents, datatype="func", desc="qc", suffix="bold",
                               extension=".json"), qc)
        return {"excluded": True, "reason": reason, "qc": qc}

    save_nifti(mask_img, _out(ctx, ents, datatype="func", **mni, desc="brain", suffix="mask",
                              extension=".nii.gz"))
    with ctx.step("parcels"):
        for atlas_id in cfg.atlases:
            qc[f"regions_missing_{atlas_id}"] = _write_parcels(
                ctx, ents, atlas_id, img4d, mask_img, cleaning, prep["dropped"], n_vol, tr, cfg)
    if cfg.maps:
        with ctx.step("maps"):
            maps = _voxel_maps(data, mask, mask_img, cleaning, n_vol, tr, cfg)
            for name in cfg.maps:
                vol = np.zeros(mask.shape, np.float32)
                vol[mask] = maps[name]
                save_nifti(nib.Nifti1Image(vol, affine),
                           _out(ctx, ents, datatype="func", **mni, desc=name, suffix="boldmap",
                                extension=".nii.gz"))
    atomic_write_json(_out(ctx, ents, datatype="func", desc="qc", suffix="bold",
                           extension=".json"), qc)
    return {"qc": {k: v for k, v in qc.items() if k != "warnings"}}


def _to_mni(ctx, bold_run, ents, cfg, template, tmask) -> dict:
    """Bring the run onto the MNI grid (raw BOLD, or fMRIPrep's) and check its brain coverage.

    Raises
    ------
    ProcessingError
        Fewer than 100 brain voxels of the grid are covered by the BOLD data.
    """
    if ctx.derivatives_dir is not None:
        prep = _fmriprep_to_mni(ctx, bold_run, ents, cfg, template, tmask)
    else:
        prep = _native_to_mni(ctx, bold_run, cfg, template, tmask)
    mask = prep["mask"]
    if mask.sum() < 100:
        raise ProcessingError(
            f"sub-{ctx.subject} {bold_run.path.name}: only {int(mask.sum())} brain voxels of "
            "the MNI grid are covered by the BOLD data; check the registration and the "
            "field of view"
        )
    return prep


def _confounds_table(data, mask, prep, cfg):
    """Build the run's confounds table (fMRIPrep column names).

    Motion (24 parameters), framewise displacement, DVARS, WM and CSF signals
    (from the structural tissue maps, or fMRIPrep's columns), aCompCor
    components if configured, the global signal and the motion outliers; the
    dropped non-steady-state volumes are padded back as rows of n/a.

    Returns
    -------
    table : pandas.DataFrame
        One row per volume of the raw run.
    fd : numpy.ndarray
        Framewise displacement of the volumes kept after the dummy scans.
    scrub : numpy.ndarray of bool
        Motion outliers among them.
    tissue_masks : dict
        How each tissue mean was taken (``white_matter``, ``csf``); empty with fMRIPrep input.
    """
    from .confounds import acompcor, expand_24, motion_outliers, tissue_mask_eroded, tissue_signal
    from .motion import MOTION_COLUMNS, dvars, framewise_displacement

    params = pd.DataFrame(prep["params"], columns=list(MOTION_COLUMNS))
    table = expand_24(params)
    fd = prep["fd"] if prep["fd"] is not None else framewise_displacement(prep["params"])
    table["framewise_displacement"] = fd
    brain = data[mask].T  # (T, V)
    table["dvars"] = dvars(brain)
    table["std_dvars"] = dvars(brain, standardize=True)
    ext = prep["external_confounds"]
    tissue_masks = {}
    if prep["tissues"] is not None:
        for column, tissue in (("white_matter", "wm"), ("csf", "csf")):
            prob = prep["tissues"][tissue] * mask
            table[column] = tissue_signal(data, prob)
            tissue_masks[column] = "eroded" if tissue_mask_eroded(prob) else (
                "uneroded: one erosion left fewer than 10 voxels, so the mean includes "
                "voxels that border grey matter")
        if cfg.acompcor_components:
            noise = ((prep["tissues"]["wm"] > 0.9) | (prep["tissues"]["csf"] > 0.9)) & mask
            comps = acompcor(data, noise, cfg.acompcor_components)
            for j in range(comps.shape[1]):
                table[f"a_comp_cor_{j:02d}"] = comps[:, j]
    else:
        for col in ("white_matter", "csf", *[c for c in ext.columns
                                             if c.startswith("a_comp_cor_")]):
            if col in ext.columns:
                table[col] = ext[col].fillna(0).to_numpy()
    table["global_signal"] = brain.mean(axis=1)
    scrub = motion_outliers(fd, cfg.fd_threshold)
    table["motion_outlier"] = scrub.astype(int)
    if prep["dropped"]:
        pad = pd.DataFrame(np.nan, index=range(prep["dropped"]), columns=table.columns)
        pad["non_steady_state"] = 1
        table = pd.concat([pad, table.assign(non_steady_state=0)], ignore_index=True)
    return table, fd, scrub, tissue_masks


@dataclass(frozen=True)
class _Cleaning:
    """How a run's signals are cleaned."""

    #: Indices of the volumes kept after scrubbing (counted after the dummy scans).
    kept: np.ndarray
    #: ``high_pass`` and ``low_pass`` (Hz) of the band-pass filter.
    band: dict
    #: Confound regressors, one row per volume after the dummy scans.
    regress: pd.DataFrame
    #: Motion parameters among the regressors (24, 12 or 6).
    model: int
    #: QC flags (a reduced motion model).
    flags: list


def _cleaning_model(ctx, table, scrub, dropped: int, tr: float, cfg) -> _Cleaning:
    """Choose the confound regressors that the clean volumes can afford.

    The motion model drops from ``func.motion_regressors`` (24) to 12 and then 6
    parameters while the regressors exceed ``func.max_confound_fraction`` of the
    degrees of freedom left in the band by the clean volumes; a reduction is flagged.
    """
    from .confounds import band_dof, regressors

    kept = np.flatnonzero(~scrub)
    band = {"high_pass": cfg.high_pass, "low_pass": min(cfg.low_pass, 0.95 * 0.5 / tr)}
    budget = cfg.max_confound_fraction * band_dof(len(kept), tr, **band)
    body = table.iloc[dropped:].reset_index(drop=True)
    flags = []
    for model in [m for m in (24, 12, 6) if m <= cfg.motion_regressors]:
        regress = regressors(body, global_signal=cfg.global_signal,
                             n_acompcor=cfg.acompcor_components,
                             tissue=not cfg.acompcor_components, motion_model=model)
        if regress.shape[1] <= budget or model == 6:
            break
    if model != cfg.motion_regressors:
        flags.append(
            f"motion model reduced from {cfg.motion_regressors} to {model} parameters: "
            f"{len(kept)} clean volumes leave {budget / cfg.max_confound_fraction:.0f} degrees "
            "of freedom in the band"
        )
        logger.warning("sub-%s: %s", ctx.subject, flags[-1])
    return _Cleaning(kept=kept, band=band, regress=regress, model=model, flags=flags)


def _qc_record(prep, table, fd, scrub, cleaning, tissue_masks) -> dict:
    """QC metrics and flags of a run (motion, DVARS, tSNR, coverage, the confound model)."""
    from .qc import qc_metrics, tsnr

    qc_extra = dict(prep["extra_qc"])
    qc_extra.update(n_volumes=int(prep["n_total"]), dropped_non_steady=int(prep["dropped"]),
                    n_kept=len(cleaning.kept), tr=float(prep["tr"]), warnings=prep["warnings"])
    qc_extra.update(confound_regressors=list(cleaning.regress.columns),
                    motion_model=cleaning.model)
    qc = qc_metrics(fd, table["dvars"].to_numpy()[prep["dropped"]:], scrub,
                    tsnr(prep["data"], prep["mask"]), prep["coverage"], qc_extra)
    qc["flags"].extend(cleaning.flags)
    if tissue_masks:
        qc["tissue_masks"] = tissue_masks
    return qc


def _carpet(ctx, ents, img4d, mask_img, tr, fd, scrub, qc) -> None:
    """Draw the run's carpet plot; a failure is a QC flag, never an error."""
    from .qc import carpet_plot

    try:
        carpet_plot(img4d, mask_img, tr, fd, scrub,
                    _out(ctx, ents, datatype="figures", desc="carpet", suffix="bold",
                         extension=".svg"))
    except Exception as exc:  # a figure never fails the run
        logger.warning("carpet plot failed: %s", exc)
        qc["flags"].append(f"carpet plot failed: {exc}")


def _too_little_clean_data(n_kept: int, n_vol: int, cfg) -> str | None:
    """Why a run with ``n_kept`` clean volumes of ``n_vol`` is excluded; None if it is not."""
    if n_kept / n_vol < cfg.min_clean_fraction or n_kept < cfg.min_volumes:
        return (
            f"too little clean data: {n_kept} of {n_vol} volumes left after scrubbing "
            f"(FD > {cfg.fd_threshold} mm); need {100 * cfg.min_clean_fraction:.0f}% and at "
            f"least {cfg.min_volumes} volumes"
        )
    return None


def _write_parcels(ctx, ents, atlas_id, img4d, mask_img, cleaning, dropped, n_vol, tr,
                   cfg) -> int:
    """Write one atlas's cleaned parcel time series and connectivity matrices.

    Returns
    -------
    int
        The number of regions without signal (no brain voxel covered), left n/a.
    """
    from ..atlases import load_atlas
    from ..writing import atomic_write_tsv
    from .denoise import clean_signals
    from .features import connectivity, fisher_z, parcel_signals

    kept = cleaning.kept
    atlas = load_atlas(atlas_id)
    raw = parcel_signals(img4d, atlas, mask_img)
    valid = ~raw.isna().any(axis=0).to_numpy()
    cleaned = pd.DataFrame(np.nan, index=range(len(kept)), columns=raw.columns)
    if valid.any():
        cleaned.loc[:, valid] = clean_signals(raw.loc[:, valid].to_numpy(), cleaning.regress,
                                              kept, tr=tr, **cleaning.band)
    full = pd.DataFrame(np.nan, index=range(dropped + n_vol), columns=raw.columns)
    full.iloc[dropped + kept] = cleaned.to_numpy()
    a = {"atlas": atlas_id, "datatype": "func"}
    atomic_write_tsv(_out(ctx, ents, **a, suffix="timeseries", extension=".tsv"),
                     full.round(6))
    pearson = connectivity(cleaned, "correlation")
    atomic_write_tsv(_out(ctx, ents, **a, meas="PearsonCorrelation", suffix="relmat",
                          extension=".tsv"), pearson.round(6), index=True)
    z = pd.DataFrame(fisher_z(pearson.to_numpy()), index=pearson.index,
                     columns=pearson.columns)
    atomic_write_tsv(_out(ctx, ents, **a, meas="FisherZ", suffix="relmat",
                          extension=".tsv"), z.round(6), index=True)
    if "partial correlation" in cfg.connectivity:
        partial = connectivity(cleaned, "partial correlation")
        atomic_write_tsv(_out(ctx, ents, **a, meas="PartialCorrelation",
                              suffix="relmat", extension=".tsv"),
                         partial.round(6), index=True)
    return int((~valid).sum())


def _voxel_maps(data, mask, mask_img, cleaning, n_vol, tr, cfg) -> dict:
    """Compute the configured voxel maps (ALFF, fALFF, ReHo, DMN seed) of the cleaned signal.

    Returns
    -------
    dict
        Map name -> values of the brain voxels of ``mask``.
    """
    import nibabel as nib

    from .denoise import clean_voxels, interpolate_censored
    from .maps import DMN_SEED_MNI, alff_falff, reho, seed_map

    kept, band = cleaning.kept, cleaning.band
    series = data[mask].T  # (T, V) float32
    mean = series.mean(axis=0)
    pct = series * (100.0 / np.where(mean == 0, 1.0, mean)).astype(np.float32)
    del series
    bandpassed, unfiltered = clean_voxels(pct, cleaning.regress.to_numpy(), kept, tr=tr,
                                          unfiltered=True, **band)
    del pct
    maps = {}
    if "alff" in cfg.maps or "falff" in cfg.maps:
        even = interpolate_censored(unfiltered, kept, n_vol)
        alff, falff = alff_falff(even, tr, (cfg.high_pass, band["low_pass"]))
        maps["alff"], maps["falff"] = alff, falff
    if "reho" in cfg.maps or "dmn" in cfg.maps:
        vol = np.zeros((*mask.shape, len(kept)), np.float32)
        vol[mask] = bandpassed.T
    if "reho" in cfg.maps:
        maps["reho"] = reho(vol, mask)[mask]
    if "dmn" in cfg.maps:
        from nilearn.maskers import NiftiSpheresMasker

        seed = NiftiSpheresMasker([DMN_SEED_MNI], radius=8.0, mask_img=mask_img,
                                  standardize=None)
        seed_ts = seed.fit_transform(nib.Nifti1Image(vol, mask_img.affine))[:, 0]
        maps["dmn"] = seed_map(bandpassed, seed_ts)
    return maps
