"""The group level: cross-validated brain-age models on a cohort.

:mod:`~brainage.group.folds` assigns the cross-validation folds (by
participant, stratified by age, or leave-site-out). Import the submodules
directly; this package file imports nothing.
"""
