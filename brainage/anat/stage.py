"""The participant-level structural stage: ``run(ctx) -> dict``.

Reads the participant's T1w (or fMRIPrep's preprocessed T1w and tissue maps with
``--derivatives``), runs :func:`brainage.anat.pipeline.process_t1w` and writes the
outputs listed in :mod:`brainage.outputs`. A registration whose similarity
to the template falls below ``anat.registration.min_similarity`` fails the
participant with a :class:`~brainage.exceptions.ProcessingError` (the QC record
is kept in ``sub-XX/log/``), so a bad registration is never silently used.
"""

from __future__ import annotations

import functools
import logging
import shutil

import numpy as np

from ..exceptions import InputFileError, ProcessingError
from ..outputs import atlas_entities, output_entities

__all__ = ["input_files", "regional_gm_volumes", "run", "tissue_volumes", "ventricle_region"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=16)
def _atlas_on_grid(atlas_id: str, shape: tuple, affine_bytes: bytes):
    import nibabel as nib

    from ..atlases import load_atlas

    affine = np.frombuffer(affine_bytes, dtype=np.float64).reshape(4, 4)
    atlas = load_atlas(atlas_id)
    target = nib.Nifti1Image(np.zeros(shape, np.uint8), affine)
    return atlas, np.asarray(atlas.resample_to(target).dataobj)


def regional_gm_volumes(gm_modulated, atlas_id: str):
    """GM volume (mL) per region of an atlas from a Jacobian-modulated MNI GM map.

    Parameters
    ----------
    gm_modulated : nibabel.Nifti1Image
        Modulated GM probability in MNI space.
    atlas_id : str
        Registry id of a volume atlas.

    Returns
    -------
    pandas.DataFrame
        Columns ``index, name, hemisphere, lobe, gm_volume_ml``; one row per region.
    """
    atlas, labels = _atlas_on_grid(
        atlas_id, tuple(gm_modulated.shape), np.asarray(gm_modulated.affine, np.float64).tobytes()
    )
    voxel_ml = float(abs(np.linalg.det(gm_modulated.affine[:3, :3]))) / 1000.0
    gm = np.asarray(gm_modulated.dataobj, dtype=np.float64)
    sums = np.bincount(labels.ravel(), weights=gm.ravel(), minlength=int(labels.max()) + 1)
    table = atlas.labels[["index", "name", "hemisphere", "lobe"]].copy()
    idx = table["index"].to_numpy()
    table["gm_volume_ml"] = np.where(idx < len(sums), sums[np.minimum(idx, len(sums) - 1)], 0.0)
    table["gm_volume_ml"] = (table["gm_volume_ml"] * voxel_ml).round(4)
    return table


#: Lateral ventricles are measured within this distance (mm) of their atlas labels, so a
#: ventricle that has grown beyond the (young-adult) atlas outline is measured whole.
VENTRICLE_MARGIN_MM = 4.0


def ventricle_region(labels, values, affine, margin_mm: float = VENTRICLE_MARGIN_MM):
    """Atlas ventricle labels grown by ``margin_mm`` (bool array on the atlas grid)."""
    from scipy import ndimage

    region = np.isin(labels, values)
    if margin_mm <= 0:
        return region
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return ndimage.distance_transform_edt(~region, sampling=tuple(zooms)) <= margin_mm


def tissue_volumes(result) -> dict:
    """Native tissue volumes (mL), TIV and lateral-ventricle volume.

    TIV is GM + WM + CSF summed over the native tissue maps (which are zero outside the
    region that was segmented: the brain mask, grown by ``anat.intracranial_margin_mm`` to
    take in the CSF between brain and skull). ``ventricles_ml`` is the modulated CSF inside
    the Harvard-Oxford lateral ventricles (left + right) grown by :data:`VENTRICLE_MARGIN_MM`.
    """
    import nibabel as nib

    voxel_ml = float(np.prod(result.gm.header.get_zooms()[:3])) / 1000.0
    vols = {
        f"{k}_ml": float(np.asarray(getattr(result, k).dataobj, dtype=np.float64).sum())
        * voxel_ml
        for k in ("gm", "wm", "csf")
    }
    vols["tiv_ml"] = vols["gm_ml"] + vols["wm_ml"] + vols["csf_ml"]
    csf = result.csf_modulated_mni
    atlas, labels = _atlas_on_grid(
        "HarvardOxford", tuple(csf.shape), np.asarray(csf.affine, np.float64).tobytes()
    )
    names = atlas.labels.set_index("name")["index"]
    vent = ventricle_region(labels, [names["Left_Lateral_Ventricle"],
                                     names["Right_Lateral_Ventricle"]], csf.affine)
    out_voxel_ml = float(abs(np.linalg.det(csf.affine[:3, :3]))) / 1000.0
    vols["ventricles_ml"] = float(np.asarray(csf.dataobj, np.float64)[vent].sum()) * out_voxel_ml
    del nib
    return {k: round(v, 3) for k, v in vols.items()}


_FMRIPREP_ANAT = {
    "t1w": {"desc": "preproc", "suffix": "T1w"},
    "brain_mask": {"desc": "brain", "suffix": "mask"},
    "gm": {"label": "GM", "suffix": "probseg"},
    "wm": {"label": "WM", "suffix": "probseg"},
    "csf": {"label": "CSF", "suffix": "probseg"},
}


def fmriprep_anat_files(derivatives_dir, subject: str) -> dict:
    """Paths of fMRIPrep's native T1w, brain mask and tissue maps (not checked to exist)."""
    from ..bids import derivative_path

    return {key: derivative_path(derivatives_dir, subject=subject, datatype="anat",
                                 extension=".nii.gz", **ents)
            for key, ents in _FMRIPREP_ANAT.items()}


