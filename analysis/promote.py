"""Promotion of a sweep's best trial to production: the decision.

``emotune promote SWEEP``: the best trial by the validation objective (the sweep's parent run tags
``emotune.best_trial`` / ``emotune.best_run_id``) is evaluated once on the test split's subjects (the split no sweep
ever sees), with a subject-level bootstrap 95% interval of the objective when the split has at least
:data:`~analysis.scoring.MIN_SUBJECTS_FOR_INTERVAL` subjects (with fewer, no interval is computed, printed or stored).
The model holding the registry alias ``production`` (if any) is scored on the same test videos. The candidate is
promoted only when its test objective beats the production one by more than ``margin`` (or no model holds the alias): it
is logged as an MLflow pyfunc model (:mod:`analysis.pyfunc_model`) bundling weights and every prediction setting,
registered, given the alias, tagged with its lineage, and its configuration is written to ``production.yaml``. Otherwise
nothing changes and the refusal names both figures.

The parts live beside this module: the models it reads (:mod:`analysis.models`), the scoring with its interval
(:mod:`analysis.scoring`), the registry and its alias (:mod:`analysis.registry`). Retraining the top configurations
first (``--retrain-top``) runs trials on Ray and is driven from ``cluster``, which hands its outcome to :func:`promote`.

A cross-validated sweep's trials hold fold models (each trained on part of the non-test subjects), so its candidate is
a refit instead: the best configuration (the best trial that finished every fold) trained on every non-test subject
for the median of its folds' best epochs, with the post-processing fitted on its pooled out-of-fold predictions
(:func:`cluster.retrain.refit_best`, driven from ``cluster`` as retraining is); the gate is the same.

With ``--constraint`` (:mod:`analysis.constraints`), the candidate is the best complete trial by the first objective
among those meeting every constraint (a cross-validated sweep's is refit, as above); the gate is the same. Every
registered version carries its costs as tags, and every move of the alias is recorded on the registered model
(:mod:`analysis.registry`), which ``emotune promote --history`` prints (:func:`history`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.models import resolve_model
from analysis.registry import ALIAS, production_version, register
from analysis.scoring import TestScore, objective_name, predict_cached, score, scored_labels, test_split
from analysis.sweeps import run_costs
from trainables.errors import UserError
from trainables.provenance import git_commit


def find_sweep(client, sweep: str):
    """The parent run of sweep ``sweep`` (its name or its run id), found as reports and comparisons find it
    (:func:`analysis.sweeps.resolve_sweep`: never a promotion's or a retraining's run).

    Raises:
        UserError: no such sweep, or it has no best trial.
    """
    from analysis.sweeps import cv_folds, resolve_sweep

    run = resolve_sweep(client, sweep)
    if not run.data.tags.get("emotune.best_run_id"):
        why = "no trial finished every fold without an error" if cv_folds(run) else \
            "no trial finished without an error"
        raise UserError(f"sweep {sweep!r} has no best trial ({why})")
    return run


@dataclass
class Outcome:
    promoted: bool
    candidate: TestScore
    production: TestScore | None
    message: str
    version: str | None = None
    yaml_path: Path | None = None


def promote(sweep: str, tracking_uri: str | None = None, model_name: str = "emotune", margin: float = 0.0,
            out_dir: str | Path = ".", retrained: Any = None, refit: Any = None, chosen: Any = None,
            constraints: list | None = None) -> Outcome:
    """Evaluate the sweep's best trial on the test subjects and promote it if it beats production by ``margin``.

    ``retrained``: the outcome of :func:`cluster.retrain.retrain_top` (the sweep's K best configurations trained
    again with fresh seeds, the best mean over seeds; ``emotune promote --retrain-top``), whose chosen run is the
    candidate instead of the sweep's best trial. ``refit``: the outcome of :func:`cluster.retrain.refit_best` (a
    cross-validated sweep's best configuration trained on every non-test subject), whose run is the candidate; a
    cross-validated sweep is promoted only so. Both run trials on Ray, so they are driven from ``cluster``; this
    module only scores, registers and records. ``chosen``: the trial a constrained promotion chose
    (:func:`analysis.constraints.choose`, under ``constraints``), the candidate instead of the sweep's best trial (a
    cross-validated sweep's chosen trial is refit first, and ``refit`` is its refit).

    The registered version carries the costs of the run it registers (:func:`analysis.sweeps.run_costs`) as tags
    ``emotune.cost.<name>``, and the constraints as ``emotune.constraints``; the move of the alias is recorded on the
    registered model (:mod:`analysis.registry`).

    Raises:
        UserError: no such sweep or checkpoint; a cross-validated sweep without its refit; the production model was
            trained on another face registration (it cannot be scored on the same cached test videos).
    """
    import yaml
    from mlflow.tracking import MlflowClient

    from analysis.sweeps import cv_folds

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    parent = find_sweep(client, sweep)
    run_id, trial = parent.data.tags["emotune.best_run_id"], parent.data.tags.get("emotune.best_trial", "")
    if cv_folds(parent) and refit is None:
        raise UserError(f"sweep {sweep!r} is cross-validated: its trials' checkpoints are fold models; its best "
                        f"configuration is promoted by its refit on every non-test subject (`emotune promote`)")
    if chosen is not None:
        run_id, trial = chosen.run_id, chosen.trial_id
    if retrained is not None:
        run_id, trial = retrained.run_id, retrained.chosen.trial_id
    if refit is not None:
        run_id, trial = refit.run_id, refit.trial_id
    costs = run_costs(client, client.get_run(run_id))
    limits = [c.text() for c in constraints or []]
    candidate = resolve_model(f"runs:/{run_id}", tracking_uri)
    index_path = candidate.config.get("data_index") or \
        (candidate.config.get("data_indexes") or {}).get(candidate.config.get("registration"))
    videos, subjects = test_split(index_path)
    key, mode = objective_name(candidate.config)
    cand = score(videos, subjects, predict_cached(candidate, videos), key, truth=scored_labels(candidate, videos))

    current = production_version(client, model_name)
    prod = None
    if current is not None:
        held = resolve_model(f"models:/{model_name}/{current.version}", tracking_uri)
        if {k: v for k, v in held.registration.items() if k != "detector"} != \
                {k: v for k, v in candidate.registration.items() if k != "detector"}:
            raise UserError(f"the production model ({model_name} version {current.version}) was trained on another "
                            f"face registration ({held.registration}) than trial {trial} "
                            f"({candidate.registration}); both must be scored on the same cached test videos")
        prod = score(videos, subjects, predict_cached(held, videos), key, truth=scored_labels(held, videos))
        gain = (cand.value - prod.value) if mode == "max" else (prod.value - cand.value)
        if not gain > margin:
            return Outcome(False, cand, prod, _chosen_text(chosen, constraints, sweep) + _retrain_text(retrained) +
                           _refit_text(refit) + (
                f"not promoted: {_what(trial, refit)} scores test {key} {cand.text()}, the production model "
                f"({model_name} version {current.version}) scores {prod.text()} on the same test subjects; "
                f"it must be better by more than --margin {margin:g}; the alias {ALIAS!r} stays on version "
                f"{current.version}"))

    lineage = {"emotune.sweep": parent.data.tags["emotune.sweep"], "emotune.sweep_run_id": parent.info.run_id,
               "emotune.trial": trial, "emotune.trial_run_id": run_id,
               "emotune.data_index": str(index_path),
               "emotune.data_index_sha1": parent.data.params.get("data_index_sha1", ""),
               "emotune.sweep_git_commit": parent.data.tags.get("emotune.git_commit", ""),
               "emotune.git_commit": git_commit(), f"emotune.test_{key}": f"{cand.value:.6f}",
               "emotune.test_subjects": str(cand.subjects)}
    if cand.has_interval:  # too few test subjects: no interval tag at all (never a NaN or a degenerate one)
        lineage[f"emotune.test_{key}_ci95"] = f"{cand.low:.6f},{cand.high:.6f}"
    lineage.update({f"emotune.cost.{k}": f"{v:.6g}" for k, v in costs.items()})
    if limits:
        lineage["emotune.constraints"] = ", ".join(limits)
    if refit is not None:
        lineage.update({"emotune.refit_run_id": refit.parent_run_id, "emotune.refit_epochs": str(refit.epochs),
                        f"emotune.cv_{refit.metric}_mean": f"{refit.cv_mean:.6f}",
                        f"emotune.cv_{refit.metric}_sd": f"{refit.cv_sd:.6f}", "emotune.cv_folds": str(refit.folds)})
    if retrained is not None:
        lineage.update({"emotune.retrain_run_id": retrained.parent_run_id, "emotune.retrain_seed": str(retrained.seed),
                        f"emotune.retrain_{retrained.metric}_mean": f"{retrained.chosen.mean:.6f}",
                        f"emotune.retrain_{retrained.metric}_std": f"{retrained.chosen.std:.6f}"})
    production = {"model": model_name, "alias": ALIAS, "sweep": lineage["emotune.sweep"], "trial": trial,
                  "trial_run_id": run_id, "data_index": str(index_path),
                  "data_index_sha1": lineage["emotune.data_index_sha1"], "git_commit": lineage["emotune.git_commit"],
                  "test": {"objective": key, "value": cand.value,
                           **({"ci95": [cand.low, cand.high]} if cand.has_interval else {}),
                           "subjects": cand.subjects},
                  "previous": None if current is None else {"version": current.version, "value": prod.value},
                  "retrain": None if retrained is None else {
                      "run_id": retrained.parent_run_id, "seed": retrained.seed, "candidate_run_id": retrained.run_id,
                      "configurations": {c.trial_id: {"mean": c.mean, "std": c.std, "values": c.values}
                                         for c in retrained.configs}},
                  **({} if refit is None else {"refit": refit.record()}),
                  "costs": costs, "constraints": limits,
                  **candidate.settings()}
    test = {"objective": key, "value": cand.value, **({"ci95": [cand.low, cand.high]} if cand.has_interval else {}),
            "subjects": cand.subjects}
    move = {"sweep": lineage["emotune.sweep"], "sweep_run_id": parent.info.run_id, "trial": trial,
            "trial_run_id": run_id, "test": test, "costs": costs, "constraints": limits,
            **({"refit_run_id": refit.parent_run_id} if refit is not None else {}),
            **({"retrain_run_id": retrained.parent_run_id} if retrained is not None else {})}
    version = register(client, candidate, model_name, lineage, production, experiment_id=parent.info.experiment_id,
                       move=move)
    production["version"] = version
    yaml_path = Path(out_dir) / "production.yaml"
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    yaml_path.write_text(yaml.safe_dump(production, sort_keys=False))
    before = "no model held it" if prod is None else \
        f"version {current.version} scored {prod.text()} on the same test subjects"
    return Outcome(True, cand, prod, _chosen_text(chosen, constraints, sweep) + _retrain_text(retrained) +
                   _refit_text(refit) + (
        f"promoted: {_what(trial, refit)} of sweep {lineage['emotune.sweep']} scores test {key} {cand.text()}; "
        f"{model_name} version {version} now holds the alias {ALIAS!r} ({before})"), version, yaml_path)


def _chosen_text(chosen, constraints: list | None, sweep: str) -> str:
    """The line a constrained promotion starts its verdict with."""
    if chosen is None:
        return ""
    from analysis.constraints import constraints_text

    values = ", ".join(f"{name} {value:.4g}" for name, value in chosen.values.items())
    return (f"constraints {constraints_text(constraints or [])}: trial {chosen.trial_id} ({values}) is the best "
            f"complete trial of sweep {sweep} meeting them\n")


def history(client, model_name: str) -> str:
    """``emotune promote --history``: the recorded moves of ``model_name``'s aliases as a table, oldest first (time,
    the version that received the alias and the one it replaced, sweep, trial, test score, costs, constraints); a
    line saying so when there is none."""
    from analysis.registry import moves
    from analysis.tables import Table
    from trainables.reports import COST_KEYS

    found = moves(client, model_name)
    if found is None:
        return f"no model named {model_name!r} is registered: no move of its alias {ALIAS!r} is recorded"
    if not found:
        return f"no move of an alias of model {model_name!r} is recorded"
    objectives = list(dict.fromkeys(str(m["test"]["objective"]) for m in found
                                    if isinstance(m.get("test"), dict) and m["test"].get("objective")))
    rows = []
    for m in found:
        test = m.get("test") or {}
        costs = m.get("costs") or {}
        rows.append([m.get("time", "?"), m.get("alias", ALIAS), m.get("version"), m.get("replaced") or "-",
                     m.get("sweep") or ("(forced)" if m.get("forced") else "-"), m.get("trial") or "-",
                     *(test.get("value") if test.get("objective") == o else None for o in objectives),
                     *(costs.get(k) for k in COST_KEYS), ", ".join(m.get("constraints") or []) or "-"])
    tests = [f"test {o}" for o in objectives]
    table = Table(f"Moves of the aliases of model {model_name}", ["time (UTC)", "alias", "version", "replaced",
                                                                   "sweep", "trial", *tests, *COST_KEYS,
                                                                   "constraints"],
                  rows, metric_columns=tuple(tests), significant_columns=COST_KEYS)
    return f"{len(found)} move(s) of the aliases of model {model_name!r}, oldest first:\n" + table.to_text()


def _retrain_text(retrained) -> str:
    return "" if retrained is None else "\n".join(retrained.lines()) + "\n"


def _refit_text(refit) -> str:
    return "" if refit is None else "\n".join(refit.lines()) + "\n"


def _what(trial: str, refit) -> str:
    """The candidate in the verdict: ``trial T``, or ``the refit of trial T`` for a cross-validated sweep."""
    return f"the refit of trial {trial}" if refit is not None else f"trial {trial}"
