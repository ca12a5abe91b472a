"""scikit-learn-style estimator around PIDReg: ``PIDRegressor``.

``fit(X, y)`` takes a dict mapping modality names to arrays (participants on
axis 0) or indexable datasets (volumes loaded on demand), chooses an encoder
per modality from the input shape (MLP for vectors, SFCN-style 3D CNN for
volumes), and trains with the two-stage schedule. After fitting, the PID atoms
that set the fusion weights, the weights, their per-epoch history and a measure
of how Gaussian the latents are can be read from attributes ending in ``_``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from brainage.estimators.persistence import BundleIO
from brainage.exceptions import UsageError
from brainage.stats.gaussianity import latent_gaussianity

__all__ = ["PIDRegressor"]

logger = logging.getLogger(__name__)


class PIDRegressor(BundleIO, RegressorMixin, BaseEstimator):
    """Multimodal regressor with PID-weighted fusion (PIDReg).

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
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:i]"``. Used for
        training and for inference (``predict``, ``transform``); inference falls
        back to the CPU when the device is not there (e.g. a model fitted on a GPU
        and used on a laptop). The fitted model is kept on the CPU in between.

    Attributes
    ----------
    modalities_ : list of str
        Modality names in model order.
    config_ : PIDRegConfig
        The settings used.
    model_ : PIDReg
        The trained network (eval mode).
    pid_ : dict
        PID atoms in bits (``U1, U2, R, S, I1, I2, I12``) of the fitted model: the
        bias-corrected Gaussian PID of the Gaussianised training target and the
        noise-free latents of the training participants, keyed by modality pair
        ``"a|b"`` (U1/I1 refer to ``a``), as plain dicts (``PIDResult.as_dict()``, so
        that they go into the bundle's JSON as they are). In-sample; use
        :meth:`pid_score` on held-out data for an out-of-sample estimate with
        confidence intervals (``PIDResult`` objects). A pair is absent when its PID
        cannot be estimated; :attr:`pid_unavailable_` says why.
    pid_unavailable_ : dict
        ``{"a|b": reason}`` for each pair missing from :attr:`pid_` (too few
        training participants for the latent size: the Gaussian PID needs more
        participants than latent dimensions); empty when every pair has its atoms.
    pid_weights_atoms_ : dict
        The windowed stage-1 atoms that set the final fusion weights (same keys).
    pid_history_ : list of dict
        Per stage-1 epoch: ``epoch``, raw ``atoms`` and ``atoms_windowed`` per pair.
    fusion_weights_ : dict
        Final weight per modality and per pair's synergy term.
    fusion_weights_history_ : list of dict
        Weights after every epoch.
    bottleneck_lambdas_ : dict
        Final λ_m of the noise bottleneck.
    history_ : list of dict
        Per epoch: ``epoch``, ``stage``, ``train_loss``, ``val_loss``, ``lr``, ``seconds``.
    stage2_epoch_ : int or None
        First epoch with frozen weights (None when stage 1 never converged).
    best_epoch_ : int
        Epoch whose weights were kept (early stopping).
    gaussianity_ : dict
        Per modality, :func:`~brainage.stats.gaussianity.latent_gaussianity` of the
        training latents.
    training_summary_ : dict
        Number of participants, target mean / sd / range, input shapes.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = {"a": rng.normal(size=(64, 5)), "b": rng.normal(size=(64, 3))}
    >>> y = X["a"][:, 0] + X["b"][:, 0]
    >>> reg = PIDRegressor(latent_dim=4, hidden=(8,), max_epochs=2, batch_size=32,
    ...                    settings={"dropout": (0.0,)}).fit(X, y)
    >>> reg.predict(X).shape
    (64,)
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

    def _build_model(self, config, encoder_specs: dict):
        from brainage.models.encoders import build_encoder
        from brainage.models.pidreg import PIDReg

        encs = {m: build_encoder(spec, out_dim=config.latent_dim)
                for m, spec in encoder_specs.items()}
        return PIDReg(encs, latent_dim=config.latent_dim, hidden=config.hidden,
                      dropout=config.dropout, lambda_init=config.lambda_init)

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

    def _check_n_modalities(self, modalities: list) -> None:
        if len(modalities) < 2:
            raise UsageError(
                f"PIDRegressor needs two or more modalities, got {modalities}; "
                "use brainage.estimators.baselines.BaselineRegressor(kind='unimodal') for one."
            )

    # -------------------------------------------------------------------- fit
    def fit(self, X: Mapping, y, *, validation_idx=None) -> PIDRegressor:
        """Train PIDReg on the modalities in ``X`` and the target ``y``.

        Parameters
        ----------
        X : dict of str to array-like or dataset
            Two or more modalities, participants in the same order in each.
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
        from brainage.training.trainer import pid_target, resolve_device, train_model

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
        y_pid = np.zeros_like(y)
        y_pid[train_idx] = pid_target(y[train_idx], config.target_transform)

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
        )
        self.device_ = str(resolve_device(self.device))
        self.model_.to("cpu")
        self._set_fitted_from(result)
        self.gaussianity_ = self._gaussianity(data, train_idx)
        self.pid_ = self._final_pid(data, train_idx, y_pid[train_idx])
        self.training_summary_ = {
            "n_participants": int(raw.n),
            "n_train": len(train_idx),
            "n_validation": len(val_idx),
            "y_mean": float(y.mean()), "y_sd": float(y.std()),
            "y_min": float(y.min()), "y_max": float(y.max()),
            "input_shapes": self.input_shapes_,
        }
        return self

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
        self.pid_history_ = [
            {"epoch": e["epoch"], "atoms": e["atoms"], "atoms_windowed": e["atoms_windowed"]}
            for e in result.history if "atoms" in e
        ]
        self.fusion_weights_history_ = [e["weights"] for e in result.history]
        self.pid_weights_atoms_ = result.atoms
        self.fusion_weights_ = self.model_.fusion_weights_dict()
        self.bottleneck_lambdas_ = self.model_.bottleneck_lambdas()
        self.stage2_epoch_ = result.stage2_epoch
        self.best_epoch_ = result.best_epoch
        self.n_epochs_ = len(result.history)

    def _final_pid(self, data, idx, y_pid) -> dict:
        from brainage.models.pidreg import pair_key
        from brainage.pid import gaussian_pid

        lat = self._latents(data, idx)
        out = {}
        self.pid_unavailable_ = {}
        for p, q in self.model_.pairs:
            try:
                res = gaussian_pid(y_pid, lat[p], lat[q], bias_correction=True)
                out[pair_key((p, q))] = res.as_dict()
            except ValueError as err:  # too few participants for the latent size
                self.pid_unavailable_[pair_key((p, q))] = str(err)
                logger.warning("No PID of the fitted latents for %s and %s: %s", p, q, err)
        return out

    def _gaussianity(self, data, idx) -> dict:
        lat = self._latents(data, idx)
        return {m: latent_gaussianity(v, seed=self.random_state) for m, v in lat.items()}

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

    def transform(self, X: Mapping, modalities: Sequence[str] | None = None) -> dict:
        """Return the noise-free latents ``{m: (n, latent_dim)}`` of the given modalities."""
        use, data = self._check_X(X, modalities)
        return self._latents(data, np.arange(data.n), use)

    def pid_score(self, X: Mapping, y, *, n_boot: int = 0, random_state: int = 0) -> dict:
        """Bias-corrected PID of held-out data: ``(INT(y); latent_a, latent_b)`` per pair.

        Parameters
        ----------
        X : dict
            Held-out inputs of all modalities.
        y : array-like of shape (n,)
            Held-out targets.
        n_boot : int
            Bootstrap resamples for confidence intervals (0: none).
        random_state : int
            Seed of the bootstrap.

        Returns
        -------
        dict
            ``{"a|b": brainage.pid.PIDResult}``.
        """
        from brainage.models.pidreg import pair_key
        from brainage.pid import gaussian_pid, inverse_normal_transform

        lat = self.transform(X)
        yg = inverse_normal_transform(np.asarray(y, dtype=float))
        return {
            pair_key((p, q)): gaussian_pid(yg, lat[p], lat[q], bias_correction=True,
                                           n_boot=n_boot, random_state=random_state)
            for p, q in self.model_.pairs
        }
