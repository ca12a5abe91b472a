"""scikit-learn-style brain-age estimators (PIDReg, its baselines, classical models) and the model bundle.

Import the submodules directly; this package file imports nothing, so
``import brainage.estimators`` does not load torch.
"""
