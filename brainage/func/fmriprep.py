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

__all__ = ["find_fmriprep_run", "read_confounds"]


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
        raise InputFileError(
            root, f"no fMRIPrep confounds file next to {bold.name}",
            "Give the complete fMRIPrep output folder (…_desc-confounds_timeseries.tsv is needed)",
        )
    mask = Path(str(bold).replace("desc-preproc_bold", "desc-brain_mask"))
    return {"bold": bold, "confounds": confounds[0], "mask": mask if mask.is_file() else None}


def read_confounds(path):
    """Read an fMRIPrep confounds TSV (``n/a`` → NaN) and check its motion columns.

    Raises
    ------
    InputFileError
        A motion column is missing.
    """
    import pandas as pd

    from .motion import MOTION_COLUMNS

    table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    missing = [c for c in MOTION_COLUMNS if c not in table.columns]
    if missing:
        raise InputFileError(
            path, f"missing motion columns {', '.join(missing)}",
            "Give an fMRIPrep (>= 1.2) confounds file, which has trans_x … rot_z",
        )
    return table
