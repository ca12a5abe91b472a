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
from brainage.models.pidreg import PIDReg, fusion_weights_from_atoms, pair_key
from brainage.models.presets import PIDRegConfig
from brainage.training.datasets import MultiModalData, batch_indices
from brainage.training.distributed import all_reduce_mean, is_distributed, rank_and_world

__all__ = ["ATOMS", "TrainResult", "pid_target", "regularization", "resolve_device", "train_model"]

logger = logging.getLogger(__name__)

ATOMS = ("U1", "U2", "R", "S", "I1", "I2", "I12")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return ``cuda`` when available and ``device`` is ``"auto"``, else ``device``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pid_target(y: np.ndarray, kind: str = "int") -> np.ndarray:
    """Gaussianise a target for the PID.

    Parameters
    ----------
    y : numpy.ndarray
        Training targets, shape (n,).
    kind : {"int", "blend"}
        ``"int"``: rank-based inverse normal transform. ``"blend"``: 0.6 × INT +
        0.4 × z-score clipped to ±3, as the reference code does.

    Returns
    -------
    numpy.ndarray
        Shape (n,).
    """
    from brainage.pid import inverse_normal_transform

    g = np.asarray(inverse_normal_transform(np.asarray(y, dtype=float))).reshape(-1)
    if kind == "int":
        return g
    if kind == "blend":
        z = (y - np.mean(y)) / max(np.std(y), 1e-12)
        return 0.6 * g + 0.4 * np.clip(z, -3.0, 3.0)
    raise ValueError(f"Unknown target transform {kind!r}; choose 'int' or 'blend'.")


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
        out[pair_key((p, q))] = {k: float(res[k]) for k in ATOMS}
    return out


def _mean_atoms(items: list[dict]) -> dict:
    keys = items[0].keys()
    return {k: {a: float(np.mean([it[k][a] for it in items])) for a in ATOMS} for k in keys}


def _reduce_atoms(atoms: dict) -> dict:
    if not is_distributed():
        return atoms
    keys = sorted(atoms)
    vec = torch.tensor([[atoms[k][a] for a in ATOMS] for k in keys], dtype=torch.float64)
    vec = all_reduce_mean(vec)
    return {k: dict(zip(ATOMS, vec[i].tolist())) for i, k in enumerate(keys)}


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).float()


def _cmi_term(z: dict, xb: dict, modalities: list, sigma_scale: float) -> torch.Tensor:
    """Sum over modalities of the CS-CMI ``I(Z_m; X_others | X_m)`` of one batch.

    The Gram matrices of the inputs are data: they are built once per batch and
    shared, the condition of one term being the target of another (with more than
    two modalities the target's squared distances are the sum over the other
    modalities, which is those of their concatenation).
    """
    from brainage.models.losses import cs_cmi_from_grams, gram_from_sq_dists, pairwise_sq_dists

    device_type = next(iter(z.values())).device.type
    with torch.no_grad(), torch.autocast(device_type=device_type, enabled=False):
        d2 = {m: pairwise_sq_dists(_flat(xb[m])) for m in modalities}
        grams = {m: gram_from_sq_dists(d2[m], sigma_scale) for m in modalities}
        targets = []
        for m in modalities:
            others = [o for o in modalities if o != m]
            targets.append(grams[others[0]] if len(others) == 1
                           else gram_from_sq_dists(sum(d2[o] for o in others), sigma_scale))
        k = torch.stack(targets)
        cond = torch.stack([grams[m] for m in modalities])
    with torch.autocast(device_type=device_type, enabled=False):
        # All modalities' terms as one stack (PIDReg gives every modality the same
        # latent size): the same numbers as one call per modality, fewer operations.
        lat = gram_from_sq_dists(
            pairwise_sq_dists(torch.stack([z[m] for m in modalities]), stacked=True),
            sigma_scale)
        return cs_cmi_from_grams(lat, k, cond).sum()


