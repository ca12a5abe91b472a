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
from collections.abc import Mapping

import numpy as np

from brainage.estimators.neural import NeuralRegressor
from brainage.exceptions import UsageError
from brainage.stats.gaussianity import latent_gaussianity

__all__ = ["PIDRegressor"]

logger = logging.getLogger(__name__)


class PIDRegressor(NeuralRegressor):
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

    def _build_model(self, config, encoder_specs: dict):
        from brainage.models.encoders import build_encoder
        from brainage.models.pidreg import PIDReg

        encs = {m: build_encoder(spec, out_dim=config.latent_dim)
                for m, spec in encoder_specs.items()}
        return PIDReg(encs, latent_dim=config.latent_dim, hidden=config.hidden,
                      dropout=config.dropout, lambda_init=config.lambda_init)

    def _check_n_modalities(self, modalities: list) -> None:
        if len(modalities) < 2:
            raise UsageError(
                f"PIDRegressor needs two or more modalities, got {modalities}; "
                "use brainage.estimators.baselines.BaselineRegressor(kind='unimodal') for one."
            )

    def _training_target(self, y: np.ndarray, train_idx: np.ndarray, config) -> np.ndarray:
        """Return the Gaussianised target of the PID terms (``config.target_transform``), training rows."""
        from brainage.training.trainer import pid_target

        y_pid = np.zeros_like(y)
        y_pid[train_idx] = pid_target(y[train_idx], config.target_transform)
        return y_pid

    def _after_fit(self, data, train_idx: np.ndarray, y_pid) -> None:
        self.gaussianity_ = self._gaussianity(data, train_idx)
        self.pid_ = self._final_pid(data, train_idx, y_pid[train_idx])

    def _set_fitted_from(self, result) -> None:
        super()._set_fitted_from(result)
        self.pid_history_ = [
            {"epoch": e["epoch"], "atoms": e["atoms"], "atoms_windowed": e["atoms_windowed"]}
            for e in result.history if "atoms" in e
        ]
        self.fusion_weights_history_ = [e["weights"] for e in result.history]
        self.pid_weights_atoms_ = result.atoms
        self.fusion_weights_ = self.model_.fusion_weights_dict()
        self.bottleneck_lambdas_ = self.model_.bottleneck_lambdas()
        self.stage2_epoch_ = result.stage2_epoch

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
