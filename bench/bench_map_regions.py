"""Benchmark: atlas attributions of a 3D CNN on maps, ablation against integrated gradients.

``brainage.interpret.map_regions.map_attributions`` with ``method="ablation"`` (captum
``FeatureAblation``, atlas labels as feature mask, the training controls' mean map as
baseline) and ``method="integrated_gradients"`` (captum ``IntegratedGradients`` summed within
the labels), compared on

* **cost**: seconds per participant explained (CPU), region level only and with the lobe
  level, on the tiny 4 mm grid of ``tests/test_group_maps.py`` (12 × 14 × 12 voxels from the
  MNI origin, 23 HarvardOxford labels) with a fitted tiny CNN, and on the whole MNI grid at
  4 mm (45 × 54 × 45, the template box) with the cnn pipeline's default SFCN encoder
  (untrained: the cost does not depend on the weights);
* **faithfulness**: a deletion curve on the tiny grid. For each held-out participant the
  regions are replaced by the baseline one after another (k = 0 … K regions), in the order
  of the participant's |attribution| (largest first) or in random orders (20 permutations);
  ``d(k) = |prediction − prediction with k regions deleted|``. The area is the mean of
  ``d(k)`` over k (years) and, normalised, of ``d(k) / d(K)``: a faithful order changes the
  prediction faster, so its area is larger than the random orders'.

The synthetic maps: noise N(0.5, 0.05²) plus ``(age − 50) / 100`` in two labels (the signal
regions) of the tiny grid; a unimodal CNN is fitted on 30 controls and explains 12 others.

Run from the repository root::

    .venv/bin/python bench/bench_map_regions.py [--no-mni4] [--threads 2]

Writes ``bench/results/map_regions.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from bench._common import write_result

ATLAS = "HarvardOxford"
TINY_SHAPE, TINY_AFFINE = (12, 14, 12), np.diag([4.0, 4.0, 4.0, 1.0])
#: Right_Cingulate_Gyrus_anterior_division and Right_Middle_Frontal_Gyrus on the tiny grid.
SIGNAL = (58, 8)


def _participants(n, seed):
    rng = np.random.default_rng(seed)
    keys = [f"sub-{i + 1:03d}" for i in range(n)]
    age = np.round(rng.uniform(20, 80, n), 2)
    return pd.DataFrame({"participant_id": keys, "session": None, "age": age,
                         "sex": np.where(rng.random(n) < 0.5, "F", "M"), "site": "site1",
                         "group": "control", "is_control": True, "modalities": "func"},
                        index=pd.Index(keys, name="key"))


def _cohort(root: Path, parts, shape, affine, labels, *, seed=0):
    import nibabel as nib

    from brainage.cohort.data import CohortData, ModalityInput

    rng = np.random.default_rng(seed)
    signal = np.isin(labels, SIGNAL)
    paths = []
    for key, age in zip(parts.index, parts["age"]):
        vol = rng.normal(0.5, 0.05, shape)
        vol[signal] += (age - 50) / 100
        path = root / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(vol.astype(np.float32), affine), path)
        paths.append(str(path))
    inp = ModalityInput("func", "maps", None, pd.DataFrame({"falff": paths}, index=parts.index),
                        {"kind": "maps", "maps": ["falff"], "resolution": float(affine[0, 0])})
    exclusions = pd.DataFrame(columns=["participant_id", "session", "modality", "reason"])
    return CohortData(parts, {"func": inp}, exclusions, ("control",))


def _labels(shape, affine):
    import nibabel as nib

    from brainage.atlases import load_atlas

    img = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    return np.asarray(load_atlas(ATLAS).resample_to(img).dataobj).astype(np.int64)


def _timed(est, cohort, train, target, repeats=3, **kw):
    """Attributions and the best of ``repeats`` timings, in seconds per participant explained."""
    from brainage.group.transforms import FeatureTransforms
    from brainage.interpret.map_regions import map_attributions

    cache = {}
    tf = FeatureTransforms()
    # read every volume once, so the timings measure the attributions and not the disk
    map_attributions(est, tf, cohort, train, target[:1], ["func"], levels=("region",), cache=cache)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        attr = map_attributions(est, tf, cohort, train, target, ["func"], cache=cache, **kw)
        best = min(best, time.perf_counter() - t0)
    return attr, best / len(target)


def deletion_curves(est, cohort, train, target, orders: dict, labels) -> dict:
    """``d(k)`` per participant for each order (a dict name -> (n, K) region label orders)."""
    import torch

    from brainage.group.transforms import FeatureTransforms
    from brainage.interpret.map_regions import _network_inputs, age_forward, mean_map

    tf = FeatureTransforms()
    X = tf.inputs(cohort, target, ["func"])
    base = torch.from_numpy(mean_map(tf.inputs(cohort, train, ["func"])["func"]))
    forward = age_forward(est, "func", [])
    lab = torch.from_numpy(labels)
    out = {}
    est.model_.eval()
    with torch.no_grad():
        for name, order in orders.items():
            curves = []
            for i in range(len(target)):
                x = _network_inputs(est, X, np.array([i]), "cpu")["func"][0]
                steps = [x.clone()]
                cur = x.clone()
                for label in order[i]:
                    inside = (lab == int(label))[None].expand_as(cur)
                    cur = torch.where(inside, base, cur)
                    steps.append(cur.clone())
                pred = forward(torch.stack(steps)).numpy().astype(float)
                curves.append(np.abs(pred - pred[0]))
            out[name] = np.array(curves)
    return out


def _areas(curves: np.ndarray) -> dict:
    final = np.where(curves[:, -1] > 1e-9, curves[:, -1], np.nan)
    return {"area_years": float(curves.mean()),
            "area_normalised": float(np.nanmean(curves.mean(1) / final)),
            "curve_mean_years": [round(float(v), 4) for v in curves.mean(0)]}


def tiny(threads: int) -> dict:
    import torch

    from brainage.estimators.baselines import BaselineRegressor

    torch.manual_seed(0)
    labels = _labels(TINY_SHAPE, TINY_AFFINE)
    parts = _participants(42, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        cohort = _cohort(Path(tmp), parts, TINY_SHAPE, TINY_AFFINE, labels)
        keys = list(parts.index)
        train, target = keys[:30], keys[30:]
        from brainage.group.transforms import FeatureTransforms

        X = FeatureTransforms().inputs(cohort, train, ["func"], {})
        t0 = time.perf_counter()
        est = BaselineRegressor(kind="unimodal", modality="func", latent_dim=4, hidden=(8,),
                                max_epochs=40, batch_size=8, lr=0.01, random_state=0, device="cpu",
                                encoders={"func": {"channels": [4, 8], "final_channels": 8,
                                                   "dropout": 0.0}})
        est.fit(X, parts.loc[train, "age"].to_numpy(float), validation_idx=np.array([], int))
        fit_s = time.perf_counter() - t0
        pred = est.predict(FeatureTransforms().inputs(cohort, target, ["func"], {}))
        mae = float(np.mean(np.abs(pred - parts.loc[target, "age"].to_numpy(float))))
        res = {"grid": list(TINY_SHAPE), "voxel_mm": 4.0, "n_train": len(train), "n_explained": len(target),
               "fit_seconds": round(fit_s, 2), "held_out_mae_years": round(mae, 2),
               "n_regions": len(np.unique(labels[labels > 0])), "signal_labels": list(SIGNAL),
               "methods": {}}
        attrs = {}
        for method in ("ablation", "integrated_gradients"):
            kw = {"method": method}
            a_region, s_region = _timed(est, cohort, train, target, levels=("region",), **kw)
            _, s_all = _timed(est, cohort, train, target, **kw)
            attrs[method] = a_region
            units = a_region.units
            mean_abs = a_region.values.abs().mean()
            top = units.loc[mean_abs.sort_values(ascending=False).index[:2], "index"].astype(int).tolist()
            res["methods"][method] = {"seconds_per_participant_region_level": round(s_region, 4),
                                      "seconds_per_participant_region_and_lobe": round(s_all, 4),
                                      "top2_labels": top,
                                      "signal_in_top2": sorted(top) == sorted(SIGNAL)}
        # agreement of the two methods (participant × region values)
        a, b = (attrs[m].values.to_numpy().ravel() for m in ("ablation", "integrated_gradients"))
        res["ablation_vs_ig_pearson"] = round(float(np.corrcoef(a, b)[0, 1]), 4)
        region_labels = attrs["ablation"].units["index"].astype(int).to_numpy()
        orders = {}
        for method, attr in attrs.items():
            v = np.abs(attr.values.to_numpy())
            orders[method] = region_labels[np.argsort(-v, axis=1, kind="stable")]
        rng = np.random.default_rng(0)
        for r in range(20):
            orders[f"random{r}"] = np.array([rng.permutation(region_labels) for _ in target])
        curves = deletion_curves(est, cohort, train, target, orders, labels)
        res["deletion"] = {m: _areas(curves[m]) for m in attrs}
        rand = np.stack([curves[f"random{r}"] for r in range(20)])
        rand_areas = [_areas(c) for c in rand]
        res["deletion"]["random"] = {
            "area_years": float(np.mean([r["area_years"] for r in rand_areas])),
            "area_years_sd_over_permutations": float(np.std([r["area_years"] for r in rand_areas])),
            "area_normalised": float(np.mean([r["area_normalised"] for r in rand_areas])),
            "curve_mean_years": [round(float(v), 4) for v in rand.mean((0, 1))]}
    return res


def mni4(n_explained: int) -> dict:
    import torch

    from brainage.estimators.baselines import BaselineRegressor
    from brainage.templates import mni_grid

    template, _ = mni_grid(4.0)
    shape, affine = tuple(template.shape[:3]), template.affine
    labels = _labels(shape, affine)
    parts = _participants(8 + n_explained, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        cohort = _cohort(Path(tmp), parts, shape, affine, labels)
        keys = list(parts.index)
        train, target = keys[:8], keys[8:]
        from brainage.group.transforms import FeatureTransforms

        X = FeatureTransforms().inputs(cohort, train, ["func"], {})
        torch.manual_seed(0)
        est = BaselineRegressor(kind="unimodal", modality="func", max_epochs=1, batch_size=4,
                                random_state=0, device="cpu")
        est.fit(X, parts.loc[train, "age"].to_numpy(float), validation_idx=np.array([], int))
        res = {"grid": list(shape), "voxel_mm": 4.0, "encoder": est.encoder_specs_["func"],
               "n_regions": len(np.unique(labels[labels > 0])), "n_explained": len(target),
               "note": "one training epoch on 8 participants: timing only", "methods": {}}
        for method in ("ablation", "integrated_gradients"):
            _, s_region = _timed(est, cohort, train, target, repeats=1, method=method,
                                 levels=("region",))
            res["methods"][method] = {"seconds_per_participant_region_level": round(s_region, 3)}
    return res


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-mni4", action="store_true", help="skip the whole-brain 4 mm grid")
    parser.add_argument("--mni4-participants", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    figures = {"torch_threads": args.threads, "tiny": tiny(args.threads)}
    print(figures["tiny"])
    if not args.no_mni4:
        figures["mni4"] = mni4(args.mni4_participants)
        print(figures["mni4"])
    print(write_result("map_regions", figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
