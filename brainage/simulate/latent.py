"""Cohort demographics and the latent aging variables, with their exact PID.

The latents are built on the Gaussianized age ``g = Φ⁻¹((age − a)/(b − a))``
(exactly standard normal because ages are uniform on ``[a, b]``)::

    s = a_s g + n_s,   f = a_f g + n_f,   (n_s, n_f) ~ N(0, [[1, ρ], [ρ, 1]])

so that ``(g, s, f)`` is jointly Gaussian with a known covariance and the
partial information decomposition of ``g`` with respect to ``(s, f)`` is exact.
Each latent is mapped back to years (a *latent age*) by the same quantile map:
``A_s = a + (b − a) Φ(s / sqrt(a_s² + 1)) + Δ_s``, where the true excess ``Δ_s``
is 0 for controls and depends on a patient's subtype (``shared``: both latent
ages get their gap; ``structural`` or ``functional``: only that one).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "assign_subtypes",
    "draw_cohort",
    "latent_covariance",
    "oracle_mae",
    "oracle_predict",
    "true_pid",
]


def latent_covariance(struct_loading: float, func_loading: float, rho: float) -> np.ndarray:
    """Covariance of ``[g, s, f]`` under the generative model.

    Parameters
    ----------
    struct_loading, func_loading : float
        Loadings ``a_s`` and ``a_f``.
    rho : float
        Correlation of the modality-specific noises.

    Returns
    -------
    numpy.ndarray of shape (3, 3)

    Examples
    --------
    >>> latent_covariance(1.0, 1.0, 0.0).tolist()
    [[1.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]]
    """
    a_s, a_f = float(struct_loading), float(func_loading)
    return np.array(
        [
            [1.0, a_s, a_f],
            [a_s, a_s**2 + 1.0, a_s * a_f + rho],
            [a_f, a_s * a_f + rho, a_f**2 + 1.0],
        ]
    )


def true_pid(params) -> dict:
    """Exact PID atoms (bits) of the Gaussianized age w.r.t. the two latents.

    Parameters
    ----------
    params : SimulationParams

    Returns
    -------
    dict
        ``U1`` (structural unique), ``U2`` (functional unique), ``R``, ``S``,
        ``I1``, ``I2``, ``I12`` in bits.
    """
    from ..pid import gaussian_pid_from_cov

    cov = latent_covariance(params.struct_loading, params.func_loading, params.noise_correlation)
    res = gaussian_pid_from_cov(cov, 1, 1)
    return {k: float(getattr(res, k)) for k in ("U1", "U2", "R", "S", "I1", "I2", "I12")}


def _age_from_gauss(z, age_min: float, age_max: float):
    from scipy.stats import norm

    return age_min + (age_max - age_min) * norm.cdf(z)


def oracle_predict(s, f, params) -> np.ndarray:
    """Predict age optimally for MAE from the latents (posterior median).

    The posterior of ``g`` given ``(s, f)`` is Gaussian; its median maps to the
    median of age through the monotone quantile map, and the posterior median
    minimises the expected absolute error.

    Parameters
    ----------
    s, f : array-like
        Latent values (without the patient gap).
    params : SimulationParams

    Returns
    -------
    numpy.ndarray
        Predicted ages in years.
    """
    cov = latent_covariance(params.struct_loading, params.func_loading, params.noise_correlation)
    weights = np.linalg.solve(cov[1:, 1:], cov[1:, 0])
    mean = weights[0] * np.asarray(s, float) + weights[1] * np.asarray(f, float)
    return _age_from_gauss(mean, params.age_min, params.age_max)


def oracle_mae(params, *, n_draws: int = 400_000) -> float:
    """Compute the population oracle MAE (years) of controls, by seeded Monte Carlo.

    Parameters
    ----------
    params : SimulationParams
    n_draws : int
        Number of Monte Carlo draws (the standard error is below 0.02 years
        at the default).

    Returns
    -------
    float
    """
    rng = np.random.default_rng(20240601)
    g = rng.standard_normal(n_draws)
    noise = _draw_noise(rng, n_draws, params.noise_correlation)
    s = params.struct_loading * g + noise[:, 0]
    f = params.func_loading * g + noise[:, 1]
    age = _age_from_gauss(g, params.age_min, params.age_max)
    return float(np.mean(np.abs(age - oracle_predict(s, f, params))))


def _draw_noise(rng, n: int, rho: float) -> np.ndarray:
    chol = np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]]))
    return rng.standard_normal((n, 2)) @ chol.T


def assign_subtypes(params, patient: np.ndarray) -> np.ndarray:
    """Subtype of every participant (``none`` for controls).

    Without ``params.patient_subtypes`` every patient is ``shared`` and nothing
    is drawn. Otherwise the number of patients of each subtype is the fraction
    times the number of patients, rounded by largest remainder (ties: the
    order of the mix), and the subtypes are dealt to the patients in a random
    order drawn from a stream of its own (``default_rng([seed, 2])``), so that
    every other draw of the cohort is the same with and without subtypes.

    Parameters
    ----------
    params : SimulationParams
    patient : numpy.ndarray of bool
        Whether each participant is a patient.

    Returns
    -------
    numpy.ndarray of str

    Examples
    --------
    >>> from brainage.simulate.params import resolve_params
    >>> p = resolve_params("test", patient_subtypes="structural=0.5,functional=0.5")
    >>> sorted(assign_subtypes(p, np.array([True, True, False, True, True])).tolist())
    ['functional', 'functional', 'none', 'structural', 'structural']
    """
    patient = np.asarray(patient, bool)
    out = np.where(patient, "shared", "none").astype(object)
    if not params.patient_subtypes:
        return out.astype(str)
    members = np.flatnonzero(patient)
    names = [name for name, _ in params.patient_subtypes]
    fractions = np.array([fraction for _, fraction in params.patient_subtypes], float)
    raw = fractions / fractions.sum() * len(members)
    counts = np.floor(raw + 1e-9).astype(int)
    short = len(members) - int(counts.sum())
    # Largest remainder; a stable sort keeps the order of the mix among ties.
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:max(short, 0)]] += 1
    rng = np.random.default_rng([params.seed, 2])
    dealt = rng.permutation(members)
    out[dealt] = np.repeat(names, counts)
    return out.astype(str)


def draw_cohort(params):
    """Draw demographics and latents of the whole cohort.

    Parameters
    ----------
    params : SimulationParams

    Returns
    -------
    pandas.DataFrame
        One row per participant: ``participant_id, age, sex, site, group,
        age_gaussianized, latent_structural, latent_functional,
        structural_age, functional_age, true_gap, patient_subtype,
        structural_age_excess, functional_age_excess``. The excesses are the
        years added to each latent age (0 for controls); ``true_gap`` is their
        mean (the patient gap itself when both latent ages get it).
    """
    import pandas as pd
    from scipy.stats import norm

    n = params.n_subjects
    rng = np.random.default_rng([params.seed, 0])
    # Ages are rounded to 0.01 year as in participants.tsv; the latents are
    # built on the rounded value so that the file is the truth.
    age = np.round(rng.uniform(params.age_min, params.age_max, size=n), 2)
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    sites = np.arange(n) % params.n_sites
    rng.shuffle(sites)
    n_patients = round(params.patient_fraction * n)
    patient = np.zeros(n, dtype=bool)
    patient[rng.permutation(n)[:n_patients]] = True
    noise = _draw_noise(rng, n, params.noise_correlation)

    span = params.age_max - params.age_min
    g = norm.ppf(np.clip((age - params.age_min) / span, 1e-6, 1 - 1e-6))
    s = params.struct_loading * g + noise[:, 0]
    f = params.func_loading * g + noise[:, 1]
    subtype = assign_subtypes(params, patient)
    gaps = params.subtype_gaps()
    gap_s = np.array([gaps[k][0] if k in gaps else 0.0 for k in subtype])
    gap_f = np.array([gaps[k][1] if k in gaps else 0.0 for k in subtype])
    s_age = _age_from_gauss(s / np.hypot(params.struct_loading, 1.0), params.age_min,
                            params.age_max) + gap_s
    f_age = _age_from_gauss(f / np.hypot(params.func_loading, 1.0), params.age_min,
                            params.age_max) + gap_f
    width = max(2, len(str(n)))
    return pd.DataFrame(
        {
            "participant_id": [f"sub-{i + 1:0{width}d}" for i in range(n)],
            "age": age,
            "sex": sex,
            "site": [f"site{k + 1}" for k in sites],
            "group": np.where(patient, "patient", "control"),
            "age_gaussianized": g,
            "latent_structural": s,
            "latent_functional": f,
            "structural_age": s_age,
            "functional_age": f_age,
            "true_gap": 0.5 * (gap_s + gap_f),
            "patient_subtype": subtype,
            "structural_age_excess": gap_s,
            "functional_age_excess": gap_f,
        }
    )
