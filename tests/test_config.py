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


# --------------------------------------------------------------------------- group
def test_group_defaults():
    group = PipelineConfig().group
    assert {m: s.model_dump() for m, s in group.inputs.items()} == {
        "anat": {"kind": "regional", "atlas": "HarvardOxford", "tissue": True, "normalize": "tiv"},
        "func": {"kind": "connectivity", "atlas": "HarvardOxford", "select": 20},
    }
    assert group.models == ["pidreg", "unimodal_anat", "unimodal_func", "early_fusion",
                            "late_fusion", "ridge", "gpr"]
    assert group.primary_model == "pidreg" and group.model_params == {}
    assert group.cv.model_dump() == {"n_splits": 5, "scheme": "kfold", "seed": 0, "inner_splits": 5}
    assert group.bias_correction.model_dump() == {"method": "delange_cole", "degree": 1,
                                                  "by_site": False}
    assert group.combat.model_dump() == {"enabled": False, "batch": "site", "nonlinear_age": True}
    assert group.control_labels == ["control", "HC", "healthy"]
    assert group.groups is None and group.missing_modality == "exclude"
    assert group.qc.model_dump() == {"max_scrubbed_fraction": 0.5, "max_mean_fd": 0.5,
                                     "min_registration_similarity": None}
    assert load_config("default").group == group


@pytest.mark.parametrize("name", ["demo", "demo-tabular"])
def test_demo_group_models_build_with_their_params(name):
    from brainage.estimators import registry

    group = load_config(name).group
    if name == "demo":
        # the default demo trains PIDReg with a 3D CNN on the functional maps
        assert group.inputs["func"].kind == "maps" and group.inputs["anat"].kind == "regional"
        assert group.models == ["pidreg", "unimodal_anat", "unimodal_func", "late_fusion",
                                "ridge_anat"]
        assert "channels" in group.model_params["pidreg"]["encoders"]["func"]
    else:
        assert group.inputs["func"].kind == "connectivity"
        assert group.models == ["pidreg", "unimodal_anat", "unimodal_func", "late_fusion", "ridge",
                                "ridge_anat", "ridge_func"]
    assert (group.cv.n_splits, group.cv.inner_splits) == (5, 3)
    # small networks that a 2-core laptop trains in the demo's minutes (bench/results/group.json)
    assert group.model_params["pidreg"]["max_epochs"] <= 300
    assert max(group.model_params["pidreg"]["hidden"]) <= 32
    assert group.model_params["pidreg"]["latent_dim"] <= 8
    for name in group.models:
        est = registry.make_estimator(name, modalities=list(group.inputs),
                                      params=group.model_params.get(name))
        for key, value in group.model_params.get(name, {}).items():
            assert getattr(est, key) == value


