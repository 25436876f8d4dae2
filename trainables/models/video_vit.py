"""VideoMAE's video ViT (paper 000): tubelet patches, a fixed sinusoid position table, pre-norm transformer blocks, mean
pooling + ``fc_norm`` + a linear head regressing the target dimensions of the whole clip.

The module names follow the official VideoMAE fine-tuning model (``patch_embed.proj``, ``blocks.N.attn.qkv`` with
separate ``q_bias`` / ``v_bias``, ``fc_norm``, ``head``), so the official checkpoints map almost one to one;
:func:`load_videomae_checkpoint` also reads the ``transformers`` layout and the official pretraining layout.

Frame counts. SSTS (paper 000) feeds 24/s frames for s in {1, 2, 3, 4, 6, 8, 12}: 24, 12, 8, 6, 4, 3, 2. A clip whose
frame count is not a multiple of ``tubelet_size`` gets its last frame repeated until it is (3 -> 4 for the 2-frame
tubelet). Repeating keeps every tubelet a plausible piece of video for the pretrained Conv3d (a still end, as in a
static scene), where zero frames would feed it black frames it never saw in pretraining and dropping the frame would
throw away a labelled observation; changing the tubelet instead would leave the pretrained patch embedding unusable.
The position table is rebuilt for whatever token count the input gives (see :meth:`VideoViT.position_table`).
"""
from __future__ import annotations

import math
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_

from trainables.models.positions import position_table, sinusoid_table
from trainables.models.pretrained import LoadReport, load_plan, match_state_dict, read_state_dict
from trainables.models.registry import register_backbone

__all__ = ["VideoViT", "layer_decay_groups", "load_videomae_checkpoint", "sinusoid_table"]

# Official VideoMAE builds every LayerNorm with eps=1e-6 (transformers' port has 1e-12 in the blocks, 1e-5 in fc_norm;
# the tests show the outputs agree to 1e-4 all the same).
_NORM_EPS = 1e-6


