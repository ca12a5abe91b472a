"""ComBat harmonization of multi-site tabular features.

:class:`ComBat` removes additive and multiplicative site (batch) effects from
participants × features tables (regional volumes, connectivity edges, latent
vectors) while preserving the effects of biological covariates, following
Johnson, Li & Rabinovic (2007), *Biostatistics* 8:118, as R's
``sva::ComBat`` (3.46) implements it. For feature ``v`` of participant ``j`` at
site ``i``::

    y_ijv = alpha_v + x_ij' beta_v + sigma_v * (gamma_iv + delta_iv * eps_ijv),   eps ~ N(0, 1)

``alpha``, ``beta`` and ``sigma^2`` are estimated by least squares on
[site one-hot | covariates]; ``gamma`` and ``delta^2`` from the standardized
data ``z = (y - alpha - x'beta) / sigma``, shrunk across features by empirical
Bayes (parametric: normal and inverse-gamma priors, iterated as ``it.sol`` to a
relative change below 1e-4; non-parametric: the ``int.eprior`` mixture over the
other features). The harmonized value is
``sigma * (z - gamma*) / delta* + alpha + x'beta``.

Covariates named in ``nonlinear`` enter the design as a natural cubic spline
fitted on the training participants, linear outside the training range (the
ComBat-GAM idea of Pomponio et al. 2020, *NeuroImage* 208:116450).

Deviations from ``sva::ComBat``: features that are constant in the training
data (or in one site) raise an error instead of being passed through; sites
with one participant are refused instead of switching to ``mean.only``; the
non-parametric likelihoods are computed in log space (identical where R's
products neither underflow nor overflow); and the parameters are learned by
:meth:`ComBat.fit` and applied unchanged by :meth:`ComBat.transform`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from ..exceptions import StatsInputError
from ._validate import as_1d_float, as_labels, check_same_length

__all__ = ["ComBat", "natural_spline_basis"]

#: Fitted attributes, as stored by :meth:`ComBat.to_dict`.
_STATE = ("feature_names_in_", "n_features_in_", "categories_", "spline_knots_", "design_columns_",
          "batches_", "n_per_batch_", "reference_batch_", "beta_", "grand_mean_", "var_pooled_",
          "gamma_hat_", "delta_hat_", "gamma_star_", "delta_star_", "n_iter_")
_ARRAYS = ("beta_", "grand_mean_", "var_pooled_", "gamma_hat_", "delta_hat_", "gamma_star_", "delta_star_")
_MAX_ITER = 10_000  # it.sol has no cap; real data converge in well under 100 iterations


def natural_spline_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Natural cubic spline basis, without intercept, linear beyond the boundary knots.

    The truncated-power form of Hastie, Tibshirani & Friedman (2009, eq. 5.4-5.5)
    on ``x`` rescaled so that the boundary knots map to 0 and 1. It spans the same
    space as R's ``splines::ns(x, knots=knots[1:-1], Boundary.knots=knots[[0, -1]])``.

    Parameters
    ----------
    x : numpy.ndarray of shape (n,)
        Values (any range: outside the boundary knots the basis is linear).
    knots : numpy.ndarray of shape (K,)
        Strictly increasing knots, boundary knots first and last (K >= 2).

    Returns
    -------
    numpy.ndarray of shape (n, K - 1)
        One linear column followed by K - 2 cubic ones.

    Examples
    --------
    >>> b = natural_spline_basis(np.array([-10.0, 0.0, 5.0, 10.0, 20.0]), np.array([0.0, 5.0, 10.0]))
    >>> b.shape
    (5, 2)
    """
    lo, hi = knots[0], knots[-1]
    u = (np.asarray(x, dtype=float) - lo) / (hi - lo)
    k = (knots - lo) / (hi - lo)

    def d(j):
        return (np.clip(u - k[j], 0, None) ** 3 - np.clip(u - k[-1], 0, None) ** 3) / (k[-1] - k[j])

    cols = [u] + [d(j) - d(len(k) - 2) for j in range(len(k) - 2)]
    return np.column_stack(cols)


