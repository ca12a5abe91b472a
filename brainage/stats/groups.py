"""Comparing brain-age gaps between clinical groups.

The group model is an ordinary least-squares regression of the (bias-corrected)
gap on group and covariates,

``δ_c ~ C(group, Treatment(reference)) + age + age² + C(sex) + C(site)``,

fitted once with every group in it, so that each group's coefficient is its
covariate-adjusted difference from the reference group (patients minus
controls, in years). Standard errors are heteroscedasticity-consistent HC3
(MacKinnon & White 1985, J. Econometrics 29:305; Long & Ervin 2000, Am. Stat.
54:217): group variances differ, and HC3 stays close to nominal in samples of a
few dozen. Intervals and p-values of the coefficients use the t distribution
with the residual degrees of freedom.

Each comparison also carries Cohen's d of the raw gaps (pooled SD) with the
large-sample interval of Hedges & Olkin (1985, Statistical Methods for
Meta-Analysis, eq. 5.14):

``se(d) = sqrt((n_a + n_b) / (n_a n_b) + d² / (2 (n_a + n_b)))``,
``d ± z_{1−α/2} se(d)``.

:func:`~brainage.stats.sites.per_site` (also importable from here) repeats
the comparison inside each site and pools the site estimates with a
random-effects meta-analysis (DerSimonian & Laird 1986, Control. Clin. Trials
7:177; Paule–Mandel as an option), reporting the heterogeneity Q, τ² and I²
(Higgins & Thompson 2002, Stat. Med. 21:1539): the rows of a forest plot.

Psychiatric effects on the brain-age gap are small (d ≈ 0.1–0.5): these are
group-level statements, never individual-level diagnostic claims.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats

from ..exceptions import RankDeficientDesignError, StatsInputError
from ._validate import as_1d_float, as_labels

__all__ = ["GROUP_COLUMNS", "cohens_d", "compare_groups"]

# The per-site comparison and its pooling live in brainage.stats.sites; they are
# importable from here too (loaded on first use, see __getattr__ at the end).
_IN_SITES = ("POOLED_COLUMNS", "SiteComparison", "per_site")

#: Columns of :func:`compare_groups`, in order.
GROUP_COLUMNS = (
    "group",
    "n",
    "mean_gap",
    "se",
    "ci_low",
    "ci_high",
    "cohens_d",
    "d_ci_low",
    "d_ci_high",
    "p",
    "model",
    "raw_mean_gap",
    "reference_mean_gap",
    "dropped_covariates",
)
#: Covariates always treated as categorical (besides non-numeric columns).
CATEGORICAL = ("sex", "site")
_LEVERAGE_ONE = 1.0 - 1e-8


def _check_confidence(confidence) -> float:
    """Return ``alpha = 1 − confidence`` after checking ``0 < confidence < 1``."""
    try:
        c = float(confidence)
    except (TypeError, ValueError):
        c = float("nan")
    if not 0.0 < c < 1.0:
        raise StatsInputError(f"confidence: expected a number strictly between 0 and 1, got {confidence!r}")
    return 1.0 - c


def cohens_d(a, b, *, confidence: float = 0.95) -> dict:
    """Cohen's d of ``a`` versus ``b`` with its large-sample interval.

    ``d = (mean(a) − mean(b)) / s_p`` with the pooled standard deviation
    ``s_p = sqrt(((n_a − 1) s_a² + (n_b − 1) s_b²) / (n_a + n_b − 2))``
    (sample variances, ddof = 1). The interval is ``d ± z se`` with the
    standard large-sample standard error of Hedges & Olkin (1985)

    ``se = sqrt((n_a + n_b) / (n_a n_b) + d² / (2 (n_a + n_b)))``

    and ``z`` the normal quantile ``Φ⁻¹(1 − (1 − confidence) / 2)``. No
    small-sample (Hedges' g) correction is applied.

    Parameters
    ----------
    a, b : array-like of float
        The two groups' values (e.g. patients' and controls' gaps), at least
        two each, no NaN.
    confidence : float
        Coverage of the interval, between 0 and 1.

    Returns
    -------
    dict
        ``d``, ``se``, ``ci_low``, ``ci_high`` (floats) and ``n_a``, ``n_b``
        (ints).

    Raises
    ------
    StatsInputError
        If either group has fewer than two values, holds NaN or infinite
        values, or the pooled standard deviation is zero.

    Examples
    --------
    >>> r = cohens_d([1, 2, 3], [3, 4, 5])
    >>> r["d"], r["se"]
    (-2.0, 1.0)
    """
    alpha = _check_confidence(confidence)
    xa = as_1d_float("a", a)
    xb = as_1d_float("b", b)
    for name, x in (("a", xa), ("b", xb)):
        if x.size < 2:
            raise StatsInputError(
                f"{name}: Cohen's d needs at least 2 values per group, got {x.size}; "
                "add participants or leave this group out"
            )
    n_a, n_b = int(xa.size), int(xb.size)
    pooled_var = ((n_a - 1) * xa.var(ddof=1) + (n_b - 1) * xb.var(ddof=1)) / (n_a + n_b - 2)
    sp = float(np.sqrt(pooled_var))
    scale = max(1.0, float(np.abs(np.r_[xa, xb]).max()))
    if not sp > 1e-12 * scale:
        raise StatsInputError(
            "a, b: the pooled standard deviation is zero (every value equals its group's mean); "
            "Cohen's d is undefined"
        )
    d = float((xa.mean() - xb.mean()) / sp)
    se = float(np.sqrt((n_a + n_b) / (n_a * n_b) + d * d / (2.0 * (n_a + n_b))))
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    return {"d": d, "se": se, "ci_low": d - z * se, "ci_high": d + z * se, "n_a": n_a, "n_b": n_b}


# ---------------------------------------------------------------------------
# compare_groups
# ---------------------------------------------------------------------------


def _safe_name(name: str, taken: set) -> str:
    """Return a formula-safe identifier for column ``name``, unique in ``taken``."""
    safe = re.sub(r"\W", "_", str(name))
    if not safe or safe[0].isdigit() or keyword.iskeyword(safe):
        safe = f"v_{safe}"
    base, i = safe, 1
    while safe in taken:
        i += 1
        safe = f"{base}_{i}"
    taken.add(safe)
    return safe


def _reference_labels(reference) -> tuple[str, ...]:
    """Normalise ``reference`` (a label or a sequence of labels) to a tuple of strings."""
    if isinstance(reference, str):
        return (reference,)
    if isinstance(reference, Sequence) and len(reference) > 0:
        return tuple(str(r) for r in reference)
    if reference is None or isinstance(reference, Sequence):
        raise StatsInputError(f"reference: expected a group label or a sequence of labels, got {reference!r}")
    return (str(reference),)


def _is_categorical(name: str, column: pd.Series) -> bool:
    return name.lower() in CATEGORICAL or not (
        pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    )


def _constant_reason(values: np.ndarray, categorical: bool, n: int) -> str | None:
    """Why a covariate is constant among the ``n`` participants used, or None."""
    if categorical:
        if len(set(values.tolist())) < 2:
            return f"constant: one level among the {n} participants used"
        return None
    scale = max(1.0, float(np.abs(values).max())) if values.size else 1.0
    if values.size == 0 or float(np.ptp(values)) <= 1e-12 * scale:
        return f"constant: zero variance among the {n} participants used"
    return None


def _prepare(table, gap: str, group: str, refs: tuple[str, ...], covariates: tuple[str, ...]) -> dict:
    """Check the table and collect the columns the model will use."""
    if not isinstance(table, pd.DataFrame):
        raise StatsInputError(f"table: expected a pandas DataFrame, got {type(table).__name__}")
    for arg, col in (("gap", gap), ("group", group)):
        if col not in table.columns:
            raise StatsInputError(
                f"{arg}: column {col!r} not in the table (columns: {list(map(str, table.columns))}); "
                f"pass {arg}= the name of the column"
            )
    try:
        gap_all = pd.to_numeric(table[gap], errors="raise").to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise StatsInputError(f"gap: column {gap!r} must hold numbers ({exc})") from None
    as_1d_float(f"gap column {gap!r}", gap_all, allow_nan=True)  # refuses infinite values
    group_missing = table[group].isna().to_numpy(dtype=bool)
    keep = ~np.isnan(gap_all) & ~group_missing
    n_missing = int((~keep).sum())
    if not keep.any():
        raise StatsInputError(
            f"table: no participant has both a {gap!r} value and a {group!r} label ({len(table)} rows)"
        )
    labels = as_labels(group, table[group].to_numpy(dtype=object)[keep])
    is_ref = np.isin(labels, np.array(refs, dtype=object))
    if not is_ref.any():
        found = sorted(set(labels.tolist()))
        raise StatsInputError(
            f"reference: no participant labelled {' or '.join(map(repr, refs))} in column {group!r}; "
            f"labels found: {found}; pass reference= the label (or a tuple of labels) of the reference group"
        )
    ref_label = refs[0] if len(refs) == 1 else "|".join(refs)
    coded = np.where(is_ref, ref_label, labels).astype(object)

    covs: dict[str, dict] = {}
    dropped: dict[str, str] = {}
    for name in covariates:
        if name in (gap, group):
            raise StatsInputError(f"covariates: {name!r} is the gap or group column; leave it out")
        if name in table.columns:
            col = table[name][keep]
            missing = col.isna().to_numpy(dtype=bool)
            cat = _is_categorical(name, col)
            if cat:
                values = np.array([str(v) for v in col.to_numpy(dtype=object)], dtype=object)
            else:
                values = col.to_numpy(dtype=float, na_value=np.nan)
                missing = missing | ~np.isfinite(values)
            derived = False
        elif name == "age2" and "age" in table.columns and "age" not in (gap, group):
            col = pd.to_numeric(table["age"][keep], errors="coerce")
            values = col.to_numpy(dtype=float, na_value=np.nan)
            missing = ~np.isfinite(values)
            cat, derived = False, True
        else:
            why = "absent: no such column"
            if name == "age2":
                why = "absent: no 'age2' column and no 'age' column to derive it from"
            dropped[name] = why
            continue
        if missing.all():
            dropped[name] = "all missing"
            continue
        covs[name] = {"values": values, "missing": missing, "categorical": cat, "derived": derived}
    return {
        "gap_name": gap,
        "group_name": group,
        "gap": gap_all[keep],
        "group": coded,
        "ref_label": ref_label,
        "refs": refs,
        "covs": covs,
        "dropped": dropped,
        "n_missing": n_missing,
        "covariates": covariates,
    }


def _formula(prep: dict, active: list[str], names: dict[str, str]) -> str:
    terms = [f"C({names[prep['group_name']]}, Treatment(reference={prep['ref_label']!r}))"]
    for c in active:
        terms.append(f"C({names[c]})" if prep["covs"][c]["categorical"] else names[c])
    return f"{names[prep['gap_name']]} ~ " + " + ".join(terms)


def _design_frame(prep: dict, rows: np.ndarray, active: list[str], names: dict[str, str]) -> pd.DataFrame:
    data = {
        names[prep["gap_name"]]: prep["gap"][rows],
        names[prep["group_name"]]: pd.Series(prep["group"][rows], dtype=object),
    }
    for c in active:
        info = prep["covs"][c]
        v = info["values"][rows]
        if info["derived"]:
            v = (v - v.mean()) ** 2
        data[names[c]] = pd.Series(v, dtype=object) if info["categorical"] else v
    return pd.DataFrame({k: (v.to_numpy() if isinstance(v, pd.Series) else v) for k, v in data.items()})


def _fit(prep: dict, alpha: float) -> tuple[pd.DataFrame, dict]:
    """Drop unusable covariates/groups, fit the model and collect results."""
    taken: set = set()
    names = {n: _safe_name(n, taken) for n in (prep["gap_name"], prep["group_name"], *prep["covs"])}
    dropped = dict(prep["dropped"])
    active = list(prep["covs"])
    ref = prep["ref_label"]
    groups = prep["group"]
    dropped_groups: dict[str, str] = {}
    n_all = groups.size
    lev_excluded = np.zeros(n_all, dtype=bool)
    while True:
        while True:  # drop constant covariates, then too-small groups, until stable
            rows = ~lev_excluded & ~np.isin(groups, list(dropped_groups))
            for c in active:
                rows &= ~prep["covs"][c]["missing"]
            n_rows = int(rows.sum())
            changed = False
            for c in list(active):
                info = prep["covs"][c]
                v = info["values"][rows]
                if info["derived"] and v.size:
                    v = (v - v.mean()) ** 2
                why = _constant_reason(v, info["categorical"], n_rows)
                if why is not None:
                    dropped[c] = why
                    active.remove(c)
                    changed = True
            if changed:
                continue
            labels, counts = np.unique(groups[rows].astype(str), return_counts=True)
            count = dict(zip(labels.tolist(), counts.tolist()))
            for g in sorted(set(groups.tolist()) - {ref} - set(dropped_groups)):
                if count.get(g, 0) < 2:
                    dropped_groups[g] = (
                        f"fewer than 2 participants with complete data (n={count.get(g, 0)}); "
                        "not compared"
                    )
                    changed = True
            if not changed:
                break
        n_ref = count.get(ref, 0)
        if n_ref < 2:
            raise StatsInputError(
                f"reference: the reference group ({ref!r}) has {n_ref} participant(s) with complete data; "
                "need at least 2"
            )
        compared = sorted(set(count) - {ref})
        if not compared:
            raise StatsInputError(
                f"group: no group other than the reference ({ref!r}) with at least 2 participants; "
                f"groups dropped: {dropped_groups or 'none'}"
            )
        formula = _formula(prep, active, names)
        frame = _design_frame(prep, rows, active, names)
        model = smf.ols(formula, data=frame)
        n_par = model.exog.shape[1]
        if n_rows <= n_par:
            raise StatsInputError(
                f"table: too few participants for the model: {n_rows} with complete data for {n_par} "
                f"parameters ({formula}); need more than {n_par} — add participants or drop covariates"
            )
        u, s, _ = np.linalg.svd(model.exog, full_matrices=False)
        rank = int((s > s[0] * max(model.exog.shape) * np.finfo(float).eps).sum())
        if rank < n_par:
            raise RankDeficientDesignError(
                f"covariates: the design is rank-deficient (rank {rank} of {n_par} columns) in {formula}; "
                "a covariate is confounded with group or with another covariate "
                "(e.g. every participant of a group from one site); drop that covariate"
            )
        hat = (u**2).sum(axis=1)
        high = hat > _LEVERAGE_ONE
        if high.any():
            # Fitted exactly (alone in a covariate level): no information on the
            # group difference, and HC3 would divide 0 by 0. Exclude and refit.
            lev_excluded[np.flatnonzero(rows)[high]] = True
            continue
        break

    fit = model.fit(cov_type="HC3", use_t=True)
    ci = fit.conf_int(alpha=alpha)
    gap_used, grp_used = prep["gap"][rows], groups[rows]
    ref_gaps = gap_used[grp_used == ref]
    dropped = {c: dropped[c] for c in prep["covariates"] if c in dropped}  # in the order given
    dropped_text = "; ".join(f"{k} ({v})" for k, v in dropped.items())
    out = []
    for g in compared:
        prefix = f"C({names[prep['group_name']]},"
        pname = next((p for p in fit.params.index if p.startswith(prefix) and p.endswith(f"[T.{g}]")), None)
        if pname is None:  # pragma: no cover - the formula engines name treatment columns this way
            raise RuntimeError(f"no coefficient for group {g!r} among {list(fit.params.index)}")
        gaps_g = gap_used[grp_used == g]
        try:
            d = cohens_d(gaps_g, ref_gaps, confidence=1.0 - alpha)
        except StatsInputError:
            d = {"d": np.nan, "ci_low": np.nan, "ci_high": np.nan}
        out.append(
            {
                "group": g,
                "n": int(gaps_g.size),
                "mean_gap": float(fit.params[pname]),
                "se": float(fit.bse[pname]),
                "ci_low": float(ci.loc[pname, 0]),
                "ci_high": float(ci.loc[pname, 1]),
                "cohens_d": d["d"],
                "d_ci_low": d["ci_low"],
                "d_ci_high": d["ci_high"],
                "p": float(fit.pvalues[pname]),
                "model": formula,
                "raw_mean_gap": float(gaps_g.mean()),
                "reference_mean_gap": float(ref_gaps.mean()),
                "dropped_covariates": dropped_text,
            }
        )
    result = pd.DataFrame(out, columns=list(GROUP_COLUMNS))
    result.attrs.update(
        {
            "formula": formula,
            "dropped_covariates": dropped,
            "dropped_groups": dropped_groups,
            "n_excluded_missing": prep["n_missing"],
            "n_excluded_missing_covariates": int(
                (~lev_excluded & ~np.isin(groups, list(dropped_groups)) & ~rows).sum()
            ),
            "n_excluded_leverage_one": int(lev_excluded.sum()),
            "reference": prep["refs"],
            "reference_label": ref,
            "n_reference": int(ref_gaps.size),
            "n_used": n_rows,
            "cov_type": "HC3",
            "confidence": 1.0 - alpha,
        }
    )
    return result, {"fit": fit}


def compare_groups(
    table: pd.DataFrame,
    *,
    gap: str = "gap_corrected",
    group: str = "group",
    reference: str | Sequence[str] = "control",
    covariates: Sequence[str] = ("age", "age2", "sex", "site"),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Covariate-adjusted brain-age-gap differences of each group from the reference.

    Fits one OLS model with every group,
    ``gap ~ C(group, Treatment(reference)) + covariates``, with HC3 robust
    standard errors (``cov_type="HC3"``; t intervals and p-values on the
    residual degrees of freedom), and reports one row per non-reference group.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per participant.
    gap : str
        Column of brain-age gaps (years), usually the bias-corrected gap.
    group : str
        Column of group labels (labels are compared as strings).
    reference : str or sequence of str
        Label of the reference group, matched exactly; a sequence of labels
        (e.g. ``("control", "HC")``) is pooled into one reference group, named
        by the labels joined with ``"|"`` in the formula.
    covariates : sequence of str
        Covariate columns. ``sex``, ``site`` and non-numeric columns enter as
        categorical ``C(name)``; the others linearly. ``age2`` is derived when
        the table has no such column but has ``age``: ``age2 = (age −
        mean(age))²`` over the participants used, centred so that it is not
        nearly collinear with ``age`` (the group coefficient is unchanged by
        centring when ``age`` is in the model). A covariate that is absent, all
        missing, or constant among the participants used (one level, zero
        variance; e.g. ``site`` with one site) is dropped and the drop reported.
    confidence : float
        Coverage of the intervals.

    Returns
    -------
    pandas.DataFrame
        One row per compared group (sorted by label), columns
        :data:`GROUP_COLUMNS`:

        ``group``, ``n``
            the label and its number of participants in the model;
        ``mean_gap``, ``se``, ``ci_low``, ``ci_high``, ``p``
            the group's model coefficient, i.e. the **covariate-adjusted
            difference in mean gap, group minus reference, in years** (not the
            group's own mean gap), with its HC3 standard error, t interval and
            two-sided p-value;
        ``cohens_d``, ``d_ci_low``, ``d_ci_high``
            unadjusted Cohen's d of the group's gaps against the reference
            group's gaps (pooled SD, :func:`cohens_d`) over the same
            participants;
        ``model``
            the formula actually fitted (after drops);
        ``raw_mean_gap``, ``reference_mean_gap``
            the plain mean gap of the group and of the reference group;
        ``dropped_covariates``
            ``"; "``-joined ``"name (reason)"``, or ``""`` when none.

        ``result.attrs`` holds ``formula``, ``dropped_covariates`` (dict name →
        reason), ``dropped_groups`` (dict label → reason), ``n_excluded_missing``
        (rows without a gap or a group label), ``n_excluded_missing_covariates``
        (rows missing a covariate that was kept), ``n_excluded_leverage_one``
        (participants alone in a covariate level, e.g. the only one from a site:
        fitted exactly, they carry no information on the group difference and
        make HC3 undefined, so they are left out), ``reference``,
        ``reference_label``, ``n_reference``, ``n_used``, ``cov_type`` and
        ``confidence``.

    Raises
    ------
    StatsInputError
        If ``table`` is not a DataFrame, the gap or group column is missing or
        the gap is not numeric, no participant carries the reference label (the
        message lists the labels found), the reference group has fewer than 2
        participants, no other group has at least 2, there are no more
        participants than model parameters, or the design is rank-deficient.

    Notes
    -----
    A non-reference group with fewer than 2 participants (with complete data)
    is not an error: it is left out of the model and listed in
    ``attrs["dropped_groups"]`` with the reason.

    Examples
    --------
    >>> t = pd.DataFrame({"gap_corrected": [0.0, 1, 2, 3, 4, 6], "group": ["control"] * 3 + ["patient"] * 3})
    >>> r = compare_groups(t, covariates=())
    >>> row = r.iloc[0]
    >>> row["group"], int(row["n"]), round(float(row["mean_gap"]), 3), round(float(row["raw_mean_gap"]), 3)
    ('patient', 3, 3.333, 4.333)
    >>> r.attrs["formula"]
    "gap_corrected ~ C(group, Treatment(reference='control'))"
    """
    alpha = _check_confidence(confidence)
    refs = _reference_labels(reference)
    if isinstance(covariates, str):
        covariates = (covariates,)
    prep = _prepare(table, gap, group, refs, tuple(covariates))
    result, _ = _fit(prep, alpha)
    return result


# ---------------------------------------------------------------------------
# per_site


def __getattr__(name):
    if name in _IN_SITES:
        from . import sites

        return getattr(sites, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
