"""fMRIPrep input: its preprocessed MNI-space BOLD and its confounds file.

With ``--derivatives DIR`` the functional stage uses, for each raw BOLD run,
fMRIPrep's ``…_space-MNI152*_desc-preproc_bold.nii.gz`` (and its brain mask)
and ``…_desc-confounds_timeseries.tsv`` (columns ``trans_x … rot_z``,
``framewise_displacement``, ``csf``, ``white_matter``, ``global_signal``,
``a_comp_cor_XX``) instead of redoing motion correction and registration.
"""

from __future__ import annotations

from pathlib import Path

from ..exceptions import InputFileError

__all__ = ["find_fmriprep_run", "needed_columns", "read_confounds"]


def _pattern(subject: str, entities: dict, rest: str) -> str:
    parts = [f"sub-{subject}"]
    for key, short in (("session", "ses"), ("task", "task"), ("acquisition", "acq"),
                       ("run", "run")):
        if entities.get(key) is not None:
            parts.append(f"{short}-{entities[key]}")
    return "_".join(parts) + "_*" + rest


def find_fmriprep_run(derivatives_dir, subject: str, entities: dict) -> dict:
    """Locate fMRIPrep's outputs for one BOLD run.

    Parameters
    ----------
    derivatives_dir : path-like
        fMRIPrep output root.
    subject : str
    entities : dict
        The raw run's ``session``, ``task``, ``acquisition``, ``run``.

    Returns
    -------
    dict
        ``bold``, ``confounds`` and ``mask`` (or None) paths.

    Raises
    ------
    InputFileError
        No preprocessed MNI-space BOLD or no confounds file for the run.
    """
    root = Path(derivatives_dir) / f"sub-{subject}"
    bolds = sorted(p for p in root.rglob(_pattern(subject, entities, "desc-preproc_bold.nii*"))
                   if "space-MNI152" in p.name and "res-" not in p.name.split("space-")[0])
    if not bolds:
        raise InputFileError(
            root,
            f"no fMRIPrep BOLD in MNI space for task {entities.get('task')} "
            "(expected …_space-MNI152…_desc-preproc_bold.nii.gz)",
            "Run fMRIPrep with --output-spaces MNI152NLin2009cAsym (or MNI152NLin2009aSym), or "
            "drop --derivatives to let brainage preprocess the raw BOLD",
        )
    bold = bolds[0]
    confounds = sorted(root.rglob(_pattern(subject, entities, "desc-confounds_timeseries.tsv")))
    if not confounds:
        expected = _pattern(subject, entities, "").removesuffix("_*") + \
            "_desc-confounds_timeseries.tsv"
        raise InputFileError(
            bold.parent / expected, f"no fMRIPrep confounds file for {bold.name}",
            "Give the complete fMRIPrep output folder: the functional stage takes the motion "
            "parameters, framewise displacement and WM/CSF signals from this file",
        )
    mask = Path(str(bold).replace("desc-preproc_bold", "desc-brain_mask"))
    return {"bold": bold, "confounds": confounds[0], "mask": mask if mask.is_file() else None}


def needed_columns(*, tissue: bool, n_acompcor: int, global_signal: bool) -> list[str]:
    """Columns of fMRIPrep's confounds file that the configured denoising regresses.

    Besides the motion parameters: ``white_matter`` and ``csf`` (or the first
    ``n_acompcor`` ``a_comp_cor_XX``), and ``global_signal`` when asked; without a
    structural result these signals cannot be computed here, so they must be in the file.
    """
    cols = []
    if tissue:
        cols += ["white_matter", "csf"]
    cols += [f"a_comp_cor_{j:02d}" for j in range(n_acompcor)]
    if global_signal:
        cols.append("global_signal")
    return cols


def read_confounds(path, needed=()):
    """Read an fMRIPrep confounds TSV (``n/a`` → NaN) and check its columns.

    Parameters
    ----------
    path : path-like
    needed : sequence of str
        Columns the denoising needs besides ``trans_x … rot_z`` (:func:`needed_columns`).

    Raises
    ------
    InputFileError
        The file cannot be read, or a motion column or a needed column is missing.
    """
    import pandas as pd

    from .motion import MOTION_COLUMNS

    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"cannot be read as a tab-separated table ({exc})",
                             "Give fMRIPrep's …_desc-confounds_timeseries.tsv unchanged") from exc
    missing = [c for c in MOTION_COLUMNS if c not in table.columns]
    if missing:
        raise InputFileError(
            path, f"missing motion columns {', '.join(missing)}",
            "Give an fMRIPrep (>= 1.2) confounds file, which has trans_x … rot_z",
        )
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise InputFileError(
            path, f"missing column(s) {', '.join(missing)} that the denoising regresses",
            "Give the full fMRIPrep confounds file, or change func.acompcor_components / "
            "func.global_signal to use columns the file has",
        )
    return table
