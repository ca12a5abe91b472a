"""Model bundle: a folder with safetensors arrays and JSON config and metadata, never pickle.

Layout (format ``brainage-model-bundle`` 1.1)::

    BUNDLE/
      model.safetensors   the estimator's arrays: network weights and input scalers
                          (PIDRegressor, BaselineRegressor) or the scaler, PCA,
                          coefficients / GPR training inputs (ClassicalRegressor)
      config.json         format version, estimator class and parameters, what is needed
                          to rebuild the estimator (architecture and target scaling, or
                          the classical model's scalars), SHA-256 of model.safetensors
                          and of each extra file
      metadata.json       versions, training-data summary, fit summary (PID atoms, epochs,
                          ridge penalty or GPR kernel), training history
      extra.json          optional: JSON the caller adds (``save_bundle(extra_json=…)``)
      extra.safetensors   optional: arrays the caller adds (``save_bundle(extra_arrays=…)``)

The group level keeps its ComBat harmonisation, age-bias correction and input
specification in the two extra files (:func:`read_bundle_extra`).

Loading parses JSON and safetensors only, so it never executes code from the
bundle. It refuses a bundle whose major format version differs from
:data:`FORMAT_VERSION`, an estimator class it does not know, any file whose
checksum does not match the config, architecture sizes beyond
:data:`MAX_LAYERS` and :data:`MAX_WIDTH`, and weights whose names or shapes
differ from the architecture's, checked on PyTorch's ``meta`` device before
the network is built, so a crafted config cannot make the loader allocate
more than the weights file holds. A bundle is written to a temporary folder
beside ``path`` and then renamed into place, so an interrupted save never
leaves a half-written bundle.

What the checksums protect against: corruption (a truncated copy, a changed
file, an extra file added later). They are not a signature: whoever can change
``model.safetensors`` can change the checksum in ``config.json`` too. To know
that a bundle is the one its author trained, compare :func:`bundle_digest`
(one SHA-256 over every file of the bundle, recorded in the training's and each
application's provenance) with the value the author published.

Version history: 1.0, PIDRegressor only; 1.1 adds BaselineRegressor,
ClassicalRegressor, the ``extra_files`` checksums in config.json and the
``fit`` block of metadata.json. A 1.0 bundle loads unchanged.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from brainage.estimators.bundle_checks import (
    MAX_LAYERS,
    MAX_WIDTH,
    check_architecture_bounds,
    check_state_shapes,
)
from brainage.estimators.bundle_checks import REEXPORT as _REEXPORT
from brainage.exceptions import ModelBundleError, UsageError
from brainage.provenance import sha256_file
from brainage.writing import jsonable

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_LAYERS",
    "MAX_WIDTH",
    "bundle_digest",
    "load_bundle",
    "read_bundle_extra",
    "read_bundle_metadata",
    "save_bundle",
]

FORMAT_NAME = "brainage-model-bundle"
FORMAT_VERSION = "1.1"
_WEIGHTS, _CONFIG, _META = "model.safetensors", "config.json", "metadata.json"
_EXTRA_JSON, _EXTRA_ARRAYS = "extra.json", "extra.safetensors"
_FILES = (_WEIGHTS, _CONFIG, _META, _EXTRA_JSON, _EXTRA_ARRAYS)
_NEURAL = ("PIDRegressor", "BaselineRegressor")
_RECOPY = "copy the bundle again from its source"


def _dumps(data: Mapping, *, sort_keys: bool = True) -> str:
    return json.dumps(jsonable(data), indent=2, sort_keys=sort_keys, allow_nan=False)


def _versions() -> dict:
    from importlib import metadata

    import brainage

    def dist(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    out = {"brainage": brainage.__version__}
    for name in ("torch", "monai", "numpy", "scikit-learn", "safetensors"):
        out[name] = dist(name)
    out |= {"python": sys.version.split()[0], "platform": platform.platform()}
    return out


def _estimator_classes() -> dict:
    from brainage.estimators.baselines import BaselineRegressor
    from brainage.estimators.classical import ClassicalRegressor
    from brainage.estimators.regressor import PIDRegressor

    return {"PIDRegressor": PIDRegressor, "BaselineRegressor": BaselineRegressor,
            "ClassicalRegressor": ClassicalRegressor}


# ---------------------------------------------------------------------- writing
def _neural_payload(estimator) -> tuple[dict, dict, dict]:
    """(tensors, config fields, metadata fields) of a PIDRegressor or BaselineRegressor."""
    import torch

    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in estimator.model_.state_dict().items()}
    for m, v in estimator.input_mean_.items():
        tensors[f"scaler.mean.{m}"] = torch.from_numpy(np.asarray(v, dtype=np.float32))
        tensors[f"scaler.scale.{m}"] = torch.from_numpy(
            np.asarray(estimator.input_scale_[m], dtype=np.float32))
    config = {
        "config": estimator.config_.to_dict(),
        "modalities": estimator.modalities_,
        "encoder_specs": estimator.encoder_specs_,
        "input_shapes": estimator.input_shapes_,
        "y_mean": estimator.y_mean_,
        "y_scale": estimator.y_scale_,
    }
    meta = {
        "fit": {"best_epoch": estimator.best_epoch_, "n_epochs": estimator.n_epochs_,
                "stage2_epoch": getattr(estimator, "stage2_epoch_", None)},
        "history": estimator.history_,
    }
    if type(estimator).__name__ == "PIDRegressor":
        meta["pid"] = {
            "atoms": estimator.pid_,
            "unavailable": getattr(estimator, "pid_unavailable_", {}),
            "weights_atoms": estimator.pid_weights_atoms_,
            "fusion_weights": estimator.fusion_weights_,
            "bottleneck_lambdas": estimator.bottleneck_lambdas_,
            "stage2_epoch": estimator.stage2_epoch_,
            "best_epoch": estimator.best_epoch_,
            "n_epochs": estimator.n_epochs_,
            "gaussianity": estimator.gaussianity_,
            "history": estimator.pid_history_,
            "fusion_weights_history": estimator.fusion_weights_history_,
        }
    return tensors, config, meta


def _classical_payload(estimator) -> tuple[dict, dict, dict]:
    state, arrays = estimator._bundle_state()
    fit = {"kind": estimator.kind}
    if estimator.kind == "ridge":
        fit["alpha"] = estimator.alpha_
    else:
        fit |= {"kernel_params": estimator.kernel_params_, "n_components": estimator.n_components_,
                "log_marginal_likelihood": estimator.log_marginal_likelihood_}
    config = {"modalities": estimator.modalities_, "input_shapes": estimator.input_shapes_,
              "state": state}
    return arrays, config, {"fit": fit}


def _check_extra(extra_json, extra_arrays) -> tuple[str | None, dict | None]:
    text = None
    if extra_json is not None:
        if not isinstance(extra_json, Mapping):
            raise UsageError(f"extra_json must be a dict, got {type(extra_json).__name__}.")
        try:
            text = _dumps(extra_json, sort_keys=False)
        except (TypeError, ValueError) as err:
            raise UsageError(
                f"extra_json cannot be written as JSON ({err}); keep it to dicts, lists, "
                "strings, numbers and booleans, and put arrays in extra_arrays."
            ) from err
    arrays = None
    if extra_arrays is not None:
        if not isinstance(extra_arrays, Mapping):
            raise UsageError(
                f"extra_arrays must be a dict of name to numpy array, got {type(extra_arrays).__name__}.")
        arrays = {}
        for key, value in extra_arrays.items():
            if not isinstance(key, str) or not key:
                raise UsageError(f"extra_arrays names must be non-empty strings, got {key!r}.")
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf":
                raise UsageError(
                    f"extra_arrays[{key!r}] has dtype {arr.dtype}; safetensors stores booleans, "
                    "integers and floats only (put strings in extra_json)."
                )
            arrays[key] = np.ascontiguousarray(arr)
    return text, arrays


def _prepare_target(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file; give a folder for the model bundle.")
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir()
                         if p.name not in _FILES and not p.name.endswith(".tmp"))
        if foreign:
            raise UsageError(
                f"{path} holds files that are not part of a model bundle ({foreign[:5]}); "
                "saving would replace the folder. Choose a new or empty folder for the bundle."
            )
    path.parent.mkdir(parents=True, exist_ok=True)


def _swap_into_place(tmp: Path, path: Path) -> None:
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except OSError:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_bundle(estimator, path, *, extra_json: dict | None = None,
                extra_arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Write a fitted estimator (and optional extra JSON and arrays) to a bundle folder.

    Parameters
    ----------
    estimator : PIDRegressor, BaselineRegressor or ClassicalRegressor
        A fitted estimator.
    path : str or path-like
        Bundle folder (created; an existing bundle there is replaced; a folder
        holding other files is refused).
    extra_json : dict, optional
        Written to ``extra.json`` (insertion order kept; tuples become lists,
        numpy scalars plain numbers, non-finite floats ``null``).
    extra_arrays : dict of str to numpy.ndarray, optional
        Written to ``extra.safetensors`` (boolean, integer or float arrays; dtype
        and shape kept).

    Returns
    -------
    pathlib.Path
        The bundle folder.

    Raises
    ------
    TypeError
        If the estimator is not one the bundle knows.
    UsageError
        If ``path`` is a file or a folder with other content, or the extras
        cannot be stored as JSON / safetensors.
    """
    from sklearn.utils.validation import check_is_fitted

    name = type(estimator).__name__
    classes = _estimator_classes()
    if name not in classes or type(estimator) is not classes[name]:
        raise TypeError(f"Cannot bundle a {type(estimator).__name__}; supported: {sorted(classes)}.")
    neural = name in _NEURAL
    check_is_fitted(estimator, "model_" if neural else "feature_dims_")
    extra_text, extra_arr = _check_extra(extra_json, extra_arrays)
    arrays, config_fields, meta_fields = (_neural_payload if neural else _classical_payload)(estimator)
    path = Path(path)
    _prepare_target(path)
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        if neural:
            from safetensors.torch import save_file
        else:
            from safetensors.numpy import save_file
        save_file(arrays, str(tmp / _WEIGHTS), metadata=header)
        extra_files = {}
        if extra_arr is not None:
            from safetensors.numpy import save_file as save_numpy

            save_numpy(extra_arr, str(tmp / _EXTRA_ARRAYS), metadata=header)
            extra_files[_EXTRA_ARRAYS] = sha256_file(tmp / _EXTRA_ARRAYS)
        if extra_text is not None:
            (tmp / _EXTRA_JSON).write_text(extra_text)
            extra_files[_EXTRA_JSON] = sha256_file(tmp / _EXTRA_JSON)
        config = {
            **header,
            "estimator": name,
            "params": estimator.get_params(deep=False),
            **config_fields,
            "weights_sha256": sha256_file(tmp / _WEIGHTS),
            "extra_files": extra_files,
        }
        meta = {"versions": _versions(), "training_data": estimator.training_summary_, **meta_fields}
        (tmp / _META).write_text(_dumps(meta))
        (tmp / _CONFIG).write_text(_dumps(config))
        _swap_into_place(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# ---------------------------------------------------------------------- reading
def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelBundleError(
            path, "is missing", "point to a folder written by save_bundle() (estimator.save())")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelBundleError(path, f"is not valid JSON ({err})", _REEXPORT) from err
    if not isinstance(data, dict):
        raise ModelBundleError(path, f"holds a JSON {type(data).__name__}, not an object", _REEXPORT)
    return data


def bundle_digest(path) -> str:
    """Return one SHA-256 over the bundle's files, to compare with the one its author published.

    The digest hashes each file's name and SHA-256, in name order, so it changes
    when any file of the bundle changes, is added or is removed.

    Parameters
    ----------
    path : str or path-like
        Bundle folder.

    Returns
    -------
    str
        ``"sha256:"`` and 64 hexadecimal digits.

    Raises
    ------
    ModelBundleError
        If ``path`` is not a folder holding a bundle's config.json.
    """
    import hashlib

    path = Path(path)
    if not (path / _CONFIG).is_file():
        raise ModelBundleError(path / _CONFIG, "is missing",
                               "pass the bundle folder that save_bundle() wrote")
    h = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return "sha256:" + h.hexdigest()


def read_bundle_metadata(path) -> dict:
    """Return ``{"config": …, "metadata": …}`` of a bundle without loading weights."""
    path = Path(path)
    return {"config": _read_json(path / _CONFIG), "metadata": _read_json(path / _META)}


def _check_version(cfg_path: Path, cfg: dict) -> None:
    if cfg.get("format") != FORMAT_NAME:
        raise ModelBundleError(
            cfg_path, f"is not a brainage model bundle (format {cfg.get('format')!r})",
            "point to a folder written by save_bundle() (estimator.save())",
        )
    version = str(cfg.get("format_version", ""))
    major = version.split(".")[0]
    if major != FORMAT_VERSION.split(".")[0]:
        raise ModelBundleError(
            cfg_path,
            f"has bundle format version {version!r}, but this brainage reads format "
            f"{FORMAT_VERSION.split('.')[0]}.x",
            "load it with the brainage version that wrote it (see metadata.json 'versions'), "
            "or retrain the model with this version",
        )


def _read_config(path: Path) -> tuple[Path, dict]:
    cfg_path = path / _CONFIG
    cfg = _read_json(cfg_path)
    _check_version(cfg_path, cfg)
    return cfg_path, cfg


def _verify_extra_files(path: Path, cfg: dict) -> dict:
    """Check each extra file against its recorded checksum; return ``{name: sha}``."""
    recorded = cfg.get("extra_files") or {}
    if not isinstance(recorded, dict):
        raise ModelBundleError(path / _CONFIG, "has an invalid 'extra_files' entry", _REEXPORT)
    for name in (_EXTRA_JSON, _EXTRA_ARRAYS):
        file = path / name
        if name not in recorded:
            if file.exists():
                raise ModelBundleError(
                    file, "is not recorded in config.json (added after the bundle was written)",
                    f"remove it, or {_REEXPORT} with the extras",
                )
            continue
        if not file.is_file():
            raise ModelBundleError(file, "is missing (config.json records it)",
                                   "copy the whole bundle folder")
        if sha256_file(file) != recorded[name]:
            raise ModelBundleError(
                file, "does not match the checksum recorded in config.json (modified or truncated)",
                _RECOPY,
            )
    return recorded


def read_bundle_extra(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Return the extra JSON and arrays stored by ``save_bundle(extra_json=…, extra_arrays=…)``.

    Parameters
    ----------
    path : str or path-like
        Bundle folder.

    Returns
    -------
    dict, dict of str to numpy.ndarray
        The extra JSON and arrays; empty when the bundle has none.

    Raises
    ------
    ModelBundleError
        If the bundle's config is missing or from another major format version,
        or an extra file is missing, unrecorded, tampered with, truncated or
        unreadable.
    """
    path = Path(path)
    _, cfg = _read_config(path)
    recorded = _verify_extra_files(path, cfg)
    data, arrays = {}, {}
    if _EXTRA_JSON in recorded:
        data = _read_json(path / _EXTRA_JSON)
    if _EXTRA_ARRAYS in recorded:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            arrays = load_file(str(path / _EXTRA_ARRAYS))
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelBundleError(path / _EXTRA_ARRAYS, f"cannot be read ({err})", _RECOPY) from err
    return data, arrays


def _load_arrays(weights: Path, neural: bool) -> dict:
    from safetensors import SafetensorError

    if neural:
        from safetensors.torch import load_file
    else:
        from safetensors.numpy import load_file
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelBundleError(weights, f"cannot be read ({err})", _RECOPY) from err


def load_bundle(path):
    """Load an estimator from a bundle folder written by :func:`save_bundle`.

    Parameters
    ----------
    path : str or path-like
        Bundle folder.

    Returns
    -------
    PIDRegressor, BaselineRegressor or ClassicalRegressor
        Fitted, ready to ``predict`` (the extras: :func:`read_bundle_extra`).

    Raises
    ------
    ModelBundleError
        If the bundle is incomplete, from an incompatible format version, names an
        unknown estimator, or its weights or extra files do not match their checksums,
        or the weights do not fit the architecture.
    """
    path = Path(path)
    cfg_path, cfg = _read_config(path)
    meta = _read_json(path / _META)
    classes = _estimator_classes()
    if cfg.get("estimator") not in classes:
        raise ModelBundleError(
            cfg_path, f"names an unknown estimator {cfg.get('estimator')!r}",
            f"this brainage can load {sorted(classes)}",
        )
    weights = path / _WEIGHTS
    if not weights.is_file():
        raise ModelBundleError(weights, "is missing", "copy the whole bundle folder")
    if sha256_file(weights) != cfg.get("weights_sha256"):
        raise ModelBundleError(
            weights, "does not match the checksum recorded in config.json (modified or "
            "truncated)", _RECOPY,
        )
    _verify_extra_files(path, cfg)
    neural = cfg["estimator"] in _NEURAL
    arrays = _load_arrays(weights, neural)
    est = classes[cfg["estimator"]]()
    known = set(est.get_params(deep=False))
    try:
        est.set_params(**{k: v for k, v in dict(cfg["params"]).items() if k in known})
    except (KeyError, TypeError, ValueError) as err:
        raise ModelBundleError(cfg_path, f"has invalid estimator parameters ({err})", _REEXPORT) from err
    if neural:
        return _restore_neural(est, cfg, meta, arrays, cfg_path, weights)
    try:
        return est._set_bundle_state(cfg["state"], arrays, meta.get("training_data"))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelBundleError(
            cfg_path, f"and {_WEIGHTS} describe an invalid {cfg['estimator']} ({err!r})", _REEXPORT,
        ) from err


def _restore_neural(est, cfg: dict, meta: dict, tensors: dict, cfg_path: Path, weights: Path):
    from brainage.models.presets import PIDRegConfig

    try:
        config = PIDRegConfig.from_dict(cfg["config"])
        est.config_ = config
        est.modalities_ = list(cfg["modalities"])
        est.encoder_specs_ = {m: dict(cfg["encoder_specs"][m]) for m in est.modalities_}
        est.input_shapes_ = {m: list(cfg["input_shapes"][m]) for m in est.modalities_}
        est.y_mean_, est.y_scale_ = float(cfg["y_mean"]), float(cfg["y_scale"])
        check_architecture_bounds(cfg_path, config, est.encoder_specs_)
        import torch

        with torch.device("meta"):  # shapes only: nothing is allocated
            skeleton = est._build_model(config, est.encoder_specs_)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelBundleError(cfg_path, f"describes an invalid model ({err})", _REEXPORT) from err
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_shapes(skeleton, state, weights)
    model = est._build_model(config, est.encoder_specs_)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelBundleError(
            weights, f"does not fit the architecture in config.json ({err})", _REEXPORT,
        ) from err
    est.model_ = model.eval()
    est.input_mean_ = {m: tensors[f"scaler.mean.{m}"].numpy()
                       for m in est.modalities_ if f"scaler.mean.{m}" in tensors}
    est.input_scale_ = {m: tensors[f"scaler.scale.{m}"].numpy()
                        for m in est.modalities_ if f"scaler.scale.{m}" in tensors}
    pid = meta.get("pid", {})
    fit = meta.get("fit", pid)  # 1.0 bundles keep the epochs in the PID block
    est.best_epoch_ = fit.get("best_epoch")
    est.n_epochs_ = fit.get("n_epochs")
    est.history_ = meta.get("history", [])
    est.training_summary_ = meta.get("training_data", {})
    est.device_ = "cpu"
    if cfg["estimator"] == "PIDRegressor":
        est.pid_ = pid.get("atoms", {})
        est.pid_unavailable_ = pid.get("unavailable", {})
        est.pid_weights_atoms_ = pid.get("weights_atoms", {})
        est.fusion_weights_ = model.fusion_weights_dict()
        est.bottleneck_lambdas_ = model.bottleneck_lambdas()
        est.stage2_epoch_ = pid.get("stage2_epoch")
        est.gaussianity_ = pid.get("gaussianity", {})
        est.pid_history_ = pid.get("history", [])
        est.fusion_weights_history_ = pid.get("fusion_weights_history", [])
    return est
