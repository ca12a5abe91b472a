"""Benchmark: PID atoms on the atlas (``regions_pid.tsv``) against the simulator's regional truth.

Loads a simulated cohort's derivatives with a pipeline's group configuration (default
``demo``), computes :func:`brainage.interpret.regions_pid.regions_pid` (the controls' age from
each HarvardOxford region's GM volume and the first principal components of its connectivity
profile) and compares it with ``sourcedata/brainage-truth/regions_truth.tsv``:

* **structure**: the regions the simulator ages faster (``regional_weight > 1``: frontal cortex,
  insula, hippocampus) against the rest: medians of ``U_struct`` and ``I_struct``, a one-sided
  Mann–Whitney test, and the Spearman correlation of ``U_struct`` / ``I_struct`` with
  ``|volume_change_percent_per_decade|`` (the realised rate) and ``|gm_change_percent_per_decade|``
  (the nominal one) over the atlas regions with grey matter;
* **function**: the default-mode parcels (truth ``network == default``, whose within-network
  coupling the simulator weakens 3.5 times faster) against the other BOLD parcels: medians of
  ``U_func`` and ``I_func``, Mann–Whitney, and Spearman with ``|coupling_change_per_decade|``;
* how many regions have an interval excluding zero, per atom;
* the seconds taken (``n_boot`` resamples per region; also without the bootstrap).

Run from the repository root::

    .venv/bin/python bench/bench_regions_pid.py [--bids /work/sample/demo/bids] [--n-boot 500]

Writes ``bench/results/regions_pid.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import add_cohort_arguments, cohort_paths, write_result

DEFAULT_BIDS = Path("/work/sample/demo/bids")


def _compare(values, in_group, label: str) -> dict:
    """Medians inside/outside a set of regions and a one-sided Mann–Whitney test (inside larger)."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    v = np.asarray(values, dtype=float)
    g = np.asarray(in_group, dtype=bool)
    a, b = v[g], v[~g]
    test = mannwhitneyu(a, b, alternative="greater")
    return {
        "group": label,
        "n_in": int(g.sum()),
        "n_out": int((~g).sum()),
        "median_in": float(np.median(a)),
        "median_out": float(np.median(b)),
        "mean_in": float(a.mean()),
        "mean_out": float(b.mean()),
        "mann_whitney_u": float(test.statistic),
        "p_greater": float(test.pvalue),
        # common-language effect size: P(a region inside > a region outside)
        "auc": float(test.statistic / (len(a) * len(b))),
    }


def _spearman(x, y) -> dict:
    from scipy.stats import spearmanr

    rho, p = spearmanr(x, y)
    return {"rho": float(rho), "p": float(p), "n_regions": len(x)}


