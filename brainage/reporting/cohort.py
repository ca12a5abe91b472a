"""What the cohort report says: its paragraphs and tables, from the group level's files.

Every function takes a :class:`~brainage.reporting.data.ReportData` and returns text
or a table (see :mod:`brainage.reporting.formatting`); nothing here draws a figure or
recomputes a model. Where an input is missing, the function says so in a sentence
instead of raising, so that the rest of the report is written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from .formatting import DASH, ci, fmt, fmt_p, link, make_table, signed
from .interpretation import atlas_pid_tables, atlas_tables, modalities_text, modality_accuracy, pid_tables
from .labels import MODALITY_NAMES, modality_label, pid_pair
from .literature import CAVEAT, comparison_rows, load_literature, match_groups
from .scope import scope_text

__all__ = ["cohort_context", "literature_rows"]

#: References of the methods paragraph.
REFERENCES = [
    (
        "de Lange et al. 2022",
        "Mind the gap: performance metric evaluation in brain-age prediction. Hum Brain Mapp 43:3113",
        "10.1002/hbm.25837",
    ),
    ("Cole et al. 2018", "Brain age predicts mortality. Mol Psychiatry 23:1385", "10.1038/mp.2017.62"),
    (
        "Johnson et al. 2007",
        "Adjusting batch effects in microarray expression data using empirical "
        "Bayes methods (ComBat). Biostatistics 8:118",
        "10.1093/biostatistics/kxj037",
    ),
    (
        "Williams & Beer 2010",
        "Nonnegative decomposition of multivariate information. arXiv 1004.2515",
        "10.48550/arXiv.1004.2515",
    ),
    (
        "Barrett 2015",
        "Exploration of synergistic and redundant information sharing in static and "
        "dynamical Gaussian systems. Phys Rev E 91:052802",
        "10.1103/PhysRevE.91.052802",
    ),
    (
        "Avants et al. 2008",
        "Symmetric diffeomorphic image registration with cross-correlation (ANTs). Med Image Anal 12:26",
        "10.1016/j.media.2007.06.004",
    ),
    (
        "Abraham et al. 2014",
        "Machine learning for neuroimaging with scikit-learn (nilearn). Front Neuroinform 8:14",
        "10.3389/fninf.2014.00014",
    ),
    (
        "Seabold & Perktold 2010",
        "statsmodels: econometric and statistical modeling with Python. Proc 9th Python in Science Conf",
        "10.25080/Majora-92bf1922-011",
    ),
]


def _counts(mapping: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((mapping or {}).items(), key=lambda kv: -kv[1])) or DASH


def _uncorrected(data, model=None) -> dict:
    model = model or data.primary
    return (((data.metrics.get("models") or {}).get(model) or {}).get("controls") or {}).get(
        "uncorrected"
    ) or {}


def _group_rows(data) -> pd.DataFrame:
    groups = data.table("groups")
    if groups is None or not len(groups):
        return pd.DataFrame()
    return groups[groups["scope"] == "all"]


# ---------------------------------------------------------------------------------------------
# 1. summary


def _cohort_text(data) -> str:
    c = data.metrics.get("cohort") or {}
    if not c:
        return "The cohort summary is not available (metrics.json was not written)."
    sessions = ""
    pred = data.primary_predictions()
    if pred is not None and pred["session"].notna().any():
        sessions = f" in {pred['participant_id'].nunique()} participants"
    return (
        f"{c.get('n', DASH)} scans{sessions} were kept for the group level: "
        f"{_counts(c.get('groups'))} (groups); ages {fmt(c.get('age_min'))}–{fmt(c.get('age_max'))} years "
        f"(mean {fmt(c.get('age_mean'))}); sex {_counts(c.get('sex'))}; sites {_counts(c.get('sites'))}. "
        f"{data.metrics.get('n_excluded', 0)} exclusion row(s) are listed below."
    )


def _input_text(spec: dict) -> str:
    """Describe one ``group.inputs`` entry, e.g. ``fALFF and ReHo maps at 4 mm (3D CNN)``."""
    if spec.get("kind") == "maps":
        names = [MAP_NAMES.get(str(n), str(n)) for n in spec.get("maps") or []]
        res = f" at {float(spec['resolution']):g} mm" if spec.get("resolution") is not None else ""
        return f"{' and '.join(names) or 'MNI'} maps{res} in MNI space (3D CNN encoders)"
    text = f"{spec.get('kind')} features" + (f" on the {spec['atlas']} atlas" if spec.get("atlas") else "")
    return text


#: How the report names the MNI maps of ``kind: maps`` inputs.
MAP_NAMES = {"falff": "fALFF", "alff": "ALFF", "reho": "ReHo", "dmn": "default-mode connectivity",
             "GM_modulated": "modulated GM", "GM": "GM probability", "WM": "WM probability",
             "CSF": "CSF probability", "T1w": "T1w"}


def _run_text(data) -> str:
    cfg = data.bundle.get("group_config") or {}
    versions = data.bundle.get("versions") or data.record.get("versions") or {}
    cv = data.metrics.get("cv") or (data.bundle.get("cross_validation") or {}).get("settings") or {}
    inputs = cfg.get("inputs") or {}
    inp = "; ".join(f"{modality_label(m)}: {_input_text(v)}" for m, v in inputs.items())
    soft = ", ".join(
        f"{k} {versions[k]}"
        for k in ("brainage", "torch", "monai", "nilearn", "antspyx", "scikit-learn", "statsmodels")
        if k in versions
    )
    if data.mode == "apply":
        trained = data.bundle.get("trained_on") or {}
        head = (
            f"A trained model bundle ({data.record.get('bundle', DASH)}; model {data.primary}, trained on "
            f"{trained.get('n', DASH)} controls aged {fmt(trained.get('age_min'))}–"
            f"{fmt(trained.get('age_max'))}) was applied to this cohort without refitting."
        )
    else:
        bc = cfg.get("bias_correction") or {}
        cb = cfg.get("combat") or {}
        combat = f"on (batch: {cb.get('batch')})" if cb.get("enabled") else "off"
        head = (
            f"Models {', '.join(cfg.get('models') or [])} (primary: {data.primary}) were "
            f"cross-validated on the controls: {cv.get('scheme', 'k-fold')} with "
            f"{cv.get('n_splits', DASH)} folds (seed {cv.get('seed', DASH)}, {cv.get('inner_splits', DASH)} "
            f"inner folds for early stopping and the bias correction); non-controls were predicted by "
            f"every fold model (mean). Age-bias correction: {bc.get('method', DASH)} (degree "
            f"{bc.get('degree', 1)}), fitted on out-of-fold controls only. ComBat: "
            f"{combat}."
        )
    pipe = data.pipeline or {}
    pipeline = (f"Participant level: pipeline '{pipe['name']}' (effective configuration {pipe['config']}). "
                if pipe else "")
    return f"{pipeline}{head} Inputs: {inp or DASH}. Software: {soft or DASH}."


def _exclusions_table(data):
    excl = data.table("exclusions")
    if excl is None or not len(excl):
        return make_table(
            "Exclusions", ["reason", "n", "participants"], [], note="No participant was excluded."
        )
    rows = []
    for (modality, reason), sub in excl.fillna({"modality": DASH}).groupby(
        ["modality", "reason"], sort=False
    ):
        ids = ", ".join(sorted(set(sub["participant_id"].astype(str))))
        rows.append([f"{reason} ({modality})", len(sub), ids])
    return make_table("Exclusions, by reason", ["reason (modality)", "n", "participants"], rows)


def _findings_text(data) -> list[str]:
    out = []
    u = _uncorrected(data)
    if u:
        out.append(
            f"Out of sample, the primary model ({data.primary}) predicted the controls' ages with a mean "
            f"absolute error of {fmt(u.get('mae'))} years "
            f"(95 % CI {ci(u.get('mae_ci_low'), u.get('mae_ci_high'))}; "
            f"r = {fmt(u.get('r'), 2)}; n = {u.get('n')}, "
            f"ages {fmt(u.get('age_min'), 0)}–{fmt(u.get('age_max'), 0)}). "
            "This is uncorrected accuracy: the figure to quote."
        )
    else:
        out.append("No accuracy is available: the cohort had no controls with predictions.")
    for _, r in _group_rows(data).iterrows():
        if not math.isfinite(float(r.get("mean_gap", float("nan")))):
            continue
        direction = "older" if r["mean_gap"] > 0 else "younger"
        crosses = r["ci_low"] <= 0 <= r["ci_high"]
        verdict = (
            "the interval includes zero: this cohort shows no clear difference"
            if crosses
            else "the interval excludes zero"
        )
        out.append(
            f"After age-bias correction and adjustment for the covariates, the {r['group']} group's brains "
            f"looked {fmt(abs(r['mean_gap']))} years {direction} than the controls' (n = {int(r['n'])}; "
            f"95 % CI {ci(r['ci_low'], r['ci_high'])} years; Cohen's d = {fmt(r['cohens_d'], 2)}; "
            f"p = {fmt_p(r['p'])}); {verdict}."
        )
    held = (data.pid or {}).get("held_out") or {}
    if data.pid.get("available") and held:
        m1, m2 = pid_pair(held)
        atoms = {k: held.get(k, float("nan")) for k in ("U1", "U2", "R", "S")}
        top = max(atoms, key=lambda k: atoms[k] if math.isfinite(atoms[k]) else -1)
        name = {
            "U1": f"unique to {modality_label(m1)}",
            "U2": f"unique to {modality_label(m2)}",
            "R": "redundant (shared by both modalities)",
            "S": "synergistic (only in the combination)",
        }[top]
        out.append(
            f"Of the information about age in the two modalities' held-out predictions "
            f"({fmt(held.get('I12'), 2)} bits jointly), the largest part is {name}: "
            f"{fmt(atoms[top], 2)} bits "
            f"(95 % CI {ci(held.get(top + '_ci_low'), held.get(top + '_ci_high'), 2)})."
        )
    out.append(
        "These are group-level estimates for this cohort; a single participant's gap is not a "
        "diagnosis (section 3 and the participant pages)."
    )
    return out


# ---------------------------------------------------------------------------------------------
# 2. accuracy

_METRIC_COLUMNS = [
    "model",
    "n",
    "ages (y)",
    "MAE (y) [95 % CI]",
    "RMSE (y) [95 % CI]",
    "r [95 % CI]",
    "R²",
    "gap–age slope",
    "Spearman ρ(gap, age)",
]


def _metric_row(name, m, primary):
    return [
        name + (" (primary)" if name == primary else ""),
        m.get("n", DASH),
        f"{fmt(m.get('age_min'), 0)}–{fmt(m.get('age_max'), 0)}",
        f"{fmt(m.get('mae'), 2)} {ci(m.get('mae_ci_low'), m.get('mae_ci_high'), 2)}".strip(),
        f"{fmt(m.get('rmse'), 2)} {ci(m.get('rmse_ci_low'), m.get('rmse_ci_high'), 2)}".strip(),
        f"{fmt(m.get('r'), 2)} {ci(m.get('r_ci_low'), m.get('r_ci_high'), 2)}".strip(),
        fmt(m.get("r2"), 2),
        fmt(m.get("gap_age_slope"), 2),
        fmt(m.get("gap_age_spearman"), 2),
    ]


def _metrics_tables(data):
    models = data.metrics.get("models") or {}
    rows, corrected = [], []
    for name, entry in models.items():
        controls = entry.get("controls") or {}
        if controls.get("uncorrected"):
            rows.append(_metric_row(name, controls["uncorrected"], data.primary))
        c = controls.get("corrected_not_accuracy") or {}
        if c:
            corrected.append(
                [
                    name,
                    c.get("n", DASH),
                    fmt(c.get("mae"), 2),
                    fmt(c.get("r"), 2),
                    fmt(c.get("gap_age_slope"), 3),
                    fmt(c.get("gap_age_spearman"), 3),
                ]
            )
    unc = make_table(
        "Accuracy on the controls, out of sample (uncorrected)",
        _METRIC_COLUMNS,
        rows,
        note="Intervals: 95 % bootstrap over participants. MAE and r depend on the age range.",
    )
    cor = make_table(
        "After age-bias correction (not accuracy)",
        ["model", "n", "MAE (y)", "r", "gap–age slope", "Spearman ρ(gap, age)"],
        corrected,
        note=data.metrics.get("note", "Corrected metrics use chronological age and are not accuracy."),
    )
    return unc, cor


def _accuracy_text(data) -> list[str]:
    u = _uncorrected(data)
    text = [
        "Accuracy is measured on the controls only, each predicted by a model that did not train on "
        "them. Uncorrected metrics come first; the bias-corrected ones show that the gap no longer "
        "depends on age, and are not accuracy (de Lange et al. 2022)."
    ]
    if data.mode == "apply":
        text.append(
            "This cohort was predicted by a bundle trained elsewhere: every participant is out of "
            "sample, and the bias correction is the training cohort's."
        )
    if u and abs(u.get("gap_age_spearman", 0) or 0) >= 0.1:
        text.append(
            f"The uncorrected gap depends on age (Spearman ρ = {fmt(u.get('gap_age_spearman'), 2)}), "
            "as expected from regression towards the mean; group comparisons use the corrected gap "
            "with age as a covariate."
        )
    return text


# ---------------------------------------------------------------------------------------------
# 3. groups


def _groups_table(data):
    groups = data.table("groups")
    if groups is None or not len(groups):
        return make_table("Group comparisons", ["scope"], [], note="No group comparison was possible.")
    rows = []
    for _, r in groups.iterrows():
        het = ""
        if r["scope"] == "pooled" and pd.notna(r.get("i2")):
            het = f"I² = {fmt(r['i2'], 0)} %, τ² = {fmt(r['tau2'], 2)}, k = {int(r['k_sites'])}"
        n = DASH if pd.isna(r.get("n")) else int(r["n"])
        rows.append(
            [
                r["scope"],
                r["group"],
                n,
                signed(r["mean_gap"]),
                fmt(r["se"], 2),
                ci(r["ci_low"], r["ci_high"]),
                f"{fmt(r.get('cohens_d'), 2)} {ci(r.get('d_ci_low'), r.get('d_ci_high'), 2)}".strip(),
                fmt_p(r["p"]),
                signed(r.get("raw_mean_gap")),
                het or (r.get("note") or ""),
            ]
        )
    return make_table(
        "Adjusted brain-age gap of each group against the controls",
        [
            "scope",
            "group",
            "n",
            "gap (y)",
            "SE",
            "95 % CI (y)",
            "Cohen's d [95 % CI]",
            "p",
            "raw gap (y)",
            "note",
        ],
        rows,
        note="gap: the group's coefficient of the model below (years, corrected gap); raw gap: mean "
        "uncorrected gap minus the controls'. Cohen's d uses the pooled SD of corrected gaps.",
    )


def _groups_text(data) -> list[str]:
    rows = _group_rows(data)
    formula = str(rows["model"].iloc[0]) if len(rows) and "model" in rows else ""
    text = []
    if formula:
        text.append(
            f"Each group is compared with the controls by ordinary least squares (statsmodels): "
            f"{formula}. Dropped covariates (constant in the cohort) are listed in groups.tsv."
        )
    text.append(
        "Psychiatric effects on brain age are small (d ≈ 0.1–0.5): a group difference is not a "
        "test that classifies individuals."
    )
    return text


# ---------------------------------------------------------------------------------------------
# 4. literature


def literature_rows(data) -> tuple[pd.DataFrame, dict]:
    """Return the literature comparison's rows (cohort rows first) and the group → condition matches."""
    lit = load_literature()
    rows = _group_rows(data)
    cfg = data.bundle.get("group_config") or {}
    matches = match_groups(rows["group"].astype(str) if len(rows) else [], lit, cfg.get("conditions"))
    mods = [m for m in (cfg.get("inputs") or {})]
    modality = " + ".join(MODALITY_NAMES.get(m, m) for m in mods) or "this cohort"
    return comparison_rows(data.table("groups"), lit, matches, modality), matches


