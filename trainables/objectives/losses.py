"""Differentiable training losses for valence / arousal regression.

The main objective of continuous emotion recognition is the concordance
correlation coefficient (CCC, Lin 1989), so the standard loss is ``1 - CCC``
per output dimension, optionally mixed with an MSE term: the CCC gradient is
small while predictions are still nearly constant (early training), whereas
MSE gives a well-conditioned pull towards the targets from the start.

Paper 001 (SS-VAERR) adds two classification terms computed on per-step class
logits over a discretisation of each label dimension:

* **CE** - cross-entropy against the one-hot bin of the label, with
  ``n_bins = 20`` uniform bins over the label range ``[-1, 1]``
  (see :func:`bin_edges` / :func:`bin_labels`);
* **nCCE** - the same cross-entropy weighted per sample by a cost
  ``C = 1 + || sum_l K_l (Y_l - Yhat_l) ||_2`` where ``K_l`` is a per-bin
  value from k-means on the training labels (see :func:`fit_bin_centroids`).

The CCC term is :func:`trainables.objectives.concordance.masked_ccc`, the
same function the reported metric :func:`trainables.objectives.metrics.ccc`
calls, so ``1 - loss`` on a full sequence equals the metric up to the ``eps``
stabiliser.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from trainables.objectives.concordance import masked_ccc

__all__ = [
    "CompositeLoss",
    "LOSS_TERMS",
    "bin_edges",
    "bin_centers",
    "bin_labels",
    "cross_entropy_bins",
    "ncce_bins",
    "fit_bin_centroids",
    "fit_bin_centroids_per_dim",
]

Weight = float | Sequence[float]

#: Names of the loss terms, in the order they are summed; ``w_<term>`` is the
#: matching weight argument / config key.
LOSS_TERMS: tuple[str, ...] = ("ccc", "mse", "ce", "ncce")

_DEFAULT_WEIGHTS: dict[str, float] = {"ccc": 1.0, "mse": 0.0, "ce": 0.0, "ncce": 0.0}


# --------------------------------------------------------------------------
# Discretisation of the labels (CE / nCCE targets)
# --------------------------------------------------------------------------


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
    return int(n_bins)


def bin_edges(n_bins: int = 20) -> NDArray[np.float64]:
    """Edges of ``n_bins`` uniform bins over the label range ``[-1, 1]``.

    Formula::

        e_j = (2 j - n_bins) / n_bins,   j = 0 .. n_bins

    (written as one division of integers, so every edge is the float64 value
    nearest the exact rational edge: for 20 bins the edges are exactly the
    literals ``-1.0, -0.9, ..., 0.9, 1.0``). Bin ``l`` is the half-open
    interval ``[e_l, e_{l+1})``, except the last one, which is closed
    ``[e_{n-1}, 1]``; see :func:`bin_labels`.

    Args:
        n_bins: Number of bins, ``>= 2``.

    Returns:
        Array of shape ``(n_bins + 1,)``, increasing, from -1.0 to 1.0.

    Raises:
        ValueError: If ``n_bins`` is not an integer ``>= 2``.
    """
    n = _check_bins(n_bins)
    return np.array([(2 * j - n) / n for j in range(n + 1)], dtype=np.float64)


def bin_centers(n_bins: int = 20) -> NDArray[np.float64]:
    """Midpoints ``(e_l + e_{l+1}) / 2 = (2 l + 1 - n_bins) / n_bins`` of the uniform bins.

    Args:
        n_bins: Number of bins, ``>= 2``.

    Returns:
        Array of shape ``(n_bins,)``, e.g. ``-0.95, -0.85, ..., 0.95`` for 20.
    """
    n = _check_bins(n_bins)
    return np.array([(2 * j + 1 - n) / n for j in range(n)], dtype=np.float64)


def bin_labels(labels: Tensor, n_bins: int = 20) -> Tensor:
    """Class index of each label in the uniform binning of ``[-1, 1]``.

    Rule: label ``y`` goes to the bin ``l`` with ``e_l <= y < e_{l+1}``
    (edges from :func:`bin_edges`), i.e. an edge value belongs to the bin on
    its right; ``y = 1`` (the top edge) goes to the last bin. Values outside
    the range are clipped into the first / last bin (``y < -1 -> 0``,
    ``y > 1 -> n_bins - 1``).

    The comparison is made in the working dtype of the labels (at least
    float32) with the edges rounded to that dtype, so a float32 label
    ``-0.1`` lands in the bin that starts at ``-0.1`` (bin 9 of 20), as it
    would for the float64 literal.

    NaN labels are not allowed (mask them first; :class:`CompositeLoss`
    replaces them with 0 and masks the result).

    Args:
        labels: Tensor of any shape.
        n_bins: Number of bins, ``>= 2``.

    Returns:
        ``torch.long`` tensor of the same shape with values in
        ``[0, n_bins - 1]``.

    Raises:
        ValueError: If ``n_bins`` is invalid or ``labels`` contains NaN.
    """
    n = _check_bins(n_bins)
    if labels.is_floating_point() and torch.isnan(labels).any():
        raise ValueError("labels contain NaN; mask unannotated steps before binning")
    return _bucketize(labels, n)


def _bucketize(labels: Tensor, n: int) -> Tensor:
    """:func:`bin_labels` without validation (no host-device sync)."""
    work = torch.promote_types(labels.dtype, torch.float32) if labels.is_floating_point() else torch.float32
    y = labels.to(work).contiguous()
    inner = torch.tensor(bin_edges(n)[1:-1], dtype=work, device=y.device)
    # right=True: returns i with inner[i-1] <= y < inner[i], so a value equal
    # to an inner edge goes to the bin on its right. Values below -1 give 0,
    # values >= the last inner edge (including 1 and anything above) give n-1.
    return torch.bucketize(y, inner, right=True)


def _log_probs_and_nll(logits: Tensor, bins: Tensor) -> tuple[Tensor, Tensor]:
    """``log_softmax`` over the last axis and the per-sample NLL of ``bins``."""
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, bins.unsqueeze(-1)).squeeze(-1)
    return logp, nll


def _ncce_cost(logp: Tensor, bins: Tensor, centroids: Tensor) -> Tensor:
    """Per-sample cost ``C = 1 + |K[bin] - sum_l K_l softmax_l|`` (see :func:`ncce_bins`)."""
    k = centroids.to(logp.dtype).expand(logp.shape)
    k_true = k.gather(-1, bins.unsqueeze(-1)).squeeze(-1)
    expected = (logp.exp() * k).sum(dim=-1)
    return 1.0 + (k_true - expected).abs()


def cross_entropy_bins(logits: Tensor, labels: Tensor, n_bins: int = 20) -> Tensor:
    """Mean cross-entropy of bin logits against the binned labels.

    Formula (``Y`` one-hot of ``bin_labels(y)``, ``Yhat = softmax(logits)``)::

        CE = mean over samples of  - sum_l Y_l log Yhat_l
           = mean over samples of  - log_softmax(logits)[bin(y)]

    Args:
        logits: Shape ``(..., n_bins)``.
        labels: Shape ``logits.shape[:-1]``, finite (no NaN; use
            :class:`CompositeLoss` for masking).
        n_bins: Number of uniform bins over ``[-1, 1]``.

    Returns:
        Scalar tensor (float32 or wider).

    Raises:
        ValueError: On shape mismatch or NaN labels.
    """
    n = _check_bins(n_bins)
    if tuple(logits.shape) != (*labels.shape, n):
        raise ValueError(f"logits must have shape labels.shape + ({n},), got {tuple(logits.shape)} for labels "
                         f"{tuple(labels.shape)}")
    work = torch.promote_types(logits.dtype, torch.float32)
    _, nll = _log_probs_and_nll(logits.to(work), bin_labels(labels, n))
    return nll.mean()


def ncce_bins(logits: Tensor, labels: Tensor, centroids: Tensor | ArrayLike, detach_cost: bool = False) -> Tensor:
    """Cost-sensitive cross-entropy (nCCE, paper 001, Eq. 4-5) for one dimension.

    Formula, per sample ``f`` (``Y_f`` one-hot of the label's bin,
    ``Yhat_f = softmax(logits_f)``, ``K`` the per-bin values of
    :func:`fit_bin_centroids`)::

        C_f   = 1 + || sum_l K_l (Y_f,l - Yhat_f,l) ||_2
              = 1 + | K[bin(y_f)] - sum_l K_l Yhat_f,l |      (K_l are scalars)
        nCCE  = mean over f of  C_f * ( - sum_l Y_f,l log Yhat_f,l )

    i.e. the CE of each sample is multiplied by one plus the distance between
    the value of its true bin and the expected value under the predicted
    distribution, so confident predictions of far-away bins cost more than
    near misses. ``C_f >= 1``; with all ``K_l`` equal (e.g. all zero)
    ``C_f == 1`` exactly and nCCE equals CE bit for bit.

    Args:
        logits: Shape ``(..., L)``.
        labels: Shape ``logits.shape[:-1]``, finite.
        centroids: ``(L,)`` per-bin values (or anything broadcastable to
            ``logits``, e.g. ``(D, L)`` for logits ``(N, D, L)``).
        detach_cost: If True, ``C_f`` is treated as a constant weight (no
            gradient through it). The default differentiates the literal
            product of Eq. 4, which adds a pull of the expected bin value
            towards the true one.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: On shape mismatch or NaN labels.
    """
    n = logits.shape[-1]
    if tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    work = torch.promote_types(logits.dtype, torch.float32)
    k = torch.as_tensor(centroids, dtype=work, device=logits.device)
    if k.shape[-1] != n:
        raise ValueError(f"centroids must have {n} values on the last axis, got shape {tuple(k.shape)}")
    bins = bin_labels(labels, n)
    logp, nll = _log_probs_and_nll(logits.to(work), bins)
    cost = _ncce_cost(logp, bins, k)
    if detach_cost:
        cost = cost.detach()
    return (cost * nll).mean()


def fit_bin_centroids(
    train_labels: ArrayLike,
    k: int = 20,
    seed: int = 0,
    max_samples: int | None = 200_000,
) -> NDArray[np.float64]:
    """Per-bin values ``K_l`` for nCCE: sorted 1-D k-means centroids of the training labels.

    Procedure: drop NaN labels; run scikit-learn ``KMeans(n_clusters=k,
    n_init=10, random_state=seed)`` on the (N, 1) labels; sort the ``k``
    centroids ascending and assign them **in order** to the ``k`` uniform
    bins of :func:`bin_edges` (``K_0`` = smallest centroid for the bin at -1,
    ..., ``K_{k-1}`` = largest for the bin at 1). Bins and clusters are both
    ordered along the label axis, so the order matches; note that centroids
    follow the label density (dense near neutral), so ``K_l`` need not lie
    inside bin ``l``.

    Edge cases:

    * Fewer than ``k`` distinct label values (e.g. Likert-type labels): the
      distinct values themselves are the exact k-means solution with that
      many clusters, and each uniform bin gets the distinct value nearest to
      its bin centre (:func:`bin_centers`; a centre half-way between two
      values takes the lower one); the result is still sorted (repeated
      values allowed).
    * More than ``max_samples`` labels: a uniform random subset of that size
      (drawn with ``seed``) is clustered, which keeps the fit to a few
      seconds on long datasets; ``None`` uses all labels.

    Args:
        train_labels: 1-D training labels of one dimension (NaN = unannotated,
            ignored); expected on the ``[-1, 1]`` scale.
        k: Number of clusters = number of bins (20 in paper 001).
        seed: Random state of k-means and of the subsampling.
        max_samples: Subsampling threshold, or None.

    Returns:
        Sorted float64 array of shape ``(k,)``.

    Raises:
        ValueError: If the input is not 1-D, has infinite values, no finite
            value, or ``k`` is invalid.
    """
    from sklearn.cluster import KMeans

    kk = _check_bins(k)
    y = np.asarray(train_labels, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"train_labels must be 1-D, got shape {y.shape}")
    if np.any(np.isinf(y)):
        raise ValueError("train_labels contains infinite values")
    y = y[~np.isnan(y)]
    if y.size == 0:
        raise ValueError("train_labels has no annotated (non-NaN) value")
    distinct = np.unique(y)
    if distinct.size < kk:
        centres = bin_centers(kk)
        nearest = np.argmin(np.abs(centres[:, None] - distinct[None, :]), axis=1)
        return np.sort(distinct[nearest])
    if max_samples is not None and y.size > max_samples:
        y = np.random.default_rng(seed).choice(y, size=int(max_samples), replace=False)
    km = KMeans(n_clusters=kk, n_init=10, random_state=seed).fit(y.reshape(-1, 1))
    return np.sort(km.cluster_centers_.ravel().astype(np.float64))


def fit_bin_centroids_per_dim(
    train_labels: ArrayLike,
    k: int = 20,
    seed: int = 0,
    max_samples: int | None = 200_000,
) -> NDArray[np.float64]:
    """:func:`fit_bin_centroids` on each column of ``(N, D)`` training labels.

    Returns:
        Array ``(D, k)``, row ``d`` for dimension ``d``; pass it as
        ``CompositeLoss(centroids=...)``.
    """
    y = np.asarray(train_labels, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"train_labels must be 2-D (N, D), got shape {y.shape}")
    return np.stack([fit_bin_centroids(y[:, d], k=k, seed=seed, max_samples=max_samples) for d in range(y.shape[1])])


# --------------------------------------------------------------------------
# Composite loss
# --------------------------------------------------------------------------


def _validated_weights(name: str, value: Weight) -> list[float]:
    """Turn a scalar or per-dimension weight into a validated list of floats.

    Args:
        name: Argument name, used in error messages.
        value: A number, or a non-empty sequence of numbers.

    Returns:
        The weights as a list (length 1 for a scalar).

    Raises:
        ValueError: If the sequence is empty or any weight is negative or
            not finite.
    """
    if isinstance(value, numbers.Real):
        weights = [float(value)]
    else:
        weights = [float(w) for w in value]
        if not weights:
            raise ValueError(f"{name} must be a number or a non-empty sequence")
    for w in weights:
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"{name} weights must be finite and >= 0, got {weights}")
    return weights


class CompositeLoss(torch.nn.Module):
    """Weighted sum of ``1 - CCC``, MSE, CE and nCCE, averaged over dimensions.

    For predictions and targets of shape ``(N, D)`` (leading axes of a
    ``(B, T, D)`` input are flattened to ``N = B*T``, so the CCC is computed
    over the whole batch, as is usual for CCC losses) and optional class
    logits of shape ``(N, D, n_bins)`` (resp. ``(B, T, D, n_bins)``)::

        loss_d = w_ccc_d * (1 - CCC_d) + w_mse_d * MSE_d
                 + w_ce_d * CE_d + w_ncce_d * nCCE_d
        loss   = mean over scored dimensions d of loss_d

    ``CE_d`` / ``nCCE_d`` are the mean over annotated rows of the per-sample
    terms of :func:`cross_entropy_bins` / :func:`ncce_bins` (uniform bins over
    ``[-1, 1]``, see :func:`bin_labels`). Every weight is a number applied to
    all dimensions or one weight per dimension, e.g. paper 001's
    ``w_ccc=[1.0, 0.66], w_ce=[0.0, 0.34]`` for (valence, arousal); see
    :meth:`from_config` for the flat config-key scheme.

    NaN targets are masked **per dimension**: a NaN at ``target[n, d]``
    removes row ``n`` from every term of dimension ``d`` only.
    A dimension with fewer than 2 annotated rows in the batch is *not scored*
    (CCC is undefined there): it is left out of the mean over dimensions and
    its parts are reported as NaN. If no dimension is scored, the loss is an
    exact 0 that is still attached to the graph (``backward`` works and gives
    zero gradients), so a fully unannotated batch is harmless.

    NaN *predictions* (or logits) are not masked on annotated rows: they
    propagate to the loss, as they indicate a bug upstream.

    After each call, :attr:`last_parts` gives the components as Python
    floats, per dimension name: ``ccc_<name>`` (the CCC itself, not
    ``1 - CCC``), ``mse_<name>``, and, when logits were passed,
    ``ce_<name>`` and (if centroids are set) ``ncce_<name>`` - reported even
    when their weight is 0, for monitoring - plus ``total``. They are kept as
    detached tensors and only converted on access, so that reading them is
    the only point that synchronises with the GPU.

    Args:
        w_ccc: Weight of ``1 - CCC``: a number or one weight per dimension.
        w_mse: Weight of the MSE term, same format.
        dim_names: Optional names for the ``D`` dimensions used as keys of
            :attr:`last_parts` (e.g. ``("valence", "arousal")``); defaults to
            ``"0", "1", ...``.
        eps: Stabiliser added to the CCC denominator (see :func:`masked_ccc`).
        w_ce: Weight of the CE term, same format (keyword only).
        w_ncce: Weight of the nCCE term, same format (keyword only).
        n_bins: Number of uniform bins / classes per dimension (20).
        centroids: Per-bin values ``K_l`` for nCCE: ``(n_bins,)`` shared by
            all dimensions or ``(D, n_bins)`` (from
            :func:`fit_bin_centroids_per_dim`). Required when any ``w_ncce``
            is > 0.
        ncce_detach_cost: Treat the nCCE cost as a constant weight (see
            :func:`ncce_bins`).

    Raises:
        ValueError: If any weight is negative or non-finite, if all weights
            are zero, if ``eps < 0``, if ``w_ncce > 0`` without centroids, if
            the centroids are not finite or their last axis is not
            ``n_bins``, or if weight sequences / names / centroid rows have
            inconsistent lengths. At call time, if the input shapes differ,
            have fewer than 2 axes, ``D`` does not match the per-dimension
            configuration, logits are missing while a classification weight
            is > 0, or the logits shape is not ``pred.shape + (n_bins,)``.
    """

    w_ccc: Tensor
    w_mse: Tensor
    w_ce: Tensor
    w_ncce: Tensor
    centroids: Tensor | None

    def __init__(
        self,
        w_ccc: Weight = 1.0,
        w_mse: Weight = 0.0,
        dim_names: Sequence[str] | None = None,
        eps: float = 1e-8,
        *,
        w_ce: Weight = 0.0,
        w_ncce: Weight = 0.0,
        n_bins: int = 20,
        centroids: ArrayLike | Tensor | None = None,
        ncce_detach_cost: bool = False,
    ) -> None:
        super().__init__()
        weights = {
            "ccc": _validated_weights("w_ccc", w_ccc),
            "mse": _validated_weights("w_mse", w_mse),
            "ce": _validated_weights("w_ce", w_ce),
            "ncce": _validated_weights("w_ncce", w_ncce),
        }
        if all(w == 0 for ws in weights.values() for w in ws):
            raise ValueError("at least one of w_ccc / w_mse / w_ce / w_ncce must be > 0 (all weights are zero)")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.n_bins = _check_bins(n_bins)

        cent: Tensor | None = None
        if centroids is not None:
            cent = torch.as_tensor(np.asarray(centroids, dtype=np.float64) if not isinstance(centroids, Tensor)
                                   else centroids.detach().to(torch.float64))
            if cent.dim() not in (1, 2) or cent.shape[-1] != self.n_bins:
                raise ValueError(f"centroids must have shape ({self.n_bins},) or (D, {self.n_bins}), "
                                 f"got {tuple(cent.shape)}")
            if not torch.isfinite(cent).all():
                raise ValueError("centroids must be finite")
        if any(w > 0 for w in weights["ncce"]) and cent is None:
            raise ValueError("w_ncce > 0 needs centroids (per-bin k-means values, see fit_bin_centroids)")

        # Infer the expected D from whichever argument fixes it; length 1
        # means "broadcast to any D".
        lengths = {len(w) for w in weights.values() if len(w) > 1}
        if dim_names is not None:
            lengths.add(len(dim_names))
        if cent is not None and cent.dim() == 2:
            lengths.add(cent.shape[0])
        if len(lengths) > 1:
            desc = ", ".join(f"w_{k} has {len(v)}" for k, v in weights.items())
            if dim_names is not None:
                desc += f", dim_names has {len(dim_names)}"
            if cent is not None and cent.dim() == 2:
                desc += f", centroids has {cent.shape[0]} rows"
            raise ValueError(f"inconsistent number of dimensions: {desc}")
        self.num_dims: int | None = lengths.pop() if lengths else None
        self.dim_names: tuple[str, ...] | None = tuple(dim_names) if dim_names is not None else None
        if self.dim_names is not None and len(set(self.dim_names)) != len(self.dim_names):
            raise ValueError(f"dim_names must be unique, got {self.dim_names}")
        self.eps = float(eps)
        self.ncce_detach_cost = bool(ncce_detach_cost)
        # Python-side flags: a term whose weights are all zero is not added to
        # the total at all (0 * inf would be NaN for diverging logits).
        self._use = {k: any(w > 0 for w in v) for k, v in weights.items()}
        # Buffers so that .to(device) moves them; not persistent because they
        # are configuration, not learned state.
        for key, ws in weights.items():
            self.register_buffer(f"w_{key}", torch.tensor(ws, dtype=torch.float64), persistent=False)
        # float64 so that float64 training is exact; cast to the working dtype per call.
        self.register_buffer("centroids", cent, persistent=False)
        self._parts: dict[str, Tensor] = {}

    @property
    def requires_logits(self) -> bool:
        """True when a CE or nCCE weight is > 0, i.e. the model must output bin logits."""
        return self._use["ce"] or self._use["ncce"]

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        dim_names: Sequence[str],
        centroids: ArrayLike | Tensor | None = None,
        **kwargs: Any,
    ) -> CompositeLoss:
        """Build the loss from flat (trial-config) keys.

        Key scheme (``<term>`` in ``ccc, mse, ce, ncce``; ``<dim>`` in
        ``dim_names``):

        * ``w_<term>`` - weight for every dimension; defaults ``w_ccc = 1``,
          ``w_mse = w_ce = w_ncce = 0`` when absent (or None);
        * ``w_<term>_<dim>`` - override for one dimension, e.g.
          ``w_ccc_arousal = 0.66``, ``w_ce_arousal = 0.34``.

        So paper 001's arousal recipe is
        ``{"w_ccc": 1.0, "w_ccc_arousal": 0.66, "w_ce_arousal": 0.34}``.
        Every other key starting with ``w_`` is rejected (a typo must not
        silently train with a default weight); other keys are ignored.

        Args:
            config: Trial config.
            dim_names: Names of the output dimensions, in column order.
            centroids: Passed to the constructor (needed when ``w_ncce > 0``).
            **kwargs: Other constructor arguments (``eps``, ``n_bins``,
                ``ncce_detach_cost``).

        Returns:
            A configured :class:`CompositeLoss` with per-dimension weights.

        Raises:
            ValueError: On unknown ``w_*`` keys (the message lists the allowed
                keys), non-numeric values, or any constructor error.
        """
        names = tuple(dim_names)
        if not names:
            raise ValueError("dim_names must name at least one dimension")
        allowed = [f"w_{t}" for t in LOSS_TERMS] + [f"w_{t}_{d}" for t in LOSS_TERMS for d in names]
        unknown = sorted(k for k in config if isinstance(k, str) and k.startswith("w_") and k not in allowed)
        if unknown:
            raise ValueError(f"unknown loss weight key(s) {unknown}; allowed: {allowed}")

        def value(key: str, default: float) -> float:
            raw = config.get(key)
            if raw is None:
                return default
            try:
                return float(raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"config key {key!r} must be a number, got {raw!r}") from exc

        per_term: dict[str, list[float]] = {}
        for term in LOSS_TERMS:
            base = value(f"w_{term}", _DEFAULT_WEIGHTS[term])
            per_term[term] = [value(f"w_{term}_{d}", base) for d in names]
        return cls(
            w_ccc=per_term["ccc"],
            w_mse=per_term["mse"],
            dim_names=names,
            w_ce=per_term["ce"],
            w_ncce=per_term["ncce"],
            centroids=centroids,
            **kwargs,
        )

    @property
    def last_parts(self) -> dict[str, float]:
        """Components of the most recent forward pass as Python floats.

        Returns:
            ``{"ccc_<name>": CCC_d, "mse_<name>": MSE_d, ["ce_<name>": CE_d,
            "ncce_<name>": nCCE_d,] ..., "total": loss}``; NaN for dimensions
            that were not scored; empty before the first call.
        """
        return {k: float(v) for k, v in self._parts.items()}

    def forward(self, pred: Tensor, target: Tensor, logits: Tensor | None = None) -> Tensor:
        """Compute the composite loss.

        Args:
            pred: Predictions of shape ``(..., D)`` with at least 2 axes.
            target: Targets of the same shape; NaN marks unannotated entries.
            logits: Bin logits of shape ``(..., D, n_bins)`` (``pred.shape +
                (n_bins,)``); required when any ``w_ce`` / ``w_ncce`` > 0,
                optional otherwise (then only reported in :attr:`last_parts`).

        Returns:
            Scalar loss tensor, differentiable w.r.t. ``pred`` (and
            ``logits``); its dtype is that of ``pred`` but at least float32
            (fp16 / bf16 inputs are upcast for the reductions).

        Raises:
            ValueError: If the shapes differ, have fewer than 2 axes, ``D``
                does not match the configured number of dimensions, or the
                logits are missing / mis-shaped.
        """
        if pred.shape != target.shape:
            raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
        if pred.dim() < 2:
            raise ValueError(f"expected inputs of shape (N, D) or (B, T, D), got {tuple(pred.shape)}")
        num_dims = pred.shape[-1]
        if self.num_dims is not None and num_dims != self.num_dims:
            raise ValueError(f"inputs have D={num_dims} but the loss was configured for D={self.num_dims}")
        if logits is None and self.requires_logits:
            raise ValueError("logits are required because w_ce / w_ncce > 0: call loss(pred, target, logits) with "
                             f"logits of shape pred.shape + ({self.n_bins},) (the model's classification head)")
        if logits is not None and tuple(logits.shape) != (*pred.shape, self.n_bins):
            raise ValueError(f"logits must have shape pred.shape + (n_bins,) = {(*pred.shape, self.n_bins)}, "
                             f"got {tuple(logits.shape)}")

        # At least float32: under AMP, fp16 would flush eps to 0 and the
        # squared deviations of small signals to 0 as well.
        work = torch.promote_types(pred.dtype, torch.float32)
        p = pred.reshape(-1, num_dims).to(work)
        t = target.reshape(-1, num_dims).to(work)
        # Masking with torch.where (not boolean indexing) keeps everything
        # vectorised over D and avoids a host-device sync per call; masked
        # entries contribute exactly 0 to every sum and get zero gradient.
        mask = ~torch.isnan(t)
        m = mask.to(p.dtype)
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        t0 = torch.where(mask, t, zero)
        p0 = torch.where(mask, p, zero)
        n = m.sum(dim=0)
        n_safe = n.clamp(min=1.0)

        ccc = masked_ccc(t, p, dim=0, eps=self.eps)
        err = p0 - t0
        mse = (err * err).sum(dim=0) / n_safe

        terms: dict[str, Tensor] = {"ccc": 1.0 - ccc, "mse": mse}
        reported: dict[str, Tensor] = {"ccc": ccc, "mse": mse}
        if logits is not None:
            lwork = torch.promote_types(logits.dtype, work)
            lg = logits.reshape(-1, num_dims, self.n_bins).to(lwork)
            # Unannotated targets were replaced by 0 (a valid bin); their
            # per-sample terms are multiplied by m = 0 below.
            bins = _bucketize(t0, self.n_bins)
            logp, nll = _log_probs_and_nll(lg, bins)
            ce = (nll * m).sum(dim=0) / n_safe
            terms["ce"] = reported["ce"] = ce
            if self.centroids is not None:
                cent = self.centroids.to(device=lg.device, dtype=lwork)
                cost = _ncce_cost(logp, bins, cent.expand(num_dims, self.n_bins))
                if self.ncce_detach_cost:
                    cost = cost.detach()
                ncce = (cost * nll * m).sum(dim=0) / n_safe
                terms["ncce"] = reported["ncce"] = ncce

        per_dim = torch.zeros_like(ccc)
        for key in LOSS_TERMS:
            if self._use[key]:
                weight = getattr(self, f"w_{key}").to(device=p.device, dtype=p.dtype).expand(num_dims)
                per_dim = per_dim + weight * terms[key]
        scored = (n >= 2).to(p.dtype)
        # Unscored dimensions are multiplied by 0 (their values are finite
        # because n_safe >= 1), so the total stays attached to the graph.
        total = (per_dim * scored).sum() / scored.sum().clamp(min=1.0)

        names = self.dim_names or tuple(str(d) for d in range(num_dims))
        nan = torch.full_like(ccc, float("nan"))
        rep = {k: torch.where(scored > 0, v, nan).detach() for k, v in reported.items()}
        parts: dict[str, Tensor] = {}
        for d, name in enumerate(names):
            for key in LOSS_TERMS:
                if key in rep:
                    parts[f"{key}_{name}"] = rep[key][d]
        parts["total"] = total.detach()
        self._parts = parts
        return total