def _it_sol(sdat, g_hat, d_hat, g_bar, t2, a, b, conv=1e-4):
    """Parametric EB posterior of one batch, iterated as ``sva:::it.sol``."""
    n = sdat.shape[0]
    g_old, d_old = g_hat, d_hat
    for count in range(1, _MAX_ITER + 1):
        g_new = (t2 * n * g_hat + d_old * g_bar) / (t2 * n + d_old)
        d_new = (0.5 * ((sdat - g_new) ** 2).sum(axis=0) + b) / (n / 2 + a - 1)
        # As in sva, the relative change is divided by the signed previous value.
        change = max(np.max(np.abs(g_new - g_old) / g_old), np.max(np.abs(d_new - d_old) / d_old))
        g_old, d_old = g_new, d_new
        if not change > conv:
            return g_new, d_new, count
    warnings.warn(f"ComBat: parametric EB did not converge in {_MAX_ITER} iterations",
                  ConvergenceWarning, stacklevel=3)
    return g_new, d_new, _MAX_ITER


def _int_eprior(sdat, g_hat, d_hat, chunk=512):
    """Non-parametric EB of one batch, as ``sva:::int.eprior``, in log space.

    For feature ``i`` the posterior means weight the other features' ``(g, d)``
    by the likelihood of feature ``i``'s standardized data under ``N(g, d)``.
    """
    n, p = sdat.shape
    mean = sdat.mean(axis=0)
    ss = ((sdat - mean) ** 2).sum(axis=0)  # sum_k (x_ik - g_j)^2 = ss_i + n (mean_i - g_j)^2
    log_norm = -0.5 * n * np.log(2 * np.pi * d_hat)
    g_star, d_star = np.empty(p), np.empty(p)
    for start in range(0, p, chunk):
        rows = np.arange(start, min(start + chunk, p))
        sum2 = ss[rows, None] + n * (mean[rows, None] - g_hat[None, :]) ** 2
        loglh = log_norm[None, :] - sum2 / (2 * d_hat[None, :])
        loglh[np.arange(rows.size), rows] = -np.inf  # leave feature i out
        w = np.exp(loglh - loglh.max(axis=1, keepdims=True))
        g_star[rows] = w @ g_hat / w.sum(axis=1)
        d_star[rows] = w @ d_hat / w.sum(axis=1)
    return g_star, d_star


def _names(cols) -> str:
    cols = [c.item() if isinstance(c, np.generic) else c for c in cols]
    shown = ", ".join(repr(c) for c in cols[:10])
    return shown + (f" and {len(cols) - 10} more" if len(cols) > 10 else "")


