"""Synthetic multimodal tabular data with known PID atoms.

A scalar target ``y ~ N(0, 1)`` and Gaussian latents per modality,
``Z_m = h_m y + N_m`` with jointly Gaussian noises of a chosen covariance,
are observed through an injective nonlinear map into ``n_features``
dimensions::

    X_m = g(A_m · standardise(Z_m)),   g(u) = tanh(1.5 u) + 0.25 u

with ``A_m`` a random full-column-rank matrix. ``g`` is strictly increasing,
so ``X_m`` determines ``Z_m`` and the PID of ``(y; X_1, X_2)`` equals the PID
of ``(y; Z_1, Z_2)``, which the closed form gives exactly from the population
covariance (:func:`brainage.pid.gaussian_pid_from_cov`). A model that
recovers the latents should recover these atoms.

The cases are built from the three textbook cases with exact answers (chain,
unique + synergy, redundancy + synergy; see :func:`exact_case_pid`) and
mixtures of them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CASES",
    "SyntheticCase",
    "SyntheticPIDData",
    "exact_case_pid",
    "make_pid_dataset",
    "population_cov",
]


@dataclass(frozen=True)
class SyntheticCase:
    """A configuration of latents with known PID.

    Attributes
    ----------
    name : str
        Short name.
    gains : tuple of tuple of float
        Per modality, the gain of y on each latent dimension (0 = pure noise dimension).
    noise_corr : tuple of (int, int, float)
        Cross-correlations between noise dimensions, as ``(i, j, rho)`` over the
        concatenated latent dimensions (all noises have unit variance).
    description : str
        What the case is dominated by.
    """

    name: str
    gains: tuple
    noise_corr: tuple = ()
    description: str = ""
    modality_names: tuple = field(default=())

    @property
    def names(self) -> tuple:
        """Modality names (``m1``, ``m2`` … unless given)."""
        return self.modality_names or tuple(f"m{i + 1}" for i in range(len(self.gains)))

    @property
    def dims(self) -> tuple:
        """Latent dimension of each modality."""
        return tuple(len(g) for g in self.gains)


def population_cov(case: SyntheticCase) -> np.ndarray:
    """Covariance of ``[y, Z_1, Z_2, …]`` for a case (y has unit variance)."""
    h = np.concatenate([np.asarray(g, dtype=float) for g in case.gains])
    k = len(h)
    noise = np.eye(k)
    for i, j, rho in case.noise_corr:
        noise[i, j] = noise[j, i] = rho
    if np.linalg.eigvalsh(noise).min() <= 0:
        raise ValueError(f"Case {case.name!r}: the noise correlations are not positive definite.")
    cov = np.empty((k + 1, k + 1))
    cov[0, 0] = 1.0
    cov[0, 1:] = cov[1:, 0] = h
    cov[1:, 1:] = np.outer(h, h) + noise
    return cov


def _pair_truth(case: SyntheticCase) -> dict:
    from brainage.pid import gaussian_pid_from_cov

    cov = population_cov(case)
    starts = np.cumsum((0, *case.dims))
    truth = {}
    for a, b in itertools.combinations(range(len(case.gains)), 2):
        idx = [0, *range(1 + starts[a], 1 + starts[a + 1]), *range(1 + starts[b],
                                                                  1 + starts[b + 1])]
        sub = cov[np.ix_(idx, idx)]
        res = gaussian_pid_from_cov(sub, case.dims[a], case.dims[b])
        # + 0.0 turns the -0.0 of exactly-zero atoms into 0.0
        truth[f"{case.names[a]}|{case.names[b]}"] = {k: v + 0.0 for k, v in res.as_dict().items()}
    return truth


def exact_case_pid(kind: str, *, rho: float = 0.0, sigma2: float = 1.0) -> dict:
    """PID atoms (bits) of the textbook cases, from their published formulas.

    Parameters
    ----------
    kind : {"chain", "unique_synergy", "redundancy_synergy"}
        ``chain``: Z1 = y + N1, Z2 = Z1 + N (var ``sigma2``).
        ``unique_synergy``: Z1 = y + N1, Z2 = N2, corr(N1, N2) = ``rho``.
        ``redundancy_synergy``: Z1 = y + N1, Z2 = y + N2, corr(N1, N2) = ``rho``.
    rho, sigma2 : float
        Noise correlation and chain noise variance.

    Returns
    -------
    dict
        ``U1, U2, R, S``.
    """
    if kind == "chain":
        i1 = 0.5 * math.log2(2.0)
        i2 = 0.5 * math.log2(1.0 + 1.0 / (1.0 + sigma2))
        return {"U1": i1 - i2, "U2": 0.0, "R": i2, "S": 0.0}
    if kind == "unique_synergy":
        s = 0.5 * math.log2(1.0 + 1.0 / (1.0 - rho**2)) - 0.5
        return {"U1": 0.5, "U2": 0.0, "R": 0.0, "S": s}
    if kind == "redundancy_synergy":
        s = 0.5 * math.log2(1.0 + 2.0 / (1.0 + rho)) - 0.5
        return {"U1": 0.0, "U2": 0.0, "R": 0.5, "S": s}
    raise ValueError(
        f"Unknown case {kind!r}; choose 'chain', 'unique_synergy' or 'redundancy_synergy'."
    )


# Each modality: one informative latent dimension plus two pure-noise dimensions,
# so the encoders must find the signal among nuisance directions.
_PAD = (0.0, 0.0)
CASES: dict[str, SyntheticCase] = {
    "redundancy": SyntheticCase(
        "redundancy", ((2.0, *_PAD), (2.0, *_PAD)), ((0, 3, 0.9),),
        "redundancy-dominant: both see y through strongly correlated noise",
    ),
    "unique": SyntheticCase(
        "unique", ((2.0, *_PAD), (0.3, *_PAD)), (),
        "unique-dominant: modality 1 strong, modality 2 weak and independent",
    ),
    "synergy": SyntheticCase(
        "synergy", ((1.5, *_PAD), (0.0, *_PAD)), ((0, 3, 0.9),),
        "unique + synergy: modality 2 carries only the noise of modality 1",
    ),
    "redundancy_synergy": SyntheticCase(
        "redundancy_synergy", ((1.0, *_PAD), (1.0, *_PAD)), ((0, 3, -0.6),),
        "redundancy + synergy: anti-correlated noises",
    ),
    "noise_modality": SyntheticCase(
        "noise_modality", ((2.0, *_PAD), (0.0, *_PAD)), (),
        "modality 2 is pure noise",
    ),
    "both_weak": SyntheticCase(
        "both_weak", ((0.5, *_PAD), (0.5, *_PAD)), (),
        "both modalities weak and conditionally independent",
    ),
    "three_modalities": SyntheticCase(
        "three_modalities", ((1.5, *_PAD), (1.5, *_PAD), (0.0, *_PAD)),
        ((0, 3, 0.5), (0, 6, 0.8)),
        "three modalities: 1 and 2 redundant, 3 synergistic with 1",
    ),
}


@dataclass
class SyntheticPIDData:
    """A sample from a :class:`SyntheticCase`.

    Attributes
    ----------
    X : dict of str to numpy.ndarray
        Observed inputs ``(n, n_features)`` per modality.
    y : numpy.ndarray
        Target, shape (n,).
    latents : dict of str to numpy.ndarray
        The Gaussian latents ``Z_m`` (n, k_m).
    truth : dict
        Exact atoms (bits) per modality pair ``"m1|m2"``.
    case : SyntheticCase
    """

    X: dict
    y: np.ndarray
    latents: dict
    truth: dict
    case: SyntheticCase


def _observe(z: np.ndarray, sd: np.ndarray, n_features: int, rng) -> np.ndarray:
    k = z.shape[1]
    a = rng.normal(size=(n_features, k)) / math.sqrt(k)
    u = (z / sd) @ a.T
    return (np.tanh(1.5 * u) + 0.25 * u).astype(np.float32)


def make_pid_dataset(
    case: str | SyntheticCase = "redundancy",
    n: int = 2000,
    *,
    n_features: int = 32,
    seed: int = 0,
    map_seed: int | None = None,
) -> SyntheticPIDData:
    """Draw a multimodal data set with known PID atoms.

    Parameters
    ----------
    case : str or SyntheticCase
        A name from :data:`CASES` or a custom case.
    n : int
        Number of samples.
    n_features : int
        Observed dimension per modality (≥ the latent dimension).
    seed : int
        Seed of the samples.
    map_seed : int, optional
        Seed of the observation maps ``A_m`` (default: ``seed``). Keep it fixed to
        draw training and test sets of the same "scanner".

    Returns
    -------
    SyntheticPIDData

    Examples
    --------
    >>> d = make_pid_dataset("noise_modality", 500, seed=1)
    >>> d.X["m1"].shape, round(d.truth["m1|m2"]["U1"], 3), round(d.truth["m1|m2"]["R"], 3)
    ((500, 32), 1.161, 0.0)
    """
    if isinstance(case, str):
        if case not in CASES:
            raise ValueError(f"Unknown synthetic case {case!r}; available: {sorted(CASES)}.")
        case = CASES[case]
    if n_features < max(case.dims):
        raise ValueError(
            f"n_features={n_features} is smaller than the latent dimension {max(case.dims)}; "
            "the observation map would lose information."
        )
    cov = population_cov(case)
    rng = np.random.default_rng(seed)
    sample = rng.multivariate_normal(np.zeros(len(cov)), cov, size=n, method="cholesky")
    y = sample[:, 0]
    sd = np.sqrt(np.diag(cov)[1:])
    map_rng = np.random.default_rng(seed if map_seed is None else map_seed)
    starts = np.cumsum((0, *case.dims))
    X, latents = {}, {}
    for i, name in enumerate(case.names):
        z = sample[:, 1 + starts[i] : 1 + starts[i + 1]]
        latents[name] = z
        X[name] = _observe(z, sd[starts[i] : starts[i + 1]], n_features, map_rng)
    return SyntheticPIDData(X=X, y=y, latents=latents, truth=_pair_truth(case), case=case)
