"""The models the group level compares, by name: build an unfitted estimator from a name.

Names (the ``group.models`` list of a pipeline configuration):

=======================  ==================================================================
``pidreg``               :class:`~brainage.estimators.regressor.PIDRegressor`, ``preset="default"``
``pidreg_faithful``      PIDRegressor, ``preset="faithful"`` (the published method as its code runs)
``unimodal_<modality>``  :class:`~brainage.estimators.baselines.BaselineRegressor`
                         ``(kind="unimodal", modality=<modality>)``, one per modality
``early_fusion``         BaselineRegressor ``(kind="early")``: inputs concatenated, one encoder
``late_fusion``          BaselineRegressor ``(kind="late")``: latents concatenated
``ridge``                :class:`~brainage.estimators.classical.ClassicalRegressor` ``("ridge")``
``gpr``                  ClassicalRegressor ``("gpr")``: Gaussian process on PCA components
``ridge_<modality>``     ridge on one modality alone (with two or more modalities)
``gpr_<modality>``       GPR on one modality alone (with two or more modalities)
=======================  ==================================================================

``pidreg``, ``pidreg_faithful``, ``early_fusion`` and ``late_fusion`` need two
or more modalities. Every estimator has ``fit(X, y, *, validation_idx=None)``,
``predict(X)``, ``modalities_`` and ``training_summary_``, and is stored with
:func:`brainage.estimators.bundle.save_bundle`. Importing this module does not
load torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import numpy as np

from brainage.exceptions import UsageError

__all__ = ["MODEL_NAMES", "available_models", "make_estimator", "predict_by_modality"]

#: Model name → what it builds (``unimodal_<modality>`` stands for one name per modality).
MODEL_NAMES: dict[str, str] = {
    "pidreg": "PIDRegressor(preset='default'): PID-weighted fusion, one encoder per modality",
    "pidreg_faithful": "PIDRegressor(preset='faithful'): the published PIDReg as its code runs",
    "unimodal_<modality>": "BaselineRegressor(kind='unimodal', modality=<modality>)",
    "early_fusion": "BaselineRegressor(kind='early'): inputs concatenated, one encoder",
    "late_fusion": "BaselineRegressor(kind='late'): one encoder per modality, latents concatenated",
    "ridge": "ClassicalRegressor('ridge'): RidgeCV on the standardised concatenated features",
    "gpr": "ClassicalRegressor('gpr'): Gaussian process (RBF + white noise) on PCA components",
    "ridge_<modality>": "ClassicalRegressor('ridge', modalities=[<modality>])",
    "gpr_<modality>": "ClassicalRegressor('gpr', modalities=[<modality>])",
}
_MULTIMODAL = ("pidreg", "pidreg_faithful", "early_fusion", "late_fusion")
#: Constructor arguments fixed by the name or by make_estimator's own arguments.
_FIXED = {"kind": "the model name", "modality": "the model name", "preset": "the model name",
          "modalities": "make_estimator(modalities=...)",
          "random_state": "make_estimator(random_state=...)", "device": "make_estimator(device=...)"}


def _check_modalities(modalities) -> list[str]:
    if isinstance(modalities, str):
        raise UsageError(
            f"modalities must be a list of names, got the string {modalities!r}; "
            f"write modalities=[{modalities!r}]."
        )
    mods = list(modalities)
    if not mods or not all(isinstance(m, str) and m for m in mods) or len(set(mods)) != len(mods):
        raise UsageError(f"modalities must name each modality once (non-empty strings), got {mods}.")
    return mods


def available_models(modalities: Sequence[str]) -> list[str]:
    """Return the model names that can be built for these modalities.

    Parameters
    ----------
    modalities : sequence of str
        The modalities of the cohort (e.g. ``["anat", "func"]``).

    Returns
    -------
    list of str
        The multimodal models only when there are two or more modalities.

    Examples
    --------
    >>> available_models(["anat", "func"])  # doctest: +NORMALIZE_WHITESPACE
    ['pidreg', 'pidreg_faithful', 'unimodal_anat', 'unimodal_func', 'early_fusion',
     'late_fusion', 'ridge', 'gpr', 'ridge_anat', 'ridge_func', 'gpr_anat', 'gpr_func']
    >>> available_models(["anat"])
    ['unimodal_anat', 'ridge', 'gpr']
    """
    mods = _check_modalities(modalities)
    multi = len(mods) >= 2
    names = ["pidreg", "pidreg_faithful"] if multi else []
    names += [f"unimodal_{m}" for m in mods]
    names += ["early_fusion", "late_fusion"] if multi else []
    per_modality = [f"{kind}_{m}" for kind in ("ridge", "gpr") for m in mods] if multi else []
    return [*names, "ridge", "gpr", *per_modality]


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"By {word!r}, did you mean {close[0]!r}? " if close else ""


def _unknown_name(name: str, mods: list[str]) -> UsageError:
    valid = available_models(mods)
    all_names = valid + [n for n in _MULTIMODAL if n not in valid]
    hint = _suggest(name, all_names)
    if name in _MULTIMODAL:
        return UsageError(
            f"Model {name!r} fuses two or more modalities, but only {mods} are given. "
            f"Models for these modalities: {', '.join(valid)}."
        )
    if name.startswith("unimodal_"):
        return UsageError(
            f"{hint}Model {name!r} names modality {name.removeprefix('unimodal_')!r}, which is not "
            f"one of {mods}. Models for these modalities: {', '.join(valid)}."
        )
    return UsageError(
        f"{hint}{name!r} is not a model name. Available models: {', '.join(valid)} "
        "(unimodal_<modality> for each modality)."
    )


def make_estimator(
    name: str,
    *,
    modalities: Sequence[str],
    params: Mapping | None = None,
    random_state: int = 0,
    device: str = "auto",
):
    """Build the unfitted estimator a model name stands for.

    Parameters
    ----------
    name : str
        One of :func:`available_models` (see :data:`MODEL_NAMES`).
    modalities : sequence of str
        The modalities the model will be fitted on (``X``'s keys). A classical
        model is restricted to them (in this order); the neural ones use every
        modality of the ``X`` they are given.
    params : mapping, optional
        Keyword overrides of the constructor, e.g. ``{"max_epochs": 30,
        "latent_dim": 8}`` for a neural model or ``{"alphas": [0.1, 1, 10]}`` for
        ridge. The arguments the name or this function fix (``kind``,
        ``modality``, ``preset``, ``modalities``, ``random_state``, ``device``)
        cannot be overridden.
    random_state : int
        Seed of the estimator.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:i]"`` for the neural models (ignored by
        ridge and GPR).

    Returns
    -------
    PIDRegressor, BaselineRegressor or ClassicalRegressor
        Unfitted.

    Raises
    ------
    UsageError
        An unknown name (with a suggestion and the valid names), a multimodal
        model with one modality, or an unknown or fixed parameter.

    Examples
    --------
    >>> make_estimator("ridge", modalities=["anat", "func"], params={"alphas": [1.0, 10.0]})
    ClassicalRegressor(alphas=[1.0, 10.0], modalities=['anat', 'func'])
    >>> make_estimator("unimodal_anat", modalities=["anat", "func"]).modality
    'anat'
    """
    mods = _check_modalities(modalities)
    one_modality = isinstance(name, str) and name.split("_", 1)[0] in ("ridge", "gpr") and (
        name.split("_", 1)[-1] in mods)  # ridge_<m> / gpr_<m>, also when m is the only modality
    if not isinstance(name, str) or (name not in available_models(mods) and not one_modality):
        raise _unknown_name(str(name), mods)
    kind = name.split("_", 1)[0]
    if kind in ("ridge", "gpr"):
        from brainage.estimators.classical import ClassicalRegressor

        use = mods if name == kind else [name.split("_", 1)[1]]
        cls, fixed = ClassicalRegressor, {"kind": kind, "modalities": use, "random_state": random_state}
    elif name.startswith("pidreg"):
        from brainage.estimators.regressor import PIDRegressor

        preset = "faithful" if name == "pidreg_faithful" else "default"
        cls, fixed = PIDRegressor, {"preset": preset, "random_state": random_state, "device": device}
    else:
        from brainage.estimators.baselines import BaselineRegressor

        fixed = {"random_state": random_state, "device": device}
        if name.startswith("unimodal_"):
            fixed |= {"kind": "unimodal", "modality": name.removeprefix("unimodal_")}
        else:
            fixed["kind"] = name.removesuffix("_fusion")
        cls = BaselineRegressor
    over = dict(params or {})
    valid = sorted(set(cls().get_params(deep=False)) - set(_FIXED))
    for key in over:
        if not isinstance(key, str) or key not in valid:
            if key in _FIXED:
                raise UsageError(
                    f"Parameter {key!r} of model {name!r} is set by {_FIXED[key]}; remove it from "
                    f"params. Parameters that can be set: {', '.join(valid)}."
                )
            raise UsageError(
                f"{_suggest(str(key), valid)}{key!r} is not a parameter of model {name!r} "
                f"({cls.__name__}). Parameters that can be set: {', '.join(valid)}."
            )
    return cls(**fixed, **over)


def predict_by_modality(estimator, X: Mapping) -> dict[str, np.ndarray]:
    """Predict from each modality alone, for the estimators that can.

    Parameters
    ----------
    estimator : fitted estimator
        From :func:`make_estimator` (or a bundle).
    X : dict of str to array-like or dataset
        Inputs of every modality of the estimator.

    Returns
    -------
    dict of str to numpy.ndarray
        ``{modality: predictions (n,)}`` for a PIDRegressor (its
        ``predict(X, modalities=[m])``: the other modalities' latents replaced by
        their training means); ``{}`` for the models that need all their inputs
        (early and late fusion, unimodal baselines, ridge, GPR).
    """
    from brainage.estimators.regressor import PIDRegressor

    if not isinstance(estimator, PIDRegressor):
        return {}
    return {m: np.asarray(estimator.predict({m: X[m]}, modalities=[m]), dtype=float)
            for m in estimator.modalities_}
