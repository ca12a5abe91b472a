"""Classical brain-age regressors on tabular features: ridge regression and a Gaussian process.

``ClassicalRegressor(kind="ridge" | "gpr")`` concatenates the tabular features of
its modalities (regional volumes, connectivity edges, …), standardises every
feature with the training participants' mean and sd, and fits

* ``"ridge"``: :class:`sklearn.linear_model.RidgeCV`, the ridge penalty chosen
  from ``alphas`` by its efficient leave-one-out cross-validation on the
  training data;
* ``"gpr"``: :class:`sklearn.gaussian_process.GaussianProcessRegressor` with
  the kernel ``ConstantKernel * RBF(length_scale=sqrt(n_features)) +
  WhiteKernel`` and ``normalize_y=True``, hyperparameters chosen by maximising
  the log marginal likelihood of the training data. Between the scaler and the
  GPR, a PCA fitted on the training participants keeps ``min(n_train - 1, 100,
  n_features)`` components.

Why the PCA (measured with one BLAS thread on a 2-core machine; 1,000 test
participants; features = tanh of a 20-dimensional age-related latent plus unit
feature noise): with 200 training participants × 1,000 features the fit takes
0.14 s with 100 components against 0.26 s without PCA, prediction 0.03 s
against 0.04 s, and the test MAE is 7.7 against 8.2 years; without PCA the
learnt white noise collapses to its lower bound, because a kernel on many
noisy features is already close to diagonal. With 1,000 × 5,000 the fit takes
4.9 s against 15 s and prediction 0.11 s against 1.1 s at the same accuracy
(MAE 7.06 against 7.11; ridge 7.08). A kernel on thousands of connectivity
edges costs ``O(n² d)`` per optimiser step and at 100 components that term
stops dominating; the ``O(n³)`` Cholesky is unchanged (2,000 × 5,000: 27 s),
so GPR is a model for hundreds to a few thousand participants. (With two
OpenBLAS threads on the same machine, shared with other jobs, the 200 × 1,000
fit took 1–5 s: thread contention, not the model.)

The RBF length scale starts at ``sqrt(n_features)`` of the *standardised*
features (of the order of the distance between two participants), not of the
number of PCA components, so the optimiser starts where the kernel is
informative; it is then fitted (one L-BFGS run from that start, no restarts).

Both kinds choose their hyperparameters internally on the training data, so
``fit(..., validation_idx=...)`` accepts the argument for a uniform interface
with :class:`~brainage.estimators.regressor.PIDRegressor` and ignores it: every
participant given is used for fitting. A classical model uses all its
modalities at once: ``predict(X, modalities=...)`` with a subset is refused.

Prediction is computed from the fitted arrays (scaler, PCA, coefficients or
the GPR's training inputs and dual weights ``alpha_``) with numpy, so a model
loaded from a bundle (:mod:`brainage.estimators.bundle`; arrays in
safetensors, the rest in JSON, never pickle) predicts exactly what the fitted
one did.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from brainage.estimators.persistence import BundleIO
from brainage.exceptions import UsageError

__all__ = ["CLASSICAL_KINDS", "DEFAULT_ALPHAS", "MAX_GPR_COMPONENTS", "ClassicalRegressor"]

logger = logging.getLogger(__name__)

CLASSICAL_KINDS = ("ridge", "gpr")
#: Ridge penalties tried by default (10⁻³ … 10⁵, two per decade).
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 5, 17))
#: Upper bound of the PCA components in front of the GPR.
MAX_GPR_COMPONENTS = 100
_MIN_TRAIN = 3


def _negligible_penalty(Z: np.ndarray, alpha: float) -> bool:
    """Return True when ``alpha`` is below 0.1 % of every nonzero eigenvalue of the centred ``Z'Z``.

    A smaller penalty then changes the ridge fit by less than that: it is already, in effect,
    least squares (the minimum-norm solution when there are more features than participants),
    so a choice at the lower edge of the alphas is no reason to search lower.
    """
    s = np.linalg.svd(Z - Z.mean(axis=0), compute_uv=False)
    nonzero = s[s > s.max() * 1e-8] if s.size and s.max() > 0 else s[:0]
    return bool(nonzero.size) and alpha < 1e-3 * float(nonzero.min()) ** 2


def _as_tabular(name: str, value, role: str) -> np.ndarray:
    """Return modality ``name`` as a float64 (n, d) array, or raise a UsageError."""
    if not (isinstance(value, (list, tuple)) or hasattr(value, "__array__")):
        raise UsageError(
            f"Modality {name!r} is a {type(value).__name__} (e.g. a dataset of volumes); classical "
            "models need tabular inputs, an array of participants × features. Give regional "
            "features (e.g. regional volumes, connectivity edges), or use PIDRegressor / "
            "BaselineRegressor for images."
        )
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        raise UsageError(
            f"Modality {name!r} cannot be read as a numeric array ({err}); give an array of "
            "participants × features."
        ) from err
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise UsageError(
            f"Modality {name!r} has shape {arr.shape} ({arr.ndim}-D); classical models need "
            "tabular inputs, participants × features (2-D). Give regional features (e.g. "
            "regional volumes, connectivity edges), or use PIDRegressor / BaselineRegressor "
            "with a CNN encoder for volumes."
        )
    if arr.shape[1] == 0:
        raise UsageError(f"Modality {name!r} has no features (shape {arr.shape}).")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        raise UsageError(
            f"Modality {name!r} has non-finite values (NaN or inf) for {rows} participant(s) in "
            f"{role}; impute or drop them first."
        )
    return arr


class ClassicalRegressor(BundleIO, RegressorMixin, BaseEstimator):
    """Ridge regression or a Gaussian process on the concatenated tabular features of the modalities.

    Parameters
    ----------
    kind : {"ridge", "gpr"}
        The model (see the module docstring).
    modalities : sequence of str, optional
        The modalities to use, in this order; default: every modality of the
        ``X`` given to :meth:`fit`, in its order.
    alphas : sequence of float, optional
        Ridge penalties to choose from by leave-one-out CV (``kind="ridge"``);
        default :data:`DEFAULT_ALPHAS`. Ignored by ``"gpr"``.
    random_state : int
        Seed of the PCA's randomized solver (used for large inputs; ``"gpr"``).

    Attributes
    ----------
    modalities_ : list of str
        Modalities in the order their features are concatenated.
    feature_dims_ : dict of str to int
        Number of features per modality.
    input_shapes_ : dict of str to list of int
        ``[n_features]`` per modality (the shape of one participant's input, as
        :class:`~brainage.estimators.regressor.PIDRegressor` records it).
    n_features_in_ : int
        Total number of features.
    scaler_mean_, scaler_scale_ : numpy.ndarray of shape (n_features_in_,)
        The standardisation (``scale`` 1 for constant features).
    coef_, intercept_, alpha_ : numpy.ndarray, float, float
        ``"ridge"``: coefficients on the standardised features, intercept and
        the chosen penalty.
    pca_components_, pca_mean_ : numpy.ndarray
        ``"gpr"``: the PCA, shapes (n_components_, n_features_in_) and (n_features_in_,).
    n_components_ : int
        ``"gpr"``: number of PCA components.
    X_train_ : numpy.ndarray of shape (n_train, n_components_)
        ``"gpr"``: the training participants in PCA space.
    dual_coef_ : numpy.ndarray of shape (n_train,)
        ``"gpr"``: the GPR's ``alpha_`` (dual weights of the normalised target).
    y_train_mean_, y_train_std_ : float
        ``"gpr"``: the target normalisation.
    kernel_params_ : dict
        ``"gpr"``: ``constant_value``, ``length_scale``, ``noise_level`` of the fitted kernel.
    kernel_ : sklearn.gaussian_process.kernels.Kernel
        ``"gpr"``: the fitted kernel.
    log_marginal_likelihood_ : float
        ``"gpr"``: at the fitted hyperparameters.
    training_summary_ : dict
        ``n_participants``, ``n_train``, ``n_validation`` (always 0), target
        ``y_mean`` / ``y_sd`` / ``y_min`` / ``y_max``, ``input_shapes``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = {"anat": rng.normal(size=(50, 6)), "func": rng.normal(size=(50, 10))}
    >>> y = 50 + 10 * X["anat"][:, 0] + rng.normal(size=50)
    >>> reg = ClassicalRegressor("ridge").fit(X, y)
    >>> reg.predict(X).shape, reg.feature_dims_
    ((50,), {'anat': 6, 'func': 10})
    """

    def __init__(
        self,
        kind: str = "ridge",
        *,
        modalities: Sequence[str] | None = None,
        alphas: Sequence[float] | None = None,
        random_state: int = 0,
    ):
        self.kind = kind
        self.modalities = modalities
        self.alphas = alphas
        self.random_state = random_state

    # ------------------------------------------------------------------ inputs
    def _use(self, X: Mapping) -> list[str]:
        if not isinstance(X, Mapping) or len(X) == 0:
            raise UsageError(
                "X must be a dict mapping modality names to arrays of participants × features, "
                f"e.g. {{'anat': regional_volumes, 'func': edges}}; got {type(X).__name__}."
            )
        if self.modalities is None:
            return [str(m) for m in X]
        if isinstance(self.modalities, str):
            raise UsageError(
                f"modalities must be a list of names, got the string {self.modalities!r}; "
                f"write modalities=[{self.modalities!r}]."
            )
        use = list(self.modalities)
        if not use or len(set(use)) != len(use):
            raise UsageError(f"modalities must name each modality once, got {use}.")
        missing = [m for m in use if m not in X]
        if missing:
            raise UsageError(f"X lacks modalities {missing}; it has {sorted(X)}.")
        return use

    @staticmethod
    def _arrays(X: Mapping, use: list[str], role: str) -> dict[str, np.ndarray]:
        arrays = {m: _as_tabular(m, X[m], role) for m in use}
        lengths = {m: len(a) for m, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            first = use[0]
            odd = next(m for m in use if lengths[m] != lengths[first])
            raise UsageError(
                f"Modality {odd!r} has {lengths[odd]} participants but {first!r} has "
                f"{lengths[first]} ({lengths}); every modality needs one row per participant, "
                "in the same order."
            )
        return arrays

    # --------------------------------------------------------------------- fit
    def fit(self, X: Mapping, y, *, validation_idx=None) -> ClassicalRegressor:
        """Fit the scaler (and PCA) and the model on every participant of ``X``.

        Parameters
        ----------
        X : dict of str to array-like of shape (n, d_m)
            Tabular features per modality, participants in the same order.
        y : array-like of shape (n,)
            Target (e.g. age in years).
        validation_idx : array-like of int, optional
            Accepted for the interface of
            :meth:`~brainage.estimators.regressor.PIDRegressor.fit` and ignored:
            ridge chooses its penalty by leave-one-out CV and the GPR its kernel
            by marginal likelihood, both on all the participants given.

        Returns
        -------
        self

        Raises
        ------
        UsageError
            On an unknown ``kind``, a non-tabular modality (a volume), non-finite
            values, mismatched numbers of participants or fewer than 3 participants.
        """
        if self.kind not in CLASSICAL_KINDS:
            raise UsageError(
                f"Unknown classical model kind {self.kind!r}; choose one of {CLASSICAL_KINDS}."
            )
        use = self._use(X)
        arrays = self._arrays(X, use, "X")
        Xc = np.concatenate([arrays[m] for m in use], axis=1)
        y = np.asarray(y, dtype=float).reshape(-1)
        if len(y) != len(Xc):
            raise UsageError(
                f"y has {len(y)} values but modality {use[0]!r} has {len(Xc)} participants; "
                "give one target per participant, in the same order."
            )
        if not np.all(np.isfinite(y)):
            raise UsageError(
                f"y has {int((~np.isfinite(y)).sum())} non-finite values; drop those participants "
                "before fitting."
            )
        if len(y) < _MIN_TRAIN:
            raise UsageError(f"Only {len(y)} training participants; need at least {_MIN_TRAIN}.")
        if validation_idx is not None:
            logger.debug("ClassicalRegressor(kind=%r) ignores validation_idx: it uses every "
                         "participant given.", self.kind)

        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(Xc)
        self.modalities_ = use
        self.feature_dims_ = {m: int(arrays[m].shape[1]) for m in use}
        self.input_shapes_ = {m: [d] for m, d in self.feature_dims_.items()}
        self.n_features_in_ = int(Xc.shape[1])
        self.scaler_mean_ = np.asarray(scaler.mean_, dtype=float)
        self.scaler_scale_ = np.asarray(scaler.scale_, dtype=float)
        Z = self._standardise(Xc)
        if self.kind == "ridge":
            self._fit_ridge(Z, y)
        else:
            self._fit_gpr(Z, y)
        self.training_summary_ = {
            "n_participants": len(y), "n_train": len(y), "n_validation": 0,
            "y_mean": float(y.mean()), "y_sd": float(y.std()),
            "y_min": float(y.min()), "y_max": float(y.max()),
            "input_shapes": self.input_shapes_,
        }
        return self

    def _fit_ridge(self, Z: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import RidgeCV

        alphas = np.asarray(DEFAULT_ALPHAS if self.alphas is None else self.alphas, dtype=float)
        alphas = alphas.reshape(-1)
        if alphas.size == 0 or not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
            raise UsageError(f"alphas must be positive finite penalties, got {alphas.tolist()}.")
        ridge = RidgeCV(alphas=alphas).fit(Z, y)  # scoring=None: efficient leave-one-out
        self.coef_ = np.asarray(ridge.coef_, dtype=float).reshape(-1)
        self.intercept_ = float(ridge.intercept_)
        self.alpha_ = float(ridge.alpha_)
        at_edge = alphas.size > 1 and (self.alpha_ == alphas.max() or (
            self.alpha_ == alphas.min() and not _negligible_penalty(Z, self.alpha_)))
        if at_edge:
            logger.warning(
                "Ridge chose alpha=%g at the edge of the alphas tried (%g … %g): the best penalty may lie "
                "beyond them; search wider with group.model_params.<model>: {alphas: [...]}",
                self.alpha_, alphas.min(), alphas.max())

    def _fit_gpr(self, Z: np.ndarray, y: np.ndarray) -> None:
        from sklearn.decomposition import PCA
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor

        k = int(min(len(Z) - 1, MAX_GPR_COMPONENTS, Z.shape[1]))
        pca = PCA(n_components=k, random_state=self.random_state).fit(Z)
        self.n_components_ = k
        self.pca_components_ = np.asarray(pca.components_, dtype=float)
        self.pca_mean_ = np.asarray(pca.mean_, dtype=float)
        Xt = self._project(Z)
        kernel = self._kernel(1.0, float(np.sqrt(Z.shape[1])), 0.1, fixed=False)
        gpr = GaussianProcessRegressor(kernel=kernel, normalize_y=True,
                                       random_state=self.random_state)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            gpr.fit(Xt, y)
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                logger.warning("GPR hyperparameter optimisation: %s", w.message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        params = gpr.kernel_.get_params()
        self.kernel_params_ = {
            "constant_value": float(params["k1__k1__constant_value"]),
            "length_scale": float(params["k1__k2__length_scale"]),
            "noise_level": float(params["k2__noise_level"]),
        }
        self.kernel_ = self._kernel(**self.kernel_params_, fixed=True)
        self.X_train_ = Xt
        self.dual_coef_ = np.asarray(gpr.alpha_, dtype=float).reshape(-1)
        self.y_train_mean_ = float(np.asarray(gpr._y_train_mean).reshape(()))
        self.y_train_std_ = float(np.asarray(gpr._y_train_std).reshape(()))
        self.log_marginal_likelihood_ = float(gpr.log_marginal_likelihood_value_)

    @staticmethod
    def _kernel(constant_value: float, length_scale: float, noise_level: float, *, fixed: bool):
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        if fixed:
            return (ConstantKernel(constant_value, constant_value_bounds="fixed")
                    * RBF(length_scale, length_scale_bounds="fixed")
                    + WhiteKernel(noise_level, noise_level_bounds="fixed"))
        return ConstantKernel(constant_value) * RBF(length_scale) + WhiteKernel(noise_level)

    # ----------------------------------------------------------------- predict
    def _standardise(self, Xc: np.ndarray) -> np.ndarray:
        return (Xc - self.scaler_mean_) / self.scaler_scale_

    def _project(self, Z: np.ndarray) -> np.ndarray:
        return (Z - self.pca_mean_) @ self.pca_components_.T

    def predict(self, X: Mapping, modalities: Sequence[str] | None = None) -> np.ndarray:
        """Predict the target from all the modalities the model was fitted on.

        Parameters
        ----------
        X : dict of str to array-like of shape (n, d_m)
            Every modality in :attr:`modalities_` (others are ignored).
        modalities : sequence of str, optional
            None or all of :attr:`modalities_`: a model on concatenated features
            cannot drop a modality.

        Returns
        -------
        numpy.ndarray of shape (n,)

        Raises
        ------
        UsageError
            On a modality subset, missing modalities, other feature counts or
            non-finite values.
        """
        check_is_fitted(self, "feature_dims_")
        if modalities is not None:
            if isinstance(modalities, str):
                modalities = [modalities]
            if sorted(modalities) != sorted(self.modalities_):
                raise UsageError(
                    f"A classical {self.kind} model on the concatenated features of "
                    f"{self.modalities_} cannot drop a modality; got modalities={list(modalities)}. "
                    "Predict from all of them (modalities=None), or fit a model on the subset."
                )
        if not isinstance(X, Mapping):
            raise UsageError(f"X must be a dict of modalities, got {type(X).__name__}.")
        missing = [m for m in self.modalities_ if m not in X]
        if missing:
            raise UsageError(
                f"X lacks modalities {missing}; this model was fitted on {self.modalities_}.")
        arrays = self._arrays(X, self.modalities_, "X")
        for m in self.modalities_:
            if arrays[m].shape[1] != self.feature_dims_[m]:
                raise UsageError(
                    f"Modality {m!r} has {arrays[m].shape[1]} features per participant; this model "
                    f"was fitted on {self.feature_dims_[m]}. Use the same features (atlas, edges) "
                    "as for fitting."
                )
        Xc = np.concatenate([arrays[m] for m in self.modalities_], axis=1)
        Z = self._standardise(Xc)
        if self.kind == "ridge":
            return Z @ self.coef_ + self.intercept_
        K = self.kernel_(self._project(Z), self.X_train_)
        return (K @ self.dual_coef_) * self.y_train_std_ + self.y_train_mean_

    # ------------------------------------------------------------- persistence
    def _bundle_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Return the fitted state as (JSON-able dict, float64 arrays) for the bundle."""
        check_is_fitted(self, "feature_dims_")
        state = {
            "modalities": list(self.modalities_),
            "feature_dims": dict(self.feature_dims_),
        }
        arrays = {"scaler.mean": self.scaler_mean_, "scaler.scale": self.scaler_scale_}
        if self.kind == "ridge":
            state |= {"intercept": self.intercept_, "alpha": self.alpha_}
            arrays["ridge.coef"] = self.coef_
        else:
            state |= {
                "n_components": self.n_components_, "kernel_params": dict(self.kernel_params_),
                "y_train_mean": self.y_train_mean_, "y_train_std": self.y_train_std_,
                "log_marginal_likelihood": self.log_marginal_likelihood_,
            }
            arrays |= {"pca.components": self.pca_components_, "pca.mean": self.pca_mean_,
                       "gpr.X_train": self.X_train_, "gpr.alpha": self.dual_coef_}
        return state, {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}

    def _set_bundle_state(self, state: Mapping, arrays: Mapping[str, np.ndarray],
                          training_summary: Mapping | None = None) -> ClassicalRegressor:
        """Restore the fitted attributes written by :meth:`_bundle_state` (KeyError if incomplete)."""
        if self.kind not in CLASSICAL_KINDS:
            raise ValueError(f"unknown classical kind {self.kind!r}")
        self.modalities_ = [str(m) for m in state["modalities"]]
        self.feature_dims_ = {m: int(state["feature_dims"][m]) for m in self.modalities_}
        self.input_shapes_ = {m: [d] for m, d in self.feature_dims_.items()}
        self.n_features_in_ = int(sum(self.feature_dims_.values()))
        self.scaler_mean_ = np.asarray(arrays["scaler.mean"], dtype=float)
        self.scaler_scale_ = np.asarray(arrays["scaler.scale"], dtype=float)
        shapes = {"scaler.mean": (self.n_features_in_,), "scaler.scale": (self.n_features_in_,)}
        if self.kind == "ridge":
            self.coef_ = np.asarray(arrays["ridge.coef"], dtype=float)
            self.intercept_ = float(state["intercept"])
            self.alpha_ = float(state["alpha"])
            shapes["ridge.coef"] = (self.n_features_in_,)
        else:
            self.n_components_ = int(state["n_components"])
            self.kernel_params_ = {k: float(state["kernel_params"][k])
                                   for k in ("constant_value", "length_scale", "noise_level")}
            self.kernel_ = self._kernel(**self.kernel_params_, fixed=True)
            self.y_train_mean_ = float(state["y_train_mean"])
            self.y_train_std_ = float(state["y_train_std"])
            self.log_marginal_likelihood_ = float(state["log_marginal_likelihood"])
            self.pca_components_ = np.asarray(arrays["pca.components"], dtype=float)
            self.pca_mean_ = np.asarray(arrays["pca.mean"], dtype=float)
            self.X_train_ = np.asarray(arrays["gpr.X_train"], dtype=float)
            self.dual_coef_ = np.asarray(arrays["gpr.alpha"], dtype=float)
            n_train = len(self.dual_coef_)
            shapes |= {"pca.components": (self.n_components_, self.n_features_in_),
                       "pca.mean": (self.n_features_in_,),
                       "gpr.X_train": (n_train, self.n_components_), "gpr.alpha": (n_train,)}
        for key, shape in shapes.items():
            if tuple(np.shape(arrays[key])) != shape:
                raise ValueError(f"array {key!r} has shape {np.shape(arrays[key])}, expected {shape}")
        self.training_summary_ = dict(training_summary or {})
        return self

