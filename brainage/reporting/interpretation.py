"""What the cohort report says about the model's inside: PID atoms, modality selection, atlas regions.

Sections 5 and 6 of the cohort report, built like :mod:`brainage.reporting.cohort`: each
function takes a :class:`~brainage.reporting.data.ReportData` and returns text and
tables, and says in a sentence what is missing instead of raising.
"""

from __future__ import annotations

import math

import numpy as np

from .formatting import DASH, ci, fmt, make_table, signed
from .labels import modality_label, pid_pair, region_name

__all__ = ["atlas_pid_tables", "atlas_tables", "modalities_text", "modality_accuracy", "pid_tables"]

#: Regions the brain-age literature reports as drivers of predictions (atlas view notes).
LITERATURE_REGIONS = [
    (("ventric",), "lateral ventricles: the strongest and most replicated driver of brain age"),
    (("hippocamp",), "hippocampus: reported among the main drivers of brain age"),
    (("thalam",), "thalamus: reported among the drivers of brain age"),
    (("cingul",), "anterior cingulate: reported among the drivers of brain age"),
    (("frontal", "precentral", "orbital"), "frontal cortex: the lobe with the most accelerated ageing"),
    (
        ("temporal", "parietal", "angular", "supramarginal"),
        "temporo-parietal cortex: reported among the drivers",
    ),
    (("cerebell",), "cerebellar grey matter: reported among the drivers of brain age"),
    (("csf",), "CSF (sulcal and ventricular): widening with age is among the strongest age signals"),
    (("default",), "default-mode network: the rs-fMRI network most often reported"),
    (("frontoparietal", "control"), "fronto-parietal network: reported in rs-fMRI brain-age models"),
]


# ---------------------------------------------------------------------------------------------
# 5. modalities


def pid_tables(data):
    """Return the PID paragraphs, the table of atoms (bits) and the fusion-weight table (or None)."""
    pid = data.pid or {}
    held = pid.get("held_out") or {}
    if not pid.get("available") or not held:
        reason = pid.get("reason") or "the primary model has no PID atoms (one modality, or not PIDReg)"
        return [f"PID atoms are not available: {reason}."], None, None
    m1, m2 = pid_pair(held)
    names = {
        "U1": f"unique to {modality_label(m1)}",
        "U2": f"unique to {modality_label(m2)}",
        "R": "redundant (in either)",
        "S": "synergistic (only in both together)",
        "I1": f"total in {m1}",
        "I2": f"total in {m2}",
        "I12": "total in both",
    }
    summary = (pid.get("summary") or {}).get(held.get("pair"), {})
    rows = []
    for atom, meaning in names.items():
        fold = summary.get(atom) or {}
        rows.append(
            [
                atom,
                meaning,
                fmt(held.get(atom), 3),
                ci(held.get(f"{atom}_ci_low"), held.get(f"{atom}_ci_high"), 3),
                f"{fmt(fold.get('mean'), 3)} ± {fmt(fold.get('sd'), 3)}" if fold else DASH,
            ]
        )
    table = make_table(
        f"PID atoms of age (bits), held-out controls (n = {held.get('n', DASH)})",
        ["atom", "meaning", "bits", "95 % CI", "fold models, in sample (mean ± SD)"],
        rows,
        note="Held out: out-of-fold predictions of the controls, bias corrected, bootstrap interval over "
        "participants. In sample: each fold model's latents on its training participants (optimistic).",
    )
    weights = pid.get("fusion_weights") or []
    wtable = None
    if weights:
        keys = [k for k in weights[0] if k != "fold"]
        wrows = [[w.get("fold")] + [fmt(w.get(k), 3) for k in keys] for w in weights]
        mean = {k: float(np.mean([w.get(k, np.nan) for w in weights])) for k in keys}
        wrows.append(["mean"] + [fmt(mean[k], 3) for k in keys])
        wtable = make_table(
            "PIDReg fusion weights per fold model",
            ["fold", *keys],
            wrows,
            note="The weights the PID atoms set on each modality's and the joint term's "
            "prediction (they sum to 1).",
        )
    text = [
        "Partial information decomposition (Williams & Beer 2010; Gaussian closed form, Barrett 2015) splits "
        f"the information about age that the {m1} and {m2} predictions carry into four atoms, in bits: what "
        "only one modality carries (unique), what either carries (redundant), and what appears only "
        "when both "
        "are combined (synergistic). Bits measure how much the predictions narrow down age, not years; an "
        "atom whose interval reaches zero is not distinguishable from none in this cohort.",
        "The literature expects structural MRI to carry most of the age information and fMRI to add a "
        "smaller, partly distinct signal (large unique structural and redundant atoms, a small functional "
        "and synergistic share).",
    ]
    return text, table, wtable


