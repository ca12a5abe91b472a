"""The cohort report and participant pages: content, errors section, atomic writes, --report-only."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from brainage.cli import main
from brainage.exceptions import UsageError
from brainage.reporting import assemble
from brainage.reporting.assemble import build_reports, load_layout
from brainage.reporting.participant import MIN_REFERENCE, page_name, reference_controls

from .test_group_level import CONFIG, write_cohort

#: A QC figure of the participant level (what the anat stage writes under figures/).
QC_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20" viewBox="0 0 40 20">'
          '<rect width="40" height="20" fill="#888"/></svg>')


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reports")
    bids, deriv = write_cohort(root, n=36, seed=7)
    figures = deriv / "sub-01" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    (figures / "sub-01_desc-mosaic_T1w.svg").write_text(QC_SVG)
    (deriv / "logs").mkdir(exist_ok=True)
    (deriv / "logs" / "20261201T000000_participant_config.yaml").write_text("name: testpipe\n")
    config = root / "group.yaml"
    config.write_text(CONFIG.replace("  primary_model: pidreg\n",
                                     "  primary_model: pidreg\n  conditions: {patient: schizophrenia}\n"))
    code = main([str(bids), str(deriv), "group", "--train", "--config-file", str(config)])
    assert code == 0
    return bids, deriv


def _html(deriv, name="cohort.html") -> str:
    return (deriv / "reports" / name).read_text(encoding="utf-8")


def test_training_writes_the_cohort_report_and_a_page_per_participant(reported):
    bids, deriv = reported
    people = pd.read_csv(bids / "participants.tsv", sep="\t")
    pages = sorted(p.name for p in (deriv / "reports").glob("sub-*.html"))
    assert pages == sorted(f"{p}.html" for p in people["participant_id"])
    html = _html(deriv)
    # the sections of the layout, in its order
    ids = [s["id"] for s in load_layout()["cohort"]["sections"]]
    positions = [html.index(f'<section id="{i}">') for i in ids]
    assert positions == sorted(positions) and len(ids) == 8
    # uncorrected accuracy comes before the corrected metrics, which say they are not accuracy
    assert html.index("out of sample (uncorrected)") < html.index("After age-bias correction (not accuracy)")
    # figures are inline SVG data; nothing refers to the network
    assert html.count('src="data:image/svg+xml;base64,') >= 10
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "None: every figure and table of this report was drawn." in html


def test_cohort_report_compares_with_the_mapped_literature_and_explains_pid(reported):
    _, deriv = reported
    html = _html(deriv)
    literature = html[html.index('<section id="literature">'):html.index('<section id="modalities">')]
    assert "group &#39;patient&#39; → schizophrenia" in literature
    assert "pipeline &#39;testpipe&#39;" in html[:html.index('<section id="accuracy">')]
    assert "Constantinides et al. 2023" in literature and "doi:10.1038/s41380-022-01897-w" in literature
    assert "Han et al. 2021" not in literature  # only the matched condition's studies
    assert "Published gaps come from other models" in literature
    pid = html[html.index('<section id="modalities">'):html.index('<section id="atlas">')]
    assert "bits" in pid and "U1" in pid and "fusion weights" in pid
    assert "Modality selection" in pid
    atlas = html[html.index('<section id="atlas">'):html.index('<section id="qc">')]
    assert 'id="fig-region_map"' in atlas and 'id="fig-region_pid_struct"' in atlas
    assert "PID atoms of age per region (bits)" in atlas and "Top regions, lobes and networks" in atlas


def test_participant_page_shows_estimate_deviations_and_qc(reported):
    _, deriv = reported
    page = _html(deriv, "sub-01.html")
    assert "95 % interval of the corrected prediction" in page
    assert "percentile of the corrected gap" in page
    assert "no basis for a diagnosis" in page and "d ≈ 0.1–0.5" in page
    assert "Flagged regional measures" in page or "No measure is flagged." in page
    assert 'href="cohort.html"' in page
    # the participant level's QC mosaic is inlined, and the cohort QC table links to it
    assert page.count('src="data:image/svg+xml;base64,') >= 4
    assert 'href="../sub-01/figures/sub-01_desc-mosaic_T1w.svg"' in _html(deriv)


def test_report_only_rebuilds_the_reports_without_training(reported, capsys):
    bids, deriv = reported
    predictions = deriv / "group" / "predictions.tsv"
    model = deriv / "group" / "model" / "model.safetensors"
    before = predictions.stat().st_mtime_ns, model.stat().st_mtime_ns
    (deriv / "reports" / "cohort.html").write_text("stale")
    assert main([str(bids), str(deriv), "group", "--report-only"]) == 0
    assert (predictions.stat().st_mtime_ns, model.stat().st_mtime_ns) == before
    assert "Brain-age report" in _html(deriv)
    assert "reports (" in capsys.readouterr().out


def test_report_only_without_a_group_run_is_a_usage_error(tmp_path, capsys):
    bids, deriv = write_cohort(tmp_path, n=4)
    assert main([str(bids), str(deriv), "group", "--report-only"]) == 2
    assert "group --train" in capsys.readouterr().err


def test_a_failing_figure_is_listed_and_the_rest_is_written(reported, monkeypatch):
    _, deriv = reported

    def broken(data, ctx, path):
        raise RuntimeError("simulated drawing failure")

    monkeypatch.setitem(assemble.COHORT_FIGURES, "gap_by_group", broken)
    out = build_reports(deriv, participants=False)
    html = _html(deriv)
    assert any(e["what"] == "gap_by_group" for e in out.errors)
    errors = html[html.index('<section id="errors">'):]
    assert "gap_by_group" in errors and "simulated drawing failure" in errors
    assert 'id="fig-site_forest"' in html and 'id="fig-gap_by_group"' not in html


def test_a_failed_build_leaves_the_existing_report_in_place(reported, monkeypatch):
    _, deriv = reported
    before = _html(deriv)
    pages = sorted((deriv / "reports").glob("sub-*.html"))

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(assemble, "cohort_context", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        build_reports(deriv)
    assert _html(deriv) == before
    assert sorted((deriv / "reports").glob("sub-*.html")) == pages
    assert not list(deriv.glob(".reports-*"))


def test_a_broken_layout_names_the_file(tmp_path):
    bad = tmp_path / "layout.yaml"
    bad.write_text("cohort: {sections: [{title: no id}]}\nparticipant: {sections: []}\n")
    with pytest.raises(UsageError, match=r"layout\.yaml.*cohort\.sections"):
        load_layout(bad)


def test_reference_controls_exclude_the_participant_and_widen_until_enough():
    rng = np.random.default_rng(0)
    n = 60
    controls = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(n)], "session": None,
                             "sex": np.where(np.arange(n) % 2, "F", "M"), "age": rng.uniform(20, 80, n),
                             "gap_corrected": rng.normal(0, 4, n)})
    me = controls.iloc[0]
    ref, width = reference_controls(controls, me)
    assert "sub-00" not in set(ref["participant_id"])
    assert (ref["sex"] == me["sex"]).all()
    assert len(ref) >= MIN_REFERENCE and (ref["age"] - me["age"]).abs().max() <= width
    # a narrower window would hold fewer than the minimum
    others = controls[(controls["participant_id"] != "sub-00") & (controls["sex"] == me["sex"])]
    narrower = [w for w in assemble_windows() if w < width]
    for w in narrower:
        assert ((others["age"] - me["age"]).abs() <= w).sum() < MIN_REFERENCE


def assemble_windows():
    from brainage.reporting.participant import AGE_WINDOWS

    return AGE_WINDOWS


def test_page_names_carry_the_session():
    assert page_name("sub-01", None) == "sub-01.html"
    assert page_name("sub-01", "ses-2") == "sub-01_ses-2.html"
    assert page_name("sub-01", "n/a") == "sub-01.html"


def test_estimate_interval_is_the_prediction_minus_the_controls_gap_quantiles():
    from brainage.reporting.data import ReportData
    from brainage.reporting.participant import participant_context

    rng = np.random.default_rng(1)
    n = 40
    controls = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(n)], "session": None,
                             "sex": "F", "age": rng.uniform(40, 60, n), "group": "control", "site": "A",
                             "gap_corrected": rng.normal(0, 3, n)})
    row = pd.Series({"participant_id": "sub-99", "session": None, "sex": "F", "age": 50.0, "site": "A",
                     "group": "patient", "predicted_age": 57.0, "gap": 7.0, "predicted_age_corrected": 56.0,
                     "gap_corrected": 6.0})
    ctx = participant_context(row, ReportData(output_dir=None, mode="train"), controls)
    lo, hi = np.quantile(controls["gap_corrected"], [0.025, 0.975])
    cells = dict(ctx["tables"]["estimate"]["rows"])
    assert cells["95 % interval of the corrected prediction"] == f"[{56 - hi:.1f}, {56 - lo:.1f}] y"
    pct = (controls["gap_corrected"] < 6.0).mean() * 100
    assert cells["percentile of the corrected gap"].startswith(f"{pct:.0f}th among")
    assert f"corrected gap +6.0 years ({pct:.0f}th among" in ctx["text"]["estimate"][0]


def test_a_participant_without_enough_reference_controls_reads_percentile_not_computed():
    from brainage.reporting.data import ReportData
    from brainage.reporting.participant import participant_context

    controls = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(12)], "session": None,
                             "sex": "M", "age": np.linspace(40, 60, 12), "group": "control", "site": "A",
                             "gap_corrected": np.linspace(-3, 3, 12)})
    row = pd.Series({"participant_id": "sub-99", "session": None, "sex": "F", "age": 50.0, "site": "A",
                     "group": "patient", "predicted_age": 53.0, "gap": 3.0, "predicted_age_corrected": 52.0,
                     "gap_corrected": 2.0})
    ctx = participant_context(row, ReportData(output_dir=None, mode="train"), controls)
    assert dict(ctx["tables"]["estimate"]["rows"])["percentile of the corrected gap"] == (
        f"not computed: fewer than {MIN_REFERENCE} controls of the same sex and similar age")
    assert ctx["text"]["estimate"][0].endswith(
        f"corrected gap +2.0 years (percentile not computed: fewer than {MIN_REFERENCE} controls of the "
        "same sex and similar age).")


def _chromium() -> str:
    import shutil

    path = shutil.which("chromium") or "/usr/bin/chromium"
    assert shutil.which(path), ("Debian's chromium is needed for the browser test: "
                                "`apt-get install chromium` (make tools does it as root)")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cohort.html", "sub-01.html"])
def test_reports_render_in_a_real_browser(reported, name, tmp_path):
    from playwright.sync_api import sync_playwright

    _, deriv = reported
    page_path = deriv / "reports" / name
    html = page_path.read_text(encoding="utf-8")
    assert not re.search(r"https?://(?!www\.w3\.org/)", html.replace('xmlns="http://www.w3.org/2000/svg"', ""))
    problems, requests = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                ".map(i => i.alt)")
            n_images = page.evaluate("document.images.length")
            page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
        finally:
            browser.close()
    assert n_images >= (8 if name == "cohort.html" else 3)
    assert broken == [], f"broken images: {broken}"
    assert problems == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_pages_of_participants_no_longer_in_the_outputs_are_removed(reported):
    _, deriv = reported
    stale = deriv / "reports" / "sub-99.html"
    stale.write_text("a participant excluded since")
    out = build_reports(deriv, nprocs=1)
    assert not stale.exists()
    assert len(out.participants) == len(list((deriv / "reports").glob("sub-*.html")))


def test_the_stylesheet_is_inlined_verbatim(reported):
    from brainage.resources import data_dir

    _, deriv = reported
    css = (data_dir("reports") / "report.css").read_text(encoding="utf-8")
    for name in ("cohort.html", "sub-01.html"):
        assert css in _html(deriv, name)


def test_control_labels_match_the_data_case_insensitively():
    from brainage.reporting.data import ReportData

    data = ReportData(output_dir=None, mode="train",
                      tables={"predictions": pd.DataFrame({"group": ["Control", "SZ", "Control"]})},
                      bundle={"group_config": {"control_labels": ["control", "HC"]}})
    assert data.control_labels[0] == "Control" and "SZ" not in data.control_labels


def test_links_to_participant_files_survive_symlinked_participant_folders(tmp_path):
    from brainage.reporting.cohort import _relative

    real = tmp_path / "elsewhere" / "sub-01" / "figures"
    real.mkdir(parents=True)
    (real / "mosaic.svg").write_text("<svg/>")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub-01").symlink_to(real.parent, target_is_directory=True)
    assert _relative(out / "sub-01" / "figures" / "mosaic.svg", out) == "../sub-01/figures/mosaic.svg"
    # a file resolved outside OUTPUT_DIR still gets a working relative link
    link = _relative(real / "mosaic.svg", out)
    assert (out / "reports" / link).resolve() == (real / "mosaic.svg").resolve()


def test_methods_text_names_the_maps_a_cnn_reads():
    from brainage.reporting.cohort import _input_text

    assert _input_text({"kind": "maps", "maps": ["falff", "reho"], "resolution": 4.0}) == \
        "fALFF and ReHo maps at 4 mm in MNI space (3D CNN encoders)"
    assert _input_text({"kind": "regional", "atlas": "AAL"}) == "regional features on the AAL atlas"


def test_region_map_of_whole_brain_inputs_is_not_applicable_not_an_error(tmp_path):
    regions = pd.DataFrame({"modality": ["anat", "anat"], "atlas": [None, None], "level": ["region"] * 2,
                            "region": ["Total_GM", "TIV"], "index": [np.nan, np.nan],
                            "attribution": [2.0, 0.5]})

    class Data:
        def table(self, name):
            return regions if name == "regions" else None

    errors = []
    out = assemble._draw({"region_map": assemble._region_map}, {"id": "region_map"}, (Data(), {}),
                         tmp_path, errors, "cohort")
    assert errors == [] and out["src"] is None
    assert "needs an input with atlas regions" in out["caption"]