def regularization(out: dict, xb: dict, y_pid, modalities: list, cfg: PIDRegConfig, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Weighted sum of the PIDReg regularizers of one batch.

    ``lambda_cs`` × the Cauchy–Schwarz Gaussianity of every modality's
    pre-bottleneck latent, ``lambda_cmi`` × the CS-CMI terms (see
    :func:`_cmi_term`) and, when ``y_pid`` is given (stage 1), ``lambda_norm`` ×
    the normality of the joint ``[y_pid, z_1, ..., z_M]``. The normality term is
    skipped on a batch with no more samples than that joint has dimensions + 1
    (whitening needs more samples than dimensions; e.g. a short last batch).

    Parameters
    ----------
    out : dict
        Output of :meth:`PIDReg.forward` on the batch (``"a"`` and ``"z"`` latents).
    xb : dict
        The batch's inputs by modality (for the CMI terms).
    y_pid : torch.Tensor or None
        Gaussianised targets of the batch, shape (n,); None skips the normality term.
    modalities : list of str
        Modalities of the model.
    cfg : PIDRegConfig
        Weights, CMI kernel width and Gaussianity reference.
    generator : torch.Generator, optional
        For the Gaussianity loss's random reference sample (``cs_reference="sample"``).

    Returns
    -------
    torch.Tensor
        0-dim tensor (float64); add it to the prediction loss.
    """
    from brainage.models.losses import cs_gaussianity_loss, normality_loss

    z = {m: out["z"][m].float() for m in modalities}
    total = torch.zeros((), dtype=torch.float64, device=z[modalities[0]].device)
    if cfg.lambda_cs > 0:
        a = torch.stack([out["a"][m].float() for m in modalities])
        total = total + cfg.lambda_cs * cs_gaussianity_loss(
            a, generator=generator, reference=cfg.cs_reference).sum()
    if cfg.lambda_cmi > 0:
        total = total + cfg.lambda_cmi * _cmi_term(z, xb, modalities, cfg.cmi_sigma_scale)
    n = z[modalities[0]].shape[0]
    n_joint = 1 + sum(z[m].shape[1] for m in modalities)
    if y_pid is not None and cfg.lambda_norm > 0 and n > n_joint + 1:
        joint = torch.cat([y_pid.reshape(-1, 1).float()] + [z[m] for m in modalities], dim=1)
        total = total + cfg.lambda_norm * normality_loss(joint)
    return total


def _evaluate(model, data, idx, y_std, cfg, device, autocast) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batch_indices(idx, cfg.batch_size, shuffle=False, seed=0, epoch=0):
            xb = {m: t.to(device) for m, t in data.batch(b).items()}
            yb = torch.as_tensor(y_std[b], dtype=torch.float32, device=device)
            with autocast():
                pred = model(xb)["pred"].float()
            total += float(((pred - yb) ** 2).sum())
            count += len(b)
    mean = total / max(count, 1)
    return float(all_reduce_mean(torch.tensor(mean, dtype=torch.float64)))


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

    Returns
    -------
    TrainResult
        The model is trained in place and left in eval mode with its best weights.
    """
    device = resolve_device(device)
    rank, world = rank_and_world()
    is_pid = isinstance(model, PIDReg)
    if is_pid and y_pid is None:
        raise ValueError("train_model needs y_pid (the Gaussianised target) to train PIDReg.")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    theta = [p for n, p in model.named_parameters() if n.startswith("theta.")]
    others = [p for n, p in model.named_parameters() if not n.startswith("theta.")]
    # One Adam with two parameter groups (the bottleneck's θ_m have their own learning
    # rate): the same updates as two optimizers, with one step per batch. The plateau
    # schedule lowers only the network's rate: θ's floor is its own rate.
    groups = [{"params": others, "lr": cfg.lr}]
    min_lrs = [cfg.min_lr]
    if theta:
        groups.append({"params": theta, "lr": cfg.lambda_lr})
        min_lrs.append(cfg.lambda_lr)
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
        min_lr=min_lrs,
    )
    reg_every = int(cfg.regularizer_interval)
    step = 0

    def autocast():
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    g_cs = torch.Generator(device=device).manual_seed(seed + 1)
    modalities = list(getattr(model, "modalities", data.modalities))
    pairs = list(getattr(model, "pairs", []))
    result = TrainResult()
    stage = 1 if is_pid and not frozen_weights else 2
    atom_hist: deque = deque(maxlen=cfg.atom_window_epochs)
    prev_windowed = None
    stable = 0
    best = (math.inf, -1, None)
    since_best = 0
    win_len = min(cfg.pid_window, max(len(train_idx), 1))

    for epoch in range(cfg.max_epochs):
        t0 = time.perf_counter()
        net.train()
        batches = batch_indices(
            train_idx, cfg.batch_size, shuffle=True, seed=seed, epoch=epoch,
            rank=rank, world_size=world,
        )
        losses = []
        batch_atoms = []
        win_z = {m: [] for m in modalities}
        win_y = []
        for b in batches:
            xb = {m: t.to(device, non_blocking=True) for m, t in data.batch(b).items()}
            yb = torch.as_tensor(y_std[b], dtype=torch.float32, device=device)
            with autocast():
                out = net(xb)
            pred = out["pred"].float()
            loss = torch.mean((pred - yb) ** 2)
            # Lazy regularization: every reg_every-th batch, weights scaled by reg_every.
            if is_pid and use_regularizers and step % reg_every == 0:
                yg = (torch.as_tensor(y_pid[b], dtype=torch.float32, device=device)
                      if stage == 1 else None)
                loss = loss + reg_every * regularization(out, xb, yg, modalities, cfg,
                                                         generator=g_cs)
            step += 1
            if is_pid and stage == 1:
                zd = {m: v.detach().float() for m, v in out["z"].items()}
                yg = torch.as_tensor(y_pid[b], dtype=torch.float64, device=device)
                if cfg.pid_scope == "batch":
                    with torch.no_grad():
                        ba = _pid_atoms(yg, zd, pairs, bias_correction=False)
                    if ba is not None:
                        batch_atoms.append(ba)
                else:
                    for m in modalities:
                        win_z[m].append(zd[m])
                    win_y.append(yg)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Training loss became {float(loss)} at epoch {epoch}; lower the learning "
                    "rate or check the inputs for extreme values."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))

        if world > 1:
            # Batch-norm statistics and the latent means were updated from each rank's
            # own shard: take rank 0's so every rank holds the same model.
            with torch.no_grad():
                for buf in model.buffers():
                    torch.distributed.broadcast(buf, src=0)
        entry = {
            "epoch": epoch,
            "stage": stage,
            "train_loss": float(all_reduce_mean(torch.tensor(float(np.mean(losses)),
                                                             dtype=torch.float64))),
        }
        if is_pid and stage == 1:
            if cfg.pid_scope == "batch":
                atoms = _mean_atoms(batch_atoms) if batch_atoms else None
            else:
                zs = {m: torch.cat(win_z[m])[-win_len:] for m in modalities}
                ys = torch.cat(win_y)[-win_len:]
                with torch.no_grad():
                    atoms = _pid_atoms(ys, zs, pairs, bias_correction=cfg.pid_bias_correction)
            if world > 1:  # every rank must take part in the reduction, or none
                ok = all_reduce_mean(torch.tensor(float(atoms is not None), dtype=torch.float64))
                if float(ok) < 1.0:
                    atoms = None
            if atoms is not None:
                atoms = _reduce_atoms(atoms)
                atom_hist.append(atoms)
                windowed = _mean_atoms(list(atom_hist))
                weights = fusion_weights_from_atoms(
                    windowed, modalities, redundancy=cfg.redundancy, rng=rng
                )
                if world > 1:  # coin flips may differ between ranks: take rank 0's
                    vec = torch.tensor([weights[k] for k in weights], dtype=torch.float64)
                    torch.distributed.broadcast(vec, src=0)
                    weights = dict(zip(weights, vec.tolist()))
                model.set_fusion_weights(weights)
                entry.update(atoms=atoms, atoms_windowed=windowed)
                result.atoms = windowed
                if prev_windowed is not None and len(atom_hist) == atom_hist.maxlen:
                    delta = max(
                        abs(windowed[k][a] - prev_windowed[k][a])
                        for k in windowed for a in ("U1", "U2", "R", "S")
                    )
                    stable = stable + 1 if delta < cfg.freeze_tol else 0
                    if stable >= cfg.freeze_patience:
                        stage = 2
                        result.stage2_epoch = epoch + 1
                        logger.debug("PID weights frozen after epoch %d", epoch)
                prev_windowed = windowed
        if is_pid:
            entry["weights"] = model.fusion_weights_dict()
            entry["lambdas"] = model.bottleneck_lambdas()
        if len(val_idx):
            val = _evaluate(net, data, val_idx, y_std, cfg, device, autocast)
        else:
            val = entry["train_loss"]
        entry["val_loss"] = val
        entry["lr"] = float(opt.param_groups[0]["lr"])
        if theta:
            entry["lambda_lr"] = float(opt.param_groups[1]["lr"])
        sched.step(val)
        entry["seconds"] = time.perf_counter() - t0
        result.history.append(entry)
        logger.debug("epoch %d: %s", epoch, {k: entry[k] for k in ("train_loss", "val_loss")})
        if rank == 0:
            report_epoch(epoch + 1, cfg.max_epochs)  # on the progress bar, if one is drawn
        if val < best[0] - 1e-12:
            best = (val, epoch, copy.deepcopy(model.state_dict()))
            since_best = 0
        else:
            since_best += 1
            if since_best >= cfg.early_stopping_patience:
                logger.debug("early stopping after epoch %d (best %d)", epoch, best[1])
                break
    if best[2] is not None:
        model.load_state_dict(best[2])
    result.best_epoch = best[1]
    model.eval()
    return result