def _selection_table(selection: dict):
    """Tabulate the ``modality_selection`` block of ``metrics.json``."""
    rows = []
    for r in selection.get("rows", []):
        acc = r.get("controls_uncorrected") or {}
        saved = r.get("preprocessing_seconds_saved_per_participant")
        skipped = ", ".join(r.get("stages_skipped") or []) or "none"
        rows.append([
            r.get("row", ""), " + ".join(r.get("modalities") or []), fmt(r.get("fusion_weight_covered"), 2),
            f"{fmt(acc.get('mae'), 2)} {ci(acc.get('mae_ci_low'), acc.get('mae_ci_high'), 2)}",
            f"{fmt(acc.get('r'), 2)} {ci(acc.get('r_ci_low'), acc.get('r_ci_high'), 2)}",
            signed(r.get("mae_minus_full"), 2),
            fmt(1000 * r["inference_seconds_per_participant"], 2)
            if r.get("inference_seconds_per_participant") is not None else DASH,
            f"{fmt(saved, 1)} ({skipped})" if saved is not None else DASH,
        ])
    weights = ", ".join(f"{k} {fmt(v, 2)}" for k, v in (selection.get("mean_fusion_weights") or {}).items())
    return make_table(
        "Modality selection: the fitted primary model predicting from a subset of its modalities "
        "(uncorrected, controls, out of fold)",
        ["row", "modalities kept", "fusion weight covered", "MAE (y) [95 % CI]", "r [95 % CI]",
         "ΔMAE vs full (y)", "inference (ms/participant)", "preprocessing saved (s/participant; stages)"],
        rows,
        note=f"Recommended: {selection.get('rule', '')}. Mean fusion weights: {weights}. "
             + str(selection.get("note", "")),
    )


def modality_accuracy(data):
    """Return the modality-selection table (``metrics.json``), or per-modality accuracy, or None."""
    model = (data.metrics.get("models") or {}).get(data.primary) or {}
    if model.get("modality_selection", {}).get("rows"):
        return _selection_table(model["modality_selection"])
    entry = model.get("controls") or {}
    per = entry.get("per_modality") or {}
    fused = entry.get("uncorrected") or {}
    if not per:
        return None
    rows = [
        [
            f"{data.primary}: all modalities (fused)",
            fmt(fused.get("mae"), 2),
            fmt(fused.get("r"), 2),
            fmt(fused.get("gap_age_slope"), 2),
        ]
    ]
    for m, v in per.items():
        rows.append(
            [
                f"{data.primary}: {modality_label(m)} only",
                fmt(v.get("mae"), 2),
                fmt(v.get("r"), 2),
                fmt(v.get("gap_age_slope"), 2),
            ]
        )
    return make_table(
        "Modality selection: the primary model predicting from each modality alone (uncorrected, controls)",
        ["prediction", "MAE (y)", "r", "gap–age slope"],
        rows,
        note="The same fitted model restricted to one modality's term (modality selection), out of fold.",
    )


def _expectation_text(data) -> str | None:
    """Whether this cohort's atoms follow the literature's expectation (structural MRI dominates)."""
    held = (data.pid or {}).get("held_out") or {}
    if not data.pid.get("available") or not held:
        return None
    m1, m2 = pid_pair(held)
    unique = {m1: held.get("U1", math.nan), m2: held.get("U2", math.nan)}
    structural = next((m for m in unique if m.startswith("anat")), None)
    if structural is None or not all(math.isfinite(v) for v in unique.values()):
        return None
    other = m2 if structural == m1 else m1
    if unique[structural] >= unique[other]:
        return (f"This cohort agrees: {fmt(unique[structural], 2)} bits unique to {structural} against "
                f"{fmt(unique[other], 2)} unique to {other}.")
    return (f"This cohort departs from it: {fmt(unique[other], 2)} bits unique to {other} against "
            f"{fmt(unique[structural], 2)} unique to {structural}; check the per-modality accuracy below.")


def _selection_text(data) -> str | None:
    """Whether fusing beats the best single modality, from the modality-selection predictions."""
    entry = ((data.metrics.get("models") or {}).get(data.primary) or {}).get("controls") or {}
    per = {m: v for m, v in (entry.get("per_modality") or {}).items()
           if math.isfinite(v.get("mae", math.nan))}
    fused = entry.get("uncorrected") or {}
    if not per or not math.isfinite(fused.get("mae", math.nan)):
        return None
    best = min(per, key=lambda m: per[m]["mae"])
    interval = ci(fused.get("mae_ci_low"), fused.get("mae_ci_high"), 2)
    if per[best]["mae"] < fused["mae"]:
        return (f"From {modality_label(best)} alone the primary model's MAE is "
                f"{fmt(per[best]['mae'], 2)} years against {fmt(fused['mae'], 2)} {interval} fused: in this "
                f"cohort, fusing the modalities does not improve on {best} alone.")
    return (f"Fusing improves on the best single modality: MAE {fmt(fused['mae'], 2)} {interval} years fused "
            f"against {fmt(per[best]['mae'], 2)} from {modality_label(best)} alone.")


