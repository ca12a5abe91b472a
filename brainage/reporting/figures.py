"""Report figures: file-out functions that draw loaded tables into small SVG files.

Every function takes data already read (pandas tables, dicts from the group
level's JSON files) and a destination ``path`` (``.svg``), writes the figure
atomically and returns the path. Text stays text in the SVG
(``svg.fonttype: none``), so files are small and searchable; no fonts are
fetched. Figures are :class:`matplotlib.figure.Figure` objects, never pyplot
state. Input that lacks what a figure needs raises
:class:`~brainage.exceptions.ReportFigureError` naming the input and what is
missing; the report assembler lists it in the report's errors section.

Clinical groups have one colour throughout (:func:`group_palette`): controls
grey, other groups from seaborn's colour-blind-safe palette in sorted order.
The brain maps (:func:`region_image`, :func:`region_brain_map`) live in
:mod:`brainage.reporting.brain_figures` and are importable from here.

Examples
--------
>>> group_palette(["patient", "control"])["control"]
'#8c8c8c'
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Polygon
from matplotlib.transforms import blended_transform_factory

from ..exceptions import ReportFigureError
from ..io import atomic_path

#: defined in :mod:`brainage.reporting.brain_figures`, importable from here
_BRAIN_FIGURES = ("participant_contributions", "participant_deviations", "participant_position",
                  "region_bars", "region_brain_map", "region_image")
__all__ = [
    "age_distribution",
    "contributions_by_group",
    "gap_by_group",
    "gap_vs_age",
    "group_palette",
    "literature_comparison",
    "model_accuracy",
    "pid_atoms",
    "predicted_vs_age",
    "site_forest",
    *_BRAIN_FIGURES,
]

CONTROL_COLOR = "#8c8c8c"
#: seaborn "colorblind" without its grey (kept for controls); yellow last (low contrast)
_PALETTE = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#56b4e9", "#fbafe4",
            "#ece133")
HIGHLIGHT = "#0173b2"
PARTICIPANT_COLOR = "#d55e00"
FLAG_COLOR = "#c0392b"
_RASTER_N = 3000  # scatter layers with more points are rasterized
_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "brainage",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


# --------------------------------------------------------------------------- helpers
def _svg_figure(func: Callable) -> Callable:
    """Run a figure function under the report's matplotlib settings."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_RC):
            return func(*args, **kwargs)

    return wrapper