@pytest.mark.parametrize(
    ("group", "match"),
    [
        pytest.param({"modelz": ["ridge"]},
                     r"group\.modelz: unknown key; did you mean 'models'\?", id="typo-key"),
        pytest.param({"inputs": {"anat": {"kind": "regional", "atlass": "AAL"}}},
                     r"group\.inputs\.anat\.atlass: unknown key; did you mean 'atlas'\?.*"
                     r"allowed keys: kind, atlas", id="typo-input-key"),
        pytest.param({"models": ["pidrge", "ridge"]},
                     r"group\.models: unknown model 'pidrge'; did you mean 'pidreg'\? allowed "
                     r"models: pidreg, pidreg_faithful, early_fusion, late_fusion, ridge, gpr, "
                     r"unimodal_anat, unimodal_func", id="unknown-model"),
        pytest.param({"models": ["ridge", "unimodal_fucn"], "primary_model": "ridge"},
                     r"group\.models: 'unimodal_fucn': 'fucn' is not a modality of group\.inputs "
                     r"\(anat, func\); did you mean 'func'\?", id="unimodal-unknown-modality"),
        pytest.param({"models": ["ridge", "ridge_fucn"], "primary_model": "ridge"},
                     r"group\.models: 'ridge_fucn': 'fucn' is not a modality of group\.inputs "
                     r"\(anat, func\); did you mean 'func'\? use ridge_<modality>", id="ridge-unknown-modality"),
        pytest.param({"models": ["ridge", "gpr"]},
                     r"group\.primary_model: 'pidreg' is not in group\.models \(ridge, gpr\); "
                     r"add it to models or pick one of them; got 'pidreg'$", id="primary-not-in-models"),
        pytest.param({"model_params": {"gpr_model": {}}, "models": ["pidreg", "gpr"]},
                     r"group\.model_params: parameters given for 'gpr_model', which is not in "
                     r"group\.models \(pidreg, gpr\); did you mean 'gpr'\?", id="params-of-unknown-model"),
        pytest.param({"inputs": {"anat": {"kind": "regional", "atlas": "HarvardOxfrod"}}},
                     r"group\.inputs\.anat\.atlas: unknown atlas 'HarvardOxfrod'; did you mean "
                     r"'HarvardOxford'\? known atlases: AAL, .*HarvardOxford", id="bad-atlas"),
        pytest.param({"inputs": {"anat": {"kind": "regional", "atlas": "Power2011"}}},
                     r"group\.inputs\.anat\.atlas: atlas 'Power2011' is a set of coordinates; "
                     r"regional GM volumes need a volume atlas \(AAL, HarvardOxford\)",
                     id="coords-atlas-for-regional"),
        pytest.param({"inputs": {"func": {"kind": "connectivity"}}},
                     r"group\.inputs\.func: kind 'connectivity' needs atlas", id="no-atlas"),
        pytest.param({"inputs": {"func": {"kind": "regional", "atlas": "AAL"}}},
                     r"group\.inputs: func: kind 'regional' is not an input of the func stage "
                     r"\(allowed: connectivity, maps, parcels, whole_brain\)", id="kind-not-of-stage"),
        pytest.param({"inputs": {"func": {"kind": "connectivity", "atlas": "AAL", "tissue": True}}},
                     r"group\.inputs\.func: tissue does not apply to kind 'connectivity'",
                     id="key-not-of-kind"),
        pytest.param({"inputs": {"anat": {"kind": "maps", "maps": [], "resolution": 2}}},
                     r"group\.inputs\.anat\.maps: needs at least one map name", id="no-maps"),
        pytest.param({"inputs": {"anat": {"kind": "maps", "maps": ["GM", "falff"],
                                          "resolution": 2}}},
                     r"group\.inputs\.anat\.maps: mixes structural .* and functional", id="mixed-maps"),
        pytest.param({"inputs": {"anat": {"kind": "maps", "maps": ["GM"]}}},
                     r"group\.inputs\.anat: kind 'maps' needs resolution", id="no-resolution"),
        pytest.param({"inputs": {"anat": {"kind": "regional", "atlas": "AAL"}},
                      "models": ["late_fusion"], "primary_model": "late_fusion"},
                     r"group\.models: model 'late_fusion' fuses modalities and needs at least two "
                     r"inputs", id="fusion-with-one-input"),
        pytest.param({"cv": {"n_splits": 1}},
                     r"group\.cv\.n_splits: Input should be greater than or equal to 2; got 1",
                     id="n-splits"),
        pytest.param({"cv": {"inner_splits": 1}}, r"group\.cv\.inner_splits: .*equal to 2",
                     id="inner-splits"),
        pytest.param({"bias_correction": {"method": "colee"}},
                     r"group\.bias_correction\.method: Input should be 'cole', 'delange_cole', "
                     r"'smith' or 'none'", id="bias-method"),
        pytest.param({"bias_correction": {"degree": 6}}, r"group\.bias_correction\.degree: .*5",
                     id="bias-degree"),
        pytest.param({"qc": {"max_scrubbed_fraction": 1.5}},
                     r"group\.qc\.max_scrubbed_fraction: Input should be less than or equal to 1",
                     id="fraction"),
        pytest.param({"missing_modality": "drop"}, r"group\.missing_modality: Input should be "
                     r"'exclude' or 'available'", id="missing-modality"),
    ],
)
def test_invalid_group_config(group, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"group": group}, source="my.yaml")


def test_group_config_round_trips(tmp_path):
    cfg = parse_config({"group": {
        "inputs": {"anat": {"kind": "maps", "maps": ["GM_modulated", "WM"], "resolution": 2.0},
                   "func": {"kind": "connectivity", "atlas": "AAL"}},
        "models": ["pidreg", "unimodal_func", "ridge"],
        "model_params": {"pidreg": {"max_epochs": 60, "hidden": [32]}},
        "groups": ["control", "AD"], "missing_modality": "available",
        "qc": {"min_registration_similarity": 0.7},
    }})
    assert cfg.group.inputs["anat"].stage == "anat" and cfg.group.inputs["func"].stage == "func"
    path = dump_config(cfg, tmp_path / "effective.yaml")
    import yaml

    written = yaml.safe_load(path.read_text())["group"]["inputs"]
    # only the keys of each input's kind are written
    assert written == {"anat": {"kind": "maps", "maps": ["GM_modulated", "WM"], "resolution": 2.0},
                       "func": {"kind": "connectivity", "atlas": "AAL"}}
    again = load_config(path)
    assert again == cfg
    assert config_hash(again, "group") == config_hash(cfg, "group")
    assert config_hash(cfg, "group") != config_hash(PipelineConfig(), "group")
    assert config_hash(cfg, "anat") == config_hash(PipelineConfig(), "anat")


def test_cnn_pipeline_reads_the_maps_its_stages_write():
    from brainage.estimators import registry

    cfg = load_config("cnn")
    inputs = cfg.group.inputs
    assert {m: s.kind for m, s in inputs.items()} == {"anat": "maps", "func": "maps"}
    assert inputs["anat"].resolution == cfg.anat.output_resolution
    assert inputs["func"].resolution == cfg.func.output_resolution
    assert set(inputs["func"].maps) <= set(cfg.func.maps)
    assert cfg.anat == load_config("default").anat  # the same participant stages
    for name in cfg.group.models:
        registry.make_estimator(name, modalities=list(inputs), params=cfg.group.model_params.get(name))
