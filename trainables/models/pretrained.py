"""Initialise a model from a local checkpoint file and say exactly what was loaded.

Checkpoints written by other code rarely match a model's ``state_dict`` key for key: the tensors sit under a wrapper key
(``{"model": ...}``, ``{"state_dict": ...}``, ``{"module": ...}``) and carry the prefixes of whatever wrapped the
network when it was saved (``module.`` from DataParallel, ``encoder.`` / ``backbone.`` from self-supervised pretext
code). Loading is therefore non-strict by default and every call returns a :class:`LoadReport` (loaded, missing,
unexpected, shape-mismatched keys) that is also logged, so a silent half-initialised network shows up in the trial log.

Key rule: a file key is used as it is when the model has that key; otherwise the listed prefixes are stripped from its
front, one at a time and repeatedly (``module.encoder.conv1.weight`` -> ``conv1.weight``), until it matches a model key
or no prefix applies. Stripping only on a miss lets one file serve both a model that keeps the wrapper's name
(``encoder.stem...`` into a model with an ``encoder`` submodule) and one that does not.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["LoadReport", "apply_state_dict", "checkpoint_path", "load_checkpoint_into", "match_state_dict",
           "read_state_dict"]

log = logging.getLogger(__name__)

DEFAULT_PREFIXES: tuple[str, ...] = ("module.", "encoder.", "backbone.")
# Wrapper keys under which training code commonly nests the weights, tried in this order at every nesting level.
WRAPPER_KEYS: tuple[str, ...] = ("model", "state_dict", "module", "model_state_dict", "model_state", "net", "network",
                                 "weights")


def key_names(keys: Sequence[str], limit: int = 5) -> str:
    """Up to ``limit`` of ``keys``, comma-separated, and how many more there are: one line of a load report."""
    more = f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


@dataclass
class LoadReport:
    """What :func:`load_checkpoint_into` did.

    Attributes:
        loaded: model keys that received a tensor from the file.
        missing: model keys the file had nothing for (they keep their current values).
        unexpected: file keys (as written in the file) that matched no model key.
        mismatched: model keys the file had a tensor for, but of another shape (not loaded); shapes in ``shapes``.
        path: the checkpoint file.
        mapping: file key -> model key for every loaded tensor (shows which prefixes were stripped).
        shapes: model key -> (shape in the file, shape in the model) for every mismatched key.
    """

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    path: str = ""
    mapping: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every model key was loaded and every file key was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 5) -> str:
        """One line for logs: counts, then up to ``limit`` names of each problem category."""
        parts = [f"{self.path}: loaded {len(self.loaded)}, missing {len(self.missing)}, "
                 f"unexpected {len(self.unexpected)}, shape-mismatched {len(self.mismatched)}"]
        if self.missing:
            parts.append(f"missing: {key_names(self.missing, limit)}")
        if self.unexpected:
            parts.append(f"unexpected: {key_names(self.unexpected, limit)}")
        if self.mismatched:
            parts.append("shape-mismatched: " + key_names(
                [f"{k} file {list(self.shapes[k][0])} vs model {list(self.shapes[k][1])}" for k in self.mismatched],
                limit))
        return "; ".join(parts)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Descend through wrapper keys until a flat {name: tensor} mapping is found."""
    seen_keys: list[str] = []
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict "
                             f"(a mapping of parameter names to tensors)")
        seen_keys = [str(k) for k in obj]
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            # Mixed dicts such as {"conv.weight": tensor, "epoch": 3}: keep the tensors if there are any.
            tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
            raise ValueError(f"checkpoint {path} has no state dict: top-level keys {seen_keys[:20]}; expected tensors "
                             f"or one of the wrapper keys {list(WRAPPER_KEYS)}")
        obj = inner
    return dict(obj)  # type: ignore[arg-type]


def checkpoint_path(pretrained: str | os.PathLike[str] | bool | None) -> str | None:
    """Normalise a backbone's ``pretrained`` argument: a checkpoint path, or None / False / "" for none.

    Raises:
        ValueError: ``pretrained=True`` (hub downloads are not used here; pass a local checkpoint file) or another type.
    """
    if pretrained is None or pretrained is False or pretrained == "":
        return None
    if pretrained is True:
        raise ValueError("pretrained=True would download weights; pass the path of a local checkpoint file instead")
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ValueError(f"pretrained must be a checkpoint path or None, got {type(pretrained).__name__}")
    return os.fspath(pretrained)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the flat ``{name: tensor}`` state dict stored in ``path``.

    Accepts ``torch.save`` files (a state dict, or one nested under ``model`` / ``state_dict`` / ``module`` / ... at any
    depth) and ``.safetensors`` files. Torch files are read as data by :func:`trainables.torchfile.load_torch_file`:
    tensors, plain containers and the ``args`` namespace the papers' scripts store, never arbitrary objects (a
    checkpoint that pickles whole modules or custom classes is refused, naming them; re-save its ``state_dict()``).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: ``path`` is not a torch/safetensors checkpoint or holds no tensors (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors ships with timm
            raise ValueError(f"checkpoint {path} is a safetensors file but safetensors is not installed") from exc
        try:
            return _unwrap(load_file(str(path)), path)
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"checkpoint {path} is not a readable safetensors file: {exc}") from exc
    from trainables.torchfile import load_torch_file

    return _unwrap(load_torch_file(path), path)  # a DataError (a ValueError) names the file and what it holds


