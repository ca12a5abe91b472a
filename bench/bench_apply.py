"""Benchmark: a trained bundle applied to a second simulated cohort reproduces its accuracy.

Trains nothing: applies ``group --model BUNDLE`` (:func:`brainage.group.apply.apply_bundle`)
to the derivatives of another simulated cohort (another seed; optionally sites the
bundle never saw, see ``bench/make_cohort.py --n-sites 3``) and compares the controls'
accuracy, per site and overall, and the patients' corrected gap, with the bundle's own
cross-validated figures (``cross_validation`` in the bundle's ``extra.json``) and the
new cohort's oracle.

Run from the repository root, after ``bench_group.py --keep DIR``::

    .venv/bin/python bench/bench_apply.py --bundle DIR/model --bids NEW/bids

Writes ``bench/results/group_apply.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result


def main() -> int:
    import pandas as pd

    from brainage.estimators.bundle import read_bundle_extra
    from brainage.group.apply import apply_bundle
    from brainage.stats.metrics import bootstrap_metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--bids", type=Path, required=True, help="the new simulated cohort")
    parser.add_argument("--name", default="group_apply")
    args = parser.parse_args()
    bids = args.bids.resolve()
    deriv = bids / "derivatives" / "brainage"
    truth = json.loads((bids / "sourcedata" / "brainage-truth" / "truth.json").read_text())
    extra, _ = read_bundle_extra(args.bundle)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "derivatives"
        shutil.copytree(deriv, scratch, copy_function=os.symlink, ignore=shutil.ignore_patterns("group"))
        start = time.perf_counter()
        outputs = apply_bundle(bids, scratch, args.bundle, device="cpu")
        wall = time.perf_counter() - start
        pred = pd.read_csv(outputs.directory / "predictions.tsv", sep="\t")
        groups = pd.read_csv(outputs.directory / "groups.tsv", sep="\t")
        metrics = json.loads((outputs.directory / "metrics.json").read_text())
    truth_rows = pd.read_csv(bids / "sourcedata" / "brainage-truth" / "participants_truth.tsv", sep="\t")
    pred = pred.merge(truth_rows[["participant_id", "oracle_age"]], on="participant_id", how="left")
    controls = pred[pred["group"] == "control"]
    trained_sites = sorted(extra["trained_on"]["sites"])

    def acc(frame):
        m = bootstrap_metrics(frame["age"], frame["predicted_age"], n_boot=2000, seed=0)
        oracle = float((frame["age"] - frame["oracle_age"]).abs().mean())
        return {"n": int(m["n"]), "mae": m["mae"], "mae_ci": [m["mae_ci_low"], m["mae_ci_high"]],
                "r": m["r"], "gap_age_slope": m["gap_age_slope"],
                "mean_gap": float((frame["predicted_age"] - frame["age"]).mean()),
                "oracle_mae": oracle, "mae_over_oracle": m["mae"] / oracle}

    per_site = {site: {**acc(f), "seen_in_training": site in trained_sites}
                for site, f in controls.groupby("site")}
    overall = groups[groups["scope"] == "all"]
    gap = None
    if len(overall):
        row = overall.iloc[0]
        gap = {"estimate": float(row["mean_gap"]), "ci": [float(row["ci_low"]), float(row["ci_high"])],
               "truth": truth["true_patient_gap_years"],
               "truth_inside_ci": bool(row["ci_low"] <= truth["true_patient_gap_years"] <= row["ci_high"])}
    cv = extra["cross_validation"]["uncorrected"]
    figures = {
        "bundle_model": extra["model"], "trained_on": extra["trained_on"],
        "bundle_cross_validated": cv,
        "new_cohort": metrics["cohort"],
        "new_oracle_mae_sample_controls": truth["oracle_mae_sample_controls_years"],
        "controls_all_sites": acc(controls),
        "controls_per_site": per_site,
        "corrections": metrics["applied_bundle"]["corrections"],
        "patient_gap": gap,
        "wall_seconds": round(wall, 1),
    }
    print(f"bundle {extra['model']}: cross-validated MAE {cv['mae']:.2f} on its training cohort")
    allc = figures["controls_all_sites"]
    print(f"new cohort, all controls: MAE {allc['mae']:.2f} "
          f"[{allc['mae_ci'][0]:.2f}, {allc['mae_ci'][1]:.2f}], oracle {allc['oracle_mae']:.2f} "
          f"(x{allc['mae_over_oracle']:.2f})")
    for site, m in per_site.items():
        print(f"  {site} ({'seen' if m['seen_in_training'] else 'unseen'}): n {m['n']}, MAE {m['mae']:.2f} "
              f"[{m['mae_ci'][0]:.2f}, {m['mae_ci'][1]:.2f}], oracle {m['oracle_mae']:.2f} "
              f"(x{m['mae_over_oracle']:.2f}), mean gap {m['mean_gap']:+.2f}")
    print(f"patient gap: {gap}")
    print(f"wrote {write_result(args.name, figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
