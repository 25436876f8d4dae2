"""The one reader of weight files a backbone starts from, and the one report of what a load used.

Every backbone reads its ``pretrained`` / ``pretext_checkpoint`` / ``checkpoint`` setting here: the CNN-RNN, the 3D
ResNet-GRU, I3D, MIMAMO, VideoMAE's ViT (paper 000) and SVFAP's TPSBT (paper 002).

Files. A ``transformers`` ``save_pretrained`` folder (sharded or not), a ``.safetensors`` file, or a ``torch.save``
file. Torch files are read as data (:func:`trainables.torchfile.load_torch_file`: ``weights_only=True``, with the
``argparse.Namespace`` that VideoMAE's and SVFAP's ``utils.save_model`` store under ``"args"`` let through and any
other pickled class refused by name). The tensors may sit at the top level or under a wrapper key at any depth
(:data:`WRAPPER_KEYS`: the authors' scripts write ``{"model": ..., "optimizer": ..., "epoch": ..., "scaler": ...,
"args": ...}``, DeepSpeed ``{"module": ...}``); the first wrapper key present wins, ``model`` before ``module`` as in
the authors' ``--model_key model|module``.

Key rule (:func:`strip_prefixes`, the only prefix stripping in the project). A file key is used as it is when the model
has that key; otherwise :data:`PREFIXES` (``module.`` from DataParallel, ``encoder.`` / ``backbone.`` from
self-supervised pretext code; the authors' fine-tuning strips the last two) are stripped from its front, one at a time
and repeatedly (``module.encoder.conv1.weight`` -> ``conv1.weight``), until it matches a model key or no prefix applies.
Stripping only on a miss lets one file serve a model that keeps the wrapper's name (``encoder.stem...`` into a model
with an ``encoder`` submodule) and one that does not. When two file keys reach the same model key, the exact one wins
over a stripped one, otherwise the first in file order; the other is reported as unexpected.

Position tables. VideoMAE's and SVFAP's models keep their fixed sine-cosine table as a plain attribute, so their files
hold none; a file key named ``pos_embed`` or ``position_embeddings`` that the model has no parameter for therefore
comes from other code. When it equals the sinusoid of :mod:`trainables.models.positions` for its own number of
positions and width (largest difference at most :data:`SINUSOID_TOLERANCE`) it carries nothing the model does not
rebuild for each input, and is ignored (the report says so). Any other table (a learned one, one with a class-token
row, one laid out for another grid) would be dropped with what it learned, so the file is refused with the reason.
Judgment call: a sinusoid for *another* token count than the model's default clip is still ignored, not refused: the
table is a function of the flat token index only, the model rebuilds it for whatever clip it gets (SSTS feeds several
frame counts), and the authors' code does the same when built for another size.

Mismatch policy (one for every model). *Matching* (:func:`match_state_dict`) never raises: it reports every file and
model key as loaded, missing, unexpected, shape-mismatched (with both shapes) or ignored (with the model mapping's
reason). *Loading* (:func:`load_plan`, :func:`load_checkpoint_into`) raises a :class:`~trainables.errors.ConfigError`
and leaves the model untouched when any key is shape-mismatched, unless the model's own mapping adapts that key before
loading: I3D matches a file against both its 3D network and the 2D CNN it inflates, and loads a 2D file into the CNN
and inflates it, so its 3D mismatches never reach the load. A half-loaded network that trains from partly random
weights without a word is the failure this prevents. Missing and unexpected keys are loaded around and logged (a
WARNING when nothing loaded or something was unexpected): a fresh head is expected to be missing.

Every failure a user can fix (wrong path, unreadable file, unknown layout, refused class or position table, another
model size) is a one-line :class:`~trainables.errors.ConfigError` that names the path.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from trainables.errors import ConfigError, DataError
from trainables.models.positions import sinusoid_table
from trainables.torchfile import load_torch_file

__all__ = ["ACCEPTED_LAYOUTS", "LoadReport", "PREFIXES", "checkpoint_path", "load_checkpoint_into", "load_plan",
           "match_state_dict", "read_state_dict", "strip_prefixes"]

log = logging.getLogger(__name__)

#: Wrapper prefixes stripped from a file key that is not a model key as it is (module docstring).
PREFIXES: tuple[str, ...] = ("module.", "encoder.", "backbone.")
#: Keys under which training code nests the weights, tried in this order at every nesting level.
WRAPPER_KEYS: tuple[str, ...] = ("model", "module", "state_dict", "model_state_dict", "model_state", "net", "network",
                                 "weights")
#: Last name part of the position tables the reader checks (timm / VideoMAE; transformers).
POSITION_TABLES: tuple[str, ...] = ("pos_embed", "position_embeddings")
#: Largest absolute difference from the sinusoid for a file's position table to count as that sinusoid.
SINUSOID_TOLERANCE = 1e-5

ACCEPTED_LAYOUTS = ("a transformers save_pretrained folder (config.json with model.safetensors, "
                    "model.safetensors.index.json or pytorch_model.bin), a .safetensors file, or a torch .pth/.pt/.bin "
                    "file holding a state dict (at the top level or under 'model' or 'module')")

# Looked for in this order inside a save_pretrained folder: safetensors first (no unpickling at all).
_FOLDER_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")

#: A model's own reason to leave a (prefix-stripped) key out, or None to load it: ``ignore(key) -> reason | None``.
IgnoreRule = Callable[[str], "str | None"]


def key_names(keys: Sequence[str], limit: int = 5) -> str:
    """Up to ``limit`` of ``keys``, comma-separated, and how many more there are: one line of a load report."""
    more = f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


@dataclass
class LoadReport:
    """What matching a file against a model found, and what a load then used.

    Attributes:
        path: the checkpoint.
        loaded: model keys that receive a tensor from the file (in model order).
        missing: model keys the file has nothing for; they keep their current values (a fresh head is expected here).
        unexpected: file keys (as the file writes them) that no model key took and no rule expected: a sign of a file
            of another architecture or a gap in the model's mapping.
        mismatched: model keys the file has a tensor of another shape for; both shapes in ``shapes``. Loading refuses
            the file while there are any (module docstring).
        ignored: file key -> why it is left out on purpose (a pretraining decoder, a classifier for other targets,
            a fixed position table the model rebuilds).
        mapping: file key -> model key for every loaded tensor (shows which prefixes were stripped).
        shapes: model key -> (shape in the file, shape in the model) for every mismatched key.
    """

    path: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    mapping: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every model key was loaded and every file key was used or ignored for a reason."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 5) -> str:
        """One line for logs: the counts, then up to ``limit`` names of each non-empty category but ``loaded``."""
        parts = [f"{self.path}: loaded {len(self.loaded)}, missing {len(self.missing)}, "
                 f"unexpected {len(self.unexpected)}, shape-mismatched {len(self.mismatched)}, "
                 f"ignored {len(self.ignored)}"]
        if self.missing:
            parts.append(f"missing: {key_names(self.missing, limit)}")
        if self.unexpected:
            parts.append(f"unexpected: {key_names(self.unexpected, limit)}")
        if self.mismatched:
            parts.append("shape-mismatched: " + self.mismatch_text(limit))
        if self.ignored:
            parts.append("ignored: " + key_names([f"{k} ({why})" for k, why in self.ignored.items()], limit))
        return "; ".join(parts)

    def mismatch_text(self, limit: int = 5) -> str:
        """The first ``limit`` mismatched keys with the file's and the model's shape."""
        return key_names([f"{k} file {list(self.shapes[k][0])} vs model {list(self.shapes[k][1])}"
                          for k in self.mismatched], limit)

    __str__ = summary


def checkpoint_path(pretrained: str | os.PathLike[str] | bool | None) -> str | None:
    """Normalise a backbone's ``pretrained`` argument: a checkpoint path, or None / False / "" for none.

    Raises:
        ConfigError: ``pretrained=True`` (hub downloads are not used here; pass a local checkpoint file) or another
            type.
    """
    if pretrained is None or pretrained is False or pretrained == "":
        return None
    if pretrained is True:
        raise ConfigError("pretrained=True would download weights; pass the path of a local checkpoint file instead")
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError(f"pretrained must be a checkpoint path or None, got {type(pretrained).__name__}")
    return os.fspath(pretrained)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Descend through wrapper keys until a flat {name: tensor} mapping is found."""
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise ConfigError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict (a mapping of "
                              f"parameter names to tensors); accepted: {ACCEPTED_LAYOUTS}")
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            # Mixed dicts such as {"conv.weight": tensor, "epoch": 3}: keep the tensors if there are any.
            tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
            raise ConfigError(f"checkpoint {path} has no state dict: top-level keys {[str(k) for k in obj][:20]}; "
                              f"expected tensors or one of the wrapper keys {list(WRAPPER_KEYS)}")
        obj = inner
    return dict(obj)  # type: ignore[arg-type]


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
                              f"({type(exc).__name__}: {exc})") from None
        # dict.fromkeys keeps the shards in first-mention order without repeats.
        return [folder / shard for shard in dict.fromkeys(weight_map.values())]
    raise ConfigError(f"checkpoint folder {folder} has none of {', '.join(_FOLDER_FILES)}; "
                      f"accepted: {ACCEPTED_LAYOUTS}")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path)), path)
        except ConfigError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ConfigError(f"checkpoint {path} is not a readable safetensors file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); accepted: {ACCEPTED_LAYOUTS}") \
                from None
    try:
        obj = load_torch_file(path)
    except DataError as exc:  # names the file and, for a refused pickle, the class
        raise ConfigError(f"{exc}; accepted: {ACCEPTED_LAYOUTS}") from None
    return _unwrap(obj, path)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` mapping stored at ``path``, keys exactly as the file writes them.

    Args:
        path: a ``transformers`` ``save_pretrained`` folder, a ``.safetensors`` file, or a ``torch.save`` file (module
            docstring: read as data, wrappers unwrapped).

    Raises:
        ConfigError: the path does not exist, is not readable as one of the accepted layouts, pickles a class other
            than the papers' ``args`` namespace (named), or holds no tensors; the message names the path.
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
        state.update(_read_file(file))
    return state


def strip_prefixes(key: str, model_keys: Mapping[str, object] | set[str]) -> str:
    """``key`` with :data:`PREFIXES` stripped from its front until it is one of ``model_keys`` or no prefix applies
    (module docstring); ``key`` itself when it is a model key."""
    while key not in model_keys:
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        else:
            break
    return key


def _position_table_reason(path: str, file_key: str, tensor: torch.Tensor, model: nn.Module) -> str:
    """Why a file's position table can be ignored; raises when it cannot (module docstring)."""
    table = tensor.detach().to("cpu", torch.float64)
    while table.ndim > 2 and table.shape[0] == 1:
        table = table[0]
    what = f"checkpoint {path}: {file_key} (shape {list(tensor.shape)})"
    use = f"{type(model).__name__} adds the fixed sine-cosine table and has no parameter to load it into"
    if table.ndim != 2 or table.numel() == 0:
        raise ConfigError(f"{what} is a position table that is not an (N, D) table; {use}")
    n, dim = table.shape
    diff = (table - sinusoid_table(n, dim)).abs().max().item()
    if not diff <= SINUSOID_TOLERANCE:
        raise ConfigError(f"{what} is not the fixed sine-cosine position table for its {n} positions of width {dim} "
                          f"(largest difference {diff:.3g} > {SINUSOID_TOLERANCE:g}): a learned table, or one laid out "
                          f"for another grid; {use}, so loading would drop what the table holds. Refused")
    return f"fixed sinusoid position table ({n} positions, width {dim}), rebuilt by the model for each input"


def match_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, path: str | os.PathLike[str] = "",
                     ignore: IgnoreRule | None = None) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Plan a load without touching ``model``: which file tensor goes to which model key. Never raises for a
    mismatch (module docstring: matching reports, loading refuses).

    Args:
        model: the target.
        state: a flat state dict (from :func:`read_state_dict`, possibly renamed by the model's own mapping).
        path: the checkpoint, for the report and error messages.
        ignore: the model mapping's rule for keys to leave out on purpose, asked with the prefix-stripped key; its
            reason goes into ``report.ignored``.

    Returns:
        (the tensors to load keyed by model key, the report).

    Raises:
        ConfigError: the file holds a position table the model has no parameter for and that is not the fixed
            sinusoid (module docstring).
    """
    target = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    report = LoadReport(path=os.fspath(path))
    # Exact names first so that a stripped key never displaces a tensor saved under the model's own name.
    for file_key, tensor in sorted(state.items(), key=lambda kv: kv[0] not in target):
        key = strip_prefixes(file_key, target)
        reason = ignore(key) if ignore is not None else None
        if reason is not None:
            report.ignored[file_key] = reason
        elif key in target and key not in to_load and key not in report.shapes:
            if tuple(tensor.shape) != tuple(target[key].shape):
                report.mismatched.append(key)
                report.shapes[key] = (tuple(tensor.shape), tuple(target[key].shape))
            else:
                to_load[key] = tensor
                report.mapping[file_key] = key
        elif key not in target and key.rsplit(".", 1)[-1] in POSITION_TABLES:
            report.ignored[file_key] = _position_table_reason(report.path, file_key, tensor, model)
        else:
            report.unexpected.append(file_key)
    order = {k: i for i, k in enumerate(target)}
    file_order = {k: i for i, k in enumerate(state)}
    report.loaded = sorted(to_load, key=order.__getitem__)
    report.missing = [k for k in target if k not in to_load and k not in report.shapes]
    report.unexpected.sort(key=file_order.__getitem__)
    report.mismatched.sort(key=order.__getitem__)
    report.ignored = dict(sorted(report.ignored.items(), key=lambda kv: file_order[kv[0]]))
    return to_load, report


def load_plan(model: nn.Module, to_load: Mapping[str, torch.Tensor], report: LoadReport, what: str = "") -> LoadReport:
    """Copy a planned load (:func:`match_state_dict`) into ``model`` and log its report; every other key keeps its
    value.

    Args:
        what: names the target in the log line (e.g. "the spatial CNN"), when it is not the whole model.

    Raises:
        ConfigError: the report has shape-mismatched keys (typically a file of another model size); nothing is
            loaded then, and the message lists the first ones with both shapes.
    """
    if report.mismatched:
        raise ConfigError(f"checkpoint {report.path} does not fit {type(model).__name__} (another model size?): "
                          f"{report.mismatch_text()}")
    # load_state_dict(strict=False) rather than copying by hand so module hooks (e.g. masked inflated convs refreshing
    # their frozen centre) see the new values.
    result = model.load_state_dict(dict(to_load), strict=False)
    if result.unexpected_keys:  # cannot happen for a plan from match_state_dict; guards hand-built plans
        raise KeyError(f"keys not in the model: {result.unexpected_keys[:10]}")
    # Nothing loaded or stray keys mean the mapping and the file disagree: worth a warning, not just an info line.
    level = logging.WARNING if (not report.loaded or report.unexpected) else logging.INFO
    log.log(level, "checkpoint%s %s", f" into {what}" if what else "", report.summary())
    return report


def load_checkpoint_into(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = False,
                         ignore: IgnoreRule | None = None) -> LoadReport:
    """Read ``path``, match it against ``model`` and load it, in place (:func:`read_state_dict`,
    :func:`match_state_dict`, :func:`load_plan`).

    Args:
        strict: also refuse (model untouched) when anything is missing or unexpected.
        ignore: see :func:`match_state_dict`.

    Raises:
        ConfigError: unreadable file (see :func:`read_state_dict`), a refused position table, shape-mismatched keys,
            or ``strict`` and the file does not match the model exactly (the message is the report).
    """
    to_load, report = match_state_dict(model, read_state_dict(path), path=path, ignore=ignore)
    if strict and not report.ok:
        raise ConfigError(f"strict checkpoint load failed: {report.summary()}")
    return load_plan(model, to_load, report)


def load_best_fit(path: str | os.PathLike[str], model: nn.Module, part: nn.Module,
                  what: str) -> tuple[bool, LoadReport]:
    """Load ``path`` into ``model`` or into its sub-module ``part`` (named ``what`` in the log), whichever loads more
    tensors; ties go to the whole model. For a model one of whose parts is a known 2D network (i3D's CNN before
    inflation, MIMAMO's spatial CNN): a checkpoint of the whole model fits the model, a plain CNN checkpoint fits the
    part's own keys only.

    Returns:
        (whether ``part`` took it, the load's report).
    """
    state = read_state_dict(path)
    whole_plan, whole_report = match_state_dict(model, state, path=path)
    part_plan, part_report = match_state_dict(part, state, path=path)
    if len(part_report.loaded) > len(whole_report.loaded):
        return True, load_plan(part, part_plan, part_report, what=what)
    return False, load_plan(model, whole_plan, whole_report)
