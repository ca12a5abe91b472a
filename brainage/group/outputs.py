"""The group level's output files: tables with JSON sidecars, metrics, PID summary.

Everything goes under ``OUTPUT_DIR/group/`` (names fixed by the design):
``predictions.tsv``, ``exclusions.tsv``, ``groups.tsv``, ``metrics.json``,
``pid.json`` and the model bundle ``model/``. Each TSV has a JSON sidecar of
the same name describing every column (BIDS style: ``{"column":
{"Description": …, "Units": …}}``). Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..writing import atomic_write_json, atomic_write_tsv, jsonable

__all__ = ["COLUMNS", "REGIONS_COLUMNS", "REGIONS_PID_COLUMNS", "REGION_PARTICIPANT_COLUMNS", "group_dir",
           "jsonable", "write_json", "write_table"]

#: Descriptions of every column the group level writes.
COLUMNS = {
    "participant_id": ("Participant label (sub-<label>).", None),
    "session": ("Session label (ses-<label>), n/a without sessions.", None),
    "age": ("Chronological age.", "years"),
    "sex": ("Sex as given in participants.tsv.", None),
    "site": ("Acquisition site (the batch for ComBat and per-site statistics).", None),
    "group": ("Clinical group as given in participants.tsv.", None),
    "is_control": ("Whether the group matches group.control_labels (case-insensitive).", None),
    "fold": ("Outer cross-validation fold whose model predicted this control out of sample; -1: "
             "not a control, predicted by every fold model (mean of n_models predictions); "
             "'bundle': predicted by an applied model bundle.", None),
    "n_models": ("Number of models whose predictions are averaged in this row.", None),
    "model": ("Model name (brainage.estimators.registry).", None),
    "predicted_age": ("Predicted age, uncorrected, out of sample.", "years"),
    "gap": ("Brain-age gap: predicted_age - age (uncorrected).", "years"),
    "predicted_age_corrected": ("Predicted age after the age-bias correction fitted on training "
                                "controls (uses chronological age: not a prediction).", "years"),
    "gap_corrected": ("Bias-corrected brain-age gap: predicted_age_corrected - age.", "years"),
    "modality": ("Modality the exclusion applies to ('all' for the whole participant).", None),
    "reason": ("Why the participant (or modality) was excluded, with the measured value.", None),
    "scope": ("'all': one model on all participants; 'site <s>': within that site; 'pooled': "
              "random-effects pooling of the sites.", None),
    "n": ("Participants of this group in the comparison.", None),
    "mean_gap": ("Covariate-adjusted difference of the corrected gap from the reference group "
                 "(OLS coefficient; the pooled estimate for scope 'pooled').", "years"),
    "se": ("Standard error of mean_gap (HC3; random-effects for 'pooled').", "years"),
    "ci_low": ("Lower bound of the 95 % interval of mean_gap.", "years"),
    "ci_high": ("Upper bound of the 95 % interval of mean_gap.", "years"),
    "cohens_d": ("Cohen's d of the corrected gaps against the reference group (pooled SD).", None),
    "d_ci_low": ("Lower bound of the 95 % interval of Cohen's d.", None),
    "d_ci_high": ("Upper bound of the 95 % interval of Cohen's d.", None),
    "p": ("Two-sided p-value of mean_gap.", None),
    "raw_mean_gap": ("Mean corrected gap of the group, unadjusted.", "years"),
    "reference_mean_gap": ("Mean corrected gap of the reference group, unadjusted.", "years"),
    "dropped_covariates": ("Covariates left out of the model, with the reason.", None),
    "note": ("Why a row has no estimate, or how it was computed.", None),
    "tau2": ("Between-site variance of the effect (random effects).", "years^2"),
    "i2": ("I^2 heterogeneity across sites.", "percent"),
    "q": ("Cochran's Q.", None),
    "q_p": ("p-value of Cochran's Q.", None),
    "k_sites": ("Sites pooled.", None),
    "feature": ("Regional feature as the group level names it (<atlas>_<label index>, or a tissue "
                "total such as ventricles_ml).", None),
    "value": ("The participant's value of the feature (units in the units column).", None),
    "expected": ("Normative value for the participant's age and sex: OLS feature ~ 1 + age + age^2 + "
                 "sex on the controls (for a control, fitted without them).", None),
    "z": ("Deviation from the controls' normative model: the standardized prediction error "
          "(controls: externally studentized residual, leave-one-out).", None),
    "flagged": ("Whether |z| > 1.96 (outside the central 95 % band of controls of that age and sex).", None),
    "units": ("Units of value and expected.", None),
}

#: Columns of ``regions.tsv`` (:func:`brainage.interpret.regions.region_summary`), which override
#: :data:`COLUMNS` where a name is shared.
REGIONS_COLUMNS = {
    "modality": ("Modality whose raw features were ablated (group.inputs key).", None),
    "atlas": ("Atlas of the modality's features (brainage.atlases id); n/a without one.", None),
    "level": ("Unit ablated: 'region' (one atlas region, or a tissue total), 'lobe' or 'network' "
              "(every feature of every region of the lobe/network at once: a group ablation, not a "
              "sum of region rows). Tissue totals are units of their own at every level.", None),
    "region": ("Atlas region name, lobe or network name, or a tissue total (Total_GM, Total_WM, "
               "Total_CSF, TIV, Lateral_Ventricles).", None),
    "index": ("Label value of the region in the atlas image; n/a for tissue totals, lobes and "
              "networks.", None),
    "hemisphere": ("Hemisphere of the region (bilateral for tissue totals and lobes/networks "
                   "spanning both).", None),
    "lobe": ("Lobe of the region from the atlas region table.", None),
    "network": ("Network of the region from the atlas region table.", None),
    "attribution": ("Mean over the out-of-fold controls of |predicted_age - predicted_age with the "
                    "unit's raw features set to the training-fold control mean| (primary model; "
                    "each control explained by the fold model that did not train on it).", "years"),
    "ci_low": ("Lower bound of the 95 % interval of attribution: percentile bootstrap over the "
               "controls (1000 resamples; fold models held fixed).", "years"),
    "ci_high": ("Upper bound of the 95 % interval of attribution (bootstrap over controls).", "years"),
    "mean_signed": ("Mean over the out-of-fold controls of the signed attribution (positive: the "
                    "unit's values raise predicted ages above those at the training mean).", "years"),
    "rank": ("Rank of attribution within modality and level (1 = largest; ties share the best "
             "rank).", None),
    "n": ("Out-of-fold controls averaged.", None),
    "n_features": ("Raw features ablated together (a region's connectivity profile: every edge "
                   "touching it).", None),
}
#: Columns of ``regions_participants.tsv`` (:func:`brainage.interpret.regions.participant_regions`).
REGION_PARTICIPANT_COLUMNS = {
    "modality": REGIONS_COLUMNS["modality"],
    "atlas": REGIONS_COLUMNS["atlas"],
    "region": REGIONS_COLUMNS["region"],
    "attribution": ("Signed attribution of this participant's predicted age to the region: "
                    "predicted_age - predicted_age with the region's raw features set to the "
                    "training-fold control mean, out of fold (controls: the fold model that did not "
                    "train on them; patients: the mean over the fold models).", "years"),
}
_PID_ATOMS = {
    "U_struct": "unique to the region's GM volume (in it, not in the connectivity components)",
    "U_func": "unique to the region's connectivity components (in them, not in the GM volume)",
    "R": "redundant: in the GM volume and in the connectivity components alike (min(I_struct, "
         "I_func))",
    "S": "synergistic: only in the GM volume and the connectivity components together "
         "(I_joint - max(I_struct, I_func); may be slightly negative after the bias correction)",
}
#: Columns of ``regions_pid.tsv`` (:func:`brainage.interpret.regions_pid.regions_pid`), which
#: override :data:`COLUMNS` where a name is shared.
REGIONS_PID_COLUMNS = {
    "atlas": ("Atlas shared by the regional and the connectivity input (brainage.atlases id).", None),
    "region": ("Atlas region name (the connectivity parcel's name).", None),
    "index": ("Label value of the region in the atlas image (its GM volume is the regional "
              "feature <atlas>_<index>).", None),
    "hemisphere": REGIONS_COLUMNS["hemisphere"],
    "lobe": REGIONS_COLUMNS["lobe"],
    "network": REGIONS_COLUMNS["network"],
    "n": ("Controls with both inputs whose Gaussianized age is decomposed (patients are never "
          "used).", None),
    "n_struct_features": ("Structural dimensions: the region's GM volume as the regional input "
                          "gives it (1).", None),
    "n_func_features": ("Functional dimensions: principal components of the region's connectivity "
                        "profile, fitted on the same controls, plus the region means of func_maps "
                        "(0: no estimate).", None),
    "n_edges": ("Fisher-z edges in the region's connectivity profile (every edge touching it).", None),
    "func_variance_explained": ("Share of the profile's variance over the controls that the "
                                "principal components keep.", None),
    "func_maps": ("Functional maps whose region means join the connectivity components on the "
                  "functional side (e.g. falff+reho, from a kind: maps input); n/a: connectivity "
                  "only.", None),
    **{atom: (f"Bias-corrected Gaussian PID atom of the controls' rank-Gaussianized age, "
              f"{text}; in-sample and descriptive.", "bits") for atom, text in _PID_ATOMS.items()},
    **{f"{atom}_{end}": (f"{side} bound of the 95 % percentile bootstrap interval of {atom} over the "
                         "controls (500 resamples; principal axes held fixed).", "bits")
       for atom in _PID_ATOMS for end, side in (("ci_low", "Lower"), ("ci_high", "Upper"))},
    "I_struct": ("Bias-corrected Gaussian mutual information of the Gaussianized age and the "
                 "region's GM volume (U_struct + R).", "bits"),
    "I_func": ("Bias-corrected Gaussian mutual information of the Gaussianized age and the "
               "region's connectivity components (U_func + R).", "bits"),
    "I_joint": ("Bias-corrected Gaussian mutual information of the Gaussianized age and both "
                "together (U_struct + U_func + R + S).", "bits"),
    "note": ("Why the region has no estimate (n/a when it has one).", None),
}


def group_dir(output_dir) -> Path:
    """Return ``OUTPUT_DIR/group`` (created)."""
    path = Path(output_dir) / "group"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _describe(column: str, columns: dict | None = None) -> dict:
    if columns and column in columns:
        text, units = columns[column]
    elif column in COLUMNS:
        text, units = COLUMNS[column]
    elif column == "baseline_age":
        text, units = ("Prediction with every fusion term at the training-mean latents (the Shapley "
                       "baseline; the same for every participant of a fold model).", "years")
    elif column.startswith("shap_"):
        term = column.removeprefix("shap_")
        kind = "synergy term of the pair" if "|" in term else "fusion term of the modality"
        text, units = (f"Exact Shapley value of the {kind} {term} in the predicted age, out of fold "
                       "(baseline_age + the shap_ columns = predicted_age).", "years")
    elif column.startswith("local_info_"):
        which = column.removeprefix("local_info_")
        text, units = (f"Pointwise information of the {which} latent(s) about this participant's "
                       "Gaussianized age under the fold's Gaussian model (positive: the latent "
                       "makes the true age more likely than the population does).", "bits")
    elif column.startswith("predicted_age_") and column != "predicted_age_corrected":
        text, units = (f"Predicted age from the {column.removeprefix('predicted_age_')} modality "
                       "alone (the same fitted model, the other modality left out).", "years")
    else:
        text, units = column, None
    return {"Description": text, **({"Units": units} if units else {})}


def write_table(frame: pd.DataFrame, path, *, columns: dict | None = None) -> Path:
    """Write ``frame`` as TSV (``n/a`` for missing) with its JSON sidecar, atomically.

    Parameters
    ----------
    frame : pandas.DataFrame
        The table (its index is not written).
    path : path-like
        ``….tsv``; the sidecar is written beside it as ``….json``.
    columns : dict, optional
        Column name → (description, units) of this table, taking precedence over
        :data:`COLUMNS` (e.g. :data:`REGIONS_COLUMNS`).

    Returns
    -------
    pathlib.Path
        The TSV path.
    """
    path = Path(path)
    out = frame.copy()
    for c in out.columns:
        if out[c].dtype.kind == "f":
            out[c] = out[c].round(6)
    atomic_write_json(path.with_suffix(".json"), {c: _describe(c, columns) for c in out.columns})
    return atomic_write_tsv(path, out)


def write_json(data, path) -> Path:
    """Write ``data`` as strict JSON (NaN as null) atomically."""
    return atomic_write_json(path, jsonable(data))
