"""Regularizers of PIDReg: Gaussianity, conditional independence, joint normality.

All three act on a batch and return a 0-dim tensor that can be added to the
prediction loss (the Gaussianity and CMI terms also take stacks, one value per
modality). They are written to be stable in float32 and under
``torch.autocast`` (bf16/fp16): autocast is switched off inside, distances are
computed in at least float32 (float64 for float64 inputs), Gram-matrix entries,
their row means and the whitening of the normality term in that dtype (pairwise
summation; the whitening falls back to float64 when the float32 factorisation
fails), and the final sums, ratios and logarithms in float64. The returned tensors
are float64; add them to a float32 loss as usual.

* :func:`cs_gaussianity_loss` — Cauchy–Schwarz divergence between a latent
  batch and the standard normal (a random reference sample of it, or its exact
  expectations).
* :func:`cs_cmi_loss` — conditional Cauchy–Schwarz estimate of
  ``I(Z; X_target | X_cond)``, which is large when a latent carries information
  about the other modality beyond its own input.
* :func:`normality_loss` — ``-log W'`` with ``W'`` the Shapiro–Francia
  statistic of the whitened joint ``[y_g, z1, z2]``.

See ``docs/pid.md`` for the formulas and the choice of kernel widths.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = [
    "cs_cmi_from_grams",
    "cs_cmi_loss",
    "cs_gaussianity_loss",
    "gram_from_sq_dists",
    "median_distance",
    "normality_loss",
    "pairwise_sq_dists",
]


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _as_matrix(name: str, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}.")
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name}: expected a batch of shape (n, ...) with n >= 2, got {tuple(x.shape)}.")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows (the same samples as the latent), got {x.shape[0]}.")
    return x


def _check_finite(**tensors: torch.Tensor) -> None:
    # One reduction (and one device sync) for all tensors; names only on failure.
    if bool(torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all()):
        return
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or inf).")


def _sq_dists(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``u`` and ``v``, clamped at 0.

    ``(n, d), (k, d) -> (n, k)``, or batched ``(m, n, d), (m, k, d) -> (m, n, k)``.
    """
    uu = (u * u).sum(dim=-1, keepdim=True)
    vv = (v * v).sum(dim=-1, keepdim=True)
    if u.ndim == 2:
        return torch.clamp(torch.addmm(uu + vv.T, u, v.T, alpha=-2.0), min=0.0)
    return torch.clamp(torch.baddbmm(uu + vv.transpose(1, 2), u, v.transpose(1, 2), alpha=-2.0),
                       min=0.0)


# The median heuristic uses at most this many pairs: its relative sampling error
# is then about 2 %, and selecting a median from n(n-1)/2 = 32640 pairs (n = 256)
# on every batch costs more than the rest of a Gram matrix.
_MEDIAN_MAX_PAIRS = 4096


@functools.lru_cache(maxsize=32)
def _pair_index(n: int, device: str) -> torch.Tensor:
    """Flat indices of pairs ``i < j`` of an ``n x n`` matrix used for the median width.

    All pairs when there are at most ``_MEDIAN_MAX_PAIRS``, otherwise that many
    pairs evenly spaced over the upper triangle (a fixed, deterministic subset:
    the batch order is random, so the chosen pairs are a random sample of pairs).
    """
    iu = torch.triu_indices(n, n, offset=1)
    flat = iu[0] * n + iu[1]
    if flat.numel() > _MEDIAN_MAX_PAIRS:
        pick = torch.linspace(0, flat.numel() - 1, _MEDIAN_MAX_PAIRS).round().long()
        flat = flat[pick]
    return flat.to(device)


