"""The PIDReg regularizers of one training batch: Gaussianity, conditional independence, normality.

:func:`regularization` is the weighted sum the trainer adds to the prediction loss
(``docs/pidreg.md``, "Losses"); :func:`_cmi_term` is its conditional-independence part.
"""

from __future__ import annotations

import torch

from brainage.models.presets import PIDRegConfig

__all__ = ["regularization"]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).float()


def _cmi_term(z: dict, xb: dict, modalities: list, sigma_scale: float) -> torch.Tensor:
    """Sum over modalities of the CS-CMI ``I(Z_m; X_others | X_m)`` of one batch.

    The Gram matrices of the inputs are data: they are built once per batch and
    shared, the condition of one term being the target of another (with more than
    two modalities the target's squared distances are the sum over the other
    modalities, which is those of their concatenation).
    """
    from brainage.models.losses import cs_cmi_from_grams, gram_from_sq_dists, pairwise_sq_dists

    device_type = next(iter(z.values())).device.type
    with torch.no_grad(), torch.autocast(device_type=device_type, enabled=False):
        d2 = {m: pairwise_sq_dists(_flat(xb[m])) for m in modalities}
        grams = {m: gram_from_sq_dists(d2[m], sigma_scale) for m in modalities}
        targets = []
        for m in modalities:
            others = [o for o in modalities if o != m]
            targets.append(grams[others[0]] if len(others) == 1
                           else gram_from_sq_dists(sum(d2[o] for o in others), sigma_scale))
        k = torch.stack(targets)
        cond = torch.stack([grams[m] for m in modalities])
    with torch.autocast(device_type=device_type, enabled=False):
        # All modalities' terms as one stack (PIDReg gives every modality the same
        # latent size): the same numbers as one call per modality, fewer operations.
        lat = gram_from_sq_dists(
            pairwise_sq_dists(torch.stack([z[m] for m in modalities]), stacked=True),
            sigma_scale)
        return cs_cmi_from_grams(lat, k, cond).sum()


def regularization(out: dict, xb: dict, y_pid, modalities: list, cfg: PIDRegConfig, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Weighted sum of the PIDReg regularizers of one batch.

    ``lambda_cs`` × the Cauchy–Schwarz Gaussianity of every modality's
    pre-bottleneck latent, ``lambda_cmi`` × the CS-CMI terms (see
    :func:`_cmi_term`) and, when ``y_pid`` is given (stage 1), ``lambda_norm`` ×
    the normality of the joint ``[y_pid, z_1, ..., z_M]``. The normality term is
    skipped on a batch with no more samples than that joint has dimensions + 1
    (whitening needs more samples than dimensions; e.g. a short last batch).

    Parameters
    ----------
    out : dict
        Output of :meth:`PIDReg.forward` on the batch (``"a"`` and ``"z"`` latents).
    xb : dict
        The batch's inputs by modality (for the CMI terms).
    y_pid : torch.Tensor or None
        Gaussianised targets of the batch, shape (n,); None skips the normality term.
    modalities : list of str
        Modalities of the model.
    cfg : PIDRegConfig
        Weights, CMI kernel width and Gaussianity reference.
    generator : torch.Generator, optional
        For the Gaussianity loss's random reference sample (``cs_reference="sample"``).

    Returns
    -------
    torch.Tensor
        0-dim tensor (float64); add it to the prediction loss.
    """
    from brainage.models.losses import cs_gaussianity_loss, normality_loss

    z = {m: out["z"][m].float() for m in modalities}
    total = torch.zeros((), dtype=torch.float64, device=z[modalities[0]].device)
    if cfg.lambda_cs > 0:
        a = torch.stack([out["a"][m].float() for m in modalities])
        total = total + cfg.lambda_cs * cs_gaussianity_loss(
            a, generator=generator, reference=cfg.cs_reference).sum()
    if cfg.lambda_cmi > 0:
        total = total + cfg.lambda_cmi * _cmi_term(z, xb, modalities, cfg.cmi_sigma_scale)
    n = z[modalities[0]].shape[0]
    n_joint = 1 + sum(z[m].shape[1] for m in modalities)
    if y_pid is not None and cfg.lambda_norm > 0 and n > n_joint + 1:
        joint = torch.cat([y_pid.reshape(-1, 1).float()] + [z[m] for m in modalities], dim=1)
        total = total + cfg.lambda_norm * normality_loss(joint)
    return total
