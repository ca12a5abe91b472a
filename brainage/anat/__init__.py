"""Structural (T1w) preprocessing and structural features.

Modules: :mod:`.outputs` (output names, :func:`anat_outputs`); the processing steps
:mod:`.convert` (nibabel ↔ ANTs), :mod:`.template` (MNI template), :mod:`.bias` (N4),
:mod:`.registration`, :mod:`.segmentation` (Atropos), :mod:`.partial_volume` (tissue
fractions) and :mod:`.jacobian`, chained by :mod:`.pipeline`; :mod:`.qc`,
:mod:`.features` (group table) and :mod:`.stage` (the participant-level stage
``run(ctx)``).
"""