def _median_sq(d2: torch.Tensor) -> torch.Tensor:
    """Median squared distance over pairs ``i < j`` (detached), floored above 0.

    ``torch.median`` returns the lower middle value, so ``sqrt`` of this is
    exactly the median distance of the pairs used (all pairs up to
    ``_MEDIAN_MAX_PAIRS``, else an evenly spaced subset of that size). For a
    stack ``(m, n, n)`` of squared-distance matrices, one median per matrix,
    shape ``(m, 1, 1)`` (broadcasts against the stack).
    """
    n = d2.shape[-1]
    idx = _pair_index(n, str(d2.device))
    floor = torch.finfo(d2.dtype).eps
    if d2.ndim == 2:
        return torch.clamp(d2.detach().flatten().index_select(0, idx).median(), min=floor)
    vals = d2.detach().flatten(1).index_select(1, idx)
    return torch.clamp(vals.median(dim=1).values, min=floor)[:, None, None]


def pairwise_sq_dists(x: torch.Tensor, *, stacked: bool = False) -> torch.Tensor:
    """Squared pairwise distances of a batch (rows centred; float32 or float64).

    Parameters
    ----------
    x : torch.Tensor of shape (n, ...), or (m, n, d) with ``stacked=True``
        Batch; trailing dimensions are flattened. With ``stacked``, ``m``
        batches of vectors (e.g. the latents of ``m`` modalities).
    stacked : bool, default=False
        Treat the first dimension of a 3-D ``x`` as a stack of batches.

    Returns
    -------
    torch.Tensor of shape (n, n), or (m, n, n) with ``stacked``
        Differentiable in ``x``. Squared distances of a concatenation
        ``[x_a, x_b]`` are the sum of those of ``x_a`` and ``x_b``, which lets a
        caller build the Gram matrix of several modalities from per-modality
        distances.
    """
    if stacked:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] < 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a stack of shape (m, n, d) with n >= 2, got {shape}.")
    else:
        x = _as_matrix("x", x)
    x = x.to(_work_dtype(x))
    x = x - x.detach().mean(dim=-2, keepdim=True)
    return _sq_dists(x, x)


def median_distance(x: torch.Tensor) -> torch.Tensor:
    """Median pairwise Euclidean distance of a batch (the median heuristic), detached.

    Parameters
    ----------
    x : torch.Tensor of shape (n, ...)
        Batch; trailing dimensions are flattened.

    Returns
    -------
    torch.Tensor
        0-dim tensor, the median over pairs ``i < j``; floored at a tiny
        positive value so that a collapsed batch does not give a zero width.

    Examples
    --------
    >>> float(median_distance(torch.tensor([[0.0], [1.0], [3.0]])))
    2.0
    """
    return torch.sqrt(_median_sq(pairwise_sq_dists(x.detach())))


def gram_from_sq_dists(d2: torch.Tensor, sigma_scale: float = 1.0) -> torch.Tensor:
    """Gaussian Gram matrix with the median-heuristic width, from squared distances.

    ``K_ij = exp(-d2_ij / (sigma_scale^2 * median(d2)))``, i.e.
    ``2 sigma^2 = (sigma_scale * median distance)^2`` (see :func:`cs_cmi_loss`).
    The width is detached; gradients flow through ``d2``. A stack ``(m, n, n)``
    gives a stack of Gram matrices, each with its own width.
    """
    return torch.exp(d2 * (-1.0 / (float(sigma_scale) ** 2 * _median_sq(d2))))


def _log_mean_kernel(
    d2: torch.Tensor, inv_two_sigma2: torch.Tensor, *, with_diagonal: bool = False
) -> torch.Tensor:
    """``log mean exp(-d2 / (2 sigma^2))`` in float64 (the kernel values in ``d2``'s dtype).

    A Gram matrix of a sample with itself (``with_diagonal``) has ones on its
    diagonal, so its mean is at least ``1/n`` and needs no max-shift; a cross
    Gram matrix goes through ``logsumexp``, which cannot underflow.
    """
    if with_diagonal:
        return torch.log(torch.exp(d2 * -inv_two_sigma2).mean(dim=(-2, -1)).to(torch.float64))
    lse = torch.logsumexp((d2 * -inv_two_sigma2).flatten(-2), dim=-1)
    return lse.to(torch.float64) - math.log(d2.shape[-2] * d2.shape[-1])


