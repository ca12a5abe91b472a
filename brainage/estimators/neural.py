"""What PIDRegressor and the neural baselines share: inputs, scaling, fitting and inference.

:class:`NeuralRegressor` holds the parameters, turns a dict of modalities into
standardised inputs, splits off the validation participants, builds the
encoders from the input shapes, runs the training loop of
:mod:`brainage.training.trainer`, and predicts and encodes in batches on the
estimator's device. A subclass says which network to build
(:meth:`~NeuralRegressor._build_model`), how many modalities it takes, and what
it computes from the trained network; it does not switch anything off.
:class:`~brainage.estimators.regressor.PIDRegressor` and
:class:`~brainage.estimators.baselines.BaselineRegressor` are the two.
Importing this module does not load torch (fitting does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from brainage.estimators.persistence import BundleIO
from brainage.exceptions import UsageError

__all__ = ["NeuralRegressor"]


#: Keys of a neural estimator's ``training`` options.
TRAINING_OPTIONS = ("prefetch", "channels_last", "compile", "fused_adam")


class NeuralRegressor(ABC, BundleIO, RegressorMixin, BaseEstimator):
    """Base of the neural estimators: encoders per modality, trained by brainage's training loop.

    Parameters
    ----------
    preset : {"default", "faithful"}
        Hyperparameter preset (see :mod:`brainage.models.presets` and ``docs/pidreg.md``).
    latent_dim, hidden, max_epochs, batch_size, lr : optional
        Shortcuts for the preset settings of the same name (None keeps the preset's).
    settings : dict, optional
        Any other preset settings to change, e.g. ``{"lambda_cmi": 0.0}``.
    encoders : dict, optional
        Per-modality encoder options, e.g. ``{"anat": {"channels": [8, 16], "width": 1.0}}``.
    random_state : int
        Seed of the validation split, initial weights, noise and shuffling.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:i]"``, for training
        and inference; inference falls back to the CPU when the device is not there.
    training : dict, optional
        How the training loop runs, not what it learns (see
        :func:`~brainage.training.trainer.train_model`): ``prefetch`` (batches assembled
        ahead on a background thread; default ``"auto"``: 2 for 3D inputs on CUDA, else
        0), ``channels_last`` and ``compile`` (default false), ``fused_adam`` (default:
        on CUDA). E.g. ``{"compile": true, "prefetch": 4}``.
    """

    def __init__(
        self,
        *,
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
        self.preset = preset
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.settings = settings
        self.encoders = encoders
        self.random_state = random_state
        self.device = device
        self.training = training

    # ------------------------------------------------------------------ setup
    def _make_config(self):
        from brainage.models.presets import get_preset

        over = dict(self.settings or {})
        for key in ("latent_dim", "hidden", "max_epochs", "batch_size", "lr"):
            val = getattr(self, key)
            if val is not None:
                over[key] = val
        if "hidden" in over and "dropout" not in over:
            base = get_preset(self.preset).dropout
            n = len(tuple(over["hidden"]))
            over["dropout"] = tuple((list(base) + [base[-1]] * n)[:n])
        return get_preset(self.preset, **over)

    def _encoder_specs(self, config, shapes: dict) -> dict:
        from brainage.models.encoders import encoder_spec_for

        opts = dict(self.encoders or {})
        unknown = sorted(set(opts) - set(shapes))
        if unknown:
            raise UsageError(
                f"Encoder options given for unknown modalities {unknown}; "
                f"the data has {sorted(shapes)}."
            )
        specs = {}
        for m, shape in shapes.items():
            o = dict(opts.get(m, {}))
            if len(shape) <= 2:
                o.setdefault("hidden", list(config.hidden))
                o.setdefault("dropout", list(config.dropout))
            specs[m] = encoder_spec_for(shape, **o)
        return specs

    def _scaled(self, X: Mapping, fit_idx: np.ndarray | None = None):
        """Wrap X, standardising array modalities with statistics of ``fit_idx``."""
        from brainage.training.datasets import MultiModalData

        data = MultiModalData(X)
        if fit_idx is not None:
            self.input_mean_, self.input_scale_ = {}, {}
            for m in data.modalities:
                if data.is_array(m) and len(data.sample_shapes[m]) <= 2:
                    ref = data.X[m][fit_idx]
                    self.input_mean_[m] = ref.mean(0).astype(np.float32)
                    sd = ref.std(0)
                    self.input_scale_[m] = np.where(sd > 1e-12, sd, 1.0).astype(np.float32)
        scaled = {}
        for m in data.modalities:
            if m in self.input_mean_:
                scaled[m] = (data.X[m] - self.input_mean_[m]) / self.input_scale_[m]
            else:
                scaled[m] = data.X[m]
        return MultiModalData(scaled)

    def _select_modalities(self, X: Mapping) -> Mapping:
        return X

    # ------------------------------------------------------------ what differs
    @abstractmethod
    def _build_model(self, config, encoder_specs: dict):
        """Return the untrained network for these encoder specs."""

    def _check_n_modalities(self, modalities: list) -> None:
        """Refuse a number of modalities the network cannot take."""

    def _training_target(self, y: np.ndarray, train_idx: np.ndarray, config) -> np.ndarray | None:
        """Return the target of the training loop's information terms (None: the network has none)."""
        return None

    def _after_fit(self, data, train_idx: np.ndarray, y_pid) -> None:
        """Compute what the estimator reports of its trained network (nothing by default)."""

    # -------------------------------------------------------------------- fit
    def fit(self, X: Mapping, y, *, validation_idx=None):
        """Train the network on the modalities in ``X`` and the target ``y``.

        Parameters
        ----------
        X : dict of str to array-like or dataset
            The modalities (two or more for PIDReg and the fusion baselines),
            participants in the same order in each.
        y : array-like of shape (n,)
            Target (e.g. age in years).
        validation_idx : array-like of int, optional
            Positions of the participants used only for early stopping and the
            learning-rate schedule (never for gradients, scalers or the target
            standardisation). Default: a seeded random ``validation_fraction``
            of the participants. A nested cross-validation passes its own inner
            split here; an empty array trains without a validation set.

        Returns
        -------
        self

        Raises
        ------
        UsageError
            On mismatched inputs, non-finite targets, validation positions out
            of range or repeated, or fewer than 4 training participants.
        """
        from brainage.training.datasets import MultiModalData
        from brainage.training.distributed import rank_and_world
        from brainage.training.trainer import resolve_device, train_model

        config = self._make_config()
        X = self._select_modalities(X)
        raw = MultiModalData(X)
        self._check_n_modalities(raw.modalities)
        y = np.asarray(y, dtype=float).reshape(-1)
        if len(y) != raw.n:
            raise UsageError(
                f"y has {len(y)} values but X has {raw.n} participants; give one target "
                "per participant, in the same order."
            )
        if not np.all(np.isfinite(y)):
            raise UsageError(
                f"y has {int((~np.isfinite(y)).sum())} non-finite values; drop those "
                "participants before fitting."
            )
        val_idx, train_idx = self._validation_split(raw.n, config, validation_idx)
        if len(train_idx) < 4:
            raise UsageError(f"Only {len(train_idx)} training participants; need at least 4.")
        self.input_mean_, self.input_scale_ = {}, {}
        data = self._scaled(X, fit_idx=train_idx)
        self.y_mean_ = float(y[train_idx].mean())
        self.y_scale_ = float(max(y[train_idx].std(), 1e-12))
        y_std = (y - self.y_mean_) / self.y_scale_
        y_pid = self._training_target(y, train_idx, config)

        self.modalities_ = list(raw.modalities)
        self.input_shapes_ = {m: list(s) for m, s in raw.sample_shapes.items()}
        self.config_ = config
        self.encoder_specs_ = self._encoder_specs(config, raw.sample_shapes)
        import torch

        torch.manual_seed(self.random_state)
        self.model_ = self._build_model(config, self.encoder_specs_)
        result = train_model(
            self.model_, data, y_std, train_idx, val_idx, config, y_pid=y_pid,
            seed=self.random_state, device=self.device,
            **self._training_options(resolve_device(self.device), raw.sample_shapes),
        )
        self.device_ = str(resolve_device(self.device))
        self.model_.to("cpu")
        self._set_fitted_from(result)
        self._after_fit(data, train_idx, y_pid)
        self.training_summary_ = {
            "n_participants": int(raw.n),
            "n_train": len(train_idx),
            "n_validation": len(val_idx),
            "y_mean": float(y.mean()), "y_sd": float(y.std()),
            "y_min": float(y.min()), "y_max": float(y.max()),
            "input_shapes": self.input_shapes_,
            "world_size": rank_and_world()[1],  # data-parallel processes that trained it
        }
        return self

    def _training_options(self, device, shapes: dict) -> dict:
        """Return the ``training`` options as :func:`~brainage.training.trainer.train_model` arguments."""
        opts = dict(self.training or {})
        unknown = sorted(set(opts) - set(TRAINING_OPTIONS))
        if unknown:
            raise UsageError(
                f"Unknown training option(s) {unknown}; known: {', '.join(TRAINING_OPTIONS)} "
                "(e.g. training: {compile: true, prefetch: 4})."
            )
        prefetch = opts.get("prefetch", "auto")
        if prefetch == "auto":
            volumes = any(len(shape) > 2 for shape in shapes.values())
            prefetch = 2 if volumes and device.type == "cuda" else 0
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise UsageError(f"training.prefetch must be 'auto' or a number of batches >= 0, "
                             f"got {prefetch!r}.")
        fused = opts.get("fused_adam")
        return {"prefetch": prefetch, "channels_last": bool(opts.get("channels_last", False)),
                "compile_model": bool(opts.get("compile", False)), "fused_adam": fused}

    def _validation_split(self, n: int, config, validation_idx) -> tuple[np.ndarray, np.ndarray]:
        """Sorted (validation, training) positions: the caller's, or a seeded random split."""
        if validation_idx is None:
            perm = np.random.default_rng(self.random_state).permutation(n)
            n_val = round(config.validation_fraction * n)
            return np.sort(perm[:n_val]), np.sort(perm[n_val:])
        val = np.asarray(validation_idx).reshape(-1)
        if val.size and not np.issubdtype(val.dtype, np.integer):
            raise UsageError(
                f"validation_idx must hold integer positions, got dtype {val.dtype}; pass "
                "np.flatnonzero(mask) for a boolean mask."
            )
        val = val.astype(int)
        if val.size and (val.min() < 0 or val.max() >= n):
            raise UsageError(
                f"validation_idx holds positions outside 0..{n - 1} (min {val.min()}, max {val.max()}); "
                "give positions into X and y."
            )
        if np.unique(val).size != val.size:
            raise UsageError("validation_idx repeats positions; give each validation participant once.")
        return np.sort(val), np.setdiff1d(np.arange(n), val)

    def _set_fitted_from(self, result) -> None:
        self.history_ = [
            {k: e[k] for k in ("epoch", "stage", "train_loss", "val_loss", "lr", "seconds")}
            for e in result.history
        ]
        self.best_epoch_ = result.best_epoch
        self.n_epochs_ = len(result.history)

    # ---------------------------------------------------------------- predict
    def _inference(self, data, idx, fn) -> list:
        """Apply ``fn(model, batch)`` to batches of ``idx`` on the inference device.

        Batches have the training batch size (what fitted in memory for training
        fits for inference: 3D volumes are large), and run on the estimator's
        device when it is available, else on the CPU; outputs come back as numpy.
        """
        import torch

        from brainage.training.datasets import batch_indices
        from brainage.training.trainer import resolve_device

        dev = resolve_device(getattr(self, "device", "auto"))
        if dev.type == "cuda" and not torch.cuda.is_available():
            dev = torch.device("cpu")
        size = int(getattr(getattr(self, "config_", None), "batch_size", 256))
        out = []
        self.model_.to(dev).eval()
        try:
            with torch.no_grad():
                for b in batch_indices(np.asarray(idx), size, shuffle=False, seed=0, epoch=0):
                    xb = {m: t.to(dev, non_blocking=True) for m, t in data.batch(b).items()}
                    out.append(fn(self.model_, xb))
        finally:
            self.model_.to("cpu")
        return out

    def _latents(self, data, idx, modalities=None) -> dict:
        use = self.modalities_ if modalities is None else list(modalities)
        parts = self._inference(
            data, idx,
            lambda model, xb: {m: a.float().cpu().numpy() for m, a in model.encode(xb, use).items()})
        return {m: np.concatenate([p[m] for p in parts]) for m in use}

    def _check_X(self, X: Mapping, modalities):
        check_is_fitted(self, "model_")
        use = self.modalities_ if modalities is None else list(modalities)
        unknown = sorted(set(use) - set(self.modalities_))
        if unknown or not use:
            raise UsageError(
                f"Cannot use modalities {use}: this model was trained on {self.modalities_}."
            )
        if not isinstance(X, Mapping):
            raise UsageError(f"X must be a dict of modalities, got {type(X).__name__}.")
        from brainage.training.datasets import tables_as_arrays

        X = tables_as_arrays(X)
        missing = sorted(set(use) - set(X))
        if missing:
            raise UsageError(
                f"X lacks modalities {missing}; give them, or pass modalities= to predict "
                f"from a subset of {self.modalities_}."
            )
        for m in use:
            shape = list(np.shape(X[m][0]))
            if shape != self.input_shapes_[m] and not (
                shape == [] and self.input_shapes_[m] == [1]
            ):
                raise UsageError(
                    f"Modality {m!r} has inputs of shape {shape} per participant; this model "
                    f"was trained on {self.input_shapes_[m]}. Use the same features/grid."
                )
        return use, self._scaled({m: X[m] for m in use})

    def predict(self, X: Mapping, modalities: Sequence[str] | None = None) -> np.ndarray:
        """Predict the target.

        Parameters
        ----------
        X : dict of str to array-like or dataset
            The modalities to predict from.
        modalities : sequence of str, optional
            Predict from this subset only (modality selection); a left-out
            modality's latent is replaced by its training mean.

        Returns
        -------
        numpy.ndarray of shape (n,)
        """
        use, data = self._check_X(X, modalities)
        preds = self._inference(
            data, np.arange(data.n),
            lambda model, xb: model(xb, modalities=use)["pred"].float().cpu().numpy())
        return np.concatenate(preds).astype(float) * self.y_scale_ + self.y_mean_

    @property
    def takes_latents(self) -> bool:
        """Whether :meth:`predict_from_latents` works: one encoder per modality (not early fusion)."""
        return True

    def predict_from_latents(self, X: Mapping, latents: Mapping) -> np.ndarray:
        """Predict with some modalities given as their latents (:meth:`transform`), not inputs.

        Their encoders are not run again: when only one modality's inputs change
        from call to call (ablating its features), the others are encoded once.
        Equal to :meth:`predict` on the full inputs up to float rounding.

        Parameters
        ----------
        X : dict of str to array-like or dataset
            Inputs of the modalities not in ``latents``.
        latents : dict of str to array of shape (n, latent_dim)
            Latents of the other modalities, row for row with ``X``.

        Returns
        -------
        numpy.ndarray of shape (n,)
        """
        import torch

        from brainage.training.datasets import MultiModalData

        if not self.takes_latents:
            raise UsageError(f"{type(self).__name__} has one encoder over all its inputs; it "
                             "cannot predict from the latents of some of them")
        given = [m for m in self.modalities_ if m in latents]
        rest = [m for m in self.modalities_ if m not in latents]
        if not given or not rest:
            raise UsageError(f"give the latents of some and the inputs of the other modalities of "
                             f"{self.modalities_}; got latents of {sorted(latents)}")
        _, data = self._check_X(X, rest)
        keys = {m: f"{m}\x00latent" for m in given}
        dim = int(getattr(getattr(self, "config_", None), "latent_dim", self.latent_dim))
        for m in given:
            if np.shape(latents[m]) != (data.n, dim):
                raise UsageError(f"the latents of {m!r} have shape {np.shape(latents[m])}; expected "
                                 f"({data.n}, {dim}), one row per participant")
        joint = MultiModalData({**{m: data.X[m] for m in rest},
                                **{keys[m]: np.asarray(latents[m], np.float32) for m in given}})
        preds = self._inference(
            joint, np.arange(data.n),
            lambda model, xb: model({m: xb[m] for m in rest}, latents={
                m: xb[keys[m]].to(torch.float32) for m in given})["pred"].float().cpu().numpy())
        return np.concatenate(preds).astype(float) * self.y_scale_ + self.y_mean_

    def transform(self, X: Mapping, modalities: Sequence[str] | None = None) -> dict:
        """Return the noise-free latents ``{m: (n, latent_dim)}`` of the given modalities."""
        use, data = self._check_X(X, modalities)
        return self._latents(data, np.arange(data.n), use)
