"""The video transformers and MIMAMO inside the training loop: layer-wise learning-rate decay reaches AdamW,
every backbone with layer-decay depths is declared for the ``layer_decay`` setting, and Aff-Wild2's rule for label
steps without a face is what validation scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.backbone_catalog import LAYER_DECAY_BACKBONES
from trainables.config import TrialConfig
from trainables.data.cache import CachedVideo
from trainables.loop import build_model, faceless_rule, optimizer_groups
from trainables.models import create_backbone, list_backbones


def test_layer_decay_applies_to_every_backbone_with_layer_depths():
    with_depths = {name for name in list_backbones()
                   if callable(getattr(create_backbone(name, **_small(name)), "layer_id", None))}
    assert with_depths == set(LAYER_DECAY_BACKBONES)


def _small(name: str) -> dict:
    # the full-size backbones are only built to ask for layer_id; keep them cheap
    return {"embed_dim": 48, "depth": 2, "num_heads": 3} if name == "video_vit" else \
        {"embed_dim": 48, "depths": (1, 1, 1), "num_heads": 3} if name == "tpsbt" else \
        {"cnn": "test_resnet"} if name in ("mimamo", "cnn_rnn", "i3d") else {}


@pytest.mark.parametrize("backbone", ["video_vit_tiny", "tpsbt_tiny"])
def test_layer_decay_reaches_the_optimizer(backbone):
    cfg = TrialConfig.from_dict({"backbone": backbone, "lr": 1e-3, "weight_decay": 0.05, "layer_decay": 0.5})
    model = build_model(cfg, out_dims=2, in_chans=3)
    groups = optimizer_groups(model, cfg)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    top = model.depth + 1
    assert lrs == sorted({1e-3 * 0.5 ** (top - i) for i in range(top + 1)})
    assert opt.param_groups[0]["lr"] == 1e-3  # the head's group first: the lr a run logs
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(1 for p in model.parameters() if p.requires_grad)
    # off (the default) and for a backbone without depths: one plain group at lr
    plain = TrialConfig.from_dict({"backbone": backbone, "lr": 1e-3})
    assert torch.optim.AdamW(optimizer_groups(model, plain), lr=1e-3).param_groups[0]["lr"] == 1e-3
    assert len(torch.optim.AdamW(optimizer_groups(model, plain), lr=1e-3).param_groups) == 1


def test_layer_decay_is_refused_for_a_backbone_without_layer_depths():
    from trainables.errors import ConfigError

    with pytest.raises(ConfigError, match="layer_decay"):
        TrialConfig.from_dict({"backbone": "cnn_rnn_tiny", "layer_decay": 0.75})


def _video(valid: list[bool], labels: np.ndarray) -> CachedVideo:
    n = len(valid)
    return CachedVideo(video_id="v", frames=np.zeros((n, 4, 4, 3), np.uint8), valid=np.array(valid),
                       scores=np.ones(n, np.float32), labels=labels.astype(np.float32), meta={"fps": 25.0},
                       label_frames=np.arange(n))


def test_affwild2_rule_repeats_the_previous_prediction_and_scores_nothing_before_the_first_face():
    valid = [False, False, True, True, False, False, True, False]
    labels = np.linspace(-1, 1, 16).reshape(8, 2)
    preds = {"v": np.arange(16, dtype=np.float32).reshape(8, 2)}
    video = _video(valid, labels)
    same, truth = faceless_rule([video], preds, "model")
    assert same is preds and truth["v"] is video.labels
    filled, truth = faceless_rule([video], preds, "affwild2")
    # face-less steps 4, 5 repeat step 3; step 7 repeats step 6; steps 0-1 keep the model's values, unscored
    assert filled["v"].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [6, 7], [6, 7], [12, 13], [12, 13]]
    assert np.isnan(truth["v"][:2]).all() and np.array_equal(truth["v"][2:], labels[2:].astype(np.float32))
