"""Inflate a 2D CNN into a 3D CNN (paper 003, after Carreira & Zisserman's i3D).

``inflate(model2d)`` returns a copy of a timm ResNet or VGG(-BN) whose layers take clips ``(B, C, T, H, W)``:

* every ``Conv2d`` with a spatial kernel larger than 1x1 becomes a ``Conv3d`` with temporal kernel ``time_kernel``
  (odd), temporal stride 1 and temporal padding ``dilation * (time_kernel - 1) / 2``, so the time axis keeps its length
  T through the whole network. 1x1 convs (bottleneck projections, downsample shortcuts) get temporal kernel 1: they mix
  channels, not space, so they have no spatial kernel whose neighbourhood would be extended in time, and keeping them
  1-frame wide keeps ResNet-50's parameter count from tripling. VGG's fc6/fc7 (timm's ``pre_logits`` ``ConvMlp``, fully
  connected layers written as convs) are kept per frame (temporal kernel 1) for the same reason: they are the
  classifier, not spatial filters, and fc6 alone would grow by 2 x 103M parameters.
* Kernel initialisation (paper 003, "Initialization"):
    - ``centered``: the 2D kernel sits at the temporal centre tap; the surrounding taps are ``zero`` or ``random``
      (uniform, the paper's distribution, with standard deviation ``surround_std`` times the standard deviation of that
      layer's 2D kernel: scale-free across layers whose weights differ by orders of magnitude; the default 0.1 keeps the
      network close to its 2D function while breaking the symmetry between surround taps).
    - ``copied``: the 2D kernel repeated over the ``time_kernel`` taps and divided by ``time_kernel``, so a
      constant-in-time input gives the 2D response.
* ``masking`` (paper 003, "Masking"): the centre tap keeps its 2D weights during training and only the temporal surround
  learns. The conv computes with its centre taken from a frozen buffer, so the gradient of the centre slice of
  ``weight`` is exactly zero; because decoupled weight decay (AdamW) and momentum move parameters even with a zero
  gradient, a global optimiser step post-hook also re-sets the centre slice of ``weight`` to the frozen values after
  every ``Optimizer.step`` — ``weight`` (and therefore state dicts, EMA copies) always shows the kernel actually used.
  Only convs with a temporal surround (temporal kernel > 1) are masked; 1x1 (temporal kernel 1) convs stay trainable, as
  they have no surround and freezing them would freeze most of a ResNet-50.
* ``dilation`` (paper 003, "Dilation"): per-stage dilation on the time axis only, e.g. ``[1, 2, 4, 8]``. The network's
  stages are timm's ``feature_info`` groups that contain convs — ResNet: stem, layer1..layer4; VGG: the conv blocks
  between max-pools — and the list is spread over them in order: stage ``g`` of ``G`` uses ``dilation[g * S // G]``
  (``S`` entries). With 4 entries on these 5-group networks the stem shares the first entry with the first block
  (ResNet: stem+layer1, layer2, layer3, layer4; VGG: blocks 1-2, 3, 4, 5).
* ``BatchNorm2d`` -> ``BatchNorm3d`` with weights, biases and running statistics; ``MaxPool2d``/``AvgPool2d`` -> 3D
  pools of temporal size and stride 1; adaptive pools: a global one (output 1) pools over T, H, W (the classifier
  ``Linear`` then sees the clip-level feature), any other output size keeps T.

The "boring video" check (paper 003): a static clip (one frame repeated T times) through a ``centered``/``zero``
inflation gives, in eval mode, exactly the 2D network's output on that frame — only the centre tap is non-zero, so
temporal zero padding at the clip edges contributes nothing, every frame's features equal the 2D features and the global
average over T reproduces them. ``copied`` gives the same at every frame whose temporal receptive field stays inside the
clip; at the edges zero padding contributes missing taps (the sum of the copies is no longer the 2D kernel) and the
error spreads inwards by one frame per conv layer. With ``time_padding="replicate"`` a static clip stays static at every
layer, so ``copied`` then also passes the check at every frame.
"""
from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = ["InflatedConv3d", "RANDOM_SURROUND_STD", "inflate", "masked_convs"]

