"""Figures of the group comparison, the literature and the model: forest plots, MAE, PID atoms.

File in, SVG out, like :mod:`brainage.reporting.figures` (whose helpers they use and
which re-exports them): each function takes a table or dict of the group level's
outputs and a path, writes the SVG atomically and returns the path, or raises
:class:`~brainage.exceptions.ReportFigureError` naming the figure and what is missing.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Polygon
from matplotlib.transforms import blended_transform_factory

from ..exceptions import ReportFigureError
from .figures import (
    _PALETTE,
    HIGHLIGHT,
    _finite,
    _groups,
    _new_figure,
    _order,
    _require,
    _save,
    _strip,
    _svg_figure,
    _term_label,
    group_palette,
)

__all__ = ["contributions_by_group", "literature_comparison", "model_accuracy", "pid_atoms", "site_forest"]


_SUMMARY_SCOPES = {"pooled": "pooled across sites", "all": "all participants"}


def _forest_rows(groups: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered per group: sites (sorted), then pooled, then all."""
    frame = groups.copy()
    frame["scope"] = frame["scope"].astype(str)
    frame["_group"] = _groups(frame)
    rank = frame["scope"].map({"pooled": 1, "all": 2}).fillna(0)
    frame = frame.assign(_rank=rank).sort_values(["_group", "_rank", "scope"], kind="stable")
    return frame.reset_index(drop=True)


def _forest_label(row) -> str:
    scope = _SUMMARY_SCOPES.get(row["scope"], row["scope"].removeprefix("site "))
    n = pd.to_numeric(pd.Series([row.get("n")]), errors="coerce").iloc[0]
    return f"{row['_group']}: {scope}" + (f" (n = {int(n)})" if np.isfinite(n) else "")


def _estimate_text(mean: float, low: float, high: float) -> str:
    if not np.isfinite(low) or not np.isfinite(high):
        return f"{mean:+.2f}"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def _no_estimate(row) -> str:
    note = row.get("note")
    if isinstance(note, str) and note.strip():
        return "no estimate: " + textwrap.shorten(note.strip(), 48, placeholder="…")
    return "no estimate"


def _draw_interval(ax, y, mean, low, high, color, *, summary: bool) -> None:
    if summary and np.isfinite(low) and np.isfinite(high):
        ax.add_patch(Polygon([(low, y), (mean, y + 0.28), (high, y), (mean, y - 0.28)],
                             closed=True, facecolor=color, edgecolor="black", linewidth=0.6, zorder=3))
        return
    if np.isfinite(low) and np.isfinite(high):
        ax.plot([low, high], [y, y], color=color, linewidth=1.4, zorder=2)
    ax.plot([mean], [y], marker="D" if summary else "s", markersize=7 if summary else 5.5,
            color=color, markeredgecolor="black", markeredgewidth=0.5, zorder=3)


