"""BYOL and DINO: the two joint-embedding pretext methods SS-VAERR (paper 001) pretrains its 3D-conv + ResNet-18
encoder with (``conv3d_resnet_gru``'s ``.encoder``).

Both train an online (student) network to match a slowly moving EMA copy of itself (the target / teacher) across two
differently augmented views of one clip; neither uses negative pairs. The paper swaps the methods' own backbones for
the 3D stem + ResNet-18 it fine-tunes and keeps "the augmentations as in the corresponding publications" (BYOL's
Appendix B; DINO uses the same ones plus multi-crop), which is what :func:`augment_view` implements. Only the online
/ student encoder is exported (:meth:`Pretrainer.encoder_state`); heads, predictor and the EMA copies stay here.

Judgment calls (the paper is about images; these clips are videos):

- **A view is the whole clip, augmented once.** The caller's clip (``num_frames`` frames) is already the short frame
  stack the 3D stem (5 frames wide) needs; every view covers the same frames, and one augmentation draw (crop box,
  flip, jitter factors, blur width, solarisation) applies to all its frames, so the views differ in appearance only,
  as the image methods' views do, and never in time (no temporal jitter: the paper's BYOL/DINO are per-image
  methods, and a shifted window would also teach invariance to expression change, the very signal the downstream
  task regresses). The encoder's per-frame features (B, T, F) are averaged over time: one vector per view.
- **Crops.** Global views: random resized crop with area share in [``global_crop_scale``, 1] and aspect ratio in
  [3/4, 4/3] (log-uniform, torchvision's rule), resized back to the clip's size. DINO's local crops: area share in
  [0.05, ``local_crop_scale``], resized to round(size x 96 / 224) per side (DINO's 96 px locals for 224 px globals;
  41 px for the paper's 96 px faces). A box that would not fit at the drawn ratio is clipped to the frame rather
  than redrawn (torchvision retries 10 times, then centre-crops), so the area share can fall slightly below the draw.
  Resampling is bilinear with no anti-aliasing (``grid_sample``); local crops shrink by at most ~1.7x, so aliasing
  is mild.
- **Photometric ops** (BYOL Appendix B, on images in [0, 1]): horizontal flip p=0.5; with p=0.8 brightness then
  contrast, factors uniform in [0.6, 1.4] (BYOL's 0.4; fixed order rather than torchvision's random order;
  saturation and hue are left out: the paper's faces are grayscale); the contrast anchor is the mean gray level of the
  whole view, so every frame gets the same affine intensity map; grayscale p=0.2 (only for 3-channel models: a
  1-channel model's clip is turned into luma first, by the model's own conversion, before any augmentation);
  Gaussian blur with sigma uniform in [0.1, 2.0] x (clip height / 224) pixels (BYOL's pixels at 224 px, scaled so
  the blur is the same share of the face at any clip size; local crops get the same pixel sigma as global views, as
  in DINO, where 96 px locals and 224 px globals share one sigma range), kernel radius 3 sigma; solarisation
  (x >= 0.5 -> 1 - x). Blur and solarisation probabilities are BYOL's asymmetric ones, which DINO copies: first global
  view blur 1.0, solarise 0; second global view blur 0.1, solarise 0.2; local crops blur 0.5, solarise 0.
- **BatchNorm in the EMA copies.** The target / teacher runs in the same mode as the pretrainer, so in training it
  normalises with its batch's statistics, as in both papers' code (running statistics of an EMA copy would lag the
  weights they normalise). Its running statistics are not averaged: after every step they are copied from the online
  encoder's (``after_step``), so the copy is usable in eval mode too. Views of the same size go through a network in
  one batch (DINO's multi-crop wrapper does the same), so BN statistics mix a batch's views. Under DDP the statistics
  are each worker's own (DINO converts a ResNet's BN to SyncBatchNorm; that is the trial's choice, not made here).
- **EMA momentum.** tau_k = 1 - (1 - ``ema_momentum``) (cos(pi k / K) + 1) / 2 with k = ``step`` and K =
  ``total_steps`` of ``after_step``: ``ema_momentum`` at the start, 1 at the end (BYOL's schedule, which DINO uses).
- **DINO's centre** moves in ``after_step``, not in ``forward``: the teacher outputs of every training forward since
  the last step (several under gradient accumulation) are summed, summed again over the workers
  (``torch.distributed.all_reduce``) when a process group is initialised, and their mean enters the EMA with
  ``dino_center_momentum``; dividing the summed outputs by the summed count is the mean over all workers' samples even
  when batch sizes differ. A forward in eval mode or without gradients (validation) does not move it.
- **DINO's head**: the last layer's weight normalisation with the gain fixed at 1 (DINO's ``norm_last_layer``) is
  written as normalising the weight's rows in ``forward``; DINO's freezing of that layer during the first epoch is a
  schedule the trial does not have, and is left out. The teacher temperature is constant (DINO's default warm-up from
  0.04 to 0.04).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from trainables.models.conv3d_resnet_gru import Conv3dResNetEncoder
from trainables.pretrain.methods import Pretrainer, register_method

__all__ = ["BYOL", "DINO", "DINOHead", "ViewRecipe", "augment_view", "ema_momentum_at"]

# DINO's local crops are 96 px for 224 px global crops.
LOCAL_SIZE_RATIO = 96 / 224
LOCAL_MIN_SCALE = 0.05
ASPECT_RATIOS = (3 / 4, 4 / 3)
FLIP_P = 0.5
JITTER_P, BRIGHTNESS, CONTRAST = 0.8, 0.4, 0.4
GRAYSCALE_P = 0.2
BLUR_SIGMA = (0.1, 2.0)  # pixels for a clip of BLUR_REFERENCE_SIZE
BLUR_REFERENCE_SIZE = 224
SOLARIZE_THRESHOLD = 0.5
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class ViewRecipe:
    """How one view is drawn: crop area share range, output size (None = the clip's), blur and solarise chances."""

    scale: tuple[float, float]
    size: tuple[int, int] | None
    blur_p: float
    solarize_p: float


def ema_momentum_at(base: float, step: int, total_steps: int) -> float:
    """BYOL's cosine schedule: ``base`` at step 0, 1 at ``total_steps``."""
    frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * frac) + 1.0) / 2.0


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return (low + (high - low) * torch.rand(n, generator=generator, device=gen_device)).to(device)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) in [0, 1] -> (B, T, 1, H, W) gray level."""
    if x.shape[2] == 3:
        return (x * x.new_tensor(_LUMA).view(1, 1, 3, 1, 1)).sum(dim=2, keepdim=True)
    return x.mean(dim=2, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, T, C, H, W) with one ``sigma`` (pixels) per sample, reflect-padded."""
    b, t, c, h, w = x.shape
    radius = min(max(1, math.ceil(3 * float(sigma.max()))), h - 1, w - 1)
    if radius < 1:
        return x
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(t * c, dim=0)  # (B*T*C, K)
    y = x.reshape(1, b * t * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * t * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b * t * c)
    return y.view(b, t, c, h, w)


