"""What a participant's page says: predicted age with an interval, gaps, percentile, deviations.

All numbers come from the group level's files: the primary model's out-of-fold
prediction (controls) or the mean of the fold models (everyone else), the controls'
out-of-fold corrected gaps as the reference distribution, ``contributions.tsv``,
``deviations.tsv`` and ``regions_participants.tsv``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import percentileofscore

from .formatting import DASH, fmt, make_table, signed
from .labels import region_name

__all__ = ["MIN_REFERENCE", "page_name", "participant_context", "reference_controls"]

#: Fewest controls for an interval or a percentile.
MIN_REFERENCE = 10

#: Half-widths (years) tried in turn for "controls of similar age and sex".
AGE_WINDOWS = (5.0, 7.5, 10.0, 15.0, 20.0)


def _session(value) -> str | None:
    return value if isinstance(value, str) and value and value != "n/a" else None


def _sig(x) -> str:
    """Four significant digits (volumes in mL and fractions of TIV alike)."""
    return f"{float(x):.4g}" if pd.notna(x) and np.isfinite(float(x)) else DASH


def page_name(participant_id: str, session=None) -> str:
    """``sub-01.html``, or ``sub-01_ses-1.html`` where there are sessions."""
    ses = _session(session)
    return f"{participant_id}_{ses}.html" if ses else f"{participant_id}.html"


def _same(frame: pd.DataFrame, row: pd.Series) -> np.ndarray:
    same = frame["participant_id"].astype(str).to_numpy() == str(row["participant_id"])
    ses = _session(row.get("session"))
    if ses:
        same &= frame["session"].astype(str).to_numpy() == ses
    return same


def reference_controls(controls: pd.DataFrame, row: pd.Series) -> tuple[pd.DataFrame, float | None]:
    """Return the controls of the participant's sex within the narrowest age window holding enough of them.

    The participant is never their own reference. Returns the controls and the window's half-width
    in years (None when even the widest window of the same sex holds fewer than
    :data:`MIN_REFERENCE`; then all other controls of that sex, possibly empty).
    """
    others = controls[~_same(controls, row)]
    sex = others[others["sex"].astype(str) == str(row.get("sex"))] if pd.notna(row.get("sex")) else others
    for width in AGE_WINDOWS:
        near = sex[(sex["age"] - float(row["age"])).abs() <= width]
        if len(near) >= MIN_REFERENCE:
            return near, width
    return sex, None


def _estimate(row, controls, mae):
    others = controls[~_same(controls, row)]["gap_corrected"].dropna()
    pc = float(row["predicted_age_corrected"])
    interval, note = DASH, ""
    if len(others) >= MIN_REFERENCE:
        q_lo, q_hi = np.quantile(others, [0.025, 0.975])
        interval = f"[{fmt(pc - q_hi)}, {fmt(pc - q_lo)}] y"
    else:
        note = f"only {len(others)} other controls: no interval"
    ref, width = reference_controls(controls, row)
    ref_gaps = ref["gap_corrected"].dropna()
    if len(ref_gaps) >= MIN_REFERENCE and width is not None:
        pct = percentileofscore(ref_gaps, float(row["gap_corrected"]), kind="mean")
        percentile = in_text = (
            f"{fmt(pct, 0)}th among {len(ref_gaps)} controls of the same sex aged "
            f"{fmt(float(row['age']) - width, 0)}–{fmt(float(row['age']) + width, 0)}"
        )
    else:
        percentile = f"not computed: fewer than {MIN_REFERENCE} controls of the same sex and similar age"
        in_text = f"percentile {percentile}"
    rows = [
        ["chronological age", fmt(row["age"], 1, "y")],
        ["predicted brain age (uncorrected)", fmt(row["predicted_age"], 1, "y")],
        ["brain-age gap (uncorrected)", signed(row["gap"], 1, "y")],
        ["predicted brain age (bias-corrected)", fmt(pc, 1, "y")],
        ["95 % interval of the corrected prediction", interval + (f" ({note})" if note else "")],
        ["brain-age gap (bias-corrected)", signed(row["gap_corrected"], 1, "y")],
        ["percentile of the corrected gap", percentile],
    ]
    for col in row.index:
        if col.startswith("predicted_age_") and col != "predicted_age_corrected" and pd.notna(row[col]):
            m = col[len("predicted_age_") :]
            rows.append(
                [
                    f"predicted age from {m} alone (uncorrected)",
                    f"{fmt(row[col], 1, 'y')} (gap {signed(row[col] - row['age'], 1, 'y')})",
                ]
            )
    table = make_table(
        "Brain-age estimate",
        ["", "value"],
        rows,
        note=(
            "The interval is the corrected prediction minus the 2.5th and 97.5th percentiles of the other "
            "controls' out-of-fold corrected gaps: for 95 % of controls it contains their chronological age. "
            f"The model's out-of-sample MAE on controls is {fmt(mae, 1, 'y')}."
        ),
    )
    return table, interval, in_text


def _estimate_text(row, data, interval, percentile) -> list[str]:
    who = "a control" if row.get("_is_control") else f"in the '{row['group']}' group"
    how = (
        "predicted by the fold model that did not train on them (out of fold)"
        if row.get("_is_control") and data.mode == "train"
        else "predicted by the mean of the fold models, none of which trained on them"
        if data.mode == "train"
        else "predicted by a bundle trained on another cohort"
    )
    return [
        f"{row['participant_id']} ({who}; {fmt(row['age'], 1)} years; sex {row.get('sex', DASH)}; site "
        f"{row.get('site', DASH)}) was {how}. Bias-corrected brain age: "
        f"{fmt(row['predicted_age_corrected'])} years, interval {interval}; corrected gap "
        f"{signed(row['gap_corrected'], 1, 'years')} ({percentile})."
    ]


def _meaning(row, controls) -> list[str]:
    spread = controls["gap_corrected"].dropna()
    sd = float(spread.std()) if len(spread) > 2 else float("nan")
    return [
        "What this means and does not mean: the gap says how this scan compares with the controls of this "
        "cohort through this model. Among controls, corrected gaps spread with a standard deviation of "
        f"{fmt(sd, 1)} years, while clinical groups differ from controls by a few years at most (psychiatric "
        "effects are d ≈ 0.1–0.5). A gap of this size is therefore common in healthy people and is no basis "
        "for a diagnosis or a prognosis for one person."
    ]


def _contributions(row, data):
    contrib = data.table("contributions")
    if contrib is None:
        return ["Modality contributions are not available for this run."], None
    sel = contrib[_same(contrib, row)]
    if not len(sel):
        return ["This participant has no row in contributions.tsv."], None
    c = sel.iloc[0]
    terms = [k for k in c.index if k.startswith("shap_")]
    parts = "; ".join(f"{k[5:]} {signed(c[k], 1, 'y')}" for k in terms)
    return [
        f"Starting from the cohort's mean prediction ({fmt(c['baseline_age'])} years), the terms move this "
        f"participant's prediction by: {parts} (Shapley values, years; out of fold)."
    ], c


def _deviations(row, data):
    dev = data.table("deviations")
    if dev is None:
        return ["Regional deviations are not available (no regional input, or too few controls)."], None, None
    sel = dev[_same(dev, row)].copy()
    if not len(sel):
        return ["This participant has no regional deviations."], None, None
    sel["flagged"] = sel["flagged"].astype(str).str.lower().isin(["true", "1"])
    sel["absz"] = sel["z"].abs()
    flagged = sel[sel["flagged"]].sort_values("absz", ascending=False)
    text = [
        f"{int(sel['flagged'].sum())} of {len(sel)} regional measures lie outside the controls' central "
        "95 % for this age and sex (|z| > 1.96). With this many measures, about 1 in 20 lies outside by "
        "chance in a healthy person; the bands are this cohort's controls, not a clinical norm."
    ]
    rows = [
        [
            r["modality"],
            region_name(r["region"]),
            r.get("lobe") if isinstance(r.get("lobe"), str) else DASH,
            f"{_sig(r['value'])} {r.get('units', '')}".strip(),
            _sig(r["expected"]),
            signed(r["z"], 2),
        ]
        for _, r in flagged.head(15).iterrows()
    ]
    table = make_table(
        "Flagged regional measures (largest |z| first)",
        ["modality", "region", "lobe", "value", "expected for age and sex", "z"],
        rows,
        note="" if rows else "No measure is flagged.",
    )
    return text, table, sel


def _regions(row, data):
    reg = data.table("regions_participants")
    if reg is None:
        return ["Region attributions are not available for this run."], None
    sel = reg[_same(reg, row)].copy()
    if not len(sel):
        return ["This participant has no region attributions."], None
    sel = sel.reindex(sel["attribution"].abs().sort_values(ascending=False).index).head(10)
    rows = [
        [
            r["modality"],
            region_name(r["region"]),
            signed(r["attribution"], 2, "y"),
            "older" if r["attribution"] > 0 else "younger",
        ]
        for _, r in sel.iterrows()
    ]
    return (
        [
            "The regions whose features move this participant's prediction the most (ablation to the "
            "training "
            "controls' mean; out of fold). A region that makes the prediction older is not damaged."
        ],
        make_table(
            "Top regions of this participant's attribution",
            ["modality", "region", "attribution", "makes the prediction"],
            rows,
        ),
    )


def participant_context(row: pd.Series, data, controls: pd.DataFrame) -> dict:
    """Paragraphs, tables and figure inputs of one participant's page.

    Parameters
    ----------
    row : pandas.Series
        The participant's row of the primary model's predictions.
    data : brainage.reporting.data.ReportData
    controls : pandas.DataFrame
        The controls' rows of the primary model (the reference distribution).
    """
    row = row.copy()
    labels = set(data.control_labels)
    row["_is_control"] = str(row["group"]) in labels
    mae = (
        (((data.metrics.get("models") or {}).get(data.primary) or {}).get("controls") or {}).get(
            "uncorrected"
        )
        or {}
    ).get("mae", math.nan)
    text, tables, inputs = {}, {}, {"row": row, "controls": controls}
    tables["estimate"], interval, percentile = _estimate(row, controls, mae)
    text["estimate"] = _estimate_text(row, data, interval, percentile)
    text["meaning"] = _meaning(row, controls)
    text["contributions"], inputs["contributions"] = _contributions(row, data)
    text["deviations"], tables["deviations"], inputs["deviations"] = _deviations(row, data)
    text["regions"], tables["regions"] = _regions(row, data)
    qc = data.qc if data.qc is not None else pd.DataFrame(columns=["participant_id", "session"])
    qrow = qc[_same(qc, row)] if len(qc) else qc
    q = qrow.iloc[0] if len(qrow) else pd.Series(dtype=object)
    text["qc"] = [
        f"Mean FD {fmt(q.get('mean_fd'), 3, 'mm')}, {fmt(q.get('percent_scrubbed'), 1)} % of volumes "
        f"scrubbed, registration similarity {fmt(q.get('registration_similarity'), 3)}; flags: "
        + (
            "; ".join(x for x in (q.get("anat_flags"), q.get("func_flags")) if isinstance(x, str) and x)
            or "none"
        )
        + "."
    ]
    inputs["qc_images"] = [
        (q.get(col), caption)
        for col, caption in (
            ("anat_mosaic", "T1w after registration, with the brain mask and tissue outlines"),
            ("func_carpet", "BOLD carpet plot with framewise displacement"),
        )
        if q.get(col) is not None and not (isinstance(q.get(col), float))
    ]
    return {
        "text": text,
        "tables": tables,
        "inputs": inputs,
        "title": f"{row['participant_id']}" + (f", {row['session']}" if _session(row.get("session")) else ""),
    }
