"""Backbones chosen by name: ``create_backbone(name, **kwargs)``; the shipped names are listed in
``trainables.backbone_catalog``."""
from trainables.models.registry import backbone_arguments, create_backbone, list_backbones, register_backbone

# Importing the family modules registers their backbones.
from trainables.models import cnn_rnn as _cnn_rnn  # noqa: F401,E402
from trainables.models import conv3d_resnet_gru as _conv3d_resnet_gru  # noqa: F401,E402
from trainables.models import i3d as _i3d  # noqa: F401,E402
from trainables.models import mimamo as _mimamo  # noqa: F401,E402
from trainables.models import video_vit as _video_vit  # noqa: F401,E402
from trainables.models import tpsbt as _tpsbt  # noqa: F401,E402

__all__ = ["backbone_arguments", "create_backbone", "list_backbones", "register_backbone"]
