"""Modality selection, measured: the subset PIDReg's fusion weights recommend, and what it costs.

A fitted :class:`~brainage.estimators.regressor.PIDRegressor` fuses one term per modality
and one joint (synergy) term per pair, with weights derived from the PID of the target
(``docs/pidreg.md``). This module turns the weights of the cross-validation's fold models
into a recommended subset of modalities (:func:`recommend_subset`) and measures, for each
single modality, for that subset and for the full model:

* the out-of-fold accuracy of the controls' **uncorrected** predictions: the same fold
  models restricted to the subset (``predict(X, modalities=subset)``, a left-out latent at
  its training mean), not models retrained on the subset;
* the inference time per participant with the subset (the fold's feature transforms of the
  kept modalities plus the network), from :func:`subset_inference` inside each fold;
* the participant-level preprocessing time the subset saves per participant: the recorded
  ``seconds`` of the stages no kept modality needs, read from the participant provenance
  records ``sub-*/log/sub-*_desc-<stage>_provenance.json``
  (:func:`read_stage_seconds`), with each stage's requirements taken from the record's
  ``upstream`` (so the functional stage keeps the structural one when it needs it, and
  does not under ``--derivatives``), median over the cohort.

The rule (:data:`COVERAGE`): a subset *covers* the mean over fold models of the weight of
each kept modality plus that of each joint term whose two modalities are both kept; every
fold's weights sum to one, so the full set covers 1. The recommended subset is the one with
the fewest modalities that covers at least ``COVERAGE`` (0.9), and among subsets of that size
the one that covers most. :func:`modality_selection_report` assembles the table of
``metrics.json`` (``models[<primary>]["modality_selection"]``). See ``docs/group.md``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.exceptions import StatsInputError, UsageError

__all__ = [
    "COVERAGE",
    "MAX_EXHAUSTIVE",
    "NOTE",
    "TIMING_REPEATS",
    "combine_subset_folds",
    "coverage",
    "mean_fusion_weights",
    "modality_selection_report",
    "preprocessing_saved",
    "read_stage_seconds",
    "recommend_subset",
    "subset_inference",
    "subset_key",
    "subsets_to_evaluate",
]

logger = logging.getLogger(__name__)

#: Fraction of the mean fusion weight the recommended subset must cover.
COVERAGE = 0.9
#: Up to this many modalities every subset is predicted out of fold (2^4 − 1 = 15 subsets);
#: above, only the single modalities and the full set are.
MAX_EXHAUSTIVE = 4
#: Timed predictions per subset and fold with tabular inputs (the fastest counts).
TIMING_REPEATS = 5
#: Joins the two modalities of a joint (synergy) term in the fusion weights, ``"anat|func"``.
JOINT = "|"

NOTE = ("Modality selection, measured. Accuracy: the controls' uncorrected out-of-fold "
        "predictions (each control predicted by the fold model that did not train on them), "
        "with 95 % bootstrap intervals over participants (the same resamples for every row, "
        "seed as controls.uncorrected). Every row is the same fitted PIDReg fold models "
        "restricted to a subset of modalities (a left-out modality's latent at its training "
        "mean); it is not a model retrained on that subset, which could do better or worse. "
        "inference_seconds_per_participant: the fold models' feature transforms of the kept "
        "modalities plus the network, per participant predicted, on the training machine. "
        "preprocessing_seconds_saved_per_participant: the median over the cohort of the "
        "recorded participant-stage seconds of the stages no kept modality needs (a stage's "
        "needs are read from its provenance record); dropping the functional stage means not "
        "acquiring or preprocessing fMRI at all, which also saves its scanner time (not "
        "counted here). The recommended subset follows from the fusion weights (rule), not from "
        "the accuracy below; its accuracy is measured, and may be worse than the full model's.")


def subset_key(modalities: Sequence[str]) -> str:
    """Name of a subset of modalities in tables: ``"anat+func"``.

    Examples
    --------
    >>> subset_key(["anat", "func"])
    'anat+func'
    """
    return "+".join(modalities)


def subsets_to_evaluate(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Return the subsets predicted out of fold: all of them up to :data:`MAX_EXHAUSTIVE` modalities.

    Ordered by size, then by the order of ``modalities``; above ``MAX_EXHAUSTIVE``
    modalities, only the single ones and the full set.

    Examples
    --------
    >>> subsets_to_evaluate(["anat", "func"])
    [('anat',), ('func',), ('anat', 'func')]
    """
    mods = tuple(modalities)
    if len(mods) > MAX_EXHAUSTIVE:
        return [(m,) for m in mods] + [mods]
    return [s for k in range(1, len(mods) + 1) for s in itertools.combinations(mods, k)]


