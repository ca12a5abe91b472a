"""Cross-validation folds by participant, stratified by age, or leave-site-out.

The unit of a fold is the participant: every row (session) of a participant
lands in the same fold, so no participant is ever on both sides of a split.
Only rows marked ``train`` (the controls: models are trained on controls only)
get a fold; the others get :data:`NOT_IN_FOLDS` and are predicted by every fold
model, none of which saw them.

``scheme="kfold"`` draws ``n_splits`` folds with scikit-learn's
``StratifiedGroupKFold`` on age quantile bins, shuffled with ``seed``, so each
fold covers the whole age range (MAE and r depend on it).
``scheme="leave_site_out"`` makes each site one fold: the held-out accuracy is
then that of a site the model never saw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ..exceptions import GroupLevelError

__all__ = ["NOT_IN_FOLDS", "SCHEMES", "assign_folds"]

#: Fold label of rows that are not trained on (patients): predicted by every fold model.
NOT_IN_FOLDS = -1
#: The fold schemes, by name.
SCHEMES = ("kfold", "leave_site_out")
# Age bins for stratification: at most this many, each with at least 2 × n_splits participants.
_MAX_AGE_BINS = 10


def _per_participant(table: pd.DataFrame, column: str, ids: pd.Series, what: str) -> pd.Series:
    """One value per participant; an error naming the participants whose rows disagree."""
    values = table[column]
    n_distinct = values.groupby(ids, sort=False).nunique(dropna=False)
    mixed = n_distinct[n_distinct > 1].index.tolist()
    if mixed:
        raise GroupLevelError(
            f"{what}: participant(s) {', '.join(map(str, mixed[:5]))} have different {column!r} values "
            "across their rows (sessions); a participant belongs to one fold, so the value must agree"
        )
    return values.groupby(ids, sort=False).first()


def assign_folds(
    table: pd.DataFrame,
    *,
    train=None,
    n_splits: int = 5,
    scheme: str = "kfold",
    seed: int = 0,
    participant: str = "participant_id",
    age: str = "age",
    site: str = "site",
) -> np.ndarray:
    """Assign each row of a participants table to a cross-validation fold.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per participant, or per participant × session.
    train : array-like of bool, optional
        Rows that may be trained on (the controls); the others get
        :data:`NOT_IN_FOLDS`. Default: every row.
    n_splits : int
        Number of folds with ``scheme="kfold"`` (at least 2); ignored by
        ``"leave_site_out"``, which has one fold per site.
    scheme : {"kfold", "leave_site_out"}
        Age-stratified k-fold, or one fold per site.
    seed : int
        Seed of the shuffling (``"kfold"``); the same seed gives the same folds.
    participant, age, site : str
        Column names.

    Returns
    -------
    numpy.ndarray of int, shape (len(table),)
        Fold index per row (0 … k−1), or :data:`NOT_IN_FOLDS`.

    Raises
    ------
    GroupLevelError
        On a missing column, missing ages among the trained rows, a
        participant whose rows disagree (age, site, train), fewer trained
        participants than folds, or fewer than two sites for
        ``"leave_site_out"``.

    Examples
    --------
    >>> t = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(20)],
    ...                   "age": np.linspace(20, 80, 20)})
    >>> folds = assign_folds(t, n_splits=4, seed=1)
    >>> np.bincount(folds).tolist()
    [5, 5, 5, 5]
    """
    if scheme not in SCHEMES:
        raise GroupLevelError(f"scheme: {scheme!r} is not a fold scheme; choose one of {', '.join(SCHEMES)}")
    needed = [participant, age] + ([site] if scheme == "leave_site_out" else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise GroupLevelError(
            f"participants table: missing column(s) {', '.join(missing)} needed for {scheme} folds"
        )
    n_rows = len(table)
    mask = np.ones(n_rows, bool) if train is None else np.asarray(train, dtype=bool)
    if mask.shape != (n_rows,):
        raise GroupLevelError(f"train: expected {n_rows} flags (one per row), got shape {mask.shape}")
    ids = table[participant].astype(str).reset_index(drop=True)
    frame = table.reset_index(drop=True).assign(_train=mask)
    unit_train = _per_participant(frame, "_train", ids, "train")
    # Sorted, so that the folds depend on the participants and the seed, not on the row order.
    units = pd.Index(sorted(unit_train.index[unit_train.to_numpy(dtype=bool)]))
    if units.size == 0:
        raise GroupLevelError("train: no participant may be trained on; mark the controls as trainable")
    sub = frame[ids.isin(units).to_numpy()]
    sub_ids = ids[ids.isin(units)]
    unit_age = pd.to_numeric(_per_participant(sub, age, sub_ids, "age"), errors="coerce").loc[units]
    if unit_age.isna().any():
        bad = unit_age.index[unit_age.isna()].tolist()
        raise GroupLevelError(
            f"age: participant(s) {', '.join(bad[:5])} have no numeric age; add it to participants.tsv "
            "or leave them out of training"
        )
    fold_of: dict[str, int] = {}
    if scheme == "leave_site_out":
        unit_site = _per_participant(sub, site, sub_ids, "site").loc[units].astype(str)
        sites = sorted(unit_site.unique())
        if len(sites) < 2:
            raise GroupLevelError(
                f"site: leave-site-out folds need at least 2 sites among the trained participants, "
                f"found {len(sites)} ({', '.join(sites)}); use scheme='kfold'"
            )
        fold_of = {u: sites.index(s) for u, s in unit_site.items()}
    else:
        if int(n_splits) != n_splits or n_splits < 2:
            raise GroupLevelError(f"n_splits: expected an integer of at least 2, got {n_splits!r}")
        if units.size < n_splits:
            raise GroupLevelError(
                f"n_splits: {n_splits} folds need at least {n_splits} trained participants, found "
                f"{units.size}; lower n_splits or add controls"
            )
        n_bins = int(np.clip(units.size // (2 * n_splits), 1, _MAX_AGE_BINS))
        ranks = unit_age.rank(method="first").to_numpy()
        bins = np.minimum((ranks - 1) * n_bins // units.size, n_bins - 1).astype(int)
        splitter = StratifiedGroupKFold(n_splits=int(n_splits), shuffle=True, random_state=seed)
        unit_ids = np.asarray(units, dtype=object)
        for k, (_, test) in enumerate(splitter.split(unit_ids, bins, groups=unit_ids)):
            fold_of.update({u: k for u in unit_ids[test]})
    return np.array([fold_of.get(u, NOT_IN_FOLDS) for u in ids], dtype=int)
