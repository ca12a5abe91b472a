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
    "all_gather_rows",
    "all_reduce_mean",
    "barrier",
    "broadcast_flag",
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


def all_gather_rows(values: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows of ``values`` in rank order (identity without a group).

    The ranks may hold different numbers of rows (the last batch of a shard, say):
    the row counts are exchanged first and the shorter tensors padded for the
    collective, then trimmed. Every rank gets the same tensor.
    """
    if not is_distributed():
        return values
    world = dist.get_world_size()
    count = torch.tensor([values.shape[0]], dtype=torch.int64, device=values.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    padded = values.new_zeros((longest, *values.shape[1:]))
    padded[: values.shape[0]] = values
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def barrier() -> None:
    """Wait until every rank gets here (nothing without a process group)."""
    if is_distributed():
        dist.barrier()


def broadcast_flag(value: bool) -> bool:
    """Return rank 0's ``value`` on every rank (``value`` itself without a group).

    For decisions that only rank 0 can take (it alone reads the outputs of an
    earlier run) and that every rank must follow, or the collectives deadlock.
    """
    if not is_distributed():
        return bool(value)
    flag = torch.tensor([1.0 if value else 0.0], dtype=torch.float64)
    dist.broadcast(flag, src=0)
    return bool(flag.item() > 0.5)


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
        By default NCCL for CUDA tensors and gloo for CPU tensors when CUDA is
        available (``"cpu:gloo,cuda:nccl"``), gloo otherwise.

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
        # NCCL for the CUDA tensors, gloo for the small CPU ones (flags, losses, atoms)
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return rank_and_world()
