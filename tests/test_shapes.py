"""The shape rules of ``trainables.shapes`` against the models themselves: for every shipped backbone, a real forward
pass over a grid of clip shapes; an accepted or padded shape runs and gives the expected outputs, a refused one raises
in the model. And the module stays importable without torch (the sweep's driver imports it before Ray starts)."""
from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch

from trainables.backbone_catalog import SHIPPED
from trainables.shapes import (ACCEPTED, BACKBONES, FAMILIES, PADDED, REFUSED, clip_frames, cnn_min_side,
                               frame_verdict, input_verdict, max_pyramid_levels)

# Constructor arguments that keep each forward pass in milliseconds; the rule-relevant ones (patch_size, cnn,
# pyramid_levels, phase_size) go to the rule too, so model and rule see the same settings.
SMALL: dict[str, dict] = {
    "video_vit": {"embed_dim": 24, "depth": 1, "num_heads": 2, "img_size": 16},
    "video_vit_tiny": {},
    "tpsbt": {"embed_dim": 24, "depths": (1, 1, 1), "num_heads": 2, "img_size": 16},
    "tpsbt_base": {"embed_dim": 24, "depths": (1, 1, 1), "num_heads": 2, "img_size": 16},  # its pins, made small
    "tpsbt_tiny": {},
    "cnn_rnn": {"cnn": "test_resnet", "hidden": 8},
    "cnn_rnn_tiny": {"hidden": 8},
    "i3d": {"cnn": "test_resnet", "head_hidden": 8},
    "i3d_tiny": {"head_hidden": 8},
    "mimamo": {"cnn": "test_resnet", "temporal_channels": 4, "feature_dim": 8, "hidden": 8, "layers": 1},
    "mimamo_tiny": {},
    "conv3d_resnet_gru": {"stem_channels": 8, "widths": (8, 8, 8, 8), "blocks": (1, 1, 1, 1), "hidden": 8,
                          "layers": 1},
    "conv3d_resnet_gru_tiny": {},
}
RULE_ARGS = ("cnn", "patch_size", "tubelet_size", "pyramid_levels", "pyramid_extension", "phase_size", "depths")
SIDES = (4, 8, 16, 17, 24, 31, 32)
FRAMES = (1, 2, 3, 5, 8)
B, OUT = 2, 2  # two clips: a batch, as training runs (a single-patch TPSBT input once failed only in one)
_MODELS: dict[tuple, torch.nn.Module] = {}


def _model(name: str, **extra) -> torch.nn.Module:
    from trainables.models import create_backbone

    key = (name, tuple(sorted(extra.items())))
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = create_backbone(name, out_dims=OUT, **{**SMALL[name], **extra}).eval()
    return _MODELS[key]


def _check(name: str, height: int, width: int, frames: int, **extra) -> str:
    """Run backbone ``name`` on one clip shape and compare with the rule's verdict; returns the verdict's status."""
    args = {k: v for k, v in {**SMALL[name], **extra}.items() if k in RULE_ARGS}
    verdict = input_verdict(name, height, width, frames, args)
    assert verdict.checked, (name, verdict)
    model = _model(name, **extra)
    clip = torch.randn(B, frames, 3, height, width, generator=torch.Generator().manual_seed(0))
    if verdict.status == REFUSED:
        with pytest.raises((ValueError, RuntimeError)), torch.no_grad():
            model(clip)
        return verdict.status
    with torch.no_grad():
        out = model(clip)
        assert out["window"].shape == (B, OUT), (name, height, width, frames)
        if "frames" in out:
            assert out["frames"].shape == (B, frames, OUT)
        if verdict.tokens is not None:
            assert model.forward_features(clip).shape[:2] == (B, verdict.tokens), (name, height, width, frames)
    return verdict.status


