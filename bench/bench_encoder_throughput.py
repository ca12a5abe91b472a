"""Benchmark: training throughput (samples/s) of the 3D CNN encoders on 2 mm MNI volumes.

Times full PIDReg training steps (two SFCN encoders, one per modality, noise
bottleneck, fusion, predictor, MSE + Gaussianity + CMI + normality losses,
backward, Adam step) and late-fusion steps with the same encoders, on random
volumes of the 2 mm MNI grid (91 × 109 × 91), one channel per modality. The
two kinds are timed interleaved after a warm-up step; samples/s uses the fastest
step (the least disturbed by other processes), the median is recorded too.
The device is CUDA (with bf16 autocast) when available, CPU otherwise; the JSON
records which.

Run from the repository root::

    .venv/bin/python bench/bench_encoder_throughput.py [--batch-size 4] [--steps 5]
        [--channels 32 64 128 256 256] [--device auto]

Writes ``bench/results/encoder_throughput.json`` (``encoder_throughput_gpu.json``
when run on CUDA, so the CPU figure is kept). On a shared CPU the figures are
inflated; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_result

MNI_2MM = (91, 109, 91)


def _step_fn(kind: str, batch: int, channels, device, use_reg: bool):
    from brainage.models.baselines import FusionBaselineNet
    from brainage.models.encoders import SFCNEncoder
    from brainage.models.pidreg import PIDReg
    from brainage.models.presets import get_preset
    from brainage.training.trainer import regularization

    torch.manual_seed(0)
    latent = 64
    cfg = get_preset("default")
    encs = {m: SFCNEncoder(in_channels=1, out_dim=latent, channels=channels[:-1],
                           final_channels=channels[-1]) for m in ("anat", "func")}
    if kind == "pidreg":
        net = PIDReg(encs, latent_dim=latent)
    else:
        net = FusionBaselineNet(encs, latent_dim=latent, hidden=(256, 128), dropout=(0.3, 0.2))
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = {m: torch.randn(batch, 1, *MNI_2MM, generator=g).to(device) for m in ("anat", "func")}
    y = torch.randn(batch, generator=g).to(device)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))

    def step():
        with amp:
            out = net(x)
        loss = torch.mean((out["pred"].float() - y) ** 2)
        if kind == "pidreg" and use_reg:
            # the default preset's regularizers, as the trainer computes them (here on
            # every step; the normality term needs a batch larger than the joint)
            loss = loss + regularization(out, x, y, net.modalities, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    return step, sum(p.numel() for p in net.parameters())


def _timed(step, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 256, 256, 64],
                        help="SFCN stage channels; the last is the 1x1x1 stage")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    figures = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "autocast": "bf16" if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "input_shape": list(MNI_2MM),
        "modalities": 2,
        "batch_size": args.batch_size,
        "channels": args.channels,
        "load_average_at_start": os.getloadavg(),
    }
    kinds = {"pidreg": True, "late_fusion": False}
    steps, times = {}, {k: [] for k in kinds}
    for kind, use_reg in kinds.items():
        steps[kind], n_params = _step_fn(kind, args.batch_size, args.channels, device, use_reg)
        steps[kind]()  # warm-up (allocations, cuDNN autotune)
        figures[kind] = {"n_parameters": int(n_params)}
    # interleaved, so that load from other processes spreads over both kinds
    for _ in range(args.steps):
        for kind in kinds:
            times[kind].append(_timed(steps[kind], device))
    for kind in kinds:
        best = min(times[kind])
        figures[kind].update({
            "seconds_per_step_min": best,
            "seconds_per_step_median": float(np.median(times[kind])),
            "seconds_per_step_all": times[kind],
            "samples_per_second": args.batch_size / best,
        })
        if device.type == "cuda":
            figures[kind]["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        print(kind, f"{args.batch_size / best:.3f} samples/s ({best:.2f} s/step, best of "
              f"{args.steps})", flush=True)
    figures["pidreg_step_time_vs_late_fusion"] = (
        figures["pidreg"]["seconds_per_step_min"] / figures["late_fusion"]["seconds_per_step_min"])
    figures["load_average_at_end"] = os.getloadavg()
    name = "encoder_throughput_gpu" if device.type == "cuda" else "encoder_throughput"
    write_result(name, figures)


if __name__ == "__main__":
    main()
