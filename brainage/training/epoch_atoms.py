"""The PID atoms of training latents: per pair of modalities, per epoch, across ranks.

:class:`_EpochAtoms` collects what one stage-1 epoch of the trainer needs
(``pid_scope`` batch or window); :func:`_pid_atoms` estimates the atoms of one
sample, :func:`_mean_atoms` averages epochs and :func:`_reduce_atoms` averages ranks.

Under data-parallel training (DDP) the windowed PID is global: every rank keeps
the latest ``ceil(win_len / world)`` latents of its own shard, the windows are
gathered across ranks (:func:`~brainage.training.distributed.all_gather_rows`),
and every rank estimates the atoms of the same ``win_len`` samples, which a
single process holding those samples would get (``tests/test_training_distributed.py``).
Per-batch atoms (``pid_scope="batch"``) stay per rank and are averaged.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from brainage.models.pidreg import pair_key
from brainage.models.presets import PIDRegConfig
from brainage.stats.atoms import PID_QUANTITIES
from brainage.training.distributed import (
    all_gather_rows,
    all_reduce_mean,
    is_distributed,
    rank_and_world,
)

logger = logging.getLogger(__name__)


def _pid_atoms(y, zs: dict, pairs, *, bias_correction: bool) -> dict | None:
    """PID atoms per pair, or None when the sample is too small or degenerate."""
    from brainage.models.pid_torch import gaussian_pid_torch
    from brainage.pid import gaussian_pid

    out = {}
    yy = y.reshape(-1, 1).double()
    on_cpu = yy.device.type == "cpu"
    # each modality converted once (a modality is in several pairs with three or more)
    used = {m for pair in pairs for m in pair}
    z64 = {m: (zs[m].double().numpy() if on_cpu else zs[m].double()) for m in used}
    y64 = yy.numpy() if on_cpu else yy
    for p, q in pairs:
        if yy.shape[0] <= 1 + z64[p].shape[1] + z64[q].shape[1]:
            return None
        try:
            if on_cpu:  # the numpy closed form: same numbers, about 3x faster on CPU
                try:
                    res = gaussian_pid(y64, z64[p], z64[q], bias_correction=bias_correction).as_dict()
                except ValueError:
                    # Rank-deficient window (e.g. two latent units that moved together): the
                    # torch version's ridge gives the numbers a GPU run would get.
                    res = gaussian_pid_torch(*(torch.from_numpy(a) for a in (y64, z64[p], z64[q])),
                                             bias_correction=bias_correction)
            else:
                res = gaussian_pid_torch(y64, z64[p], z64[q], bias_correction=bias_correction)
        except ValueError as err:  # e.g. a latent unit with zero variance in this sample
            logger.debug("PID skipped: %s", err)
            return None
        out[pair_key((p, q))] = {k: float(res[k]) for k in PID_QUANTITIES}
    return out


def _mean_atoms(items: list[dict]) -> dict:
    keys = items[0].keys()
    return {k: {a: float(np.mean([it[k][a] for it in items])) for a in PID_QUANTITIES} for k in keys}


def _reduce_atoms(atoms: dict) -> dict:
    if not is_distributed():
        return atoms
    keys = sorted(atoms)
    vec = torch.tensor([[atoms[k][a] for a in PID_QUANTITIES] for k in keys], dtype=torch.float64)
    vec = all_reduce_mean(vec)
    return {k: dict(zip(PID_QUANTITIES, vec[i].tolist())) for i, k in enumerate(keys)}


class _EpochAtoms:
    """Collects what one stage-1 epoch needs for its PID atoms.

    With ``pid_scope="batch"`` the atoms of every batch are estimated as the batch
    comes (without bias correction) and averaged at the end; otherwise the batches'
    latents and targets are kept and the atoms are estimated once on the latest
    ``win_len`` of them (with ``cfg.pid_bias_correction``).
    """

    def __init__(self, modalities: list, pairs: list, cfg: PIDRegConfig, win_len: int):
        self.modalities = modalities
        self.pairs = pairs
        self.cfg = cfg
        self.win_len = win_len
        self.batch_atoms: list[dict] = []
        self.win_z: dict = {m: [] for m in modalities}
        self.win_y: list = []

    def add(self, z: dict, yg: torch.Tensor) -> None:
        """Take one batch's latents ``z`` (by modality) and Gaussianised targets ``yg``."""
        zd = {m: v.detach().float() for m, v in z.items()}
        if self.cfg.pid_scope == "batch":
            with torch.no_grad():
                ba = _pid_atoms(yg, zd, self.pairs, bias_correction=False)
            if ba is not None:
                self.batch_atoms.append(ba)
        else:
            for m in self.modalities:
                self.win_z[m].append(zd[m])
            self.win_y.append(yg)

    def atoms(self) -> dict | None:
        """Return the epoch's atoms per pair, or None when none could be estimated."""
        if self.cfg.pid_scope == "batch":
            return _mean_atoms(self.batch_atoms) if self.batch_atoms else None
        _, world = rank_and_world()
        keep = -(-self.win_len // world)  # this rank's share of the global window
        zs = {m: torch.cat(self.win_z[m])[-keep:] for m in self.modalities}
        ys = torch.cat(self.win_y)[-keep:]
        if world > 1:
            zs = {m: all_gather_rows(v) for m, v in zs.items()}
            ys = all_gather_rows(ys)
        with torch.no_grad():
            return _pid_atoms(ys, zs, self.pairs, bias_correction=self.cfg.pid_bias_correction)
