"""The concordance correlation coefficient (CCC, Lin 1989): the one implementation behind the metric and the loss.

It is written once, against torch, because the loss needs gradients and the metric does not mind torch:
:func:`trainables.objectives.metrics.ccc` converts its NumPy input (float64, no copy) and calls :func:`masked_ccc`
with ``eps=0``; :class:`trainables.objectives.losses.CompositeLoss` calls it with NaN-masked targets and its ``eps``.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_ccc"]


def masked_ccc(y_true: Tensor, y_pred: Tensor, dim: int = 0, eps: float = 0.0) -> Tensor:
    """Lin's concordance correlation coefficient along one axis, with NaN targets masked out.

    Formula (population moments, i.e. divided by ``N``, over the annotated entries of each slice along ``dim``)::

        mu_t = mean(t), mu_p = mean(p)
        var_t = mean((t - mu_t)^2), var_p = mean((p - mu_p)^2), cov = mean((t - mu_t) (p - mu_p))
        CCC = 2 cov / (var_t + var_p + (mu_t - mu_p)^2 + eps)

    Rules, for finite predictions:

    * **NaN targets mask entries**: a NaN at ``y_true[..., n, ...]`` removes entry ``n`` from every moment of that
      slice only, and the prediction there gets zero gradient (whatever its value, NaN included).
    * **A constant prediction scores 0**, including when the target is the same constant (the formula's 0/0): a model
      that outputs a constant has captured no variation, and 1.0 would reward collapse on flat clips. Only the value
      is forced to 0; its gradient is the formula's, so a collapsed model is still pulled towards the targets.
    * **Never NaN for finite input of length >= 2**: both series are divided by their joint largest magnitude per
      slice before the moments are taken (CCC is invariant to that; the divisor carries no gradient), so squares can
      neither overflow (values near 1e308) nor underflow to a zero denominator (values near 1e-300). A slice with
      fewer than 2 annotated entries is 0 (its CCC is undefined: callers decide whether to score it).
    * ``eps`` (>= 0) is added to the denominator of the rescaled series; 0 gives the exact formula. The loss uses a
      small ``eps`` to bound the gradient of nearly constant series.
    * The result is not clipped: rounding may overshoot +-1 by an ulp (the NumPy metric clips).

    NaN or infinite *predictions* on annotated entries propagate (they indicate a bug upstream).

    Args:
        y_true: Targets; NaN marks an unannotated entry.
        y_pred: Predictions, the same shape as ``y_true``.
        dim: Axis along which the moments are taken (the time / sample axis).
        eps: Non-negative constant added to the denominator.

    Returns:
        Tensor with ``dim`` reduced away (e.g. ``(D,)`` for ``(N, D)`` inputs and ``dim=0``), in the promoted dtype of
        the inputs but at least float32 (half precision would flush ``eps`` and small moments to 0). Differentiable
        with respect to both inputs.

    Raises:
        ValueError: If the shapes differ or ``eps < 0``.
    """
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: y_true {tuple(y_true.shape)} vs y_pred {tuple(y_pred.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    work = torch.promote_types(torch.promote_types(y_true.dtype, y_pred.dtype), torch.float32)
    t = y_true.to(work)
    p = y_pred.to(work)
    # torch.where rather than boolean indexing: vectorised over the other axes, no host-device sync, and masked entries
    # contribute exactly 0 to every sum (and receive zero gradient).
    mask = ~torch.isnan(t)
    zero = torch.zeros((), dtype=work, device=t.device)
    t = torch.where(mask, t, zero)
    p = torch.where(mask, p, zero)
    if t.shape[dim] > 0:
        scale = torch.maximum(t.abs().amax(dim=dim, keepdim=True), p.abs().amax(dim=dim, keepdim=True)).detach()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        t, p = t / scale, p / scale
    m = mask.to(work)
    n = m.sum(dim=dim, keepdim=True).clamp(min=1.0)
    mu_t = t.sum(dim=dim, keepdim=True) / n
    mu_p = p.sum(dim=dim, keepdim=True) / n
    dt = (t - mu_t) * m
    dp = (p - mu_p) * m
    var_t = (dt * dt).sum(dim=dim) / n.squeeze(dim)
    var_p = (dp * dp).sum(dim=dim) / n.squeeze(dim)
    cov = (dt * dp).sum(dim=dim) / n.squeeze(dim)
    gap = (mu_t - mu_p).squeeze(dim)
    denom = var_t + var_p + gap * gap + eps
    # denom is 0 only when both series are constant and equal (after rescaling nothing else underflows); the
    # numerator is then 0 as well, and the constant-prediction rule below gives the value.
    value = 2.0 * cov / torch.where(denom > 0, denom, torch.ones_like(denom))
    # Exactly constant prediction over the annotated entries (an exact comparison: the variance of a constant float
    # series can come out as a tiny non-zero number). Masked entries count neither as max nor as min.
    inf = torch.full((), float("inf"), dtype=work, device=t.device)
    constant = torch.where(mask, p, -inf).amax(dim=dim) == torch.where(mask, p, inf).amin(dim=dim) \
        if p.shape[dim] > 0 else torch.ones_like(value, dtype=torch.bool)
    # value - value.detach() is 0 with the formula's gradient.
    return torch.where(constant, value - value.detach(), value)
