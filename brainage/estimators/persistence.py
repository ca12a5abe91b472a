"""``save`` and ``load`` of every estimator, through the model bundle."""

from __future__ import annotations

from brainage.exceptions import UsageError

__all__ = ["BundleIO"]


class BundleIO:
    """Mixin: ``est.save(path)`` writes a model bundle, ``Class.load(path)`` reads one back.

    See :mod:`brainage.estimators.bundle` for the layout (safetensors + JSON, never pickle).
    """

    def save(self, path) -> None:
        """Write a model bundle of this fitted estimator to ``path``."""
        from brainage.estimators.bundle import save_bundle

        save_bundle(self, path)

    @classmethod
    def load(cls, path):
        """Read a model bundle written by :meth:`save`; refuse one of another class."""
        from brainage.estimators.bundle import load_bundle

        est = load_bundle(path)
        if not isinstance(est, cls):
            raise UsageError(f"{path} holds a {type(est).__name__}, not a {cls.__name__}.")
        return est