def augment_view(clips: torch.Tensor, recipe: ViewRecipe, generator: torch.Generator | None = None) -> torch.Tensor:
    """One view of every clip: (B, T, C, H, W) in [-1, 1] -> (B, T, C, h, w) in [-1, 1], ``(h, w) = recipe.size``.

    One draw per sample, shared by all its frames (module docstring for the ops and their strengths). The number and
    order of draws from ``generator`` do not depend on their outcomes, so a seed fixes every view of a batch.
    """
    b, t, c, h, w = clips.shape
    oh, ow = recipe.size if recipe.size is not None else (h, w)
    dev = clips.device
    area = _uniform(b, recipe.scale[0], recipe.scale[1], generator, dev)
    ratio = torch.exp(_uniform(b, math.log(ASPECT_RATIOS[0]), math.log(ASPECT_RATIOS[1]), generator, dev))
    # Half-extents of the crop box in grid_sample's normalised coordinates (the frame spans [-1, 1]) = side shares.
    fw = torch.sqrt(area * ratio * h / w).clamp(max=1.0)
    fh = torch.sqrt(area / ratio * w / h).clamp(max=1.0)
    cx = (2 * _uniform(b, 0, 1, generator, dev) - 1) * (1 - fw)
    cy = (2 * _uniform(b, 0, 1, generator, dev) - 1) * (1 - fh)
    flip = _uniform(b, 0, 1, generator, dev) < FLIP_P
    jitter = _uniform(b, 0, 1, generator, dev) < JITTER_P
    bright = _uniform(b, 1 - BRIGHTNESS, 1 + BRIGHTNESS, generator, dev)
    contrast = _uniform(b, 1 - CONTRAST, 1 + CONTRAST, generator, dev)
    gray = _uniform(b, 0, 1, generator, dev) < GRAYSCALE_P
    blur = _uniform(b, 0, 1, generator, dev) < recipe.blur_p
    sigma = _uniform(b, *BLUR_SIGMA, generator, dev) * (h / BLUR_REFERENCE_SIZE)
    solarize = _uniform(b, 0, 1, generator, dev) < recipe.solarize_p

    zero = torch.zeros_like(fw)
    theta = torch.stack([torch.stack([torch.where(flip, -fw, fw), zero, cx], dim=1),
                         torch.stack([zero, fh, cy], dim=1)], dim=1).to(clips.dtype)
    grid = F.affine_grid(theta, [b, t * c, oh, ow], align_corners=False)
    x = F.grid_sample(clips.reshape(b, t * c, h, w), grid, mode="bilinear", padding_mode="border",
                      align_corners=False).view(b, t, c, oh, ow)

    def per_sample(v: torch.Tensor) -> torch.Tensor:
        return v.to(x.dtype).view(b, 1, 1, 1, 1)

    def where(mask: torch.Tensor, a: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.view(b, 1, 1, 1, 1), a, other)

    x = (x + 1) / 2
    bright = torch.where(jitter, bright, torch.ones_like(bright))
    contrast = torch.where(jitter, contrast, torch.ones_like(contrast))
    x = (x * per_sample(bright)).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3, 4), keepdim=True)
    x = ((x - mean) * per_sample(contrast) + mean).clamp(0, 1)
    if c == 3:
        x = where(gray, _gray(x).expand_as(x), x)
    x = where(blur, _blur(x, sigma.to(x.dtype)), x)
    x = where(solarize, torch.where(x >= SOLARIZE_THRESHOLD, 1 - x, x), x)
    return (x * 2 - 1).clamp(-1, 1)  # blur and luma sums may round a hair past the ends