def test_every_shipped_backbone_has_a_rule_and_a_grid_case():
    assert set(BACKBONES) == set(SHIPPED) == set(SMALL)
    assert {family for family, _ in BACKBONES.values()} == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_rule_matches_a_real_forward_pass(name):
    seen = {_check(name, h, w, 2) for h, w in [*((s, s) for s in SIDES), (16, 24), (8, 20)]}
    seen |= {_check(name, 16, 16, t) for t in FRAMES} | {_check(name, 32, 32, 8)}
    family = BACKBONES[name][0]
    if family in ("patches", "pooled_patches"):
        assert seen == {ACCEPTED, PADDED, REFUSED}
    elif name in ("cnn_rnn_tiny", "i3d", "i3d_tiny", "mimamo", "mimamo_tiny"):
        # test_convnext: nothing under 32 pixels; inflated test_resnet: nothing under 17; MIMAMO: not one frame
        assert seen == {ACCEPTED, REFUSED}
    else:
        assert ACCEPTED in seen


def test_transformer_verdicts_in_numbers():
    vit = input_verdict("video_vit", 224, 224, 3)
    assert vit.status == PADDED and vit.tokens == 2 * 14 * 14 and "3 frames padded to 4" in vit.reason
    refused = input_verdict("video_vit", 100, 100, 16)
    assert refused.status == REFUSED
    assert refused.reason.startswith("input 100x100 is not a multiple of patch_size 16 for backbone video_vit")
    # 16 frames: 8 -> 4 -> 2 slices; 6 frames: 3 -> (pad to 4) 2 -> 1
    assert input_verdict("tpsbt", 160, 160, 16).tokens == 2 * 10 * 10
    six = input_verdict("tpsbt", 160, 160, 6)
    assert six.status == PADDED and six.tokens == 100 and "3 temporal slices padded to 4" in six.reason
    assert input_verdict("tpsbt_tiny", 32, 32, 16).tokens == 2 * 4 * 4


def test_cnn_families():
    assert [cnn_min_side(c) for c in ("resnet50", "test_resnet", "vgg16_bn", "test_convnext", "convnext_tiny",
                                      "efficientnet_b0")] == [1, 1, 32, 32, 32, None]
    assert input_verdict("cnn_rnn", 31, 40, 4, {"cnn": "vgg16"}).status == REFUSED
    assert input_verdict("cnn_rnn", 32, 40, 4, {"cnn": "vgg16"}).status == ACCEPTED
    assert not input_verdict("cnn_rnn", 32, 32, 4, {"cnn": "efficientnet_b0"}).checked


def test_vgg_pooling_needs_32_pixels():
    """One VGG (timm builds its 100M-weight pre-logits block too, a few seconds) on both sides of the boundary."""
    assert _check("cnn_rnn", 32, 40, 2, cnn="vgg11") == ACCEPTED
    assert _check("cnn_rnn", 31, 40, 2, cnn="vgg11") == REFUSED


@pytest.mark.parametrize("extension", [True, False])
@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_the_pyramid_levels_rule_matches_mimamo(levels, extension):
    sides = (2, 3, 4, 5, 8, 9)
    statuses = [_check("mimamo_tiny", s, s, 2, pyramid_levels=levels, pyramid_extension=extension) for s in sides]
    if extension:  # the 2s spectrum halves (rounding up) levels - 1 times; its quadrant must keep 2 pixels
        assert statuses == [ACCEPTED if s >= 2 ** (levels - 1) * 2 else REFUSED for s in sides]
    else:  # the frame's own spectrum halves (rounding up) levels - 1 times and must keep 2 pixels
        assert statuses == [ACCEPTED if s > 2 ** (levels - 1) or (levels == 1 and s >= 2) else REFUSED
                            for s in sides]
    assert _check("mimamo_tiny", 32, 32, 2, pyramid_levels=levels, phase_size=4) == (
        ACCEPTED if levels <= 2 else REFUSED)
    assert max_pyramid_levels(5, 5, extension=False) == 3 and max_pyramid_levels(1, 8, extension=False) == 0
    assert max_pyramid_levels(5, 5) == 2 and max_pyramid_levels(8, 8) == 3 and max_pyramid_levels(1, 8) == 0


