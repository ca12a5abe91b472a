"""Typed pipeline configuration, loaded from ``pipelines/*.yaml``.

A configuration file is read with ``yaml.safe_load`` only and validated into a
tree of :class:`pydantic.BaseModel` sections that forbid unknown keys. Every
problem is reported with the key's dotted path, what is allowed and what was
given, and a did-you-mean suggestion for misspelled keys::

    pipelines/my.yaml: anat.registration.stepz: unknown key; did you mean 'steps'?
    (allowed keys: steps, template_resolution, syn_iterations, …)

Types are strict: a quoted ``"2.0"`` is not a number and ``true`` is not an
integer (an integer is a valid float). Iteration and shrink-factor lists,
registration steps and atlas names are checked when the file is loaded; the
band-pass edge against each run's Nyquist frequency is checked by the command
line once the repetition times are known.

The effective configuration of a run (defaults filled in) is written next to
its outputs by :func:`dump_config`, and that file can be passed back with
``--config-file`` to reproduce the run.

Examples
--------
>>> cfg = load_config(pipeline_file("demo"))
>>> cfg.anat.output_resolution
2.0
"""

from __future__ import annotations

import difflib
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from ..exceptions import ConfigError
from ..resources import pipeline_file
from ._section import _Section
from .group import (
    ANAT_MAPS,
    FUNC_MAPS,
    MODELS,
    BiasCorrectionConfig,
    CombatConfig,
    CVConfig,
    GroupConfig,
    GroupInputConfig,
    GroupQCConfig,
    _atlas_kind,
    _registry_atlases,
    _suggest,
)

__all__ = [
    "ANAT_MAPS",
    "FUNC_MAPS",
    "MODELS",
    "AnatConfig",
    "BiasCorrectionConfig",
    "CVConfig",
    "CombatConfig",
    "FuncConfig",
    "GroupConfig",
    "GroupInputConfig",
    "GroupQCConfig",
    "PipelineConfig",
    "RunConfig",
    "config_hash",
    "dump_config",
    "load_config",
    "pipeline_file",
]


# --------------------------------------------------------------------------- checks
def _positive_ints(value: list[int], example: str) -> list[int]:
    """Refuse an empty list or one with an entry below 1."""
    if not value:
        raise ValueError(f"needs at least one level, e.g. {example}; got []")
    bad = [v for v in value if v < 1]
    if bad:
        raise ValueError(f"every entry must be a positive integer, e.g. {example}; got {value!r}")
    return value