class ComBat(BaseEstimator):
    """ComBat harmonization: learned on training participants, applied unchanged to others.

    Parameters
    ----------
    batch : str
        Column of ``covariates`` holding the site (batch) label.
    preserve : tuple of str
        Columns of ``covariates`` whose effects are kept. Numeric columns enter
        the design as they are (or as a spline, see ``nonlinear``); others
        (strings, categories, booleans) are dummy-coded, first sorted level dropped.
    nonlinear : tuple of str
        Numeric covariates of ``preserve`` modelled by a natural cubic spline
        (knots at training quantiles, linear outside the training range).
        ``()`` gives linear ComBat, as ``sva::ComBat(mod = model.matrix(~ age + sex))``.
    empirical_bayes : bool
        Shrink the site location/scale estimates across features (ComBat proper).
        ``False``: plain per-site location/scale adjustment.
    parametric : bool
        Parametric priors (``it.sol``) or non-parametric ones (``int.eprior``,
        cost quadratic in the number of features). Ignored without empirical Bayes.
    reference_batch : str or None
        Site left unchanged; the others are mapped onto it (mean and pooled
        variance are estimated from the reference site only).
    spline_df : int or None
        Degrees of freedom of each spline (``df`` of R's ``ns``: ``df + 1`` knots
        at the training quantiles ``0, 1/df, ..., 1``). ``None``: 4, or
        ``max(2, n // 25)`` below 100 training participants; reduced when
        tied values give fewer distinct knots.

    Attributes
    ----------
    batches_ : numpy.ndarray of str
        Sites seen at fit, sorted.
    n_per_batch_ : numpy.ndarray of int
        Training participants per site.
    reference_batch_ : str or None
        The reference site, as a label of ``batches_``.
    design_columns_ : list of str
        Names of the covariate columns of the design (after coding).
    categories_ : dict
        Levels seen at fit of each categorical covariate.
    spline_knots_ : dict
        Knots (original units) of each ``nonlinear`` covariate.
    beta_ : numpy.ndarray of shape (n_design_columns, n_features)
        Covariate coefficients.
    grand_mean_, var_pooled_ : numpy.ndarray of shape (n_features,)
        Site-free mean and pooled residual variance (``sigma^2``).
    gamma_hat_, delta_hat_, gamma_star_, delta_star_ : numpy.ndarray of shape (n_batches, n_features)
        Site location and squared scale (``delta^2``, as sva's ``delta.star``),
        raw and after empirical Bayes, in standardized units.
    n_iter_ : numpy.ndarray of int
        Parametric EB iterations per site (0 when not used).
    n_features_in_ : int
        Number of features.
    feature_names_in_ : numpy.ndarray of str
        Feature names, when ``X`` was a DataFrame with string column names.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cov = pd.DataFrame({"site": np.repeat(["a", "b"], 30), "age": rng.uniform(20, 80, 60),
    ...                     "sex": rng.choice(["F", "M"], 60)})
    >>> X = rng.normal(size=(60, 5)) + (cov["site"] == "b").to_numpy()[:, None]
    >>> ComBat(nonlinear=()).fit(X, cov).transform(X[:3], cov.iloc[:3]).shape
    (3, 5)
    """

    def __init__(self, batch="site", preserve=("age", "sex"), nonlinear=("age",), empirical_bayes=True,
                 parametric=True, reference_batch=None, spline_df=None):
        self.batch = batch
        self.preserve = preserve
        self.nonlinear = nonlinear
        self.empirical_bayes = empirical_bayes
        self.parametric = parametric
        self.reference_batch = reference_batch
        self.spline_df = spline_df

    # ------------------------------------------------------------------ inputs
    def _params(self):
        preserve = (self.preserve,) if isinstance(self.preserve, str) else tuple(self.preserve or ())
        nonlinear = (self.nonlinear,) if isinstance(self.nonlinear, str) else tuple(self.nonlinear or ())
        if self.batch in preserve:
            raise StatsInputError(f"preserve: the batch column {self.batch!r} cannot also be preserved")
        extra = [c for c in nonlinear if c not in preserve]
        if extra:
            raise StatsInputError(f"nonlinear: {_names(extra)} not in preserve={preserve}; "
                                  "nonlinear covariates must be a subset of preserve")
        if self.spline_df is not None and (int(self.spline_df) != self.spline_df or self.spline_df < 1):
            raise StatsInputError(f"spline_df: expected a positive integer or None, got {self.spline_df!r}")
        return preserve, nonlinear

    def _check_X(self, X, fitting: bool):
        """Return X as a float array, its column labels (DataFrame) and names for messages."""
        cols = None
        if isinstance(X, pd.DataFrame):
            cols = list(X.columns)
            if not fitting and hasattr(self, "feature_names_in_") and all(isinstance(c, str) for c in cols):
                expected = list(self.feature_names_in_)
                if sorted(cols) != sorted(expected):
                    missing = [c for c in expected if c not in cols] or ["none"]
                    unexpected = [c for c in cols if c not in expected] or ["none"]
                    raise StatsInputError(
                        f"X: features differ from those seen at fit (missing: {_names(missing)}; unexpected: "
                        f"{_names(unexpected)}); pass the {len(expected)} features the model was fitted on")
                X, cols = X[expected], expected
            nonnum = [c for c in cols if not pd.api.types.is_numeric_dtype(X[c])]
            if nonnum:
                raise StatsInputError(f"X: non-numeric feature column(s) {_names(nonnum)}; "
                                      "X must hold numbers only (covariates go in `covariates`)")
        arr = np.asarray(X, dtype=float)
        if arr.ndim != 2 or 0 in arr.shape:
            raise StatsInputError(f"X: expected a non-empty 2-D participants x features table, "
                                  f"got shape {arr.shape}")
        names = [str(c) for c in cols] if cols is not None else [f"feature {j}" for j in range(arr.shape[1])]
        bad = ~np.isfinite(arr)
        if bad.any():
            raise StatsInputError(
                f"X: NaN or infinite values in feature(s) {_names(np.asarray(names)[bad.any(axis=0)])} "
                f"({int(bad.any(axis=1).sum())} participant(s)); drop or impute them before harmonizing")
        if not fitting and arr.shape[1] != self.n_features_in_:
            raise StatsInputError(f"X: expected {self.n_features_in_} features (as at fit), "
                                  f"got {arr.shape[1]}")
        return arr, cols, np.asarray(names, dtype=object)

    def _check_covariates(self, X, covariates, preserve, n):
        if not isinstance(covariates, pd.DataFrame):
            raise StatsInputError(f"covariates: expected a pandas DataFrame with columns "
                                  f"{[self.batch, *preserve]}, got {type(covariates).__name__}")
        missing = [c for c in (self.batch, *preserve) if c not in covariates.columns]
        if missing:
            raise StatsInputError(f"covariates: missing column(s) {_names(missing)} (has "
                                  f"{_names(covariates.columns)}); add them or change batch/preserve")
        check_same_length(X=np.empty(n), covariates=covariates)
        if (isinstance(X, pd.DataFrame) and not X.index.equals(covariates.index)
                and set(X.index) == set(covariates.index)):
            raise StatsInputError("covariates: same participants as X but in a different order; "
                                  "pass covariates.loc[X.index]")
        for c in (self.batch, *preserve):
            na = covariates[c].isna().to_numpy()
            if na.any():
                raise StatsInputError(f"covariates: {int(na.sum())} missing value(s) in column {c!r}, first "
                                      f"at row {int(np.flatnonzero(na)[0])}; drop or fill those participants")
        return as_labels(self.batch, covariates[self.batch].to_numpy()), covariates

    def _design(self, cov, preserve, nonlinear, state=None):
        """Covariate columns of the design; ``state=None`` learns levels and knots (fit)."""
        fitting = state is None
        if fitting:
            state = {"categories_": {}, "spline_knots_": {}, "design_columns_": []}
        cats, knots_of, cols, names = state["categories_"], state["spline_knots_"], [], []
        for c in preserve:
            numeric = pd.api.types.is_numeric_dtype(cov[c]) and not pd.api.types.is_bool_dtype(cov[c])
            if (c in cats) if not fitting else not numeric:
                if c in nonlinear:
                    raise StatsInputError(f"nonlinear: covariate {c!r} is categorical; "
                                          "only numeric covariates can enter as splines")
                values = as_labels(c, cov[c].to_numpy())
                levels = cats.setdefault(c, sorted(set(values)))
                unseen = sorted(set(values) - set(levels))
                if unseen:
                    raise StatsInputError(f"covariates: column {c!r} has level(s) {_names(unseen)} not seen "
                                          f"at fit (levels: {_names(levels)}); refit including them")
                cols += [(values == lev).astype(float) for lev in levels[1:]]
                names += [f"{c}[{lev}]" for lev in levels[1:]]
                continue
            x = as_1d_float(c, cov[c].to_numpy())
            if c not in nonlinear:
                cols.append(x)
                names.append(c)
                continue
            if fitting:
                df = self.spline_df or (4 if x.size >= 100 else max(2, x.size // 25))
                knots_of[c] = np.unique(np.quantile(x, np.linspace(0, 1, int(df) + 1)))
                if knots_of[c].size < 2:
                    raise StatsInputError(f"covariates: {c!r} is constant in the training data; "
                                          "remove it from preserve")
            basis = natural_spline_basis(x, knots_of[c])
            cols += list(basis.T)
            names += [f"{c}_ns{k + 1}" for k in range(basis.shape[1])]
        state["design_columns_"] = names
        return (np.column_stack(cols) if cols else np.empty((cov.shape[0], 0))), state

    # --------------------------------------------------------------- estimator
    def fit(self, X, covariates):
        """Estimate the site effects on training participants.

        Parameters
        ----------
        X : pandas.DataFrame or array-like of shape (n_participants, n_features)
            Features of the training participants.
        covariates : pandas.DataFrame
            One row per participant (same order as ``X``), with the ``batch``
            column and the ``preserve`` columns.

        Returns
        -------
        ComBat
            ``self``, fitted.

        Raises
        ------
        StatsInputError
            On NaN, missing columns, length mismatch, fewer than two sites, a
            site with fewer than two participants, an unknown ``reference_batch``,
            a feature constant in the training data or within one site, or a
            design where covariates are confounded with site.
        """
        preserve, nonlinear = self._params()
        arr, cols, names = self._check_X(X, fitting=True)
        labels, cov = self._check_covariates(X, covariates, preserve, arr.shape[0])
        batches, idx, counts = np.unique(labels, return_inverse=True, return_counts=True)
        if batches.size < 2:
            raise StatsInputError(f"covariates[{self.batch!r}]: found one batch ({batches[0]!r}); "
                                  "ComBat needs at least two sites to harmonize")
        small = [f"{b!r} ({c})" for b, c in zip(batches, counts) if c < 2]
        if small:
            raise StatsInputError(f"covariates[{self.batch!r}]: batch(es) {', '.join(small)} have fewer than "
                                  "2 training participants; ComBat needs >= 2 (>= 25 in practice) per site")
        ref = None
        if self.reference_batch is not None:
            if str(self.reference_batch) not in batches:
                raise StatsInputError(f"reference_batch={self.reference_batch!r} is not a batch of the "
                                      f"training data (batches: {_names(batches)})")
            ref = int(np.flatnonzero(batches == str(self.reference_batch))[0])
        for where, rows in [("across the training participants", slice(None))] + [
                (f"within batch {b!r}", idx == i) for i, b in enumerate(batches)]:
            const = np.ptp(arr[rows], axis=0) == 0
            if const.any():
                raise StatsInputError(f"X: feature(s) {_names(names[const])} are constant {where} (zero "
                                      "variance breaks the standardization and the variance pooling); "
                                      "drop them before harmonizing")
        if self.empirical_bayes and arr.shape[1] < 2:
            raise StatsInputError("X: empirical Bayes pools over features and needs at least 2, got 1; "
                                  "pass more features or empirical_bayes=False")

        covmat, state = self._design(cov, preserve, nonlinear)
        onehot = (idx[:, None] == np.arange(batches.size)[None, :]).astype(float)
        design = np.hstack([onehot, covmat])
        if np.linalg.matrix_rank(design) < design.shape[1]:
            terms = ", ".join([self.batch, *state["design_columns_"]])
            raise StatsInputError(f"covariates: the design [{terms}] is rank deficient: a covariate is "
                                  "constant or confounded with site; remove it from preserve (or lower "
                                  "spline_df)")
        coef = np.linalg.lstsq(design, arr, rcond=None)[0]
        resid = arr - design @ coef
        if ref is None:
            grand_mean = counts / counts.sum() @ coef[: batches.size]
            var_pooled = np.mean(resid**2, axis=0)
        else:
            grand_mean = coef[ref]
            var_pooled = np.mean(resid[idx == ref] ** 2, axis=0)
        beta = coef[batches.size:]
        sdat = (arr - grand_mean - covmat @ beta) / np.sqrt(var_pooled)

        k, p = batches.size, arr.shape[1]
        gamma_hat, delta_hat = np.empty((k, p)), np.empty((k, p))
        for i in range(k):
            gamma_hat[i] = sdat[idx == i].mean(axis=0)
            delta_hat[i] = sdat[idx == i].var(axis=0, ddof=1)
        gamma_star, delta_star = gamma_hat.copy(), delta_hat.copy()
        n_iter = np.zeros(k, dtype=int)
        if self.empirical_bayes:
            for i in range(k):
                s = sdat[idx == i]
                if self.parametric:
                    m, v = delta_hat[i].mean(), delta_hat[i].var(ddof=1)
                    a, b = (2 * v + m**2) / v, (m * v + m**3) / v  # sva:::aprior, bprior
                    gamma_star[i], delta_star[i], n_iter[i] = _it_sol(
                        s, gamma_hat[i], delta_hat[i], gamma_hat[i].mean(), gamma_hat[i].var(ddof=1), a, b)
                else:
                    gamma_star[i], delta_star[i] = _int_eprior(s, gamma_hat[i], delta_hat[i])
        if ref is not None:
            gamma_star[ref], delta_star[ref] = 0.0, 1.0

        if cols is not None and all(isinstance(c, str) for c in cols):
            self.feature_names_in_ = np.asarray(cols, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.n_features_in_ = arr.shape[1]
        for key, value in state.items():
            setattr(self, key, value)
        self.batches_, self.n_per_batch_ = batches.astype(object), counts
        self.reference_batch_ = None if ref is None else batches[ref]
        self.beta_, self.grand_mean_, self.var_pooled_ = beta, grand_mean, var_pooled
        self.gamma_hat_, self.delta_hat_ = gamma_hat, delta_hat
        self.gamma_star_, self.delta_star_, self.n_iter_ = gamma_star, delta_star, n_iter
        return self

    def transform(self, X, covariates):
        """Harmonize participants with the parameters learned at fit (nothing is refitted).

        Parameters
        ----------
        X : pandas.DataFrame or array-like of shape (n_participants, n_features)
            Features; any participants, any subset of the fitted sites.
        covariates : pandas.DataFrame
            One row per participant, with the ``batch`` and ``preserve`` columns.

        Returns
        -------
        pandas.DataFrame or numpy.ndarray
            Harmonized features, a DataFrame with the index and columns of ``X``
            when ``X`` is one, an array otherwise. Each row depends on its own
            row of ``X`` and ``covariates`` only; rows of the reference batch are
            returned unchanged.

        Raises
        ------
        StatsInputError
            On a site or categorical level not seen at fit, NaN, missing columns,
            length mismatch, or features that differ from those seen at fit.
        """
        check_is_fitted(self)
        preserve, nonlinear = self._params()
        arr, cols, _ = self._check_X(X, fitting=False)
        labels, cov = self._check_covariates(X, covariates, preserve, arr.shape[0])
        unseen = sorted(set(labels) - set(self.batches_))
        if unseen:
            raise StatsInputError(f"covariates[{self.batch!r}]: batch(es) {_names(unseen)} not seen at fit "
                                  f"(fitted batches: {_names(self.batches_)}); ComBat cannot harmonize a "
                                  "site it has no training participants from: refit including that site")
        idx = np.searchsorted(self.batches_.astype(str), labels.astype(str))
        covmat, _ = self._design(cov, preserve, nonlinear, {k: getattr(self, k) for k in (
            "categories_", "spline_knots_", "design_columns_")})
        stand_mean = self.grand_mean_ + covmat @ self.beta_
        sd = np.sqrt(self.var_pooled_)
        out = ((arr - stand_mean) / sd - self.gamma_star_[idx]) / np.sqrt(self.delta_star_[idx])
        out = out * sd + stand_mean
        if self.reference_batch_ is not None:
            is_ref = labels == self.reference_batch_
            out[is_ref] = arr[is_ref]
        if isinstance(X, pd.DataFrame):
            return pd.DataFrame(out, index=X.index, columns=cols)[X.columns]
        return out

    # ----------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        """Return the parameters and fitted state as JSON-serialisable data.

        Returns
        -------
        dict
            ``{"params": ..., "state": ...}`` with arrays as nested lists; read
            back with :meth:`from_dict` (the model bundle stores this, never a
            pickle).
        """
        check_is_fitted(self)
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()}
        state = {}
        for key in _STATE:
            if not hasattr(self, key):
                continue
            value = getattr(self, key)
            if key == "spline_knots_":
                value = {c: np.asarray(k).tolist() for c, k in value.items()}
            elif isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            state[key] = value
        return {"params": params, "state": state}

    @classmethod
    def from_dict(cls, data: dict) -> ComBat:
        """Rebuild a fitted ComBat from :meth:`to_dict` output.

        Parameters
        ----------
        data : dict
            As written by :meth:`to_dict`.

        Returns
        -------
        ComBat

        Raises
        ------
        StatsInputError
            When a field is missing or malformed.
        """
        try:
            params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data["params"].items()}
            obj = cls(**params)
            state = dict(data["state"])
            missing = [k for k in _STATE if k not in state and k != "feature_names_in_"]
            if missing:
                raise KeyError(", ".join(missing))
            for key, value in state.items():
                if key not in _STATE:
                    raise KeyError(f"unknown field {key}")
                if key == "spline_knots_":
                    value = {c: np.asarray(k, dtype=float) for c, k in value.items()}
                elif key in ("feature_names_in_", "batches_"):
                    value = np.asarray(value, dtype=object)
                elif key in ("n_per_batch_", "n_iter_"):
                    value = np.asarray(value, dtype=int)
                elif key in _ARRAYS:
                    value = np.asarray(value, dtype=float)
                setattr(obj, key, value)
            obj._params()
        except (KeyError, TypeError, ValueError) as exc:
            raise StatsInputError(
                f"ComBat: the stored state lacks or mangles {exc}; refit the harmonization"
            ) from None
        return obj

    def fit_transform(self, X, covariates):
        """Fit on ``X`` and return it harmonized: ``fit(X, covariates).transform(X, covariates)``.

        Parameters
        ----------
        X, covariates
            As for :meth:`fit`.

        Returns
        -------
        pandas.DataFrame or numpy.ndarray
            Harmonized features, of the type of ``X``.
        """
        return self.fit(X, covariates).transform(X, covariates)
