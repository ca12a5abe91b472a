"""Region-level and participant-page figures of the report.

Atlas maps (:func:`region_image`, :func:`region_brain_map`), the top regions
(:func:`region_bars`) and one participant's page (:func:`participant_position`,
:func:`participant_contributions`, :func:`participant_deviations`). Same
conventions as :mod:`brainage.reporting.figures` (file-out SVG, written
atomically; :class:`~brainage.exceptions.ReportFigureError` for unusable input),
which re-exports every function here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from ..exceptions import ReportFigureError
from .figures import (
    _PALETTE,
    _RASTER_N,
    CONTROL_COLOR,
    FLAG_COLOR,
    HIGHLIGHT,
    PARTICIPANT_COLOR,
    _finite,
    _label,
    _new_figure,
    _require,
    _save,
    _svg_figure,
    _term_label,
)

__all__ = [
    "participant_contributions",
    "participant_deviations",
    "participant_position",
    "region_bars",
    "region_brain_map",
    "region_image",
]

logger = logging.getLogger(__name__)

#: axial cuts (MNI mm) of the brain maps: from the temporal poles to the vertex
CUTS_Z = (-30, -15, 0, 15, 30, 45, 60)


def _region_values(values: pd.DataFrame, name: str) -> pd.DataFrame:
    frame = _finite(_require(values, ("index", "value"), name, "values"), ("index", "value"), name, "values")
    frame["index"] = frame["index"].astype(int)
    duplicated = frame["index"][frame["index"].duplicated()].unique()
    if duplicated.size:
        raise ReportFigureError(
            f"{name}: input 'values' lists atlas label(s) {duplicated[:10].tolist()} more than once; "
            "give one value per label"
        )
    return frame


def _paint(values: pd.DataFrame, atlas_img, name: str):
    import nibabel as nib

    frame = _region_values(values, name)
    labels = np.rint(np.asarray(atlas_img.dataobj)).astype(np.int64)
    if labels.ndim == 4 and labels.shape[3] == 1:
        labels = labels[..., 0]
    if labels.ndim != 3:
        raise ReportFigureError(f"{name}: input 'atlas_img' must be 3D; got shape {labels.shape}")
    present, inverse = np.unique(labels, return_inverse=True)
    lut = np.zeros(present.size, dtype=np.float32)
    lookup = dict(zip(frame["index"], frame["value"]))
    absent = sorted(set(lookup) - set(present.tolist()))
    if len(absent) == len(lookup):
        in_atlas = present[present != 0].tolist()
        raise ReportFigureError(
            f"{name}: none of the atlas label(s) of input 'values' ({absent[:10]}) is in "
            f"'atlas_img' ({len(in_atlas)} labels, e.g. {in_atlas[:10]}); pass the image of the "
            "atlas the values were computed on"
        )
    if absent:
        logger.warning("%s: label(s) %s are not in the atlas image; ignored", name, absent[:10])
    for k, label in enumerate(present.tolist()):
        if label != 0 and label in lookup:
            lut[k] = lookup[label]
    return nib.Nifti1Image(lut[inverse.reshape(labels.shape)], atlas_img.affine)


def region_image(values: pd.DataFrame, atlas_img):
    """Paint each atlas label's voxels with its value (labels not listed: 0).

    Parameters
    ----------
    values : pandas.DataFrame
        Columns ``index`` (atlas label value) and ``value`` (e.g. attribution in
        years); rows with a NaN value are left out.
    atlas_img : nibabel.Nifti1Image
        3D integer label image (0 = background).

    Returns
    -------
    nibabel.Nifti1Image
        float32 image on the atlas grid.

    Raises
    ------
    ReportFigureError
        A column is missing, no value is finite, a label is listed twice, or no
        listed label is in the atlas image.

    Examples
    --------
    >>> import nibabel as nib
    >>> atlas = nib.Nifti1Image(np.array([[[0, 1], [2, 2]]], dtype=np.int16), np.eye(4))
    >>> img = region_image(pd.DataFrame({"index": [2], "value": [1.5]}), atlas)
    >>> np.asarray(img.dataobj).tolist()
    [[[0.0, 0.0], [1.5, 1.5]]]
    """
    return _paint(values, atlas_img, "region_image")


@_svg_figure
def region_brain_map(values: pd.DataFrame, atlas_img, path, *, title: str = "") -> Path:
    """Axial slices of the atlas painted with one value per region, on the MNI template.

    Parameters
    ----------
    values : pandas.DataFrame
        Columns ``index`` (atlas label) and ``value`` (see :func:`region_image`).
    atlas_img : nibabel.Nifti1Image
        3D integer label image in MNI space.
    path : path-like
        Destination ``.svg``.
    title : str
        Title drawn over the slices.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        As :func:`region_image`.
    """
    from nilearn import plotting

    image = _paint(values, atlas_img, "region_brain_map")
    data = np.asarray(image.dataobj)
    peak = float(np.abs(data).max()) or 1.0
    signed_values = bool((data < 0).any())
    fig = _new_figure(8.0, 2.6)
    fig.set_layout_engine(None)  # nilearn places its own axes
    # signed values diverge around zero; non-negative ones (|attribution|) run from zero up
    plotting.plot_stat_map(
        image, display_mode="z", cut_coords=list(CUTS_Z), figure=fig, colorbar=True,
        title=None, threshold=peak * 1e-6, draw_cross=False, black_bg=False,
        annotate=True, cmap="RdBu_r" if signed_values else "YlOrRd", symmetric_cbar=signed_values,
        vmin=None if signed_values else 0.0, vmax=peak, resampling_interpolation="nearest",
    )
    if title:
        fig.suptitle(title, fontsize=10, y=0.99)
    # display.close() needs a pyplot figure; _save releases ours
    return _save(fig, path)


@_svg_figure
def region_bars(regions: pd.DataFrame, path, *, top: int = 15) -> Path:
    """Draw the ``top`` regions by absolute attribution, with CIs, coloured by modality.

    Parameters
    ----------
    regions : pandas.DataFrame
        Columns ``region``, ``modality``, ``attribution`` (years); ``ci_low``,
        ``ci_high`` (NaN: no error bar), ``lobe`` or ``network`` are used
        when present.
    path : path-like
        Destination ``.svg``.
    top : int
        Number of regions shown.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        A column is missing or no attribution is finite.
    """
    name = "region_bars"
    frame = _finite(_require(regions, ("region", "modality", "attribution"), name, "regions"),
                    ("attribution",), name, "regions")
    for col in ("ci_low", "ci_high"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce") if col in frame else np.nan
    frame = frame.loc[frame["attribution"].abs().sort_values(ascending=False, kind="stable").index]
    frame = frame.head(int(top)).iloc[::-1].reset_index(drop=True)
    modalities = sorted(frame["modality"].astype(str).unique())
    colors = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(modalities)}
    fig = _new_figure(6.4, 1.0 + 0.26 * len(frame))
    ax = fig.subplots()
    value = frame["attribution"]
    low = (value - frame["ci_low"]).clip(lower=0).fillna(0)
    high = (frame["ci_high"] - value).clip(lower=0).fillna(0)
    ax.barh(range(len(frame)), value, xerr=[low, high], height=0.7,
            color=[colors[str(m)] for m in frame["modality"]], error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.axvline(0, color="black", linewidth=0.6)

    def label(row):
        extra = [str(row[c]) for c in ("lobe", "network") if c in row and isinstance(row[c], str)
                 and row[c] not in ("", "n/a") and str(row[c]) != str(row["region"])]
        return _label(row["region"]) + (f" ({', '.join(extra)})" if extra else "")

    ax.set_yticks(range(len(frame)), labels=[label(row) for _, row in frame.iterrows()], fontsize=8)
    ax.set_xlabel("Attribution (years)")
    handles = [Patch(color=colors[m], label=m) for m in modalities]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(modalities), title="modality")
    return _save(fig, path)


# --------------------------------------------------------------------------- participant
def _series_value(row: pd.Series, key: str, figure: str, what: str) -> float:
    if not isinstance(row, pd.Series):
        raise ReportFigureError(f"{figure}: input {what!r} must be a pandas Series; got {type(row).__name__}")
    if key not in row.index:
        raise ReportFigureError(f"{figure}: input {what!r} is missing {key!r} (found: "
                                f"{', '.join(map(str, row.index))})")
    value = pd.to_numeric(pd.Series([row[key]]), errors="coerce").iloc[0]
    if not np.isfinite(value):
        raise ReportFigureError(f"{figure}: input {what!r} has no finite {key!r} (got {row[key]!r})")
    return float(value)


def _participant_name(row: pd.Series) -> str:
    pid = row.get("participant_id")
    if isinstance(pid, str) and pid:
        return pid
    return str(row.name) if row.name is not None else "participant"


@_svg_figure
def participant_position(controls: pd.DataFrame, participant: pd.Series, path) -> Path:
    """One participant's corrected gap among the controls, with the controls' central 90 %.

    Parameters
    ----------
    controls : pandas.DataFrame
        Controls' rows of the primary model: ``age``, ``gap_corrected``.
    participant : pandas.Series
        ``age``, ``gap_corrected`` and ``participant_id`` (else the Series name)
        of the participant.
    path : path-like
        Destination ``.svg``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        A column or value is missing, or fewer than two controls have finite values.
    """
    name = "participant_position"
    frame = _finite(_require(controls, ("age", "gap_corrected"), name, "controls"),
                    ("age", "gap_corrected"), name, "controls")
    if len(frame) < 2:
        raise ReportFigureError(f"{name}: input 'controls' has {len(frame)} finite row; need 2 or more")
    age = _series_value(participant, "age", name, "participant")
    gap = _series_value(participant, "gap_corrected", name, "participant")
    mean, sd = frame["gap_corrected"].mean(), frame["gap_corrected"].std(ddof=1)
    fig = _new_figure(5.2, 3.4)
    ax = fig.subplots()
    ax.axhspan(mean - 1.645 * sd, mean + 1.645 * sd, color="#dddddd", zorder=0,
               label="central 90 % of controls")
    ax.axhline(0, color="black", linewidth=0.6, zorder=1)
    ax.scatter(frame["age"], frame["gap_corrected"], s=12, color=CONTROL_COLOR, alpha=0.7, zorder=2,
               label=f"controls (n = {len(frame)})", rasterized=len(frame) > _RASTER_N)
    ax.scatter([age], [gap], s=180, marker="*", color=PARTICIPANT_COLOR, edgecolor="black",
               linewidth=0.6, zorder=4)
    lo, hi = min(frame["age"].min(), age), max(frame["age"].max(), age)
    on_right = age > (lo + hi) / 2
    ax.annotate(f"{_participant_name(participant)}: {gap:+.1f} y", (age, gap),
                xytext=(-12 if on_right else 12, 10), textcoords="offset points",
                ha="right" if on_right else "left", fontsize=9, fontweight="bold", color=PARTICIPANT_COLOR)
    ax.set(xlabel="Chronological age (years)", ylabel="Corrected brain-age gap (years)")
    fig.legend(loc="outside lower center", ncols=2)
    return _save(fig, path)


def _waterfall_steps(row: pd.Series, figure: str) -> tuple[float, list[tuple[str, float]], float]:
    base = _series_value(row, "baseline_age", figure, "row")
    predicted = _series_value(row, "predicted_age", figure, "row")
    terms = [(c, pd.to_numeric(pd.Series([row[c]]), errors="coerce").iloc[0])
             for c in row.index if str(c).startswith("shap_")]
    if not terms:
        raise ReportFigureError(
            f"{figure}: input 'row' has no 'shap_' value (found: {', '.join(map(str, row.index))})"
        )
    steps = [(_term_label(c), float(v)) for c, v in terms if np.isfinite(v)]
    if not steps:
        raise ReportFigureError(f"{figure}: input 'row' has only NaN 'shap_' values")
    rest = predicted - base - sum(v for _, v in steps)
    if abs(rest) > 0.05:
        steps.append(("not attributed", rest))
    return base, steps, predicted


@_svg_figure
def participant_contributions(row: pd.Series, path) -> Path:
    """Waterfall from the baseline age through each term's contribution to the predicted age.

    Parameters
    ----------
    row : pandas.Series
        One row of ``contributions.tsv``: ``baseline_age``, ``predicted_age``,
        ``age`` and the ``shap_*`` terms (years). A difference between the
        prediction and baseline plus terms over 0.05 y is shown as "not attributed".
    path : path-like
        Destination ``.svg``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        A value is missing or NaN, or no ``shap_`` term is finite.
    """
    name = "participant_contributions"
    base, steps, predicted = _waterfall_steps(row, name)
    age = _series_value(row, "age", name, "row")
    labels = ["baseline (mean prediction)", *(s[0] for s in steps), "predicted age"]
    fig = _new_figure(6.4, 1.3 + 0.36 * len(labels))
    ax = fig.subplots()
    ys = -np.arange(len(labels), dtype=float)
    start = base
    ax.plot([base], [ys[0]], marker="D", color="black", markersize=6)
    ax.text(base, ys[0] + 0.32, f"{base:.1f} y", ha="center", fontsize=8)
    for y, (_, value) in zip(ys[1:], steps):
        ax.barh(y, value, left=start, height=0.6, color=PARTICIPANT_COLOR if value > 0 else HIGHLIGHT)
        ax.plot([start, start], [y + 0.7, y - 0.3], color="#999999", linewidth=0.6, linestyle=":")
        end = start + value
        ax.text(end + (0.2 if value >= 0 else -0.2), y, f"{value:+.1f} y", va="center",
                ha="left" if value >= 0 else "right", fontsize=8)
        start = end
    ax.plot([predicted], [ys[-1]], marker="D", color="black", markersize=6)
    ax.text(predicted, ys[-1] - 0.45, f"{predicted:.1f} y", ha="center", va="top", fontsize=8)
    ax.axvline(age, color="black", linestyle="--", linewidth=1, label=f"chronological age ({age:.1f} y)")
    points = np.r_[base, predicted, age, base + np.cumsum([v for _, v in steps])]
    pad = 0.15 * (np.ptp(points) or 1.0)
    ax.set_xlim(points.min() - pad, points.max() + pad)
    ax.set_ylim(ys[-1] - 0.9, 0.7)
    ax.set_yticks(ys, labels=labels)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel("Age (years)")
    handles = [Patch(color=PARTICIPANT_COLOR, label="raises predicted age"),
               Patch(color=HIGHLIGHT, label="lowers predicted age"), *ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncols=3)
    title = _participant_name(row) if "participant_id" in row.index else ""
    if title:
        ax.set_title(title)
    return _save(fig, path)


@_svg_figure
def participant_deviations(deviations: pd.DataFrame, path, *, top: int = 20) -> Path:
    """Draw a participant's regional z-scores vs controls of similar age and sex (largest |z|).

    Parameters
    ----------
    deviations : pandas.DataFrame
        One participant's rows of ``deviations.tsv``: columns ``region``, ``z`` and
        ``flagged`` (bool, or "true"/"false"); ``participant_id`` and ``session``, when
        present, must each hold one value.
    path : path-like
        Destination ``.svg``.
    top : int
        Number of regions shown.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ReportFigureError
        A column is missing, no z is finite, or the rows are of several participants.
    """
    name = "participant_deviations"
    _require(deviations, ("region", "z", "flagged"), name, "deviations")
    for col in ("participant_id", "session"):
        if col in deviations.columns and deviations[col].nunique(dropna=False) > 1:
            found = ", ".join(map(str, deviations[col].unique()[:5]))
            raise ReportFigureError(
                f"{name}: input 'deviations' holds the rows of several {col} values ({found}); "
                "pass the rows of one participant (and session)"
            )
    frame = _finite(deviations, ("z",), name, "deviations")
    flagged = frame["flagged"]
    if flagged.dtype == object:
        flagged = flagged.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))
    frame = frame.assign(_flagged=flagged.fillna(False).astype(bool))
    frame = frame.loc[frame["z"].abs().sort_values(ascending=False, kind="stable").index]
    frame = frame.head(int(top)).iloc[::-1].reset_index(drop=True)
    fig = _new_figure(6.0, 1.0 + 0.24 * len(frame))
    ax = fig.subplots()
    ax.axvspan(-1.96, 1.96, color="#e6e6e6", zorder=0, label="|z| < 1.96")
    ax.axvline(0, color="black", linewidth=0.6)
    ax.barh(range(len(frame)), frame["z"], height=0.7, zorder=2,
            color=[FLAG_COLOR if f else "#8c8c8c" for f in frame["_flagged"]])
    ax.set_yticks(range(len(frame)), labels=[_label(r) for r in frame["region"]], fontsize=8)
    span = max(2.5, frame["z"].abs().max() * 1.1)
    ax.set_xlim(-span, span)
    ax.set_xlabel("z-score vs controls of similar age and sex")
    handles = [Patch(color=FLAG_COLOR, label="flagged"), Patch(color="#8c8c8c", label="not flagged"),
               Patch(color="#e6e6e6", label="|z| < 1.96")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3)
    return _save(fig, path)