def modalities_text(data) -> list[str]:
    """Return the paragraphs on the literature's expectation, selection and Shapley contributions."""
    text = [t for t in (_expectation_text(data), _selection_text(data)) if t]
    contrib = data.table("contributions")
    if contrib is None:
        return [*text, "Per-participant modality contributions are not available for this run."]
    shap = [c for c in contrib.columns if c.startswith("shap_")]
    means = {c[5:]: float(contrib[c].abs().mean()) for c in shap}
    parts = ", ".join(f"{k}: {fmt(v, 2)} y" for k, v in means.items())
    return [
        *text,
        f"Mean absolute contribution to predicted age per term (Shapley values, years): {parts}. "
        "A contribution is relative to the cohort's mean prediction, not to the participant's age.",
    ]


# ---------------------------------------------------------------------------------------------
# 6. atlas


def _literature_note(region: str) -> str:
    low = str(region).lower()
    for keys, note in LITERATURE_REGIONS:
        if any(k in low for k in keys):
            return note
    return ""


def atlas_tables(data):
    """Return the atlas-view paragraph and the table of the top attributed regions (or None)."""
    regions = data.table("regions")
    if regions is None or not len(regions):
        return (
            [
                "Region attributions are not available for this run (group.attributions off, an apply "
                "run, or no tabular atlas input)."
            ],
            None,
        )
    top = regions.sort_values("attribution", ascending=False)
    # a unit that is both a region and a lobe (a tissue total) is listed once
    top = top.drop_duplicates(["modality", "region", "attribution"])
    rows = []
    for _, r in top.head(20).iterrows():
        rows.append(
            [
                r["modality"],
                r["level"],
                region_name(r["region"]),
                r.get("lobe") if isinstance(r.get("lobe"), str) else DASH,
                r.get("network") if isinstance(r.get("network"), str) else DASH,
                f"{fmt(r['attribution'], 2)} {ci(r['ci_low'], r['ci_high'], 2)}",
                signed(r.get("mean_signed"), 2),
                _literature_note(r["region"]),
            ]
        )
    table = make_table(
        "Top regions, lobes and networks by mean absolute attribution (years)",
        [
            "modality",
            "level",
            "region",
            "lobe",
            "network",
            "|attribution| (y) [95 % CI]",
            "mean signed (y)",
            "in the literature",
        ],
        rows,
        note="Attribution: how much the primary model's out-of-fold prediction changes when the region's "
        "features are set to the training controls' mean; mean over controls of its absolute value. "
        "Correlated regions share credit; this is not a causal or anatomical-specificity claim.",
    )
    n_lit = sum(1 for r in rows if r[-1])
    text = [
        f"The {len(top)} rows of regions.tsv rank regions, lobes and networks by how much the model's "
        f"prediction depends on them. {n_lit} of the top {len(rows)} are regions the brain-age literature "
        "reports as drivers (lateral ventricles, hippocampus, thalamus, frontal and temporo-parietal "
        "cortex, cerebellum; default-mode and fronto-parietal networks for rs-fMRI)."
    ]
    return text, table


def atlas_pid_tables(data):
    """Describe the PID atoms per region (``regions_pid.tsv``) and list the regions with most information."""
    table = data.table("regions_pid")
    if table is None or not len(table):
        return ["PID atoms per region are not available for this run (they need a regional and a "
                "connectivity input on the same atlas, and group.regions_pid)."], None
    est = table[table["I_joint"].notna()].sort_values("I_joint", ascending=False)
    rows = []
    for _, r in est.head(15).iterrows():
        cells = [region_name(r["region"]), r["lobe"] if isinstance(r["lobe"], str) else DASH,
                 r["network"] if isinstance(r["network"], str) else DASH]
        for atom in ("U_struct", "U_func", "R", "S"):
            cells.append(f"{fmt(r[atom], 2)} {ci(r[f'{atom}_ci_low'], r[f'{atom}_ci_high'], 2)}")
        cells += [fmt(r["I_joint"], 2), int(r["n"])]
        rows.append(cells)
    above = {a: int((est[f"{a}_ci_low"] > 0).sum()) for a in ("U_struct", "U_func", "R", "S")}
    n = int(est["n"].max()) if len(est) else 0
    text = [
        f"Per region, the Gaussian PID of the controls' age (n = {n}) with respect to the region's "
        "grey-matter volume (structure) and its connectivity profile (function, reduced to a few "
        "principal components): "
        "where in the brain age information is structural only, functional only, shared or synergistic. "
        f"{len(est)} regions have an estimate; intervals above zero: U_struct {above['U_struct']}, "
        f"U_func {above['U_func']}, R {above['R']}, S {above['S']} (no correction for the number of "
        "regions). "
        "This is a descriptive, in-sample decomposition of this cohort's controls, not the model's use of "
        "the region; with few controls the intervals are wide and rankings within overlapping intervals "
        "mean nothing. One unique atom of a region is zero by construction (R = min(I_struct, I_func)).",
    ]
    return text, make_table(
        "PID atoms of age per region (bits), the 15 regions with the most joint information",
        ["region", "lobe", "network", "U_struct [95 % CI]", "U_func [95 % CI]", "R [95 % CI]", "S [95 % CI]",
         "I joint", "n"], rows,
        note="Bootstrap intervals over controls (principal axes held fixed); regions_pid.tsv has every "
             "region.",
    )