def _frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


class _EmaPretrainer(Pretrainer):
    """What BYOL and DINO share: the model's encoder as the online network, an EMA target, the views, the export."""

    method = ""

    def __init__(self, model: nn.Module, config: Any):
        super().__init__()
        if not isinstance(getattr(model, "encoder", None), Conv3dResNetEncoder):
            raise ValueError(f"{self.method} pretrains a model whose .encoder is a Conv3dResNetEncoder "
                             f"(conv3d_resnet_gru); got {type(model).__name__}")
        # The model's own encoder, not a copy: pretraining trains the network the trial built. The rest of the model
        # (GRU, heads) is not registered here, so the optimiser of this module never sees it.
        self.encoder: Conv3dResNetEncoder = model.encoder
        self._to_model_channels = model._to_model_channels
        self.ema_momentum = float(config.ema_momentum)
        self.global_scale = (float(config.global_crop_scale), 1.0)

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, EMA copy) module pairs."""
        raise NotImplementedError

    def _global_recipes(self) -> tuple[ViewRecipe, ViewRecipe]:
        return (ViewRecipe(self.global_scale, None, blur_p=1.0, solarize_p=0.0),
                ViewRecipe(self.global_scale, None, blur_p=0.1, solarize_p=0.2))

    def _embed(self, encoder: nn.Module, views: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) -> (N, F): the encoder's per-frame features averaged over time."""
        return encoder(views.transpose(1, 2)).mean(dim=1)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Move the EMA copies towards the online networks with the momentum of ``step`` (module docstring)."""
        tau = ema_momentum_at(self.ema_momentum, step, total_steps)
        for online, target in self._pairs():
            for p_online, p_target in zip(online.parameters(), target.parameters()):
                p_target.mul_(tau).add_(p_online.detach(), alpha=1.0 - tau)
            for b_online, b_target in zip(online.buffers(), target.buffers()):
                b_target.copy_(b_online)

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._to_model_channels(clips).transpose(1, 2))

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The online encoder's tensors as ``encoder.<name>``: the prefix ``Conv3dResNetGRU(pretext_checkpoint=...)``
        strips, and the model's own key when the file is loaded as a whole-model checkpoint."""
        return {f"encoder.{k}": v.detach().to("cpu", copy=True) for k, v in self.encoder.state_dict().items()}


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """BYOL's projector / predictor: Linear-BN-ReLU-Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class BYOL(_EmaPretrainer):
    """Bootstrap Your Own Latent (Grill et al. 2020) around the 3D-conv + ResNet-18 encoder.

    Online: encoder -> projector -> predictor; target: EMA of encoder -> projector, no gradient. Loss per pair of
    views: 2 - 2 cos(predictor(online(v1)), target(v2)), plus the same with the views swapped (BYOL's symmetrised
    loss; each term is the mean over the batch, so the loss lies in [0, 8]). Crops: ``global_crop_scale`` is one
    setting for both methods with DINO's 0.4 as its default; BYOL's own is 0.08, which a BYOL study sets.
    """

    method = "byol"

    def __init__(self, model: nn.Module, config: Any):
        super().__init__(model, config)
        width = self.encoder.num_features
        self.projector = _mlp(width, config.byol_hidden, config.byol_proj_dim)
        self.predictor = _mlp(config.byol_proj_dim, config.byol_hidden, config.byol_proj_dim)
        self.target_encoder = _frozen_copy(self.encoder)
        self.target_projector = _frozen_copy(self.projector)

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def draw_views(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """The two augmented views of ``clips`` (after the model's channel conversion)."""
        x = self._to_model_channels(clips)
        return [augment_view(x, recipe, generator) for recipe in self._global_recipes()]

    def forward(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        views = torch.cat(self.draw_views(clips, generator))
        pred = self.predictor(self.projector(self._embed(self.encoder, views)))
        with torch.no_grad():
            target = self.target_projector(self._embed(self.target_encoder, views))
        p1, p2 = F.normalize(pred, dim=-1).chunk(2)
        z1, z2 = F.normalize(target, dim=-1).chunk(2)
        cos = torch.cat([(p1 * z2).sum(dim=-1), (p2 * z1).sum(dim=-1)])
        n = p1.shape[0]
        loss = (2 - 2 * cos[:n]).mean() + (2 - 2 * cos[n:]).mean()
        return {"loss": loss, "cos": cos.mean().detach()}


class DINOHead(nn.Module):
    """DINO's projection head: 3-layer MLP with GELU (``in -> hidden -> hidden -> bottleneck``), L2 normalisation,
    and a weight-normalised linear layer without bias to ``out_dim`` whose gain is fixed at 1 (each output is the
    cosine between the bottleneck vector and a learned prototype direction)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.Linear(bottleneck, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer.weight, dim=1))


class DINO(_EmaPretrainer):
    """Self-distillation with no labels (Caron et al. 2021) around the 3D-conv + ResNet-18 encoder.

    Student: encoder -> :class:`DINOHead` on all views (2 global + ``dino_local_crops`` local); teacher: EMA of both,
    no gradient, on the 2 global views. Loss: the mean over every (teacher view, student view) pair of different
    views of the cross-entropy - sum softmax((t - centre) / teacher_temp) * log_softmax(s / student_temp), each
    averaged over the batch. The centre (buffer ``center``, saved with the state) is an EMA of the teacher outputs'
    mean, updated in ``after_step`` (module docstring). Logged besides the loss: ``teacher_entropy`` and ``kl``, the
    loss's exact split into the teacher's mean entropy and the student's mean KL divergence from the teacher.
    """

    method = "dino"

    def __init__(self, model: nn.Module, config: Any):
        super().__init__(model, config)
        self.head = DINOHead(self.encoder.num_features, config.dino_out_dim, config.dino_hidden,
                             config.dino_bottleneck)
        self.teacher_encoder = _frozen_copy(self.encoder)
        self.teacher_head = _frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(config.dino_out_dim))
        self.student_temp = float(config.dino_student_temp)
        self.teacher_temp = float(config.dino_teacher_temp)
        self.center_momentum = float(config.dino_center_momentum)
        self.local_crops = int(config.dino_local_crops)
        self.local_scale = (LOCAL_MIN_SCALE, float(config.local_crop_scale))
        # Teacher outputs of the training forwards since the last step: plain attributes, not buffers, so that DDP's
        # buffer broadcast never overwrites one worker's share with another's.
        self._pending_sum: torch.Tensor | None = None
        self._pending_count = 0

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.teacher_encoder), (self.head, self.teacher_head)]

    def local_size(self, h: int, w: int) -> tuple[int, int]:
        return max(1, round(h * LOCAL_SIZE_RATIO)), max(1, round(w * LOCAL_SIZE_RATIO))

    def draw_views(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """The 2 global views, then the local ones, of ``clips`` (after the model's channel conversion)."""
        x = self._to_model_channels(clips)
        local = ViewRecipe(self.local_scale, self.local_size(*x.shape[-2:]), blur_p=0.5, solarize_p=0.0)
        recipes = [*self._global_recipes(), *[local] * self.local_crops]
        return [augment_view(x, recipe, generator) for recipe in recipes]

    def teacher_logits(self, global_views: list[torch.Tensor]) -> torch.Tensor:
        """Teacher outputs for the global views, (2B, out_dim), before centring."""
        with torch.no_grad():
            return self.teacher_head(self._embed(self.teacher_encoder, torch.cat(global_views)))

    def forward(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        views = self.draw_views(clips, generator)
        n_global = 2
        # One pass per resolution (the global views share one size, the local ones another).
        student = list(self.head(self._embed(self.encoder, torch.cat(views[:n_global]))).chunk(n_global))
        if len(views) > n_global:
            student += self.head(self._embed(self.encoder, torch.cat(views[n_global:]))).chunk(len(views) - n_global)
        teacher = self.teacher_logits(views[:n_global])
        teacher_probs = F.softmax((teacher - self.center) / self.teacher_temp, dim=-1).chunk(n_global)
        student_logp = [F.log_softmax(s / self.student_temp, dim=-1) for s in student]
        total, terms = 0.0, 0
        for iq, q in enumerate(teacher_probs):
            for iv, logp in enumerate(student_logp):
                if iv == iq:
                    continue
                total = total + (-q * logp).sum(dim=-1).mean()
                terms += 1
        if self.training and torch.is_grad_enabled():
            batch_sum = teacher.float().sum(dim=0)  # float32 even under autocast: the count must stay exact
            self._pending_sum = batch_sum if self._pending_sum is None else self._pending_sum + batch_sum
            self._pending_count += teacher.shape[0]
        loss = total / terms
        # Every teacher view meets the same number of student views, so the loss splits exactly into the teacher's
        # mean entropy (raised on purpose by centring, lowered by sharpening) and the student's mean KL divergence
        # from the teacher (what the student's gradient lowers): the two numbers that show collapse or progress.
        probs = torch.cat(teacher_probs)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()
        return {"loss": loss, "teacher_entropy": entropy.detach(), "kl": (loss.detach() - entropy)}

    def forget_pending(self) -> None:
        self._pending_sum, self._pending_count = None, 0

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA of the teacher (base class), then the centre: c <- m c + (1 - m) mean of the teacher outputs since the
        last step, the mean taken over every worker's samples."""
        super().after_step(step, total_steps)
        if self._pending_sum is None:
            return
        stats = torch.cat([self._pending_sum, self._pending_sum.new_tensor([float(self._pending_count)])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        mean = stats[:-1] / stats[-1]
        self.center.mul_(self.center_momentum).add_(mean, alpha=1.0 - self.center_momentum)
        self.forget_pending()


@register_method("byol")
def byol(model: nn.Module, config: Any) -> BYOL:
    """BYOL around ``model``'s 3D-conv + ResNet-18 encoder (``ema_momentum``, ``byol_*``, ``global_crop_scale``)."""
    return BYOL(model, config)


@register_method("dino")
def dino(model: nn.Module, config: Any) -> DINO:
    """DINO around ``model``'s 3D-conv + ResNet-18 encoder (``ema_momentum``, ``dino_*``, the crop scales)."""
    return DINO(model, config)
