"""From out-of-sample predictions to the group level's tables: predictions, metrics, groups, PID.

Every number comes from :mod:`brainage.stats`. Accuracy is reported on
uncorrected out-of-sample predictions of controls, pooled and per fold, with
bootstrap intervals; corrected metrics follow under a key that says they are
not accuracy (the correction uses chronological age).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..exceptions import RankDeficientDesignError, StatsInputError
from ..stats.atoms import pid_summary
from ..stats.groups import compare_groups
from ..stats.metrics import bootstrap_metrics, brain_age_metrics
from ..stats.sites import per_site

logger = logging.getLogger(__name__)

__all__ = ["groups_table", "held_out_pid", "metrics_report", "pid_report", "predictions_table"]

_ID_COLUMNS = ["participant_id", "session", "age", "sex", "site", "group"]
_GROUP_ORDER = ["scope", "group", "n", "mean_gap", "se", "ci_low", "ci_high", "cohens_d", "d_ci_low",
                "d_ci_high", "p", "raw_mean_gap", "reference_mean_gap", "model", "dropped_covariates",
                "tau2", "i2", "q", "q_p", "k_sites", "note"]
NOT_ACCURACY = ("Metrics of bias-corrected predictions use each participant's chronological age; "
                "they show that the gap no longer depends on age and are not accuracy "
                "(de Lange et al. 2022). Quote the uncorrected metrics.")


def predictions_table(participants: pd.DataFrame, runs: dict) -> pd.DataFrame:
    """One row per participant × model, the columns of ``predictions.tsv``.

    Parameters
    ----------
    participants : pandas.DataFrame
        ``CohortData.participants``.
    runs : dict
        Model name → an object with a ``predictions`` frame indexed by key
        (``fold``, ``n_models``, ``predicted_age``, ``predicted_age_corrected``,
        ``predicted_age_<modality>``).

    Returns
    -------
    pandas.DataFrame
    """
    frames = []
    for name, run in runs.items():
        p = run.predictions
        base = participants.loc[p.index, _ID_COLUMNS].copy()
        base["fold"] = p["fold"].to_numpy()
        base["n_models"] = p["n_models"].to_numpy()
        base["model"] = name
        base["predicted_age"] = p["predicted_age"].to_numpy()
        base["gap"] = base["predicted_age"] - base["age"]
        base["predicted_age_corrected"] = p["predicted_age_corrected"].to_numpy()
        base["gap_corrected"] = base["predicted_age_corrected"] - base["age"]
        for c in p.columns:
            if c.startswith("predicted_age_") and c != "predicted_age_corrected":
                base[c] = p[c].to_numpy()
        base["is_control"] = participants.loc[p.index, "is_control"].to_numpy()
        frames.append(base)
    return pd.concat(frames, ignore_index=True)


def _metrics(age, pred, *, boot: bool, seed: int) -> dict:
    try:
        return (bootstrap_metrics(age, pred, n_boot=2000, seed=seed) if boot
                else brain_age_metrics(age, pred))
    except StatsInputError as exc:
        return {"n": len(age), "error": str(exc)}


def metrics_report(table: pd.DataFrame, runs: dict, *, seed: int = 0) -> dict:
    """Per model: uncorrected accuracy (pooled with intervals, per fold), then corrected, then cost.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`predictions_table` output.
    runs : dict
        Model name → run (``fit_seconds``, ``predict_seconds_per_participant``).
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    dict
        ``{model: {"controls": {"uncorrected": …, "per_fold": […], "per_modality": {…},
        "corrected_not_accuracy": …}, "cost": {…}}}``.
    """
    out = {}
    for name, run in runs.items():
        t = table[(table["model"] == name) & table["is_control"]]
        folds = []
        for k, f in t.groupby("fold"):
            fold = k if isinstance(k, str) else int(k)
            folds.append({"fold": fold, **_metrics(f["age"], f["predicted_age"], boot=False, seed=seed)})
        per_modality = {
            c.removeprefix("predicted_age_"): _metrics(t["age"], t[c], boot=False, seed=seed)
            for c in t.columns
            if c.startswith("predicted_age_") and c != "predicted_age_corrected" and t[c].notna().all()
        }
        out[name] = {
            "controls": {
                "uncorrected": _metrics(t["age"], t["predicted_age"], boot=True, seed=seed),
                "per_fold": folds,
                "per_modality": per_modality,
                "corrected_not_accuracy": _metrics(t["age"], t["predicted_age_corrected"], boot=False,
                                                   seed=seed),
            },
            "cost": {"fit_seconds": round(float(run.fit_seconds), 3),
                     "predict_seconds_per_participant": float(run.predict_seconds_per_participant)},
        }
    return out


def groups_table(primary: pd.DataFrame, *, reference) -> pd.DataFrame:
    """``compare_groups`` on all participants, then per site with the random-effects pooling.

    Parameters
    ----------
    primary : pandas.DataFrame
        Rows of :func:`predictions_table` for the primary model.
    reference : sequence of str
        The control labels present in the cohort.

    Returns
    -------
    pandas.DataFrame
        The rows of ``groups.tsv`` (empty, with a note row, when there is no
        group besides the controls).
    """
    rows = []
    others = primary.loc[~primary["is_control"], "group"].unique().tolist()
    if not others:
        return pd.DataFrame([{"scope": "all", "note": "no participants outside the control group"}],
                            columns=_GROUP_ORDER)
    table = primary[["gap_corrected", "group", "age", "sex", "site"]]
    rows.append(_overall(table, tuple(reference)))
    if primary["site"].nunique() > 1:
        try:
            sites = per_site(table, reference=tuple(reference))
            rows.append(sites.sites.assign(scope="site " + sites.sites["site"].astype(str)))
            pooled = sites.pooled.rename(columns={"estimate": "mean_gap"}).assign(scope="pooled")
            rows.append(pooled)
        except StatsInputError as exc:
            rows.append(pd.DataFrame([{"scope": "per site", "note": str(exc)}]))
    out = pd.concat(rows, ignore_index=True).reindex(columns=_GROUP_ORDER)
    for col in ("n", "k_sites"):  # counts, shown without a decimal point next to n/a rows
        out[col] = pd.to_numeric(out[col], errors="coerce").round().astype("Int64")
    return out


def _overall(table: pd.DataFrame, reference: tuple) -> pd.DataFrame:
    """Compare groups on all participants; leave out a covariate confounded with group, and say so.

    With covariates ``age, age², sex, site``, a design where site or sex is confounded with
    group (every patient from one site) cannot be fitted; the comparison is then repeated
    without site, then without sex, and the row's note names what was left out.
    """
    attempts = [("age", "age2", "sex", "site"), ("age", "age2", "sex"), ("age", "age2")]
    first_error = None
    for covariates in attempts:
        try:
            result = compare_groups(table, reference=reference, covariates=covariates)
        except RankDeficientDesignError as exc:
            first_error = first_error or exc
            continue
        except StatsInputError as exc:
            return pd.DataFrame([{"scope": "all", "note": str(exc)}])
        note = ""
        if first_error is not None:
            left_out = sorted(set(attempts[0]) - set(covariates))
            note = (f"{', '.join(left_out)} left out: confounded with group or another covariate "
                    "(the full design was rank-deficient)")
        return result.assign(scope="all", note=note)
    return pd.DataFrame([{"scope": "all", "note": str(first_error)}])


def held_out_pid(run, participants: pd.DataFrame, *, n_boot: int = 2000) -> dict | None:
    """PID atoms of the controls' age with respect to the out-of-fold per-modality predictions.

    Each control's ``predicted_age_<modality>`` comes from the fold model that did not train on
    them (PIDReg predicting from one modality, the other latents at their training means), so
    pooling every control gives one out-of-sample estimate on the whole sample, with a
    bootstrap interval over participants. The sources are one number per modality, so the
    atoms are a lower bound of what the multivariate latents carry (data processing).

    Returns None when the run has no per-modality predictions or fewer than 20 controls.
    """
    from ..pid import gaussian_pid, inverse_normal_transform

    cols = [c for c in run.predictions.columns
            if c.startswith("predicted_age_") and c != "predicted_age_corrected"]
    if len(cols) != 2:
        return None
    controls = participants.index[participants["is_control"].to_numpy(bool)]
    keys = [k for k in controls if k in run.predictions.index]
    frame = run.predictions.loc[keys, cols].dropna()
    if len(frame) < 20:
        return None
    age = participants.loc[frame.index, "age"].to_numpy(float)
    z = [inverse_normal_transform(frame[c].to_numpy(float)) for c in cols]
    res = gaussian_pid(inverse_normal_transform(age), z[0], z[1], bias_correction=True, n_boot=n_boot,
                       random_state=0)
    out = {"pair": "|".join(c.removeprefix("predicted_age_") for c in cols), "n": len(frame)}
    for atom in ("U1", "U2", "R", "S", "I1", "I2", "I12"):
        out[atom] = float(getattr(res, atom))
        ci = (res.ci or {}).get(atom)
        if ci is not None:
            out[f"{atom}_ci_low"], out[f"{atom}_ci_high"] = float(ci[0]), float(ci[1])
    return out


def pid_report(run, participants: pd.DataFrame | None = None) -> dict:
    """PID atoms per fold with their summary, fusion weights and held-out PID (bits)."""
    per_fold = []
    for info in run.folds:
        if "pid" not in info:
            continue
        for pair, atoms in info["pid"].items():
            per_fold.append({"fold": info["fold"], "pair": pair, **atoms})
    unavailable = [{"fold": i["fold"], "pair": pair, "reason": reason}
                   for i in run.folds for pair, reason in i.get("pid_unavailable", {}).items()]
    if not per_fold:
        if unavailable:
            return {"model": run.name, "available": False, "unavailable": unavailable,
                    "note": f"{run.name}'s PID atoms could not be estimated in any fold: "
                            f"{unavailable[0]['reason']}"}
        return {"model": run.name, "available": False,
                "note": f"{run.name} has no PID atoms (only PIDReg models do)"}
    frame = pd.DataFrame(per_fold)
    summary = {pair: pid_summary(f.drop(columns=["fold", "pair"]).to_dict("records"), n_boot=2000)
               for pair, f in frame.groupby("pair")}
    return {
        "model": run.name,
        "available": True,
        "units": "bits",
        "held_out": held_out_pid(run, participants) if participants is not None else None,
        "per_fold": per_fold,
        "unavailable": unavailable,
        "summary": summary,
        "fusion_weights": [{"fold": i["fold"], **i.get("fusion_weights", {})} for i in run.folds],
        "latent_gaussianity": [{"fold": i["fold"], **i["gaussianity"]} for i in run.folds
                               if i.get("gaussianity")],
        "held_out_pid_score": [{"fold": i["fold"], "score": _pid_scores(i.get("pid_score"))}
                               for i in run.folds],
        "note": ("held_out: atoms of the controls' age with respect to the out-of-fold "
                 "predictions from each modality alone, pooled over folds (every control "
                 "predicted by a model that did not see them), with a bootstrap 95 % interval "
                 "over participants; it is the out-of-sample estimate to quote. per_fold and "
                 "summary: atoms of each fold model's latents, estimated on its training "
                 "participants (in sample: with few of them they overestimate the information); "
                 "their interval is across folds, which share training participants, so it shows "
                 "stability, not sampling uncertainty. latent_gaussianity: per fold and modality, "
                 "how Gaussian the training latents are (Shapiro–Wilk W, Mardia's kurtosis ratio), "
                 "which the closed-form PID assumes. held_out_pid_score: each fold model's "
                 "latents on its held-out controls (few per fold, so noisy). docs/stats.md, "
                 "docs/pid.md."),
    }


def _pid_scores(score):
    """``{pair: PIDResult}`` as ``{pair: {atom: bits, ..., n, bias_corrected}}`` (None stays None)."""
    if not score:
        return score
    return {pair: ({**r.as_dict(), "n": r.n, "bias_corrected": bool(r.bias_corrected)}
                   if hasattr(r, "as_dict") else r) for pair, r in score.items()}


def age_summary(participants: pd.DataFrame) -> dict:
    """Cohort description for metrics.json."""
    age = participants["age"].to_numpy(float)
    return {
        "n": len(participants),
        "n_controls": int(participants["is_control"].sum()),
        "age_min": float(np.min(age)), "age_max": float(np.max(age)),
        "age_mean": float(np.mean(age)),
        "groups": participants["group"].value_counts().to_dict(),
        "sites": participants["site"].value_counts().to_dict(),
        "sex": participants["sex"].astype(str).value_counts().to_dict(),
    }
