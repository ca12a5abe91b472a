"""Benchmark: out-of-fold region attributions against the simulator's regional truth.

Cross-validates each named model as the primary model of the configuration
(``brainage.group.cv.cross_validate`` with ``group.attributions: true``) on a
simulated cohort's derivatives and compares the structural (``anat``) region
ranking of ``regions.tsv`` with ``sourcedata/brainage-truth/regions_truth.tsv``:

* Spearman correlation of the attribution with ``|volume_change_percent_per_decade|``
  (the realised rate of GM change; lateral-ventricle volume on the ``Lateral_Ventricles``
  row, matched to the ``ventricles_ml`` tissue total), over the atlas regions with grey
  matter and the ventricles;
* whether the hippocampus, a frontal region, the insula and the lateral ventricles are
  among the ten strongest structural regions;
* for the functional (``func``) regions, Spearman with ``|coupling_change_per_decade|``
  over the BOLD parcels (a secondary reading: connectivity attributions include the
  global coupling change every parcel shares);
* the cost of the attributions (seconds per participant explained, 2 CPU cores).

Run from the repository root::

    .venv/bin/python bench/bench_regions.py --bids /work/cohorts/c60/bids [--models pidreg,ridge]

Writes ``bench/results/regions.json`` (and, with ``--keep DIR``, each model's tables).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import add_cohort_arguments, cohort_paths, write_result

KEY_REGIONS = {
    "hippocampus": lambda r: "Hippocampus" in r["region"],
    "frontal": lambda r: r["lobe"] == "frontal",
    "insula": lambda r: "Insular" in r["region"],
    "lateral_ventricles": lambda r: r["region"] == "Lateral_Ventricles" or "Lateral_Ventricle" in r["region"],
}


def evaluate(summary, truth) -> dict:
    """Compare one model's region table with the truth."""
    from scipy.stats import spearmanr

    anat = summary[(summary["modality"] == "anat") & (summary["level"] == "region")]
    named = anat.set_index("region")
    rows = truth[truth["structural_rank"].notna()].set_index("name")
    common = [n for n in rows.index if n in named.index]
    rho, p = spearmanr(
        named.loc[common, "attribution"], rows.loc[common, "volume_change_percent_per_decade"].abs()
    )
    top = anat.sort_values("rank").head(10)
    top_list = top[["region", "lobe", "attribution", "rank"]].to_dict("records")
    in_top = {k: bool(any(test(r) for r in top.to_dict("records"))) for k, test in KEY_REGIONS.items()}
    atlas_only = anat[anat["index"].notna()].sort_values("attribution", ascending=False).head(10)
    in_top_atlas = {
        k: bool(any(test(r) for r in atlas_only.to_dict("records")))
        for k, test in KEY_REGIONS.items()
        if k != "lateral_ventricles"
    }
    lobes = summary[(summary["modality"] == "anat") & (summary["level"] == "lobe")]
    out = {
        "structural_spearman": {"rho": float(rho), "p": float(p), "n_regions": len(common)},
        "structural_top10": top_list,
        "key_regions_in_structural_top10": in_top,
        "key_regions_in_top10_atlas_regions_only": in_top_atlas,
        "structural_lobe_ranking": lobes.sort_values("rank")[
            ["region", "attribution", "ci_low", "ci_high", "rank"]
        ].to_dict("records"),
    }
    func = summary[(summary["modality"] == "func") & (summary["level"] == "region")].set_index("region")
    parcels = truth[truth["bold_parcel"] == 1].set_index("name")
    common_f = [n for n in parcels.index if n in func.index]
    if common_f:
        rho_f, p_f = spearmanr(
            func.loc[common_f, "attribution"], parcels.loc[common_f, "coupling_change_per_decade"].abs()
        )
        out["functional_spearman_coupling"] = {
            "rho": float(rho_f),
            "p": float(p_f),
            "n_regions": len(common_f),
        }
    return out


