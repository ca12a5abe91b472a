"""Benchmark: PIDReg on data with known PID, against baselines, and its epoch-time cost.

Three parts (``--part``):

``table``
    For each synthetic configuration of :mod:`brainage.simulate.tabular`
    (redundancy-dominant, unique-dominant, unique + synergy, redundancy + synergy,
    one modality pure noise, both weak) train PIDRegressor with the ``default`` and
    the ``faithful`` preset and compare each PID atom with the exact truth. Two
    estimates per fit: ``held_out`` (bias-corrected PID of the noise-free latents of
    an independent test sample, ``PIDRegressor.pid_score``) and ``fitted``
    (``pid_``: the same on the training sample). Target per atom:
    ``|estimate − truth| ≤ 0.1 bit`` or ``≤ 20 %`` of the truth; for the pure-noise
    configuration, the noise modality's fusion weight ≤ 0.1.
``baselines``
    Test R² of PIDReg (both presets) vs unimodal (each modality), early fusion and
    late fusion with the same encoders, on the same configurations.
``epoch``
    Seconds per training epoch of PIDReg (stage 1 with PID and all regularizers,
    both presets; stage 2) vs late fusion with the same encoders, for MLP encoders
    on tabular data (the reference setting: D = 64, 256/128 hidden, batch 256) and
    for SFCN encoders on small volumes.

Run from the repository root::

    .venv/bin/python bench/bench_pidreg.py [--part table baselines epoch] [--quick]

Writes ``bench/results/pidreg.json`` (table, baselines; parts already there are
kept when a part is rerun alone) and ``bench/results/pidreg_epoch_time.json``.
Timings on a shared machine are inflated; the JSON records the load average.
Single-thread torch by default (``--threads``); ``--device cuda`` runs the epoch
part on a GPU with bf16 autocast and writes ``pidreg_epoch_time_gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, write_result  # noqa: E402

CASES = ["redundancy", "unique", "synergy", "redundancy_synergy", "noise_modality", "both_weak"]
ATOMS = ("U1", "U2", "R", "S")


def _within(est: float, truth: float) -> bool:
    err = abs(est - truth)
    return err <= 0.1 or err <= 0.2 * abs(truth)


def _model_kwargs(args) -> dict:
    return dict(latent_dim=args.latent_dim, hidden=(128, 64), max_epochs=args.epochs,
                batch_size=256, random_state=0, device="cpu")


def _r2(pred, y) -> float:
    return float(1 - np.mean((pred - y) ** 2) / np.var(y))


def part_table(args) -> dict:
    from brainage.estimators.regressor import PIDRegressor
    from brainage.simulate.tabular import make_pid_dataset

    rows = []
    for case in CASES:
        train = make_pid_dataset(case, args.n_train, seed=0, map_seed=0)
        test = make_pid_dataset(case, args.n_test, seed=1, map_seed=0)
        truth = train.truth["m1|m2"]
        for preset in ("default", "faithful"):
            t0 = time.perf_counter()
            reg = PIDRegressor(preset=preset, **_model_kwargs(args)).fit(train.X, train.y)
            held = reg.pid_score(test.X, test.y, n_boot=args.n_boot)["m1|m2"]
            row = {
                "case": case, "preset": preset, "truth": {a: truth[a] for a in ATOMS},
                "held_out": {a: getattr(held, a) for a in ATOMS},
                "held_out_ci": {a: list(held.ci[a]) for a in ATOMS} if held.ci else None,
                "fitted": {a: reg.pid_["m1|m2"][a] for a in ATOMS},
                "weights_atoms": {a: reg.pid_weights_atoms_["m1|m2"][a] for a in ATOMS},
                "fusion_weights": reg.fusion_weights_,
                "test_r2": _r2(reg.predict(test.X), test.y),
                "optimal_r2": float(1 - 2 ** (-2 * truth["I12"])),
                "epochs": reg.n_epochs_, "stage2_epoch": reg.stage2_epoch_,
                "gaussianity": reg.gaussianity_,
                "seconds": time.perf_counter() - t0,
            }
            row["held_out_within_target"] = {
                a: _within(row["held_out"][a], row["truth"][a]) for a in ATOMS}
            row["fitted_within_target"] = {
                a: _within(row["fitted"][a], row["truth"][a]) for a in ATOMS}
            if case == "noise_modality":
                row["noise_modality_weight"] = reg.fusion_weights_["m2"]
                row["noise_weight_within_target"] = reg.fusion_weights_["m2"] <= 0.1
            rows.append(row)
            print(_fmt_row(row), flush=True)
            _save({"table": rows, "table_settings": _settings(args)}, partial=True)
    return {"table": rows, "table_settings": _settings(args)}


def _fmt_row(row) -> str:
    f = lambda d: " ".join(f"{a}={d[a]:+.3f}" for a in ATOMS)  # noqa: E731
    ok = "".join("✓" if row["held_out_within_target"][a] else "✗" for a in ATOMS)
    return (f"{row['case']:<20} {row['preset']:<8} truth[{f(row['truth'])}] "
            f"held[{f(row['held_out'])}] {ok} fitted[{f(row['fitted'])}] "
            f"w={ {k: round(v, 3) for k, v in row['fusion_weights'].items()} } "
            f"r2={row['test_r2']:.3f}/{row['optimal_r2']:.3f} ep={row['epochs']}")


def part_baselines(args) -> dict:
    from brainage.estimators.baselines import BaselineRegressor
    from brainage.estimators.regressor import PIDRegressor
    from brainage.simulate.tabular import make_pid_dataset

    rows = []
    path = RESULTS / "pidreg.json"
    for case in CASES:
        table = []
        if path.is_file():  # reread per case: a table run may be filling it in parallel
            saved = json.loads(path.read_text())
            keys = ("quick", "n_train", "n_test", "epochs", "latent_dim")
            same = {k: saved.get("table_settings", {}).get(k) for k in keys} == {
                k: getattr(args, k) for k in keys}
            if same:
                table = saved.get("table", [])
        train = make_pid_dataset(case, args.n_train, seed=0, map_seed=0)
        test = make_pid_dataset(case, args.n_test, seed=1, map_seed=0)
        models = {
            "unimodal_m1": BaselineRegressor(kind="unimodal", modality="m1",
                                             **_model_kwargs(args)),
            "unimodal_m2": BaselineRegressor(kind="unimodal", modality="m2",
                                             **_model_kwargs(args)),
            "early_fusion": BaselineRegressor(kind="early", **_model_kwargs(args)),
            "late_fusion": BaselineRegressor(kind="late", **_model_kwargs(args)),
        }
        res = {"case": case, "optimal_r2": float(1 - 2 ** (-2 * train.truth["m1|m2"]["I12"]))}
        # PIDReg's test R² comes from the table part (same data, same settings) when present
        for row in table:
            if row["case"] == case:
                res[f"pidreg_{row['preset']}"] = row["test_r2"]
        for preset in ("default", "faithful"):
            if f"pidreg_{preset}" not in res:
                models[f"pidreg_{preset}"] = PIDRegressor(preset=preset, **_model_kwargs(args))
        for name, model in models.items():
            model.fit(train.X, train.y)
            res[name] = _r2(model.predict(test.X), test.y)
        rows.append(res)
        print(case, {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()},
              flush=True)
        _save({"baselines": rows}, partial=True)
    return {"baselines": rows}


def _one_epoch(model, data, y_std, y_pid, cfg, frozen: bool, device: str = "cpu") -> float:
    from brainage.training.trainer import train_model

    idx = np.arange(data.n)
    res = train_model(model, data, y_std, idx, idx[:0], cfg.replace(max_epochs=1),
                      y_pid=y_pid, device=device, frozen_weights=frozen)
    return res.history[0]["seconds"]


def part_epoch(args) -> dict:
    """Seconds per epoch, measured interleaved (A B C D A B C D …), min over repeats.

    On a shared machine other processes add delays at random; interleaving spreads
    them over all variants and the minimum over repeats is the least disturbed
    estimate of each variant's cost. The ratios are given both ways: of the
    minima, and paired (the median over repeats of each repeat's own ratio).
    """
    from brainage.models.baselines import FusionBaselineNet
    from brainage.models.encoders import build_encoder, encoder_spec_for
    from brainage.models.pidreg import PIDReg
    from brainage.models.presets import get_preset
    from brainage.simulate.tabular import make_pid_dataset
    from brainage.training.datasets import MultiModalData
    from brainage.training.trainer import pid_target

    out = {}
    settings = {
        "tabular_mlp": dict(n=args.epoch_n, shape=(32,), enc={}, batch=256, latent=64),
        "volume_sfcn": dict(n=args.vol_n, shape=(1, 24, 28, 24),
                            enc={"channels": (8, 16, 32), "final_channels": 16},
                            batch=16, latent=16),
    }
    # (label, preset, start frozen in stage 2, setting overrides); the default preset
    # computes its regularizers on every 8th batch, "every_batch" on every batch.
    variants = (
        ("pidreg_default_stage1", "default", False, {}),
        ("pidreg_default_every_batch_stage1", "default", False, {"regularizer_interval": 1}),
        ("pidreg_faithful_stage1", "faithful", False, {}),
        ("pidreg_stage2", "default", True, {}),
        ("late_fusion", "default", False, {}),
    )
    for name, s in settings.items():
        rng = np.random.default_rng(0)
        if name == "tabular_mlp":
            d = make_pid_dataset("redundancy", s["n"], n_features=32, seed=0)
            X, y = d.X, d.y
        else:
            y = rng.normal(size=s["n"])
            X = {m: (rng.normal(size=(s["n"], *s["shape"])) + y[:, None, None, None, None]
                     * (k + 1) * 0.1).astype(np.float32) for k, m in enumerate(("m1", "m2"))}
        data = MultiModalData(X)
        y_std = (y - y.mean()) / y.std()
        y_pid = pid_target(y)

        def encoders(s=s, data=data):
            torch.manual_seed(0)
            return {m: build_encoder(encoder_spec_for(data.sample_shapes[m], **s["enc"]),
                                     out_dim=s["latent"]) for m in data.modalities}

        models, cfgs = {}, {}
        for label, preset, _, over in variants:
            cfg = get_preset(preset, latent_dim=s["latent"], batch_size=s["batch"], **over)
            cfgs[label] = cfg
            if label == "late_fusion":
                models[label] = FusionBaselineNet(encoders(), latent_dim=s["latent"],
                                                  hidden=cfg.hidden, dropout=cfg.dropout)
            else:
                models[label] = PIDReg(encoders(), latent_dim=s["latent"], hidden=cfg.hidden,
                                       dropout=cfg.dropout)
        times = {label: [] for label, *_ in variants}
        for _ in range(args.epoch_repeats):
            for label, _, frozen, _ in variants:
                times[label].append(
                    _one_epoch(models[label], data, y_std, y_pid, cfgs[label], frozen, args.device))
        figures = {"n": s["n"], "input_shape": list(s["shape"]), "batch_size": s["batch"],
                   "latent_dim": s["latent"], "repeats": args.epoch_repeats}
        for label in times:
            figures[label] = {"min": min(times[label]), "median": float(np.median(times[label])),
                              "all": times[label]}
            print(name, label, f"min {min(times[label]):.3f} s/epoch, "
                  f"median {np.median(times[label]):.3f}", flush=True)
        base = figures["late_fusion"]["min"]
        late = np.asarray(times["late_fusion"])
        for label, *_ in variants[:-1]:
            figures[f"ratio_{label}_vs_late_fusion"] = figures[label]["min"] / base
            # Paired: the variants of one repeat ran back to back, so their ratio is
            # immune to the slow phases of a shared machine that shift whole minutes.
            paired = np.asarray(times[label]) / late
            figures[f"paired_ratio_{label}_vs_late_fusion"] = {
                "median": float(np.median(paired)),
                "p25": float(np.quantile(paired, 0.25)),
                "p75": float(np.quantile(paired, 0.75)),
            }
        out[name] = figures
    info = {"device": args.device, "torch_threads": torch.get_num_threads(),
            "load_average_at_end": os.getloadavg()}
    if args.device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(0)
        info["autocast"] = "bf16"
    return {"epoch_time": out, "epoch_settings": _settings(args), "epoch_device": info}


def _settings(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("part", "report")}


def _save(figures: dict, partial: bool = False, name: str = "pidreg") -> None:
    path = RESULTS / f"{name}.json"
    old = {}
    if path.is_file():
        old = {k: v for k, v in json.loads(path.read_text()).items()
               if k not in ("benchmark", "machine")}
    old.update(figures)
    old["torch_threads"] = torch.get_num_threads()
    old["load_average_at_save"] = os.getloadavg()
    old["device"] = figures.get("epoch_device", {}).get("device", old.get("device", "cpu"))
    write_result(name, old)


def markdown_report(results: dict) -> str:
    """Render the truth-vs-estimate table and the baselines of a result JSON as markdown."""
    lines = ["| case | preset | atom | truth | held-out | fitted | weights-atoms | target |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results.get("table", []):
        for a in ATOMS:
            ok = "yes" if row["held_out_within_target"][a] else "**no**"
            lines.append(
                f"| {row['case']} | {row['preset']} | {a} | {row['truth'][a]:.3f} | "
                f"{row['held_out'][a]:.3f} | {row['fitted'][a]:.3f} | "
                f"{row['weights_atoms'][a]:.3f} | {ok} |")
    lines += ["", "| case | preset | fusion weights (m1, m2, m1⊙m2) | test R² | optimal R² |",
              "|---|---|---|---|---|"]
    for row in results.get("table", []):
        w = row["fusion_weights"]
        lines.append(f"| {row['case']} | {row['preset']} | {w['m1']:.3f}, {w['m2']:.3f}, "
                     f"{w['m1|m2']:.3f} | {row['test_r2']:.3f} | {row['optimal_r2']:.3f} |")
    if results.get("baselines"):
        names = ["unimodal_m1", "unimodal_m2", "early_fusion", "late_fusion",
                 "pidreg_default", "pidreg_faithful"]
        lines += ["", "| case | optimal | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for row in results["baselines"]:
            vals = " | ".join(f"{row[n]:.3f}" if n in row else "" for n in names)
            lines.append(f"| {row['case']} | {row['optimal_r2']:.3f} | {vals} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", nargs="+", default=["table", "baselines", "epoch"],
                        choices=["table", "baselines", "epoch"])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--n-boot", type=int, default=50)
    parser.add_argument("--epoch-n", type=int, default=4096)
    parser.add_argument("--vol-n", type=int, default=128)
    parser.add_argument("--epoch-repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="device of the epoch part (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--report", action="store_true",
                        help="print the saved results as markdown tables and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(markdown_report(json.loads((RESULTS / "pidreg.json").read_text())))
        return
    if args.quick:
        args.n_train, args.n_test, args.epochs, args.n_boot = 600, 600, 5, 0
        args.epoch_n, args.vol_n, args.epoch_repeats = 512, 32, 2
    torch.set_num_threads(args.threads)
    for part in args.part:
        figures = {"table": part_table, "baselines": part_baselines, "epoch": part_epoch}[part](
            args)
        if part == "epoch":
            gpu = args.device.startswith("cuda")
            _save(figures, name="pidreg_epoch_time_gpu" if gpu else "pidreg_epoch_time")
        else:
            _save(figures, name="pidreg")


if __name__ == "__main__":
    main()
