"""Training loop: the two-stage PIDReg schedule, and plain training of baselines.

Stage 1: every epoch the PID atoms of ``(y_g; z_1, z_2)`` (pairwise for more
modalities) are estimated, either on each batch and averaged (``faithful``) or
once on a window of the latest training latents with bias correction
(``default``). The atoms of the last ``atom_window_epochs`` epochs are averaged
and turned into fusion weights. When the largest change of the averaged atoms
stays below ``freeze_tol`` bits for ``freeze_patience`` epochs, the weights are
frozen. Stage 2: the PID and the normality loss are no longer computed.

Throughout: Adam (θ of the noise bottleneck with its own learning rate),
ReduceLROnPlateau and early stopping on the validation prediction loss
(best weights restored), gradient clipping. Seeded runs on CPU are
deterministic; on CUDA the forward pass runs under bf16 autocast.

No per-batch host sync for the loss: the batch losses stay on the device and
are checked for finiteness (one sync) once per epoch on an accelerator, or every
``loss_check_every`` batches (every batch on the CPU, where a sync costs
nothing); the epoch's mean training loss is taken from them at the end
(``pid_scope="batch"`` still reads each batch's latents). Opt-in switches:
``channels_last`` (3D channels-last memory format for the network and its
volume batches) and ``compile_model`` (``torch.compile`` of the forward pass).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from brainage.console import report_epoch
from brainage.models.pidreg import PIDReg, fusion_weights_from_atoms
from brainage.models.presets import TARGET_TRANSFORM_ALIASES, PIDRegConfig
from brainage.stats.atoms import PID_QUANTITIES
from brainage.training.datasets import MultiModalData, batch_indices
from brainage.training.distributed import all_reduce_mean, rank_and_world
from brainage.training.epoch_atoms import _EpochAtoms, _mean_atoms, _pid_atoms, _reduce_atoms  # noqa: F401
from brainage.training.regularizers import _cmi_term, regularization  # noqa: F401 (re-exported)

__all__ = ["TrainResult", "pid_target", "regularization", "resolve_device", "train_model"]

logger = logging.getLogger(__name__)

#: The four atoms the freeze rule watches (``PID_QUANTITIES`` also has the three MIs).
_FOUR_ATOMS = PID_QUANTITIES[:4]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return ``cuda`` when available and ``device`` is ``"auto"``, else ``device``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pid_target(y: np.ndarray, kind: str = "inverse_normal") -> np.ndarray:
    """Gaussianise a target for the PID.

    Parameters
    ----------
    y : numpy.ndarray
        Training targets, shape (n,).
    kind : {"inverse_normal", "blend"}
        ``"inverse_normal"``: rank-based inverse normal transform (INT; ``"int"``,
        its former name, is accepted as an alias). ``"blend"``: 0.6 × INT + 0.4 ×
        z-score clipped to ±3, as the reference code does.

    Returns
    -------
    numpy.ndarray
        Shape (n,).
    """
    from brainage.pid import inverse_normal_transform

    kind = TARGET_TRANSFORM_ALIASES.get(kind, kind)
    g = np.asarray(inverse_normal_transform(np.asarray(y, dtype=float))).reshape(-1)
    if kind == "inverse_normal":
        return g
    if kind == "blend":
        z = (y - np.mean(y)) / max(np.std(y), 1e-12)
        return 0.6 * g + 0.4 * np.clip(z, -3.0, 3.0)
    raise ValueError(f"Unknown target transform {kind!r}; choose 'inverse_normal' or 'blend'.")


@dataclass
class TrainResult:
    """What a training run learned besides the weights.

    Attributes
    ----------
    history : list of dict
        One entry per epoch: ``epoch``, ``stage``, ``train_loss``, ``val_loss``,
        ``lr``, ``seconds`` and, for PIDReg, ``atoms`` / ``atoms_windowed`` (per
        pair), ``weights`` and ``lambdas``.
    best_epoch : int
        Epoch whose weights were restored (best validation loss).
    stage2_epoch : int or None
        First epoch of stage 2 (weights frozen), or None if never frozen.
    atoms : dict
        Last windowed atoms per pair (the ones that set the final weights).
    """

    history: list = field(default_factory=list)
    best_epoch: int = 0
    stage2_epoch: int | None = None
    atoms: dict = field(default_factory=dict)


def _to_device(xb: dict, device: torch.device, channels_last: bool = False) -> dict:
    """Move a batch to ``device``; 5-D volume batches in channels-last order when asked."""
    if not channels_last:
        return {m: t.to(device, non_blocking=True) for m, t in xb.items()}
    return {m: (t.to(device, non_blocking=True, memory_format=torch.channels_last_3d) if t.ndim == 5
                else t.to(device, non_blocking=True)) for m, t in xb.items()}


def _first_non_finite(losses: list) -> torch.Tensor | None:
    """Return the first non-finite of the 0-dim loss tensors ``losses``, or None (one host sync)."""
    if not losses:
        return None
    stacked = torch.stack(losses)
    bad = ~torch.isfinite(stacked)
    if not bool(bad.any()):
        return None
    return stacked[bad.nonzero()[0, 0]]


def _evaluate(model, data, idx, y_std, cfg, device, autocast, channels_last=False) -> float:
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    with torch.no_grad():
        for b in batch_indices(idx, cfg.batch_size, shuffle=False, seed=0, epoch=0):
            xb = _to_device(data.batch(b), device, channels_last)
            yb = torch.as_tensor(y_std[b], dtype=torch.float32, device=device)
            with autocast():
                pred = model(xb)["pred"].float()
            # summed on the device (float64, as the former Python float), one sync at the end
            total += ((pred - yb) ** 2).sum().double()
            count += len(b)
    mean = float(total) / max(count, 1)
    return float(all_reduce_mean(torch.tensor(mean, dtype=torch.float64)))


def _make_optimizer(model: nn.Module, cfg: PIDRegConfig, *, fused: bool = False):
    """Set up Adam and the plateau schedule; return ``(optimizer, scheduler, has_theta)``.

    One Adam with two parameter groups (the bottleneck's θ_m have their own learning
    rate): the same updates as two optimizers, with one step per batch. The plateau
    schedule lowers only the network's rate: θ's floor is its own rate.
    ``has_theta`` says whether the second group (θ) exists. ``fused`` uses the fused
    implementation (one kernel for all parameters on CUDA; same update rule).
    """
    theta = [p for n, p in model.named_parameters() if n.startswith("theta.")]
    others = [p for n, p in model.named_parameters() if not n.startswith("theta.")]
    groups = [{"params": others, "lr": cfg.lr}]
    min_lrs = [cfg.min_lr]
    if theta:
        groups.append({"params": theta, "lr": cfg.lambda_lr})
        min_lrs.append(cfg.lambda_lr)
    opt = torch.optim.Adam(groups, fused=True) if fused else torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
        min_lr=min_lrs,
    )
    return opt, sched, bool(theta)


def _autocast_factory(device: torch.device):
    """Return a no-argument callable giving the forward pass's autocast context.

    bf16 autocast on CUDA; a disabled autocast (full precision) on CPU.
    """
    def autocast():
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    return autocast


class _TrainingRun:
    """The objects and the state of one :func:`train_model` call, and its steps.

    The set-up (seeding, device placement, distributed wrapper, optimizer) happens in
    the constructor, in the order that fixes the random draws: ``torch.manual_seed``,
    the numpy generator of the coin flips, then the Gaussianity loss's generator.
    """

    def __init__(self, model, data, y_std, train_idx, val_idx, cfg, *, y_pid, seed, device,
                 use_regularizers, frozen_weights, prefetch=0, loss_check_every=None,
                 channels_last=False, compile_model=False, fused_adam=None):
        self.device = resolve_device(device)
        self.rank, self.world = rank_and_world()
        self.is_pid = isinstance(model, PIDReg)
        if self.is_pid and y_pid is None:
            raise ValueError("train_model needs y_pid (the Gaussianised target) to train PIDReg.")
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        model.to(self.device)
        self.channels_last = bool(channels_last)
        if self.channels_last:  # the 5-D weights (3D convolutions); others are unchanged
            model.to(memory_format=torch.channels_last_3d)
        self.model = model
        self.net = model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if compile_model:  # the forward pass; the state dict stays the model's own
            self.net = torch.compile(self.net)
        if loss_check_every is None:  # a sync costs nothing on the CPU: check before each step there
            loss_check_every = 1 if self.device.type == "cpu" else 0
        self.loss_check_every = int(loss_check_every)
        if self.loss_check_every < 0:
            raise ValueError(f"loss_check_every must be 0 (once per epoch) or positive, got "
                             f"{loss_check_every}.")
        self.losses: list[torch.Tensor] = []
        self.checked = 0
        if fused_adam is None:  # on by default where it exists to save kernel launches
            fused_adam = self.device.type == "cuda"
        self.opt, self.sched, self.has_theta = _make_optimizer(model, cfg, fused=bool(fused_adam))
        self.averaged = None
        if cfg.weight_average > 0:  # Polyak averaging of the parameters; buffers come from the model
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.weight_average))
        self.reg_every = int(cfg.regularizer_interval)
        self.step = 0
        self.autocast = _autocast_factory(self.device)
        self.g_cs = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.data, self.y_std, self.y_pid, self.cfg, self.seed = data, y_std, y_pid, cfg, seed
        self.train_idx, self.val_idx = train_idx, val_idx
        self.use_regularizers = use_regularizers
        self.prefetch = int(prefetch)
        self.modalities = list(getattr(model, "modalities", data.modalities))
        self.pairs = list(getattr(model, "pairs", []))
        self.result = TrainResult()
        self.stage = 1 if self.is_pid and not frozen_weights else 2
        self.atom_hist: deque = deque(maxlen=cfg.atom_window_epochs)
        self.prev_windowed = None
        self.stable = 0
        self.best = (math.inf, -1, None)
        self.since_best = 0
        self.win_len = min(cfg.pid_window, max(len(train_idx), 1))

    def train_epoch(self, epoch: int) -> tuple[dict, _EpochAtoms | None]:
        """Run one epoch of optimizer steps over the shuffled training batches.

        Returns the epoch's history entry (``epoch``, ``stage``, ``train_loss``) and,
        in stage 1 of PIDReg, what was collected for the epoch's PID atoms (else None).
        """
        self.net.train()
        batches = batch_indices(
            self.train_idx, self.cfg.batch_size, shuffle=True, seed=self.seed, epoch=epoch,
            rank=self.rank, world_size=self.world,
        )
        collected = (_EpochAtoms(self.modalities, self.pairs, self.cfg, self.win_len)
                     if self.is_pid and self.stage == 1 else None)
        self.losses, self.checked = [], 0
        if self.prefetch:  # the same batches, assembled on a background thread
            from brainage.training.prefetch import BatchPrefetcher

            with BatchPrefetcher(self.data.batch, batches, depth=self.prefetch,
                                 pin_memory=self.device.type == "cuda") as feed:
                for b, xb in zip(batches, feed):
                    self._train_batch(b, epoch, collected, xb)
        else:
            for b in batches:
                self._train_batch(b, epoch, collected)
        self._check_losses(epoch)
        losses = self.losses
        if self.world > 1:
            # Batch-norm statistics and the latent means were updated from each rank's
            # own shard: take rank 0's so every rank holds the same model.
            with torch.no_grad():
                for buf in self.model.buffers():
                    torch.distributed.broadcast(buf, src=0)
        entry = {
            "epoch": epoch,
            "stage": self.stage,
            "train_loss": float(all_reduce_mean(torch.tensor(
                float(torch.stack(losses).mean()) if losses else math.nan, dtype=torch.float64))),
        }
        return entry, collected

    def _check_losses(self, epoch: int) -> None:
        """Raise :class:`FloatingPointError` if a loss since the last check is not finite (one sync)."""
        if self.checked == len(self.losses):  # nothing since the last check
            return
        bad = _first_non_finite(self.losses[self.checked:])
        self.checked = len(self.losses)
        if bad is not None:
            raise FloatingPointError(
                f"Training loss became {float(bad)} at epoch {epoch}; lower the learning "
                "rate or check the inputs for extreme values."
            )

    def _train_batch(self, b: np.ndarray, epoch: int, collected: _EpochAtoms | None,
                     xb: dict | None = None) -> torch.Tensor:
        """One optimizer step on batch ``b`` (inputs ``xb`` when already fetched); return its loss.

        The loss is the MSE of the standardised target plus, on every
        ``regularizer_interval``-th batch of a PIDReg run, ``regularizer_interval`` ×
        :func:`regularization` (lazy regularization). In stage 1 the batch's latents
        go to ``collected`` for the PID. The loss (a 0-dim float64 tensor on the device)
        is appended to ``self.losses``; every ``loss_check_every``-th batch (when set)
        the losses since the last check are checked before the step.
        """
        device, y_pid = self.device, self.y_pid
        xb = self.data.batch(b) if xb is None else xb
        xb = _to_device(xb, device, self.channels_last)
        yb = torch.as_tensor(self.y_std[b], dtype=torch.float32, device=device)
        with self.autocast():
            out = self.net(xb)
        pred = out["pred"].float()
        loss = torch.mean((pred - yb) ** 2)
        if self.is_pid and self.use_regularizers and self.step % self.reg_every == 0:
            yg = (torch.as_tensor(y_pid[b], dtype=torch.float32, device=device)
                  if self.stage == 1 else None)
            loss = loss + self.reg_every * regularization(out, xb, yg, self.modalities, self.cfg,
                                                          generator=self.g_cs)
        self.step += 1
        if collected is not None:
            collected.add(out["z"], torch.as_tensor(y_pid[b], dtype=torch.float64, device=device))
        self.losses.append(loss.detach().double())
        if self.loss_check_every and len(self.losses) % self.loss_check_every == 0:
            self._check_losses(epoch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        return self.losses[-1]

    def update_fusion_weights(self, epoch: int, collected: _EpochAtoms, entry: dict) -> None:
        """Stage-1 step after an epoch: atoms, windowed atoms, fusion weights, freeze rule.

        The epoch's atoms (of the window gathered from all ranks, or the batch atoms
        averaged over ranks) join the window of the last
        ``atom_window_epochs`` epochs, whose mean sets the fusion weights (coin flips
        from the run's numpy generator). Adds ``atoms`` / ``atoms_windowed`` to
        ``entry``. Nothing changes when the epoch gave no atoms (on any rank).
        """
        atoms = collected.atoms()  # windowed: the same global window on every rank
        if self.world > 1:  # every rank must take part in the reduction, or none
            ok = all_reduce_mean(torch.tensor(float(atoms is not None), dtype=torch.float64))
            if float(ok) < 1.0:
                atoms = None
        if atoms is None:
            return
        if self.cfg.pid_scope == "batch":  # per-rank batch atoms: their mean over ranks
            atoms = _reduce_atoms(atoms)
        self.atom_hist.append(atoms)
        windowed = _mean_atoms(list(self.atom_hist))
        entry.update(atoms=atoms, atoms_windowed=windowed)
        self.result.atoms = windowed
        if epoch < int(self.cfg.fusion_warmup_epochs):  # warm-up: the equal initial weights stay
            self.prev_windowed = windowed
            return
        weights = fusion_weights_from_atoms(
            windowed, self.modalities, redundancy=self.cfg.redundancy, rng=self.rng
        )
        if self.world > 1:  # coin flips may differ between ranks: take rank 0's
            vec = torch.tensor([weights[k] for k in weights], dtype=torch.float64)
            torch.distributed.broadcast(vec, src=0)
            weights = dict(zip(weights, vec.tolist()))
        self.model.set_fusion_weights(weights)
        self._apply_freeze_rule(epoch, windowed)
        self.prev_windowed = windowed

    def _apply_freeze_rule(self, epoch: int, windowed: dict) -> None:
        """Enter stage 2 after ``freeze_patience`` epochs of windowed atoms within ``freeze_tol``.

        Counted only once the window of epochs is full.
        """
        if self.prev_windowed is None or len(self.atom_hist) != self.atom_hist.maxlen:
            return
        delta = max(
            abs(windowed[k][a] - self.prev_windowed[k][a])
            for k in windowed for a in _FOUR_ATOMS
        )
        self.stable = self.stable + 1 if delta < self.cfg.freeze_tol else 0
        if self.stable >= self.cfg.freeze_patience:
            self.stage = 2
            self.result.stage2_epoch = epoch + 1
            logger.debug("PID weights frozen after epoch %d", epoch)

    def validate(self, entry: dict) -> float:
        """Return the validation loss and step the learning-rate schedule with it.

        Without validation participants the training loss stands in. Adds ``val_loss``,
        ``lr`` and, with a bottleneck, ``lambda_lr`` to ``entry``.
        """
        if len(self.val_idx):
            val = _evaluate(self._evaluated(), self.data, self.val_idx, self.y_std, self.cfg, self.device,
                            self.autocast, self.channels_last)
        else:
            val = entry["train_loss"]
        entry["val_loss"] = val
        entry["lr"] = float(self.opt.param_groups[0]["lr"])
        if self.has_theta:
            entry["lambda_lr"] = float(self.opt.param_groups[1]["lr"])
        self.sched.step(val)
        return val

    def _evaluated(self) -> nn.Module:
        """Return the network that validation, early stopping and the result use (the average, if kept)."""
        if self.averaged is None:
            return self.net
        with torch.no_grad():  # the live buffers (fusion weights, batch-norm statistics)
            for mine, live in zip(self.averaged.module.buffers(), self.model.buffers()):
                mine.copy_(live)
        return self.averaged.module

    def should_stop(self, epoch: int, val: float) -> bool:
        """Keep the best weights so far; True after ``early_stopping_patience`` epochs without gain."""
        if val < self.best[0] - 1e-12:
            kept = self.model if self.averaged is None else self._evaluated()
            self.best = (val, epoch, copy.deepcopy(kept.state_dict()))
            self.since_best = 0
            return False
        self.since_best += 1
        if self.since_best >= self.cfg.early_stopping_patience:
            logger.debug("early stopping after epoch %d (best %d)", epoch, self.best[1])
            return True
        return False

    def finish(self) -> TrainResult:
        """Restore the best weights, leave the model in eval mode, return the result."""
        if self.best[2] is not None:
            self.model.load_state_dict(self.best[2])
        self.result.best_epoch = self.best[1]
        self.model.eval()
        return self.result


def train_model(
    model: nn.Module,
    data: MultiModalData,
    y_std: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: PIDRegConfig,
    *,
    y_pid: np.ndarray | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    use_regularizers: bool = True,
    frozen_weights: bool = False,
    prefetch: int = 0,
    loss_check_every: int | None = None,
    channels_last: bool = False,
    compile_model: bool = False,
    fused_adam: bool | None = None,
) -> TrainResult:
    """Train a PIDReg network (two-stage schedule) or a baseline network (plain MSE).

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`~brainage.models.pidreg.PIDReg`, or any module whose forward takes
        a dict of modality batches and returns ``{"pred": (n,)}``.
    data : MultiModalData
        Inputs of all participants.
    y_std : numpy.ndarray
        Standardised targets of all participants (only ``train_idx`` and ``val_idx``
        are read), shape (n,).
    train_idx, val_idx : numpy.ndarray
        Participants to train on and to validate on (may be empty: then the
        training loss drives the scheduler and early stopping).
    cfg : PIDRegConfig
        Hyperparameters.
    y_pid : numpy.ndarray, optional
        Gaussianised targets for the PID, shape (n,); required for PIDReg.
    seed : int
        Seed of initial noise, shuffling and coin flips.
    device : str or torch.device
        ``"auto"`` picks CUDA when available.
    use_regularizers : bool
        Add the Gaussianity, CMI and normality losses (PIDReg only).
    frozen_weights : bool
        Start in stage 2: keep the model's current fusion weights (e.g. to fine-tune
        a loaded model, or to time stage-2 epochs).
    prefetch : int
        Assemble up to this many training batches ahead on a background thread
        (:class:`~brainage.training.prefetch.BatchPrefetcher`, pinned memory on CUDA);
        0 (the default) fetches each batch when its step starts. The batches and
        the results are the same either way.
    loss_check_every : int, optional
        Check the batch losses for finiteness every this many batches (each check is
        one host sync, a device round trip on CUDA); 0 checks once per epoch. Default:
        1 on the CPU (where a sync costs nothing), 0 on an accelerator. A non-finite
        loss raises the same :class:`FloatingPointError` either way; with 1 it is
        raised before that batch's step, as a per-batch check would.
    channels_last : bool
        Put the network's 3D convolution weights and the 5-D volume batches in the
        ``torch.channels_last_3d`` memory format (same numbers up to rounding).
    compile_model : bool
        Run the forward pass through :func:`torch.compile` (needs a C++ compiler on CPU,
        Triton on CUDA; the first steps compile). Off by default.
    fused_adam : bool, optional
        Use the fused Adam (``torch.optim.Adam(fused=True)``); default: on CUDA only.

    Returns
    -------
    TrainResult
        The model is trained in place and left in eval mode with its best weights.

    Raises
    ------
    FloatingPointError
        A training loss that is not finite (at the next check, see ``loss_check_every``).
    """
    run = _TrainingRun(model, data, y_std, train_idx, val_idx, cfg, y_pid=y_pid, seed=seed,
                       device=device, use_regularizers=use_regularizers,
                       frozen_weights=frozen_weights, prefetch=prefetch,
                       loss_check_every=loss_check_every, channels_last=channels_last,
                       compile_model=compile_model, fused_adam=fused_adam)
    for epoch in range(cfg.max_epochs):
        t0 = time.perf_counter()
        entry, collected = run.train_epoch(epoch)
        if collected is not None:
            run.update_fusion_weights(epoch, collected, entry)
        if run.is_pid:
            entry["weights"] = model.fusion_weights_dict()
            entry["lambdas"] = model.bottleneck_lambdas()
        val = run.validate(entry)
        entry["seconds"] = time.perf_counter() - t0
        run.result.history.append(entry)
        logger.debug("epoch %d: %s", epoch, {k: entry[k] for k in ("train_loss", "val_loss")})
        if run.rank == 0:
            report_epoch(epoch + 1, cfg.max_epochs)  # on the progress bar, if one is drawn
        if run.should_stop(epoch, val):
            break
    return run.finish()
