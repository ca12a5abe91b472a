"""Feature transforms fitted inside a training fold: ComBat, feature selection, principal components.

A model of the comparison never sees raw tabular features: each fit first
fits, on its own training participants only,

1. ComBat per tabular modality (``group.combat.enabled``), then
2. a selection of the ``K`` features most correlated with age where the input
   sets ``select: K`` (univariate F-test, scikit-learn's ``f_regression``, on
   the training participants' ages: the edge selection of connectome-based
   predictive modelling, Shen et al. 2017, doi:10.1038/nprot.2016.178), then
3. a principal-component reduction where the input sets ``pca: K``
   (z-scored features projected on the first ``K`` components).

The fitted transforms are applied unchanged to every participant the model
predicts, and the ones of the final model travel in the bundle
(:meth:`FeatureTransforms.to_bundle`). Maps (``kind: maps``) pass through as
lazily read volume datasets.

Why the reduction: a connectivity matrix of the HarvardOxford atlas has 6,328
edges, against a hundred-odd regional volumes and a few dozen training
controls per fold. Concatenated (ridge) the edges swamp the volumes; one MLP
encoder per modality has more weights than participants. The principal
components of the edges keep the shared variance (network-wide coupling
changes, which is what ageing does to connectivity) in a few dozen numbers,
fitted where a scaler is fitted and so without leakage. When the age effect
lives in a small subset of edges (one network's coupling), the leading
components of all edges miss it and a supervised selection finds it; the
selection uses the training participants' ages only, so it is as leak-free as
the model's own fit (``tests/test_group_cv.py`` holds the canary).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..exceptions import GroupLevelError, StatsInputError
from ..stats.harmonize import ComBat

__all__ = ["FeatureTransforms", "PCAReduction", "select_features", "volume_cache"]


def volume_cache(cohort, modalities, budget_gb: float, *, mode: str = "memory", folder=None,
                 workers: int | None = None) -> dict | None:
    """Return a shared store for the cohort's maps, or None to stream them from their NIfTI files.

    ``mode`` (``group.volume_cache``) chooses:

    ``"memory"`` (the default)
        The maps of ``modalities`` are kept in memory after their first read when, as float32,
        they take at most ``budget_gb`` (``group.cache_maps_gb``): a demo-sized cohort then reads
        each file once instead of once per epoch and fold, and a large cohort streams.
    ``"auto"``
        As ``"memory"`` within the budget; above it, the on-disk cache of ``"disk"`` instead of
        streaming.
    ``"disk"``
        Every map modality is decoded once into a float16 memory-mapped array under ``folder``
        (:class:`brainage.training.volume_cache.VolumeCache`: reused by later runs, re-decoding
        only the participants whose files changed), and read from it every epoch.
    ``"off"``
        Always stream.

    Parameters
    ----------
    cohort : brainage.cohort.data.CohortData
    modalities : sequence of str
        Inputs whose maps are cached (tabular ones are skipped).
    budget_gb : float
        The in-memory budget.
    mode : {"memory", "auto", "disk", "off"}
    folder : path-like, optional
        Where the on-disk caches go (``<modality>.npy`` + ``<modality>.json``). Default
        ``OUTPUT_DIR/group/work/volume_cache``, ``OUTPUT_DIR`` being the derivatives root
        that holds the maps' ``sub-*`` folders.
    workers : int, optional
        Processes decoding the maps into the on-disk cache (default: the CPUs, at most 8).

    Returns
    -------
    dict or None
        An empty dict (filled as maps are read), a
        :class:`~brainage.training.volume_cache.VolumeCacheStore` over the on-disk caches
        (a read-only dict view keyed like the in-memory store), or None.

    Raises
    ------
    GroupLevelError
        An unknown ``mode``, or no ``folder`` given where the maps are not under a ``sub-*``
        folder.
    """
    import nibabel as nib

    if mode not in ("memory", "auto", "disk", "off"):
        raise GroupLevelError(f"group.volume_cache {mode!r} is not one of memory, auto, disk, off")
    maps = [m for m in modalities if cohort.inputs[m].features is None
            and cohort.inputs[m].paths is not None and len(cohort.inputs[m].paths)]
    if mode == "off" or not maps:
        return None
    total = 0
    for m in maps:
        paths = cohort.inputs[m].paths
        first = paths.dropna().iloc[0].to_numpy(dtype=object) if len(paths.dropna()) else []
        voxels = sum(int(np.prod(nib.load(str(p)).shape[:3])) for p in first)
        total += voxels * 4 * len(paths)
    if total == 0:
        return None
    if mode != "disk" and total <= budget_gb * 1e9:
        return {}
    if mode == "memory":
        return None
    import os
    from pathlib import Path

    from ..training.volume_cache import VolumeCache, VolumeCacheStore

    if folder is None:
        some = Path(str(cohort.inputs[maps[0]].paths.dropna().iloc[0, 0]))
        subs = [p for p in some.parents if p.name.startswith("sub-")]
        if not subs:
            raise GroupLevelError(f"cannot place the volume cache: {some} is not under a sub-* folder of "
                                  "a derivatives root; give volume_cache a folder")
        folder = subs[0].parent / "group" / "work" / "volume_cache"
    workers = workers if workers is not None else max(1, min(8, os.cpu_count() or 1))
    from ..training.distributed import barrier, rank_and_world

    rank, world = rank_and_world()
    if world > 1 and rank > 0:
        barrier()  # data-parallel training: rank 0 builds or updates the shared cache first
    caches = {}
    for m in maps:
        paths = cohort.inputs[m].paths.dropna()  # a participant without the modality has no slot
        caches[m] = VolumeCache.open(folder, paths.to_numpy(dtype=object).tolist(),
                                     keys=[str(k) for k in paths.index], name=m, workers=workers)
    if world > 1 and rank == 0:
        barrier()  # the other ranks open what rank 0 wrote, and reuse it
    return VolumeCacheStore(caches)


def select_features(X: np.ndarray, age: np.ndarray, k: int) -> np.ndarray:
    """Return the sorted column indices of the ``k`` features most associated with age (F-test).

    Constant columns (F undefined) are never selected; ties keep the lower index.
    """
    from sklearn.feature_selection import f_regression

    with np.errstate(divide="ignore", invalid="ignore"):
        f, _ = f_regression(np.asarray(X, dtype=float), np.asarray(age, dtype=float))
    f = np.where(np.isfinite(f), f, -1.0)
    k = int(min(k, X.shape[1]))
    order = np.argsort(-f, kind="stable")[:k]
    return np.sort(order)


@dataclass
class PCAReduction:
    """Z-scoring then projection on principal components, fitted on training rows.

    Attributes
    ----------
    mean, scale : numpy.ndarray of shape (n_features,)
        Training mean and standard deviation (1 where constant).
    components : numpy.ndarray of shape (n_components, n_features)
        Principal axes of the z-scored training features (scikit-learn's PCA).
    explained_variance_ratio : numpy.ndarray of shape (n_components,)
    n_requested : int
        The configured number; fewer are kept when the training set is smaller.
    """

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    n_requested: int

    @classmethod
    def fit(cls, X: np.ndarray, n_components: int, seed: int = 0) -> PCAReduction:
        """Fit on the rows of ``X`` (participants × features)."""
        from sklearn.decomposition import PCA

        X = np.asarray(X, dtype=float)
        mean = X.mean(0)
        sd = X.std(0)
        scale = np.where(sd > 1e-12, sd, 1.0)
        k = int(min(n_components, X.shape[0] - 1, X.shape[1]))
        if k < 1:
            raise GroupLevelError(f"PCA needs at least two training participants; got {X.shape[0]}")
        pca = PCA(n_components=k, svd_solver="full", random_state=seed).fit((X - mean) / scale)
        return cls(mean=mean, scale=scale, components=pca.components_.copy(),
                   explained_variance_ratio=pca.explained_variance_ratio_.copy(),
                   n_requested=int(n_components))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Project rows of ``X`` on the fitted components (the training rows' mean is not removed again)."""
        Z = (np.asarray(X, dtype=float) - self.mean) / self.scale
        # PCA centres on the mean of the z-scored training rows, which is 0 by construction.
        return Z @ self.components.T

    def summary(self) -> dict:
        """Return the sizes and explained variance, for the outputs."""
        return {"n_requested": self.n_requested, "n_components": len(self.components),
                "n_features": int(self.components.shape[1]),
                "explained_variance": float(self.explained_variance_ratio.sum())}


def _combat_covariates(participants, batch: str):
    cov = participants[[batch, "age", "sex"]].copy()
    preserve = tuple(c for c in ("age", "sex") if cov[c].nunique(dropna=True) > 1)
    return cov, preserve


@dataclass
class FeatureTransforms:
    """The transforms of one fit: ComBat and PCA per tabular modality.

    Build with :meth:`fit`; apply with :meth:`inputs`.
    """

    batch: str = "site"
    combat: dict = field(default_factory=dict)
    selected: dict = field(default_factory=dict)
    pca: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, cohort, keys, cfg, modalities, seed: int = 0) -> FeatureTransforms:
        """Fit every configured transform on the participants ``keys``.

        Parameters
        ----------
        cohort : brainage.cohort.data.CohortData
        keys : sequence of str
            Training participants.
        cfg
            ``config.group`` (its ``combat`` section and each input's ``select``
            and ``pca``).
        modalities : sequence of str
            Modalities the model uses.
        seed : int
            Seed of the PCA solver.

        Raises
        ------
        GroupLevelError
            When ComBat cannot be fitted (a site with fewer than two training
            participants, a constant feature …), with the fix.
        """
        out = cls(batch=cfg.combat.batch)
        keys = list(keys)
        cov = None
        for m in modalities:
            inp = cohort.inputs[m]
            if inp.features is None:
                continue
            frame = inp.features.loc[keys]
            if cfg.combat.enabled:
                if cov is None:
                    cov, preserve = _combat_covariates(cohort.participants.loc[keys], cfg.combat.batch)
                nonlinear = ("age",) if cfg.combat.nonlinear_age and "age" in preserve else ()
                model = ComBat(batch=cfg.combat.batch, preserve=preserve, nonlinear=nonlinear)
                try:
                    out.combat[m] = model.fit(frame, cov)
                except StatsInputError as exc:
                    raise GroupLevelError(
                        f"ComBat on {m} could not be fitted on {len(keys)} training participants: "
                        f"{exc}. Merge small sites, or set group.combat.enabled: false"
                    ) from None
                frame = out.combat[m].transform(frame, cov)
            spec = cfg.inputs.get(m)
            values = frame.to_numpy(dtype=float)
            if getattr(spec, "select", None):
                age = cohort.participants.loc[keys, "age"].to_numpy(dtype=float)
                out.selected[m] = select_features(values, age, spec.select)
                values = values[:, out.selected[m]]
            if getattr(spec, "pca", None):
                out.pca[m] = PCAReduction.fit(values, spec.pca, seed=seed)
        return out

    def inputs(self, cohort, keys, modalities, cache: dict | None = None) -> dict:
        """Return the model inputs of ``keys``: transformed features, or volume datasets for maps.

        ``cache`` (from :func:`volume_cache`) is shared by the volume datasets; None streams.
        With an on-disk cache holding every participant of ``keys`` for a modality, that
        modality's dataset reads the cache's memory map directly, whole batches at once
        (:class:`~brainage.training.volume_cache.CachedVolumeDataset`).
        """
        from ..training.volume_cache import VolumeCacheStore

        X = {}
        cov = None
        keys = list(keys)
        for m in modalities:
            inp = cohort.inputs[m]
            if inp.features is None:
                from ..training.datasets import volume_dataset

                disk = cache.caches.get(m) if isinstance(cache, VolumeCacheStore) else None
                if disk is not None and set(map(str, keys)) <= set(disk.keys):
                    X[m] = disk.dataset([str(k) for k in keys])
                    continue
                X[m] = volume_dataset(inp.paths.loc[keys].to_numpy(dtype=object).tolist(),
                                      cache=cache if cache is not None else False)
                continue
            frame = inp.features.loc[keys]
            if m in self.combat:
                if cov is None:
                    cov, _ = _combat_covariates(cohort.participants.loc[keys], self.batch)
                try:
                    frame = self.combat[m].transform(frame, cov)
                except StatsInputError as exc:
                    raise GroupLevelError(f"ComBat on {m}: {exc}") from None
            values = frame.to_numpy(dtype=float)
            if m in self.selected:
                values = values[:, self.selected[m]]
            if m in self.pca:
                values = self.pca[m].transform(values)
            X[m] = values.astype(np.float32)
        return X

    def summary(self) -> dict:
        """Return what was fitted, for the fold records."""
        return {"combat": sorted(self.combat), "selected": {m: len(v) for m, v in self.selected.items()},
                "pca": {m: p.summary() for m, p in self.pca.items()}}

    # ----------------------------------------------------------------- bundle
    def to_bundle(self) -> tuple[dict, dict]:
        """Return (JSON, arrays) for the bundle's extra files."""
        meta = {"batch": self.batch, "combat": {m: h.to_dict() for m, h in self.combat.items()},
                "selected": sorted(self.selected), "pca": {m: p.summary() for m, p in self.pca.items()}}
        arrays = {f"selected.{m}": np.asarray(v, dtype=np.int64) for m, v in self.selected.items()}
        for m, p in self.pca.items():
            for name in ("mean", "scale", "components", "explained_variance_ratio"):
                arrays[f"pca.{m}.{name}"] = np.asarray(getattr(p, name), dtype=np.float64)
        return meta, arrays

    @classmethod
    def from_bundle(cls, meta: dict, arrays: dict) -> FeatureTransforms:
        """Rebuild from :meth:`to_bundle`'s output."""
        out = cls(batch=meta.get("batch", "site"),
                  combat={m: ComBat.from_dict(d) for m, d in meta.get("combat", {}).items()})
        for m in meta.get("selected", []):
            if f"selected.{m}" not in arrays:
                raise GroupLevelError(f"the bundle's feature selection of {m} lacks array selected.{m}")
            out.selected[m] = np.asarray(arrays[f"selected.{m}"], dtype=np.int64)
        for m, info in meta.get("pca", {}).items():
            try:
                parts = {n: arrays[f"pca.{m}.{n}"]
                         for n in ("mean", "scale", "components", "explained_variance_ratio")}
            except KeyError as exc:
                raise GroupLevelError(f"the bundle's PCA of {m} lacks array {exc.args[0]}") from None
            out.pca[m] = PCAReduction(**parts, n_requested=int(info["n_requested"]))
        return out