def mean_fusion_weights(fold_weights: Sequence[Mapping]) -> dict[str, float]:
    """Mean over fold models of every fusion term's weight (``fold`` entries are ignored).

    A term missing from a fold counts as 0 in that fold.

    Examples
    --------
    >>> mean_fusion_weights([{"fold": 0, "anat": 0.8, "func": 0.2, "anat|func": 0.0},
    ...                      {"fold": 1, "anat": 0.6, "func": 0.2, "anat|func": 0.2}])
    {'anat': 0.7, 'func': 0.2, 'anat|func': 0.1}
    """
    folds = [{k: float(v) for k, v in w.items() if k != "fold"} for w in fold_weights]
    folds = [w for w in folds if w]
    if not folds:
        return {}
    terms = list(dict.fromkeys(k for w in folds for k in w))
    return {t: round(float(np.mean([w.get(t, 0.0) for w in folds])), 12) for t in terms}


def coverage(weights: Mapping[str, float], subset: Sequence[str]) -> float:
    """Weight a subset covers: its modalities' terms, and each joint term with both kept.

    Examples
    --------
    >>> w = {"anat": 0.7, "func": 0.2, "anat|func": 0.1}
    >>> coverage(w, ["anat"]), coverage(w, ["anat", "func"])
    (0.7, 1.0)
    """
    kept = set(subset)
    total = 0.0
    for term, value in weights.items():
        parts = term.split(JOINT)
        if set(parts) <= kept:
            total += float(value)
    return round(total, 12)


def recommend_subset(weights: Mapping[str, float], modalities: Sequence[str], *,
                     threshold: float = COVERAGE) -> tuple[list[str], float]:
    """Return the fewest modalities whose fusion weight covers ``threshold`` (the module docstring).

    Parameters
    ----------
    weights : mapping
        Mean fusion weights (:func:`mean_fusion_weights`): modality names and joint terms
        ``"a|b"``.
    modalities : sequence of str
        The model's modalities, in order.
    threshold : float
        Fraction in (0, 1] of the weight to cover.

    Returns
    -------
    subset : list of str
        In the order of ``modalities``.
    covered : float
        :func:`coverage` of the subset.

    Raises
    ------
    UsageError
        A threshold outside (0, 1], no weights, or weights naming modalities the model
        does not have.

    Examples
    --------
    >>> recommend_subset({"anat": 0.93, "func": 0.05, "anat|func": 0.02}, ["anat", "func"])
    (['anat'], 0.93)
    >>> recommend_subset({"anat": 0.72, "func": 0.2, "anat|func": 0.08}, ["anat", "func"])
    (['anat', 'func'], 1.0)
    """
    if not 0.0 < threshold <= 1.0:
        raise UsageError(f"threshold: expected a fraction in (0, 1], got {threshold!r}")
    mods = list(modalities)
    if not weights or not mods:
        raise UsageError("recommend_subset needs the fusion weights of a PIDReg model and its modalities")
    unknown = sorted({p for t in weights for p in t.split(JOINT)} - set(mods))
    if unknown:
        raise UsageError(f"fusion weights name {unknown}, which are not modalities of the model {mods}")
    total = coverage(weights, mods)
    target = threshold * total if total > 0 else 0.0  # weights that do not sum to 1: a fraction of their sum
    best = None
    for k in range(1, len(mods) + 1):
        for subset in itertools.combinations(mods, k):
            c = coverage(weights, subset)
            if c >= target - 1e-9 and (best is None or c > best[1]):
                best = (list(subset), c)
        if best is not None:
            return best
    return mods, total  # pragma: no cover - the full set always covers the target