def _literature(data):
    rows, matches = literature_rows(data)
    text = []
    if matches:
        text.append(
            "Matched by condition name: " + "; ".join(f"group '{g}' → {c}" for g, c in matches.items()) + "."
        )
    else:
        text.append(
            "No group of this cohort matches a condition of the shipped table (reports/literature.tsv); "
            "all published rows are shown for orientation. Map a label to a condition with "
            "group.conditions in the pipeline spec (e.g. patient: schizophrenia)."
        )
    text.append(CAVEAT)
    lit = load_literature()
    shown = lit[lit["condition"].isin(set(matches.values()))] if matches else lit
    table_rows = []
    for _, r in shown.iterrows():
        n = DASH if pd.isna(r["n_patients"]) else f"{int(r['n_patients'])}"
        doi = f"doi:{r['doi']}" if isinstance(r["doi"], str) and r["doi"] else DASH
        table_rows.append(
            [
                r["condition"],
                r["citation"],
                r["modality"],
                signed(r["gap_years"], 2),
                ci(r["ci_low"], r["ci_high"], 2) + (" (± 1.96 SE)" if r["interval"] == "± 1.96 SE" else ""),
                r["effect"] if isinstance(r["effect"], str) else DASH,
                n,
                doi,
            ]
        )
    table = make_table(
        "Published brain-age gaps (patients minus controls)",
        ["condition", "study", "modality", "gap (y)", "95 % CI (y)", "effect", "n patients", "DOI"],
        table_rows,
    )
    return text, table, rows


