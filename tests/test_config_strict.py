"""Configuration mistakes are caught when the file is loaded (or, for the band-pass, before any work)."""

from __future__ import annotations

import json
import re

import pytest

from brainage.atlases import list_atlases
from brainage.cli import main
from brainage.config import load_config, parse_config
from brainage.exceptions import ConfigError
from brainage.resources import data_dir


def _shipped():
    bench = data_dir("pipelines").parent / "bench" / "configs"
    return [*sorted(data_dir("pipelines").glob("*.yaml")), *sorted(bench.glob("*.yaml"))]


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: p.name)
def test_every_shipped_pipeline_loads(path):
    assert load_config(path).name


@pytest.mark.parametrize(
    ("data", "match"),
    [
        # strings, bools and floats where numbers are expected
        pytest.param({"func": {"low_pass": "0.1"}},
                     r"func\.low_pass: .*expected a number.*not a str; got '0\.1'", id="str-for-float"),
        pytest.param({"anat": {"registration": {"template_resolution": "2.0"}}},
                     r"anat\.registration\.template_resolution: .*got '2\.0'", id="str-for-float-nested"),
        pytest.param({"run": {"nprocs": True}}, r"run\.nprocs: .*not a bool; got True", id="bool-for-int"),
        pytest.param({"func": {"min_volumes": 20.0}}, r"func\.min_volumes: .*integer.*got 20\.0",
                     id="float-for-int"),
        pytest.param({"anat": {"n4_iterations": ["50"]}}, r"anat\.n4_iterations\.0: .*got '50'",
                     id="str-in-int-list"),
        pytest.param({"func": {"global_signal": "yes"}}, r"func\.global_signal: .*true or false.*got 'yes'",
                     id="str-for-bool"),
        # iteration and shrink-factor lists
        pytest.param({"anat": {"n4_iterations": []}}, r"anat\.n4_iterations: needs at least one level.*got \[\]",
                     id="n4-empty"),
        pytest.param({"anat": {"n4_iterations": [50, 0]}},
                     r"anat\.n4_iterations: every entry must be a positive integer.*got \[50, 0\]",
                     id="n4-zero"),
        pytest.param({"anat": {"registration": {"syn_iterations": []}}},
                     r"anat\.registration\.syn_iterations: needs at least one level.*got \[\]", id="syn-empty"),
        pytest.param({"anat": {"registration": {"syn_iterations": [0, 0, 0]}}},
                     r"syn_iterations: .*at least one positive.*got \[0, 0, 0\]", id="syn-all-zero"),
        pytest.param({"anat": {"registration": {"syn_iterations": [20, -1, 0]}}},
                     r"syn_iterations: entries must be 0 or more.*got \[20, -1, 0\]", id="syn-negative"),
        pytest.param({"anat": {"registration": {"linear_shrink_factors": []}}},
                     r"linear_shrink_factors: needs at least one level.*got \[\]", id="shrink-empty"),
        pytest.param({"anat": {"registration": {"linear_shrink_factors": [4, 2, 0]}}},
                     r"linear_shrink_factors: every entry must be a positive integer.*got \[4, 2, 0\]",
                     id="shrink-zero"),
        # registration steps
        pytest.param({"anat": {"registration": {"steps": []}}},
                     r"anat\.registration\.steps: needs at least one step \(allowed: rigid, affine, syn.*got \[\]",
                     id="steps-empty"),
        pytest.param({"anat": {"registration": {"steps": ["rigid", "rigid"]}}},
                     r"steps: lists a step more than once", id="steps-twice"),
        # atlases of the registry
        pytest.param({"anat": {"atlases": ["Harvardoxford"]}},
                     r"anat\.atlases: unknown atlas 'Harvardoxford'; did you mean 'HarvardOxford'\? "
                     r"known atlases: .*AAL.*got \['Harvardoxford'\]", id="anat-atlas-case"),
        pytest.param({"func": {"atlases": ["Schaefer400"]}},
                     r"func\.atlases: unknown atlas 'Schaefer400'.*known atlases", id="func-atlas-unknown"),
        pytest.param({"anat": {"atlases": ["Power2011"]}},
                     r"anat\.atlases: atlas 'Power2011' is a set of coordinates", id="anat-coords-atlas"),
    ],
)
def test_mistakes_name_key_value_and_what_is_allowed(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(data, source="my.yaml")


def test_known_atlases_come_from_the_registry():
    ids = list_atlases()
    with pytest.raises(ConfigError) as err:
        parse_config({"func": {"atlases": ["nope"]}})
    assert all(i in str(err.value) for i in ids)
    coords = [i for i in ids if i in ("Power2011", "Dosenbach2010", "Seitzman2018")]
    assert parse_config({"func": {"atlases": coords}}).func.atlases == coords


def test_integers_are_fine_for_floats_and_zero_at_the_finest_syn_level():
    cfg = parse_config({"anat": {"output_resolution": 2, "registration": {"syn_iterations": [40, 0]}},
                        "func": {"low_pass": 1, "high_pass": 0}})
    assert cfg.anat.output_resolution == 2.0 and isinstance(cfg.func.low_pass, float)
    assert cfg.anat.registration.syn_iterations == [40, 0]


def test_yaml_quoted_number_is_refused_at_load(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("func:\n  fd_threshold: \"0.5\"\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: func.fd_threshold")):
        load_config(path)


def test_low_pass_above_nyquist_is_refused_before_any_participant_runs(bids_factory, tmp_path, capsys,
                                                                       monkeypatch):
    from brainage import stages

    monkeypatch.setenv("BRAINAGE_BIDS_VALIDATOR", "off")
    monkeypatch.setitem(stages.STAGES, "anat", stages.StageSpec("anat", "tests._stages:run_copy"))
    monkeypatch.setitem(stages.STAGES, "func", stages.StageSpec(
        "func", "tests._stages:run_downstream", requires=("anat",)))
    bids = bids_factory()
    sidecar = bids / "sub-02" / "func" / "sub-02_task-rest_bold.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 2.5, "TaskName": "rest"}))
    config = tmp_path / "fast.yaml"
    config.write_text("func:\n  low_pass: 0.21\n")  # below 0.25 Hz (TR 2 s), above 0.2 Hz (TR 2.5 s)
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--config-file", str(config)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "func.low_pass: 0.21 Hz is not below the Nyquist frequency 0.2 Hz" in err
    assert str(bids / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz") in err
    assert "TR 2.5 s, from RepetitionTime of sub-02_task-rest_bold.json" in err
    assert not out.exists()  # nothing ran, nothing was written
    # anat alone does not filter anything: not checked
    assert main([str(bids), str(out), "participant", "--config-file", str(config),
                 "--modalities", "anat"]) == 0


def test_a_maps_input_may_name_the_atlas_of_its_attributions():
    from brainage.cohort.spec import input_spec

    maps = {"kind": "maps", "maps": ["falff"], "resolution": 4.0}
    cfg = parse_config({"group": {"inputs": {"anat": {"kind": "regional", "atlas": "HarvardOxford"},
                                             "func": {**maps, "atlas": "AAL"}}}})
    func = cfg.group.inputs["func"]
    assert func.atlas == "AAL" and input_spec(func)["atlas"] == "AAL"
    # without it: no atlas in the dumped config or the bundle's spec (older bundles compare equal)
    plain = parse_config({"group": {"inputs": {"anat": {"kind": "regional", "atlas": "HarvardOxford"},
                                              "func": maps}}}).group.inputs["func"]
    assert "atlas" not in plain.model_dump(mode="json") and "atlas" not in input_spec(plain)
    with pytest.raises(ConfigError, match=r"group\.inputs\.func\.atlas: atlas 'Power2011' is a set of "
                                          r"coordinates; map attributions need a volume atlas"):
        parse_config({"group": {"inputs": {"func": {**maps, "atlas": "Power2011"}}}}, source="my.yaml")
