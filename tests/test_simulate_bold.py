"""Simulator BOLD helpers: the true MNI → native map used by diagnostics and fixtures."""

from __future__ import annotations

import numpy as np

from brainage.simulate.anatomy import rigid_matrix
from brainage.simulate.bold import true_mni_to_native
from brainage.simulate.geometry import draw_deformation, native_to_mni


def test_true_mni_to_native_inverts_the_forward_map():
    rng = np.random.default_rng(4)
    deformation = draw_deformation(rng, sd_mm=2.0, spacing_mm=16.0)
    pose = rigid_matrix([0.1, -0.05, 0.2], [3.0, -7.0, 12.0])
    native = rng.uniform(-60, 60, size=(200, 3))
    mni = native_to_mni(native, pose, 1.04, deformation)
    # the deformation is not negligible: without it the inverse would be off by millimetres
    plain = (np.c_[1.04 * mni, np.ones(len(mni))] @ pose.T)[:, :3]
    assert np.median(np.linalg.norm(plain - native, axis=1)) > 1.0
    back = true_mni_to_native(mni, pose, 1.04, deformation)
    assert np.abs(back - native).max() < 1e-4