# ---------------------------------------------------------------------------------------------
# 7. QC


def _qc(data, pages: dict):
    qc = data.qc if data.qc is not None else pd.DataFrame()
    pred = data.primary_predictions()
    excl = data.table("exclusions")
    excluded = {}
    if excl is not None:
        for _, r in excl.iterrows():
            excluded.setdefault(str(r["participant_id"]), []).append(str(r["reason"]))
    groups = {} if pred is None else dict(zip(pred["participant_id"].astype(str), pred["group"].astype(str)))
    rows, flagged = [], 0
    for _, r in qc.iterrows():
        pid = str(r["participant_id"])
        flags = "; ".join(x for x in (r.get("anat_flags"), r.get("func_flags")) if isinstance(x, str) and x)
        flagged += bool(flags) or pid in excluded
        page = pages.get((pid, r["session"] if isinstance(r["session"], str) else None))
        figs = []
        for col, text in (("anat_mosaic", "T1w mosaic"), ("func_carpet", "BOLD carpet")):
            if isinstance(r.get(col), (str, os.PathLike)) and str(r.get(col)):
                figs.append(link(text, _relative(r[col], data.output_dir)))
        rows.append(
            [
                link(pid, page) if page else pid,
                r["session"] if isinstance(r["session"], str) else DASH,
                groups.get(pid, DASH),
                fmt(r.get("mean_fd"), 3),
                fmt(r.get("percent_scrubbed"), 1),
                fmt(r.get("registration_similarity"), 3),
                flags or DASH,
                "; ".join(excluded.get(pid, [])) or DASH,
                *([*figs, "", ""])[:2],
            ]
        )
    table = make_table(
        "Participant-level quality control",
        [
            "participant",
            "session",
            "group",
            "mean FD (mm)",
            "scrubbed (%)",
            "registration similarity",
            "flags",
            "excluded from the group level",
            "QC figure",
            "QC figure",
        ],
        rows,
        note="Mean framewise displacement (Power et al. 2012) over the rest runs; scrubbed: volumes censored "
        "for motion; registration similarity: normalized correlation of the T1w with the MNI template "
        "after registration. Figures link to the participant level's files.",
    )
    text = [
        f"{len(rows)} participant(s) have participant-level QC records; {flagged} are flagged or excluded."
    ]
    return text, table