def _strip(ax, strips, *, jitter: float, size: float, alpha: float, seed: int = 0) -> None:
    """Every value as a point, spread sideways by a seeded jitter (over box plots).

    ``strips`` is a sequence of ``(x, values, colour)``. The jitter comes from its own
    generator, so the same input draws the same SVG (``seaborn.stripplot`` draws it from
    numpy's global state).
    """
    rng = np.random.default_rng(seed)
    for x, values, color in strips:
        values = np.asarray(values, dtype=float)
        if not values.size:
            continue
        xs = x + (rng.uniform(-jitter, jitter, values.size) if values.size > 1 else 0.0)
        ax.scatter(np.broadcast_to(xs, values.shape), values, s=size**2, color=color, alpha=alpha,
                   linewidth=0, zorder=3, rasterized=values.size > _RASTER_N)


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path) -> Path:
    """Write ``fig`` as SVG atomically, release it and return the path."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="svg", metadata={"Date": None})
    finally:
        fig.clear()
    return path


def _require(frame, columns: Sequence[str], figure: str, what: str) -> pd.DataFrame:
    """Check that ``frame`` is a table with ``columns`` and at least one row."""
    if not isinstance(frame, pd.DataFrame):
        raise ReportFigureError(
            f"{figure}: input {what!r} must be a pandas DataFrame; got {type(frame).__name__}"
        )
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportFigureError(
            f"{figure}: input {what!r} is missing column(s) {', '.join(map(repr, missing))}; "
            f"expected {', '.join(columns)} (found: {', '.join(map(str, frame.columns)) or 'none'})"
        )
    if frame.empty:
        raise ReportFigureError(f"{figure}: input {what!r} has no rows; nothing to draw")
    return frame


def _finite(frame: pd.DataFrame, columns: Sequence[str], figure: str, what: str) -> pd.DataFrame:
    """Rows of ``frame`` where every column of ``columns`` is a finite number (copies)."""
    out = frame.copy()
    for col in columns:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    keep = np.isfinite(out[list(columns)].to_numpy()).all(axis=1)
    if not keep.any():
        raise ReportFigureError(
            f"{figure}: input {what!r} has no row with finite values in "
            f"{', '.join(map(repr, columns))} (all NaN); nothing to draw"
        )
    return out.loc[keep]


def _groups(frame: pd.DataFrame) -> pd.Series:
    return frame["group"].astype(object).where(frame["group"].notna(), "n/a").astype(str)


def _order(groups: Iterable[str], control_labels: Sequence[str]) -> list[str]:
    """Order groups: controls first (in the order of ``control_labels``), then the others sorted."""
    present = list(dict.fromkeys(map(str, groups)))
    controls = [c for c in control_labels if c in present]
    return controls + sorted(g for g in present if g not in controls)


def group_palette(groups: list[str], control_labels: Sequence[str] = ("control",)) -> dict[str, str]:
    """Colour of each clinical group: controls grey, the others colour-blind safe.

    Non-control groups take seaborn's ``"colorblind"`` colours in sorted order,
    so that the same set of groups gets the same colours in every figure.

    Parameters
    ----------
    groups : list of str
        Group labels (repeats are fine).
    control_labels : sequence of str
        Labels of the control group(s).

    Returns
    -------
    dict
        Group label to hex colour.

    Examples
    --------
    >>> group_palette(["control", "MCI", "AD", "control"])
    {'control': '#8c8c8c', 'AD': '#0173b2', 'MCI': '#de8f05'}
    """
    order = _order(groups, tuple(control_labels))
    others = [g for g in order if g not in control_labels]
    palette = {g: CONTROL_COLOR for g in order if g in control_labels}
    palette.update({g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(others)})
    return palette


def _scatter_groups(ax, frame, x, y, order, palette, control_labels, *, label=True):
    """Points coloured by group, controls underneath."""
    for g in order:
        sub = frame[frame["_group"] == g]
        is_control = g in control_labels
        ax.scatter(
            sub[x], sub[y], s=14 if is_control else 20, color=palette[g], alpha=0.6 if is_control else 0.85,
            edgecolor="white", linewidth=0.3, zorder=2 if is_control else 3,
            label=f"{g} (n = {len(sub)})" if label else None, rasterized=len(frame) > _RASTER_N,
        )


def _one_model(predictions: pd.DataFrame, figure: str) -> None:
    if "model" in predictions.columns and predictions["model"].nunique() > 1:
        models = ", ".join(map(str, predictions["model"].unique()))
        raise ReportFigureError(
            f"{figure}: input 'predictions' holds the rows of several models ({models}); "
            "pass the rows of one model (e.g. the primary model)"
        )


def _label(text) -> str:
    return str(text).replace("_", " ")


# --------------------------------------------------------------------------- cohort
@_svg_figure
def age_distribution(participants: pd.DataFrame, path, *, control_labels=("control",)) -> Path:
    """Histogram of age by clinical group (stacked), one panel per sex.

    Parameters
    ----------
    participants : pandas.DataFrame
        Columns ``age`` (years), ``sex`` and ``group``.
    path : path-like
        Destination ``.svg``.
    control_labels : sequence of str
        Labels of the control group(s).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        A column is missing, there are no rows, or no age is finite.
    """
    name = "age_distribution"
    frame = _finite(_require(participants, ("age", "sex", "group"), name, "participants"),
                    ("age",), name, "participants")
    frame["_group"] = _groups(frame)
    sexes = frame["sex"].astype(object).where(frame["sex"].notna(), "unknown").astype(str)
    order = _order(frame["_group"], control_labels)
    palette = group_palette(order, control_labels)
    bins = np.histogram_bin_edges(frame["age"], bins=min(20, max(5, len(frame) // 5)))
    levels = sorted(sexes.unique())
    fig = _new_figure(3.2 * len(levels) + 1.6, 3.0)
    axes = fig.subplots(1, len(levels), sharey=True, squeeze=False)[0]
    for ax, sex in zip(axes, levels):
        sub = frame[sexes == sex]
        data = [sub.loc[sub["_group"] == g, "age"].to_numpy() for g in order]
        ax.hist(data, bins=bins, stacked=True, color=[palette[g] for g in order],
                edgecolor="white", linewidth=0.4)
        ax.set_title(f"sex {sex} (n = {len(sub)})")
        ax.set_xlabel("Age (years)")
    axes[0].set_ylabel("Participants")
    counts = frame["_group"].value_counts()
    handles = [Patch(color=palette[g], label=f"{g} (n = {counts[g]})") for g in order]
    fig.legend(handles=handles, loc="outside right upper", title="group")
    return _save(fig, path)


@_svg_figure
def predicted_vs_age(predictions: pd.DataFrame, path, *, control_labels=("control",)) -> Path:
    """Predicted age against chronological age, uncorrected and bias-corrected.

    The uncorrected panel gives the MAE and Pearson r of the out-of-fold
    controls (rows with ``fold != -1``).

    Parameters
    ----------
    predictions : pandas.DataFrame
        The rows of one model of ``predictions.tsv``: ``age``,
        ``predicted_age``, ``predicted_age_corrected``, ``group``, ``fold``.
    path : path-like
        Destination ``.svg``.
    control_labels : sequence of str
        Labels of the control group(s).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        A column is missing, no row is finite, or the rows are of several models.
    """
    name = "predicted_vs_age"
    cols = ("age", "predicted_age", "predicted_age_corrected")
    _require(predictions, (*cols, "group", "fold"), name, "predictions")
    _one_model(predictions, name)
    frame = _finite(predictions, cols, name, "predictions")
    frame["_group"] = _groups(frame)
    order = _order(frame["_group"], control_labels)
    palette = group_palette(order, control_labels)
    values = frame[list(cols)].to_numpy()
    pad = 0.05 * (values.max() - values.min() or 1.0)
    lims = (values.min() - pad, values.max() + pad)
    fig = _new_figure(7.2, 3.9)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    titles = {"predicted_age": "Uncorrected", "predicted_age_corrected": "Bias-corrected"}
    for ax, (col, title) in zip(axes, titles.items()):
        ax.plot(lims, lims, color="black", linewidth=0.8, linestyle="--", zorder=1, label="identity")
        _scatter_groups(ax, frame, "age", col, order, palette, control_labels, label=ax is axes[0])
        ax.set(xlim=lims, ylim=lims, title=title, xlabel="Chronological age (years)", aspect="equal")
    axes[0].set_ylabel("Predicted age (years)")
    oof = frame[pd.to_numeric(frame["fold"], errors="coerce").fillna(-1) != -1]
    if len(oof):
        err = oof["predicted_age"] - oof["age"]
        r = np.corrcoef(oof["age"], oof["predicted_age"])[0, 1] if len(oof) > 2 else np.nan
        axes[0].text(0.04, 0.96, f"out-of-fold controls (n = {len(oof)})\nMAE = {err.abs().mean():.2f} y"
                     f"\nr = {r:.2f}", transform=axes[0].transAxes, va="top", ha="left", fontsize=8,
                     bbox={"facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.9})
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
    return _save(fig, path)


def _fit_line(ax, x: pd.Series, y: pd.Series) -> None:
    """Least-squares line of ``y`` on ``x``, slope in its legend label."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0:
        ax.plot([], [], color="black", label="controls fit: too few controls")
        return
    slope, intercept = np.polyfit(x[ok], y[ok], 1)
    xs = np.array([x[ok].min(), x[ok].max()])
    ax.plot(xs, intercept + slope * xs, color="black", linewidth=1.2, zorder=4,
            label=f"least-squares fit, controls: slope = {slope:+.3f} y/y")


