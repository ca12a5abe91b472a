"""The network of the baselines with PIDReg's encoders: unimodal, early fusion, late fusion.

* unimodal: one modality's encoder → predictor.
* early fusion: the inputs of all modalities are concatenated (vectors) or
  stacked as channels (volumes on one grid) and go through one encoder → predictor.
* late fusion: one encoder per modality; the latents are concatenated → predictor.

:class:`FusionBaselineNet` is the torch module only; the scikit-learn-style
estimator that builds and trains it is
:class:`brainage.estimators.baselines.BaselineRegressor`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from brainage.models.encoders import MLPEncoder, init_kaiming

__all__ = ["FusionBaselineNet"]


class FusionBaselineNet(nn.Module):
    """Encoders → (concatenated latents) → predictor.

    Parameters
    ----------
    encoders : mapping of str to torch.nn.Module
        One encoder per input (for early fusion, a single encoder under the key
        ``"early"``).
    latent_dim : int
        Latent size of each encoder.
    hidden, dropout : sequence
        Predictor MLP shape.
    early_inputs : sequence of str, optional
        For early fusion: the modalities concatenated into the single encoder's input.

    Examples
    --------
    >>> net = FusionBaselineNet({"a": MLPEncoder(5, out_dim=4, hidden=(8,), dropout=0.0),
    ...                          "b": MLPEncoder(3, out_dim=4, hidden=(8,), dropout=0.0)},
    ...                         latent_dim=4, hidden=(8,), dropout=(0.0,)).eval()
    >>> net({"a": torch.zeros(2, 5), "b": torch.zeros(2, 3)})["pred"].shape
    torch.Size([2])
    """

    def __init__(self, encoders: Mapping[str, nn.Module], *, latent_dim: int,
                 hidden: Sequence[int], dropout: Sequence[float],
                 early_inputs: Sequence[str] | None = None):
        super().__init__()
        self.encoders = nn.ModuleDict(dict(encoders))
        self.early_inputs = list(early_inputs) if early_inputs else None
        self.modalities = self.early_inputs or list(encoders)
        self.predictor = MLPEncoder(
            latent_dim * len(encoders), out_dim=1, hidden=hidden, dropout=dropout
        ).net[:-1]
        init_kaiming(self.predictor)

    def _early_input(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = [x[m] for m in self.early_inputs]
        if parts[0].ndim >= 4:  # volumes: stack as channels
            parts = [p if p.ndim == 5 else p.unsqueeze(1) for p in parts]
            return torch.cat(parts, dim=1)
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)

    def encode(self, x: Mapping[str, torch.Tensor], modalities: Sequence[str]) -> dict:
        """Return the latents ``{name: (n, D)}`` (``{"early": …}`` for early fusion)."""
        if self.early_inputs:
            return {"early": self.encoders["early"](self._early_input(x))}
        return {m: self.encoders[m](x[m]) for m in modalities}

    def forward(self, x: Mapping[str, torch.Tensor], modalities=None, latents=None) -> dict:
        """Predict ``{"pred": (n,)}`` from all inputs (``modalities`` must be all or None).

        ``latents`` gives the encoder outputs of some modalities, computed before
        (``encode``), whose encoders are then not run; not for early fusion, whose
        one encoder reads every input.
        """
        if modalities is not None and list(modalities) != self.modalities:
            raise ValueError(
                f"A baseline predicts from all its inputs {self.modalities}; got {modalities}."
            )
        given = dict(latents or {})
        if given and self.early_inputs:
            raise ValueError("early fusion has one encoder over all inputs; it takes no latents")
        lat = self.encode(x, [m for m in self.encoders if m not in given])
        lat.update({m: given[m] for m in self.encoders if m in given})
        h = torch.cat([lat[k] for k in self.encoders], dim=1)
        return {"pred": self.predictor(h).squeeze(-1)}
