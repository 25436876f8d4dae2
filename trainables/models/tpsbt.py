"""TPSBT, the encoder of SVFAP (paper 002): Temporal Pyramid and Spatial Bottleneck Transformer.

Layout of the token grid: a clip (B, T, C, H, W) becomes ``t = T / tubelet_size`` temporal slices of ``s = (H / p) *
(W / p)`` spatial tokens each, flattened time-major into (B, t * s, D).

* Stage 1: standard pre-norm ViT blocks (VideoMAE's attention: no bias on k, learned q and v biases).
* Stages 2 and 3: a temporal strided ``Conv1d`` (kernel = stride = 2) halves ``t`` (the temporal pyramid); then the
  spatial bottleneck: an attention pool summarises each slice's ``s`` tokens into ``bottleneck_tokens`` (8) tokens, the
  stage's first ``depth - 1`` SBT blocks (cross-attention bottleneck -> full tokens, self-attention, MLP) run on the
  bottleneck tokens only, and the stage's last block is the *reverse* SBT block (queries = full tokens, keys/values =
  bottleneck tokens), which restores the ``t * s`` grid.

Reverse block and fine-tuning (read from the paper, Sec. 3.1.3 / 3.2, and the authors' ``modeling_finetune.py``): the
reverse block is not a pretraining-only layer. It is counted in the stage depth and runs in fine-tuning too: stage 3's
temporal convolution needs stage 2's full grid, and the authors' fine-tuning head averages the full (restored) stage-3
tokens. We do the same; what differs between the paths is only that pretraining feeds the visible tokens of a tube mask
(``forward_stages(x, keep=...)``) and fuses the stages' outputs for the decoder (:func:`fuse_stages`), which fine-tuning
does not (the paper found fusion hurts fine-tuning). The fine-tuning head is global average pooling over the last
stage's tokens, LayerNorm (``fc_norm``), linear.

Frame counts that do not fit (any T >= 1 runs; nothing changes for the paper's 16-frame clips):

* T not a multiple of ``tubelet_size``: the last frame is repeated up to the next multiple (a partial tubelet would
  otherwise be dropped by the strided Conv3d).
* an odd number of temporal slices before a temporal Conv1d: the last slice is repeated once (a stride-2 kernel would
  drop it). So 16 frames give 8 -> 4 -> 2 slices, 4 frames 2 -> 1 -> 1, 3 frames 2 -> 1 -> 1, 2 frames 1 -> 1 -> 1.

Padding tokens rather than frames up to ``tubelet_size * 4`` keeps a 2-frame clip at a quarter of the cost.

H and W must be multiples of ``patch_size``; any resolution and frame count runs, since the fixed 1D sinusoid position
table (VideoMAE's, over the flattened grid) is built for the actual token grid of each input; for the size the model
was built for (``num_frames``, ``img_size``) it equals the authors' table, so their checkpoints load unchanged.

Parameter and module names follow the authors' checkpoints (``patch_embed.proj``, ``blocks.N``,
``temporal_downsamples.N``, ``spatial_downsamples.N``, ``fc_norm``, ``head``) so :func:`load_svfap_checkpoint` needs no
renaming besides the pretraining ``encoder.`` prefix. Checked once against the authors' ``modeling_finetune.py`` (not
part of the tests, which must not import their code): the base model's state-dict keys and shapes are identical, and a
tiny configuration loaded with their weights gives the same pooled features to 3e-7.

Variants (paper: base 78M parameters; small "about half", 30M):

* ``tpsbt_base``: embed 512, 8 heads, depths (12, 6, 3), MLP ratio 4 (the authors' released model).
* ``tpsbt`` (small): embed 384, 6 heads, depths (8, 4, 2). The paper's small settings did not survive in the text we
  have and the authors' code has only base; this choice gives ~29M parameters, matching the paper's 30M for TPSBT-S
  (embed 384 with depths (12, 6, 3) would be 43M).
* ``tpsbt_tiny``: embed 48, 3 heads, depths (1, 2, 2), 32x32 input, 8x8 patches; for CPU tests. Depth 2 in the SBT
  stages so both an SBT block and a reverse block are exercised.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from trainables.errors import ConfigError
from trainables.models.positions import position_table
from trainables.models.pretrained import LoadReport, load_plan, match_state_dict, read_state_dict
from trainables.models.registry import register_backbone

__all__ = ["TPSBT", "StageOutput", "fuse_stages", "load_svfap_checkpoint"]

# Hidden width of the spatial attention pool's scoring MLP (the authors' value, fixed in their code).
POOL_HIDDEN = 128
# Every temporal pyramid step divides the slice count by this (kernel = stride of the temporal Conv1d).
TIME_STRIDE = 2
# The paper's inference: average the predictions of this many clips sampled uniformly along the video
# (``trainables.data.sampling.uniform_clip_starts``; a trial sets it with ``eval_clips``).
EVAL_CLIPS = 2


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention of ``queries`` over ``context`` (self-attention when ``context`` is None).

    Self-attention keeps one fused ``qkv`` projection, cross-attention separate ``q`` and ``kv`` projections: the names
    and shapes of the authors' checkpoints. Biases as in VideoMAE: learned for q and v, none for k (a key bias adds the
    same logit to every key of a query, so softmax ignores it).

    Args:
        dim: token width; heads: attention heads (must divide ``dim``); cross: build the cross-attention projections.
    """

    def __init__(self, dim: int, heads: int, cross: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {heads}")
        self.heads, self.cross = heads, cross
        if cross:
            self.q = nn.Linear(dim, dim, bias=False)
            self.kv = nn.Linear(dim, 2 * dim, bias=False)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        k_bias = torch.zeros_like(self.v_bias)
        if self.cross:
            q = F.linear(x, self.q.weight, self.q_bias)
            k, v = F.linear(context, self.kv.weight, torch.cat([k_bias, self.v_bias])).chunk(2, dim=-1)
        else:
            q, k, v = F.linear(x, self.qkv.weight, torch.cat([self.q_bias, k_bias, self.v_bias])).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        return self.proj(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN x), then x + MLP(LN x); stage 1."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SBTBlock(nn.Module):
    """Spatial bottleneck block: cross-attention of ``x`` over ``context``, self-attention, MLP (each pre-norm).

    As a normal SBT block ``x`` is the bottleneck tokens and ``context`` the full tokens (distilling detail back into
    the bottleneck); as the reverse block the roles swap, and the output has the full token count again.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.cross_norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = Attention(dim, heads, cross=True)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.cross_attn(self.cross_norm1(x), self.cross_norm2(context)))
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SpatialPool(nn.Module):
    """Attention pooling of each temporal slice's ``s`` tokens into ``k`` bottleneck tokens.

    An MLP scores every token for each of the ``k`` bottleneck tokens; a softmax over the slice's tokens turns the
    scores into weights, and bottleneck token j is the weighted mean of the slice's tokens.
    """

    def __init__(self, dim: int, tokens: int, hidden: int = POOL_HIDDEN):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden, tokens)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """x: (B, t * s, D) -> (B, t * k, D)."""
        b, n, d = x.shape
        weights = self.mlp(self.norm(x)).reshape(b * t, n // t, -1).transpose(1, 2).softmax(dim=-1)  # (B t, k, s)
        return (weights @ x.reshape(b * t, n // t, d)).view(b, -1, d)


@dataclass
class StageOutput:
    """One stage's result.

    Attributes:
        tokens: (B, t * s, D) full tokens, time-major.
        grid: (t, s): temporal slices and spatial tokens per slice.
        bottleneck: (B, t * k, D) bottleneck tokens after the stage's SBT blocks (before the reverse block), None for
            stage 1.
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    bottleneck: torch.Tensor | None = None


def fuse_stages(stages: Sequence[StageOutput]) -> torch.Tensor:
    """The pretraining decoder input: every stage's tokens, upsampled in time to stage 1's grid (nearest), summed.

    Fine-tuning does not use it (the paper's Table IV: fusion helps pretraining, hurts fine-tuning).
    """
    t0, s0 = stages[0].grid
    fused = stages[0].tokens
    for level, stage in enumerate(stages[1:], start=1):
        t, s = stage.grid
        b, _, d = stage.tokens.shape
        # Nearest upsampling: stage-1 slice i came from slice i // 2**level; cut what the odd-length padding added.
        up = stage.tokens.view(b, t, s, d).repeat_interleave(TIME_STRIDE ** level, dim=1)[:, :t0]
        fused = fused + up.reshape(b, t0 * s0, d)
    return fused


class TPSBT(nn.Module):
    """SVFAP's TPSBT encoder with a regression head (global average pool -> LayerNorm -> linear).

    Args:
        embed_dim: token width D.
        depths: blocks per stage; stage 1 standard blocks, every later stage starts with a temporal halving and an
            attention pool and counts its reverse block in its depth (so each later depth must be >= 1).
        num_heads: attention heads (divides ``embed_dim``).
        mlp_ratio: MLP hidden width / D.
        patch_size: spatial patch side p; H and W of the input must be multiples of it.
        tubelet_size: frames per token.
        img_size: input side the model is built for (the platform resizes crops to it); other sizes run too.
        num_frames: frames per clip the model is built for; other counts run too (see the module docstring).
        bottleneck_tokens: bottleneck tokens per temporal slice in the SBT stages (paper: 8).
        drop_path: stochastic depth rate of the last block, rising linearly from 0 over all blocks.
        checkpoint: SVFAP checkpoint (pretraining or fine-tuned layout) loaded at construction, head excepted; the
            report is ``self.load_report``.
        out_dims: target dimensions.
        in_chans: input channels.
        n_bins: when > 0, also per-dimension class logits ``"logits"`` (B, out_dims, n_bins).
    """

    def __init__(self, embed_dim: int = 384, depths: Sequence[int] = (8, 4, 2), num_heads: int = 6,
                 mlp_ratio: float = 4.0, patch_size: int = 16, tubelet_size: int = 2, img_size: int = 160,
                 num_frames: int = 16, bottleneck_tokens: int = 8, drop_path: float = 0.0,
                 checkpoint: str | os.PathLike[str] | None = None, out_dims: int = 2, in_chans: int = 3,
                 n_bins: int = 0):
        super().__init__()
        depths = tuple(int(d) for d in depths)
        if not depths or depths[0] < 0 or any(d < 1 for d in depths[1:]):
            raise ValueError(f"depths must be stage 1 >= 0 blocks then >= 1 per later stage, got {list(depths)}")
        if bottleneck_tokens < 1:
            raise ValueError(f"bottleneck_tokens must be >= 1, got {bottleneck_tokens}")
        self.embed_dim = self.num_features = embed_dim
        self.depths, self.patch_size, self.tubelet_size = depths, patch_size, tubelet_size
        self.img_size, self.num_frames, self.bottleneck_tokens = img_size, num_frames, bottleneck_tokens
        self.out_dims, self.n_bins = out_dims, n_bins

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                                          stride=(tubelet_size, patch_size, patch_size))
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        # One flat list over all stages, as in the authors' checkpoints; stage boundaries come from ``depths``.
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, rates[i]) for i in range(depths[0])]
            + [SBTBlock(embed_dim, num_heads, mlp_ratio, rates[i]) for i in range(depths[0], sum(depths))])
        self.temporal_downsamples = nn.ModuleList(
            nn.Conv1d(embed_dim, embed_dim, kernel_size=TIME_STRIDE, stride=TIME_STRIDE) for _ in depths[1:])
        self.spatial_downsamples = nn.ModuleList(SpatialPool(embed_dim, bottleneck_tokens) for _ in depths[1:])
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, out_dims)
        # Per-dimension class logits for the CE / nCCE losses (paper 001), from the same pooled embedding.
        self.cls_head = nn.Linear(embed_dim, out_dims * n_bins) if n_bins else None
        self.apply(self._init_weights)

        self.load_report: LoadReport | None = None
        if checkpoint is not None and checkpoint != "":
            self.load_report = load_svfap_checkpoint(self, checkpoint)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The authors' (VideoMAE's) init: timm's trunc_normal_(std=0.02) truncates at +-2 in absolute units, i.e.
        # 100 standard deviations, so a plain normal is the same distribution and a third faster to draw (the base
        # model's build time is mostly this). Convolutions keep PyTorch's default, as theirs do.
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names optimisers usually exempt from weight decay (timm convention): none here, the position
        table is fixed."""
        return set()

    # --- encoder ----------------------------------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """x: (B, T, C, H, W) -> tokens (B, t * s, D) with positions added, and the grid (t, s)."""
        b, frames, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"frame size {h}x{w} is not a multiple of patch_size {self.patch_size}")
        if frames % self.tubelet_size:
            # Repeat the last frame so a partial tubelet is not dropped by the strided Conv3d.
            pad = self.tubelet_size - frames % self.tubelet_size
            x = torch.cat([x, x[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
        tokens = self.patch_embed.proj(x.transpose(1, 2))  # (B, D, t, h', w')
        t, s = tokens.shape[2], tokens.shape[3] * tokens.shape[4]
        tokens = tokens.flatten(2).transpose(1, 2)
        table = position_table(t * s, self.embed_dim, tokens.device, tokens.dtype)
        return tokens + table, (t, s)

    @property
    def depth(self) -> int:
        """Blocks over all stages (the layer-decay depth)."""
        return sum(self.depths)

    def layer_id(self, name: str) -> int:
        """Layer-decay depth of parameter ``name`` (``trainables.models.video_vit.layer_decay_groups``): 0 the patch
        embedding, 1..depth the blocks in order, a stage's temporal and spatial downsampling that of the stage's first
        block, depth + 1 the pooling norm and heads."""
        parts = name.split(".")
        if parts[0] == "patch_embed":
            return 0
        if parts[0] == "blocks":
            return int(parts[1]) + 1
        if parts[0] in ("temporal_downsamples", "spatial_downsamples"):
            return sum(self.depths[:int(parts[1]) + 1]) + 1
        return self.depth + 1

    def group_matcher(self, coarse: bool = False):
        """timm's layer grouping hook: :meth:`layer_id` as the matcher (``timm.optim.param_groups_layer_decay``)."""
        return self.layer_id

    def forward_stages(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> list[StageOutput]:
        """Run every stage and return each one's output (the pretraining path needs all of them).

        Args:
            x: (B, T, C, H, W) clip.
            keep: for masked pretraining, (B, K) indices of the spatial patch positions left visible in every temporal
                slice (tube masking); the encoder then sees only those K tokens per slice. None: all tokens.
        """
        tokens, (t, s) = self.embed(x)
        b, _, d = tokens.shape
        if keep is not None:
            index = keep[:, None, :, None].expand(-1, t, -1, d)
            tokens = tokens.view(b, t, s, d).gather(2, index).reshape(b, -1, d)
            s = keep.shape[1]
        for block in self.blocks[:self.depths[0]]:
            tokens = block(tokens)
        stages = [StageOutput(tokens, (t, s))]

        first = self.depths[0]
        for stage, depth in enumerate(self.depths[1:]):
            if t % TIME_STRIDE:
                # Odd slice count: repeat the last slice so the stride-2 convolution does not drop it.
                tokens = torch.cat([tokens, tokens[:, -s:]], dim=1)
                t += 1
            # Temporal pyramid: each spatial position's sequence of slices through a strided Conv1d.
            seq = tokens.view(b, t, s, d).permute(0, 2, 3, 1).reshape(b * s, d, t)
            seq = self.temporal_downsamples[stage](seq)
            t = seq.shape[-1]
            full = seq.view(b, s, d, t).permute(0, 3, 1, 2).reshape(b, t * s, d)
            # Spatial bottleneck: pool, SBT blocks on the bottleneck, reverse block back to the full grid.
            bottleneck = self.spatial_downsamples[stage](full, t)
            blocks = self.blocks[first:first + depth]
            for block in blocks[:-1]:
                bottleneck = block(bottleneck, full)
            tokens = blocks[-1](full, bottleneck)
            stages.append(StageOutput(tokens, (t, s), bottleneck))
            first += depth
        return stages

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C, H, W) -> the last stage's tokens (B, t * s, D) (t = T / (tubelet_size * 4) for 3 stages)."""
        return self.forward_stages(x)[-1].tokens

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens (B, N, D) -> the pooled embedding (B, D) (``pre_logits``) or the regression output (B, out_dims)."""
        pooled = self.fc_norm(tokens.mean(dim=1))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, T, C, H, W) -> {"window": (B, out_dims)} (+ "logits" (B, out_dims, n_bins) when n_bins > 0)."""
        pooled = self.forward_head(self.forward_features(x), pre_logits=True)
        out = {"window": self.head(pooled)}
        if self.cls_head is not None:
            out["logits"] = self.cls_head(pooled).view(-1, self.out_dims, self.n_bins)
        return out


