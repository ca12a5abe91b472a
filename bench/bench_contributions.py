"""Benchmark: per-participant modality contributions against the true structural and functional age excess.

Reads the group level's out-of-fold contributions of the primary PIDReg
(``OUTPUT_DIR/group/contributions.tsv``: ``shap_anat``, ``shap_func``,
``shap_anat|func``, in years), ``predictions.tsv`` and the simulator's
``sourcedata/brainage-truth/participants_truth.tsv``, and asks whether each
modality's contribution tracks that modality's true excess:

* the **truth**: the structural excess ``structural_age - age`` and the functional excess
  ``functional_age - age`` (each latent age includes the latent's own noise, which the images
  carry, and the patient's designed excess ``structural_age_excess`` / ``functional_age_excess``);
  also the designed excess alone, and each latent age relative to the controls' latent age at the
  same age (``A - E_controls[A | age]``, linear in age), which removes the regression to the
  mean of the quantile map;
* the **contributions**: raw (relative to the baseline, the prediction at the mean latents, so
  dominated by chronological age) and **age-adjusted**: minus the controls' mean contribution
  at the same age (a linear fit on the controls; leave-one-out for the controls themselves);
* Pearson and Spearman correlations (bootstrap 95 % intervals) of ``shap_anat`` with the
  structural and of ``shap_func`` with the functional excess, the two cross-correlations, for
  the patients and for all participants;
* how well the subtypes are told apart: AUC of ``shap_anat - shap_func`` between
  ``structural`` and ``functional`` patients (one-sided Mann-Whitney p), and the mean
  contributions per subtype (controls included) with bootstrap 95 % intervals.

Run from the repository root (``--train`` runs and times the group level first)::

    .venv/bin/python bench/bench_contributions.py --bids /work/cohorts/subtypes/bids [--train] \
        [--config bench/configs/group_parcels.yaml]

Writes ``bench/results/contributions.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result

CONTRIB = ("shap_anat", "shap_func", "shap_anat|func")


def age_adjust(values, age, is_control):
    """``values`` minus the controls' linear fit on age (leave-one-out residuals for the controls)."""
    values, age = np.asarray(values, float), np.asarray(age, float)
    X = np.column_stack([np.ones_like(age), age])
    Xc, yc = X[is_control], values[is_control]
    beta, *_ = np.linalg.lstsq(Xc, yc, rcond=None)
    out = values - X @ beta
    hat = np.einsum("ij,jk,ik->i", Xc, np.linalg.inv(Xc.T @ Xc), Xc)
    out[is_control] = out[is_control] / (1.0 - hat)
    return out


def correlations(x, y, rng, n_boot):
    """Pearson and Spearman with percentile bootstrap 95 % intervals."""
    from scipy.stats import pearsonr, rankdata, spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": len(x), "pearson": None, "spearman": None, "note": "constant input"}
    r, p = pearsonr(x, y)
    rho, p_rho = spearmanr(x, y)
    n = len(x)
    idx = rng.integers(0, n, (n_boot, n))
    xb, yb = x[idx], y[idx]
    ok = (np.ptp(xb, axis=1) > 0) & (np.ptp(yb, axis=1) > 0)
    xb, yb = xb[ok], yb[ok]
    b = np.column_stack([_rowwise_r(xb, yb), _rowwise_r(rankdata(xb, axis=1), rankdata(yb, axis=1))])
    lo, hi = np.percentile(b, [2.5, 97.5], axis=0)
    return {"n": n, "pearson": round(float(r), 3), "pearson_p": float(f"{p:.3g}"),
            "pearson_ci": [round(float(lo[0]), 3), round(float(hi[0]), 3)],
            "spearman": round(float(rho), 3), "spearman_p": float(f"{p_rho:.3g}"),
            "spearman_ci": [round(float(lo[1]), 3), round(float(hi[1]), 3)]}


def _rowwise_r(a, b):
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def mean_ci(values, rng, n_boot):
    """Mean with a percentile bootstrap 95 % interval."""
    values = np.asarray(values, float)
    boots = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"n": len(values), "mean": round(float(values.mean()), 3),
            "ci": [round(float(lo), 3), round(float(hi), 3)]}


