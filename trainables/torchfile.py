"""The one place the project opens a ``torch.save`` file: trial checkpoints read back from storage, model bundles,
pretrained backbones (the authors' VideoMAE and SVFAP files), face-alignment weights.

Files are data, never code: ``torch.load(weights_only=True)`` always, which unpickles tensors and plain containers
only. Exactly the plain classes that the papers' own training scripts store beside the weights are let through torch's
safe-globals list: ``argparse.Namespace``, under ``"args"`` in every file SVFAP's ``utils.save_model`` and VideoMAE's
``run_*`` scripts write (a ``Namespace`` is rebuilt from its attribute dict; no code of the file runs). Any other
global is refused, and the error names it (from ``torch.serialization.get_unsafe_globals_in_checkpoint``) so the user
knows what the file holds.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch

from trainables.errors import DataError

#: Classes the source papers' scripts pickle beside their weights, and that unpickle as plain data.
ALLOWED_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
_ALLOWED_NAMES = {f"{c.__module__}.{c.__qualname__}" for c in ALLOWED_GLOBALS}
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def load_torch_file(path: str | Path, map_location="cpu", shown: str | None = None):
    """The object stored in the ``torch.save`` file ``path``, read as data (module docstring). ``shown`` names the
    file in errors (where it really lives, e.g. the bucket, when ``path`` is a local copy).

    Raises:
        DataError: the file pickles an object of another class (named, and refused: loading it could run code from
            the file), or it is not a torch file at all (truncated, another format). One line, naming the file.
    """
    shown = shown or str(path)
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_globals(path)
        if refused:
            raise DataError(f"checkpoint {shown} holds pickled objects other than tensors and plain values "
                            f"(GLOBAL {', '.join(refused)}); refused: loading it could run code from the file") \
                from None
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith(_TORCH_BOILERPLATE)]
        found = next((ln for ln in lines if "GLOBAL" in ln), None)
        if found:
            raise DataError(f"checkpoint {shown} holds pickled objects other than tensors and plain values "
                            f"({found.rstrip('.')}); refused: loading it could run code from the file") from None
        raise DataError(f"checkpoint {shown} is not a torch checkpoint that can be read with weights_only=True "
                        f"({lines[0] if lines else type(exc).__name__})") from None
    except FileNotFoundError:
        raise DataError(f"checkpoint file not found: {shown}") from None
    except Exception as exc:  # a truncated or foreign file: torch raises RuntimeError, EOFError, OSError, zip errors
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"checkpoint {shown} is not a torch checkpoint that can be read "
                        f"({type(exc).__name__}: {detail})") from None


def _refused_globals(path: str | Path) -> list[str]:
    """The globals in the file that are neither torch's safe ones nor :data:`ALLOWED_GLOBALS`, in file order."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint (the legacy format): the unpickler's own message has to do
        return []
    return [name for name in dict.fromkeys(found) if name not in _ALLOWED_NAMES]
