"""How the reports name modalities, atlas regions and the PID pair."""

from __future__ import annotations

__all__ = ["MODALITY_NAMES", "modality_label", "pid_pair", "region_name"]

#: Readable names of the usual modalities.
MODALITY_NAMES = {
    "anat": "structural MRI",
    "func": "resting-state fMRI",
    "anat_map": "structural MRI (maps)",
    "func_map": "fMRI (maps)",
}

def region_name(name) -> str:
    """Write an atlas label as text: 'Left_Frontal_Pole' → 'Left Frontal Pole'."""
    return str(name).replace("_", " ")


def modality_label(name: str) -> str:
    """'anat' → 'structural MRI (anat)'."""
    readable = MODALITY_NAMES.get(name)
    return f"{readable} ({name})" if readable else name


def pid_pair(held: dict) -> tuple[str, str]:
    """Return the two modalities of ``pid.json["held_out"]`` (``pair`` "anat|func")."""
    pair = str(held.get("pair") or "anat|func").split("|")
    return pair[0], (pair[1] if len(pair) > 1 else "modality 2")
