"""Typed, validated pipeline configuration."""

from __future__ import annotations

import pytest

from brainage.config import (
    PipelineConfig,
    config_hash,
    dump_config,
    load_config,
    parse_config,
)
from brainage.exceptions import ConfigError
from brainage.resources import data_dir


@pytest.mark.parametrize("name", ["default", "demo"])
def test_shipped_pipelines_load(name):
    cfg = load_config(name)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.name == name


def test_every_shipped_pipeline_is_valid():
    files = sorted(data_dir("pipelines").glob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        load_config(path)


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == PipelineConfig()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param({"anat": {"registration": {"stepz": ["rigid"]}}},
                     r"anat\.registration\.stepz: unknown key; did you mean 'steps'\?.*allowed keys: steps",
                     id="typo-nested"),
        pytest.param({"fucn": {}}, r"fucn: unknown key; did you mean 'func'\?", id="typo-top"),
        pytest.param({"anat": {"n4_shrink_factor": "four"}},
                     r"anat\.n4_shrink_factor: Input should be a valid integer.*got 'four'",
                     id="wrong-type"),
        pytest.param({"anat": {"n4_shrink_factor": 20}},
                     r"anat\.n4_shrink_factor: Input should be less than or equal to 8.*got 20",
                     id="out-of-range"),
        pytest.param({"anat": {"output_resolution": 3}},
                     r"anat\.output_resolution: Input should be 1\.0, 1\.5, 2\.0 or 4\.0.*got 3",
                     id="not-allowed-value"),
        pytest.param({"anat": {"registration": {"steps": ["rigid", "bspline"]}}},
                     r"anat\.registration\.steps\.1: Input should be 'rigid', 'affine' or 'syn'",
                     id="bad-list-item"),
        pytest.param({"func": {"high_pass": 0.1, "low_pass": 0.05}},
                     r"func\.low_pass: must be above high_pass \(0\.1 Hz\); got 0\.05 Hz$",
                     id="cross-field"),
        pytest.param(["anat"], r"expected a mapping", id="not-a-mapping"),
    ],
)
def test_invalid_config_names_key_allowed_and_given(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(data, source="my.yaml")


def test_unsafe_yaml_is_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_effective_config_round_trips(tmp_path):
    cfg = parse_config({"anat": {"n4_shrink_factor": 2}, "func": {"fd_threshold": 0.3}})
    path = dump_config(cfg, tmp_path / "effective.yaml")
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(cfg) != config_hash(PipelineConfig())
    assert config_hash(cfg, "run") == config_hash(PipelineConfig(), "run")
