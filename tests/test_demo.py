"""The demo driver and what the report says a small (or simulated) cohort can and cannot show."""

from __future__ import annotations

import json

import pytest

from brainage import demo
from brainage.cli import main
from brainage.exceptions import ConfigError, UsageError
from brainage.reporting.scope import detectable_difference, simulation_truth

from .test_reports import reported  # noqa: F401  (module fixture: a trained cohort with its report)


@pytest.mark.parametrize(("sd", "n1", "n2"), [(6.5, 28, 12), (1.0, 16, 16), (3.0, 200, 40)])
def test_detectable_difference_matches_statsmodels_power(sd, n1, n2):
    from statsmodels.stats.power import NormalIndPower

    d = NormalIndPower().solve_power(effect_size=None, nobs1=n1, alpha=0.05, power=0.8, ratio=n2 / n1,
                                     alternative="two-sided")
    # statsmodels also counts the far tail; the difference is far below a hundredth of a year
    assert detectable_difference(sd, n1, n2) == pytest.approx(d * sd, rel=2e-3)


def test_detectable_difference_of_an_empty_group_is_nan():
    assert detectable_difference(5.0, 28, 0) != detectable_difference(5.0, 28, 0)


def _datasets(root, generator):
    raw = root / "raw"
    deriv = raw / "derivatives" / "brainage"
    deriv.mkdir(parents=True)
    (raw / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.9.0", "GeneratedBy": [{"Name": generator}]}))
    (deriv / "dataset_description.json").write_text(json.dumps(
        {"Name": "d", "BIDSVersion": "1.10.0", "SourceDatasets": [{"URL": raw.as_uri()}]}))
    truth = raw / "sourcedata" / "brainage-truth"
    truth.mkdir(parents=True)
    (truth / "truth.json").write_text(json.dumps({"true_patient_gap_years": 7.0,
                                                  "oracle_mae_sample_controls_years": 3.5}))
    return deriv


def test_simulation_truth_is_read_only_for_a_simulated_source(tmp_path):
    assert simulation_truth(_datasets(tmp_path / "a", "brainage simulate"))["true_patient_gap_years"] == 7.0
    assert simulation_truth(_datasets(tmp_path / "b", "a scanner")) is None
    assert simulation_truth(tmp_path / "nowhere") is None


def test_cohort_report_says_what_the_cohort_can_show(reported):  # noqa: F811
    _, deriv = reported
    html = (deriv / "reports" / "cohort.html").read_text(encoding="utf-8")
    summary = html[html.index('<section id="summary">'):html.index('<section id="accuracy">')]
    assert "What this cohort can show." in summary
    assert "with 80 % power" in summary
    assert "This cohort is simulated" not in summary  # the fixture's source is not the simulator


def test_simulated_cohort_report_states_the_truth(reported, tmp_path):  # noqa: F811
    from brainage.reporting.cohort import cohort_context
    from brainage.reporting.data import load_report_data

    _, deriv = reported
    desc_path = deriv / "dataset_description.json"
    saved = desc_path.read_text() if desc_path.exists() else None
    sim = _datasets(tmp_path, "brainage simulate")
    try:
        desc_path.write_text((sim / "dataset_description.json").read_text())
        text = cohort_context(load_report_data(deriv))["text"]["scope"]
    finally:
        if saved is None:
            desc_path.unlink()
        else:
            desc_path.write_text(saved)
    simulated = [t for t in text if t.startswith("This cohort is simulated")]
    assert len(simulated) == 1 and "7.0 years older" in simulated[0] and "3.5 years" in simulated[0]


@pytest.mark.parametrize(("platform", "command"), [("linux", "xdg-open"), ("darwin", "open"),
                                                   ("win32", "start")])
def test_the_demo_says_how_to_open_the_report(monkeypatch, platform, command):
    monkeypatch.setattr(demo.sys, "platform", platform)
    assert demo.open_command("/tmp/r/cohort.html") == f"{command} /tmp/r/cohort.html"


def test_a_bad_demo_config_fails_before_simulating(tmp_path):
    with pytest.raises(ConfigError):
        demo.run_demo(tmp_path / "d", config_file=str(tmp_path / "missing.yaml"))
    assert not (tmp_path / "d").exists()
    with pytest.raises(UsageError, match="--nprocs"):
        demo.run_demo(tmp_path / "d", nprocs=0)


def test_demo_command_line_passes_its_options(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.update(out=out, **kw) or 0)
    assert main(["demo", str(tmp_path / "o"), "--config-file", "demo-tabular", "--nprocs", "1"]) == 0
    assert seen == {"out": tmp_path / "o", "n_subjects": None, "seed": 0, "nprocs": 1,
                    "config_file": "demo-tabular"}