def input_files(inputs, derivatives_dir=None) -> list:
    """List the files the structural stage reads for one participant (for its fingerprint).

    The raw T1w images; with fMRIPrep derivatives also fMRIPrep's T1w, brain mask
    and tissue maps, so that a changed fMRIPrep output makes the stage run again.
    Missing fMRIPrep files add nothing here; the stage itself reports them.

    Parameters
    ----------
    inputs : brainage.bids.ParticipantInputs
    derivatives_dir : path-like, optional
        fMRIPrep derivatives given with ``--derivatives``.

    Returns
    -------
    list of pathlib.Path
    """
    if derivatives_dir is None:
        return list(inputs.t1w)
    found = fmriprep_anat_files(derivatives_dir, inputs.subject).values()
    return [*inputs.t1w, *(p for p in found if p.is_file())]


def _fmriprep_inputs(ctx):
    """FMRIPrep's native preprocessed T1w, brain mask and tissue maps for this participant."""
    from ..imageio import load_checked

    out = {}
    for key, path in fmriprep_anat_files(ctx.derivatives_dir, ctx.subject).items():
        if not path.is_file():
            raise InputFileError(
                path, "this fMRIPrep output is missing",
                "Point --derivatives at the fMRIPrep output folder (the one holding sub-*/anat/), "
                "or drop --derivatives to process the raw T1w.",
            )
        role = "T1w" if key == "t1w" else "mask" if key == "brain_mask" else "probseg"
        out[key] = load_checked(path, role=role)
    return out


def run(ctx) -> dict:
    """Process one participant's T1w and write the structural outputs.

    Parameters
    ----------
    ctx : brainage.stages.StageContext
        The stage context (subject, inputs, config, paths).

    Returns
    -------
    dict
        QC metrics, flags, tissue volumes and the input used.

    Raises
    ------
    InputFileError
        The T1w (or an fMRIPrep input) is missing or unusable.
    ProcessingError
        ANTs failed or the registration is below the similarity threshold.
    """
    from ..imageio import load_checked
    from ..templates import template
    from ..writing import atomic_write_json, atomic_write_tsv, save_nifti
    from .pipeline import process_t1w
    from .qc import qc_metrics, save_mosaic

    cfg = ctx.config.anat
    tissue = None
    with ctx.step("load"):
        if ctx.derivatives_dir is not None:
            fmriprep = _fmriprep_inputs(ctx)
            t1w_img = fmriprep.pop("t1w")
            tissue = fmriprep
            source = "fmriprep"
        else:
            if not ctx.inputs.t1w:
                raise InputFileError(
                    f"sub-{ctx.subject}/anat", "no T1w image",
                    "Add sub-<label>/anat/sub-<label>_T1w.nii.gz or run without --modalities anat.",
                )
            if len(ctx.inputs.t1w) > 1:
                ctx.logger.warning(
                    "sub-%s has %d T1w images; using %s", ctx.subject, len(ctx.inputs.t1w),
                    ctx.inputs.t1w[0].name,
                )
            t1w_img = load_checked(ctx.inputs.t1w[0], ndim=3, role="T1w")
            source = str(ctx.inputs.t1w[0])

    result = process_t1w(t1w_img, cfg, ctx.work_dir, step=ctx.step, tissue=tissue)
    tmpl = template(cfg.output_resolution)
    with ctx.step("features"):
        volumes = tissue_volumes(result)
        qc = qc_metrics(
            result, tmpl["t1"], tmpl["mask"], volumes,
            min_similarity=cfg.registration.min_similarity,
        )
    record = {"input": source, "tissue": volumes, **qc}
    if not qc["registration_ok"]:
        atomic_write_json(ctx.path(datatype="log", desc="qc", suffix="anat", extension=".json"),
                          record)
        raise ProcessingError(
            f"sub-{ctx.subject}: the T1w {source} did not register to the MNI template "
            f"(similarity {qc['registration_similarity']:.3f} < "
            f"{cfg.registration.min_similarity}); check the image (orientation header, "
            "field of view, contrast) in the QC mosaic or lower anat.registration.min_similarity "
            "only if the image is known to be good"
        )
    ents = output_entities(cfg.output_resolution)
    with ctx.step("write"):
        for key in ("t1w", "brain_mask", "gm", "wm", "csf", "t1w_mni", "brain_mask_mni",
                    "gm_mni", "wm_mni", "csf_mni", "gm_modulated_mni"):
            save_nifti(getattr(result, key), ctx.path(**ents[key]))
        shutil.copyfile(result.registration.forward_composite, ctx.path(**ents["xfm_t1w_to_mni"]))
        shutil.copyfile(result.registration.inverse_composite, ctx.path(**ents["xfm_mni_to_t1w"]))
        import pandas as pd

        atomic_write_tsv(ctx.path(**ents["tissue_morph"]), pd.DataFrame([volumes]))
        for atlas_id in cfg.atlases:
            table = regional_gm_volumes(result.gm_modulated_mni, atlas_id)
            atomic_write_tsv(ctx.path(**atlas_entities(atlas_id)), table)
        atomic_write_json(ctx.path(**ents["qc"]), record)
    if cfg.qc_mosaic:
        with ctx.step("mosaic"):
            try:
                save_mosaic(result.t1w_mni, result.brain_mask_mni, result.gm_mni,
                            ctx.path(**ents["mosaic"]))
            except Exception as exc:  # a failed figure never fails the participant
                ctx.logger.warning("QC mosaic of sub-%s failed: %s", ctx.subject, exc)
                record["flags"].append(f"QC mosaic failed: {exc}")
    return record