# ------------------------------------------------------------------ inside each fold
def subset_inference(estimator, transforms, cohort, keys, modalities, cache=None) -> dict | None:
    """Predict ``keys`` from every subset of :func:`subsets_to_evaluate`, timed.

    Each subset is timed from the fold's feature transforms of its modalities
    (``transforms.inputs``) to the network's output (``predict(X, modalities=subset)``).
    With tabular inputs the fastest of :data:`TIMING_REPEATS` runs counts.

    Parameters
    ----------
    estimator : fitted estimator
        A fold model; anything but a PIDRegressor returns None.
    transforms : brainage.group.transforms.FeatureTransforms
        The fold's fitted transforms.
    cohort : brainage.cohort.data.CohortData
    keys : sequence
        Participants to predict (the fold's held-out controls and the others).
    modalities : sequence of str
        The model's modalities.
    cache : dict, optional
        Volume cache of the cohort's maps.

    Returns
    -------
    dict or None
        ``{"predictions": DataFrame (index keys, one column per subset key), "seconds":
        {subset key: seconds}, "n": len(keys)}``.
    """
    from brainage.estimators.regressor import PIDRegressor

    if not isinstance(estimator, PIDRegressor):
        return None
    keys = list(keys)
    preds, seconds = {}, {}
    # sub-millisecond timings of tabular inputs: the best of a few repeats, so that the first
    # subset does not pay for warming up; maps (volumes read from disk) are timed once
    repeats = TIMING_REPEATS if all(cohort.inputs[m].features is not None for m in modalities) else 1
    for subset in subsets_to_evaluate(modalities):
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            X = transforms.inputs(cohort, keys, list(subset), cache)
            pred = estimator.predict(X, modalities=list(subset))
            best = min(best, time.perf_counter() - t0)
        seconds[subset_key(subset)] = best
        preds[subset_key(subset)] = np.asarray(pred, dtype=float)
    return {"predictions": pd.DataFrame(preds, index=pd.Index(keys, name="key")),
            "seconds": seconds, "n": len(keys)}


def combine_subset_folds(per_fold: Sequence[dict | None]) -> dict | None:
    """Pool :func:`subset_inference` over folds: out-of-fold predictions and seconds per participant.

    A participant predicted by several fold models (patients) gets the mean, as in
    ``predictions.tsv``; a control appears in one fold's targets only.
    """
    folds = [f for f in per_fold if f is not None]
    if not folds:
        return None
    frame = pd.concat([f["predictions"] for f in folds])
    preds = frame.groupby(level=0, sort=False).mean()
    n = sum(f["n"] for f in folds)
    seconds = {k: sum(f["seconds"][k] for f in folds) / max(n, 1) for k in folds[0]["seconds"]}
    return {"predictions": preds, "seconds_per_participant": seconds, "n_predicted": n}


# ------------------------------------------------------------------ participant provenance
def read_stage_seconds(output_dir, subjects: Sequence[str], stages: Sequence[str]) -> pd.DataFrame:
    """Read the recorded seconds of each participant × stage from the participant provenance records.

    Parameters
    ----------
    output_dir : path-like
        The derivatives root of the participant level.
    subjects : sequence of str
        Participant labels, with or without ``sub-``.
    stages : sequence of str
        Stage names (``"anat"``, ``"func"``).

    Returns
    -------
    pandas.DataFrame
        One row per record found with status ``done``: ``subject, stage, seconds,
        requires`` (the record's ``upstream`` stages, ``+``-joined). Missing or failed
        records give no row.
    """
    from brainage.provenance import read_record
    from brainage.stages import record_path

    rows = []
    for label in dict.fromkeys(str(s).removeprefix("sub-") for s in subjects):
        for stage in stages:
            rec = read_record(record_path(Path(output_dir), label, stage))
            if not rec or rec.get("status") != "done" or rec.get("seconds") is None:
                continue
            rows.append({"subject": label, "stage": stage, "seconds": float(rec["seconds"]),
                         "requires": "+".join(sorted((rec.get("upstream") or {}).keys()))})
    return pd.DataFrame(rows, columns=["subject", "stage", "seconds", "requires"])


def _closure(stages, requires: Mapping[str, set]) -> set:
    need, todo = set(), list(stages)
    while todo:
        s = todo.pop()
        if s not in need:
            need.add(s)
            todo += list(requires.get(s, ()))
    return need


