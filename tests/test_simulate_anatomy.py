"""Structural aging in the simulator: grey matter thins from its CSF side."""

import numpy as np


def test_grey_matter_is_lost_from_the_side_that_faces_csf(aged_test_anatomy):
    params, tpl, young, old = aged_test_anatomy
    gm = tpl.gm
    # exposure is scaled to a GM-weighted mean of 1, so the total loss keeps the
    # regional rate: 0.25 %/year x 60 years x weights >= 1, and less than the clip allows
    assert np.isclose((gm * tpl.gm_exposure).sum() / gm.sum(), 1.0, atol=1e-4)
    loss = 1 - old["gm"].sum() / young["gm"].sum()
    uniform = 1 - (gm * (1 - np.clip(params.gm_loss_per_year * 60 * tpl.weights, 0, 0.9))).sum() \
        / gm.sum()
    assert abs(loss - uniform) < 0.03
    # GM next to CSF loses much more than the GM core
    facing = (gm > 0.3) & (tpl.csf > 0.3)
    core = gm > 0.9
    lost = 1 - old["gm"] / np.maximum(young["gm"], 1e-6)
    assert lost[facing].mean() > 2 * lost[core].mean()
    # tissue still adds up to the brain mask
    assert np.allclose(old["gm"] + old["wm"] + old["csf"], tpl.mask, atol=1e-5)
