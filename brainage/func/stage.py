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

import numpy as np
import pandas as pd

from ..bids import TEMPLATE_SPACE
from ..exceptions import InputFileError, ProcessingError

__all__ = ["run"]

logger = logging.getLogger(__name__)


def _res(resolution: float) -> str:
    from ..anat.outputs import res_label

    return res_label(resolution)


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

    from ..anat.outputs import anat_outputs
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
    import nibabel as nib

    from ..atlases import load_atlas
    from ..io import atomic_write_json, atomic_write_tsv, save_nifti
    from . import confounds as cf
    from .denoise import clean_signals, clean_voxels, interpolate_censored
    from .features import connectivity, fisher_z, parcel_signals
    from .maps import DMN_SEED_MNI, alff_falff, reho, seed_map
    from .motion import MOTION_COLUMNS, dvars, framewise_displacement
    from .qc import carpet_plot, qc_metrics, tsnr
    from .registration import mni_grid

    cfg = ctx.config.func
    template, tmask = mni_grid(cfg.output_resolution)
    if ctx.derivatives_dir is not None:
        prep = _fmriprep_to_mni(ctx, bold_run, ents, cfg, template, tmask)
    else:
        prep = _native_to_mni(ctx, bold_run, cfg, template, tmask)
    data, mask, tr = prep["data"], prep["mask"], prep["tr"]
    n_vol = data.shape[-1]
    if mask.sum() < 100:
        raise ProcessingError(
            f"sub-{ctx.subject} {bold_run.path.name}: only {int(mask.sum())} brain voxels of "
            "the MNI grid are covered by the BOLD data; check the registration and the "
            "field of view"
        )
    affine = template.affine

    with ctx.step("confounds"):
        params = pd.DataFrame(prep["params"], columns=list(MOTION_COLUMNS))
        table = cf.expand_24(params)
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
                table[column] = cf.tissue_signal(data, prob)
                tissue_masks[column] = "eroded" if cf.tissue_mask_eroded(prob) else (
                    "uneroded: one erosion left fewer than 10 voxels, so the mean includes "
                    "voxels that border grey matter")
            if cfg.acompcor_components:
                noise = ((prep["tissues"]["wm"] > 0.9) | (prep["tissues"]["csf"] > 0.9)) & mask
                comps = cf.acompcor(data, noise, cfg.acompcor_components)
                for j in range(comps.shape[1]):
                    table[f"a_comp_cor_{j:02d}"] = comps[:, j]
        else:
            for col in ("white_matter", "csf", *[c for c in ext.columns
                                                 if c.startswith("a_comp_cor_")]):
                if col in ext.columns:
                    table[col] = ext[col].fillna(0).to_numpy()
        table["global_signal"] = brain.mean(axis=1)
        scrub = cf.motion_outliers(fd, cfg.fd_threshold)
        table["motion_outlier"] = scrub.astype(int)
        if prep["dropped"]:
            pad = pd.DataFrame(np.nan, index=range(prep["dropped"]), columns=table.columns)
            pad["non_steady_state"] = 1
            table = pd.concat([pad, table.assign(non_steady_state=0)], ignore_index=True)
        atomic_write_tsv(_out(ctx, ents, datatype="func", desc="confounds", suffix="timeseries",
                              extension=".tsv"), table.round(6))
    kept = np.flatnonzero(~scrub)
    band = {"high_pass": cfg.high_pass, "low_pass": min(cfg.low_pass, 0.95 * 0.5 / tr)}
    budget = cfg.max_confound_fraction * cf.band_dof(len(kept), tr, **band)
    body = table.iloc[prep["dropped"]:].reset_index(drop=True)
    model_flags = []
    for model in [m for m in (24, 12, 6) if m <= cfg.motion_regressors]:
        regress = cf.regressors(body, global_signal=cfg.global_signal,
                                n_acompcor=cfg.acompcor_components,
                                tissue=not cfg.acompcor_components, motion_model=model)
        if regress.shape[1] <= budget or model == 6:
            break
    if model != cfg.motion_regressors:
        model_flags.append(
            f"motion model reduced from {cfg.motion_regressors} to {model} parameters: "
            f"{len(kept)} clean volumes leave {budget / cfg.max_confound_fraction:.0f} degrees "
            "of freedom in the band"
        )
        logger.warning("sub-%s: %s", ctx.subject, model_flags[-1])
    qc_extra = dict(prep["extra_qc"])
    qc_extra.update(n_volumes=int(prep["n_total"]), dropped_non_steady=int(prep["dropped"]),
                    n_kept=len(kept), tr=float(tr), warnings=prep["warnings"])
    qc_extra.update(confound_regressors=list(regress.columns), motion_model=model)
    qc = qc_metrics(fd, table["dvars"].to_numpy()[prep["dropped"]:], scrub,
                    tsnr(data, mask), prep["coverage"], qc_extra)
    qc["flags"].extend(model_flags)
    if tissue_masks:
        qc["tissue_masks"] = tissue_masks
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    res = _res(cfg.output_resolution)
    mni = {"space": TEMPLATE_SPACE, "res": res}
    with ctx.step("qc"):
        img4d = nib.Nifti1Image(data, affine)
        img4d.header.set_xyzt_units("mm", "sec")
        try:
            carpet_plot(img4d, mask_img, tr, fd, scrub,
                        _out(ctx, ents, datatype="figures", desc="carpet", suffix="bold",
                             extension=".svg"))
        except Exception as exc:  # a figure never fails the run
            logger.warning("carpet plot failed: %s", exc)
            qc["flags"].append(f"carpet plot failed: {exc}")
    clean_fraction = len(kept) / n_vol
    if clean_fraction < cfg.min_clean_fraction or len(kept) < cfg.min_volumes:
        reason = (
            f"too little clean data: {len(kept)} of {n_vol} volumes left after scrubbing "
            f"(FD > {cfg.fd_threshold} mm); need {100 * cfg.min_clean_fraction:.0f}% and at "
            f"least {cfg.min_volumes} volumes"
        )
        qc.update(excluded=True, reason=reason)
        atomic_write_json(_out(ctx, ents, datatype="func", desc="qc", suffix="bold",
                               extension=".json"), qc)
        return {"excluded": True, "reason": reason, "qc": qc}

    save_nifti(mask_img, _out(ctx, ents, datatype="func", **mni, desc="brain", suffix="mask",
                              extension=".nii.gz"))
    with ctx.step("parcels"):
        for atlas_id in cfg.atlases:
            atlas = load_atlas(atlas_id)
            raw = parcel_signals(img4d, atlas, mask_img)
            valid = ~raw.isna().any(axis=0).to_numpy()
            cleaned = pd.DataFrame(np.nan, index=range(len(kept)), columns=raw.columns)
            if valid.any():
                cleaned.loc[:, valid] = clean_signals(raw.loc[:, valid].to_numpy(), regress,
                                                      kept, tr=tr, **band)
            full = pd.DataFrame(np.nan, index=range(prep["dropped"] + n_vol), columns=raw.columns)
            full.iloc[prep["dropped"] + kept] = cleaned.to_numpy()
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
            qc[f"regions_missing_{atlas_id}"] = int((~valid).sum())
    if cfg.maps:
        with ctx.step("maps"):
            series = data[mask].T  # (T, V) float32
            mean = series.mean(axis=0)
            pct = series * (100.0 / np.where(mean == 0, 1.0, mean)).astype(np.float32)
            del series
            bandpassed, unfiltered = clean_voxels(pct, regress.to_numpy(), kept, tr=tr,
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
                seed_ts = seed.fit_transform(nib.Nifti1Image(vol, affine))[:, 0]
                maps["dmn"] = seed_map(bandpassed, seed_ts)
            for name in cfg.maps:
                vol = np.zeros(mask.shape, np.float32)
                vol[mask] = maps[name]
                save_nifti(nib.Nifti1Image(vol, affine),
                           _out(ctx, ents, datatype="func", **mni, desc=name, suffix="boldmap",
                                extension=".nii.gz"))
    atomic_write_json(_out(ctx, ents, datatype="func", desc="qc", suffix="bold",
                           extension=".json"), qc)
    return {"qc": {k: v for k, v in qc.items() if k != "warnings"}}
