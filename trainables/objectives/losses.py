"""Differentiable training losses for valence / arousal regression.

The main objective of continuous emotion recognition is the concordance
correlation coefficient (CCC, Lin 1989), so the standard loss is ``1 - CCC``
per output dimension, optionally mixed with an MSE term: the CCC gradient is
small while predictions are still nearly constant (early training), whereas
MSE gives a well-conditioned pull towards the targets from the start.

Moments are population moments (``1/N``) to match
:func:`trainables.objectives.metrics.ccc`, so ``1 - loss`` on a full
sequence equals the reported metric up to the ``eps`` stabiliser.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ccc_torch", "CompositeLoss"]

Weight = float | Sequence[float]


def ccc_torch(y_true: Tensor, y_pred: Tensor, dim: int = 0, eps: float = 1e-8) -> Tensor:
    """Differentiable concordance correlation coefficient along one axis.

    Formula (population moments along ``dim``)::

        CCC = 2 cov(t, p) / (var_t + var_p + (mu_t - mu_p)^2 + eps)

    ``eps`` keeps the value finite when both series are constant and equal
    (0 / eps = 0, i.e. a constant prediction scores 0, the same rule as the
    NumPy metric). It biases the value by roughly ``eps / denominator``,
    negligible for any realistic signal.

    No NaN handling is done here: NaN in either input propagates. Use
    :class:`CompositeLoss` for masked targets.

    Args:
        y_true: Targets; any shape, broadcast-compatible with ``y_pred``.
        y_pred: Predictions, same shape as ``y_true``.
        dim: Axis along which the moments are taken (the time / sample axis).
        eps: Non-negative constant added to the denominator.

    Returns:
        Tensor with ``dim`` reduced away, e.g. shape ``(D,)`` for ``(N, D)``
        inputs and ``dim=0``, in the promoted dtype of the inputs but at
        least float32 (half-precision inputs are upcast). Gradients flow to
        both inputs.

    Raises:
        ValueError: If the shapes differ or ``eps < 0``.
    """
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: y_true {tuple(y_true.shape)} vs y_pred {tuple(y_pred.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    # Half precision (AMP) would flush eps=1e-8 to 0 and lose the moments;
    # compute in at least float32.
    work = torch.promote_types(torch.promote_types(y_true.dtype, y_pred.dtype), torch.float32)
    y_true = y_true.to(work)
    y_pred = y_pred.to(work)
    mu_t = y_true.mean(dim=dim, keepdim=True)
    mu_p = y_pred.mean(dim=dim, keepdim=True)
    dt = y_true - mu_t
    dp = y_pred - mu_p
    var_t = (dt * dt).mean(dim=dim)
    var_p = (dp * dp).mean(dim=dim)
    cov = (dt * dp).mean(dim=dim)
    mean_gap = (mu_t - mu_p).squeeze(dim)
    return 2.0 * cov / (var_t + var_p + mean_gap * mean_gap + eps)


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
    """Weighted sum of ``1 - CCC`` and MSE, averaged over output dimensions.

    For predictions and targets of shape ``(N, D)`` (leading axes of a
    ``(B, T, D)`` input are flattened to ``N = B*T``, so the CCC is computed
    over the whole batch, as is usual for CCC losses)::

        loss_d = w_ccc_d * (1 - CCC_d) + w_mse_d * MSE_d
        loss   = mean over scored dimensions d of loss_d

    NaN targets are masked **per dimension**: a NaN at ``target[n, d]``
    removes row ``n`` from the moments and the MSE of dimension ``d`` only.
    A dimension with fewer than 2 annotated rows in the batch is *not scored*
    (CCC is undefined there): it is left out of the mean over dimensions and
    its parts are reported as NaN. If no dimension is scored, the loss is an
    exact 0 that is still attached to the graph (``backward`` works and gives
    zero gradients), so a fully unannotated batch is harmless.

    NaN *predictions* are not masked on annotated rows: they propagate to
    the loss, as they indicate a bug upstream.

    After each call, :attr:`last_parts` gives the components as Python
    floats: ``ccc_<name>``, ``mse_<name>`` per dimension and ``total``.
    They are kept as detached tensors and only converted on access, so that
    reading them is the only point that synchronises with the GPU.

    Args:
        w_ccc: Weight of ``1 - CCC``: a number applied to every dimension,
            or one weight per output dimension.
        w_mse: Weight of the MSE term, same format.
        dim_names: Optional names for the ``D`` dimensions used as keys of
            :attr:`last_parts` (e.g. ``("valence", "arousal")``); defaults to
            ``"0", "1", ...``.
        eps: Stabiliser added to the CCC denominator (see :func:`ccc_torch`).

    Raises:
        ValueError: If any weight is negative or non-finite, if all weights
            are zero, if ``eps < 0``, or if two weight sequences / the names
            have inconsistent lengths. At call time, if the input shapes
            differ, have fewer than 2 axes, or ``D`` does not match the
            per-dimension weights / names.
    """

    w_ccc: Tensor
    w_mse: Tensor

    def __init__(
        self,
        w_ccc: Weight = 1.0,
        w_mse: Weight = 0.0,
        dim_names: Sequence[str] | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        ccc_w = _validated_weights("w_ccc", w_ccc)
        mse_w = _validated_weights("w_mse", w_mse)
        if all(w == 0 for w in ccc_w + mse_w):
            raise ValueError("at least one of w_ccc / w_mse must be > 0 (all weights are zero)")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        # Infer the expected D from whichever argument fixes it; length 1
        # means "broadcast to any D".
        lengths = {len(w) for w in (ccc_w, mse_w) if len(w) > 1}
        if dim_names is not None:
            lengths.add(len(dim_names))
        if len(lengths) > 1:
            raise ValueError(
                f"inconsistent number of dimensions: w_ccc has {len(ccc_w)}, w_mse has {len(mse_w)}"
                + (f", dim_names has {len(dim_names)}" if dim_names is not None else "")
            )
        self.num_dims: int | None = lengths.pop() if lengths else None
        self.dim_names: tuple[str, ...] | None = tuple(dim_names) if dim_names is not None else None
        if self.dim_names is not None and len(set(self.dim_names)) != len(self.dim_names):
            raise ValueError(f"dim_names must be unique, got {self.dim_names}")
        self.eps = float(eps)
        # Buffers so that .to(device) moves them; not persistent because they
        # are configuration, not learned state.
        self.register_buffer("w_ccc", torch.tensor(ccc_w, dtype=torch.float32), persistent=False)
        self.register_buffer("w_mse", torch.tensor(mse_w, dtype=torch.float32), persistent=False)
        self._parts: dict[str, Tensor] = {}

    @property
    def last_parts(self) -> dict[str, float]:
        """Components of the most recent forward pass as Python floats.

        Returns:
            ``{"ccc_<name>": CCC_d, "mse_<name>": MSE_d, ..., "total": loss}``;
            NaN for dimensions that were not scored; empty before the first
            call.
        """
        return {k: float(v) for k, v in self._parts.items()}

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Compute the composite loss.

        Args:
            pred: Predictions of shape ``(..., D)`` with at least 2 axes.
            target: Targets of the same shape; NaN marks unannotated entries.

        Returns:
            Scalar loss tensor, differentiable w.r.t. ``pred``; its dtype is
            that of ``pred`` but at least float32 (fp16 / bf16 predictions
            are upcast for the reductions).

        Raises:
            ValueError: If the shapes differ, have fewer than 2 axes, or ``D``
                does not match the configured number of dimensions.
        """
        if pred.shape != target.shape:
            raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
        if pred.dim() < 2:
            raise ValueError(f"expected inputs of shape (N, D) or (B, T, D), got {tuple(pred.shape)}")
        num_dims = pred.shape[-1]
        if self.num_dims is not None and num_dims != self.num_dims:
            raise ValueError(f"inputs have D={num_dims} but the loss was configured for D={self.num_dims}")

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

        mu_t = t0.sum(dim=0) / n_safe
        mu_p = p0.sum(dim=0) / n_safe
        dt = (t0 - mu_t) * m
        dp = (p0 - mu_p) * m
        var_t = (dt * dt).sum(dim=0) / n_safe
        var_p = (dp * dp).sum(dim=0) / n_safe
        cov = (dt * dp).sum(dim=0) / n_safe
        gap = mu_t - mu_p
        ccc = 2.0 * cov / (var_t + var_p + gap * gap + self.eps)
        err = p0 - t0
        mse = (err * err).sum(dim=0) / n_safe

        w_ccc = self.w_ccc.to(p.dtype).expand(num_dims)
        w_mse = self.w_mse.to(p.dtype).expand(num_dims)
        per_dim = w_ccc * (1.0 - ccc) + w_mse * mse
        scored = (n >= 2).to(p.dtype)
        # Unscored dimensions are multiplied by 0 (their values are finite
        # because n_safe >= 1), so the total stays attached to the graph.
        total = (per_dim * scored).sum() / scored.sum().clamp(min=1.0)

        names = self.dim_names or tuple(str(d) for d in range(num_dims))
        nan = torch.full_like(ccc, float("nan"))
        ccc_rep = torch.where(scored > 0, ccc, nan).detach()
        mse_rep = torch.where(scored > 0, mse, nan).detach()
        parts: dict[str, Tensor] = {}
        for d, name in enumerate(names):
            parts[f"ccc_{name}"] = ccc_rep[d]
            parts[f"mse_{name}"] = mse_rep[d]
        parts["total"] = total.detach()
        self._parts = parts
        return total
