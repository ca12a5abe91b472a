"""PIDReg hyperparameter presets: ``faithful`` (the reference behaviour) and ``default``.

``faithful`` reproduces the published method as its reference code runs it;
``default`` keeps the architecture and the schedule but fixes three known
weaknesses, replaces the Gaussianity loss's random reference sample by its exact
expectation (no sampling noise), and computes the regularizers lazily (on every
8th batch) to cut their cost. The differences (see ``docs/pidreg.md``):

============================  ==========================  ===============================
setting                       ``faithful``                ``default``
============================  ==========================  ===============================
PID estimated on              each training batch         a window of the latest training
                                                          latents (``pid_window`` samples)
finite-sample bias            not corrected               corrected (Cai et al. 2015)
redundancy goes to            one modality, coin flip     both, in proportion to I(y; Z_m)
CMI kernel width              0.05 × median heuristic     1 × median heuristic (active)
Gaussianity reference         a fresh N(0, I) sample      exact N(0, I) expectations
PID target transform          0.6 INT + 0.4 clipped z     rank inverse normal transform
regularizers computed on      every batch                 every 8th batch, weights x 8
============================  ==========================  ===============================

Neither preset fits anything on data outside the training set (the reference
fits its scaler before splitting; that leakage is not reproduced).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["PRESETS", "TARGET_TRANSFORM_ALIASES", "PIDRegConfig", "get_preset"]

#: Former names of ``target_transform`` values, still accepted (saved bundles and
#: configs may hold them): ``"int"`` is the rank inverse normal transform.
TARGET_TRANSFORM_ALIASES = {"int": "inverse_normal"}


@dataclass(frozen=True)
class PIDRegConfig:
    """All hyperparameters of PIDReg training.

    Attributes
    ----------
    latent_dim : int
        Size D of every modality's latent (fusion sums latents, so one D for all).
    hidden : tuple of int
        Hidden widths of the MLP encoders and of the predictor.
    dropout : tuple of float
        Dropout after each hidden layer.
    lambda_init : float
        Initial θ of the noise bottleneck (λ = sigmoid(θ)).
    batch_size, max_epochs, lr, lambda_lr : int, int, float, float
        Mini-batch size, epoch limit, Adam learning rate of the network and of θ.
    plateau_factor, plateau_patience, min_lr : float, int, float
        ReduceLROnPlateau on the validation prediction loss.
    early_stopping_patience : int
        Epochs without validation improvement before stopping (best weights restored).
    grad_clip : float
        Maximum gradient norm.
    lambda_cs, lambda_cmi, lambda_norm : float
        Weights of the Gaussianity, conditional-independence and normality losses.
    cmi_sigma_scale : float
        Kernel width of the CMI loss as a multiple of the median heuristic.
    cs_reference : {"sample", "exact"}
        Reference of the Cauchy–Schwarz Gaussianity loss: a fresh ``N(0, I)``
        sample per batch (the published method, ``faithful``) or the exact
        expectations over ``N(0, I)`` (``default``: the limit of an infinite
        reference sample, without its sampling noise, and one kernel matrix instead
        of three; see :func:`~brainage.models.losses.cs_gaussianity_loss`).
    regularizer_interval : int
        Compute the three regularizers on every ``k``-th training batch only, with
        their weights multiplied by ``k`` (lazy regularization, Karras et al. 2020,
        StyleGAN2): the same regularization per epoch in expectation for ``1/k`` of
        its cost. 1 = every batch (the reference behaviour, ``faithful``); 8 in
        ``default`` (measured: the same PID atoms, latent Gaussianity and accuracy on
        the known-truth benchmark as 1, see ``docs/pidreg.md``).
    pid_scope : {"batch", "window"}
        Estimate the PID on each batch (then average over the epoch) or once per
        epoch on the latest ``pid_window`` training latents.
    pid_window : int
        Number of latest training latents the windowed PID uses.
    pid_bias_correction : bool
        Subtract the finite-sample bias of the log-det mutual informations.
    redundancy : {"coin", "proportional"}
        How the redundancy atom is shared between two modalities' weights.
    target_transform : {"inverse_normal", "blend"}
        Gaussianisation of y for the PID: the rank inverse normal transform, or
        0.6 × it + 0.4 × the z-score clipped to ±3 (the reference code). The former
        name ``"int"`` is accepted and stored as ``"inverse_normal"``.
    atom_window_epochs : int
        Epochs averaged to smooth the atoms before computing weights.
    freeze_tol, freeze_patience : float, int
        Freeze the weights (stage 2) when the largest change of the windowed
        atoms stays below ``freeze_tol`` bits for ``freeze_patience`` epochs.
    validation_fraction : float
        Share of the training data held out for the scheduler and early stopping.
    weight_average : float
        Decay of an exponential moving average of the network's parameters, updated
        after every optimizer step (Polyak averaging; ``torch.optim.swa_utils``); the
        validation loss, early stopping and the returned weights then use the average
        (buffers such as the fusion weights are the live network's). 0 (the default)
        trains without it.
    fusion_warmup_epochs : int
        Epochs at the initial equal fusion weights before the PID atoms set them (0: from
        the first epoch, the published method). The atoms are computed and recorded
        during the warm-up; the freeze rule starts after it.
    """

    latent_dim: int = 64
    hidden: tuple[int, ...] = (256, 128)
    dropout: tuple[float, ...] = (0.3, 0.2)
    lambda_init: float = 4.0
    batch_size: int = 256
    max_epochs: int = 200
    lr: float = 1e-3
    lambda_lr: float = 0.1
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    min_lr: float = 1e-6
    early_stopping_patience: int = 30
    grad_clip: float = 1.0
    lambda_cs: float = 0.1
    lambda_cmi: float = 0.1
    lambda_norm: float = 0.1
    cmi_sigma_scale: float = 1.0
    cs_reference: str = "exact"
    regularizer_interval: int = 8
    pid_scope: str = "window"
    pid_window: int = 4096
    pid_bias_correction: bool = True
    redundancy: str = "proportional"
    target_transform: str = "inverse_normal"
    atom_window_epochs: int = 5
    freeze_tol: float = 0.01
    freeze_patience: int = 5
    validation_fraction: float = 0.1
    fusion_warmup_epochs: int = 0
    weight_average: float = 0.0
    name: str = field(default="default", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "target_transform", TARGET_TRANSFORM_ALIASES.get(
            self.target_transform, self.target_transform))
        choices = {
            "pid_scope": ("batch", "window"),
            "redundancy": ("coin", "proportional"),
            "target_transform": ("inverse_normal", "blend"),
            "cs_reference": ("sample", "exact"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"PIDRegConfig.{key}={getattr(self, key)!r} is not valid; "
                    f"choose one of {allowed}."
                )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}."
            )
        if int(self.fusion_warmup_epochs) < 0:
            raise ValueError(f"fusion_warmup_epochs must be >= 0, got {self.fusion_warmup_epochs}.")
        if not 0.0 <= float(self.weight_average) < 1.0:
            raise ValueError(f"weight_average (an EMA decay) must be in [0, 1), got {self.weight_average}.")
        if int(self.regularizer_interval) < 1:
            raise ValueError(
                f"regularizer_interval must be >= 1 (1 = every batch), got {self.regularizer_interval}."
            )
        if self.latent_dim < 1 or self.batch_size < 2 or self.max_epochs < 1:
            raise ValueError(
                "latent_dim must be ≥ 1, batch_size ≥ 2 and max_epochs ≥ 1; got "
                f"{self.latent_dim}, {self.batch_size}, {self.max_epochs}."
            )
        # JSON round trips give lists; keep tuples so configs compare equal.
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "dropout", tuple(float(d) for d in self.dropout))

    def replace(self, **changes) -> PIDRegConfig:
        """Return a copy with some fields changed (unknown names raise a clear error)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"Unknown PIDReg setting(s) {unknown}; known settings: {sorted(known)}."
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Return the settings as a JSON-serialisable dict."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["dropout"] = list(self.dropout)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> PIDRegConfig:
        """Build a config from :meth:`to_dict` output."""
        return cls().replace(**data)


_FAITHFUL = PIDRegConfig(
    name="faithful",
    cmi_sigma_scale=0.05,
    cs_reference="sample",
    pid_scope="batch",
    pid_bias_correction=False,
    redundancy="coin",
    target_transform="blend",
    regularizer_interval=1,
)
_DEFAULT = PIDRegConfig(name="default")

PRESETS: dict[str, PIDRegConfig] = {"default": _DEFAULT, "faithful": _FAITHFUL}


def get_preset(name: str = "default", **overrides) -> PIDRegConfig:
    """Return a preset, optionally with some settings changed.

    Parameters
    ----------
    name : {"default", "faithful"}
        The preset.
    **overrides
        Settings to change (see :class:`PIDRegConfig`).

    Returns
    -------
    PIDRegConfig

    Examples
    --------
    >>> get_preset("faithful").redundancy
    'coin'
    >>> get_preset("default", latent_dim=8).latent_dim
    8
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown PIDReg preset {name!r}; available presets: {sorted(PRESETS)}.")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
