"""The PIDReg network: encoders, noise bottleneck, PID-weighted fusion, predictor.

For two modalities (Ma & Yu 2025)::

    a_m = encoder_m(x_m)
    z_m = λ_m a_m + (1 − λ_m)(ε σ_m + μ_m)        (training; z_m = a_m at test time)
    z   = w_1 z_1 + w_2 z_2 + w_3 (z_1 ⊙ z_2)
    ŷ   = predictor(z)

with ``λ_m = clamp(sigmoid(θ_m), 0.001, 0.999)`` and fusion weights taken from the
PID atoms of ``(y; z_1, z_2)``: ``w_3 = S / T`` and the unique plus (a share of the)
redundant information for ``w_1``, ``w_2`` (``T = U_1 + U_2 + R + S``).

Three or more modalities (this project's extension, documented in
``docs/pidreg.md``): a PID is computed for every pair (i, j). Modality m gets
the mean over its pairs of what the two-modality rule gives it,
``c_m = mean_j (U_m|ij + a_m|ij · R_ij)``, and each pair gets a synergy term
``(z_i ⊙ z_j)`` weighted by ``S_ij``; all weights are normalised by their sum.
With two modalities this reduces exactly to the published rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from brainage.models.encoders import MLPEncoder, init_kaiming

__all__ = ["PIDReg", "fusion_pairs", "fusion_weights_from_atoms", "pair_key"]


def fusion_pairs(modalities: Sequence[str]) -> list[tuple[str, str]]:
    """Return the modality pairs in fusion order, e.g. ``[("anat", "func")]``."""
    return list(itertools.combinations(list(modalities), 2))


def pair_key(pair: tuple[str, str]) -> str:
    """Name of a pair in tables and JSON, ``"anat|func"``."""
    return f"{pair[0]}|{pair[1]}"


def fusion_weights_from_atoms(
    atoms: Mapping[str, Mapping[str, float]],
    modalities: Sequence[str],
    *,
    redundancy: str = "proportional",
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """Turn pairwise PID atoms into fusion weights.

    Parameters
    ----------
    atoms : mapping
        ``{pair_key: {"U1", "U2", "R", "S", "I1", "I2", …}}`` in bits, one entry per
        pair of :func:`fusion_pairs` (U1/I1 refer to the pair's first modality).
        Negative atoms (possible after bias correction) count as zero.
    modalities : sequence of str
        Modality names in model order.
    redundancy : {"proportional", "coin"}
        ``"coin"`` gives all of R to one modality of the pair chosen by a fair coin
        (the reference behaviour); ``"proportional"`` shares R in proportion to each
        modality's information ``I(y; Z_m)`` (deterministic, continuous).
    rng : numpy.random.Generator, optional
        Source of the coin flips (required for ``"coin"``).

    Returns
    -------
    dict
        Weight per modality name and per pair key (synergy); they sum to 1.

    Examples
    --------
    >>> w = fusion_weights_from_atoms(
    ...     {"a|b": {"U1": 0.5, "U2": 0.0, "R": 0.25, "S": 0.25, "I1": 0.75, "I2": 0.25}},
    ...     ["a", "b"])
    >>> {k: round(v, 4) for k, v in w.items()}
    {'a': 0.6875, 'b': 0.0625, 'a|b': 0.25}
    """
    modalities = list(modalities)
    pairs = fusion_pairs(modalities)
    if redundancy not in ("coin", "proportional"):
        raise ValueError(f"redundancy must be 'coin' or 'proportional', got {redundancy!r}.")
    if redundancy == "coin" and rng is None:
        raise ValueError("redundancy='coin' needs a seeded numpy Generator as rng.")
    share = {m: 0.0 for m in modalities}
    count = {m: 0 for m in modalities}
    syn = {}
    for pair in pairs:
        key = pair_key(pair)
        if key not in atoms:
            raise KeyError(f"No PID atoms for modality pair {key!r}; got {sorted(atoms)}.")
        a = {k: max(0.0, float(v)) for k, v in atoms[key].items()}
        u1, u2, r, s = a["U1"], a["U2"], a["R"], a["S"]
        if redundancy == "coin":
            frac1 = 1.0 if rng.random() < 0.5 else 0.0
        else:
            i1, i2 = a.get("I1", u1 + r), a.get("I2", u2 + r)
            frac1 = 0.5 if i1 + i2 <= 0 else i1 / (i1 + i2)
        share[pair[0]] += u1 + frac1 * r
        share[pair[1]] += u2 + (1.0 - frac1) * r
        count[pair[0]] += 1
        count[pair[1]] += 1
        syn[key] = s
    contrib = {m: share[m] / max(count[m], 1) for m in modalities}
    total = sum(contrib.values()) + sum(syn.values())
    if not np.isfinite(total) or total <= 1e-12:
        # No measurable information yet: plain average of the modalities.
        out = {m: 1.0 / len(modalities) for m in modalities}
        out.update({k: 0.0 for k in syn})
        return out
    out = {m: contrib[m] / total for m in modalities}
    out.update({k: v / total for k, v in syn.items()})
    return out


class PIDReg(nn.Module):
    """Multimodal regression network with a noise bottleneck and PID-weighted fusion.

    Parameters
    ----------
    encoders : mapping of str to torch.nn.Module
        One encoder per modality; each maps a batch of that modality to ``(n, latent_dim)``.
    latent_dim : int
        Latent size D shared by all modalities.
    hidden : sequence of int
        Hidden widths of the predictor MLP.
    dropout : sequence of float
        Dropout of the predictor's hidden layers.
    lambda_init : float
        Initial value of every θ_m (λ_m = sigmoid(θ_m)).

    Examples
    --------
    >>> from brainage.models.encoders import MLPEncoder
    >>> net = PIDReg({"a": MLPEncoder(5, out_dim=4, hidden=(8,), dropout=0.0),
    ...               "b": MLPEncoder(3, out_dim=4, hidden=(8,), dropout=0.0)}, latent_dim=4, hidden=(8,),
    ...              dropout=(0.0,)).eval()
    >>> net({"a": torch.zeros(2, 5), "b": torch.zeros(2, 3)})["pred"].shape
    torch.Size([2])
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        *,
        latent_dim: int,
        hidden: Sequence[int] = (256, 128),
        dropout: Sequence[float] = (0.3, 0.2),
        lambda_init: float = 4.0,
    ):
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(
                f"PIDReg fuses two or more modalities, got {len(encoders)} "
                f"({list(encoders)}); use a unimodal baseline for one modality."
            )
        self.modalities = [str(m) for m in encoders]
        self.pairs = fusion_pairs(self.modalities)
        self.latent_dim = int(latent_dim)
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.theta = nn.ParameterDict(
            {m: nn.Parameter(torch.tensor(float(lambda_init))) for m in self.modalities}
        )
        # Predictor: the encoders' MLP shape, ending in one output.
        self.predictor = MLPEncoder(
            self.latent_dim, out_dim=1, hidden=hidden, dropout=dropout
        ).net[:-1]  # drop the final BatchNorm1d of the latent head
        init_kaiming(self.predictor)
        n_terms = len(self.modalities) + len(self.pairs)
        self.register_buffer("fusion_weights", torch.full((n_terms,), 1.0 / n_terms))
        self.register_buffer("latent_mean", torch.zeros(len(self.modalities), self.latent_dim))

    # ----------------------------------------------------------------- weights
    def set_fusion_weights(self, weights: Mapping[str, float]) -> None:
        """Set the fusion weights from a dict made by :func:`fusion_weights_from_atoms`."""
        keys = self.modalities + [pair_key(p) for p in self.pairs]
        vec = torch.tensor([float(weights[k]) for k in keys], dtype=self.fusion_weights.dtype)
        self.fusion_weights.copy_(vec.to(self.fusion_weights.device))

    def fusion_weights_dict(self) -> dict[str, float]:
        """Return the current fusion weights by modality name and pair key."""
        keys = self.modalities + [pair_key(p) for p in self.pairs]
        return {k: float(v) for k, v in zip(keys, self.fusion_weights.tolist())}

    def bottleneck_lambdas(self) -> dict[str, float]:
        """Return the current λ_m of the noise bottleneck per modality."""
        return {m: float(self._lambda(m).detach()) for m in self.modalities}

    def _lambda(self, m: str) -> torch.Tensor:
        return torch.sigmoid(self.theta[m]).clamp(0.001, 0.999)

    # ----------------------------------------------------------------- forward
    def encode(self, x: Mapping[str, torch.Tensor], modalities: Sequence[str]) -> dict:
        """Run the encoders of ``modalities``; returns ``{m: a_m}``."""
        return {m: self.encoders[m](x[m]) for m in modalities}

    def forward(
        self, x: Mapping[str, torch.Tensor], modalities: Sequence[str] | None = None,
        latents: Mapping[str, torch.Tensor] | None = None,
    ) -> dict:
        """Predict from a batch.

        Parameters
        ----------
        x : mapping of str to torch.Tensor
            Batch of each modality used.
        modalities : sequence of str, optional
            Modalities to predict from (all by default). A left-out modality's
            latent is replaced by its training mean, the value the noise bottleneck
            converges to when it lets no information through.

        latents : mapping of str to torch.Tensor, optional
            Encoder outputs ``a_m`` (n, D) of some modalities, computed before
            (``encode``): their encoders are not run again and ``x`` need not
            hold them (a prediction whose other inputs change, as in ablation).

        Returns
        -------
        dict
            ``"pred"`` (n,), ``"a"`` and ``"z"`` (dicts of (n, D) latents of the used
            modalities), ``"fused"`` (n, D).
        """
        use = self.modalities if modalities is None else list(modalities)
        unknown = sorted(set(use) - set(self.modalities))
        if unknown or not use:
            raise ValueError(
                f"Cannot predict from modalities {use}; this model knows {self.modalities}."
            )
        given = dict(latents or {})
        a = self.encode(x, [m for m in use if m not in given])
        a.update({m: given[m] for m in use if m in given})
        a = {m: a[m] for m in use}
        z = {}
        for m in use:
            if self.training:
                am = a[m]
                with torch.no_grad():
                    # Batch mean and (biased) standard deviation, in float32 under autocast.
                    # Written out: Tensor.var along dim 0 is several times slower on CPU.
                    af = am.float()
                    mu = af.mean(0, keepdim=True)
                    sd = (af - mu).square_().mean(0, keepdim=True).sqrt_()
                    noise = torch.randn_like(am).mul_(sd).add_(mu)
                    i = self.modalities.index(m)
                    self.latent_mean[i].mul_(0.9).add_(0.1 * mu[0])
                # z = λ a + (1 - λ) ε with ε ~ N(mean, sd²) of the batch (no gradient).
                z[m] = torch.lerp(noise, am, self._lambda(m).to(am.dtype))
            else:
                z[m] = a[m]
        n = next(iter(a.values())).shape[0]
        full = {}
        for i, m in enumerate(self.modalities):
            if m in z:
                full[m] = z[m]
            else:
                full[m] = self.latent_mean[i].to(next(iter(z.values())).dtype).expand(n, -1)
        w = self.fusion_weights
        k = len(self.modalities)
        fused = sum(w[i] * full[m] for i, m in enumerate(self.modalities))
        for j, (p, q) in enumerate(self.pairs):
            fused = fused + w[k + j] * (full[p] * full[q])
        pred = self.predictor(fused).squeeze(-1)
        return {"pred": pred, "a": a, "z": z, "fused": fused}