CS_REFERENCES = ("sample", "exact")


def cs_gaussianity_loss(
    a: torch.Tensor, *, generator: torch.Generator | None = None, reference: str = "sample"
) -> torch.Tensor:
    """Cauchy–Schwarz divergence between a latent batch and the standard normal.

    With the Gaussian kernel ``k(u, v) = exp(-||u - v||^2 / (2 sigma^2))``,
    ``sigma`` the median pairwise distance of ``a`` (detached), and ``q`` a
    reference sample of ``N(0, I)`` of the same shape as ``a``::

        L = log mean K(a, a) + log mean K(q, q) - 2 log mean K(a, q)

    The means run over all pairs, diagonal included.

    ``reference="sample"`` (the published method): ``q`` is a fresh random
    sample. ``L`` is the Cauchy–Schwarz divergence of the two kernel density
    estimates, ``>= 0`` exactly (up to round-off), and near 0 (of order
    ``1/n`` sampling noise) when ``a`` is standard normal.

    ``reference="exact"``: the two ``q`` terms are replaced by their exact
    expectations over ``q ~ N(0, I)`` (Gaussian integrals; the limit of an
    infinitely large reference sample)::

        mean_j E_q k(a_j, q) = (s / (s + 1))^(d/2) mean_j exp(-||a_j||^2 / (2 (s + 1)))
        E mean K(q, q)       = 1/n + (1 - 1/n) (s / (s + 2))^(d/2)

    with ``s = sigma^2``; the ``1/n`` is the reference sample's own diagonal,
    which matches the diagonal of ``K(a, a)``. This is still ``>= 0`` (the
    Cauchy–Schwarz inequality for the kernel embeddings of the batch and of
    ``N(0, I)``, with the ``q`` term only made larger), still of order ``1/n``
    for a standard-normal batch, has no sampling noise, and needs one ``n x n``
    kernel matrix instead of three.

    Parameters
    ----------
    a : torch.Tensor of shape (n, d) or (m, n, d)
        Latent batch (pre-bottleneck encoder output), or a stack of the latent
        batches of ``m`` modalities (computed together, which costs fewer
        operations than ``m`` calls).
    generator : torch.Generator, optional
        Random generator for the reference sample (on the device of ``a``);
        pass one for reproducible values. Not used by ``reference="exact"``.
    reference : {"sample", "exact"}, default="sample"
        A random ``N(0, I)`` reference sample, or the exact expectations.

    Returns
    -------
    torch.Tensor
        0-dim float64 tensor, or shape ``(m,)`` for a stack (one divergence per
        modality, each with its own width and reference).

    Raises
    ------
    ValueError
        If ``a`` has fewer than 2 rows or contains non-finite values, or for an
        unknown ``reference``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.randn(256, 8, generator=g)
    >>> bool(cs_gaussianity_loss(a, generator=g) < cs_gaussianity_loss(3 * a + 1, generator=g))
    True
    >>> exact = cs_gaussianity_loss(a, reference="exact")
    >>> bool(0 <= exact < 0.01 < cs_gaussianity_loss(3 * a + 1, reference="exact"))
    True
    """
    if reference not in CS_REFERENCES:
        raise ValueError(f"reference must be one of {CS_REFERENCES}, got {reference!r}.")
    if not (isinstance(a, torch.Tensor) and a.ndim == 3):
        a = _as_matrix("a", a)
    elif a.shape[1] < 2:
        raise ValueError(f"a: expected a stack of shape (m, n, d) with n >= 2, got {tuple(a.shape)}.")
    with torch.autocast(device_type=a.device.type, enabled=False):
        a = a.to(_work_dtype(a))
        if not bool(torch.isfinite(a).all()):
            raise ValueError("a contains non-finite values (NaN or inf); check the encoder output.")
        # A common shift keeps every distance and improves float32 accuracy.
        shift = a.detach().mean(dim=-2, keepdim=True)
        a_c = a - shift
        d2_aa = _sq_dists(a_c, a_c)
        # sigma = median distance of a, so 1 / (2 sigma^2) = 1 / (2 median(d2)).
        med = _median_sq(d2_aa)
        inv_two_sigma2 = 0.5 / med
        log_aa = _log_mean_kernel(d2_aa, inv_two_sigma2, with_diagonal=True)
        if reference == "exact":
            n, d = a.shape[-2], a.shape[-1]
            med_row = med.reshape(*med.shape[:-2], 1)  # sigma^2 per matrix, against (.., n)
            s = med_row[..., 0].to(torch.float64)
            log_qq = torch.log(1.0 / n + (1.0 - 1.0 / n) * torch.exp(0.5 * d * torch.log(s / (s + 2.0))))
            sq = (a * a).sum(dim=-1)  # ||a_j||^2 about the origin, the mean of N(0, I)
            lse = torch.logsumexp(sq * (-0.5 / (med_row + 1.0)), dim=-1)
            log_aq = 0.5 * d * torch.log(s / (s + 1.0)) + lse.to(torch.float64) - math.log(n)
            return log_aa + log_qq - 2.0 * log_aq
        q = torch.randn(a.shape, generator=generator, dtype=a.dtype, device=a.device)
        q_c = q - shift
        return (
            log_aa
            + _log_mean_kernel(_sq_dists(q_c, q_c), inv_two_sigma2, with_diagonal=True)
            - 2.0 * _log_mean_kernel(_sq_dists(a_c, q_c), inv_two_sigma2)
        )


