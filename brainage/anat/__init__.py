"""Structural (T1w) preprocessing and structural features.

Modules: :mod:`.outputs` (output names, :func:`anat_outputs`), :mod:`.preprocess`
(N4, registration, segmentation), :mod:`.qc`, :mod:`.features` (group table)
and :mod:`.stage` (the participant-level stage ``run(ctx)``).
"""
