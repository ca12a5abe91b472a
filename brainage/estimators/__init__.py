"""scikit-learn-style brain-age estimators (PIDReg, its baselines, classical models) and the model bundle.

* :mod:`~brainage.estimators.regressor`: ``PIDRegressor`` (PID-weighted multimodal fusion);
* :mod:`~brainage.estimators.baselines`: ``BaselineRegressor`` (unimodal, early, late fusion);
* :mod:`~brainage.estimators.classical`: ``ClassicalRegressor`` (ridge, Gaussian process);
* :mod:`~brainage.estimators.registry`: ``make_estimator(name, ...)`` for the group level's
  model names, ``predict_by_modality``;
* :mod:`~brainage.estimators.bundle`: ``save_bundle`` / ``load_bundle`` / ``read_bundle_extra``
  (safetensors + JSON, never pickle).

This package sits above the training loop (:mod:`brainage.training`) and the
networks (:mod:`brainage.models`), which never import it. Import the
submodules directly; this package file imports nothing, so
``import brainage.estimators`` does not load torch.
"""
