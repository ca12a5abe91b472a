"""Benchmark: how long ``brainage --help`` takes in a fresh interpreter.

The CLI imports its heavy libraries (torch, ANTs, nilearn, MONAI, pandas, Dask) only
when a command needs them, so ``--help`` should answer at once. The test suite checks
that no heavy module is imported (``tests/test_cli.py``); the time itself depends on
the machine and its load, so it is measured here instead of asserted there.

Each repeat runs ``python -c "from brainage.cli import main; main(['--help'])"`` in a
new process and records its wall time (interpreter start-up included, as a user sees
it) and the time inside the process from the import to the printed help. The first
repeat is kept apart: it may pay for cold file caches.

Run from the repository root::

    .venv/bin/python bench/bench_cli_help.py [--repeats 10]

Writes ``bench/results/cli_help.json`` (machine, load average before and after).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_result

HEAVY = ("torch", "ants", "nilearn", "monai", "bids", "pandas", "dask")
CODE = (
    "import sys, time; t = time.perf_counter(); from brainage.cli import main\n"
    "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    "elapsed = time.perf_counter() - t\n"
    f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
    "print('ELAPSED', elapsed, 'HEAVY', ','.join(heavy) or '-', file=sys.stderr)"
)
TARGET_S = 1.0  # the former test's limit on the wall time


def _once() -> tuple[float, float, list[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or "participant" not in proc.stdout:
        raise SystemExit(f"brainage --help failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    fields = proc.stderr.split()
    inside = float(fields[fields.index("ELAPSED") + 1])
    heavy = fields[fields.index("HEAVY") + 1]
    return wall, inside, [] if heavy == "-" else heavy.split(",")


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)

    load_before = os.getloadavg()
    first = _once()
    runs = [_once() for _ in range(args.repeats)]
    walls = [r[0] for r in runs]
    inside = [r[1] for r in runs]
    heavy = sorted({m for r in (first, *runs) for m in r[2]})
    wall = _summary(walls)
    print(f"brainage --help: first {first[0]:.3f} s, then median {wall['median']:.3f} s wall "
          f"({_summary(inside)['median']:.3f} s inside the process) over {args.repeats} runs; "
          f"heavy modules imported: {heavy or 'none'}", flush=True)
    write_result("cli_help", {
        "settings": {"repeats": args.repeats, "python": sys.executable},
        "first_wall_s": round(first[0], 4),
        "first_in_process_s": round(first[1], 4),
        "wall_s": wall,
        "in_process_s": _summary(inside),
        "target_wall_s": TARGET_S,
        "within_target": wall["median"] < TARGET_S,
        "heavy_modules_imported": heavy,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": "wall time of a fresh interpreter, start-up included; a shared machine inflates it",
    })


if __name__ == "__main__":
    main()
