"""Read pretrained transformer weights from the layouts they are published in, and report what a load used.

Video transformers (VideoMAE for paper 000, TPSBT for paper 002) come as either a ``transformers`` ``save_pretrained``
folder or as the authors' own ``torch.save`` file, whose key names differ from our modules'. This module only gets the
tensors out of the file (:func:`read_state_dict`) and turns a ``load_state_dict(strict=False)`` into a
:class:`LoadReport` (:func:`load_mapped`); renaming keys is each model's job, since only the model knows its layout.

Every failure a user can fix (wrong path, unreadable file, a checkpoint of another model size) is a
:class:`~trainables.errors.ConfigError` that names the path and, where it helps, the layouts that are accepted.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from trainables.errors import ConfigError
from trainables.models.pretrained import key_names
from trainables.models.pretrained import read_state_dict as _read_file

__all__ = ["ACCEPTED_LAYOUTS", "LoadReport", "load_mapped", "read_state_dict"]

log = logging.getLogger(__name__)

ACCEPTED_LAYOUTS = ("a transformers save_pretrained folder (config.json with model.safetensors, "
                    "model.safetensors.index.json or pytorch_model.bin), a .safetensors file, or a torch .pth/.pt/.bin "
                    "file holding a state dict (at the top level or under 'model' or 'module')")

# Looked for in this order inside a save_pretrained folder: safetensors first (no unpickling at all).
_FOLDER_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _folder_weights(folder: Path) -> list[Path]:
    """The weight files of a save_pretrained folder (several when the save was sharded)."""
    for name in _FOLDER_FILES:
        candidate = folder / name
        if not candidate.is_file():
            continue
        if not name.endswith(".index.json"):
            return [candidate]
        try:
            weight_map = json.loads(candidate.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"checkpoint folder {folder}: {name} is not a shard index with a 'weight_map' "
                              f"({type(exc).__name__}: {exc})") from exc
        # dict.fromkeys keeps the shards in first-mention order without repeats.
        return [folder / shard for shard in dict.fromkeys(weight_map.values())]
    raise ConfigError(f"checkpoint folder {folder} has none of {', '.join(_FOLDER_FILES)}; "
                      f"accepted: {ACCEPTED_LAYOUTS}")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the flat ``{name: tensor}`` mapping stored at ``path``, keys exactly as the file writes them.

    Args:
        path: a ``transformers`` ``save_pretrained`` folder, a ``.safetensors`` file, or a ``torch.save`` file
            (``.pth`` / ``.pt`` / ``.bin``) whose state dict is the saved object itself or sits under ``model`` or
            ``module`` (the official VideoMAE scripts use both; other common wrappers such as ``state_dict`` are
            unwrapped too). Torch files are read as data (``trainables.torchfile``): a file that pickles
            arbitrary objects is refused rather than executed.

    Raises:
        ConfigError: the path does not exist, is not readable as one of the accepted layouts, or holds no tensors;
            the message names the path and the accepted layouts.
    """
    path = Path(path)
    if path.is_dir():
        files = _folder_weights(path)
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(f"checkpoint not found: {path}; accepted: {ACCEPTED_LAYOUTS}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(_read_file(file))
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"cannot read checkpoint {path}: {exc}; accepted: {ACCEPTED_LAYOUTS}") from exc
    return state


@dataclass
class LoadReport:
    """What a checkpoint load did, keyed by the model's names after any renaming.

    Attributes:
        path: the checkpoint.
        loaded: model keys that received a tensor from the file.
        missing: model keys the file had nothing for; they keep their fresh initialisation (a model-specific head, for
            instance, is expected here).
        unexpected: file keys that no model key took, and that the model's mapping did not expect either: a sign of a
            checkpoint from another architecture or a key-mapping gap.
        ignored: file keys deliberately left out by the model's mapping (a pretraining decoder, a classifier for
            other targets, a position table rebuilt at run time).
    """

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def text(self, limit: int = 5) -> str:
        """One line for logs: the counts, then up to ``limit`` names of each non-empty category but ``loaded``."""
        parts = [f"{self.path}: loaded {len(self.loaded)}, missing {len(self.missing)}, "
                 f"unexpected {len(self.unexpected)}, ignored {len(self.ignored)}"]
        parts += [f"{label}: {key_names(keys, limit)}" for label, keys in
                  (("missing", self.missing), ("unexpected", self.unexpected), ("ignored", self.ignored)) if keys]
        return "; ".join(parts)

    __str__ = text


def load_mapped(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike[str],
                ignored: Iterable[str] = ()) -> LoadReport:
    """Load ``state`` (already renamed to the model's keys) into ``model`` non-strictly and log a :class:`LoadReport`.

    Args:
        model: the target, changed in place.
        state: tensors keyed by model key; keys the model does not have are reported as unexpected, not loaded.
        path: the checkpoint, for the report and error messages.
        ignored: file keys the caller dropped on purpose, passed through to the report.

    Raises:
        ConfigError: a tensor's shape differs from the model's (typically a checkpoint of another model size); nothing
            is loaded then, and the message lists the first differing keys with both shapes.
    """
    own = model.state_dict()
    mismatched = [f"{k} file {list(v.shape)} vs model {list(own[k].shape)}" for k, v in state.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        more = f" (+{len(mismatched) - 5} more)" if len(mismatched) > 5 else ""
        raise ConfigError(f"checkpoint {path} does not fit the model (another model size?): "
                          f"{'; '.join(mismatched[:5])}{more}")
    result = model.load_state_dict(dict(state), strict=False)
    report = LoadReport(path=os.fspath(path), loaded=[k for k in own if k in state],
                        missing=list(result.missing_keys), unexpected=list(result.unexpected_keys),
                        ignored=list(ignored))
    # Nothing loaded or stray keys mean the mapping and the file disagree: worth a warning, not just an info line.
    level = logging.WARNING if (not report.loaded or report.unexpected) else logging.INFO
    log.log(level, "checkpoint %s", report.text())
    return report