@_svg_figure
def site_forest(groups: pd.DataFrame, path) -> Path:
    """Forest plot of each group's corrected gap vs controls, per site and overall.

    Parameters
    ----------
    groups : pandas.DataFrame
        Rows of ``groups.tsv``: ``scope`` (``"all"``, ``"site <name>"`` or
        ``"pooled"``), ``group``, ``mean_gap``, ``ci_low``, ``ci_high``; ``n``
        and ``note`` (why there is no estimate) are used when present. Rows
        with a NaN ``mean_gap`` are listed as "no estimate".
    path : path-like
        Destination ``.svg``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        A column is missing or there are no rows.
    """
    name = "site_forest"
    _require(groups, ("scope", "group", "mean_gap", "ci_low", "ci_high"), name, "groups")
    frame = _forest_rows(groups)
    for col in ("mean_gap", "ci_low", "ci_high"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    palette = group_palette(list(frame["_group"]), ())
    ys, y, previous = [], 0.0, None
    for g in frame["_group"]:
        y -= 1.6 if previous is not None and g != previous else 1.0
        ys.append(y)
        previous = g
    fig = _new_figure(7.2, 1.0 + 0.32 * (len(frame) + 1))
    ax = fig.subplots()
    ax.axvline(0, color="black", linewidth=0.7, zorder=1)
    right = blended_transform_factory(ax.transAxes, ax.transData)
    for yy, (_, row) in zip(ys, frame.iterrows()):
        summary = row["scope"] in _SUMMARY_SCOPES
        if np.isfinite(row["mean_gap"]):
            _draw_interval(ax, yy, row["mean_gap"], row["ci_low"], row["ci_high"],
                           palette[row["_group"]], summary=summary)
            text = _estimate_text(row["mean_gap"], row["ci_low"], row["ci_high"])
        else:
            text = _no_estimate(row)
        ax.text(1.03, yy, text, transform=right, va="center", ha="left", fontsize=8,
                fontweight="bold" if summary else "normal", color="black" if np.isfinite(row["mean_gap"])
                else "#666666")
    ax.text(1.03, 0, "estimate [95 % CI] (years)", transform=right, va="center", ha="left", fontsize=8)
    ax.set_yticks(ys, labels=[_forest_label(row) for _, row in frame.iterrows()])
    for tick, scope in zip(ax.get_yticklabels(), frame["scope"]):
        tick.set_fontweight("bold" if scope in _SUMMARY_SCOPES else "normal")
    ax.set_ylim(min(ys) - 0.8, 0.6)
    finite = frame[["mean_gap", "ci_low", "ci_high"]].to_numpy()
    finite = finite[np.isfinite(finite)]
    span = np.abs(finite).max() * 1.1 if finite.size else 1.0
    ax.set_xlim(min(-span, finite.min(initial=0) - 0.5), max(span, finite.max(initial=0) + 0.5))
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel("Corrected brain-age gap vs controls (years)")
    return _save(fig, path)


@_svg_figure
def model_accuracy(metrics: dict, path) -> Path:
    """Uncorrected MAE of the controls with its CI, one bar per model, primary highlighted.

    Parameters
    ----------
    metrics : dict
        Content of ``metrics.json``: ``metrics["models"][name]["controls"]["uncorrected"]``
        holds ``mae``, ``mae_ci_low``, ``mae_ci_high``, ``r``, ``n``;
        ``metrics["primary_model"]`` names the model to highlight. Models
        without ``"controls"`` are skipped.
    path : path-like
        Destination ``.svg``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        No model has a finite uncorrected MAE of the controls.
    """
    models = metrics.get("models") if isinstance(metrics, dict) else None
    if not isinstance(models, dict) or not models:
        raise ReportFigureError("model_accuracy: input 'metrics' has no 'models' mapping; nothing to draw")
    rows = []
    for model, entry in models.items():
        unc = ((entry or {}).get("controls") or {}).get("uncorrected") or {}
        mae = unc.get("mae")
        if mae is not None and np.isfinite(float(mae)):
            rows.append({"model": str(model), **{k: float(unc.get(k) if unc.get(k) is not None else np.nan)
                         for k in ("mae", "mae_ci_low", "mae_ci_high", "r", "n")}})
    if not rows:
        raise ReportFigureError(
            "model_accuracy: input 'metrics' has no model with "
            "models[<name>]['controls']['uncorrected']['mae']; nothing to draw"
        )
    frame = pd.DataFrame(rows).sort_values("mae", ascending=False, kind="stable").reset_index(drop=True)
    primary = metrics.get("primary_model")
    fig = _new_figure(6.0, 0.9 + 0.38 * len(frame))
    ax = fig.subplots()
    colors = [HIGHLIGHT if m == primary else "#b0b0b0" for m in frame["model"]]
    low = (frame["mae"] - frame["mae_ci_low"]).clip(lower=0).fillna(0)
    high = (frame["mae_ci_high"] - frame["mae"]).clip(lower=0).fillna(0)
    ax.barh(range(len(frame)), frame["mae"], color=colors, height=0.6,
            xerr=[low, high], error_kw={"elinewidth": 1, "capsize": 3})
    top = np.nanmax(np.r_[frame["mae_ci_high"], frame["mae"]])
    for i, row in frame.iterrows():
        extra = ", ".join(f"{k} = {row[k]:.{2 if k == 'r' else 0}f}" for k in ("r", "n")
                          if np.isfinite(row[k]))
        ax.text(max(row["mae"] + high[i], row["mae"]) + 0.02 * top, i, f"{row['mae']:.2f} y" +
                (f" ({extra})" if extra else ""), va="center", fontsize=8)
    ax.set_yticks(range(len(frame)),
                  labels=[f"{m} (primary)" if m == primary else m for m in frame["model"]])
    for tick, m in zip(ax.get_yticklabels(), frame["model"]):
        tick.set_fontweight("bold" if m == primary else "normal")
    ax.set_xlim(0, top * 1.45)
    ax.set_xlabel("MAE of controls, uncorrected (years)")
    return _save(fig, path)


@_svg_figure
def literature_comparison(rows: pd.DataFrame, path) -> Path:
    """Compare the cohort's brain-age gaps with published ones (forest-like).

    Parameters
    ----------
    rows : pandas.DataFrame
        Columns ``label``, ``gap`` (years), ``source`` (``"cohort"`` or
        ``"published"``); ``ci_low``, ``ci_high`` (NaN: point only) and
        ``modality`` are used when present. Cohort rows come first.
    path : path-like
        Destination ``.svg``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        A column is missing or no gap is finite.
    """
    name = "literature_comparison"
    frame = _finite(_require(rows, ("label", "gap", "source"), name, "rows"), ("gap",), name, "rows")
    for col in ("ci_low", "ci_high"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce") if col in frame else np.nan
    cohort = frame["source"].astype(str).eq("cohort")
    frame = pd.concat([frame[cohort], frame[~cohort]]).reset_index(drop=True)
    cohort = frame["source"].astype(str).eq("cohort")
    has_modality = "modality" in frame
    # long condition, study and modality names wrap so that the axes keep their width
    labels = [textwrap.fill(f"{row['label']} ({row['modality']})" if has_modality
                            and isinstance(row["modality"], str) and row["modality"] else str(row["label"]),
                            36) for _, row in frame.iterrows()]
    lines = max(label.count("\n") + 1 for label in labels)
    step = max(1.0, 0.55 * lines)
    fig = _new_figure(7.2, 1.2 + 0.3 * step * len(frame))
    ax = fig.subplots()
    ax.axvline(0, color="black", linewidth=0.7, zorder=1)
    ys = -step * np.arange(len(frame), dtype=float)
    for y, is_cohort, (_, row) in zip(ys, cohort, frame.iterrows()):
        color = HIGHLIGHT if is_cohort else "#8c8c8c"
        _draw_interval(ax, y, row["gap"], row["ci_low"], row["ci_high"], color, summary=False)
        if is_cohort:
            ax.plot([row["gap"]], [y], marker="D", markersize=7, color=color, markeredgecolor="black",
                    markeredgewidth=0.5, zorder=4)
    ax.set_yticks(ys, labels=labels, fontsize=8 if lines > 1 else None)
    for tick, is_cohort in zip(ax.get_yticklabels(), cohort):
        tick.set_fontweight("bold" if is_cohort else "normal")
        tick.set_color(HIGHLIGHT if is_cohort else "black")
    ax.set_ylim(ys.min() - 0.7 * step, 0.7 * step)
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel("Brain-age gap (years)")
    # the estimates as right-hand tick labels, so that the layout makes room for them
    est = ax.twinx()
    est.set_ylim(ax.get_ylim())
    estimates = [_estimate_text(r["gap"], r["ci_low"], r["ci_high"]) for _, r in frame.iterrows()]
    est.set_yticks(ys, labels=estimates, fontsize=8)
    for tick, is_cohort in zip(est.get_yticklabels(), cohort):
        tick.set_color(HIGHLIGHT if is_cohort else "#595959")
    est.tick_params(axis="y", length=0)
    for side in ("left", "right", "top"):
        est.spines[side].set_visible(False)
    handles = [Line2D([], [], marker="D", color=HIGHLIGHT, linestyle="", label="this cohort"),
               Line2D([], [], marker="s", color="#8c8c8c", linestyle="", label="published")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2)
    return _save(fig, path)


@_svg_figure
def pid_atoms(
    held_out: dict, path, *, modalities=("anat", "func"), per_fold: list[dict] | None = None
) -> Path:
    """Partial information decomposition of the held-out predictions, in bits.

    Parameters
    ----------
    held_out : dict
        ``pid.json["held_out"]``: ``U1``, ``U2``, ``R``, ``S`` and, when
        available, ``<atom>_ci_low``/``<atom>_ci_high`` (error bars) and ``n``.
    path : path-like
        Destination ``.svg``.
    modalities : tuple of str
        Names of the first and second modality (``U1``, ``U2``).
    per_fold : list of dict, optional
        ``pid.json["per_fold"]`` (same atoms, training folds), drawn as points.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        An atom is missing or every atom is NaN.
    """
    atoms = ("U1", "U2", "R", "S")
    if not isinstance(held_out, dict):
        raise ReportFigureError(f"pid_atoms: input 'held_out' must be a dict; got {type(held_out).__name__}")
    missing = [a for a in atoms if a not in held_out]
    if missing:
        raise ReportFigureError(f"pid_atoms: input 'held_out' is missing atom(s) {', '.join(missing)}")
    value = np.array([np.nan if held_out[a] is None else float(held_out[a]) for a in atoms])
    if not np.isfinite(value).any():
        raise ReportFigureError("pid_atoms: input 'held_out' has no finite atom (U1, U2, R, S all NaN)")

    def bound(a, key, default):
        v = held_out.get(f"{a}_{key}")
        return default if v is None or not np.isfinite(float(v)) else float(v)

    low = np.array([max(0.0, v - bound(a, "ci_low", v)) for a, v in zip(atoms, value)])
    high = np.array([max(0.0, bound(a, "ci_high", v) - v) for a, v in zip(atoms, value)])
    labels = [f"Unique {modalities[0]}", f"Unique {modalities[1]}", "Redundant", "Synergy"]
    fig = _new_figure(4.8, 3.4)
    ax = fig.subplots()
    ax.axhline(0, color="black", linewidth=0.6)
    x = np.arange(4)
    ax.bar(x, np.nan_to_num(value), color=[_PALETTE[i] for i in (0, 1, 2, 4)], width=0.6,
           yerr=[low, high], error_kw={"elinewidth": 1, "capsize": 4}, label="held-out, 95 % CI")
    if per_fold:
        folds = np.array([[np.nan if f.get(a) is None else float(f[a]) for a in atoms] for f in per_fold])
        offsets = np.linspace(-0.15, 0.15, len(folds)) if len(folds) > 1 else np.zeros(1)
        for off, fold in zip(offsets, folds):
            ax.scatter(x + off, fold, s=12, color="black", zorder=4,
                       label="per fold (training)" if off == offsets[0] else None)
    ax.set_xticks(x, labels=labels)
    n = held_out.get("n")
    ax.set(ylabel="bits", title="Information about age" + (f" (held-out, n = {n})" if n else ""))
    fig.legend(loc="outside lower center", ncols=2)
    return _save(fig, path)


@_svg_figure
def contributions_by_group(contributions: pd.DataFrame, path, *, control_labels=("control",)) -> Path:
    """Each term's contribution to predicted age (Shapley values) by clinical group.

    Parameters
    ----------
    contributions : pandas.DataFrame
        ``contributions.tsv``: ``group`` and columns starting with ``shap_``
        (``shap_anat``, ``shap_func``, ``shap_anat|func`` …), in years.
    path : path-like
        Destination ``.svg``.
    control_labels : sequence of str
        Labels of the control group(s), drawn first.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        ``group`` or every ``shap_`` column is missing, or all values are NaN.
    """
    import seaborn as sns

    name = "contributions_by_group"
    _require(contributions, ("group",), name, "contributions")
    terms = [c for c in contributions.columns if str(c).startswith("shap_")]
    if not terms:
        raise ReportFigureError(
            f"{name}: input 'contributions' has no column starting with 'shap_' (found: "
            f"{', '.join(map(str, contributions.columns))})"
        )
    frame = contributions.assign(_group=_groups(contributions))
    long = frame.melt(id_vars="_group", value_vars=terms, var_name="term", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long[np.isfinite(long["value"])]
    if long.empty:
        raise ReportFigureError(f"{name}: input 'contributions' has only NaN in {', '.join(terms)}")
    long["term"] = long["term"].map(_term_label)
    order = _order(long["_group"], control_labels)
    palette = group_palette(order, control_labels)
    term_order = list(dict.fromkeys(map(_term_label, terms)))
    fig = _new_figure(1.8 + 0.5 * len(terms) * len(order), 3.6)
    ax = fig.subplots()
    ax.axhline(0, color="black", linewidth=0.6, zorder=0)
    common = {"data": long, "x": "term", "y": "value", "hue": "_group", "order": term_order,
              "hue_order": order, "palette": palette, "legend": False, "dodge": True, "ax": ax}
    sns.boxplot(**common, fill=False, showfliers=False, width=0.7, linewidth=1.1)
    # the points over their boxes: seaborn's dodge puts hue level j at term + offsets[j]
    each = 0.7 / len(order)
    offsets = np.linspace(0, 0.7 - each, len(order))
    offsets -= offsets.mean()
    strips = [(t + offsets[j], long.loc[(long["term"] == term) & (long["_group"] == g), "value"], palette[g])
              for t, term in enumerate(term_order) for j, g in enumerate(order)]
    _strip(ax, strips, jitter=0.12 / len(order), size=2.8, alpha=0.7)
    counts = frame["_group"].value_counts()
    handles = [Patch(color=palette[g], label=f"{g} (n = {counts[g]})") for g in order]
    fig.legend(handles=handles, loc="outside right upper", title="group")
    ax.set(xlabel="", ylabel="contribution to predicted age (years)")
    return _save(fig, path)