def _known_atlases(value: list[str], *, volumes_only: bool) -> list[str]:
    """Refuse atlas ids that are not in the registry (``atlases/*.yaml``)."""
    known = _registry_atlases()
    for name in value:
        if name not in known:
            lower = {k.lower(): k for k in known}
            hint = (f"did you mean {lower[name.lower()]!r}? " if name.lower() in lower
                    else _suggest(name, known))
            raise ValueError(f"unknown atlas {name!r}; {hint}known atlases: {', '.join(known)}; "
                             f"got {value!r}")
        if volumes_only and _atlas_kind(known[name]) == "coords":
            volumes = [k for k, p in known.items() if _atlas_kind(p) == "volume"]
            raise ValueError(f"atlas {name!r} is a set of coordinates; regional GM volumes need a "
                             f"volume atlas ({', '.join(volumes)}); got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"lists an atlas more than once; got {value!r}")
    return value


# --------------------------------------------------------------------------- anat
class RegistrationConfig(_Section):
    """T1w → MNI registration (ANTs through antspyx)."""

    steps: list[Literal["rigid", "affine", "syn"]] = Field(
        default=["rigid", "affine", "syn"],
        description="Registration stages run in order; each one starts from the previous.",
    )
    template_resolution: float = Field(
        default=2.0, gt=0, le=4, description="Grid (mm) of the template the T1w is registered to."
    )
    syn_iterations: list[int] = Field(
        default=[40, 20, 0], description="SyN iterations per resolution level (coarse to fine)."
    )
    linear_iterations: int = Field(
        default=200, ge=1, le=2000,
        description="Rigid/affine iterations at the coarse levels (half at the next one).",
    )
    linear_shrink_factors: list[int] = Field(
        default=[8, 4, 2, 1],
        description="Shrink factor per rigid/affine level; the finest level gets no iterations.",
    )
    moving_resolution: float | None = Field(
        default=None, gt=0, le=4,
        description="Register a copy of the T1w resampled to this grid (mm) when the T1w is finer "
        "(the transforms are in physical space and apply to the full-resolution T1w); none: as is.",
    )
    min_similarity: float = Field(
        default=0.5,
        ge=-1,
        le=1,
        description="Registration whose correlation with the template inside the brain falls below "
        "this is flagged as failed.",
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one step (allowed: rigid, affine, syn; e.g. "
                             "[rigid, affine, syn]); got []")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a step more than once; got {value!r}")
        return value

    @field_validator("syn_iterations")
    @classmethod
    def _syn(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("needs at least one level, e.g. [40, 20, 0]; got []")
        if any(v < 0 for v in value) or not any(v > 0 for v in value):
            raise ValueError("entries must be 0 or more (0 skips a level, usually the finest) and at "
                             f"least one positive, e.g. [40, 20, 0]; got {value!r}")
        return value

    @field_validator("linear_shrink_factors")
    @classmethod
    def _shrink(cls, value: list[int]) -> list[int]:
        return _positive_ints(value, "[8, 4, 2, 1]")


class AnatConfig(_Section):
    """Structural (T1w) preprocessing and features."""

    enabled: bool = True
    n4_shrink_factor: int = Field(
        default=4, ge=1, le=8, description="N4 bias-field estimation runs on a copy shrunk by this."
    )
    n4_iterations: list[int] = Field(
        default=[50, 50, 30], description="N4 iterations per fitting level (one entry per level)."
    )
    atropos_iterations: int = Field(
        default=5, ge=1, le=50, description="Atropos EM iterations of the tissue classification."
    )
    atropos_prior_weight: float = Field(
        default=0.25, ge=0, le=1,
        description="Weight of the template tissue priors in Atropos (0 = intensities only).",
    )
    atropos_mrf: float = Field(
        default=0.1, ge=0, le=1, description="Atropos MRF smoothing weight (neighbours 1x1x1)."
    )
    intracranial_margin_mm: float = Field(
        default=10.0, ge=0, le=20,
        description="Search this far (mm) outside the brain mask for the skull; the CSF before it "
        "counts in CSF and TIV (0: TIV is the brain mask only).",
    )
    tissue_fractions: Literal["posterior", "partial_volume"] = Field(
        default="partial_volume",
        description="Tissue maps: Atropos posteriors, or partial-volume fractions unmixed from "
        "the intensities of the two most probable classes.",
    )
    segmentation_resolution: float | None = Field(
        default=None, gt=0, le=4,
        description="Run Atropos on a copy of the T1w resampled to this grid (mm) when the T1w is "
        "finer; its posteriors are interpolated back and the partial-volume fractions are computed "
        "at full resolution. None: Atropos at full resolution.",
    )
    gm_prior_min: float = Field(
        default=0.2, ge=0, lt=1,
        description="Partial-volume fractions: where the template GM prior (carried to the T1w) is "
        "below this, a voxel mixes CSF and WM only (ventricle walls have GM-like intensity).",
    )
    registration: RegistrationConfig = RegistrationConfig()
    output_resolution: Literal[1.0, 1.5, 2.0, 4.0] = Field(
        default=2.0, description="Grid (mm) of the MNI-space tissue maps (the `res-` entity)."
    )
    atlases: list[str] = Field(
        default=["HarvardOxford", "AAL"], description="Atlas ids of the registry (atlases/*.yaml)."
    )
    qc_mosaic: bool = True

    @field_validator("n4_iterations")
    @classmethod
    def _n4(cls, value: list[int]) -> list[int]:
        return _positive_ints(value, "[50, 50, 30]")

    @field_validator("atlases")
    @classmethod
    def _atlases(cls, value: list[str]) -> list[str]:
        return _known_atlases(value, volumes_only=True)


# --------------------------------------------------------------------------- func
class FuncConfig(_Section):
    """Functional (resting-state BOLD) preprocessing and features."""

    enabled: bool = True
    dummy_scans: int = Field(default=0, ge=0, description="Non-steady-state volumes dropped first.")
    min_volumes: int = Field(default=50, ge=10, description="Fewest volumes left to process a run.")
    output_resolution: float = Field(default=3.0, gt=0, le=6, description="MNI grid (mm).")
    high_pass: float = Field(default=0.008, ge=0, description="Band-pass lower edge (Hz).")
    low_pass: float = Field(default=0.09, gt=0, description="Band-pass upper edge (Hz).")
    fd_threshold: float = Field(default=0.5, gt=0, description="Scrub volumes with FD above (mm).")
    min_clean_fraction: float = Field(
        default=0.5, gt=0, le=1, description="Exclude a run with less clean data than this fraction."
    )
    global_signal: bool = False
    atlases: list[str] = Field(default=["HarvardOxford"], description="Atlas ids for parcels.")
    maps: list[Literal["alff", "falff", "reho", "dmn"]] = Field(default=["alff", "falff", "reho", "dmn"])
    connectivity: list[Literal["correlation", "partial correlation"]] = Field(
        default=["correlation"],
        description="Per-participant connectivity (Pearson + Fisher z always; partial optional).",
    )
    acompcor_components: int = Field(
        default=0, ge=0, le=10,
        description="aCompCor components regressed instead of mean WM/CSF signals (0: off).",
    )
    motion_regressors: Literal[6, 12, 24] = Field(
        default=24, description="Motion confound model: 6 parameters, + derivatives, + squares.",
    )
    max_confound_fraction: float = Field(
        default=0.33, gt=0, le=1,
        description="Largest share of the band-passed run's degrees of freedom the confounds may "
        "use; a short run falls back to a smaller motion model (recorded in QC).",
    )
    motion_iterations: int = Field(
        default=10, ge=1, le=200,
        description="ANTs rigid iterations per volume in motion estimation (see docs/func.md).",
    )

    @field_validator("atlases")
    @classmethod
    def _atlases(cls, value: list[str]) -> list[str]:
        return _known_atlases(value, volumes_only=False)

    @field_validator("low_pass")
    @classmethod
    def _band(cls, value: float, info: Any) -> float:
        high = info.data.get("high_pass")
        if high is not None and value <= high:
            raise ValueError(f"must be above high_pass ({high} Hz); got {value} Hz")
        return value


# --------------------------------------------------------------------------- run
class RunConfig(_Section):
    """Execution settings (how, not what)."""

    nprocs: int = Field(default=1, ge=1, description="Local worker processes.")
    threads_per_process: int = Field(default=1, ge=1, description="Threads each worker may use.")
    retries: int = Field(default=1, ge=0, le=5, description="Retries of a task after a worker loss.")


class PipelineConfig(_Section):
    """The whole pipeline specification (one YAML file)."""

    name: str = "default"
    anat: AnatConfig = AnatConfig()
    func: FuncConfig = FuncConfig()
    group: GroupConfig = Field(default_factory=GroupConfig)
    run: RunConfig = RunConfig()


# --------------------------------------------------------------------------- loading
def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Keys allowed at the location ``loc`` (without its last element) of ``model``.

    Walks nested sections and the values of mappings of sections (``group.inputs.<name>``).
    """
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


#: Pydantic error types of a value of the wrong type (strict mode) and what the key expects.
_STRICT_TYPES = {
    "float_type": "a number (e.g. 2.0, unquoted)",
    "int_type": "an integer (e.g. 4, unquoted; not true/false or 4.0)",
    "bool_type": "true or false (unquoted)",
    "string_type": "a string",
    "list_type": "a list (e.g. [a, b])",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping of keys (a section)",
}


def _describe(error: dict, model: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc)
    given = error.get("input")
    if error["type"] == "extra_forbidden":
        allowed = _known_keys(model, loc)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{key}: unknown key; {hint}(allowed keys: {', '.join(allowed)})"
    message = error["msg"].removeprefix("Value error, ")
    expected = _STRICT_TYPES.get(error["type"])
    if expected is not None:
        return f"{key}: {message}: expected {expected}, not a {type(given).__name__}; got {given!r}"
    if "; got " in message:  # our own validators already say what was given
        return f"{key}: {message}"
    return f"{key}: {message}; got {given!r}"


def parse_config(data: Any, source: str = "<config>") -> PipelineConfig:
    """Validate an already-parsed mapping into a :class:`PipelineConfig`.

    Parameters
    ----------
    data : mapping or None
        Parsed YAML; ``None`` (an empty file) gives the defaults.
    source : str
        Name used in error messages.

    Returns
    -------
    PipelineConfig

    Raises
    ------
    ConfigError
        Naming every invalid key, what is allowed and what was given.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sections (anat:, func:, group:, run:) at the top level; "
            f"got {type(data).__name__}"
        )
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, PipelineConfig) for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Load and validate a pipeline YAML file (safe loading only).

    Parameters
    ----------
    path : path-like or None
        A YAML file, or the name of a shipped pipeline (``"demo"``); ``None``
        loads ``pipelines/default.yaml``.

    Returns
    -------
    PipelineConfig

    Raises
    ------
    ConfigError
        If the file is missing, unreadable, not YAML, or invalid.
    """
    import yaml

    if path is None:
        path = pipeline_file("default")
    path = Path(path)
    if not path.exists() and path.suffix == "" and path.name == str(path):
        try:
            path = pipeline_file(path.name)
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; pass an existing YAML file to --config-file "
            f"(shipped pipelines are in {pipeline_file('default').parent})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}; fix the syntax and retry") from None
    return parse_config(data, source=str(path))


def config_to_dict(config: PipelineConfig) -> dict:
    """Return the configuration as plain JSON-compatible data."""
    return config.model_dump(mode="json")


def config_hash(config: PipelineConfig, section: str | None = None) -> str:
    """SHA-256 of the canonical JSON of the configuration (or one section of it)."""
    data = config_to_dict(config)
    if section is not None:
        data = data[section]
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def dump_config(config: PipelineConfig, path: str | Path) -> Path:
    """Write the effective configuration as YAML (atomically) and return its path."""
    import yaml

    from ..writing import atomic_write_text

    text = (
        "# Effective brainage configuration; pass back with --config-file to reproduce.\n"
        + yaml.safe_dump(config_to_dict(config), sort_keys=False)
    )
    return atomic_write_text(path, text)
