"""Registration of the T1w to the MNI template: rigid → affine → SyN.

:func:`register` runs the steps of ``registration.steps`` in order at
``registration.template_resolution``, each starting from the previous one
(``ants.registration``; the linear steps and SyN all use Mattes mutual information,
which is robust to the missing skull of the template). The forward and inverse
transforms are also saved as ANTs composite HDF5 files (:class:`Registration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..antsutils import ants_random_seed
from ..exceptions import ProcessingError

__all__ = ["Registration", "register"]


@dataclass(frozen=True)
class Registration:
    """Result of :func:`register`.

    Attributes
    ----------
    forward : list of str
        Transform files mapping T1w → template (``ants.apply_transforms`` order,
        fixed = template).
    inverse : list of str
        Transform files mapping template → T1w (fixed = T1w).
    forward_composite, inverse_composite : str
        The same as single ANTs composite HDF5 files.
    """

    forward: list
    inverse: list
    forward_composite: str
    inverse_composite: str


def _linear_params(level_iters: int, shrink_factors=(8, 4, 2, 1)) -> dict:
    shrink = tuple(int(f) for f in shrink_factors)
    n = len(shrink)
    iters = [level_iters] * max(n - 2, 0) + [max(level_iters // 2, 1)] * (n >= 2) + [0]
    iters = tuple(iters[-n:]) if n > 1 else (level_iters,)
    return {
        "aff_iterations": iters,
        "aff_shrink_factors": shrink,
        "aff_smoothing_sigmas": tuple(max(int(np.log2(f)), 0) if f > 1 else 0 for f in shrink),
        "aff_sampling": 32,
        "aff_random_sampling_rate": 0.25,
    }


def register(
    moving,
    fixed,
    *,
    steps=("rigid", "affine", "syn"),
    syn_iterations=(40, 20, 0),
    linear_iterations: int = 200,
    linear_shrink_factors=(8, 4, 2, 1),
    work_dir,
    fixed_mask=None,
    seed: int = 1,
):
    """Register a T1w to the template: rigid → affine → SyN, each step configurable.

    Parameters
    ----------
    moving : ants.ANTsImage
        The (bias-corrected) T1w.
    fixed : ants.ANTsImage
        The template.
    steps : sequence of {"rigid", "affine", "syn"}
        Steps run in order, each initialised by the previous one.
    syn_iterations : sequence of int
        SyN iterations per level (shrink factors 4, 2, 1 … from coarse to fine).
    linear_iterations : int
        Iterations of the rigid and affine steps at the coarse levels (half at the
        second-finest level, none at the finest).
    linear_shrink_factors : sequence of int
        Shrink factor per rigid/affine level (smoothing sigma log2 of it, in voxels).
    work_dir : path-like
        Where the transform files are written.
    fixed_mask : ants.ANTsImage, optional
        Metric mask in template space (a dilated brain mask).
    seed : int
        Random sampling seed (deterministic results).

    Returns
    -------
    Registration

    Raises
    ------
    ProcessingError
        If no step is given or ANTs fails.
    """
    steps = list(steps)
    if not steps:
        raise ProcessingError("anat.registration.steps is empty; give at least ['rigid']")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    with ants_random_seed(seed):
        result, initial = _run_steps(steps, fixed, moving, work, fixed_mask, syn_iterations,
                                     linear_iterations, linear_shrink_factors)
    forward = list(result["fwdtransforms"])
    inverse = list(result["invtransforms"])
    if steps[-1] == "syn" and initial is None:
        # SyNOnly without a linear initialisation: the warp alone
        forward = [f for f in forward if f.endswith(".nii.gz")]
        inverse = [f for f in inverse if f.endswith(".nii.gz")]
    fwd_h5 = str(work / "T1w_to_template.h5")
    inv_h5 = str(work / "template_to_T1w.h5")
    _write_composite(forward, fwd_h5, invert_matrices=False)
    _write_composite(inverse, inv_h5, invert_matrices=True)
    return Registration(forward, inverse, fwd_h5, inv_h5)


def _run_steps(steps, fixed, moving, work, fixed_mask, syn_iterations, linear_iterations,
               linear_shrink_factors):
    """Run the registration steps in order; return the last result and the linear transform."""
    import ants

    initial = None
    result = None
    common = {"verbose": False}
    for step in steps:
        prefix = str(work / f"{step}_")
        if step in ("rigid", "affine"):
            kind = "Rigid" if step == "rigid" else "Affine"
            result = ants.registration(
                fixed, moving, type_of_transform=kind, initial_transform=initial,
                outprefix=prefix, mask=fixed_mask,
                **_linear_params(linear_iterations, linear_shrink_factors), **common,
            )
            initial = result["fwdtransforms"][0]
        elif step == "syn":
            iters = tuple(int(i) for i in syn_iterations)
            result = ants.registration(
                fixed, moving, type_of_transform="SyNOnly", initial_transform=initial,
                outprefix=prefix, mask=fixed_mask, reg_iterations=iters,
                syn_metric="mattes", syn_sampling=32, grad_step=0.2, flow_sigma=3,
                total_sigma=0, **common,
            )
        else:  # pragma: no cover - the config only allows the three names
            raise ProcessingError(f"unknown registration step {step!r}")
    return result, initial


def _write_composite(transforms, path: str, *, invert_matrices: bool) -> None:
    """Write a transform chain as one ANTs composite HDF5 file (``antsApplyTransforms``).

    The chain is stored as it is (the matrices and the displacement fields,
    ``ants.apply_transforms`` order), not resampled into one dense field on a
    reference grid: writing takes a fraction of a second instead of one to two,
    and the file maps points exactly as the chain does. ``invert_matrices``
    marks the inverse chain of ``ants.registration``, whose matrices are stored
    forward (its ``invtransforms``); the displacement fields of that chain are
    already the inverse ones.
    """
    import ants

    parts = []
    for name in transforms:
        if str(name).endswith(".mat"):
            matrix = ants.read_transform(str(name))
            parts.append(ants.invert_ants_transform(matrix) if invert_matrices else matrix)
        else:
            parts.append(ants.transform_from_displacement_field(ants.image_read(str(name))))
    ants.write_transform(ants.compose_ants_transforms(parts), path)
    if not Path(path).is_file():
        raise ProcessingError(f"ANTs did not write the composite transform {path}")