@_svg_figure
def gap_vs_age(predictions: pd.DataFrame, path, *, control_labels=("control",)) -> Path:
    """Brain-age gap against age, uncorrected and bias-corrected, with the controls' fit.

    Parameters
    ----------
    predictions : pandas.DataFrame
        Rows of one model: ``age``, ``gap``, ``gap_corrected``, ``group``.
    path : path-like
        Destination ``.svg``.
    control_labels : sequence of str
        Labels of the control group(s); the least-squares lines use their rows.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        A column is missing, no row is finite, or the rows are of several models.
    """
    name = "gap_vs_age"
    cols = ("age", "gap", "gap_corrected")
    _require(predictions, (*cols, "group"), name, "predictions")
    _one_model(predictions, name)
    frame = _finite(predictions, cols, name, "predictions")
    frame["_group"] = _groups(frame)
    order = _order(frame["_group"], control_labels)
    palette = group_palette(order, control_labels)
    controls = frame[frame["_group"].isin(control_labels)]
    fig = _new_figure(7.2, 3.6)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, (col, title) in zip(axes, {"gap": "Uncorrected", "gap_corrected": "Bias-corrected"}.items()):
        ax.axhline(0, color="black", linewidth=0.6, zorder=1)
        _scatter_groups(ax, frame, "age", col, order, palette, control_labels, label=False)
        _fit_line(ax, controls["age"].to_numpy(), controls[col].to_numpy())
        ax.set(title=title, xlabel="Chronological age (years)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), fontsize=7.5)
    axes[0].set_ylabel("Brain-age gap (years)")
    counts = frame["_group"].value_counts()
    handles = [Line2D([], [], marker="o", linestyle="", color=palette[g], label=f"{g} (n = {counts[g]})")
               for g in order]
    fig.legend(handles=handles, loc="outside right upper", title="group")
    return _save(fig, path)


@_svg_figure
def gap_by_group(predictions: pd.DataFrame, path, *, control_labels=("control",)) -> Path:
    """Bias-corrected brain-age gap by clinical group: boxes with every participant shown.

    Parameters
    ----------
    predictions : pandas.DataFrame
        Rows of one model: ``gap_corrected`` and ``group``.
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
        A column is missing, no gap is finite, or the rows are of several models.
    """
    import seaborn as sns

    name = "gap_by_group"
    _require(predictions, ("gap_corrected", "group"), name, "predictions")
    _one_model(predictions, name)
    frame = _finite(predictions, ("gap_corrected",), name, "predictions")
    frame["_group"] = _groups(frame)
    order = _order(frame["_group"], control_labels)
    palette = group_palette(order, control_labels)
    fig = _new_figure(1.2 + 1.1 * len(order), 3.4)
    ax = fig.subplots()
    ax.axhline(0, color="black", linewidth=0.6, zorder=0)
    common = {"data": frame, "x": "_group", "y": "gap_corrected", "hue": "_group", "order": order,
              "hue_order": order, "palette": palette, "legend": False, "ax": ax}
    sns.boxplot(**common, fill=False, showfliers=False, width=0.55, linewidth=1.2)
    strips = [(i, frame.loc[frame["_group"] == g, "gap_corrected"], palette[g]) for i, g in enumerate(order)]
    _strip(ax, strips, jitter=0.18, size=3.5, alpha=0.75)
    counts = frame["_group"].value_counts()
    ax.set_xticks(range(len(order)), labels=[f"{g}\nn = {counts[g]}" for g in order])
    ax.set(xlabel="", ylabel="Corrected brain-age gap (years)")
    return _save(fig, path)


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
    fig = _new_figure(7.2, 1.2 + 0.3 * len(frame))
    ax = fig.subplots()
    ax.axvline(0, color="black", linewidth=0.7, zorder=1)
    ys = -np.arange(len(frame), dtype=float)
    for y, is_cohort, (_, row) in zip(ys, cohort, frame.iterrows()):
        color = HIGHLIGHT if is_cohort else "#8c8c8c"
        _draw_interval(ax, y, row["gap"], row["ci_low"], row["ci_high"], color, summary=False)
        if is_cohort:
            ax.plot([row["gap"]], [y], marker="D", markersize=7, color=color, markeredgecolor="black",
                    markeredgewidth=0.5, zorder=4)
    has_modality = "modality" in frame
    labels = [f"{row['label']} ({row['modality']})" if has_modality and isinstance(row["modality"], str)
              and row["modality"] else str(row["label"]) for _, row in frame.iterrows()]
    ax.set_yticks(ys, labels=labels)
    for tick, is_cohort in zip(ax.get_yticklabels(), cohort):
        tick.set_fontweight("bold" if is_cohort else "normal")
        tick.set_color(HIGHLIGHT if is_cohort else "black")
    ax.set_ylim(ys.min() - 0.7, 0.7)
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


def _term_label(column: str) -> str:
    """``shap_anat`` → ``anat``; ``shap_anat|func`` → ``anat × func synergy``."""
    term = column.removeprefix("shap_")
    return " × ".join(term.split("|")) + " synergy" if "|" in term else term


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


def __dir__() -> list[str]:
    return sorted({*globals(), *_BRAIN_FIGURES})


def __getattr__(name: str):
    """Region and participant figures, defined in :mod:`brainage.reporting.brain_figures`."""
    if name in _BRAIN_FIGURES:
        from . import brain_figures

        return getattr(brain_figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
