"""Age-bias correction of brain-age predictions.

Brain-age models regress towards the mean age of their training sample: the
young look older and the old look younger, so the gap ``δ = ŷ − y`` correlates
negatively with age (Le et al. 2018, Front. Psychiatry 9:35; Smith et al. 2019,
NeuroImage 200:528). The corrections below remove that dependence, fitted on
**controls' out-of-sample predictions** inside the training folds and applied
unchanged to everyone else (held-out controls, patients, a new cohort):

``"cole"`` (Cole et al. 2018, Mol. Psychiatry 23:1385)
    fit ``ŷ = α·y + β`` and return ``ŷ_c = (ŷ − β) / α``.
``"delange_cole"`` (de Lange & Cole 2020, NeuroImage Clin. 26:102229; the same
corrected gap as Beheshti et al. 2019, NeuroImage Clin. 24:102063)
    fit ``ŷ = α·y + β`` and return ``ŷ_c = ŷ + y − (α·y + β)``, so that
    ``δ_c = δ − ((α − 1)·y + β)``.
``"smith"`` (Smith et al. 2019)
    fit a polynomial ``p`` of ``degree`` in ``y`` to ``δ`` and return
    ``ŷ_c = ŷ − p(y)``: the corrected gap is the residual. With ``degree=1``
    it equals ``"delange_cole"`` in the gap.
``"none"``
    the identity, for the covariate approach where age terms enter the group
    model instead (``δ ~ group + age + age² + …``).

With ``by_site=True`` one correction is fitted per site on that site's
controls. A site with fewer than ``min_site_controls`` (15) controls or an age
range below ``min_site_age_range`` (5 years) gets a median offset instead,
``ŷ_c = ŷ − median(δ)`` over its controls (the rule of Gaser's BrainAGE), and
:attr:`AgeBiasCorrection.fallbacks_` records which sites fell back and why.

The corrections use the chronological age of the person being corrected: the
corrected gap is a residual, not a prediction, and metrics of corrected
predictions must never be quoted as accuracy (de Lange et al. 2022).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ..exceptions import StatsInputError
from ._validate import as_1d_float, as_labels, check_same_length

__all__ = ["METHODS", "AgeBiasCorrection"]

#: The correction methods, by name.
METHODS = ("cole", "delange_cole", "smith", "none")
#: Fewest points a correction is fitted on.
MIN_POINTS = 10
_POOLED = "pooled"


def _fit_one(method: str, degree: int, y: np.ndarray, yhat: np.ndarray) -> dict:
    """Fit one correction; return its parameters as plain floats."""
    if method == "none":
        return {"kind": "none"}
    if method in ("cole", "delange_cole"):
        alpha, beta = np.polyfit(y, yhat, 1)
        if method == "cole" and alpha <= 0:
            raise StatsInputError(
                f"predicted_age: the fitted slope of predicted on chronological age is {alpha:.3g}; "
                "Cole's correction divides by it and needs a positive slope. The predictions do not "
                "follow age: check the model, or use method='delange_cole' or 'smith'"
            )
        return {"kind": "linear", "alpha": float(alpha), "beta": float(beta)}
    center, scale = float(y.mean()), float(y.std())
    coef = np.polynomial.polynomial.polyfit((y - center) / scale, yhat - y, degree)
    return {"kind": "polynomial", "center": center, "scale": scale, "coef": [float(c) for c in coef]}


def _fit_median(y: np.ndarray, yhat: np.ndarray) -> dict:
    return {"kind": "median_offset", "offset": float(np.median(yhat - y))}


def _apply(method: str, params: dict, y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    kind = params["kind"]
    if kind == "none":
        return yhat.copy()
    if kind == "median_offset":
        return yhat - params["offset"]
    if kind == "polynomial":
        x = (y - params["center"]) / params["scale"]
        return yhat - np.polynomial.polynomial.polyval(x, params["coef"])
    alpha, beta = params["alpha"], params["beta"]
    if method == "cole":
        return (yhat - beta) / alpha
    return yhat + y - (alpha * y + beta)


class AgeBiasCorrection(BaseEstimator):
    """Remove the dependence of the brain-age gap on chronological age.

    Parameters
    ----------
    method : {"delange_cole", "cole", "smith", "none"}
        The correction (see the module documentation for formulas and
        citations).
    degree : int
        Degree of the polynomial in age for ``method="smith"`` (1–5).
    by_site : bool
        Fit one correction per site on that site's controls.
    min_site_controls : int
        With ``by_site``, a site with fewer controls falls back to a median
        offset.
    min_site_age_range : float
        With ``by_site``, a site whose controls span fewer years falls back to
        a median offset.
    unseen_site : {"error", "pooled"}
        At transform time, a site that was not fitted is an error naming it
        (``"error"``) or is corrected with the fit on all controls
        (``"pooled"``, with a warning; :meth:`transform_table` says which
        correction each participant got).

    Attributes
    ----------
    pooled_ : dict
        Parameters of the correction fitted on all controls.
    site_params_ : dict
        With ``by_site``, site → parameters.
    fallbacks_ : dict
        With ``by_site``, site → why it got a median offset.
    n_fit_ : int
        Number of controls the correction was fitted on.
    sites_ : list of str
        With ``by_site``, the fitted sites.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> age = rng.uniform(20, 80, 200)
    >>> pred = 0.6 * age + 20 + rng.normal(0, 4, 200)      # regression to the mean
    >>> corr = AgeBiasCorrection().fit(age, pred)
    >>> round(corr.pooled_["alpha"], 1)
    0.6
    >>> gap = corr.transform(age, pred) - age
    >>> bool(abs(np.corrcoef(gap, age)[0, 1]) < 1e-6)
    True
    """

    def __init__(
        self,
        method: str = "delange_cole",
        degree: int = 1,
        by_site: bool = False,
        *,
        min_site_controls: int = 15,
        min_site_age_range: float = 5.0,
        unseen_site: str = "error",
    ):
        self.method = method
        self.degree = degree
        self.by_site = by_site
        self.min_site_controls = min_site_controls
        self.min_site_age_range = min_site_age_range
        self.unseen_site = unseen_site

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise StatsInputError(
                f"method: {self.method!r} is not a bias-correction method; choose one of {', '.join(METHODS)}"
            )
        if int(self.degree) != self.degree or not 1 <= self.degree <= 5:
            raise StatsInputError(f"degree: expected an integer from 1 to 5, got {self.degree!r}")
        if self.unseen_site not in ("error", "pooled"):
            raise StatsInputError(
                f"unseen_site: expected 'error' or 'pooled', got {self.unseen_site!r}"
            )

    def _inputs(self, age, predicted_age, site, *, needs_site: bool):
        y = as_1d_float("age", age)
        yhat = as_1d_float("predicted_age", predicted_age)
        labels = None if site is None else as_labels("site", site)
        check_same_length(age=y, predicted_age=yhat, site=labels)
        if needs_site and labels is None:
            raise StatsInputError(
                "site: by_site=True needs the site of every participant; pass site=..."
            )
        return y, yhat, labels

    # --------------------------------------------------------------------- fit
    def fit(self, age, predicted_age, *, site=None) -> AgeBiasCorrection:
        """Fit the correction on controls' out-of-sample predictions.

        Parameters
        ----------
        age : array-like of shape (n,)
            Chronological ages of the controls.
        predicted_age : array-like of shape (n,)
            Their out-of-sample predicted ages (never in-sample fits: those
            carry a different bias).
        site : array-like of shape (n,), optional
            Site labels; required with ``by_site=True``.

        Returns
        -------
        AgeBiasCorrection
            ``self``.

        Raises
        ------
        StatsInputError
            On fewer than 10 points, no age variance, NaN, a length mismatch,
            a missing site with ``by_site``, or (Cole) a non-positive slope.
        """
        self._check_params()
        y, yhat, labels = self._inputs(age, predicted_age, site, needs_site=self.by_site)
        if self.method != "none":
            if y.size < MIN_POINTS:
                raise StatsInputError(
                    f"age: a bias correction needs at least {MIN_POINTS} controls, got {y.size}; "
                    "use method='none' and age covariates in the group model for tiny samples"
                )
            if np.ptp(y) == 0:
                raise StatsInputError(
                    f"age: all {y.size} controls have the same age ({y[0]:g}); a bias correction "
                    "needs age variance"
                )
        self.pooled_ = _fit_one(self.method, self.degree, y, yhat)
        self.n_fit_ = int(y.size)
        self.site_params_: dict[str, dict] = {}
        self.fallbacks_: dict[str, str] = {}
        self.sites_: list[str] = []
        if self.by_site:
            for s in sorted(set(labels)):
                mask = labels == s
                ys, ps = y[mask], yhat[mask]
                reasons = []
                if ys.size < self.min_site_controls:
                    reasons.append(f"{ys.size} controls (fewer than {self.min_site_controls})")
                if np.ptp(ys) < self.min_site_age_range:
                    reasons.append(
                        f"age range {np.ptp(ys):.1f} years (less than {self.min_site_age_range:g})"
                    )
                if self.method == "none":
                    self.site_params_[s] = {"kind": "none"}
                elif reasons:
                    self.site_params_[s] = _fit_median(ys, ps)
                    self.fallbacks_[s] = "median offset: " + "; ".join(reasons)
                else:
                    self.site_params_[s] = _fit_one(self.method, self.degree, ys, ps)
            self.sites_ = sorted(self.site_params_)
        return self

    # --------------------------------------------------------------- transform
    def _route(self, labels, n: int) -> list[str]:
        """Which fit corrects each participant: a site label or ``"pooled"``."""
        if not self.by_site:
            return [_POOLED] * n
        unseen = sorted(set(labels) - set(self.site_params_))
        if unseen and self.unseen_site == "error":
            raise StatsInputError(
                f"site: {', '.join(map(repr, unseen))} not among the fitted sites "
                f"({', '.join(self.sites_)}); fit on controls of that site, or set "
                "unseen_site='pooled' to correct it with the fit on all controls"
            )
        if unseen:
            warnings.warn(
                f"sites {', '.join(unseen)} were not fitted; corrected with the pooled fit",
                UserWarning,
                stacklevel=3,
            )
        return [s if s in self.site_params_ else _POOLED for s in labels]

    def transform_table(self, age, predicted_age, *, site=None) -> pd.DataFrame:
        """Correct predictions and say which correction each one got.

        Parameters
        ----------
        age, predicted_age, site : array-like of shape (n,)
            As in :meth:`fit` (``site`` required when fitted with ``by_site``).

        Returns
        -------
        pandas.DataFrame
            ``age``, ``predicted_age``, ``predicted_age_corrected``, ``gap``,
            ``gap_corrected`` and ``correction`` (``"pooled"``,
            ``"site <s>"``, ``"site <s>, median offset: …"`` or
            ``"pooled (site <s> not fitted)"``).
        """
        check_is_fitted(self, "pooled_")
        y, yhat, labels = self._inputs(age, predicted_age, site, needs_site=self.by_site)
        route = np.array(self._route(labels, y.size), dtype=object)
        corrected = np.empty_like(yhat)
        notes = np.empty(y.size, dtype=object)
        for key in dict.fromkeys(route):
            mask = route == key
            params = self.pooled_ if key == _POOLED else self.site_params_[key]
            corrected[mask] = _apply(self.method, params, y[mask], yhat[mask])
            if key != _POOLED:
                notes[mask] = f"site {key}" + (f", {self.fallbacks_[key]}" if key in self.fallbacks_ else "")
            elif self.by_site:
                notes[mask] = [f"pooled (site {s} not fitted)" for s in labels[mask]]
            else:
                notes[mask] = _POOLED
        return pd.DataFrame(
            {
                "age": y,
                "predicted_age": yhat,
                "predicted_age_corrected": corrected,
                "gap": yhat - y,
                "gap_corrected": corrected - y,
                "correction": notes,
            }
        )

    def transform(self, age, predicted_age, *, site=None) -> np.ndarray:
        """Return the corrected predicted ages (``gap_corrected = returned − age``).

        Parameters
        ----------
        age, predicted_age, site : array-like of shape (n,)
            As in :meth:`fit`; the participants may be anyone (held-out
            controls, patients, a new cohort).

        Returns
        -------
        numpy.ndarray of shape (n,)

        Raises
        ------
        StatsInputError
            On bad input, or a site that was not fitted (with
            ``unseen_site="error"``).
        """
        return self.transform_table(age, predicted_age, site=site)["predicted_age_corrected"].to_numpy()

    def fit_transform(self, age, predicted_age, *, site=None) -> np.ndarray:
        """Fit on these controls and return their corrected predicted ages.

        Parameters
        ----------
        age, predicted_age, site : array-like of shape (n,)
            As in :meth:`fit`.

        Returns
        -------
        numpy.ndarray of shape (n,)
        """
        return self.fit(age, predicted_age, site=site).transform(age, predicted_age, site=site)

    # ----------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        """Return the parameters and fitted state as JSON-serialisable data.

        Returns
        -------
        dict
            Read back with :meth:`from_dict` (the model bundle stores this;
            never a pickle).
        """
        check_is_fitted(self, "pooled_")
        return {
            "params": self.get_params(),
            "pooled": self.pooled_,
            "site_params": self.site_params_,
            "fallbacks": self.fallbacks_,
            "n_fit": self.n_fit_,
        }

    @classmethod
    def from_dict(cls, data: dict) -> AgeBiasCorrection:
        """Rebuild a fitted correction from :meth:`to_dict` output.

        Parameters
        ----------
        data : dict
            As written by :meth:`to_dict`.

        Returns
        -------
        AgeBiasCorrection

        Raises
        ------
        StatsInputError
            When ``data`` lacks a field or holds an unknown method.
        """
        try:
            obj = cls(**data["params"])
            obj._check_params()
            obj.pooled_ = dict(data["pooled"])
            obj.site_params_ = {str(k): dict(v) for k, v in data["site_params"].items()}
            obj.fallbacks_ = {str(k): str(v) for k, v in data["fallbacks"].items()}
            obj.n_fit_ = int(data["n_fit"])
        except (KeyError, TypeError) as exc:
            raise StatsInputError(
                f"bias correction: the stored state lacks or mangles {exc}; refit the correction"
            ) from None
        obj.sites_ = sorted(obj.site_params_)
        return obj
