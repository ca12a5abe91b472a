"""Baselines with the same encoders as PIDReg: unimodal, early fusion, late fusion.

* ``unimodal``: one modality's encoder → predictor.
* ``early``: the inputs of all modalities are concatenated (vectors) or stacked
  as channels (volumes on one grid) and go through one encoder → predictor.
* ``late``: one encoder per modality; the latents are concatenated → predictor.

All are trained by the same loop as PIDReg (Adam, ReduceLROnPlateau, early
stopping, gradient clipping) with the plain prediction loss: no noise
bottleneck, PID or regularizers. They are what PIDReg's accuracy and epoch
time are compared with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from brainage.exceptions import UsageError
from brainage.models.encoders import MLPEncoder, build_encoder, init_kaiming
from brainage.models.regressor import PIDRegressor

__all__ = ["BaselineRegressor", "FusionBaselineNet"]

KINDS = ("unimodal", "early", "late")


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

    def forward(self, x: Mapping[str, torch.Tensor], modalities=None) -> dict:
        """Predict ``{"pred": (n,)}`` from all inputs (``modalities`` must be all or None)."""
        if modalities is not None and list(modalities) != self.modalities:
            raise ValueError(
                f"A baseline predicts from all its inputs {self.modalities}; got {modalities}."
            )
        lat = self.encode(x, list(self.encoders))
        h = torch.cat([lat[k] for k in self.encoders], dim=1)
        return {"pred": self.predictor(h).squeeze(-1)}


class BaselineRegressor(PIDRegressor):
    """Unimodal, early- or late-fusion regressor with PIDReg's encoders and training loop.

    Parameters
    ----------
    kind : {"late", "early", "unimodal"}
        Baseline type.
    modality : str, optional
        The modality used by ``kind="unimodal"``.
    preset, latent_dim, hidden, max_epochs, batch_size, lr, settings, encoders, random_state, device
        As in :class:`~brainage.models.regressor.PIDRegressor`; the regularizer and
        PID settings are ignored.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = {"a": rng.normal(size=(64, 5)), "b": rng.normal(size=(64, 3))}
    >>> y = X["a"][:, 0]
    >>> reg = BaselineRegressor(kind="unimodal", modality="a", latent_dim=4, hidden=(8,),
    ...                         max_epochs=2, batch_size=32).fit(X, y)
    >>> reg.predict(X).shape
    (64,)
    """

    def __init__(
        self,
        *,
        kind: str = "late",
        modality: str | None = None,
        preset: str = "default",
        latent_dim: int | None = None,
        hidden: Sequence[int] | None = None,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        settings: dict | None = None,
        encoders: dict | None = None,
        random_state: int = 0,
        device: str = "auto",
    ):
        super().__init__(
            preset=preset, latent_dim=latent_dim, hidden=hidden, max_epochs=max_epochs,
            batch_size=batch_size, lr=lr, settings=settings, encoders=encoders,
            random_state=random_state, device=device,
        )
        self.kind = kind
        self.modality = modality

    def _select_modalities(self, X: Mapping) -> Mapping:
        if self.kind not in KINDS:
            raise UsageError(f"Unknown baseline kind {self.kind!r}; choose one of {KINDS}.")
        if self.kind == "unimodal":
            if self.modality not in X:
                raise UsageError(
                    f"BaselineRegressor(kind='unimodal') needs modality= one of {sorted(X)}, "
                    f"got {self.modality!r}."
                )
            return {self.modality: X[self.modality]}
        return X

    def _check_n_modalities(self, modalities: list) -> None:
        if self.kind != "unimodal" and len(modalities) < 2:
            raise UsageError(
                f"A {self.kind}-fusion baseline needs two or more modalities, got {modalities}."
            )

    def _build_model(self, config, encoder_specs: dict):
        if self.kind == "early":
            shapes = {m: tuple(self.input_shapes_[m]) for m in encoder_specs}
            first = next(iter(shapes.values()))
            if len(first) <= 2:
                spec = dict(next(iter(encoder_specs.values())))
                spec["in_features"] = int(sum(np.prod(s) for s in shapes.values()))
            else:
                grids = {s[-3:] for s in shapes.values()}
                if len(grids) != 1:
                    raise UsageError(
                        f"Early fusion of volumes needs one grid, got {sorted(grids)}; "
                        "resample the modalities to the same grid."
                    )
                spec = dict(next(iter(encoder_specs.values())))
                spec["in_channels"] = int(sum(1 if len(s) == 3 else s[0] for s in shapes.values()))
            encs = {"early": build_encoder(spec, out_dim=config.latent_dim)}
            early = list(encoder_specs)
        else:
            encs = {m: build_encoder(spec, out_dim=config.latent_dim)
                    for m, spec in encoder_specs.items()}
            early = None
        return FusionBaselineNet(encs, latent_dim=config.latent_dim, hidden=config.hidden,
                                 dropout=config.dropout, early_inputs=early)

    def _set_fitted_from(self, result) -> None:
        self.history_ = [
            {k: e[k] for k in ("epoch", "stage", "train_loss", "val_loss", "lr", "seconds")}
            for e in result.history
        ]
        self.best_epoch_ = result.best_epoch
        self.n_epochs_ = len(result.history)

    def _gaussianity(self, data, idx) -> dict:
        return {}

    def _final_pid(self, data, idx, y_pid) -> dict:
        return {}

    def pid_score(self, X, y, **kwargs):
        """Not available: baselines have no PID (raises)."""
        raise UsageError("Baselines have no PID; use PIDRegressor.pid_score.")

    def save(self, path) -> None:
        """Not available for baselines (they are for comparison only)."""
        raise UsageError("Baselines are not saved as bundles; refit them for comparison.")
