"""The group level's input: the participants table aligned with each modality's inputs.

:func:`brainage.cohort.data.load_cohort` reads ``participants.tsv`` and the
participant stages' derivatives, as configured by ``config.group``, into a
:class:`~brainage.cohort.data.CohortData`: the participants (or participant ×
session rows) that can be used, each modality's features (regional GM volumes,
connectivity edges) or map paths aligned with them, and one exclusion row, with
its reason, for everything left out.

Submodules: ``data`` (the containers and :func:`load_cohort`), ``participants``
(rows from ``participants.tsv`` and sessions), ``readers`` (one participant's
files, QC thresholds), ``spec`` (a model bundle's input spec and checking a
cohort against it).

Import the submodules directly; this package file imports nothing.
"""