Mode = Literal["centered", "copied"]
Surround = Literal["zero", "random"]
TimePadding = Literal["zeros", "replicate"]

# Default std of random surround taps, relative to the std of the layer's 2D kernel (see the module docstring).
RANDOM_SURROUND_STD = 0.1

_MASKED: "weakref.WeakSet[InflatedConv3d]" = weakref.WeakSet()
_HOOK_HANDLE: object | None = None


def _restore_masked_centres(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    """Optimiser step post-hook: undo what weight decay / momentum did to frozen centre slices."""
    for conv in list(_MASKED):
        conv.restore_centre()


def _ensure_step_hook() -> None:
    # One process-wide hook serves every masked conv: re-setting a frozen centre to its frozen value is always right,
    # whichever optimiser stepped, so there is nothing to attribute per optimiser.
    global _HOOK_HANDLE
    if _HOOK_HANDLE is None:
        _HOOK_HANDLE = register_optimizer_step_post_hook(_restore_masked_centres)


class InflatedConv3d(nn.Conv3d):
    """A ``Conv3d`` made by :func:`inflate`: optional replicate padding on the time axis, optional frozen centre tap.

    Spatial padding stays zero padding, as in the 2D network; only the temporal padding follows ``time_padding``.
    With ``masked`` the centre temporal slice used in the forward pass is the non-persistent buffer ``frozen_centre``,
    refreshed from ``weight`` whenever a state dict is loaded (loading a checkpoint re-freezes the loaded centre).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int],
                 stride: tuple[int, int, int], padding: tuple[int, int, int], dilation: tuple[int, int, int],
                 groups: int = 1, bias: bool = True, *, time_padding: TimePadding = "zeros"):
        # Replicate padding in time is applied by hand in forward; the conv itself then pads space only.
        conv_padding = padding if time_padding == "zeros" else (0, padding[1], padding[2])
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=conv_padding,
                         dilation=dilation, groups=groups, bias=bias)
        self.time_padding = time_padding
        self.time_pad = padding[0]
        self.masked = False

    def enable_masking(self) -> None:
        """Freeze the current centre tap (no-op for a temporal kernel of 1, which has no surround to train)."""
        if self.kernel_size[0] == 1:
            return
        self.masked = True
        self.register_buffer("frozen_centre", self.weight.detach()[:, :, self.centre_index].clone(), persistent=False)
        _MASKED.add(self)
        _ensure_step_hook()

    @property
    def centre_index(self) -> int:
        """Index of the temporal centre tap (where ``centered`` inflation puts the 2D kernel)."""
        return self.kernel_size[0] // 2

    def refreeze(self) -> None:
        """Take the current centre slice of ``weight`` as the frozen one."""
        if self.masked:
            self.frozen_centre.copy_(self.weight.detach()[:, :, self.centre_index])

    @torch.no_grad()
    def restore_centre(self) -> None:
        """Set the centre slice of ``weight`` back to the frozen values."""
        if self.masked:
            self.weight[:, :, self.centre_index].copy_(self.frozen_centre)

    def effective_weight(self) -> torch.Tensor:
        """The kernel the forward pass uses (``weight`` with the frozen centre when masked)."""
        if not self.masked:
            return self.weight
        c = self.centre_index
        # cat rather than an in-place write: autograd then gives the centre slice of ``weight`` an exactly zero grad.
        return torch.cat([self.weight[:, :, :c], self.frozen_centre.unsqueeze(2), self.weight[:, :, c + 1:]], dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.masked:
            # Deep copies (EMA, rebuilt models) skip enable_masking; registering here keeps the step hook covering them.
            _MASKED.add(self)
        if self.time_padding == "replicate" and self.time_pad:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, self.time_pad), mode="replicate")
        return self._conv_forward(x, self.effective_weight(), self.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.masked and prefix + "weight" in state_dict:
            self.refreeze()

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.time_padding != "zeros":
            extra += f", time_padding={self.time_padding}, time_pad={self.time_pad}"
        if self.masked:
            extra += ", masked=True"
        return extra


class _AdaptiveAvgMaxPool3d(nn.Module):
    """3D counterpart of timm's global avg+max pools: 0.5 * (avg + max), or their concatenation on channels."""

    def __init__(self, cat: bool, flatten: bool = False):
        super().__init__()
        self.cat = cat
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = F.adaptive_avg_pool3d(x, 1)
        mx = F.adaptive_max_pool3d(x, 1)
        out = torch.cat((avg, mx), 1) if self.cat else 0.5 * (avg + mx)
        return out.flatten(1) if self.flatten else out


class _ConvMlp3d(nn.Module):
    """timm VGG's ``ConvMlp`` (fc6/fc7 as convs) applied per frame; same submodule names, so 2D weights load by name."""

    def __init__(self, mlp: nn.Module, fc1: nn.Module, fc2: nn.Module):
        super().__init__()
        self.input_kernel_size = mlp.input_kernel_size
        self.fc1 = fc1
        self.act1 = mlp.act1
        self.drop = mlp.drop
        self.fc2 = fc2
        self.act2 = mlp.act2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.input_kernel_size
        if x.shape[-2] < k or x.shape[-1] < k:
            # Same rule as the 2D block (keep the map >= 7x7 for fc6), frame by frame: T is left alone.
            x = F.adaptive_avg_pool3d(x, (x.shape[-3], max(k, x.shape[-2]), max(k, x.shape[-1])))
        return self.act2(self.fc2(self.drop(self.act1(self.fc1(x)))))


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _inflate_conv(conv: nn.Conv2d, *, time_kernel: int, time_dilation: int, mode: Mode, surround: Surround,
                  surround_std: float, masking: bool, time_padding: TimePadding) -> InflatedConv3d:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise TypeError(f"inflate supports Conv2d with integer zero padding, got padding={conv.padding!r} "
                        f"padding_mode={conv.padding_mode!r}")
    kh, kw = conv.kernel_size
    kt = time_kernel if (kh > 1 or kw > 1) else 1
    dt = time_dilation if kt > 1 else 1
    pt = dt * (kt - 1) // 2
    out = InflatedConv3d(conv.in_channels, conv.out_channels, (kt, kh, kw), stride=(1, *conv.stride),
                         padding=(pt, *conv.padding), dilation=(dt, *conv.dilation), groups=conv.groups,
                         bias=conv.bias is not None, time_padding=time_padding)
    w2d = conv.weight.detach()
    with torch.no_grad():
        if mode == "copied":
            out.weight.copy_(w2d.unsqueeze(2).expand(-1, -1, kt, -1, -1) / kt)
        else:
            if surround == "random" and kt > 1:
                std = surround_std * (w2d.float().std().item() if w2d.numel() > 1 else 0.0)
                bound = math.sqrt(3.0) * std  # U(-a, a) has std a / sqrt(3)
                out.weight.uniform_(-bound, bound)
            else:
                out.weight.zero_()
            out.weight[:, :, kt // 2].copy_(w2d)
        if conv.bias is not None:
            out.bias.copy_(conv.bias.detach())
    out = out.to(device=w2d.device, dtype=w2d.dtype)
    if masking:
        out.enable_masking()
    out.train(conv.training)
    return out


def _inflate_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    out = nn.BatchNorm3d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    # state_dict carries weight, bias, running_mean, running_var and num_batches_tracked.
    out.load_state_dict(bn.state_dict())
    out.train(bn.training)
    reference = next(iter(bn.state_dict().values()), None)
    return out if reference is None else out.to(device=reference.device)


def _inflate_pool(pool: nn.Module) -> nn.Module:
    if type(pool) is nn.MaxPool2d:
        kh, kw = _pair(pool.kernel_size)
        sh, sw = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        ph, pw = _pair(pool.padding)
        dh, dw = _pair(pool.dilation)
        return nn.MaxPool3d((1, kh, kw), (1, sh, sw), (0, ph, pw), (1, dh, dw), return_indices=pool.return_indices,
                            ceil_mode=pool.ceil_mode)
    if type(pool) is nn.AvgPool2d:
        kh, kw = _pair(pool.kernel_size)
        sh, sw = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        ph, pw = _pair(pool.padding)
        return nn.AvgPool3d((1, kh, kw), (1, sh, sw), (0, ph, pw), ceil_mode=pool.ceil_mode,
                            count_include_pad=pool.count_include_pad, divisor_override=pool.divisor_override)
    if type(pool) in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        size = pool.output_size
        is_global = size == 1 or (isinstance(size, (tuple, list)) and tuple(size) == (1, 1))
        spatial = tuple(size) if isinstance(size, (tuple, list)) else (size, size)  # entries may be None (keep)
        target = 1 if is_global else (None, *spatial)
        return nn.AdaptiveAvgPool3d(target) if type(pool) is nn.AdaptiveAvgPool2d else nn.AdaptiveMaxPool3d(target)
    raise TypeError(f"no 3D counterpart for {type(pool).__name__}")


def _timm_pool(module: nn.Module) -> nn.Module | None:
    """3D versions of timm's global pooling modules (None when ``module`` is not one)."""
    try:
        from timm.layers import adaptive_avgmax_pool as aap
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    name = type(module).__name__
    if isinstance(module, (aap.FastAdaptiveAvgPool, aap.FastAdaptiveMaxPool, aap.FastAdaptiveAvgMaxPool)):
        if module.dim != (2, 3):
            raise TypeError(f"inflate needs NCHW pooling, {name} reduces dims {module.dim}")
        out = copy.copy(module)
        out.dim = (2, 3, 4)
        return out
    if isinstance(module, aap.FastAdaptiveCatAvgMaxPool):
        if module.dim_reduce != (2, 3):
            raise TypeError(f"inflate needs NCHW pooling, {name} reduces dims {module.dim_reduce}")
        out = copy.copy(module)
        out.dim_reduce = (2, 3, 4)
        return out
    if isinstance(module, (aap.AdaptiveAvgMaxPool2d, aap.AdaptiveCatAvgMaxPool2d)):
        if _pair(module.output_size) != (1, 1):
            raise TypeError(f"inflate supports only global {name}, got output_size={module.output_size}")
        return _AdaptiveAvgMaxPool3d(cat=isinstance(module, aap.AdaptiveCatAvgMaxPool2d))
    return None


def _conv_stages(model: nn.Module) -> tuple[dict[str, int], int]:
    """Stage index of every Conv2d (by qualified name) and the number of stages; see the module docstring."""
    order = [name for name, _ in model.named_modules()]
    position = {name: i for i, name in enumerate(order)}
    ends: list[int] = []
    for info in getattr(model, "feature_info", None) or []:
        root = info.get("module") if isinstance(info, dict) else None
        if root not in position:
            continue
        # A stage ends at the last module inside its feature module's subtree (children follow their parent).
        ends.append(max(i for i, name in enumerate(order) if name == root or name.startswith(root + ".")))
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    raw = {name: next((s for s, end in enumerate(ends) if position[name] <= end), None) for name in convs}
    used = sorted({s for s in raw.values() if s is not None})
    rank = {s: i for i, s in enumerate(used)}
    n_stages = max(len(used), 1)
    # Convs after the last feature stage (VGG's pre_logits, conv classifiers) belong to the last stage.
    return {name: rank[s] if s is not None else n_stages - 1 for name, s in raw.items()}, n_stages


def inflate(model2d: nn.Module, *, time_kernel: int = 3, mode: Mode = "centered", surround: Surround = "zero",
            surround_std: float = RANDOM_SURROUND_STD, dilation: Sequence[int] | None = None, masking: bool = False,
            time_padding: TimePadding = "zeros") -> nn.Module:
    """Return a 3D copy of ``model2d`` taking ``(B, C, T, H, W)``; ``model2d`` itself is left unchanged.

    Args:
        model2d: a timm ResNet (``resnet18``, ``resnet50``, ``test_resnet``, ...) or VGG (``vgg11_bn``, ``vgg16``,
            ``vgg16_bn``, ...), or any module built from the same layer types.
        time_kernel: temporal size of inflated k>1 convs; odd so that the centre tap exists and padding keeps T.
        mode: ``centered`` (2D kernel at the centre tap) or ``copied`` (repeated over time, divided by ``time_kernel``).
        surround: ``centered`` only — ``zero`` or ``random`` surround taps (uniform; std ``surround_std`` x the std of
            the layer's 2D kernel; drawn from torch's global RNG, so ``torch.manual_seed`` makes it reproducible).
        surround_std: see ``surround``.
        dilation: temporal dilation per stage (e.g. ``[1, 2, 4, 8]``), spread over the network's stages; None = 1.
        masking: freeze the centre tap of every conv with a temporal surround (see the module docstring).
        time_padding: ``zeros`` (standard) or ``replicate`` (edge frames repeated; a static clip stays static).

    Returns:
        The inflated module; its ``inflation`` attribute records these settings.

    Raises:
        ValueError: an invalid setting, or ``dilation`` for a model without timm ``feature_info`` stages.
        TypeError: the model contains a 2D layer inflation has no rule for (the message names it).
    """
    if not isinstance(time_kernel, int) or time_kernel < 1 or time_kernel % 2 == 0:
        raise ValueError(f"time_kernel must be an odd positive int (a centre tap, T-preserving padding), got "
                         f"{time_kernel!r}")
    if mode not in ("centered", "copied"):
        raise ValueError(f"mode must be 'centered' or 'copied', got {mode!r}")
    if surround not in ("zero", "random"):
        raise ValueError(f"surround must be 'zero' or 'random', got {surround!r}")
    if time_padding not in ("zeros", "replicate"):
        raise ValueError(f"time_padding must be 'zeros' or 'replicate', got {time_padding!r}")
    if surround_std < 0:
        raise ValueError(f"surround_std must be >= 0, got {surround_std}")
    stages, n_stages = _conv_stages(model2d)
    if dilation is not None:
        dilation = [int(d) for d in dilation]
        if not dilation or any(d < 1 for d in dilation):
            raise ValueError(f"dilation must be a non-empty list of positive ints, got {dilation}")
        if not getattr(model2d, "feature_info", None):
            raise ValueError(f"per-stage dilation needs a timm model with feature_info stages; "
                             f"{type(model2d).__name__} has none")

    def dilation_of(name: str) -> int:
        if dilation is None:
            return 1
        return dilation[stages.get(name, n_stages - 1) * len(dilation) // n_stages]

    model = copy.deepcopy(model2d)
    conv_kwargs = dict(time_kernel=time_kernel, mode=mode, surround=surround, surround_std=surround_std,
                       masking=masking, time_padding=time_padding)
    try:
        from timm.models.vgg import ConvMlp
    except ImportError:  # pragma: no cover
        ConvMlp = ()  # type: ignore[assignment,misc]

    def convert(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}{child_name}"
            new: nn.Module | None = None
            if ConvMlp and isinstance(child, ConvMlp):
                # fc6/fc7: per-frame (temporal kernel 1), see the module docstring.
                per_frame = {**conv_kwargs, "time_kernel": 1}
                new = _ConvMlp3d(child, _inflate_conv(child.fc1, time_dilation=1, **per_frame),
                                 _inflate_conv(child.fc2, time_dilation=1, **per_frame))
            elif type(child) is nn.Conv2d:
                new = _inflate_conv(child, time_dilation=dilation_of(name), **conv_kwargs)
            elif type(child) is nn.BatchNorm2d:
                new = _inflate_bn(child)
            elif type(child) in (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
                new = _inflate_pool(child)
            else:
                new = _timm_pool(child)
            if new is not None:
                setattr(parent, child_name, new)
            else:
                convert(child, name + ".")

    convert(model, "")
    # Containers whose forward is dimension-agnostic may keep their 2D names; anything else 2D is a layer we would run
    # on 5D input with 2D semantics, so refuse it rather than return a silently wrong network.
    leftovers = sorted({type(m).__name__ for m in model.modules()
                        if "2d" in type(m).__name__.lower() and type(m).__name__ not in ("SelectAdaptivePool2d",)})
    if leftovers:
        raise TypeError(f"inflate has no 3D rule for {', '.join(leftovers)} in {type(model2d).__name__}")
    model.inflation = dict(time_kernel=time_kernel, mode=mode, surround=surround, surround_std=surround_std,
                           dilation=list(dilation) if dilation is not None else None, masking=masking,
                           time_padding=time_padding)
    return model


def masked_convs(model: nn.Module) -> list[InflatedConv3d]:
    """The inflated convs of ``model`` whose centre tap is frozen."""
    return [m for m in model.modules() if isinstance(m, InflatedConv3d) and m.masked]