class Attention(nn.Module):
    """Multi-head self-attention whose input projection has query and value biases but no key bias.

    A key bias adds the same term to every key of a query's softmax, so it cannot change attention; VideoMAE leaves it
    out, and its checkpoints store ``q_bias`` and ``v_bias`` beside a bias-free fused ``qkv`` weight.

    Args:
        dim: token width; num_heads: heads (``dim`` must divide evenly); drop: dropout after the output projection.
    """

    def __init__(self, dim: int, num_heads: int, drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as VideoMAE
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float, drop_path: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=_NORM_EPS)
        self.attn = Attention(dim, num_heads, drop)
        self.norm2 = nn.LayerNorm(dim, eps=_NORM_EPS)
        self.mlp = nn.Sequential()
        # Named children so the keys read mlp.fc1 / mlp.fc2 as in VideoMAE's checkpoints.
        self.mlp.add_module("fc1", nn.Linear(dim, hidden))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("drop1", nn.Dropout(drop))
        self.mlp.add_module("fc2", nn.Linear(hidden, dim))
        self.mlp.add_module("drop2", nn.Dropout(drop))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VideoViT(nn.Module):
    """VideoMAE video ViT with mean pooling and a regression head (defaults: ViT-S/16, tubelet 2).

    Args:
        embed_dim, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP hidden / width.
        patch_size: spatial patch side; tubelet_size: frames per patch. The input's H and W must be multiples of
            ``patch_size``; any frame count works (padded to a multiple of ``tubelet_size``, see the module docstring).
        img_size, num_frames: the nominal input (224 and 16 for the VideoMAE checkpoints); they only pre-build that
            input's position table, since the table is rebuilt for every other input shape.
        drop_path: stochastic-depth rate of the last block, rising linearly from 0 at the first.
        drop: dropout after the position table, inside attention's output and the MLP, and before the head.
        checkpoint: a VideoMAE checkpoint loaded at construction (see :func:`load_videomae_checkpoint`); the report is
            ``self.load_report``.
        out_dims: target dimensions (valence, arousal, ...).
        in_chans: 3 for RGB, 1 for grayscale (a 3-channel checkpoint then does not fit the patch embedding).
        n_bins: when > 0, also output per-dimension class logits over ``n_bins`` label bins ("logits" (B, D, n_bins))
            for classification losses, from the same pooled embedding.
    """

    def __init__(self, *, embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 patch_size: int = 16, tubelet_size: int = 2, img_size: int = 224, num_frames: int = 16,
                 drop_path: float = 0.0, drop: float = 0.0, checkpoint: str | os.PathLike[str] | None = None,
                 out_dims: int = 2, in_chans: int = 3, n_bins: int = 0):
        super().__init__()
        self.embed_dim, self.depth, self.patch_size, self.tubelet_size = embed_dim, depth, patch_size, tubelet_size
        self.out_dims, self.n_bins = out_dims, n_bins
        self.patch_embed = nn.Module()
        self.patch_embed.add_module("proj", nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size,
                                                                                         patch_size),
                                                      stride=(tubelet_size, patch_size, patch_size)))
        self.pos_drop = nn.Dropout(drop)
        rates = torch.linspace(0, drop_path, depth).tolist() if depth else []
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, drop, rate) for rate in rates)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=_NORM_EPS)
        self.head_drop = nn.Dropout(drop)
        self.head = nn.Linear(embed_dim, out_dims)
        # Per-dimension class logits for the CE / nCCE losses (paper 001), as the other backbones offer them.
        self.cls_head = nn.Linear(embed_dim, out_dims * n_bins) if n_bins else None
        # Position tables by token count; not a buffer, so they never enter a state dict or a checkpoint.
        self.apply(self._init_weights)
        self.position_table(math.ceil(num_frames / tubelet_size) * (img_size // patch_size) ** 2)
        self.load_report: LoadReport | None = None
        if checkpoint is not None and checkpoint != "":
            self.load_report = load_videomae_checkpoint(self, checkpoint)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # VideoMAE's initialisation: truncated normal (std 0.02) linear weights, zero biases, unit LayerNorms.
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def reset_head(self) -> None:
        """Fresh head weights: a checkpoint's classifier was trained for other targets and is never loaded."""
        for layer in (self.head, self.cls_head):
            if layer is not None:
                self._init_weights(layer)

    def position_table(self, n_tokens: int, device: torch.device | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (1, n_tokens, embed_dim) sinusoid table for an input of ``n_tokens`` tokens, cached per count."""
        return position_table(n_tokens, self.embed_dim, torch.device("cpu") if device is None else device, dtype)

    def pad_frames(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C, H, W) -> the same with the last frame repeated until T is a multiple of ``tubelet_size``."""
        extra = -x.shape[1] % self.tubelet_size
        if extra:
            x = torch.cat([x, x[:, -1:].expand(-1, extra, -1, -1, -1)], dim=1)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C, H, W) clip -> (B, N, E) tokens after the last block, N = ceil(T / tubelet) * H/p * W/p.

        No final norm: with mean pooling VideoMAE normalises after pooling (``fc_norm``), so these tokens equal
        ``transformers``' ``VideoMAEModel(use_mean_pooling=True)`` ``last_hidden_state``.
        """
        if x.ndim != 5:
            raise ValueError(f"VideoViT expects a (B, T, C, H, W) clip, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"frame size {h}x{w} is not a multiple of patch_size {self.patch_size}")
        # Conv3d wants channels before time: (B, C, T, H, W).
        tokens = self.patch_embed.proj(self.pad_frames(x).transpose(1, 2)).flatten(2).transpose(1, 2)
        tokens = self.pos_drop(tokens + self.position_table(tokens.shape[1], tokens.device, tokens.dtype))
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens: (B, N, E) -> the (B, E) clip embedding ``fc_norm(mean over tokens)`` when ``pre_logits``, else the
        (B, out_dims) regression output."""
        pooled = self.fc_norm(tokens.mean(dim=1))
        return pooled if pre_logits else self.head(self.head_drop(pooled))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, T, C, H, W) -> {"window": (B, out_dims)}, plus "logits" (B, out_dims, n_bins) when ``n_bins``."""
        pooled = self.head_drop(self.forward_head(self.forward_features(x), pre_logits=True))
        out = {"window": self.head(pooled)}
        if self.cls_head is not None:
            out["logits"] = self.cls_head(pooled).view(-1, self.out_dims, self.n_bins)
        return out

    @property
    def num_layers(self) -> int:
        """Layer ids run from 0 (patch embedding) to ``depth + 1`` (pooling norm and heads)."""
        return self.depth + 2

    def layer_id(self, name: str) -> int:
        """Layer-decay depth of parameter ``name``: 0 patch embedding, 1..depth the blocks, depth + 1 the rest."""
        if name.startswith("patch_embed."):
            return 0
        found = re.match(r"blocks\.(\d+)\.", name)
        return int(found.group(1)) + 1 if found else self.depth + 1

    def group_matcher(self, coarse: bool = False):
        """timm's layer grouping hook: :meth:`layer_id` as the matcher, so ``timm.optim.param_groups_layer_decay``
        (and ``create_optimizer_v2(..., layer_decay=...)``) group parameters by the same depths. ``coarse`` is accepted
        for timm's signature; the grouping is per block either way."""
        return self.layer_id


def layer_decay_groups(model: VideoViT, lr: float, weight_decay: float,
                       layer_decay: float) -> list[dict]:
    """AdamW parameter groups with layer-wise learning-rate decay (BEiT / VideoMAE fine-tuning), built by
    ``timm.optim.param_groups_layer_decay``.

    A parameter in layer ``i`` (:meth:`VideoViT.layer_id`: 0 patch embedding, 1..depth blocks, depth + 1 the pooling
    norm and heads) trains at ``lr * layer_decay ** (depth + 1 - i)``: the head at ``lr``, each block below it a factor
    ``layer_decay`` slower, so pretrained low-level features move least. Biases, norms and every other 1-D parameter
    (``q_bias``, ``v_bias`` too) get no weight decay, as decaying a scale or offset towards 0 only hurts. This is
    VideoMAE's fine-tuning rule (``get_num_layer_for_vit`` with scale ``decay ** (depth + 1 - i)``; no decay for 1-D
    parameters, names ending in ``.bias`` and the model's ``no_weight_decay()`` names).

    How timm is made to follow it: the model's ``group_matcher`` returns :meth:`layer_id`, and timm numbers the
    distinct ids in order, which leaves them unchanged as every depth 0..depth + 1 holds a parameter; timm exempts
    1-D parameters from decay, and ``"*.bias"`` in its no-decay list adds VideoMAE's bias-name rule (the same set
    here, as every bias is 1-D). timm's groups carry only ``lr_scale`` (its own schedulers multiply it in); the
    groups here also carry ``lr = lr * lr_scale``, because the trial's ``LambdaLR`` scales each group's own lr.

    Args:
        model: a :class:`VideoViT` (anything with ``layer_id(name)`` and a ``group_matcher`` returning it works).
        lr: the base (head) learning rate; weight_decay: for matrices and kernels; layer_decay: in (0, 1], 1 = off.

    Returns:
        One group per (layer, decay or not) that has trainable parameters, head first, each
        ``{"params", "lr", "weight_decay", "lr_scale", "layer_id", "param_names"}``; ``torch.optim.AdamW(groups)``
        takes them as they are, and ``LambdaLR`` scales every group's own lr. A scheduler that sets learning rates
        itself should set ``lr = base * lr_scale``; timm's schedulers multiply ``lr_scale`` into each group's initial
        lr, which here already holds it, so they would scale twice. Call it on the bare model, not a DDP wrapper.
    """
    from timm.optim import param_groups_layer_decay

    skip = tuple(model.no_weight_decay()) if callable(getattr(model, "no_weight_decay", None)) else ()
    # Asked with weight decay 1: timm tells its decay groups apart only by a non-zero weight_decay, and the split (and
    # the group order below) must not depend on whether the trial's weight_decay is 0.
    groups = param_groups_layer_decay(model, weight_decay=1.0, no_weight_decay_list=("*.bias", *skip),
                                      layer_decay=layer_decay)
    names = {id(param): name for name, param in model.named_parameters()}
    keyed = []
    for group in groups:
        decays = group["weight_decay"] > 0
        group["weight_decay"] = weight_decay if decays else 0.0
        group["param_names"] = [names[id(param)] for param in group["params"]]
        group["layer_id"] = model.layer_id(group["param_names"][0])
        group["lr"] = lr * group["lr_scale"]
        keyed.append(((-group["layer_id"], decays), group))
    # Head first, so groups[0]["lr"] is the base learning rate (what a log of "the" lr shows); within a depth the
    # no-decay group first. The order is fixed so the optimizer state a trial saved loads into the same groups.
    return [group for _, group in sorted(keyed, key=lambda kg: kg[0])]


# --- checkpoints ------------------------------------------------------------------------------------------------------

# transformers' names -> ours, per block (after "videomae.encoder.layer.N." / "encoder.layer.N.").
_HF_BLOCK = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.output.dense.": "attn.proj.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    # Files keep VideoMAE's own bias names (what save_pretrained writes); transformers' modules call them query.bias and
    # value.bias (what state_dict() gives in memory). Both are read.
    "attention.attention.q_bias": "attn.q_bias",
    "attention.attention.v_bias": "attn.v_bias",
    "attention.attention.query.bias": "attn.q_bias",
    "attention.attention.value.bias": "attn.v_bias",
}
_HF_QKV = ("attention.attention.query.weight", "attention.attention.key.weight", "attention.attention.value.weight")


