"""Cross-validated brain-age models on a cohort, without leakage.

For each model of the comparison and each outer fold ``k`` (folds by
participant, from :func:`brainage.group.folds.assign_folds`; controls only):

1. the training participants are the controls outside fold ``k``;
2. the feature transforms (:mod:`brainage.group.transforms`: ComBat when
   enabled, principal components where an input sets ``pca``) are fitted on
   them, per tabular modality, and applied unchanged to everyone the fold
   model predicts;
3. the model is fitted on them (its early-stopping split is drawn inside
   them);
4. the age-bias correction is fitted on **out-of-sample predictions of the
   training controls**: ``inner_splits`` inner folds of the training
   participants, each predicted by a model fitted on the other inner folds
   (with its own transforms), then applied unchanged to fold ``k``;
5. the fold model predicts the held-out controls of fold ``k`` and every
   participant who is not a control (patients are never trained on).

Every control ends with exactly one out-of-fold prediction. A patient's
prediction is the mean over the ``K`` fold models, none of which saw them
(``n_models = K`` in the outputs); its corrected prediction is the mean of
the fold-corrected predictions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..console import current, progress
from ..exceptions import GroupLevelError, StatsInputError
from ..stats.bias import AgeBiasCorrection
from .folds import NOT_IN_FOLDS, assign_folds
from .transforms import FeatureTransforms, volume_cache

logger = logging.getLogger(__name__)

__all__ = ["CVResult", "ModelRun", "cross_validate"]


@dataclass
class ModelRun:
    """Out-of-fold results of one model.

    Attributes
    ----------
    name : str
        Model name (``brainage.estimators.registry``).
    predictions : pandas.DataFrame
        Indexed by participant key: ``fold`` (``-1`` for participants predicted
        by every fold model), ``n_models``, ``predicted_age``,
        ``predicted_age_corrected`` and ``predicted_age_<modality>`` where the
        model predicts from one modality alone.
    folds : list of dict
        Per outer fold: sizes, seconds, the fitted bias correction, and for
        PIDReg-like models the PID atoms, fusion weights, held-out PID score and the
        Gaussianity of the training latents (:func:`brainage.stats.gaussianity.latent_gaussianity`).
    contributions : pandas.DataFrame or None
        For PIDReg models, indexed by participant key like ``predictions``: the
        exact Shapley values of the prediction over the fusion terms
        (``baseline_age``, ``shap_<term>``) and the pointwise information of each
        modality's latent (``local_info_<modality>``, ``local_info_joint``, bits,
        Gaussian model of the fold's training participants), from the fold
        models that did not train on the participant (mean over them for
        patients), :mod:`brainage.interpret.contributions`.
    region_attributions : brainage.interpret.regions.RegionAttributions or None
        For the primary model (``group.attributions``): each participant's signed
        attribution of the predicted age to every atlas region, lobe and network of
        the tabular modalities (ablation of raw features to the fold's training-control
        mean), from the fold models that did not train on the participant (mean over
        them for patients), :mod:`brainage.interpret.regions`; for ``maps`` inputs, the
        region-wise ablation of the map to the fold's training-control mean map on the
        atlas labels, :mod:`brainage.interpret.map_regions`.
    fit_seconds : float
        Total seconds spent fitting (outer and inner models).
    predict_seconds_per_participant : float
        Mean inference time of the outer fold models per participant.
    modality_subsets : dict or None
        For the primary PIDReg model: the fold models restricted to each subset of
        modalities, out of fold (``predictions``, one column per subset key such as
        ``"anat+func"``), with ``seconds_per_participant`` per subset,
        :func:`brainage.interpret.selection.combine_subset_folds`.
    """

    name: str
    predictions: pd.DataFrame
    folds: list = field(default_factory=list)
    contributions: pd.DataFrame | None = None
    region_attributions: object = None
    fit_seconds: float = 0.0
    predict_seconds_per_participant: float = 0.0
    modality_subsets: dict | None = None


@dataclass
class CVResult:
    """Everything the cross-validation produced, for the outputs and the reports."""

    folds: pd.Series
    runs: dict
    settings: dict


# ------------------------------------------------------------------ one fit
#: Fraction of the training participants held out for early stopping, and the fewest that
#: make a usable validation set; below that, neural models train for their max_epochs.
VALIDATION_FRACTION, MIN_VALIDATION = 0.15, 10


def validation_split(y: np.ndarray, seed: int) -> np.ndarray:
    """Positions of an age-stratified early-stopping set inside the training participants.

    Every ``1 / VALIDATION_FRACTION``-th participant in age order (random start), so the
    set spans the age range; empty when it would hold fewer than ``MIN_VALIDATION``
    participants (a handful of validation losses picks a random epoch: with 22 training
    controls a 10 % split holds 2 participants, and early stopping restored the initial
    weights).
    """
    n_val = round(VALIDATION_FRACTION * len(y))
    if n_val < MIN_VALIDATION:
        return np.array([], dtype=int)
    order = np.argsort(y, kind="stable")
    step = len(y) / n_val
    start = np.random.default_rng(seed).uniform(0, step)
    return np.sort(order[np.floor(start + step * np.arange(n_val)).astype(int)])


def _fit(name, modalities, params, seed, device, X, y):
    from ..estimators.registry import make_estimator

    est = make_estimator(name, modalities=modalities, params=params, random_state=seed, device=device)
    return est.fit(X, y, validation_idx=validation_split(y, seed))


def _oos_predictions(name, cohort, keys, cfg, modalities, params, seed, device, cache=None) -> np.ndarray:
    """Out-of-sample predictions of ``keys`` from inner folds (for the bias correction)."""
    table = cohort.participants.loc[keys]
    inner = assign_folds(table, n_splits=cfg.cv.inner_splits, seed=seed + 7919)
    out = np.full(len(keys), np.nan)
    keys = np.asarray(keys, dtype=object)
    task = current()
    base = task.description if task is not None else ""
    for j in range(cfg.cv.inner_splits):
        if task is not None:
            task.describe(f"{base}, bias correction {j + 1}/{cfg.cv.inner_splits}")
        tr, te = keys[inner != j], keys[inner == j]
        tf = FeatureTransforms.fit(cohort, tr, cfg, modalities, seed=seed)
        est = _fit(name, modalities, params, seed + 31 * (j + 1), device,
                   tf.inputs(cohort, tr, modalities, cache),
                   cohort.participants.loc[tr, "age"].to_numpy(float))
        out[inner == j] = est.predict(tf.inputs(cohort, te, modalities, cache))
    if task is not None:
        task.describe(base)
    return out


def fit_correction(cfg, age, predicted, site) -> AgeBiasCorrection:
    """Fit the configured age-bias correction on out-of-sample predictions of controls."""
    bc = cfg.bias_correction
    corr = AgeBiasCorrection(method=bc.method, degree=bc.degree, by_site=bc.by_site,
                             unseen_site="pooled")
    try:
        return corr.fit(age, predicted, site=site if bc.by_site else None)
    except StatsInputError as exc:
        raise GroupLevelError(
            f"the age-bias correction could not be fitted on {len(age)} training controls: {exc}"
        ) from None


def _pid_info(est, X_test, y_test) -> dict:
    info = {}
    if getattr(est, "pid_", None):
        info["pid"] = est.pid_
    if getattr(est, "pid_unavailable_", None):
        info["pid_unavailable"] = est.pid_unavailable_
    if getattr(est, "fusion_weights_", None):
        info["fusion_weights"] = est.fusion_weights_
    if getattr(est, "gaussianity_", None):  # of the training latents: how far the PID's model holds
        info["gaussianity"] = est.gaussianity_
    if info and len(y_test) >= 10 and hasattr(est, "pid_score"):
        try:
            info["pid_score"] = est.pid_score(X_test, y_test)
        except Exception as exc:  # the score is a report item; it never stops training
            logger.warning("held-out PID score failed: %s", exc)
    return info


def fit_line(est) -> str:
    """Describe a finished fit for the console: epochs run and best loss of a neural model."""
    history = getattr(est, "history_", None)
    if not history:
        return ""
    best = history[min(max(int(getattr(est, "best_epoch_", -1)), 0), len(history) - 1)]
    n_val = (getattr(est, "training_summary_", None) or {}).get("n_validation", 0)
    kind = "validation" if n_val else "training"
    return f", {len(history)} epochs (best {int(best['epoch']) + 1}), {kind} loss {best['val_loss']:.3g}"


def _contributions(est, X_target, age_target, X_train, y_train) -> pd.DataFrame | None:
    """Out-of-fold contributions of a PIDReg fold model (None for the other models)."""
    from ..estimators.regressor import PIDRegressor
    from ..interpret.contributions import fusion_shapley, local_information

    if not isinstance(est, PIDRegressor):
        return None
    shap = fusion_shapley(est, X_target).drop(columns=["predicted_age"])
    info = local_information(est, X_target, age_target, reference_latents=est.transform(X_train),
                             reference_age=y_train).drop(columns=["gaussian_age"], errors="ignore")
    return pd.concat([shap, info.reset_index(drop=True)], axis=1)


def _run_model(name, cohort, folds, cfg, modalities, params, device, cache=None,
               attributions: bool = False, selection: bool = False) -> ModelRun:
    from ..estimators.registry import predict_by_modality
    from ..interpret.regions import ablation_attributions, combine_folds
    from ..interpret.selection import combine_subset_folds, subset_inference

    parts = cohort.participants
    keys = parts.index.to_numpy(dtype=object)
    others = keys[folds == NOT_IN_FOLDS]
    k_folds = int(folds.max()) + 1
    rows, fold_info, contrib, regional = [], [], [], []
    subsets = []  # modality selection: each fold model restricted to subsets of modalities, timed
    fit_seconds = predict_seconds = 0.0
    n_predicted = 0
    task = current()
    for k in range(k_folds):
        if task is not None:
            task.describe(f"training: {name} fold {k + 1}/{k_folds}")
        seed = cfg.cv.seed + 1000 * (k + 1)
        train, test = keys[(folds != k) & (folds != NOT_IN_FOLDS)], keys[folds == k]
        target = np.concatenate([test, others])
        t0 = time.perf_counter()
        tf = FeatureTransforms.fit(cohort, train, cfg, modalities, seed=seed)
        y_train = parts.loc[train, "age"].to_numpy(float)
        X_train = tf.inputs(cohort, train, modalities, cache)
        est = _fit(name, modalities, params, seed, device, X_train, y_train)
        if cfg.bias_correction.method == "none":
            oos = y_train  # unused by the identity correction
        else:
            oos = _oos_predictions(name, cohort, train, cfg, modalities, params, seed, device, cache)
        corr = fit_correction(cfg, y_train, oos, parts.loc[train, "site"].to_numpy())
        fold_seconds = time.perf_counter() - t0
        fit_seconds += fold_seconds
        t0 = time.perf_counter()
        X_target = tf.inputs(cohort, target, modalities, cache)
        pred = est.predict(X_target)
        predict_seconds += time.perf_counter() - t0
        n_predicted += len(target)
        frame = pd.DataFrame({"key": target, "fold": np.where(np.isin(target, test), k, NOT_IN_FOLDS),
                              "predicted_age": pred})
        frame["predicted_age_corrected"] = corr.transform(
            parts.loc[target, "age"].to_numpy(float), pred, site=parts.loc[target, "site"].to_numpy())
        for m, p in predict_by_modality(est, X_target).items():
            frame[f"predicted_age_{m}"] = p
        rows.append(frame)
        parts_c = _contributions(est, X_target, parts.loc[target, "age"].to_numpy(float), X_train, y_train)
        if parts_c is not None:
            contrib.append(parts_c.assign(key=target))
        if attributions:
            regional.append(ablation_attributions(est, tf, cohort, train, target, modalities,
                                                  cache=cache))
            if any(cohort.inputs[m].features is None for m in modalities):
                # maps: captum region-wise ablation to the fold's training-control mean map
                from ..interpret.map_regions import concat_attributions, map_attributions

                regional[-1] = concat_attributions(
                    [regional[-1], map_attributions(est, tf, cohort, train, target, modalities,
                                                    cache=cache)])
        if selection:
            subsets.append(subset_inference(est, tf, cohort, target, modalities, cache))
        n_test = len(test)
        info = {"fold": k, "n_train": len(train), "n_test_controls": n_test,
                "n_others": len(others), "transforms": tf.summary(),
                "bias_correction": corr.to_dict()}
        if regional and regional[-1] is not None:
            info["attribution_seconds"] = round(regional[-1].seconds, 3)
        if n_test:
            # the held-out controls lead X_target; maps are datasets, read for them alone
            X_test = ({m: v[:n_test] for m, v in X_target.items()}
                      if all(isinstance(v, np.ndarray) for v in X_target.values())
                      else tf.inputs(cohort, test, modalities, cache))
            info.update(_pid_info(est, X_test, parts.loc[test, "age"].to_numpy(float)))
        fold_info.append(info)
        line = (f"{name} fold {k + 1}/{k_folds}: {len(train)} training controls{fit_line(est)}, "
                f"fitted in {fold_seconds:.1f} s")
        if task is not None:
            task.finished(line)
        else:
            logger.info(line)
    allrows = pd.concat(rows, ignore_index=True)
    value_cols = [c for c in allrows.columns if c.startswith("predicted_age")]
    grouped = allrows.groupby("key", sort=False)
    preds = grouped[value_cols].mean()
    preds.insert(0, "n_models", grouped.size())
    preds.insert(0, "fold", grouped["fold"].max())
    preds = preds.reindex([k for k in keys if k in preds.index])
    contributions = None
    if contrib:
        contributions = pd.concat(contrib, ignore_index=True).groupby("key", sort=False).mean()
        contributions = contributions.reindex(preds.index)
    region_attr = None
    if any(r is not None for r in regional):
        region_attr = combine_folds(regional)
    return ModelRun(name=name, predictions=preds, folds=fold_info, contributions=contributions,
                    region_attributions=region_attr, fit_seconds=fit_seconds,
                    predict_seconds_per_participant=predict_seconds / max(n_predicted, 1),
                    modality_subsets=combine_subset_folds(subsets))


def model_modalities(name: str, cohort) -> list[str]:
    """Return the modalities a model of the comparison uses."""
    for prefix in ("unimodal_", "ridge_", "gpr_"):
        if name.startswith(prefix) and name.removeprefix(prefix) in cohort.inputs:
            return [name.removeprefix(prefix)]
    return list(cohort.inputs)


def cross_validate(cohort, cfg, *, models=None, device: str = "auto", folds=None) -> CVResult:
    """Cross-validate every model of ``cfg.models`` on the cohort.

    Parameters
    ----------
    cohort : brainage.cohort.data.CohortData
        Participants and inputs (exclusions already applied).
    cfg
        ``config.group``.
    models : sequence of str, optional
        A subset of ``cfg.models``.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"`` for the neural models.
    folds : array-like of int, optional
        Precomputed outer folds (one per participant row, ``-1`` for those
        not trained on); default :func:`~brainage.group.folds.assign_folds`
        with ``cfg.cv``.

    Returns
    -------
    CVResult

    Raises
    ------
    GroupLevelError
        With too few controls for the folds, or when a participant lacks a
        modality a model needs.
    """
    parts = cohort.participants
    controls = parts["is_control"].to_numpy(dtype=bool)
    n_controls = int(controls.sum())
    need = cfg.cv.n_splits * (cfg.cv.inner_splits if cfg.bias_correction.method != "none" else 1)
    if n_controls < max(need, 10) and cfg.cv.scheme == "kfold":
        raise GroupLevelError(
            f"{n_controls} controls are too few for {cfg.cv.n_splits} outer × {cfg.cv.inner_splits} inner "
            f"folds; need at least {max(need, 10)}. Add controls or lower group.cv.n_splits / inner_splits"
        )
    if folds is None:
        folds = assign_folds(parts, train=controls, n_splits=cfg.cv.n_splits, scheme=cfg.cv.scheme,
                             seed=cfg.cv.seed)
    folds = np.asarray(folds, dtype=int)
    if folds.shape != (len(parts),) or (folds[controls] < 0).any() or (folds[~controls] >= 0).any():
        raise GroupLevelError("folds: expected one fold per participant, >= 0 for every control and "
                              "-1 for everyone else (patients are never trained on)")
    runs = {}
    cache = volume_cache(cohort, list(cohort.inputs), cfg.cache_maps_gb, mode=cfg.volume_cache)
    names = list(models or cfg.models)
    with progress("training", len(names) * (int(folds.max()) + 1), log=logger) as task:
        for name in names:
            runs[name] = _cross_validate_model(name, cohort, folds, cfg, device, cache)
            task.describe("training")
    settings = {"n_splits": int(folds.max()) + 1, "scheme": cfg.cv.scheme, "seed": cfg.cv.seed,
                "inner_splits": cfg.cv.inner_splits, "n_controls": n_controls,
                "n_others": int((~controls).sum())}
    return CVResult(folds=pd.Series(folds, index=parts.index, name="fold"), runs=runs, settings=settings)


def _cross_validate_model(name, cohort, folds, cfg, device, cache) -> ModelRun:
    parts = cohort.participants
    mods = model_modalities(name, cohort)
    missing = [m for m in mods if m not in cohort.inputs]
    if missing:
        raise GroupLevelError(f"model {name} needs modality {', '.join(missing)}, which the cohort lacks")
    # With group.missing_modality "available", a model sees the participants that have
    # every modality it uses; the others get no prediction from it.
    usable = parts["modalities"].map(lambda s, mods=mods: set(mods) <= set(str(s).split("+")))
    usable = usable.to_numpy(dtype=bool)
    sub = cohort if usable.all() else cohort.subset(parts.index[usable])
    t0 = time.perf_counter()
    run = _run_model(name, sub, folds[usable], cfg, mods, dict(cfg.model_params.get(name, {})), device,
                     cache, attributions=cfg.attributions and name == cfg.primary_model,
                     selection=name == cfg.primary_model)
    logger.debug("%s cross-validated in %.1f s", name, time.perf_counter() - t0)
    return run
