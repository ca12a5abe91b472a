"""Checks the bundle loader makes before it builds a network from a bundle's config.json.

A crafted or corrupt ``config.json`` must not make the loader loop or allocate
without end: the architecture's sizes are bounded (:data:`MAX_LAYERS`,
:data:`MAX_WIDTH`), and the stored tensors are compared, by name and shape, with
a skeleton of the architecture built on PyTorch's ``meta`` device (shapes, no
memory) before the real network is built.
"""

from __future__ import annotations

from pathlib import Path

from brainage.exceptions import ModelBundleError

__all__ = ["MAX_LAYERS", "MAX_WIDTH", "REEXPORT", "check_architecture_bounds", "check_state_shapes"]

#: What to do about a bundle whose model description is invalid.
REEXPORT = "re-export the model with save_bundle() (estimator.save())"

#: Bounds on what a bundle's config.json may ask the loader to build. They are far above
#: any network brainage trains (a few layers of at most a few hundred units or channels)
#: and keep a crafted config from making the loader loop or allocate without end.
MAX_LAYERS = 64
MAX_WIDTH = 1 << 16


def check_architecture_bounds(cfg_path: Path, config, encoder_specs: dict) -> None:
    """Refuse architecture numbers outside :data:`MAX_LAYERS` and :data:`MAX_WIDTH`."""

    def sizes(value):
        if isinstance(value, bool) or value is None:
            return []
        if isinstance(value, int):
            return [value]
        if isinstance(value, list | tuple):
            if len(value) > MAX_LAYERS:
                raise ModelBundleError(
                    cfg_path, f"asks for {len(value)} layers (at most {MAX_LAYERS} are loaded)",
                    REEXPORT,
                )
            return [v for item in value for v in sizes(item)]
        return []

    numbers = [*sizes(config.latent_dim), *sizes(list(config.hidden))]
    for spec in encoder_specs.values():
        numbers += [v for key, item in spec.items() if key != "kind" for v in sizes(item)]
    bad = [v for v in numbers if not 0 <= v <= MAX_WIDTH]
    if bad:
        raise ModelBundleError(
            cfg_path, f"asks for a layer size of {bad[0]} (sizes from 0 to {MAX_WIDTH} are loaded)",
            REEXPORT,
        )


def check_state_shapes(skeleton, state: dict, weights: Path) -> None:
    """Compare the stored tensors with the architecture's, before anything is built for real.

    The skeleton lives on PyTorch's ``meta`` device (shapes, no memory). Once every
    stored tensor matches a parameter or buffer of the architecture and none is
    missing, building the network allocates what the weights file holds, plus the
    few non-persistent buffers, which are bounded here too.
    """
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) the architecture lacks (first: {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} tensor(s) of the wrong shape (first: {k} is "
                        f"{list(state[k].shape)}, the architecture needs {list(expected[k])})")
    if problems:
        raise ModelBundleError(
            weights, f"does not fit the architecture in config.json: {'; '.join(problems)}", REEXPORT,
        )
    stored = sum(v.numel() for v in state.values())
    extra = sum(b.numel() for name, b in skeleton.named_buffers() if name not in expected)
    if extra > max(stored, 1 << 20):
        raise ModelBundleError(
            weights, f"comes with an architecture that needs {extra} values beyond the stored "
            f"weights ({stored})", REEXPORT,
        )