def auc(pos, neg):
    """AUC that ``pos`` exceeds ``neg`` and the one-sided Mann-Whitney p."""
    from scipy.stats import mannwhitneyu

    u, p = mannwhitneyu(pos, neg, alternative="greater")
    return {"auc": round(float(u / (len(pos) * len(neg))), 3), "p_one_sided": float(f"{p:.3g}"),
            "n_pos": len(pos), "n_neg": len(neg)}


def evaluate(frame, rng, n_boot) -> dict:
    ctrl = (frame["group"] == "control").to_numpy()
    age = frame["age"].to_numpy(float)
    truths = {}
    for mod, col in (("struct", "structural_age"), ("func", "functional_age")):
        latent = frame[col].to_numpy(float)
        truths[f"{mod}_excess"] = latent - age
        designed = "structural_age_excess" if mod == "struct" else "functional_age_excess"
        truths[f"{mod}_designed"] = frame[designed].to_numpy(float)
        truths[f"{mod}_excess_vs_controls"] = age_adjust(latent, age, ctrl)
    contribs = {}
    for c in CONTRIB:
        contribs[f"{c}_raw"] = frame[c].to_numpy(float)
        contribs[f"{c}_adjusted"] = age_adjust(frame[c].to_numpy(float), age, ctrl)
    pat = ~ctrl
    subsets = {"patients": pat, "all": np.ones_like(pat)}
    pairs = {"anat~struct": ("shap_anat", "struct"), "func~func": ("shap_func", "func"),
             "anat~func (cross)": ("shap_anat", "func"), "func~struct (cross)": ("shap_func", "struct")}
    corr = {}
    for version in ("adjusted", "raw"):
        for truth_kind in ("excess", "excess_vs_controls", "designed"):
            for sname, mask in subsets.items():
                if truth_kind == "designed" and sname == "all":
                    continue  # the designed excess is 0 for every control
                key = f"contrib_{version}|truth_{truth_kind}|{sname}"
                corr[key] = {
                    label: correlations(contribs[f"{c}_{version}"][mask],
                                        truths[f"{t}_{truth_kind}"][mask],
                                        rng, n_boot)
                    for label, (c, t) in pairs.items()
                }
    corr_age = {c: correlations(frame[c].to_numpy(float)[ctrl], age[ctrl], rng, n_boot)["pearson"]
                for c in CONTRIB}
    subtype = frame["patient_subtype"].to_numpy(object)
    groups = {s: subtype == s for s in ("structural", "functional", "shared") if (subtype == s).any()}
    groups["control"] = ctrl
    per_subtype = {}
    for version in ("adjusted", "raw"):
        per_subtype[version] = {
            s: {c: mean_ci(contribs[f"{c}_{version}"][m], rng, n_boot) for c in CONTRIB}
            for s, m in groups.items()
        }
    sep = {}
    if "structural" in groups and "functional" in groups:
        for version in ("adjusted", "raw"):
            d = contribs[f"shap_anat_{version}"] - contribs[f"shap_func_{version}"]
            sep[version] = {
                "shap_anat-shap_func": auc(d[groups["structural"]], d[groups["functional"]]),
                "shap_anat": auc(contribs[f"shap_anat_{version}"][groups["structural"]],
                                 contribs[f"shap_anat_{version}"][groups["functional"]]),
                "shap_func (functional > structural)": auc(
                    contribs[f"shap_func_{version}"][groups["functional"]],
                    contribs[f"shap_func_{version}"][groups["structural"]]),
            }
            for s, c in (("structural", "shap_anat"), ("functional", "shap_func")):
                sep[version][f"{s} patients vs controls, {c}"] = auc(
                    contribs[f"{c}_{version}"][groups[s]], contribs[f"{c}_{version}"][ctrl])
    gap = (frame["predicted_age"] - frame["age"]).to_numpy(float)
    gap_adj = age_adjust(frame["predicted_age"].to_numpy(float), age, ctrl)
    gaps = {s: {"gap_raw": mean_ci(gap[m], rng, n_boot), "gap_adjusted": mean_ci(gap_adj[m], rng, n_boot),
                "true_struct_designed": float(truths["struct_designed"][m].mean()),
                "true_func_designed": float(truths["func_designed"][m].mean())}
            for s, m in groups.items()}
    return {"correlations": corr, "controls_pearson_with_age_raw": corr_age,
            "mean_contributions_per_subtype": per_subtype, "subtype_separation": sep,
            "predicted_gap_per_subtype": gaps}