def marginal_reference(cohort, truth) -> dict:
    """Spearman of |corr(feature, age)| over the controls with the truth: what the data carry."""
    import numpy as np
    from scipy.stats import spearmanr

    from brainage.interpret.regions import ablation_units

    inp = cohort.inputs["anat"]
    units = ablation_units(inp)
    parts = cohort.participants
    controls = parts["is_control"].to_numpy(dtype=bool)
    age = parts["age"].to_numpy(dtype=float)[controls]
    X = inp.features.to_numpy(dtype=float)[controls]
    rows = truth[truth["structural_rank"].notna()].set_index("name")
    value = {}
    for (_, unit), cols in zip(units.table.iterrows(), units.columns):
        if unit["level"] == "region" and len(cols) == 1 and unit["region"] in rows.index:
            value[unit["region"]] = abs(np.corrcoef(X[:, cols[0]], age)[0, 1])
    names = list(value)
    rho, p = spearmanr([value[n] for n in names], rows.loc[names, "volume_change_percent_per_decade"].abs())
    return {
        "rho": float(rho),
        "p": float(p),
        "n_regions": len(names),
        "what": "Spearman of |Pearson r(feature, age)| over all controls (in sample, no model) with "
        "|volume_change_percent_per_decade|: how well the measured volumes themselves rank "
        "the regions",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cohort_arguments(parser)
    parser.add_argument("--models", default="pidreg,ridge", help="comma-separated primary models to explain")
    parser.add_argument("--name", default="regions", help="results file bench/results/<name>.json")
    parser.add_argument("--keep", type=Path, help="write each model's regions tables under DIR/<model>/")
    args = parser.parse_args()
    import pandas as pd
    import torch

    from brainage.cohort.data import load_cohort
    from brainage.config import GroupConfig, load_config
    from brainage.group.cv import cross_validate
    from brainage.interpret.regions import region_summary

    torch.set_num_threads(2)
    bids, deriv = cohort_paths(args)
    truth = pd.read_csv(
        bids / "sourcedata" / "brainage-truth" / "regions_truth.tsv",
        sep="\t",
        keep_default_na=False,
        na_values=["n/a"],
    )
    config = load_config(args.config)
    results = {}
    reference = None
    for name in args.models.split(","):
        group = config.group.model_dump(mode="json")
        group.update(
            models=[name],
            primary_model=name,
            attributions=True,
            model_params={k: v for k, v in group["model_params"].items() if k == name},
        )
        cfg = GroupConfig(**group)
        cohort = load_cohort(bids, deriv, cfg)
        if reference is None and cohort.inputs["anat"].features is not None:  # tabular volumes only
            reference = marginal_reference(cohort, truth)
            print(f"reference (marginal |r| with age, no model): rho {reference['rho']:.3f}")
        start = time.perf_counter()
        run = cross_validate(cohort, cfg, device="cpu").runs[name]
        wall = time.perf_counter() - start
        attr = run.region_attributions
        summary = region_summary(attr, cohort.participants, seed=cfg.cv.seed)
        explained = sum(i["n_test_controls"] + i["n_others"] for i in run.folds)
        seconds = sum(i.get("attribution_seconds", 0.0) for i in run.folds)
        res = evaluate(summary, truth)
        res["cost"] = {
            "attribution_seconds_total": round(seconds, 2),
            "attribution_seconds_per_participant_explained": seconds / explained,
            "attribution_seconds_per_participant": seconds / len(cohort.participants),
            "predict_seconds_per_participant": run.predict_seconds_per_participant,
            "cv_wall_seconds": round(wall, 1),
            "fit_seconds": round(run.fit_seconds, 1),
            "n_units": len(attr.units),
            "n_participants": len(cohort.participants),
            "n_explanations": explained,
        }
        results[name] = res
        if args.keep:
            from brainage.group.train import write_regions

            folder = args.keep / name
            folder.mkdir(parents=True, exist_ok=True)
            write_regions(folder, cohort.participants, attr, seed=cfg.cv.seed)
        s, c = res["structural_spearman"], res["cost"]
        print(
            f"{name}: structural Spearman rho {s['rho']:.3f} (p {s['p']:.2g}, {s['n_regions']} regions); "
            f"func coupling rho {res.get('functional_spearman_coupling', {}).get('rho', float('nan')):.3f}"
        )
        print(
            f"  key regions in top 10: {res['key_regions_in_structural_top10']}; "
            f"atlas regions only: {res['key_regions_in_top10_atlas_regions_only']}"
        )
        print(
            "  top 10: "
            + ", ".join(f"{r['region']} ({r['attribution']:.2f})" for r in res["structural_top10"])
        )
        print(
            "  lobes: "
            + ", ".join(f"{r['region']} {r['attribution']:.2f}" for r in res["structural_lobe_ranking"])
        )
        print(
            f"  cost: {c['attribution_seconds_per_participant_explained'] * 1000:.1f} ms per participant "
            f"explained ({c['attribution_seconds_total']} s over {c['n_explanations']} explanations, "
            f"{c['n_units']} units); CV wall {c['cv_wall_seconds']} s"
        )
    figures = {
        "bids": str(bids),
        "config": args.config,
        "models": results,
        "marginal_reference": reference,
        "truth_columns": {
            "structural": "abs(volume_change_percent_per_decade)",
            "functional": "abs(coupling_change_per_decade), BOLD parcels",
        },
    }
    print(f"wrote {write_result(args.name, figures)}")
    print(json.dumps({m: r["structural_spearman"] for m, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
