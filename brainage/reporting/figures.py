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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..exceptions import ReportFigureError
from ..writing import atomic_path

#: defined in :mod:`brainage.reporting.brain_figures`, importable from here
_BRAIN_FIGURES = ("participant_contributions", "participant_deviations", "participant_position",
                  "region_bars", "region_brain_map", "region_image")
#: defined in :mod:`brainage.reporting.model_figures`, importable from here
_MODEL_FIGURES = ("contributions_by_group", "literature_comparison", "model_accuracy", "pid_atoms",
                  "site_forest")
__all__ = [
    "age_distribution",
    "gap_by_group",
    "gap_vs_age",
    "group_palette",
    "predicted_vs_age",
    *_MODEL_FIGURES,
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


def _term_label(column: str) -> str:
    """``shap_anat`` → ``anat``; ``shap_anat|func`` → ``anat × func synergy``."""
    term = column.removeprefix("shap_")
    return " × ".join(term.split("|")) + " synergy" if "|" in term else term


def __dir__() -> list[str]:
    return sorted({*globals(), *_BRAIN_FIGURES, *_MODEL_FIGURES})


def __getattr__(name: str):
    """Figures defined in :mod:`.brain_figures` and :mod:`.model_figures`, importable from here."""
    if name in _BRAIN_FIGURES:
        from . import brain_figures

        return getattr(brain_figures, name)
    if name in _MODEL_FIGURES:
        from . import model_figures

        return getattr(model_figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