def main() -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, required=True)
    parser.add_argument("--deriv", type=Path, default=None,
                        help="OUTPUT_DIR (default BIDS/derivatives/brainage)")
    parser.add_argument("--train", action="store_true", help="run `group --train --config-file CONFIG` first")
    parser.add_argument("--config", default="demo", help="pipeline name or YAML file for --train")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="contributions")
    args = parser.parse_args()
    bids = args.bids.resolve()
    deriv = (args.deriv or bids / "derivatives" / "brainage").resolve()
    times = {}
    if args.train:
        cmd = [str(Path(sys.executable).parent / "brainage"), str(bids), str(deriv), "group", "--train",
               "--config-file", args.config, "--no-report"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        times["group_train_seconds"] = round(time.perf_counter() - start, 1)
    start, cpu = time.perf_counter(), time.process_time()
    group = deriv / "group"
    contrib = pd.read_csv(group / "contributions.tsv", sep="\t")
    preds = pd.read_csv(group / "predictions.tsv", sep="\t")
    truth_dir = bids / "sourcedata" / "brainage-truth"
    truth = pd.read_csv(truth_dir / "participants_truth.tsv", sep="\t")
    truth_json = json.loads((truth_dir / "truth.json").read_text())
    model = contrib["model"].iloc[0]
    preds = preds[preds["model"] == model]
    keep = ["participant_id", "structural_age", "functional_age", "patient_subtype",
            "structural_age_excess", "functional_age_excess"]
    frame = contrib.merge(truth[keep], on="participant_id", how="inner")
    frame = frame.merge(preds[["participant_id", "predicted_age_corrected"]], on="participant_id", how="left")
    frame = frame.dropna(subset=list(CONTRIB))
    rng = np.random.default_rng(args.seed)
    result = evaluate(frame, rng, args.n_boot)
    times["benchmark_seconds"] = round(time.perf_counter() - start, 1)
    times["benchmark_cpu_seconds"] = round(time.process_time() - cpu, 1)
    cohort_record = bids.parent / "make_cohort.json"
    params = truth_json.get("parameters", {})
    cohort = {
        "bids": str(bids), "n_participants": len(frame),
        "n_controls": int((frame["group"] == "control").sum()),
        "n_patients": int((frame["group"] != "control").sum()),
        "patient_subtypes": truth_json.get("patient_subtypes"),
        "patient_subtype_counts": truth_json.get("patient_subtype_counts"),
        "patient_subtype_gaps_years": truth_json.get("patient_subtype_gaps_years"),
        "pid_bits": truth_json.get("pid_bits"),
        "simulator": {k: params.get(k) for k in ("preset", "seed", "n_subjects", "n_sites",
                                                  "patient_fraction", "patient_gap", "struct_loading",
                                                  "func_loading", "noise_correlation") if k in params},
        "make_cohort": json.loads(cohort_record.read_text()) if cohort_record.exists() else None,
    }
    figures = {"cohort": cohort, "model": model, "config": args.config, "n_boot": args.n_boot,
               "reported": ("contrib_adjusted|truth_excess: contributions minus the controls' mean "
                            "contribution at the same age (linear fit on the controls, leave-one-out for "
                            "them) against latent age minus age; raw contributions and the other truth "
                            "definitions are given alongside"),
               **result, **times}
    path = write_result(args.name, figures)
    head = result["correlations"]["contrib_adjusted|truth_excess|patients"]
    print(json.dumps({"cohort": {k: cohort[k] for k in ("n_participants", "n_controls", "n_patients",
                                                         "patient_subtype_counts")},
                      "patients, adjusted contributions vs latent age - age": head,
                      "subtype_separation": result["subtype_separation"], **times}, indent=1))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
