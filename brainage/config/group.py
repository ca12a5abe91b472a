"""The ``group:`` section of a pipeline configuration: inputs, models, folds, correction, ComBat, QC.

The group level (:mod:`brainage.group`) reads it; :class:`GroupConfig` is
``PipelineConfig.group`` and is validated like every other section (unknown
keys refused, did-you-mean suggestions, dotted key paths in the messages).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from ..resources import data_dir
from ._section import _Section

__all__ = [
    "ANAT_MAPS",
    "FUNC_MAPS",
    "FUSION_MODELS",
    "MODELS",
    "PER_MODALITY_PREFIXES",
    "BiasCorrectionConfig",
    "CVConfig",
    "CombatConfig",
    "GroupConfig",
    "GroupInputConfig",
    "GroupQCConfig",
    "map_stage",
]

# --------------------------------------------------------------------------- group
#: Maps of the structural stage a ``kind: maps`` input may name (MNI space, ``res-`` grid):
#: the modulated GM map, the GM/WM/CSF probabilities and the preprocessed T1w.
ANAT_MAPS = ("GM_modulated", "GM", "WM", "CSF", "T1w")
#: Maps of the functional stage a ``kind: maps`` input may name (``desc-<name>_boldmap``).
FUNC_MAPS = ("alff", "falff", "reho", "dmn")
#: Fixed model names; ``unimodal_<modality>``, ``ridge_<modality>`` and ``gpr_<modality>``
#: (one modality alone) are allowed for every key of ``group.inputs``.
MODELS = ("pidreg", "pidreg_faithful", "early_fusion", "late_fusion", "ridge", "gpr")
#: Prefixes of the one-modality models.
PER_MODALITY_PREFIXES = ("unimodal_", "ridge_", "gpr_")
#: Models that fuse modalities and so need at least two inputs.
FUSION_MODELS = ("pidreg", "pidreg_faithful", "early_fusion", "late_fusion")
_INPUT_KEYS = {
    "regional": ("kind", "atlas", "tissue", "normalize", "select", "pca"),
    "connectivity": ("kind", "atlas", "select", "pca"),
    "maps": ("kind", "maps", "resolution", "atlas"),
    "parcels": ("kind", "maps", "resolution", "atlas", "select", "pca"),
    "tissue": ("kind", "normalize"),
    "whole_brain": ("kind", "maps", "resolution"),
}
#: Keys an input of each kind may leave out.
_OPTIONAL_KEYS = {"regional": ("tissue", "normalize", "select", "pca"),
                  "connectivity": ("select", "pca"),
                  "maps": ("atlas",),
                  "parcels": ("select", "pca"),
                  "tissue": ("normalize",),
                  "whole_brain": ()}
#: Kinds a modality called ``anat`` / ``func`` may have (other names may have any kind).
_KINDS_OF = {"anat": ("regional", "tissue", "maps", "parcels", "whole_brain"),
             "func": ("connectivity", "maps", "parcels", "whole_brain")}
_MODALITY_RE = re.compile(r"^[a-z][a-z0-9]*$")


def _suggest(value: str, allowed) -> str:
    close = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""


def _registry_atlases() -> dict[str, Path]:
    """Atlas ids of the registry (``atlases/*.yaml``) and their entry files.

    Read from the shipped folder directly: the configuration sits below
    :mod:`brainage.atlases` and checks names only.
    """
    return {p.stem: p for p in sorted(data_dir("atlases").glob("*.yaml"))}


def _atlas_kind(path: Path) -> str | None:
    """``kind:`` of a registry entry (``volume`` or ``coords``), or None if unreadable."""
    import yaml

    try:
        entry = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return entry.get("kind") if isinstance(entry, dict) else None


def map_stage(maps) -> str | None:
    """Return the participant stage (``"anat"`` or ``"func"``) writing all of ``maps``, or None."""
    names = set(maps)
    if names and names <= set(ANAT_MAPS):
        return "anat"
    if names and names <= set(FUNC_MAPS):
        return "func"
    return None


class GroupInputConfig(_Section):
    """One modality's input to the group level (a value of ``group.inputs``).

    ``kind: regional`` (structural stage's regional GM volumes of ``atlas``, plus
    tissue totals and TIV with ``tissue: true``), ``kind: connectivity`` (the
    functional stage's Fisher-z connectivity matrix of ``atlas``) or ``kind:
    maps`` (paths of MNI-space maps at the ``resolution`` grid, read by the 3D
    encoders; an optional volume ``atlas`` sets the regions their attributions are
    summed in, :data:`brainage.interpret.map_regions.DEFAULT_ATLAS` without one) or
    ``kind: parcels`` (the mean of each of those maps in each region of a volume
    ``atlas``: a tabular input, e.g. the parcels' fALFF and ReHo for an MLP or
    ridge; features ``<map>:<atlas>_<index>``, :mod:`brainage.cohort.parcels`).
    Two compact kinds summarise the whole brain, for cohorts too small for one
    feature per region: ``kind: tissue`` (the structural stage's totals
    ``gm_ml, wm_ml, csf_ml, tiv_ml, ventricles_ml``, with ``normalize``) and
    ``kind: whole_brain`` (the mean of each of ``maps`` over the voxels where it
    has data, features ``<map>:whole_brain``).
    A tabular input may set ``select: K`` (keep the ``K`` features
    most correlated with age) and ``pca: K`` (reduce the z-scored features to
    ``K`` principal components), both fitted on each training fold
    (:mod:`brainage.group.transforms`).
    """

    kind: Literal["regional", "connectivity", "maps", "parcels", "tissue", "whole_brain"]
    atlas: str | None = Field(
        default=None,
        description="Atlas id of the registry (regional, connectivity, parcels; maps: the volume "
        "atlas whose regions the map attributions are summed in, default HarvardOxford).",
    )
    tissue: bool = Field(
        default=True,
        description="regional: add gm_ml, wm_ml, csf_ml, tiv_ml, ventricles_ml to the features.",
    )
    maps: list[str] | None = Field(
        default=None,
        description=f"maps, parcels, whole_brain: structural ({', '.join(ANAT_MAPS)}) or functional "
        f"({', '.join(FUNC_MAPS)}) maps, one stage per input.",
    )
    resolution: float | None = Field(
        default=None, gt=0, le=6,
        description="maps, parcels, whole_brain: MNI grid (mm) of the maps (the `res-` entity)."
    )
    normalize: Literal["none", "tiv"] = Field(
        default="none",
        description="regional, tissue: divide every volume but tiv_ml by the participant's TIV "
        "(proportional head-size correction), or keep millilitres.",
    )
    select: int | None = Field(
        default=None, ge=1,
        description="regional, connectivity, parcels: keep the features most correlated with age "
        "(F-test on each training fold's controls; none: keep every feature).",
    )
    pca: int | None = Field(
        default=None, ge=1,
        description="regional, connectivity, parcels: reduce the z-scored features to this many "
        "principal components, fitted on each training fold (none: keep every feature).",
    )

    @field_validator("atlas")
    @classmethod
    def _known_atlas(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return value
        known = _registry_atlases()
        if value not in known:
            lower = {k.lower(): k for k in known}
            hint = (f"did you mean {lower[value.lower()]!r}? " if value.lower() in lower
                    else _suggest(value, known))
            raise ValueError(
                f"unknown atlas {value!r}; {hint}known atlases: {', '.join(known)}; got {value!r}"
            )
        kind = info.data.get("kind")
        if kind in ("regional", "maps", "parcels") and _atlas_kind(known[value]) == "coords":
            volumes = [k for k, p in known.items() if _atlas_kind(p) == "volume"]
            what = {"regional": "regional GM volumes need", "maps": "map attributions need",
                    "parcels": "parcel means need"}[kind]
            raise ValueError(
                f"atlas {value!r} is a set of coordinates; {what} a volume "
                f"atlas ({', '.join(volumes)}); got {value!r}"
            )
        return value

    @field_validator("maps")
    @classmethod
    def _known_maps(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("needs at least one map name; got []")
        allowed = (*ANAT_MAPS, *FUNC_MAPS)
        for name in value:
            if name not in allowed:
                raise ValueError(
                    f"unknown map {name!r}; {_suggest(name, allowed)}structural maps: "
                    f"{', '.join(ANAT_MAPS)}; functional maps: {', '.join(FUNC_MAPS)}; got {name!r}"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"lists a map more than once; got {value!r}")
        if map_stage(value) is None:
            raise ValueError(
                f"mixes structural ({', '.join(ANAT_MAPS)}) and functional "
                f"({', '.join(FUNC_MAPS)}) maps; put each stage's maps in its own input; "
                f"got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _keys_of_kind(self) -> GroupInputConfig:
        keys = _INPUT_KEYS[self.kind]
        stray = sorted(k for k in self.model_fields_set if k not in keys)
        if stray:
            raise ValueError(
                f"{', '.join(stray)} does not apply to kind {self.kind!r} (keys of a "
                f"{self.kind} input: {', '.join(keys)}); got {', '.join(stray)}"
            )
        needed = [k for k in keys if k not in _OPTIONAL_KEYS[self.kind] and getattr(self, k) is None]
        if needed:
            example = {"atlas": "atlas: HarvardOxford", "maps": "maps: [GM_modulated]"
                       if self.kind == "maps" else "maps: [falff, reho]",
                       "resolution": "resolution: 2.0" if self.kind == "maps" else "resolution: 4.0"}
            raise ValueError(
                f"kind {self.kind!r} needs {', '.join(needed)} (e.g. "
                f"{', '.join(example[k] for k in needed)}); got no {', '.join(needed)}"
            )
        return self

    @model_serializer(mode="wrap")
    def _only_keys_of_kind(self, handler: Any) -> dict:
        data = handler(self)
        return {k: v for k, v in data.items()
                if k in _INPUT_KEYS[self.kind] and not (k in ("select", "pca", "atlas") and v is None)
                and not (k == "normalize" and v == "none")}

    @property
    def stage(self) -> str:
        """The participant stage whose outputs this input reads (``"anat"`` or ``"func"``)."""
        if self.kind in ("regional", "tissue"):
            return "anat"
        if self.kind == "connectivity":
            return "func"
        return map_stage(self.maps or ()) or "anat"


def _default_inputs() -> dict[str, GroupInputConfig]:
    return {
        "anat": GroupInputConfig(kind="regional", atlas="HarvardOxford", tissue=True, normalize="tiv"),
        "func": GroupInputConfig(kind="connectivity", atlas="HarvardOxford", select=20),
    }


class CVConfig(_Section):
    """Cross-validation of the group level (folds by participant, sessions together)."""

    n_splits: int = Field(default=5, ge=2, description="Outer folds (scheme kfold).")
    scheme: Literal["kfold", "leave_site_out"] = Field(
        default="kfold", description="Age-stratified k-fold, or one fold per site."
    )
    seed: int = Field(default=0, ge=0, description="Seed of the fold assignment.")
    inner_splits: int = Field(
        default=5, ge=2,
        description="Inner split of each training fold (early stopping, bias correction).",
    )


class BiasCorrectionConfig(_Section):
    """Age-bias correction of the predictions, fitted on training-fold controls."""

    method: Literal["cole", "delange_cole", "smith", "none"] = "delange_cole"
    degree: int = Field(default=1, ge=1, le=5, description="Polynomial degree in age.")
    by_site: bool = Field(default=False, description="Fit one correction per site.")


class CombatConfig(_Section):
    """ComBat site harmonization of the tabular features (fitted on training folds)."""

    enabled: bool = False
    batch: str = Field(default="site", description="participants.tsv column of the batches.")
    nonlinear_age: bool = Field(
        default=True, description="Preserve age effects through a spline basis (else linear)."
    )


class GroupQCConfig(_Section):
    """Exclusions at the group level from the participant stages' QC records."""

    max_scrubbed_fraction: float = Field(
        default=0.5, ge=0, le=1, description="Exclude a BOLD run with more volumes scrubbed."
    )
    max_mean_fd: float = Field(
        default=0.5, ge=0, description="Exclude a BOLD run with a higher mean FD (mm)."
    )
    min_registration_similarity: float | None = Field(
        default=None, ge=-1, le=1,
        description="Exclude a participant whose T1w-to-MNI similarity is lower (none: off).",
    )


class GroupConfig(_Section):
    """The group level: inputs, models, cross-validation, corrections, exclusions."""

    inputs: dict[str, GroupInputConfig] = Field(
        default_factory=_default_inputs,
        description="Modality name -> input (kind regional | connectivity | parcels | tissue | "
        "whole_brain | maps).",
    )
    models: list[str] = Field(
        default=["pidreg", "unimodal_anat", "unimodal_func", "early_fusion", "late_fusion",
                 "ridge", "gpr"],
        description="Models cross-validated (unimodal_<modality> for each key of inputs).",
    )
    primary_model: str = Field(default="pidreg", description="The model of the bundle.")
    model_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Model name -> constructor overrides."
    )
    cv: CVConfig = CVConfig()
    bias_correction: BiasCorrectionConfig = BiasCorrectionConfig()
    combat: CombatConfig = CombatConfig()
    control_labels: list[str] = Field(
        default=["control", "HC", "healthy"], min_length=1,
        description="Values of participants.tsv `group` that mark controls (any case).",
    )
    groups: list[str] | None = Field(
        default=None, description="Group labels kept (none: all); others are excluded."
    )
    conditions: dict[str, str] = Field(
        default_factory=dict,
        description="Group label -> condition of the report's literature table (reports/literature.tsv), "
        "for labels that are not a condition's name or synonym (e.g. patient: schizophrenia).",
    )
    missing_modality: Literal["exclude", "available"] = Field(
        default="exclude",
        description="Exclude a participant missing a modality, or keep the modalities it has.",
    )
    qc: GroupQCConfig = GroupQCConfig()
    attributions: bool = Field(
        default=True,
        description="Attribute the primary model's out-of-fold predictions to atlas regions, "
        "lobes and networks (ablation of raw features; group/regions.tsv).",
    )
    regions_pid: bool = Field(
        default=True,
        description="Decompose, region by region, the controls' age information in the GM volume "
        "and the connectivity profile into PID atoms (group/regions_pid.tsv and maps; needs a "
        "regional and a connectivity input on the same atlas).",
    )
    cache_maps_gb: float = Field(
        default=4.0, ge=0,
        description="Keep MNI maps in memory after their first read when the cohort's maps take at "
        "most this many GB as float32 (0: always stream from disk, as large cohorts do).",
    )
    gpus: int = Field(
        default=1, ge=1,
        description="group --train: train the neural models data-parallel on this many GPUs of the "
        "machine (that many processes launched with torchrun); the command line's --gpus overrides it.",
    )
    volume_cache: Literal["memory", "auto", "disk", "off"] = Field(
        default="memory",
        description="How MNI maps are read between epochs: 'memory' keeps them in memory when they fit "
        "in cache_maps_gb and otherwise decodes the NIfTI files every epoch; 'auto' uses an on-disk "
        "cache instead of decoding when they do not fit; 'disk' always uses it (the maps decoded once "
        "into one float16 memory-mapped array per modality under OUTPUT_DIR/group/work/volume_cache, "
        "reused by later runs, with only a changed participant decoded again); 'off' always decodes.",
    )

    @field_validator("inputs")
    @classmethod
    def _modality_names(cls, value: dict) -> dict:
        if not value:
            raise ValueError("needs at least one modality (e.g. anat: {kind: regional, atlas: "
                             "HarvardOxford}); got {}")
        for name, spec in value.items():
            if not _MODALITY_RE.match(name) or name == "all":
                raise ValueError(
                    f"modality name {name!r} must be lower-case letters and digits, starting "
                    f"with a letter, and not 'all'; got {name!r}"
                )
            kinds = _KINDS_OF.get(name)
            if kinds is not None and spec.kind not in kinds:
                raise ValueError(
                    f"{name}: kind {spec.kind!r} is not an input of the {name} stage (allowed: "
                    f"{', '.join(kinds)}); got {spec.kind!r}"
                )
            if kinds is not None and spec.kind in ("maps", "parcels", "whole_brain") and spec.stage != name:
                raise ValueError(
                    f"{name}: maps {spec.maps} are written by the {spec.stage} stage, not by "
                    f"{name}; got {spec.maps!r}"
                )
        return value

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: list[str], info: Any) -> list[str]:
        inputs = info.data.get("inputs")
        if inputs is None:  # inputs invalid: reported on its own
            return value
        allowed = [*MODELS, *(f"{p}{m}" for p in PER_MODALITY_PREFIXES for m in inputs)]
        if not value:
            raise ValueError(f"needs at least one model (allowed: {', '.join(allowed)}); got []")
        for name in value:
            prefix = next((p for p in PER_MODALITY_PREFIXES if name.startswith(p)), None)
            modality = name.removeprefix(prefix) if prefix else name
            if prefix and name not in MODELS and modality not in inputs:
                raise ValueError(
                    f"{name!r}: {modality!r} is not a modality of group.inputs "
                    f"({', '.join(inputs)}); {_suggest(modality, inputs)}use {prefix}<modality> "
                    f"with one of them; got {name!r}"
                )
            if name not in allowed:
                raise ValueError(
                    f"unknown model {name!r}; {_suggest(name, allowed)}allowed models: "
                    f"{', '.join(allowed)} (unimodal_, ridge_, gpr_<modality> for each key of group.inputs); "
                    f"got {name!r}"
                )
            if name in FUSION_MODELS and len(inputs) < 2:
                raise ValueError(
                    f"model {name!r} fuses modalities and needs at least two inputs; "
                    f"group.inputs has {', '.join(inputs)}; got {name!r}"
                )
        dupes = sorted({m for m in value if value.count(m) > 1})
        if dupes:
            raise ValueError(f"lists {', '.join(dupes)} more than once; got {value!r}")
        return value

    @field_validator("primary_model")
    @classmethod
    def _primary_in_models(cls, value: str, info: Any) -> str:
        models = info.data.get("models")
        if models is not None and value not in models:
            raise ValueError(
                f"{value!r} is not in group.models ({', '.join(models)}); "
                f"add it to models or pick one of them; got {value!r}"
            )
        return value

    @field_validator("model_params")
    @classmethod
    def _params_of_models(cls, value: dict, info: Any) -> dict:
        models = info.data.get("models")
        if models is None:
            return value
        for name in value:
            if name not in models:
                raise ValueError(
                    f"parameters given for {name!r}, which is not in group.models "
                    f"({', '.join(models)}); {_suggest(name, models)}got {name!r}"
                )
        return value

    @field_validator("control_labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        if any(not str(v).strip() for v in value):
            raise ValueError(f"labels must not be empty; got {value!r}")
        return value