# File keys of the pretraining model that are not part of the encoder (decoder, its input projection, mask token).
_PRETRAIN_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token")
# The model's task-specific heads: never taken from a checkpoint (another task's classes, or fresh for ours).
_HEADS = ("head.", "cls_head.")


def _ignore_reason(key: str) -> str | None:
    """Why a (prefix-stripped) checkpoint key is left out on purpose, or None when it should be loaded."""
    if key.startswith(_PRETRAIN_ONLY):
        return "pretraining decoder"
    if key.startswith(_HEADS):
        return "head for other targets (the model's head stays fresh)"
    return None


def load_svfap_checkpoint(model: TPSBT, path: str | os.PathLike[str]) -> LoadReport:
    """Load an SVFAP encoder into ``model``, in place, from the authors' pretraining or fine-tuning checkpoint, through
    the project's one reader (:mod:`trainables.models.pretrained`: file formats, the prefix rule, position tables, the
    mismatch policy).

    Both layouts are what the authors' ``utils.save_model`` writes: the weights under ``model`` beside
    ``optimizer``, ``epoch``, ``scaler`` and the run's ``args`` namespace. Pretraining: encoder keys under
    ``encoder.`` (stripped by the reader's prefix rule), plus the decoder, ``encoder_to_decoder``, ``mask_token``
    (ignored). Fine-tuned: the
    encoder's own keys. The head (``head``, ``cls_head``) is never loaded: its file keys are reported as ignored and the
    model's as missing. ``fc_norm`` is loaded when the file has it (a fine-tuned checkpoint); a pretraining
    checkpoint's ``encoder.norm`` (the norm before the decoder) has no place in this model and is reported as
    unexpected, as the authors' fine-tuning does.

    Returns:
        The :class:`~trainables.models.pretrained.LoadReport` (also logged).

    Raises:
        ConfigError: the path is missing or unreadable, a tensor's shape differs (another model size), the file holds a
            learned position table, or it has no TPSBT encoder tensor at all; the message names the path.
    """
    to_load, report = match_state_dict(model, read_state_dict(path), path=path, ignore=_ignore_reason)
    if not report.loaded and not report.mismatched:
        raise ConfigError(f"checkpoint {path} holds no TPSBT (SVFAP) encoder weights: {report.summary()}")
    return load_plan(model, to_load, report)


