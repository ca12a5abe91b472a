"""Interpretation of fitted brain-age models: per-participant explanations.

:mod:`~brainage.interpret.contributions` splits each participant's predicted
age of a fitted :class:`~brainage.estimators.regressor.PIDRegressor` into exact
Shapley contributions, over PIDReg's fusion terms (:func:`fusion_shapley`) or
over the modalities (:func:`modality_shapley`), and gives the pointwise
(local) mutual information of each participant's age with their latents
(:func:`local_information`). See ``docs/interpret.md``.
:mod:`~brainage.interpret.selection` turns the fold models' fusion weights into a
recommended subset of modalities and measures its out-of-fold accuracy, inference time
and the preprocessing time it saves (``docs/group.md``).

This package sits above :mod:`brainage.cohort` and :mod:`brainage.estimators`
and below the group level and reporting. Import the submodules directly; this
package file imports nothing, so ``import brainage.interpret`` loads neither
torch nor pandas.
"""
