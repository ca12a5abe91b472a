"""Structural (T1w) preprocessing and structural features.

Modules (the output names are in :mod:`brainage.outputs`, the MNI template in
:mod:`brainage.templates`): the processing steps
:mod:`.convert` (nibabel ↔ ANTs), :mod:`.bias` (N4),
:mod:`.registration`, :mod:`.segmentation` (Atropos), :mod:`.partial_volume` (tissue
fractions) and :mod:`.jacobian`, chained by :mod:`.pipeline`; :mod:`.qc`,
:mod:`.features` (group table) and :mod:`.stage` (the participant-level stage
``run(ctx)``).
"""
