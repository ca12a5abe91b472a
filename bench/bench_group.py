"""Benchmark: `group --train` on a simulated cohort's derivatives, against the simulator's truth.

Runs :func:`brainage.group.train.train_group` on the derivatives of a simulated
cohort (``brainage demo`` or ``brainage simulate`` + ``participant``), in a
scratch copy whose files are symbolic links to the originals, and records per
model the uncorrected and corrected accuracy of the controls (out of fold)
against the oracle MAE of ``truth.json``, the patients' corrected gap with its
95 % interval against the simulated gap, the primary model's PID atoms against
the true atoms, the wall time and the peak memory.

Run from the repository root::

    .venv/bin/python bench/bench_group.py --bids brainage-demo/bids [--config demo]

Writes ``bench/results/group.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import add_cohort_arguments, cohort_paths, oracle_mae, write_result
from brainage.config import GroupConfig, load_config
from brainage.group.train import train_group


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cohort_arguments(parser)
    parser.add_argument("--models", help="comma-separated subset of the config's models")
    parser.add_argument("--name", default="group", help="results file bench/results/<name>.json")
    parser.add_argument("--keep", type=Path, help="copy the group outputs (with the bundle) here")
    parser.add_argument("--primary", help="primary model (default: the config's)")
    parser.add_argument("--bias-correction", help="bias-correction method (default: the config's)")
    parser.add_argument("--n", type=int, help="use the first N participants of participants.tsv only")
    args = parser.parse_args()
    bids, deriv = cohort_paths(args)
    truth_dir = bids / "sourcedata" / "brainage-truth"
    truth = json.loads((truth_dir / "truth.json").read_text())
    config = load_config(args.config)
    group = config.group.model_dump(mode="json")
    if args.models:
        wanted = args.models.split(",")
        group["models"] = [m for m in group["models"] if m in wanted]
        group["model_params"] = {k: v for k, v in group["model_params"].items() if k in wanted}
    if args.primary:
        group["primary_model"] = args.primary
    if args.bias_correction:
        group["bias_correction"]["method"] = args.bias_correction
    config = config.model_copy(update={"group": GroupConfig(**group)})
    import pandas as pd

    people = pd.read_csv(bids / "participants.tsv", sep="\t")
    if args.n:
        people = people.iloc[: args.n]
    keep = set(people["participant_id"])

    def skip(folder, names):
        return [n for n in names if n == "group" or (n.startswith("sub-") and n not in keep
                                                     and Path(folder) in (deriv, bids))]

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "derivatives"
        shutil.copytree(deriv, scratch, copy_function=os.symlink, ignore=skip)
        if args.n:
            sub_bids = Path(tmp) / "bids"
            sub_bids.mkdir()
            for item in bids.iterdir():
                if item.name not in ("participants.tsv", "derivatives") and (
                        not item.name.startswith("sub-") or item.name in keep):
                    os.symlink(item, sub_bids / item.name)
            people.to_csv(sub_bids / "participants.tsv", sep="\t", index=False)
            bids = sub_bids
        start = time.perf_counter()
        outputs = train_group(bids, scratch, config, device="cpu")
        wall = time.perf_counter() - start
        out = outputs.directory
        metrics = json.loads((out / "metrics.json").read_text())
        pid = json.loads((out / "pid.json").read_text())
        groups = pd.read_csv(out / "groups.tsv", sep="\t")
        predicted = pd.read_csv(out / "predictions.tsv", sep="\t")
        if args.keep:
            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.copytree(out, args.keep)
    overall = groups[groups["scope"] == "all"]
    gap = None
    if len(overall) and pd.notna(overall.iloc[0].get("mean_gap")):
        row = overall.iloc[0]
        gap = {"estimate": float(row["mean_gap"]), "ci": [float(row["ci_low"]), float(row["ci_high"])],
               "ci_width": float(row["ci_high"] - row["ci_low"]), "truth": truth["true_patient_gap_years"],
               "truth_inside_ci": bool(row["ci_low"] <= truth["true_patient_gap_years"] <= row["ci_high"])}
    # The oracle on exactly the controls the models predicted (exclusions and --n change them).
    oracle = oracle_mae(truth_dir, predicted.loc[predicted["group"] == "control", "participant_id"].unique())
    models = {}
    for name, m in metrics["models"].items():
        u, c = m["controls"]["uncorrected"], m["controls"]["corrected_not_accuracy"]
        models[name] = {
            "mae": u["mae"], "mae_ci": [u["mae_ci_low"], u["mae_ci_high"]], "r": u["r"],
            "gap_age_slope": u["gap_age_slope"], "gap_age_slope_corrected": c["gap_age_slope"],
            "gap_age_spearman": u["gap_age_spearman"], "gap_age_spearman_corrected": c["gap_age_spearman"],
            "mae_over_oracle": u["mae"] / oracle,
            **m["cost"],
        }
    atoms = held_out = None
    if pid.get("available"):
        summary = next(iter(pid["summary"].values()))
        atoms = {a: {"estimate": summary[a]["mean"], "ci": [summary[a]["ci_low"], summary[a]["ci_high"]],
                     "truth": truth["pid_bits"][a], "error": summary[a]["mean"] - truth["pid_bits"][a]}
                 for a in ("U1", "U2", "R", "S")}
        ho = pid.get("held_out")
        if ho:
            held_out = {a: {"estimate": ho[a], "ci": [ho.get(f"{a}_ci_low"), ho.get(f"{a}_ci_high")],
                            "truth": truth["pid_bits"][a], "error": ho[a] - truth["pid_bits"][a]}
                        for a in ("U1", "U2", "R", "S")}
    # What the inputs themselves carry: the same held-out PID with ridge's out-of-fold predictions
    # from each modality alone as the sources (a second, linear reading of the features).
    features_pid = None
    if {"ridge_anat", "ridge_func"} <= set(predicted["model"]):
        from brainage.pid import gaussian_pid, inverse_normal_transform

        wide = predicted[predicted["group"] == "control"].pivot_table(
            index="participant_id", columns="model", values="predicted_age")[["ridge_anat", "ridge_func"]]
        ages = predicted.drop_duplicates("participant_id").set_index("participant_id").loc[wide.index, "age"]
        res = gaussian_pid(inverse_normal_transform(ages.to_numpy(float)),
                           inverse_normal_transform(wide["ridge_anat"].to_numpy(float)),
                           inverse_normal_transform(wide["ridge_func"].to_numpy(float)),
                           bias_correction=True, n_boot=2000, random_state=0)
        features_pid = {a: {"estimate": float(getattr(res, a)), "ci": [float(v) for v in res.ci[a]],
                            "truth": truth["pid_bits"][a]} for a in ("U1", "U2", "R", "S", "I1", "I2")}
    figures = {
        "cohort": metrics["cohort"], "config": args.config, "cv": metrics.get("cv"),
        "oracle_mae_controls_predicted": oracle,
        "oracle_mae_sample_controls": truth["oracle_mae_sample_controls_years"],
        "oracle_mae_population": truth["oracle_mae_years"],
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "models": models, "patient_gap_primary": gap,
        "pid_primary_held_out": held_out, "pid_primary_in_sample_fold_mean": atoms,
        "pid_features_ridge_held_out": features_pid,
        "group_config": config.group.model_dump(mode="json"),
    }
    for name, m in models.items():
        print(f"{name:16s} MAE {m['mae']:6.2f} (oracle x{m['mae_over_oracle']:.1f})  r {m['r']:5.2f}  "
              f"slope {m['gap_age_slope']:5.2f} -> {m['gap_age_slope_corrected']:5.2f}  "
              f"fit {m['fit_seconds']:6.1f} s")
    print(f"patient gap: {gap}")
    for label, block in (("held-out", held_out), ("in-sample", atoms), ("ridge features", features_pid)):
        if block:
            print(f"PID {label}: " + ", ".join(f"{a} {v['estimate']:.2f} (truth {v['truth']:.2f})"
                                               for a, v in block.items()))
    print(f"wall {wall:.0f} s, peak RSS {figures['peak_rss_mb']} MB")
    print(f"wrote {write_result(args.name, figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
