"""Baselines with the same encoders and training loop as PIDReg: unimodal, early and late fusion.

* ``unimodal``: one modality's encoder → predictor.
* ``early``: the inputs of all modalities are concatenated (vectors) or stacked
  as channels (volumes on one grid) and go through one encoder → predictor.
* ``late``: one encoder per modality; the latents are concatenated → predictor.

All are trained by the same loop as PIDReg (Adam, ReduceLROnPlateau, early
stopping, gradient clipping) with the plain prediction loss: no noise
bottleneck, PID or regularizers. They are what PIDReg's accuracy and epoch
time are compared with. The network is
:class:`brainage.models.baselines.FusionBaselineNet`; importing this module
does not load torch (fitting does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from brainage.estimators.neural import NeuralRegressor
from brainage.exceptions import UsageError

__all__ = ["KINDS", "BaselineRegressor"]

KINDS = ("unimodal", "early", "late")


class BaselineRegressor(NeuralRegressor):
    """Unimodal, early- or late-fusion regressor with PIDReg's encoders and training loop.

    Parameters
    ----------
    kind : {"late", "early", "unimodal"}
        Baseline type.
    modality : str, optional
        The modality used by ``kind="unimodal"``.
    preset, latent_dim, hidden, max_epochs, batch_size, lr, settings, encoders, random_state, device, training
        As in :class:`~brainage.estimators.neural.NeuralRegressor`; the preset's regularizer
        and PID settings do not apply (the network has no bottleneck, PID or fusion weights).

    Attributes
    ----------
    modalities_, config_, model_, history_, best_epoch_, n_epochs_, training_summary_
        As in :class:`~brainage.estimators.regressor.PIDRegressor`; there are no PID
        attributes (``pid_``, ``fusion_weights_`` …) and no ``pid_score``.

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
        training: dict | None = None,
    ):
        super().__init__(
            preset=preset, latent_dim=latent_dim, hidden=hidden, max_epochs=max_epochs,
            batch_size=batch_size, lr=lr, settings=settings, encoders=encoders,
            random_state=random_state, device=device, training=training,
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

    @property
    def takes_latents(self) -> bool:
        """Late fusion and unimodal models encode each modality apart; early fusion does not."""
        return self.kind != "early"

    def _build_model(self, config, encoder_specs: dict):
        from brainage.models.baselines import FusionBaselineNet
        from brainage.models.encoders import build_encoder

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
