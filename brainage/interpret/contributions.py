"""Per-participant modality contributions of a fitted PIDReg model.

Three explanations of one participant's prediction (``docs/interpret.md``):

* :func:`fusion_shapley`: exact Shapley values of the predicted age over the
  **fusion terms** of PIDReg, one per modality (``w_m z_m``) and one per pair
  (``w_pq (z_p ⊙ z_q)``), relative to a baseline where every term sits at its
  value at the training-mean latents. Synergy terms are players of their own.
* :func:`modality_shapley`: exact Shapley values over the **modalities**, a
  left-out modality's latent being replaced by its training mean (the semantic
  of ``PIDRegressor.predict(X, modalities=...)``). A pair's synergy term is
  shared between its two modalities.
* :func:`local_information`: pointwise mutual information (bits) of each
  participant's Gaussianised age with each modality's latent, and with all
  latents together, under a Gaussian model fitted on reference participants.
  Its mean over the reference participants is the plug-in ``I(y_g; z_m)``.

Both Shapley decompositions are exact (all ``2^K`` coalitions are evaluated, see
:func:`exact_shapley`), so ``baseline_age + Σ shap_* = predicted_age`` for every
participant up to floating-point rounding. Importing this module does not load
torch (the Shapley functions do).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from brainage.estimators.regressor import PIDRegressor
from brainage.exceptions import UsageError
from brainage.pid import inverse_normal_transform

__all__ = [
    "MAX_PLAYERS",
    "exact_shapley",
    "fusion_shapley",
    "gaussianize_like",
    "local_information",
    "local_information_from_latents",
    "modality_shapley",
]

logger = logging.getLogger(__name__)

#: Largest number of players :func:`exact_shapley` enumerates (2^10 = 1024 coalitions).
MAX_PLAYERS = 10

# Latent covariance treated as singular when its smallest eigenvalue is below this
# fraction of its largest; a ridge of _RIDGE × (mean latent variance) is then added.
_SINGULAR_RTOL = 1e-10
_RIDGE = 1e-6


# --------------------------------------------------------------------------
# Shapley values
# --------------------------------------------------------------------------


def exact_shapley(
    value_fn: Callable[[tuple], object],
    players: Sequence[Hashable],
    *,
    max_players: int = MAX_PLAYERS,
) -> tuple[dict, object, object]:
    """Compute exact Shapley values of a cooperative game by enumerating all coalitions.

    The Shapley value of player ``i`` is
    ``φ_i = Σ_{S ⊆ N∖{i}} |S|! (K − |S| − 1)! / K! · (v(S ∪ {i}) − v(S))``.
    Each of the ``2^K`` coalitions is evaluated once and its value is added to
    every player's sum with that player's weight, so nothing but the running
    sums is stored. The values satisfy efficiency exactly (up to rounding):
    ``Σ_i φ_i = v(N) − v(∅)``.

    Parameters
    ----------
    value_fn : callable
        ``value_fn(coalition)`` with ``coalition`` a tuple of players (in the
        order of ``players``; ``()`` for the empty coalition) returns the value:
        a number, or an array of values (e.g. one per participant) of the same
        shape for every coalition.
    players : sequence of hashable
        The distinct players.
    max_players : int
        Refuse games with more players (the cost is ``2^K`` evaluations).

    Returns
    -------
    values : dict
        Shapley value per player (a float, or an array of ``value_fn``'s shape).
    empty : float or numpy.ndarray
        ``v(∅)``.
    full : float or numpy.ndarray
        ``v(N)``.

    Raises
    ------
    UsageError
        If there are more than ``max_players`` players.
    ValueError
        If there are no players or a player is repeated.

    Examples
    --------
    >>> values, empty, full = exact_shapley(lambda s: float(len(s) == 2), ["a", "b"])
    >>> values
    {'a': 0.5, 'b': 0.5}
    """
    players = list(players)
    k = len(players)
    if k == 0:
        raise ValueError("exact_shapley needs at least one player.")
    if len(set(players)) != k:
        raise ValueError(f"exact_shapley: players must be distinct, got {players}.")
    _check_n_players(k, max_players)
    fact = math.factorial
    # weight[s]: weight of a coalition of size s that does not contain the player.
    weight = [fact(s) * fact(k - s - 1) / fact(k) for s in range(k)]
    empty = np.asarray(value_fn(()), dtype=float)
    phi = [np.zeros_like(empty) for _ in range(k)]
    full = empty
    for mask in range(1, 2**k):
        coalition = tuple(p for j, p in enumerate(players) if mask >> j & 1)
        v = np.asarray(value_fn(coalition), dtype=float)
        if v.shape != empty.shape:
            raise ValueError(
                f"exact_shapley: value_fn returned shape {v.shape} for {coalition}, "
                f"but {empty.shape} for the empty coalition."
            )
        if mask == 2**k - 1:
            full = v
        # Centre on v(∅) (Shapley values are unchanged) to limit cancellation.
        dv = v - empty
        s = len(coalition)
        for j in range(k):
            if mask >> j & 1:
                phi[j] += weight[s - 1] * dv
            else:
                phi[j] -= weight[s] * dv

    def out(a):
        return float(a) if a.ndim == 0 else a

    return {p: out(phi[j]) for j, p in enumerate(players)}, out(empty), out(full)


def _check_n_players(k: int, max_players: int = MAX_PLAYERS) -> None:
    if k > max_players:
        raise UsageError(
            f"Exact Shapley values over {k} players need 2^{k} = {2**k} evaluations; at most "
            f"{max_players} players are enumerated. Use fewer modalities (fusion terms grow "
            "as M + M(M − 1)/2), or modality_shapley instead of fusion_shapley."
        )


def _check_pidreg(estimator) -> None:
    """Refuse anything but a fitted PIDRegressor (baselines have no PIDReg fusion)."""
    if not isinstance(estimator, PIDRegressor):
        raise UsageError(
            f"Per-participant contributions need a fitted PIDRegressor, got "
            f"{type(estimator).__name__}: baselines (unimodal, early, late fusion) and "
            "classical models have no PID-weighted fusion terms to decompose."
        )
    from brainage.models.pidreg import PIDReg

    if not isinstance(getattr(estimator, "model_", None), PIDReg):
        raise UsageError(
            "This PIDRegressor is not fitted; call fit(X, y) or load a model bundle first."
        )


def _shapley_frame(estimator, X, *, game: str, batch_size: int) -> pd.DataFrame:
    """Run the fusion-term or modality game batch by batch on the CPU."""
    import torch

    from brainage.models.pidreg import pair_key

    _check_pidreg(estimator)
    if int(batch_size) < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size}.")
    model = estimator.model_
    mods = list(model.modalities)
    keys = [pair_key(p) for p in model.pairs]
    k = len(mods)
    players = mods + keys if game == "fusion" else mods
    _check_n_players(len(players))  # refuse before running the encoders
    # The public transform() runs the encoders exactly as predict() does: the estimator's own
    # input checks and standardisation (_check_X / _scaled), eval mode, no grad, its inference
    # device and batch size. Only the cheap fusion + predictor part is re-run here, on the CPU.
    lat = estimator.transform(X)
    n = lat[mods[0]].shape[0]
    scale, shift = float(estimator.y_scale_), float(estimator.y_mean_)
    was_training = model.training
    model.to("cpu").eval()
    w = model.fusion_weights
    mu = {m: model.latent_mean[i] for i, m in enumerate(mods)}
    parts = []
    try:
        with torch.no_grad():
            for start in range(0, n, int(batch_size)):
                z = {m: torch.from_numpy(np.ascontiguousarray(lat[m][start:start + int(batch_size)]))
                     for m in mods}
                b = z[mods[0]].shape[0]
                base = {m: mu[m].to(z[m].dtype).expand(b, -1) for m in mods}

                def years(fused):
                    pred = model.predictor(fused).squeeze(-1)
                    return pred.float().cpu().numpy().astype(float) * scale + shift

                if game == "fusion":
                    # Same operations, in the same order, as PIDReg.forward.
                    here = {m: w[i] * z[m] for i, m in enumerate(mods)}
                    away = {m: w[i] * base[m] for i, m in enumerate(mods)}
                    for j, (p, q) in enumerate(model.pairs):
                        here[keys[j]] = w[k + j] * (z[p] * z[q])
                        away[keys[j]] = w[k + j] * (base[p] * base[q])

                    def value(coalition, here=here, away=away):
                        chosen = set(coalition)
                        return years(sum(here[t] if t in chosen else away[t] for t in players))
                else:
                    def value(coalition, z=z, base=base):
                        chosen = set(coalition)
                        full = {m: z[m] if m in chosen else base[m] for m in mods}
                        fused = sum(w[i] * full[m] for i, m in enumerate(mods))
                        for j, (p, q) in enumerate(model.pairs):
                            fused = fused + w[k + j] * (full[p] * full[q])
                        return years(fused)

                parts.append(exact_shapley(value, players))
    finally:
        model.train(was_training)
    cols = {"baseline_age": np.concatenate([np.atleast_1d(p[1]) for p in parts])}
    for t in players:
        cols[f"shap_{t}"] = np.concatenate([np.atleast_1d(p[0][t]) for p in parts])
    cols["predicted_age"] = np.concatenate([np.atleast_1d(p[2]) for p in parts])
    return pd.DataFrame(cols)


def fusion_shapley(estimator, X, *, batch_size: int = 256) -> pd.DataFrame:
    """Split each participant's predicted age into exact Shapley values over PIDReg's fusion terms.

    PIDReg predicts ``predictor(Σ_m w_m z_m + Σ_{p<q} w_pq (z_p ⊙ z_q))``. The
    players are its ``K = M + M(M − 1)/2`` fusion terms: ``w_m z_m`` (named by
    the modality, ``"anat"``) and ``w_pq (z_p ⊙ z_q)`` (named by the pair,
    ``"anat|func"``). A term outside a coalition takes its baseline value, the
    value at the training-mean latents ``μ`` (``w_m μ_m``, ``w_pq μ_p ⊙ μ_q``);
    the value of a coalition is the predictor's output on the resulting fused
    vector, in years. All ``2^K`` coalitions are evaluated (``K ≤ 10``, i.e. up
    to four modalities).

    Parameters
    ----------
    estimator : PIDRegressor
        A fitted PIDReg estimator (baselines are refused).
    X : dict of str to array-like or dataset
        Every modality of the model, as :meth:`PIDRegressor.predict` takes it.
    batch_size : int
        Participants evaluated at once by the predictor (on the CPU).

    Returns
    -------
    pandas.DataFrame
        One row per participant, in X's order: ``baseline_age`` (value of the
        empty coalition, years, the same for everyone), ``shap_<term>`` (years)
        per modality and per pair, and ``predicted_age`` (equal to
        ``estimator.predict(X)``). ``baseline_age + Σ shap_* = predicted_age``.

    Raises
    ------
    UsageError
        For an estimator that is not a fitted PIDRegressor, inputs ``predict``
        would refuse, or more than 10 fusion terms (five or more modalities).

    Examples
    --------
    >>> df = fusion_shapley(reg, X)  # doctest: +SKIP
    >>> list(df.columns)  # doctest: +SKIP
    ['baseline_age', 'shap_anat', 'shap_func', 'shap_anat|func', 'predicted_age']
    """
    return _shapley_frame(estimator, X, game="fusion", batch_size=batch_size)


def modality_shapley(estimator, X, *, batch_size: int = 256) -> pd.DataFrame:
    """Split each participant's predicted age into exact Shapley values over the modalities.

    The value of a set ``S`` of modalities is the prediction with the latents of
    the modalities outside ``S`` replaced by their training means, which is
    ``estimator.predict(X, modalities=S)``; the empty set puts every latent at
    its mean (the same baseline as :func:`fusion_shapley`). A pair's synergy
    term ``w_pq (z_p ⊙ z_q)`` is thus shared between its two modalities (as is
    any interaction through the non-linear predictor).

    Parameters
    ----------
    estimator : PIDRegressor
        A fitted PIDReg estimator (baselines are refused).
    X : dict of str to array-like or dataset
        Every modality of the model, as :meth:`PIDRegressor.predict` takes it.
    batch_size : int
        Participants evaluated at once by the predictor (on the CPU).

    Returns
    -------
    pandas.DataFrame
        One row per participant, in X's order: ``baseline_age`` (years, the same
        for everyone), ``shap_<modality>`` (years) and ``predicted_age`` (equal
        to ``estimator.predict(X)``). ``baseline_age + Σ shap_* = predicted_age``.

    Raises
    ------
    UsageError
        For an estimator that is not a fitted PIDRegressor, inputs ``predict``
        would refuse, or more than 10 modalities.
    """
    return _shapley_frame(estimator, X, game="modality", batch_size=batch_size)


# --------------------------------------------------------------------------
# Local (pointwise) mutual information
# --------------------------------------------------------------------------


def gaussianize_like(values, reference) -> np.ndarray:
    """Gaussianise values through the empirical distribution of a reference sample.

    Returns ``Φ⁻¹(q)`` with ``q = (#{reference < v} + ½ #{reference = v}) / (n + 1)``
    (the mid-rank position of ``v`` among the ``n`` reference values), clipped to
    ``[0.5 / (n + 1), 1 − 0.5 / (n + 1)]``. For the reference values themselves
    this is exactly :func:`brainage.pid.inverse_normal_transform` of the
    reference (ties included); values outside the reference range get the
    extreme reference positions.

    Parameters
    ----------
    values : array-like of shape (k,)
        Finite values to transform (e.g. new participants' ages).
    reference : array-like of shape (n,)
        Finite reference values (e.g. the training participants' ages), n ≥ 2.

    Returns
    -------
    numpy.ndarray of shape (k,)

    Raises
    ------
    UsageError
        On non-finite values or fewer than two reference values.

    Examples
    --------
    >>> gaussianize_like([1.0, 2.0, 3.0], [3.0, 1.0, 2.0]).round(3)
    array([-1.15 , -0.319,  0.319])
    """
    v = _finite_1d(values, "age")
    ref = np.sort(_finite_1d(reference, "reference_age"))
    n = ref.size
    if n < 2:
        raise UsageError(f"Need at least 2 reference ages to Gaussianise against, got {n}.")
    lo = np.searchsorted(ref, v, side="left")
    hi = np.searchsorted(ref, v, side="right")
    q = (lo + 0.5 * (hi - lo)) / (n + 1.0)
    q = np.clip(q, 0.5 / (n + 1.0), 1.0 - 0.5 / (n + 1.0))
    return stats.norm.ppf(q)


def _finite_1d(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise UsageError(f"{name} must be 1-D (one value per participant), got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise UsageError(
            f"{name} has {int((~np.isfinite(arr)).sum())} non-finite values; drop those participants."
        )
    return arr


def _latent_block(latents: Mapping, mods: Sequence[str], n: int, what: str) -> dict[str, np.ndarray]:
    missing = sorted(set(mods) - set(latents))
    if missing:
        raise UsageError(f"{what} lack modalities {missing}; give latents of {list(mods)}.")
    out = {}
    for m in mods:
        a = np.asarray(latents[m], dtype=float)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[0] != n:
            raise UsageError(
                f"{what}[{m!r}] must have shape ({n}, d) (one row per participant), got {a.shape}."
            )
        if not np.all(np.isfinite(a)):
            raise UsageError(f"{what}[{m!r}] has non-finite values.")
        out[m] = a
    return out


def _pointwise_bits(g: np.ndarray, z: np.ndarray, g_ref: np.ndarray, z_ref: np.ndarray,
                    label: str) -> np.ndarray:
    """``log2 p(g | z) − log2 p(g)`` under the Gaussian fitted to (g_ref, z_ref)."""
    n = g_ref.size
    g_mean, z_mean = g_ref.mean(), z_ref.mean(0)
    gc, zc = g_ref - g_mean, z_ref - z_mean
    var_g = float(gc @ gc) / n
    s_zz = zc.T @ zc / n
    s_zg = zc.T @ gc / n
    evals = np.linalg.eigvalsh(s_zz)
    if evals[0] <= _SINGULAR_RTOL * max(evals[-1], 0.0) or evals[-1] <= 0:
        ridge = _RIDGE * max(float(np.mean(np.diag(s_zz))), 1e-12)
        logger.warning(
            "local_information: the reference covariance of the %s latents is singular "
            "(%d participants, %d dimensions); adding a ridge of %.3g.", label, n, z.shape[1], ridge)
        s_zz = s_zz + ridge * np.eye(s_zz.shape[0])
    beta = np.linalg.solve(s_zz, s_zg)
    var_cond = max(var_g - float(s_zg @ beta), 1e-12 * var_g)
    mu_cond = g_mean + (z - z_mean) @ beta
    nats = (0.5 * math.log(var_g / var_cond) - (g - mu_cond) ** 2 / (2.0 * var_cond)
            + (g - g_mean) ** 2 / (2.0 * var_g))
    return nats / math.log(2.0)


def local_information_from_latents(
    latents: Mapping[str, np.ndarray],
    age,
    *,
    reference_latents: Mapping[str, np.ndarray],
    reference_age,
) -> pd.DataFrame:
    """Compute each participant's pointwise mutual information of Gaussianised age and latents.

    The reference participants define a Gaussian model: their ages are
    rank-Gaussianised (``g = inverse_normal_transform(reference_age)``) and
    ``(g, z_m)`` is taken as jointly Gaussian with the sample mean and the
    maximum-likelihood (divide-by-n) covariance of the reference. A participant
    with age ``a`` and latent ``z_m`` gets ``g = gaussianize_like(a, reference_age)``
    and ``i_m = log2 N(g; μ_{g|z_m}, σ²_{g|z_m}) − log2 N(g; ḡ, s_g²)`` bits,
    with ``ḡ, s_g²`` the model's marginal mean and variance of ``g`` (≈ 0 and
    ≈ 1). ``i_m`` is positive when the latent makes the participant's age more
    probable than it is a priori. Over the reference participants themselves
    the mean of ``i_m`` equals the plug-in ``I(g; z_m)`` of
    :func:`brainage.pid.gaussian_pid` (without bias correction) exactly.
    ``local_info_joint`` conditions on all modalities' latents together.

    When a reference latent covariance is singular (its smallest eigenvalue
    below 1e-10 of its largest: a collapsed latent dimension, or fewer
    reference participants than dimensions), a ridge of 1e-6 times the mean
    latent variance is added to its diagonal (with a logged warning), and the
    mean is then no longer exactly the plug-in information.

    Parameters
    ----------
    latents : dict of str to numpy.ndarray
        Per modality, the participants' latents, shape (n, d_m).
    age : array-like of shape (n,)
        The participants' ages.
    reference_latents : dict of str to numpy.ndarray
        Per modality (the same keys), the reference participants' latents, shape (n_ref, d_m).
    reference_age : array-like of shape (n_ref,)
        The reference participants' ages.

    Returns
    -------
    pandas.DataFrame
        One row per participant: ``gaussian_age`` (g), ``local_info_<m>`` per
        modality and ``local_info_joint`` (bits).

    Raises
    ------
    UsageError
        On mismatched shapes, missing modalities, non-finite values, or
        reference ages that are all equal.
    """
    mods = [str(m) for m in latents]
    if not mods:
        raise UsageError("local_information needs the latents of at least one modality.")
    age = _finite_1d(age, "age")
    ref_age = _finite_1d(reference_age, "reference_age")
    lat = _latent_block(latents, mods, age.size, "latents")
    ref = _latent_block(reference_latents, mods, ref_age.size, "reference_latents")
    for m in mods:
        if lat[m].shape[1] != ref[m].shape[1]:
            raise UsageError(
                f"Modality {m!r}: latents have {lat[m].shape[1]} dimensions, the reference "
                f"{ref[m].shape[1]}; use latents of the same model."
            )
    if ref_age.size < 2 or np.ptp(ref_age) == 0:
        raise UsageError("The reference ages must hold at least two different values.")
    g_ref = inverse_normal_transform(ref_age)
    g = gaussianize_like(age, ref_age)
    cols = {"gaussian_age": g}
    for m in mods:
        cols[f"local_info_{m}"] = _pointwise_bits(g, lat[m], g_ref, ref[m], repr(m))
    cols["local_info_joint"] = _pointwise_bits(
        g, np.hstack([lat[m] for m in mods]), g_ref, np.hstack([ref[m] for m in mods]), "joint")
    return pd.DataFrame(cols)


def local_information(
    estimator,
    X,
    age,
    *,
    reference_latents: Mapping[str, np.ndarray],
    reference_age,
) -> pd.DataFrame:
    """Compute each participant's pointwise information of age with a fitted PIDReg's latents.

    The latents of ``X`` come from ``estimator.transform(X)``; everything else
    is :func:`local_information_from_latents` (see there for the Gaussian model,
    the formula and the ridge).

    Parameters
    ----------
    estimator : PIDRegressor
        A fitted PIDReg estimator (baselines are refused).
    X : dict of str to array-like or dataset
        Every modality of the model, as :meth:`PIDRegressor.transform` takes it.
    age : array-like of shape (n,)
        The participants' ages (years).
    reference_latents : dict of str to numpy.ndarray
        Latents of the reference (typically training) participants, e.g.
        ``estimator.transform(X_train)``.
    reference_age : array-like of shape (n_ref,)
        Ages of the reference participants.

    Returns
    -------
    pandas.DataFrame
        One row per participant, in X's order: ``gaussian_age``,
        ``local_info_<modality>`` and ``local_info_joint`` (bits).

    Raises
    ------
    UsageError
        As :func:`local_information_from_latents`, and for an estimator that is
        not a fitted PIDRegressor.
    """
    _check_pidreg(estimator)
    lat = estimator.transform(X)
    lat = {m: lat[m] for m in estimator.modalities_}
    return local_information_from_latents(
        lat, age, reference_latents=reference_latents, reference_age=reference_age)