def cs_cmi_loss(
    z: torch.Tensor,
    x_target: torch.Tensor,
    x_cond: torch.Tensor,
    *,
    sigma_scale: float = 1.0,
) -> torch.Tensor:
    """Conditional Cauchy–Schwarz estimate of ``I(Z; X_target | X_cond)``.

    Three Gram matrices over the batch: ``M`` on the condition ``X_cond``,
    ``K`` on the target ``X_target`` and ``L`` on the latent ``Z``. With row
    means over ``i`` (the estimate is invariant to using sums or means)::

        D = - 2 log sum_j (M_j.)(KM_j.)(LM_j.)
            +   log sum_j (KLM_j.)(L_j.)^2
            +   log sum_j (KL_j.)^2 (LM_j.)^2 / (KLM_j.)

    where ``KM_j. = mean_i K_ji M_ji`` and so on. In PIDReg it is minimised
    for ``Z = Z1, X_target = X2, X_cond = X1`` (and symmetrically), so that a
    latent does not encode the other modality beyond its own input.

    Kernel widths: each Gram matrix uses its own median heuristic (median
    pairwise distance of that variable in the batch) times ``sigma_scale``.
    The three variables live in different spaces (a 64-d latent, flattened
    images or feature vectors of thousands of dimensions), so one shared
    width leaves at least one Gram matrix degenerate: all ones (no
    information) or the identity (no overlap between samples). With the
    median heuristic every Gram matrix has off-diagonal entries of order
    ``exp(-1/2)``, and the estimate responds to dependence. At
    ``sigma_scale = 0.05`` (the width of the original PIDReg code) every Gram
    matrix is numerically the identity and ``D`` is 0 with no gradient.

    Parameters
    ----------
    z : torch.Tensor of shape (n, d)
        Latent batch of one modality.
    x_target : torch.Tensor of shape (n, ...)
        Input (or features) of the other modality; flattened per sample.
    x_cond : torch.Tensor of shape (n, ...)
        Input (or features) of the latent's own modality; flattened per sample.
    sigma_scale : float, default=1.0
        Multiplier of the three median-heuristic widths.

    Returns
    -------
    torch.Tensor
        0-dim float64 tensor; gradients flow to ``z`` (the inputs are usually
        data and are treated as constants for the widths).

    Raises
    ------
    ValueError
        On mismatched batch sizes, non-finite values or a non-positive
        ``sigma_scale``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x1, x2 = torch.randn(128, 4, generator=g), torch.randn(128, 4, generator=g)
    >>> leak = cs_cmi_loss(x1 + x2, x2, x1)
    >>> clean = cs_cmi_loss(x1 + 0.5 * torch.randn(128, 4, generator=g), x2, x1)
    >>> bool(leak > clean)
    True
    """
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be > 0 (1.0 = median heuristic), got {sigma_scale}.")
    z = _as_matrix("z", z)
    n = z.shape[0]
    x_target = _as_matrix("x_target", x_target, n)
    x_cond = _as_matrix("x_cond", x_cond, n)
    with torch.autocast(device_type=z.device.type, enabled=False):
        _check_finite(z=z, x_target=x_target, x_cond=x_cond)
        with torch.no_grad():
            m = gram_from_sq_dists(pairwise_sq_dists(x_cond), sigma_scale)
            k = gram_from_sq_dists(pairwise_sq_dists(x_target), sigma_scale)
        lat = gram_from_sq_dists(pairwise_sq_dists(z), sigma_scale)
        return cs_cmi_from_grams(lat, k, m)