def preprocessing_saved(records: pd.DataFrame, stages_of: Mapping[str, str],
                        subset: Sequence[str]) -> dict:
    """Participant-stage seconds per participant that a subset of modalities does not need.

    For each participant with a ``done`` record of every stage the full set of
    modalities needs: the sum of the ``seconds`` of the stages the full set needs and
    the subset does not (a stage's needs are its record's ``requires``, followed
    transitively). Median over those participants.

    Parameters
    ----------
    records : pandas.DataFrame
        :func:`read_stage_seconds`.
    stages_of : mapping
        Modality → the participant stage its input reads (``GroupInputConfig.stage``);
        every modality of the model.
    subset : sequence of str
        The kept modalities.

    Returns
    -------
    dict
        ``seconds_per_participant`` (median; None without records), ``stages_skipped``
        (the stages some participant skips, in ``stages_of`` order), ``n_participants``.

    Examples
    --------
    >>> rec = pd.DataFrame({"subject": ["01", "01"], "stage": ["anat", "func"],
    ...                     "seconds": [30.0, 12.0], "requires": ["", "anat"]})
    >>> stages = {"anat": "anat", "func": "func"}
    >>> preprocessing_saved(rec, stages, ["anat"])["seconds_per_participant"]
    12.0
    >>> preprocessing_saved(rec, stages, ["func"])["seconds_per_participant"]  # func needs anat
    0.0
    """
    unknown = sorted(set(subset) - set(stages_of))
    if unknown:
        raise UsageError(f"modalities {unknown} have no participant stage in {dict(stages_of)}")
    order = list(dict.fromkeys(stages_of.values()))
    saved, skipped = [], set()
    for _, rec in records.groupby("subject", sort=False):
        seconds = dict(zip(rec["stage"], rec["seconds"]))
        requires = {s: {r for r in str(q).split("+") if r} for s, q in zip(rec["stage"], rec["requires"])}
        full = _closure(order, requires)
        if not full <= set(seconds):
            continue
        drop = full - _closure({stages_of[m] for m in subset}, requires)
        skipped |= drop
        saved.append(sum(seconds[s] for s in drop))
    return {"seconds_per_participant": float(np.median(saved)) if saved else None,
            "stages_skipped": [s for s in [*order, *sorted(skipped - set(order))] if s in skipped],
            "n_participants": len(saved)}


# ------------------------------------------------------------------ the table
_KEEP = ("n", "mae", "mae_ci_low", "mae_ci_high", "r", "r_ci_low", "r_ci_high")


def _accuracy(age, pred, *, seed: int, n_boot: int) -> dict:
    from brainage.stats.metrics import bootstrap_metrics

    try:
        m = bootstrap_metrics(age, pred, n_boot=n_boot, seed=seed)
    except StatsInputError as exc:
        return {"n": len(age), "error": str(exc)}
    return {k: m[k] for k in _KEEP}


def _out_of_fold(run, subset: tuple, modalities: list) -> pd.Series | None:
    """Out-of-fold predictions of a subset: the columns of ``predictions.tsv`` where they exist."""
    if list(subset) == modalities:
        return run.predictions["predicted_age"]
    if len(subset) == 1 and f"predicted_age_{subset[0]}" in run.predictions:
        return run.predictions[f"predicted_age_{subset[0]}"]
    subsets = getattr(run, "modality_subsets", None) or {}
    frame = subsets.get("predictions")
    key = subset_key(subset)
    if frame is None or key not in frame:
        return None
    return frame[key]