def _relative(path, output_dir) -> str:
    """Link from ``OUTPUT_DIR/reports/`` to a file, also when participant folders are symlinks."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(output_dir))
    return "../" + Path(rel).as_posix()


# ---------------------------------------------------------------------------------------------
# 8. methods


def _methods(data):
    cfg = data.bundle.get("group_config") or {}
    versions = data.bundle.get("versions") or {}
    cv = data.metrics.get("cv") or {}
    inputs = cfg.get("inputs") or {}
    v = lambda k: versions.get(k, "(version not recorded)")  # noqa: E731
    pre = []
    if any(k.startswith("anat") for k in inputs):
        pre.append(
            f"T1-weighted images were bias-corrected (N4), registered non-linearly to the MNI152 template "
            f"and segmented into tissue classes with ANTs (antspyx {v('antspyx')}; Avants et al. 2008); "
            "regional grey-matter volumes were computed per atlas region"
        )
    if any(k.startswith("func") for k in inputs):
        pre.append(
            f"resting-state fMRI was motion-corrected, registered to the T1w and MNI space, denoised with "
            f"motion and tissue confounds, and parcellated with nilearn {v('nilearn')} "
            "(Abraham et al. 2014) into region time series and Fisher-z connectivity matrices"
        )
    atlases = sorted({i.get("atlas") for i in inputs.values() if i.get("atlas")})
    models = ", ".join(cfg.get("models") or [data.primary])
    text = (
        f"Images were processed with brainage {v('brainage')} (Python {v('python')}). "
        + ("; ".join(pre) + (f" (atlas: {', '.join(atlases)}). " if atlases else ". ") if pre else "")
        + f"Brain age was predicted with {models} (primary: {data.primary}; PyTorch {v('torch')}, "
        f"scikit-learn {v('scikit-learn')}). Models were trained on controls only, with "
        f"{cv.get('n_splits', DASH)}-fold cross-validation stratified by age (seed {cv.get('seed', DASH)}); "
        "feature scaling, harmonization and the age-bias correction were fitted inside the training folds. "
        "The age bias was corrected by regressing the controls' out-of-fold predictions on age (de Lange & "
        "Cole; de Lange et al. 2022) and the corrected gap was compared between groups by ordinary "
        "least squares "
        "with age, age², sex and site as covariates (statsmodels; Seabold & Perktold 2010), reporting the "
        "adjusted gap in years with its 95 % CI and Cohen's d. Accuracy (MAE, r, R²) is reported before "
        "correction. Modality contributions were quantified by Gaussian partial information decomposition "
        "(Williams & Beer 2010; Barrett 2015) in bits, with bootstrap intervals."
    )
    refs = make_table(
        "References", ["reference", "work", "DOI"], [[a, b, f"doi:{c}"] for a, b, c in REFERENCES]
    )
    return [text], refs


# ---------------------------------------------------------------------------------------------


def cohort_context(data, pages: dict | None = None) -> dict:
    """Every paragraph and table of the cohort report.

    Parameters
    ----------
    data : brainage.reporting.data.ReportData
    pages : dict, optional
        ``(participant_id, session) → file name`` of the participant pages, for links.

    Returns
    -------
    dict
        ``{"text": {id: [paragraphs]}, "tables": {id: table or None}, "literature_rows": DataFrame}``.
    """
    pages = pages or {}
    text, tables = {}, {}
    text["findings"] = _findings_text(data)
    text["cohort"] = [_cohort_text(data)]
    text["run"] = [_run_text(data)]
    text["exclusions"] = []
    text["scope"] = scope_text(data)
    tables["exclusions"] = _exclusions_table(data)
    text["accuracy"] = _accuracy_text(data)
    tables["metrics"], tables["metrics_corrected"] = _metrics_tables(data)
    text["groups"] = _groups_text(data)
    tables["groups"] = _groups_table(data)
    text["literature"], tables["literature"], lit_rows = _literature(data)
    text["pid"], tables["pid"], tables["fusion_weights"] = pid_tables(data)
    tables["modality_accuracy"] = modality_accuracy(data)
    text["modalities"] = modalities_text(data)
    text["atlas"], tables["regions"] = atlas_tables(data)
    text["atlas_pid"], tables["regions_pid"] = atlas_pid_tables(data)
    text["qc"], tables["qc"] = _qc(data, pages)
    text["methods"], tables["references"] = _methods(data)
    return {"text": text, "tables": tables, "literature_rows": lit_rows}