def test_ssts_frame_counts():
    assert clip_frames("ssts", 24, 3, batch_size=8) == ((8,), clip_frames("ssts", 24, 3)[1])
    counts, verdict = clip_frames("ssts", 24, 5, batch_size=8)
    assert counts == (5, 4) and verdict.status == REFUSED and verdict.keys == ("ssts_stride", "clip_len", "batch_size")
    assert "allowed: ssts_stride in 1, 2, 3, 4, 6, 8, 12, 24" in verdict.reason
    assert clip_frames("ssts", 24, 5, batch_size=1)[1].status == ACCEPTED
    assert clip_frames("ssts", 4, 6)[1].status == REFUSED
    assert clip_frames("uniform", 24, 6, num_frames=16)[0] == (16,)


def test_an_uneven_ssts_stride_fails_a_real_training_batch():
    """What the SSTS rule guards against: the trial's own dataset and loader with clips of 5 and 4 frames."""
    import numpy as np

    from trainables.data.clips import ClipSpec

    spec = ClipSpec(length=24, clip_len=24, stride=5, sampler="ssts")
    lengths = {len(spec.sample(24, np.random.default_rng(seed))) for seed in range(40)}
    assert lengths == set(clip_frames("ssts", 24, 5)[0])
    batch = [torch.zeros(n, 3, 8, 8) for n in sorted(lengths)]
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        torch.utils.data.default_collate(batch)


def test_frame_verdict():
    assert frame_verdict(64, 64).status == ACCEPTED
    small = frame_verdict(48, 48)
    assert small.status == REFUSED and small.reason.startswith("frames of 48x48 pixels")


def test_the_module_imports_without_torch():
    code = ("import sys, trainables.shapes, cluster.preflight; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_either_side_breaks_the_patch_rule():
    statuses = {input_verdict("video_vit_tiny", h, w, 2).status for h, w in itertools.permutations((16, 20))}
    assert statuses == {REFUSED}


def test_the_rules_defaults_are_the_constructors():
    """The variant defaults the rules assume (patch and tubelet sizes, the CNN, the pyramid) are what the registered
    constructors build."""
    from trainables.models import create_backbone

    for name, (family, defaults) in BACKBONES.items():
        if family == "any":
            continue
        small = {k: v for k, v in SMALL[name].items() if k not in RULE_ARGS}
        # the paper-size CNNs are named, not built: their defaults are read from the signatures below
        paper_cnn = name in ("cnn_rnn", "i3d", "mimamo")
        model = create_backbone(name, **small, **({"cnn": "test_resnet"} if paper_cnn else {}))
        if family in ("patches", "pooled_patches"):
            assert (model.patch_size, model.tubelet_size) == (defaults["patch_size"], defaults["tubelet_size"]), name
        if family == "pooled_patches":
            assert len(model.depths) == defaults["stages"]
        if family == "cnn_pyramid":
            assert (model.pyramid.height, model.phase_size) == (defaults["pyramid_levels"], defaults["phase_size"])
        if "cnn" in defaults:
            cnn = model.spatial if family == "cnn_pyramid" else model.encoder
            built = getattr(cnn, "pretrained_cfg", {}).get("architecture")
            if name.endswith("_tiny"):
                assert built == defaults["cnn"], name
    import inspect

    from trainables.models.cnn_rnn import CnnRnn
    from trainables.models.i3d import I3D
    from trainables.models.mimamo import Mimamo

    assert [inspect.signature(c).parameters["cnn"].default for c in (CnnRnn, I3D, Mimamo)] == [
        BACKBONES["cnn_rnn"][1]["cnn"], BACKBONES["i3d"][1]["cnn"], BACKBONES["mimamo"][1]["cnn"]]