@register_backbone("tpsbt")
def tpsbt(**kwargs) -> TPSBT:
    """TPSBT-S as chosen here (embed 384, 6 heads, depths (8, 4, 2); ~29M parameters)."""
    return TPSBT(**kwargs)


@register_backbone("tpsbt_base", pins=("embed_dim", "depths", "num_heads", "mlp_ratio"))
def tpsbt_base(**kwargs) -> TPSBT:
    """TPSBT-B, the authors' released encoder (embed 512, 8 heads, depths (12, 6, 3); ~78M parameters)."""
    kwargs.setdefault("embed_dim", 512)
    kwargs.setdefault("depths", (12, 6, 3))
    kwargs.setdefault("num_heads", 8)
    kwargs.setdefault("mlp_ratio", 4.0)
    return TPSBT(**kwargs)


@register_backbone("tpsbt_tiny", pins=("embed_dim", "depths", "num_heads"))
def tpsbt_tiny(**kwargs) -> TPSBT:
    """A variant that trains on CPU in well under a second: embed 48, 3 heads, depths (1, 2, 2), 32x32, 8x8 patches."""
    kwargs.setdefault("embed_dim", 48)
    kwargs.setdefault("depths", (1, 2, 2))
    kwargs.setdefault("num_heads", 3)
    kwargs.setdefault("patch_size", 8)
    kwargs.setdefault("img_size", 32)
    return TPSBT(**kwargs)