def evaluate(table, truth) -> dict:
    """Compare the atlas PID table with the simulator's regional truth."""
    import numpy as np

    rows = table.set_index("region")
    t = truth[truth["index"].notna()].set_index("name")
    with_gm = t.index[t["structural_rank"].notna()]  # regions with grey matter
    struct = [n for n in with_gm if n in rows.index]
    s_rows, s_truth = rows.loc[struct], t.loc[struct]
    aged = (s_truth["regional_weight"] > 1).to_numpy()
    out = {"structure": {
        "aged_regions": "regional_weight > 1 (frontal lobe and insula 1.6, hippocampus 2.0)",
        "U_struct": _compare(s_rows["U_struct"], aged, "regional_weight > 1"),
        "I_struct": _compare(s_rows["I_struct"], aged, "regional_weight > 1"),
        "R": _compare(s_rows["R"], aged, "regional_weight > 1"),
        "spearman_U_struct_vs_abs_volume_change": _spearman(
            s_rows["U_struct"], s_truth["volume_change_percent_per_decade"].abs()),
        "spearman_I_struct_vs_abs_volume_change": _spearman(
            s_rows["I_struct"], s_truth["volume_change_percent_per_decade"].abs()),
        "spearman_U_struct_vs_abs_gm_change_nominal": _spearman(
            s_rows["U_struct"], s_truth["gm_change_percent_per_decade"].abs()),
        "spearman_I_struct_vs_abs_gm_change_nominal": _spearman(
            s_rows["I_struct"], s_truth["gm_change_percent_per_decade"].abs()),
        "hippocampus": s_rows.loc[[n for n in struct if "Hippocampus" in n],
                                  ["U_struct", "U_struct_ci_low", "U_struct_ci_high", "I_struct"]]
        .reset_index().to_dict("records"),
        "top10_U_struct": s_rows.sort_values("U_struct", ascending=False).head(10)
        .assign(regional_weight=s_truth["regional_weight"])
        [["U_struct", "U_struct_ci_low", "regional_weight"]].reset_index().to_dict("records"),
    }}
    parcels = [n for n in t.index if n in rows.index and t.loc[n, "bold_parcel"] == 1]
    f_rows, f_truth = rows.loc[parcels], t.loc[parcels]
    dmn = (f_truth["network"] == "default").to_numpy()
    out["function"] = {
        "dmn_regions": "truth network == default (within-network coupling loss 3.5x the others')",
        "U_func": _compare(f_rows["U_func"], dmn, "default-mode network"),
        "I_func": _compare(f_rows["I_func"], dmn, "default-mode network"),
        "R": _compare(f_rows["R"], dmn, "default-mode network"),
        "I_struct": _compare(f_rows["I_struct"], dmn, "default-mode network"),
        "spearman_I_func_vs_abs_coupling_change": _spearman(
            f_rows["I_func"], f_truth["coupling_change_per_decade"].abs()),
        "top10_U_func": f_rows.sort_values("U_func", ascending=False).head(10)
        .assign(network=f_truth["network"])[["U_func", "U_func_ci_low", "network"]]
        .reset_index().to_dict("records"),
    }
    ci = {}
    for atom in ("U_struct", "U_func", "R", "S"):
        ci[atom] = int((table[f"{atom}_ci_low"] > 0).sum())
    out["regions_with_interval_above_zero"] = ci
    out["median_interval_width"] = {a: float(np.median(table[f"{a}_ci_high"] - table[f"{a}_ci_low"]))
                                    for a in ("U_struct", "U_func", "R", "S")}
    out["atoms_summary"] = {a: {"median": float(table[a].median()), "max": float(table[a].max()),
                                "mean": float(table[a].mean())}
                            for a in ("U_struct", "U_func", "R", "S", "I_struct", "I_func", "I_joint")}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cohort_arguments(parser, bids_default=DEFAULT_BIDS)
    parser.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples per region")
    parser.add_argument("--n-components", type=int, default=3, help="connectivity components")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    parser.add_argument("--name", default="regions_pid", help="results file bench/results/<name>.json")
    args = parser.parse_args()
    import numpy as np
    import pandas as pd

    from brainage.cohort.data import load_cohort
    from brainage.config import load_config
    from brainage.interpret.regions_pid import regions_pid

    bids, deriv = cohort_paths(args)
    truth = pd.read_csv(bids / "sourcedata" / "brainage-truth" / "regions_truth.tsv", sep="\t",
                        keep_default_na=False, na_values=["n/a"])
    cfg = load_config(args.config).group
    t0 = time.perf_counter()
    cohort = load_cohort(bids, deriv, cfg)
    load_seconds = time.perf_counter() - t0
    timings = {}
    table = None
    for n_boot in (0, args.n_boot):
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = regions_pid(cohort, n_components=args.n_components, n_boot=n_boot, seed=cfg.cv.seed)
            runs.append(time.perf_counter() - start)
        timings[f"n_boot_{n_boot}"] = {"median_seconds": float(np.median(runs)),
                                       "seconds": [round(r, 3) for r in runs]}
        if n_boot == args.n_boot:
            table = result
    res = evaluate(table, truth)
    parts = cohort.participants
    figures = {
        "cohort": {"bids": str(bids), "config": args.config, "n_participants": len(parts),
                   "n_controls": int(parts["is_control"].sum()), "n_regions": len(table),
                   "n_components": args.n_components, "n_boot": args.n_boot,
                   "func_variance_explained_median": float(table["func_variance_explained"].median()),
                   "notes": sorted(set(table["note"]) - {"n/a"})},
        "cost": {"load_cohort_seconds": round(load_seconds, 2), **timings,
                 "seconds_per_region": timings[f"n_boot_{args.n_boot}"]["median_seconds"] / len(table)},
        **res,
    }
    path = write_result(args.name, figures)
    s, f = res["structure"], res["function"]
    print(f"{figures['cohort']['n_controls']} controls, {len(table)} regions, {args.n_components} "
          f"components (median {figures['cohort']['func_variance_explained_median']:.0%} of the "
          "profile variance)")
    print(f"time: {timings['n_boot_0']['median_seconds']:.2f} s without bootstrap, "
          f"{timings[f'n_boot_{args.n_boot}']['median_seconds']:.2f} s with {args.n_boot} resamples")
    for key in ("U_struct", "I_struct", "R"):
        c = s[key]
        print(f"{key}: aged regions median {c['median_in']:.3f} (n {c['n_in']}) vs rest "
              f"{c['median_out']:.3f} (n {c['n_out']}); AUC {c['auc']:.2f}, "
              f"Mann-Whitney p {c['p_greater']:.3g}")
    for key in ("spearman_U_struct_vs_abs_volume_change", "spearman_I_struct_vs_abs_volume_change",
                "spearman_I_struct_vs_abs_gm_change_nominal"):
        print(f"{key}: rho {s[key]['rho']:.3f} (p {s[key]['p']:.3g}, {s[key]['n_regions']} regions)")
    print("hippocampus: " + ", ".join(f"{r['region']} U_struct {r['U_struct']:.3f} "
                                      f"[{r['U_struct_ci_low']:.3f}, {r['U_struct_ci_high']:.3f}]"
                                      for r in s["hippocampus"]))
    for key in ("U_func", "I_func", "R", "I_struct"):
        c = f[key]
        print(f"{key}: DMN median {c['median_in']:.3f} (n {c['n_in']}) vs other parcels "
              f"{c['median_out']:.3f} (n {c['n_out']}); AUC {c['auc']:.2f}, "
              f"Mann-Whitney p {c['p_greater']:.3g}")
    k = f["spearman_I_func_vs_abs_coupling_change"]
    print(f"I_func vs |coupling change|: rho {k['rho']:.3f} (p {k['p']:.3g})")
    print(f"regions with interval above zero: {res['regions_with_interval_above_zero']}; "
          f"median interval widths {({a: round(v, 3) for a, v in res['median_interval_width'].items()})}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
