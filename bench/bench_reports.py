"""Benchmark: time and size of the reports (cohort report + one page per participant).

Builds ``OUTPUT_DIR/reports`` from an existing group run (``--output``, e.g. the demo's
``brainage-demo/bids/derivatives/brainage``) or, without it, from a cohort written like the
tests' (``--n`` participants, ridge + a small PIDReg, 5 folds). Times
``brainage.reporting.assemble.build_reports`` with one process and with two, and records
the sizes of the files. With ``--screenshots DIR`` it also opens the cohort report and the
first non-control's page in Debian's chromium (Playwright, ``executable_path``) and writes
the screenshots shown in ``docs/reports.md``.

Run from the repository root::

    .venv/bin/python bench/bench_reports.py [--output DERIV] [--screenshots docs/img]

Writes ``bench/results/reports.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result

CONFIG = """\
name: bench-reports
group:
  inputs:
    anat: {kind: regional, atlas: HarvardOxford}
    func: {kind: connectivity, atlas: HarvardOxford}
  models: [ridge, pidreg]
  primary_model: pidreg
  model_params:
    pidreg: {max_epochs: 40, latent_dim: 4, hidden: [16], batch_size: 64}
  cv: {n_splits: 5, inner_splits: 3, seed: 0}
"""


def _synthetic(root: Path, n: int) -> Path:
    from brainage.cli import main
    from tests.test_group_level import write_cohort

    bids, deriv = write_cohort(root, n=n, seed=11)
    config = root / "group.yaml"
    config.write_text(CONFIG)
    code = main([str(bids), str(deriv), "group", "--train", "--config-file", str(config), "--no-report"])
    if code:
        raise SystemExit(f"training the benchmark cohort failed (exit {code})")
    return deriv


def _screenshots(reports: Path, out: Path) -> dict:
    import pandas as pd
    from PIL import Image
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    pred = pd.read_csv(reports.parent / "group" / "predictions.tsv", sep="\t")
    patient = pred.loc[pred["group"] != "control", "participant_id"].iloc[0]
    shots = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                     args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for name, html in (("cohort", "cohort.html"), ("participant", f"{patient}.html")):
            page.goto((reports / html).as_uri(), wait_until="load")
            full = out / f"report_{name}_full.png"
            page.screenshot(path=str(full), full_page=True)
            with Image.open(full) as im:
                top = im.crop((0, 0, im.width, min(im.height, 2400)))
                top.save(out / f"report_{name}.png", optimize=True)
                shots[name] = {"page": html, "full_height_px": im.height}
            full.unlink()
        page.goto((reports / "cohort.html").as_uri(), wait_until="load")
        for section in ("groups", "literature", "modalities", "atlas"):
            page.locator(f"section#{section}").screenshot(path=str(out / f"report_{section}.png"))
        browser.close()
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="derivatives root with a finished group run")
    parser.add_argument("--n", type=int, default=120, help="participants of the synthetic cohort")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--screenshots", type=Path, help="write report screenshots here")
    args = parser.parse_args()

    from brainage.reporting.assemble import build_reports

    scratch = None
    if args.output is None:
        scratch = Path(tempfile.mkdtemp(prefix="bench-reports-"))
        deriv = _synthetic(scratch, args.n)
        source = f"synthetic cohort written like the tests' (n = {args.n})"
    else:
        deriv = args.output.resolve()
        source = str(deriv)
    try:
        timings = {}
        for nprocs in (1, 2):
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = build_reports(deriv, nprocs=nprocs)
                runs.append(time.perf_counter() - t0)
            timings[f"nprocs_{nprocs}"] = {"seconds": runs, "best_seconds": min(runs)}
        pages = [p.stat().st_size for p in out.participants]
        figures = {
            "source": source,
            "n_pages": len(pages),
            "timings": timings,
            "seconds_per_page_one_process": (min(timings["nprocs_1"]["seconds"]) / max(len(pages), 1)),
            "cohort_html_mb": round(out.cohort.stat().st_size / 1e6, 3),
            "participant_page_mb_mean": round(statistics.mean(pages) / 1e6, 3) if pages else None,
            "participant_page_mb_max": round(max(pages) / 1e6, 3) if pages else None,
            "reports_total_mb": round((out.cohort.stat().st_size + sum(pages)) / 1e6, 2),
            "errors": len(out.errors),
        }
        if args.screenshots:
            figures["screenshots"] = _screenshots(out.directory, args.screenshots)
        path = write_result("reports", figures)
        print(path)
        for key, value in figures.items():
            print(f"{key}: {value}")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
