"""Functional (resting-state BOLD) preprocessing and features.

Modules, in processing order: :mod:`.load` (reading and checking a BOLD run),
:mod:`.motion` (head-motion estimation with ANTs, framewise displacement,
DVARS), :mod:`.registration` (EPI → T1w → MNI, resampled once),
:mod:`.confounds` (the confounds table, fMRIPrep column names),
:mod:`.denoise` (nilearn cleaning with scrubbing), :mod:`.features` (parcel
time series and connectivity), :mod:`.maps` (ALFF, fALFF, ReHo, seed maps),
:mod:`.qc` (metrics, flags, carpet plot), :mod:`.fmriprep` (fMRIPrep input) and
:mod:`.stage` (the participant-level stage).
"""
