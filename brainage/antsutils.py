"""Small helpers around antspyx shared by the structural and functional stages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["ants_random_seed"]


@contextlib.contextmanager
def ants_random_seed(seed: int | None) -> Iterator[None]:
    """Run ANTs registrations inside the block with a fixed random seed.

    ANTs samples its similarity metric at random positions; antspyx passes
    ``--random-seed`` to every registration while ``ants.config._random_seed`` is
    set (its ``set_ants_deterministic`` also forces one ITK thread, which is not
    wanted here). The previous value is restored on exit.

    Examples
    --------
    >>> import ants
    >>> with ants_random_seed(7):
    ...     ants.config._random_seed
    7
    """
    import ants

    previous = ants.config._random_seed
    ants.config._random_seed = None if seed is None else int(seed)
    try:
        yield
    finally:
        ants.config._random_seed = previous
