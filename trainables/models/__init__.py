"""Backbones chosen by name: ``create_backbone("cnn_rnn", ...)``."""
from trainables.models.registry import create_backbone, list_backbones, register_backbone

# Importing the family modules registers their backbones.
from trainables.models import cnn_rnn as _cnn_rnn  # noqa: F401,E402

__all__ = ["create_backbone", "list_backbones", "register_backbone"]