def modality_selection_report(run, participants: pd.DataFrame, output_dir, stages_of: Mapping[str, str],
                              *, threshold: float = COVERAGE, seed: int = 0,
                              n_boot: int = 2000) -> dict | None:
    """Build the modality-selection table of ``metrics.json`` for a cross-validated PIDReg.

    Parameters
    ----------
    run : brainage.group.cv.ModelRun
        The primary model's run: ``folds`` with ``fusion_weights``, out-of-fold
        ``predictions`` and ``modality_subsets`` (:func:`combine_subset_folds`).
    participants : pandas.DataFrame
        ``CohortData.participants`` (``age``, ``is_control``, ``participant_id``).
    output_dir : path-like
        The derivatives root holding the participant provenance records.
    stages_of : mapping
        Modality → participant stage (every modality of the model, in its order).
    threshold : float
        :func:`recommend_subset`'s coverage.
    seed, n_boot : int
        Bootstrap of the accuracy (the seed of ``controls.uncorrected`` gives the same
        resamples as there).

    Returns
    -------
    dict or None
        None when the run has no fusion weights (not a PIDReg). Otherwise ``rule``,
        ``threshold``, ``mean_fusion_weights`` and their ``fusion_weights_range`` over fold
        models, ``recommended``, ``stage_seconds_median``,
        ``rows`` (one per single modality, then the recommended subset, then the full
        model: ``row``, ``modalities``, ``subset``, ``fusion_weight_covered``,
        ``controls_uncorrected`` (n, MAE, r with intervals), ``mae_minus_full``,
        ``r_minus_full``, ``inference_seconds_per_participant``,
        ``preprocessing_seconds_saved_per_participant``, ``stages_skipped``) and ``note``.
    """
    per_fold = [f["fusion_weights"] for f in run.folds if f.get("fusion_weights")]
    weights = mean_fusion_weights(per_fold)
    if not weights:
        return None
    mods = list(stages_of)
    recommended, covered = recommend_subset(weights, mods, threshold=threshold)
    controls = participants.index[participants["is_control"].to_numpy(bool)]
    keys = [k for k in controls if k in run.predictions.index]
    age = participants.loc[keys, "age"].to_numpy(float)
    # preprocessing costs the same whatever the group: every participant the model predicted
    cohort = [k for k in participants.index if k in run.predictions.index]
    records = read_stage_seconds(output_dir, participants.loc[cohort, "participant_id"].tolist()
                                 if "participant_id" in participants else cohort,
                                 list(dict.fromkeys(stages_of.values())))
    if records.empty:
        logger.warning("modality selection: no participant provenance records with timings under %s; "
                       "the preprocessing time saved is not reported", output_dir)
    subsets = getattr(run, "modality_subsets", None) or {}
    seconds = subsets.get("seconds_per_participant", {})
    plan = [("single", (m,)) for m in mods] + [("recommended", tuple(recommended)), ("full", tuple(mods))]
    rows = []
    for kind, subset in plan:
        pred = _out_of_fold(run, subset, mods)
        acc = ({"n": len(keys), "error": f"no out-of-fold predictions from {subset_key(subset)}"}
               if pred is None else _accuracy(age, pred.loc[keys].to_numpy(float), seed=seed, n_boot=n_boot))
        saved = preprocessing_saved(records, stages_of, subset)
        rows.append({
            "row": kind,
            "modalities": list(subset),
            "subset": subset_key(subset),
            "fusion_weight_covered": coverage(weights, subset),
            "controls_uncorrected": acc,
            "inference_seconds_per_participant": seconds.get(subset_key(subset)),
            "preprocessing_seconds_saved_per_participant": saved["seconds_per_participant"],
            "stages_skipped": saved["stages_skipped"],
            "n_participants_timed": saved["n_participants"],
        })
    full = rows[-1]["controls_uncorrected"]
    for row in rows:
        acc = row["controls_uncorrected"]
        for metric in ("mae", "r"):
            ok = metric in acc and metric in full
            row[f"{metric}_minus_full"] = float(acc[metric] - full[metric]) if ok else None
    stage_median = (records.groupby("stage", sort=False)["seconds"].median().round(3).to_dict()
                    if not records.empty else {})
    return {
        "rule": (f"the fewest modalities whose mean fusion weight over the {len(run.folds)} fold models, "
                 "plus the mean weight of every joint (synergy) term whose two modalities are both kept, "
                 f"covers at least {threshold:g} of the total (each fold's weights sum to 1); among "
                 "subsets of that size, the one covering most"),
        "threshold": float(threshold),
        "mean_fusion_weights": weights,
        "fusion_weights_range": {t: [min(float(w.get(t, 0.0)) for w in per_fold),
                                     max(float(w.get(t, 0.0)) for w in per_fold)] for t in weights},
        "recommended": list(recommended),
        "recommended_covers": covered,
        "stage_seconds_median": stage_median,
        "rows": rows,
        "note": NOTE,
    }
