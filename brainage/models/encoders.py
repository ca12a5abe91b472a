"""Modality encoders: a 3D CNN for volumes and an MLP for feature vectors.

Both map one participant's input of a modality to a latent vector of size
``out_dim`` that ends in a batch normalisation, as in PIDReg. The CNN follows
the Simple Fully Convolutional Network (SFCN, Peng et al., Med. Image Anal.
2021) built from MONAI convolution blocks; its spatial size is taken from the
input, so the same network runs on 1 mm, 2 mm or tiny test volumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["MLPEncoder", "SFCNEncoder", "build_encoder", "encoder_spec_for", "init_kaiming"]


def init_kaiming(module: nn.Module) -> None:
    """Initialise linear and convolution weights with Kaiming-normal, biases with zero.

    Parameters
    ----------
    module : torch.nn.Module
        Module whose sub-modules are initialised in place.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d, nn.Conv2d, nn.Conv1d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MLPEncoder(nn.Module):
    """Multilayer perceptron for vector inputs (regional volumes, connectivity edges).

    ``Linear → BN → ReLU → Dropout`` per hidden layer, then ``Linear → BN`` to the latent.

    Parameters
    ----------
    in_features : int
        Length of the input vector.
    out_dim : int
        Latent size.
    hidden : sequence of int
        Widths of the hidden layers.
    dropout : float or sequence of float
        Dropout after each hidden layer (one value, or one per layer).

    Examples
    --------
    >>> enc = MLPEncoder(10, out_dim=4, hidden=(16,))
    >>> enc(torch.zeros(3, 10)).shape
    torch.Size([3, 4])
    """

    def __init__(
        self,
        in_features: int,
        *,
        out_dim: int = 64,
        hidden: Sequence[int] = (256, 128),
        dropout: float | Sequence[float] = (0.3, 0.2),
    ):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if isinstance(dropout, (int, float)):
            dropout = (float(dropout),) * len(hidden)
        dropout = tuple(float(d) for d in dropout)
        if len(dropout) != len(hidden):
            raise ValueError(
                f"MLPEncoder got {len(hidden)} hidden layers but {len(dropout)} dropout rates; "
                "give one dropout rate, or one per hidden layer."
            )
        if not hidden and int(out_dim) > int(in_features):
            from brainage.exceptions import UsageError

            raise UsageError(
                f"a linear encoder (hidden: []) cannot make {out_dim} latent dimensions from "
                f"{in_features} input feature(s): the latents would be rank-deficient and their PID "
                f"singular; set latent_dim to at most {in_features}, or add a hidden layer"
            )
        layers: list[nn.Module] = []
        width = int(in_features)
        for h, p in zip(hidden, dropout):
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(p)]
            width = h
        layers += [nn.Linear(width, out_dim), nn.BatchNorm1d(out_dim)]
        self.net = nn.Sequential(*layers)
        self.in_features = int(in_features)
        self.out_dim = int(out_dim)
        init_kaiming(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a batch ``(n, in_features)`` (extra axes are flattened) to ``(n, out_dim)``."""
        return self.net(x.reshape(x.shape[0], -1))


class SFCNEncoder(nn.Module):
    """SFCN-style 3D CNN for volumes, built from MONAI convolution blocks.

    Each stage is ``Conv3d(3³) → BN → ReLU → MaxPool(2)``; the last stage is a
    ``1³`` convolution, followed by global average pooling, dropout and a linear
    map to the latent with a final batch normalisation. Global pooling makes the
    network independent of the input's spatial size.

    Parameters
    ----------
    in_channels : int
        Number of input channels (e.g. GM and WM probability maps → 2).
    out_dim : int
        Latent size.
    channels : sequence of int
        Channels of the pooled 3³ stages; SFCN uses ``(32, 64, 128, 256, 256)``.
    final_channels : int
        Channels of the last 1³ stage (SFCN: 64).
    width : float
        Multiplier applied to every entry of ``channels`` and ``final_channels``.
    dropout : float
        Dropout before the linear head.
    input_pool : int
        Average-pool the input by this factor in each axis before the first
        stage (1: none). On a CPU, ``input_pool=2`` turns a 2 mm map into a
        4 mm one and cuts the cost of every stage about eightfold; it has no
        weights, so it does not change what a bundle stores.

    Examples
    --------
    >>> enc = SFCNEncoder(in_channels=2, out_dim=8, channels=(4, 8), final_channels=8)
    >>> enc(torch.zeros(3, 2, 12, 14, 10)).shape
    torch.Size([3, 8])
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_dim: int = 64,
        channels: Sequence[int] = (32, 64, 128, 256, 256),
        final_channels: int = 64,
        width: float = 1.0,
        dropout: float = 0.5,
        input_pool: int = 1,
    ):
        super().__init__()
        if width <= 0:
            raise ValueError(f"SFCNEncoder width must be positive, got {width}.")
        if int(input_pool) != input_pool or input_pool < 1:
            raise ValueError(f"SFCNEncoder input_pool must be a positive integer, got {input_pool}.")
        self.input_pool = int(input_pool)
        self.downsample = (nn.AvgPool3d(self.input_pool, ceil_mode=True) if self.input_pool > 1
                           else nn.Identity())
        chans = [max(1, round(c * width)) for c in channels]
        final = max(1, round(final_channels * width))
        blocks: list[nn.Module] = []
        c_in = int(in_channels)
        for c in chans:
            blocks.append(
                Convolution(
                    spatial_dims=3, in_channels=c_in, out_channels=c, kernel_size=3,
                    act="RELU", norm="BATCH", adn_ordering="NA",
                )
            )
            # ceil_mode keeps odd and tiny sizes valid (91 → 46 → 23 …, never 0).
            blocks.append(nn.MaxPool3d(kernel_size=2, ceil_mode=True))
            c_in = c
        blocks.append(
            Convolution(
                spatial_dims=3, in_channels=c_in, out_channels=final, kernel_size=1,
                act="RELU", norm="BATCH", adn_ordering="NA",
            )
        )
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(final, out_dim), nn.BatchNorm1d(out_dim)
        )
        self.in_channels = int(in_channels)
        self.out_dim = int(out_dim)
        init_kaiming(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a batch ``(n, C, X, Y, Z)`` (``(n, X, Y, Z)`` if C = 1) to ``(n, out_dim)``."""
        if x.ndim == 4:
            x = x.unsqueeze(1)
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SFCNEncoder expects a batch of shape (n, {self.in_channels}, X, Y, Z), "
                f"got {tuple(x.shape)}; stack the channels of each participant on axis 1."
            )
        h = self.pool(self.features(self.downsample(x))).flatten(1)
        return self.head(h)


def encoder_spec_for(sample_shape: Sequence[int], **options) -> dict:
    """Choose an encoder for one modality from the shape of one participant's input.

    Parameters
    ----------
    sample_shape : sequence of int
        Shape of one participant's input without the batch axis: ``(p,)`` for a
        vector, ``(X, Y, Z)`` for a volume, ``(C, X, Y, Z)`` for a multi-channel volume.
    **options
        Keyword arguments passed on to the encoder (``hidden``, ``channels``, ``width`` …).

    Returns
    -------
    dict
        A JSON-serialisable spec with ``"kind"`` (``"mlp"`` or ``"sfcn"``) and the
        encoder's keyword arguments; :func:`build_encoder` turns it into a module.
    """
    shape = tuple(int(s) for s in sample_shape)
    if len(shape) in (0, 1, 2):
        p = 1
        for s in shape:
            p *= s
        return {"kind": "mlp", "in_features": p, **options}
    if len(shape) == 3:
        return {"kind": "sfcn", "in_channels": 1, **options}
    if len(shape) == 4:
        return {"kind": "sfcn", "in_channels": shape[0], **options}
    raise ValueError(
        f"Cannot choose an encoder for inputs of shape {shape}: expected a vector (p,), "
        "a volume (X, Y, Z) or a multi-channel volume (C, X, Y, Z) per participant."
    )


def build_encoder(spec: dict, *, out_dim: int) -> nn.Module:
    """Build an encoder from a spec made by :func:`encoder_spec_for`.

    Parameters
    ----------
    spec : dict
        ``{"kind": "mlp" | "sfcn", **kwargs}``.
    out_dim : int
        Latent size.

    Returns
    -------
    torch.nn.Module
        The encoder, initialised with Kaiming-normal weights.
    """
    kwargs = dict(spec)
    kind = kwargs.pop("kind", None)
    if kind == "mlp":
        return MLPEncoder(out_dim=out_dim, **kwargs)
    if kind == "sfcn":
        return SFCNEncoder(out_dim=out_dim, **kwargs)
    raise ValueError(f"Unknown encoder kind {kind!r}; expected 'mlp' or 'sfcn'.")
