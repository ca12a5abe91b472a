"""Model bundle: a folder with safetensors weights and JSON config and metadata.

Layout::

    BUNDLE/
      model.safetensors   network weights and input scalers (safetensors: tensors only)
      config.json         format version, estimator class and parameters, architecture,
                          target scaling, SHA-256 of model.safetensors
      metadata.json       versions, training-data summary, PID summary, training history

Loading parses JSON and safetensors only, so it never executes code from the
bundle. It refuses a bundle whose major format version differs from
:data:`FORMAT_VERSION`, an estimator class it does not know, and weights whose
checksum does not match the config (tampered or truncated files).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from brainage.exceptions import ModelBundleError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "load_bundle", "read_bundle_metadata", "save_bundle"]

FORMAT_NAME = "brainage-model-bundle"
FORMAT_VERSION = "1.0"
_WEIGHTS, _CONFIG, _META = "model.safetensors", "config.json", "metadata.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=True, allow_nan=False))
    os.replace(tmp, path)


def _versions() -> dict:
    import monai
    import safetensors
    import sklearn
    import torch

    import brainage

    return {
        "brainage": brainage.__version__, "torch": torch.__version__, "monai": monai.__version__,
        "numpy": np.__version__, "scikit-learn": sklearn.__version__,
        "safetensors": safetensors.__version__, "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _estimator_classes() -> dict:
    from brainage.models.regressor import PIDRegressor

    return {"PIDRegressor": PIDRegressor}


def save_bundle(estimator, path) -> Path:
    """Write a fitted estimator to a bundle folder.

    Parameters
    ----------
    estimator : PIDRegressor
        A fitted estimator.
    path : str or path-like
        Bundle folder (created; an existing bundle there is replaced).

    Returns
    -------
    pathlib.Path
        The bundle folder.
    """
    from safetensors.torch import save_file
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator, "model_")
    name = type(estimator).__name__
    if name not in _estimator_classes():
        raise TypeError(f"Cannot bundle a {name}; supported: {sorted(_estimator_classes())}.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in estimator.model_.state_dict().items()}
    import torch

    for m, v in estimator.input_mean_.items():
        tensors[f"scaler.mean.{m}"] = torch.from_numpy(np.asarray(v, dtype=np.float32))
        tensors[f"scaler.scale.{m}"] = torch.from_numpy(
            np.asarray(estimator.input_scale_[m], dtype=np.float32))
    fd, tmp = tempfile.mkstemp(dir=path, suffix=".safetensors.tmp")
    os.close(fd)
    save_file(tensors, tmp, metadata={"format": FORMAT_NAME, "format_version": FORMAT_VERSION})
    os.replace(tmp, path / _WEIGHTS)
    params = estimator.get_params(deep=False)
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "estimator": name,
        "params": params,
        "config": estimator.config_.to_dict(),
        "modalities": estimator.modalities_,
        "encoder_specs": estimator.encoder_specs_,
        "input_shapes": estimator.input_shapes_,
        "y_mean": estimator.y_mean_,
        "y_scale": estimator.y_scale_,
        "weights_sha256": _sha256(path / _WEIGHTS),
    }
    meta = {
        "versions": _versions(),
        "training_data": estimator.training_summary_,
        "pid": {
            "atoms": estimator.pid_,
            "weights_atoms": estimator.pid_weights_atoms_,
            "fusion_weights": estimator.fusion_weights_,
            "bottleneck_lambdas": estimator.bottleneck_lambdas_,
            "stage2_epoch": estimator.stage2_epoch_,
            "best_epoch": estimator.best_epoch_,
            "n_epochs": estimator.n_epochs_,
            "gaussianity": estimator.gaussianity_,
            "history": estimator.pid_history_,
            "fusion_weights_history": estimator.fusion_weights_history_,
        },
        "history": estimator.history_,
    }
    _write_json(path / _META, meta)
    _write_json(path / _CONFIG, config)  # written last: its presence marks a complete bundle
    return path


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelBundleError(
            path, "is missing", "point to a folder written by PIDRegressor.save()")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelBundleError(
            path, f"is not valid JSON ({err})", "re-export the model with PIDRegressor.save()"
        ) from err


def read_bundle_metadata(path) -> dict:
    """Return ``{"config": …, "metadata": …}`` of a bundle without loading weights."""
    path = Path(path)
    return {"config": _read_json(path / _CONFIG), "metadata": _read_json(path / _META)}


def _check_version(cfg_path: Path, cfg: dict) -> None:
    if cfg.get("format") != FORMAT_NAME:
        raise ModelBundleError(
            cfg_path, f"is not a brainage model bundle (format {cfg.get('format')!r})",
            "point to a folder written by PIDRegressor.save()",
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


def load_bundle(path):
    """Load an estimator from a bundle folder written by :func:`save_bundle`.

    Parameters
    ----------
    path : str or path-like
        Bundle folder.

    Returns
    -------
    PIDRegressor
        Fitted, ready to ``predict``.

    Raises
    ------
    ModelBundleError
        If the bundle is incomplete, from an incompatible format version, names an
        unknown estimator, or its weights do not match their checksum or architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from brainage.models.presets import PIDRegConfig

    path = Path(path)
    cfg_path = path / _CONFIG
    cfg = _read_json(cfg_path)
    _check_version(cfg_path, cfg)
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
    if _sha256(weights) != cfg.get("weights_sha256"):
        raise ModelBundleError(
            weights, "does not match the checksum recorded in config.json (modified or "
            "truncated)", "copy the bundle again from its source",
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ModelBundleError(weights, f"cannot be read ({err})",
                               "copy the bundle again from its source") from err
    cls = classes[cfg["estimator"]]
    est = cls()
    known = set(est.get_params(deep=False))
    est.set_params(**{k: v for k, v in cfg["params"].items() if k in known})
    try:
        config = PIDRegConfig.from_dict(cfg["config"])
        est.config_ = config
        est.modalities_ = list(cfg["modalities"])
        est.encoder_specs_ = {m: dict(cfg["encoder_specs"][m]) for m in est.modalities_}
        est.input_shapes_ = {m: list(cfg["input_shapes"][m]) for m in est.modalities_}
        est.y_mean_, est.y_scale_ = float(cfg["y_mean"]), float(cfg["y_scale"])
        model = est._build_model(config, est.encoder_specs_)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelBundleError(cfg_path, f"describes an invalid model ({err})",
                               "re-export the model with PIDRegressor.save()") from err
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelBundleError(
            weights, f"does not fit the architecture in config.json ({err})",
            "re-export the model with PIDRegressor.save()",
        ) from err
    est.model_ = model.eval()
    est.input_mean_ = {m: tensors[f"scaler.mean.{m}"].numpy()
                       for m in est.modalities_ if f"scaler.mean.{m}" in tensors}
    est.input_scale_ = {m: tensors[f"scaler.scale.{m}"].numpy()
                        for m in est.modalities_ if f"scaler.scale.{m}" in tensors}
    pid = meta.get("pid", {})
    est.pid_ = pid.get("atoms", {})
    est.pid_weights_atoms_ = pid.get("weights_atoms", {})
    est.fusion_weights_ = model.fusion_weights_dict()
    est.bottleneck_lambdas_ = model.bottleneck_lambdas()
    est.stage2_epoch_ = pid.get("stage2_epoch")
    est.best_epoch_ = pid.get("best_epoch")
    est.n_epochs_ = pid.get("n_epochs")
    est.gaussianity_ = pid.get("gaussianity", {})
    est.pid_history_ = pid.get("history", [])
    est.fusion_weights_history_ = pid.get("fusion_weights_history", [])
    est.history_ = meta.get("history", [])
    est.training_summary_ = meta.get("training_data", {})
    est.device_ = "cpu"
    return est
