"""A trained model bundle's input spec, and checking a cohort against it.

:attr:`brainage.cohort.data.CohortData.spec` is ``{"inputs": {modality: spec},
"control_labels": [...]}``; each modality's spec is JSON-able: ``kind``,
``space``, ``atlas`` (tabular kinds) or ``maps`` and ``resolution``
(``maps``; ``parcels`` has all three), ``tissue`` (``regional``) and, for
tabular kinds, the ``feature_names`` in the bundle's column order.
"""

from __future__ import annotations

from ..bids import TEMPLATE_SPACE
from ..exceptions import GroupLevelError

__all__ = ["check_spec_features", "check_spec_inputs", "describe_input", "input_spec"]

#: Keys of a modality's spec that must agree between a bundle and a cohort's configuration.
COMPARED_KEYS = ("kind", "atlas", "tissue", "maps", "resolution", "normalize")


def input_spec(cfg) -> dict:
    """Return the spec of a ``group.inputs`` entry (``feature_names`` come after reading)."""
    spec = {"kind": cfg.kind, "space": TEMPLATE_SPACE}
    if cfg.kind in ("maps", "parcels", "whole_brain"):
        spec.update(maps=list(cfg.maps), resolution=float(cfg.resolution), stage=cfg.stage)
        if getattr(cfg, "atlas", None):  # parcels: the regions; maps: where attributions are summed
            spec["atlas"] = cfg.atlas
    elif cfg.kind == "tissue":
        spec.update(atlas=None, resolution=None)
        if cfg.normalize != "none":
            spec["normalize"] = cfg.normalize
    else:
        spec.update(atlas=cfg.atlas, resolution=None)
        if cfg.kind == "regional":
            spec["tissue"] = bool(cfg.tissue)
            if cfg.normalize != "none":
                spec["normalize"] = cfg.normalize
    return spec


def describe_input(spec: dict) -> str:
    """Describe an input spec in a few words for messages, e.g. ``regional atlas-AAL + tissue``."""
    kind = spec.get("kind")
    if kind == "maps":
        return f"maps {', '.join(spec.get('maps') or [])} at res {spec.get('resolution')}"
    if kind == "whole_brain":
        return f"whole-brain means of {', '.join(spec.get('maps') or [])} at res {spec.get('resolution')}"
    if kind == "tissue":
        return "tissue totals" + (" as TIV fractions" if spec.get("normalize") == "tiv" else "")
    if kind == "parcels":
        return (f"parcel means of {', '.join(spec.get('maps') or [])} at res "
                f"{spec.get('resolution')} on atlas-{spec.get('atlas')}")
    tissue = " + tissue" if spec.get("tissue") else ""
    return f"{kind} atlas-{spec.get('atlas')}{tissue}"


def check_spec_inputs(spec: dict, inputs: dict) -> dict:
    """Compare the bundle's inputs with ``group.inputs`` before reading anything."""
    wanted = spec.get("inputs") if isinstance(spec, dict) else None
    if not isinstance(wanted, dict) or not wanted:
        raise GroupLevelError(
            "the model bundle's input spec has no 'inputs' (expected {'inputs': {modality: "
            "{...}}, ...} as CohortData.spec writes it); the bundle is unusable, retrain it"
        )
    problems = []
    for name in sorted(set(wanted) | set(inputs)):
        if name not in inputs:
            problems.append(f"{name}: the bundle needs {describe_input(wanted[name])}, "
                            "group.inputs has no such modality")
            continue
        if name not in wanted:
            problems.append(f"{name}: group.inputs has {describe_input(input_spec(inputs[name]))}"
                            ", the bundle has no such modality")
            continue
        have = input_spec(inputs[name])
        if any(have.get(k) != wanted[name].get(k) for k in COMPARED_KEYS):
            problems.append(f"{name}: the bundle was trained on {describe_input(wanted[name])}, "
                            f"group.inputs gives {describe_input(have)}")
    if problems:
        raise GroupLevelError(
            "this cohort's inputs differ from the model bundle's: " + "; ".join(problems)
            + ". Set group.inputs to the bundle's inputs (and run the participant level with "
            "those atlases and maps), or retrain on this cohort (group --train)"
        )
    return wanted


def check_spec_features(name: str, reference, wanted: dict) -> tuple[str, ...]:
    """Return the bundle's feature order for ``name``; raise when the cohort's features differ."""
    names = list(wanted.get("feature_names") or [])
    have = list(reference or [])
    missing = [n for n in names if n not in set(have)]
    extra = [n for n in have if n not in set(names)]
    if missing or extra or len(names) != len(have):
        def shown(items):
            return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} feature(s) of the bundle are missing ({shown(missing)})")
        if extra:
            parts.append(f"{len(extra)} feature(s) are not in the bundle ({shown(extra)})")
        if not parts:
            parts.append("duplicate feature names")
        raise GroupLevelError(
            f"{name} ({describe_input(wanted)}): this cohort's features differ from the model "
            f"bundle's: {'; '.join(parts)}. Rerun the participant level with the bundle's atlas "
            f"({wanted.get('atlas')}) so the same regions are measured, or retrain on this "
            "cohort (group --train)"
        )
    return tuple(names)