def cs_cmi_from_grams(lat: torch.Tensor, k: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Compute the conditional CS estimate of :func:`cs_cmi_loss` from its three Gram matrices.

    Lets a training loop build the Gram matrices of the inputs once per batch
    and share them between the CMI terms of all modalities.

    Parameters
    ----------
    lat, k, m : torch.Tensor of shape (n, n) or (b, n, n)
        Gram matrices of the latent ``Z``, the target ``X_target`` and the
        condition ``X_cond`` (e.g. from :func:`gram_from_sq_dists`), or stacks
        of ``b`` such triples (e.g. one per modality), computed together.

    Returns
    -------
    torch.Tensor
        0-dim float64 tensor, or shape ``(b,)`` for stacks.
    """
    # Row means in the Gram dtype (pairwise summation), the final sums and logs in float64.
    lat_m = lat * m
    rows = torch.stack([m.mean(dim=-1), lat.mean(dim=-1), (k * m).mean(dim=-1), lat_m.mean(dim=-1),
                        (k * lat).mean(dim=-1), (k * lat_m).mean(dim=-1)]).to(torch.float64)
    m_r, l_r, km, lm, kl, klm = rows.unbind(0)
    term_a = torch.log((m_r * km * lm).sum(dim=-1))
    term_b = torch.log((klm * l_r * l_r).sum(dim=-1))
    term_c = torch.log((kl * kl * lm * lm / klm).sum(dim=-1))
    return -2.0 * term_a + term_b + term_c


def _argsort(v: torch.Tensor) -> torch.Tensor:
    if v.device.type == "cpu":
        return torch.from_numpy(np.argsort(v.numpy(), kind="quicksort"))
    return torch.argsort(v)


@functools.lru_cache(maxsize=8)
def _blom_scores(big_n: int, device: str) -> tuple[torch.Tensor, float]:
    """Return the expected normal order statistics (Blom) of ``big_n`` values and their square sum."""
    i = torch.arange(1, big_n + 1, dtype=torch.float64)
    m = torch.special.ndtri((i - 0.375) / (big_n + 0.25))
    return m.to(device), float((m * m).sum())


def normality_loss(joint: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Joint-normality penalty ``-log W'`` (Shapiro–Francia) of the whitened joint.

    The batch ``joint = [y_g, z1, z2]`` (shape ``(n, d)``) is centred and
    whitened with the Cholesky factor of its sample covariance (plus a ridge
    ``eps`` times the mean variance; in float32 for a float32 batch, in float64
    for a float64 one or when the float32 factor fails); the ``n * d`` whitened values are
    flattened and sorted, ``x_(1) <= ... <= x_(N)``, and compared with the
    expected normal order statistics ``m_i = Phi^-1((i - 3/8) / (N + 1/4))``
    (Blom scores)::

        W' = (sum_i m_i x_(i))^2 / (sum_i m_i^2 * sum_i (x_i - mean x)^2)

    ``W'`` is the squared correlation between the sorted values and the normal
    scores (Shapiro & Francia 1972), a differentiable stand-in for the
    Shapiro–Wilk ``W`` (sorting is differentiable almost everywhere). It is
    1 for exactly normal scores and smaller for heavy tails, skew or
    clustering; ``-log W' >= 0``. Note that whitening makes the marginals
    uncorrelated but the pooled values can still be close to normal when the
    joint is not Gaussian, so this is a necessary, not a sufficient,
    condition for joint normality.

    Parameters
    ----------
    joint : torch.Tensor of shape (n, d)
        Batch of the joint variables, with ``n > d``.
    eps : float, default=1e-6
        Ridge for the whitening, relative to the mean variance.

    Returns
    -------
    torch.Tensor
        0-dim float64 tensor.

    Raises
    ------
    ValueError
        If ``joint`` is not 2-D with ``n > d`` or contains non-finite values.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> gauss = torch.randn(256, 5, generator=g)
    >>> bool(normality_loss(gauss) < normality_loss(gauss**3))
    True
    """
    if not isinstance(joint, torch.Tensor):
        raise TypeError(f"joint: expected a torch.Tensor, got {type(joint).__name__}.")
    if joint.ndim != 2 or joint.shape[0] <= joint.shape[1]:
        raise ValueError(
            f"joint: expected shape (n, d) with n > d (whitening needs more samples than "
            f"dimensions), got {tuple(joint.shape)}. Use a larger batch."
        )
    with torch.autocast(device_type=joint.device.type, enabled=False):
        x = joint.to(_work_dtype(joint))
        if not bool(torch.isfinite(x).all()):
            raise ValueError("joint contains non-finite values (NaN or inf).")
        white = _whiten(x, eps)
        if white is None and x.dtype != torch.float64:
            # Too ill-conditioned for a float32 factor: float64 has the digits.
            white = _whiten(x.to(torch.float64), eps)
        if white is None:
            raise ValueError(
                "joint: covariance is not positive definite even with the ridge; "
                "check for constant or NaN columns, or increase eps."
            )
        vals = white.flatten()
        # sum_i m_i x_(i) = sum_k m_rank(k) x_k: the ranks come from an argsort without
        # gradient (numpy's is several times faster than torch's on CPU), and the
        # statistic stays differentiable in every value without a sort backward.
        m, m_sq = _blom_scores(vals.numel(), str(vals.device))
        order = _argsort(vals.detach())
        m_at = torch.empty_like(m).index_put_((order,), m).to(vals.dtype)
        vc = vals - vals.mean()
        # Products and (pairwise) sums in the whitening's dtype, the ratio in float64.
        num = (m_at * vc).sum().to(torch.float64) ** 2
        den = m_sq * (vc * vc).sum().to(torch.float64)
        w = torch.clamp(num / den, min=1e-12, max=1.0)
        return -torch.log(w)


def _whiten(x: torch.Tensor, eps: float) -> torch.Tensor | None:
    """Centre and whiten the rows of ``x`` with the Cholesky factor of its ridged covariance.

    Returns None when the factorisation fails in ``x``'s dtype.
    """
    n, d = x.shape
    xc = x - x.mean(dim=0, keepdim=True)
    cov = xc.T @ xc / (n - 1)
    ridge = eps * torch.clamp(torch.diagonal(cov).mean().detach(), min=1e-12)
    cov = cov + ridge * torch.eye(d, dtype=cov.dtype, device=cov.device)
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        return None
    return torch.linalg.solve_triangular(chol, xc.T, upper=False).T
