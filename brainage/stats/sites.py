"""Group comparisons within each site, pooled by random-effects meta-analysis.

:func:`per_site` fits the :func:`~brainage.stats.groups.compare_groups` model
inside each site and pools the site estimates with a random-effects
meta-analysis (DerSimonian & Laird 1986, Control. Clin. Trials 7:177;
Paule–Mandel as an option), reporting the heterogeneity Q, τ² and I²
(Higgins & Thompson 2002, Stat. Med. 21:1539): the rows of a forest plot.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.meta_analysis import combine_effects

from ..exceptions import StatsInputError
from ._validate import as_labels
from .groups import GROUP_COLUMNS, _check_confidence, _prepare, _reference_labels, compare_groups

__all__ = ["POOLED_COLUMNS", "SiteComparison", "per_site"]

#: Columns of the ``pooled`` table of :func:`per_site`, in order.
POOLED_COLUMNS = (
    "group",
    "k_sites",
    "estimate",
    "se",
    "ci_low",
    "ci_high",
    "p",
    "tau2",
    "i2",
    "q",
    "q_p",
    "note",
)
_METHODS = {"dl": "dl", "iterated": "iterated", "pm": "iterated"}


@dataclass(frozen=True)
class SiteComparison:
    """Per-site group comparisons and their random-effects pooling.

    Attributes can also be read as keys (``result["pooled"]``).

    Attributes
    ----------
    sites : pandas.DataFrame
        One row per site × non-reference group: ``site``, the
        :data:`GROUP_COLUMNS` and ``note`` (``""`` when the row enters the
        pooling, otherwise why not).
    pooled : pandas.DataFrame
        One row per non-reference group, columns :data:`POOLED_COLUMNS`.
    method : str
        The τ² estimator, ``"dl"`` or ``"iterated"``.
    """

    sites: pd.DataFrame
    pooled: pd.DataFrame
    method: str = "dl"
    confidence: float = 0.95
    _KEYS: ClassVar[tuple[str, ...]] = ("sites", "pooled", "method", "confidence")

    def __getitem__(self, key: str):
        """Return the attribute ``key`` (``"sites"``, ``"pooled"``, ``"method"``, ``"confidence"``)."""
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> tuple:
        """Return the names readable as keys."""
        return self._KEYS


def _pool(effect: np.ndarray, se: np.ndarray, method: str, alpha: float) -> dict:
    """Random-effects pooling of ``effect`` with standard errors ``se``."""
    var = se**2
    with warnings.catch_warnings():
        # With Q < k - 1 statsmodels' unclipped DL τ² is negative and its random-effects
        # standard errors are sqrt(negative): NaN with a RuntimeWarning. They are replaced
        # by the fixed-effect ones below.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = combine_effects(effect, var, method_re=method, use_t=False)
    k = effect.size
    q = float(res.q)
    tau2 = float(res.tau2)
    if tau2 > 0:
        est, sd = float(res.mean_effect_re), float(res.sd_eff_w_re)
    else:
        # statsmodels' one-step DL estimate is not truncated at zero: a negative
        # τ² would give weights above the fixed-effect ones. τ² = 0 is the DL
        # estimate then, and the random-effects result equals the fixed-effect one.
        tau2 = 0.0
        est, sd = float(res.mean_effect_fe), float(res.sd_eff_w_fe)
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    df = k - 1
    i2 = 100.0 * max(0.0, (q - df) / q) if q > 0 else 0.0
    return {
        "k_sites": k,
        "estimate": est,
        "se": sd,
        "ci_low": est - z * sd,
        "ci_high": est + z * sd,
        "p": float(2.0 * stats.norm.sf(abs(est / sd))),
        "tau2": tau2,
        "i2": i2,
        "q": q,
        "q_p": float(stats.chi2.sf(q, df)),
        "note": "",
    }


def per_site(
    table: pd.DataFrame,
    *,
    gap: str = "gap_corrected",
    group: str = "group",
    reference: str | Sequence[str] = "control",
    site: str = "site",
    covariates: Sequence[str] = ("age", "age2", "sex"),
    confidence: float = 0.95,
    method: str = "dl",
) -> SiteComparison:
    """Compare groups within each site and pool the sites by random-effects meta-analysis.

    Each site gets its own :func:`compare_groups` model (``age2`` centred
    within the site). For each non-reference group the site coefficients
    (adjusted differences from the reference, years) and their HC3 variances
    ``se²`` are pooled with
    ``statsmodels.stats.meta_analysis.combine_effects``: the random-effects
    estimate ``Σ w_s b_s / Σ w_s`` with ``w_s = 1 / (se_s² + τ²)``, standard
    error ``1 / sqrt(Σ w_s)``, normal interval and p-value. τ² is the
    DerSimonian–Laird estimate ``max(0, (Q − (k − 1)) / (Σ w − Σ w² / Σ w))``
    (``method="dl"``) or the iterated Paule–Mandel estimate
    (``method="iterated"``, alias ``"pm"``).

    Parameters
    ----------
    table : pandas.DataFrame
        One row per participant.
    gap, group, reference, covariates, confidence
        As in :func:`compare_groups` (``site`` should not be among the
        covariates: it is constant within a site and would be dropped).
    site : str
        Column of site labels; rows without one are left out (counted in
        ``sites.attrs["n_excluded_missing_site"]``).
    method : {"dl", "iterated", "pm"}
        The τ² estimator.

    Returns
    -------
    SiteComparison
        ``sites``: one row per site × non-reference group with ``site``, the
        :data:`GROUP_COLUMNS` and ``note``. A site where the comparison cannot
        be done (fewer than 2 reference or group participants, too few
        participants for the covariates, a non-finite standard error) has NaN
        estimates, its ``n`` is the count of that group's participants with a
        gap, and ``note`` says why; it is left out of the pooling.
        ``note == ""`` marks the rows that are pooled.

        ``pooled``: one row per non-reference group, columns
        :data:`POOLED_COLUMNS`: ``k_sites`` (sites pooled), ``estimate``,
        ``se``, ``ci_low``, ``ci_high``, ``p``, ``tau2`` (years²), ``i2``
        (I² **in percent**, 0–100, ``max(0, (Q − df) / Q) · 100``), ``q``
        (Cochran's Q) and ``q_p`` (its χ² p-value on ``k − 1`` df). With fewer
        than 2 usable sites the row holds NaN and a ``note``; this is not an
        error.

    Raises
    ------
    StatsInputError
        If the site, gap or group column is missing, the reference label is
        nowhere in the table, ``method`` is unknown, or ``confidence`` is not
        in (0, 1).
    """
    alpha = _check_confidence(confidence)
    key = str(method).lower()
    if key not in _METHODS:
        raise StatsInputError(f"method: expected one of {sorted(_METHODS)}, got {method!r}")
    method = _METHODS[key]
    refs = _reference_labels(reference)
    if isinstance(covariates, str):
        covariates = (covariates,)
    if not isinstance(table, pd.DataFrame):
        raise StatsInputError(f"table: expected a pandas DataFrame, got {type(table).__name__}")
    if site not in table.columns:
        raise StatsInputError(
            f"site: column {site!r} not in the table (columns: {list(map(str, table.columns))}); "
            "pass site= the name of the column"
        )
    # Whole-table checks (columns, numeric gap, reference present) and the group list.
    whole = _prepare(table, gap, group, refs, ())
    ref_label = whole["ref_label"]
    all_groups = sorted(set(whole["group"].tolist()) - {ref_label})

    site_missing = table[site].isna().to_numpy(dtype=bool)
    site_labels = np.full(len(table), "", dtype=object)
    site_labels[~site_missing] = as_labels(site, table[site].to_numpy(dtype=object)[~site_missing])
    gap_ok = ~(pd.to_numeric(table[gap]).isna() | table[group].isna()).to_numpy(dtype=bool)
    group_str = np.array([str(v) for v in table[group].to_numpy(dtype=object)], dtype=object)
    group_str = np.where(np.isin(group_str, np.array(refs, dtype=object)), ref_label, group_str)

    rows = []
    nan_row = {c: np.nan for c in GROUP_COLUMNS if c not in ("group", "n", "model", "dropped_covariates")}
    for s in sorted(set(site_labels[~site_missing].tolist())):
        in_site = site_labels == s
        sel = in_site & gap_ok
        counts = {g: int((group_str[sel] == g).sum()) for g in [ref_label, *all_groups]}
        notes: dict[str, str] = {}
        res = None
        if counts[ref_label] < 2:
            notes = {
                g: f"fewer than 2 reference participants at this site (n={counts[ref_label]})"
                for g in all_groups
            }
        else:
            for g in all_groups:
                if counts[g] < 2:
                    notes[g] = f"fewer than 2 {g!r} participants at this site (n={counts[g]})"
            if len(notes) < len(all_groups):
                try:
                    res = compare_groups(
                        table.loc[in_site],
                        gap=gap,
                        group=group,
                        reference=refs,
                        covariates=covariates,
                        confidence=confidence,
                    )
                except StatsInputError as exc:
                    for g in all_groups:
                        notes.setdefault(g, f"comparison not possible: {exc}")
        for g in all_groups:
            row = {"site": s, "group": g}
            hit = None if res is None else res.loc[res["group"] == g]
            if g in notes or hit is None or hit.empty:
                note = notes.get(g) or (res.attrs["dropped_groups"].get(g, "") if res is not None else "")
                row.update(nan_row)
                row.update({"n": counts[g], "model": "", "dropped_covariates": ""})
                row["note"] = note or "not compared"
            else:
                row.update(hit.iloc[0].to_dict())
                se_ok = np.isfinite(row["se"]) and row["se"] > 0 and np.isfinite(row["mean_gap"])
                row["note"] = "" if se_ok else "excluded from pooling: standard error not finite and positive"
            rows.append(row)
    sites = pd.DataFrame(rows, columns=["site", *GROUP_COLUMNS, "note"])
    sites["n"] = sites["n"].astype(int)
    sites.attrs["n_excluded_missing_site"] = int(site_missing.sum())

    pooled_rows = []
    for g in all_groups:
        use = sites.loc[(sites["group"] == g) & (sites["note"] == "")]
        if len(use) < 2:
            pooled_rows.append(
                {
                    "group": g,
                    "k_sites": len(use),
                    **{c: np.nan for c in POOLED_COLUMNS if c not in ("group", "k_sites", "note")},
                    "note": f"fewer than 2 sites with an estimate (k={len(use)}); no pooled estimate",
                }
            )
            continue
        pooled_rows.append(
            {
                "group": g,
                **_pool(use["mean_gap"].to_numpy(float), use["se"].to_numpy(float), method, alpha),
            }
        )
    pooled = pd.DataFrame(pooled_rows, columns=list(POOLED_COLUMNS))
    pooled["k_sites"] = pooled["k_sites"].astype(int)
    pooled.attrs.update({"method": method, "confidence": 1.0 - alpha, "i2_units": "percent"})
    return SiteComparison(sites=sites, pooled=pooled, method=method, confidence=1.0 - alpha)
