"""Model inputs a study names by MLflow URI, fetched by the driver before any trial starts.

A fine-tuning study may start from a pretrained encoder given as ``runs:/<run_id>`` (a pretraining trial's best
checkpoint; ``runs:/<run_id>/<artifact path>`` names the file), ``models:/<name>@<alias>`` or
``models:/<name>/<version>`` (a registered pretrained encoder, ``emotune pretrain``'s ``emotune-pretrained``), as well
as a path, in ``checkpoint`` (video transformers) or ``pretext_checkpoint`` (the 3D-conv ResNet). Trials do not talk
to MLflow: the driver downloads the file once, into ``<storage>/.inputs/`` for a local storage (shared with the
trials of a one-machine cluster) and the user's cache folder otherwise, and the study's value becomes that path.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from search_spaces.schema import SearchSpace
from trainables.errors import UserError
from trainables.pretrain import ENCODER_FILE, SUBJECTS_FILE

#: Trial settings that may name a model file by MLflow URI.
URI_KEYS = ("checkpoint", "pretext_checkpoint")


def is_model_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("runs:/", "models:/"))


def resolve_model_inputs(space: SearchSpace, storage: str, tracking_uri: str) -> SearchSpace:
    """``space`` with every fixed ``runs:/`` or ``models:/`` value of :data:`URI_KEYS` replaced by a local file.

    Raises:
        UserError: a URI among a searched parameter's choices (fix it instead), or a URI that cannot be fetched.
    """
    for key, spec in space.params.items():
        if key in URI_KEYS and any(is_model_uri(v) for v in spec.get("choices", [spec.get("value")])):
            raise UserError(f"{space.path}: params.{key} searches MLflow URIs; fix {key} to one (fixed: or --set)")
    fixed = dict(space.fixed)
    for key in URI_KEYS:
        if is_model_uri(fixed.get(key)):
            fixed[key] = str(fetch_model_file(fixed[key], input_folder(storage), tracking_uri))
    return dataclasses.replace(space, fixed=fixed) if fixed != space.fixed else space


def input_folder(storage: str) -> Path:
    if "://" not in storage:
        return Path(storage).resolve() / ".inputs"
    return Path.home() / ".cache" / "emotune" / "inputs"


def fetch_model_file(uri: str, folder: Path, tracking_uri: str) -> Path:
    """The local copy of the model file ``uri`` names (downloaded once per URI and store)."""
    from mlflow.tracking import MlflowClient

    dst = folder / hashlib.sha1(f"{tracking_uri}|{uri}".encode()).hexdigest()[:16]
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
        path = path or f"checkpoint/{ENCODER_FILE}"
        found = dst / path
        if not found.is_file():
            dst.mkdir(parents=True, exist_ok=True)
            try:
                found = Path(MlflowClient(tracking_uri).download_artifacts(run_id, path, str(dst)))
            except Exception as exc:
                raise UserError(f"{uri}: no artifact {path} in that MLflow run of {tracking_uri} "
                                f"({' '.join(str(exc).split())[:160]})") from None
        if found.is_dir():
            found = _encoder_in(found, uri)
        else:  # the subjects it was pretrained on, when the run wrote them beside it
            sibling = str(Path(path).parent / SUBJECTS_FILE)
            if not (dst / sibling).is_file():
                try:
                    MlflowClient(tracking_uri).download_artifacts(run_id, sibling, str(dst))
                except Exception:
                    pass  # not a pretraining run's file: nothing to check against
        return found
    from analysis.models import version_location

    if not dst.is_dir() or not any(dst.rglob(ENCODER_FILE)):
        import mlflow.artifacts

        dst.mkdir(parents=True, exist_ok=True)
        try:
            client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
            mlflow.artifacts.download_artifacts(artifact_uri=version_location(client, uri), tracking_uri=tracking_uri,
                                                dst_path=str(dst))
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"{uri} cannot be found in the MLflow registry of {tracking_uri} "
                            f"({' '.join(str(exc).split())[:160]})") from None
    return _encoder_in(dst, uri)


def _encoder_in(folder: Path, uri: str) -> Path:
    found = sorted(folder.rglob(ENCODER_FILE))
    if not found:
        raise UserError(f"{uri} holds no {ENCODER_FILE} (a pretrained encoder from `emotune pretrain`)")
    return found[0]



def check_pretraining_leak(space: SearchSpace, indexes: list[str], fold_subjects: list[str]) -> None:
    """Refuse a fine-tuning sweep whose pretrained encoder saw a subject the sweep validates or tests on.

    An encoder written by ``emotune pretrain`` has its subjects beside it (:data:`SUBJECTS_FILE`). The subjects a sweep
    scores are its indexes' val and test subjects and, for a cross-validated sweep, every subject of its folds
    (``fold_subjects``). A checkpoint without the file (the papers' own, a user's) is not checked.

    Raises:
        UserError: naming the setting, the subjects and what to do instead.
    """
    import json

    from trainables.data.cache import read_index

    scored: set[str] | None = None  # the subjects the sweep validates or tests on, read once when needed
    for key in URI_KEYS:
        value = space.fixed.get(key)
        if not isinstance(value, str) or not (Path(value).parent / SUBJECTS_FILE).is_file():
            continue
        seen = set(json.loads((Path(value).parent / SUBJECTS_FILE).read_text())["subjects"])
        if scored is None:
            scored = set(fold_subjects)
            for index in indexes:
                scored |= {v["subject"] for v in read_index(index)["videos"] if v["split"] in ("val", "test")}
        leaked = sorted(seen & scored)
        if leaked:
            shown = ", ".join(leaked[:5]) + (f" and {len(leaked) - 5} more" if len(leaked) > 5 else "")
            where = "validates (its folds) or tests on" if fold_subjects else "validates or tests on"
            raise UserError(f"{key}: the encoder was pretrained on {len(leaked)} subject(s) this sweep {where}: "
                            f"{shown}; pretrain with pretrain_videos=unlabelled (subjects outside every fold), or on "
                            f"the index this sweep uses")