def _ignore_reason(key: str) -> str | None:
    """Why a (prefix-stripped) checkpoint key is left out on purpose, or None when it should be loaded."""
    if key.startswith(("decoder.", "encoder_to_decoder.")) or key == "mask_token":
        return "pretraining decoder"
    if key.startswith(("head.", "classifier.")):
        return "classifier for other targets (the head is re-initialised)"
    if key.startswith(("norm.", "layernorm.")):
        return "encoder's final norm (unused with mean pooling + fc_norm)"
    return None


def _from_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers VideoMAE state dict (any of its model classes) to VideoViT keys; q, k, v fused."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("videomae.")
        if key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
            continue
        found = re.match(r"encoder\.layer\.(\d+)\.(.+)$", key)
        if not found:
            out[key] = value  # fc_norm, classifier, layernorm, decoder ...: kept, sorted out by the caller
            continue
        block, rest = f"blocks.{found.group(1)}.", found.group(2)
        if rest in _HF_QKV:
            fused.setdefault(block, {})[rest] = value
            continue
        for theirs, ours in _HF_BLOCK.items():
            if rest.startswith(theirs):
                out[block + ours + rest[len(theirs):]] = value
                break
        else:
            out[block + rest] = value  # unknown: reported as unexpected
    for block, parts in fused.items():
        if len(parts) == 3:
            out[block + "attn.qkv.weight"] = torch.cat([parts[name] for name in _HF_QKV])
        else:  # an incomplete q/k/v set cannot be fused; pass the pieces on so they show up as unexpected
            out.update({block + name: value for name, value in parts.items()})
    return out