def _map_key(key: str, model_keys: Mapping[str, object], prefixes: Sequence[str]) -> str:
    """Strip prefixes from the front of ``key`` until it is a model key or no prefix applies."""
    while key not in model_keys:
        for prefix in prefixes:
            if prefix and key.startswith(prefix):
                key = key[len(prefix):]
                break
        else:
            break
    return key


def match_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *,
                     prefixes: Sequence[str] = DEFAULT_PREFIXES,
                     rename: Sequence[tuple[str, str]] = (),
                     path: str = "") -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Plan a load without touching ``model``: which file tensor goes to which model key.

    Args:
        model: the target.
        state: a flat state dict (e.g. from :func:`read_state_dict`).
        prefixes: stripped from file keys that do not match as they are (see the module docstring).
        rename: optional ``(regex, replacement)`` pairs applied to every file key (``re.sub``) before prefix
            stripping, for checkpoints whose layer names differ (e.g. ``(r"^frontend3D\\.0\\.", "stem.conv.")``).
        path: only used to label the report.

    Returns:
        (the tensors to load keyed by model key, the report). When two file keys map to the same model key, an exact
        match wins over a stripped one, otherwise the first in file order; the loser is reported as unexpected.
    """
    target = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    mapping: dict[str, str] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    # Exact names first so that a stripped key never displaces a tensor saved under the model's own name.
    ordered = sorted(state.items(), key=lambda kv: kv[0] not in target)
    for file_key, tensor in ordered:
        key = file_key
        for pattern, repl in rename:
            key = re.sub(pattern, repl, key)
        key = _map_key(key, target, prefixes)
        if key not in target or key in to_load or key in shapes:
            unexpected.append(file_key)
            continue
        if tuple(tensor.shape) != tuple(target[key].shape):
            mismatched.append(key)
            shapes[key] = (tuple(tensor.shape), tuple(target[key].shape))
            continue
        to_load[key] = tensor
        mapping[file_key] = key
    missing = [k for k in target if k not in to_load and k not in shapes]
    order = {k: i for i, k in enumerate(target)}
    file_order = {k: i for i, k in enumerate(state)}
    report = LoadReport(loaded=sorted(to_load, key=order.__getitem__), missing=missing,
                        unexpected=sorted(unexpected, key=file_order.__getitem__),
                        mismatched=sorted(mismatched, key=order.__getitem__), path=str(path), mapping=mapping,
                        shapes=shapes)
    return to_load, report


def apply_state_dict(model: nn.Module, to_load: Mapping[str, torch.Tensor]) -> None:
    """Copy planned tensors into ``model`` (a partial ``load_state_dict`` that keeps every other key as it is)."""
    # load_state_dict(strict=False) rather than copying by hand so module hooks (e.g. masked inflated convs refreshing
    # their frozen centre) see the new values.
    result = model.load_state_dict(dict(to_load), strict=False)
    if result.unexpected_keys:  # cannot happen for a plan from match_state_dict; guards hand-built plans
        raise KeyError(f"keys not in the model: {result.unexpected_keys[:10]}")


def load_checkpoint_into(model: nn.Module, path: str | os.PathLike[str], *,
                         prefixes: Sequence[str] = DEFAULT_PREFIXES,
                         strict: bool = False,
                         rename: Sequence[tuple[str, str]] = ()) -> LoadReport:
    """Load the tensors of checkpoint ``path`` into ``model`` and report the key mapping.

    Tensors whose (prefix-stripped) name is a model key of the same shape are copied; everything else is reported,
    never silently dropped: ``missing`` model keys keep their current (e.g. random) values, ``unexpected`` file keys
    and ``mismatched`` shapes are skipped. The report is logged (INFO, or WARNING when nothing was loaded or shapes
    disagree).

    Args:
        model: the module to initialise, in place.
        path: a ``torch.save`` file or ``.safetensors`` file (see :func:`read_state_dict`).
        prefixes: wrapper prefixes stripped from file keys that do not match as they are.
        strict: raise instead of loading when anything is missing, unexpected or mismatched (the model is then left
            untouched).
        rename: ``(regex, replacement)`` pairs applied to file keys first (see :func:`match_state_dict`).

    Returns:
        The :class:`LoadReport`.

    Raises:
        FileNotFoundError / ValueError: see :func:`read_state_dict`.
        RuntimeError: ``strict`` and the file does not match the model exactly (message: the report summary).
    """
    state = read_state_dict(path)
    to_load, report = match_state_dict(model, state, prefixes=prefixes, rename=rename, path=str(path))
    if strict and not report.ok:
        raise RuntimeError(f"strict checkpoint load failed: {report.summary()}")
    apply_state_dict(model, to_load)
    level = logging.WARNING if (not report.loaded or report.mismatched) else logging.INFO
    log.log(level, "checkpoint %s", report.summary())
    return report
