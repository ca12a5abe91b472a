"""Helpers for data-parallel training with ``torch.distributed`` (DDP).

Training runs unchanged in one process; when a process group is initialised
(``torchrun`` sets the environment, :func:`init_from_env` joins it) the trainer
shards the batches by rank, wraps the network in
``DistributedDataParallel`` and averages the PID atoms and validation losses
over ranks, so every rank takes the same decisions (weights, freezing, early
stopping).
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_mean",
    "free_port",
    "init_from_env",
    "is_distributed",
    "rank_and_world",
]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """Return ``(rank, world_size)``; ``(0, 1)`` without a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor over all ranks (identity without a process group)."""
    if not is_distributed():
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def free_port() -> int:
    """Return a free TCP port on localhost (for a local process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group described by ``torchrun``'s environment variables.

    Parameters
    ----------
    backend : str, optional
        ``"nccl"`` when CUDA is available, ``"gloo"`` otherwise by default.

    Returns
    -------
    tuple of int
        ``(rank, world_size)``. Without ``RANK``/``WORLD_SIZE`` in the environment
        nothing is initialised and ``(0, 1)`` is returned.
    """
    if is_distributed():
        return rank_and_world()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return rank_and_world()