def load_videomae_checkpoint(model: VideoViT, path: str | os.PathLike[str]) -> LoadReport:
    """Load VideoMAE encoder weights into ``model`` through the project's one reader
    (:mod:`trainables.models.pretrained`: file formats, the prefix rule, position tables, the mismatch policy); the head
    is re-initialised.

    Accepted layouts (told apart by their keys):

    * ``transformers``: a ``save_pretrained`` folder or ``.safetensors`` / ``.bin`` file of ``VideoMAEModel``,
      ``VideoMAEForVideoClassification`` or ``VideoMAEForPreTraining`` (``videomae.embeddings.patch_embeddings...``,
      ``...attention.attention.query/key/value.weight``: fused into ``qkv``; ``attention.attention.q_bias`` /
      ``v_bias``, or ``query.bias`` / ``value.bias`` as in memory, become ``q_bias`` / ``v_bias``).
    * official fine-tuned ``.pth`` as ``utils.save_model`` writes it (weights under ``model`` or ``module``, beside
      ``optimizer``, ``epoch``, ``scaler`` and the run's ``args``): our own key names.
    * official pretraining ``.pth``: the same under ``encoder.`` (stripped by the reader's prefix rule);
      ``decoder.*``, ``mask_token`` and ``encoder_to_decoder.*`` are ignored, as is the encoder's final ``norm``, which
      mean pooling does not use (``fc_norm`` then stays freshly initialised and is reported missing).

    Returns:
        The :class:`~trainables.models.pretrained.LoadReport` (also logged): ``missing`` model keys (the heads always,
        ``fc_norm`` after a pretraining checkpoint), ``unexpected`` file keys nothing took, ``ignored`` ones with
        their reason.

    Raises:
        ConfigError: unreadable file or layout (message names the path and the accepted layouts), a learned position
            table, or tensors of another model size.
    """
    state = read_state_dict(path)
    if any("patch_embeddings.projection" in k or ".attention.attention." in k for k in state):
        state = _from_transformers(state)
    to_load, report = match_state_dict(model, state, path=path, ignore=_ignore_reason)
    load_plan(model, to_load, report)
    model.reset_head()
    return report


@register_backbone("video_vit")
def video_vit(**kwargs) -> VideoViT:
    """VideoMAE ViT (default ViT-S/16, tubelet 2); pass ``checkpoint`` to start from VideoMAE weights."""
    return VideoViT(**kwargs)


_TINY = {"embed_dim": 48, "depth": 2, "num_heads": 3, "patch_size": 8, "img_size": 32}


@register_backbone("video_vit_tiny", pins=tuple(_TINY))
def video_vit_tiny(**kwargs) -> VideoViT:
    """A variant that trains on CPU in well under a second: width 48, 2 blocks, 3 heads, 8-pixel patches."""
    return VideoViT(**{**_TINY, **kwargs})
