"""The search-space schema: YAML study files -> a validated ``SearchSpace`` -> Optuna define-by-run calls.

A study file::

    name: smoke
    description: ...
    objective: {metric: val_ccc_mean, mode: max}
    # or several: objectives: {val_ccc_mean: max, gflops: min}   (2 or 3; the first is the primary one)
    fidelity: {attr: epoch, max: 4, grace: 1, reduction_factor: 2}   # ASHA's time axis: epochs, or
    #   {attr: data_fraction, per_epoch: 4, max: 8, grace: 1}: a report after every quarter epoch, 2 epochs at most
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}  # defaults; the CLI may override
    cv: {folds: 5}                                                   # optional: subject 5-fold CV of each trial
    fixed: {backbone: cnn_rnn_tiny, ...}                             # trial settings not searched
    params:
      lr: {type: loguniform, low: 3.0e-4, high: 3.0e-3}
      ssts_stride: {type: categorical, choices: [1, 2, 3, 4]}
      rnn_layers: {type: int, low: 1, high: 2, when: {rnn: [gru]}}  # conditional: only when rnn is gru

A study may start from another: ``base: svfap_tpsbt`` (a shipped study's name, or a path relative to this file)
takes that study's keys, and every top-level key this file gives replaces the base's whole (``cv: {folds: 5}`` turns
a study into its cross-validated version).

Every error names the file and the key and says what is allowed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DISTRIBUTIONS = {
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "int": ("low", "high"),
    "categorical": ("choices",),
    "constant": ("value",),
}
OPTIONAL_PARAM_KEYS = {"step", "log", "when"}
TOP_KEYS = {"name", "kind", "description", "objective", "fidelity", "resources", "fixed", "params", "constraints",
            "initial_points", "cv", "base", "objectives", "sampler"}
#: Optuna samplers a study may name (``sampler:``); NSGA-II for studies with several objectives.
SAMPLERS = ("tpe", "random", "nsga2")
MAX_OBJECTIVES = 3
CV_KEYS = {"folds", "seed"}
CONSTRAINT_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
                  "<": lambda a, b: a < b}
RESOURCE_KEYS = {"workers", "cpus_per_worker", "gpus_per_worker"}
FIDELITY_KEYS = {"attr", "max", "grace", "reduction_factor", "per_epoch"}
FIDELITY_ATTRS = ("epoch", "data_fraction")
HERE = Path(__file__).parent


#: What a study's trials do: fine-tune a model on the labels (``emotune sweep``), or pretrain an encoder without them
#: (``emotune pretrain``).
KINDS = ("finetune", "pretrain")


class SpaceError(ValueError):
    """A search-space file that does not follow the schema."""


@dataclass(frozen=True)
class SearchSpace:
    name: str
    path: Path
    metric: str
    mode: str
    fidelity: dict[str, Any]
    resources: dict[str, float]
    fixed: dict[str, Any]
    params: dict[str, dict[str, Any]]
    description: str = ""
    constraints: tuple[tuple[str, str, str], ...] = ()
    initial_points: tuple[dict[str, Any], ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)  # the user's --set, as given
    cv: dict[str, int] = field(default_factory=dict)  # {folds: K, seed: S}: subject K-fold CV; empty: one split
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, mode) of every objective, the primary one first
    sampler: str = "tpe"
    kind: str = "finetune"  # or "pretrain": one trial = one self-supervised pretraining run (``emotune pretrain``)
    raw: dict = field(default_factory=dict, repr=False)


def shipped_spaces() -> list[Path]:
    """Every study file shipped in this package."""
    return sorted(HERE.glob("*.yaml"))


def resolve_space_path(name_or_path: str | Path) -> Path:
    """A path as given, or the name of a shipped study (``smoke`` -> ``search_spaces/smoke.yaml``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = HERE / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(s.stem for s in shipped_spaces())
    raise SpaceError(f"search space {name_or_path!r} is neither a file nor a shipped study; shipped: {names}")


def load_space(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> SearchSpace:
    """Load and validate a study file. ``overrides`` (from ``--set key=value``) replace fixed settings or pin a
    searched parameter to a constant.

    Raises:
        SpaceError: the message names the file, the key and what is allowed.
    """
    path = resolve_space_path(name_or_path)
    raw = _with_base(_read_raw(path), path)

    objective = _mapping(raw.get("objective", {}), path, "objective")
    metric = objective.get("metric", "val_ccc_mean")
    mode = objective.get("mode", "max")
    if mode not in ("min", "max"):
        raise SpaceError(f"{path}: objective.mode is {mode!r}; allowed: min, max")
    objectives = _check_objectives(raw, path, (metric, mode))
    metric, mode = objectives[0]
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise SpaceError(f"{path}: sampler is {sampler!r}; allowed: {', '.join(SAMPLERS)}")

    fidelity = {"attr": "epoch", "max": 4, "grace": 1, "reduction_factor": 2,
                **_mapping(raw.get("fidelity", {}), path, "fidelity")}
    if len(objectives) > 1 and "grace" not in _mapping(raw.get("fidelity", {}), path, "fidelity"):
        fidelity["grace"] = multi_objective_grace(fidelity)
    _only(fidelity, FIDELITY_KEYS, path, "fidelity")
    if fidelity["attr"] not in FIDELITY_ATTRS:
        raise SpaceError(f"{path}: fidelity.attr is {fidelity['attr']!r}; allowed: {', '.join(FIDELITY_ATTRS)}")
    # data_fraction: ASHA's unit is 1/per_epoch of an epoch's batches; max and grace count those units.
    fidelity.setdefault("per_epoch", 4 if fidelity["attr"] == "data_fraction" else 1)
    if fidelity["attr"] == "epoch" and fidelity["per_epoch"] != 1:
        raise SpaceError(f"{path}: fidelity.per_epoch applies to attr data_fraction only (attr is epoch)")
    for key in ("max", "grace", "reduction_factor", "per_epoch"):
        if not isinstance(fidelity[key], int) or fidelity[key] < 1:
            raise SpaceError(f"{path}: fidelity.{key} is {fidelity[key]!r}; allowed: an integer >= 1")
    if fidelity["grace"] > fidelity["max"]:
        raise SpaceError(f"{path}: fidelity.grace ({fidelity['grace']}) exceeds fidelity.max ({fidelity['max']})")

    kind = raw.get("kind", "finetune")
    if kind not in KINDS:
        raise SpaceError(f"{path}: kind is {kind!r}; allowed: {', '.join(KINDS)}")
    cv = _check_cv(raw.get("cv"), path)
    if cv and (why := cv_conflict(kind, fidelity["attr"], len(objectives))):
        raise SpaceError(f"{path}: cv: {why}")
    if kind == "pretrain" and fidelity["attr"] != "epoch":
        raise SpaceError(f"{path}: fidelity.attr is {fidelity['attr']!r}; a pretraining study reports once per epoch "
                         "(its probe's score), so allowed: epoch")

    resources = {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0,
                 **_mapping(raw.get("resources", {}), path, "resources")}
    _only(resources, RESOURCE_KEYS, path, "resources")

    fixed = dict(_mapping(raw.get("fixed", {}), path, "fixed"))
    params = {}
    for key, spec in _mapping(raw.get("params", {}), path, "params").items():
        params[key] = _check_param(spec, path, f"params.{key}")
    for index, (key, spec) in enumerate(params.items()):
        for cond_key, allowed in spec.get("when", {}).items():
            if cond_key not in params and cond_key not in fixed:
                raise SpaceError(f"{path}: params.{key}.when refers to {cond_key!r}, which is neither a param nor fixed")
            if cond_key in params and cond_key not in list(params)[:index]:
                # suggest() asks in file order, so a condition on this param or a later one could never hold.
                raise SpaceError(f"{path}: params.{key}.when refers to {cond_key!r}, which is not declared before "
                                 f"{key!r}; a condition may only use fixed settings or params listed earlier")
            if not isinstance(allowed, list):
                raise SpaceError(f"{path}: params.{key}.when.{cond_key} must be a list of values")
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if key in params:
            spec = params[key]
            if not _in_domain(spec, value):
                raise SpaceError(f"--set {key}={value!r} lies outside the distribution the study searches "
                                 f"({_domain_text(spec)}); pin a value inside it, or edit {path}")
            params[key] = {"type": "constant", "value": value, **({"when": spec["when"]} if "when" in spec else {})}
        else:
            fixed[key] = value
    clash = set(fixed) & set(params)
    if clash:
        raise SpaceError(f"{path}: key(s) {sorted(clash)} are both fixed and searched; keep one")
    if kind == "pretrain" and "pretrain_method" not in fixed and "pretrain_method" not in params:
        raise SpaceError(f"{path}: a pretraining study (kind: pretrain) must set pretrain_method, fixed or searched "
                         "(`emotune settings` lists the methods)")
    if kind == "finetune" and ("pretrain_method" in fixed or "pretrain_method" in params):
        raise SpaceError(f"{path}: pretrain_method belongs to a pretraining study; add `kind: pretrain` and run it "
                         "with `emotune pretrain`")
    constraints = _check_constraints(raw.get("constraints", []), path, fixed, params)
    points = raw.get("initial_points", [])
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise SpaceError(f"{path}: initial_points must be a list of mappings param -> value")
    # A pinned parameter overrides the initial points: each point keeps its other values.
    points = [{k: v for k, v in point.items() if k not in overrides} for point in points]
    points = [p for p in points if p]
    for i, point in enumerate(points):
        for key, value in point.items():
            if key not in params:
                raise SpaceError(f"{path}: initial_points[{i}].{key} is not a searched param; params: {sorted(params)}")
            if not _in_domain(params[key], value):
                raise SpaceError(f"{path}: initial_points[{i}].{key} = {value!r} lies outside its distribution")
    return SearchSpace(name=str(raw.get("name", path.stem)), path=path, metric=metric, mode=mode, fidelity=fidelity,
                       resources=resources, fixed=fixed, params=params, description=str(raw.get("description", "")),
                       raw=raw, constraints=constraints, initial_points=tuple(points), overrides=overrides, cv=cv,
                       objectives=objectives, sampler=sampler, kind=kind)


def multi_objective_grace(fidelity: dict) -> Any:
    """The default grace of a study with several objectives: ``reduction_factor`` units (bounded by ``max``), where a
    study with one objective starts at 1. The scheduler then drops ASHA's earliest rung (``cluster.pareto_asha``).

    Why: at a rung, the costs known before training (GFLOPs, parameters) are exact and never improve, while the
    accuracy is an early estimate that does. At the earliest rung a configuration whose accuracy rises late (a larger
    model, a slower-starting input) is dominated by a cheaper one that starts fast, and stopped for good, although it
    would end on the front; one objective has no exact axis that fixes the comparison so early. On bench_pareto's grid
    (24 configurations, 4 epochs) the CCC after epoch 1 ranks the final CCC with Kendall's tau 0.61, after epoch 2
    with 0.78; TPE with the scheduler at grace 1 stopped a configuration of the grid's front at epoch 1 on two of its
    three seeds. A study that sets ``fidelity.grace`` keeps it."""
    if not isinstance(fidelity.get("reduction_factor"), int) or not isinstance(fidelity.get("max"), int):
        return 1  # a malformed value: the checks below say so
    return max(1, min(fidelity["reduction_factor"], fidelity["max"]))


def _check_objectives(raw: dict, path: Path, single: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """The study's objectives: ``objectives: {name: mode, ...}`` (2 or 3, in order, the first the primary one), or the
    one ``objective``. Whether each name is a metric trials report or a measured cost is the sweep's check
    (``cluster.preflight.check_objectives``), which knows what trials report."""
    if "objectives" not in raw:
        return (single,)
    if "objective" in raw:
        raise SpaceError(f"{path}: give objective (one) or objectives (several), not both")
    given = _mapping(raw["objectives"], path, "objectives")
    if not 2 <= len(given) <= MAX_OBJECTIVES:
        raise SpaceError(f"{path}: objectives names {len(given)} metric(s); allowed: 2 to {MAX_OBJECTIVES} "
                         "(one objective: objective: {metric: ..., mode: ...})")
    for name, mode in given.items():
        if mode not in ("min", "max"):
            raise SpaceError(f"{path}: objectives.{name} is {mode!r}; allowed: min, max")
    return tuple((str(k), str(v)) for k, v in given.items())


def cv_conflict(kind: str, fidelity_attr: str, objectives: int) -> str | None:
    """Why a study of ``kind`` with this fidelity and number of objectives cannot be cross-validated, None when it can:
    the one rule for a study file's ``cv`` and for ``--folds``."""
    if kind == "pretrain":
        return "a pretraining study takes no cross-validation (its probe scores the validation subjects)"
    if fidelity_attr != "epoch":
        return (f"cross-validation needs fidelity.attr epoch (a CV trial reports once per fold-epoch); fidelity.attr "
                f"is {fidelity_attr!r}")
    if objectives > 1:
        return "cross-validation and several objectives do not go together yet; cross-validate a single objective"
    return None


def _check_cv(value: Any, path: Path) -> dict[str, int]:
    """The ``cv`` key: ``{folds: K}`` (K >= 2) and an optional ``seed`` for the fold assignment (whether the study can
    be cross-validated at all: :func:`cv_conflict`)."""
    if value is None:
        return {}
    cv = _mapping(value, path, "cv")
    _only(cv, CV_KEYS, path, "cv")
    folds, seed = cv.get("folds"), cv.get("seed", 0)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise SpaceError(f"{path}: cv.folds is {folds!r}; allowed: an integer >= 2")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpaceError(f"{path}: cv.seed is {seed!r}; allowed: an integer")
    return {"folds": folds, "seed": seed}


def _read_raw(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: the top level must be a mapping with keys {sorted(TOP_KEYS)}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise SpaceError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    return raw


def _with_base(raw: dict, path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """``raw`` over the study it names as ``base`` (module docstring); one level per file, no loops."""
    if "base" not in raw:
        return raw
    name = raw["base"]
    if not isinstance(name, str):
        raise SpaceError(f"{path}: base must be a study name or a file path; got {name!r}")
    base_path = path.parent / name if (path.parent / name).is_file() else resolve_space_path(name)
    if base_path.resolve() in seen or base_path.resolve() == path.resolve():
        raise SpaceError(f"{path}: base {name!r} leads back to this study; a study cannot be its own base")
    base = _with_base(_read_raw(base_path), base_path, (*seen, path.resolve()))
    if {"objective", "objectives"} & set(raw):  # the objective is one concern: this study's replaces the base's
        base = {k: v for k, v in base.items() if k not in ("objective", "objectives")}
    return {**base, **{k: v for k, v in raw.items() if k != "base"}}


def _values(spec_or_value: Any, is_param: bool) -> list[Any]:
    """Every value a param can take (the bounds for ranges), or the fixed value."""
    if not is_param:
        return [spec_or_value]
    kind = spec_or_value["type"]
    if kind == "constant":
        return [spec_or_value["value"]]
    if kind == "categorical":
        return list(spec_or_value["choices"])
    return [spec_or_value["low"], spec_or_value["high"]]


def _in_domain(spec: dict[str, Any], value: Any) -> bool:
    kind = spec["type"]
    if kind == "constant":
        return value == spec["value"]
    if kind == "categorical":
        return value in spec["choices"]
    return isinstance(value, (int, float)) and spec["low"] <= value <= spec["high"]


def _domain_text(spec: dict[str, Any]) -> str:
    kind = spec["type"]
    if kind == "categorical":
        return "one of " + ", ".join(map(str, spec["choices"]))
    if kind == "constant":
        return f"the constant {spec['value']!r}"
    return f"{kind} from {spec['low']} to {spec['high']}"


def _check_constraints(items: Any, path: Path, fixed: dict, params: dict) -> tuple[tuple[str, str, str], ...]:
    """Constraints ``"a >= b"`` between params, fixed settings or numbers are checked here, once, over every value
    each side can take: a study file either can never produce a config that breaks them, or it is refused (Optuna's
    define-by-run cannot reject a sampled config, so the space itself must be consistent)."""
    if not isinstance(items, list):
        raise SpaceError(f"{path}: constraints must be a list of strings like 'window_length >= clip_len'")
    out = []
    for i, text in enumerate(items):
        parts = str(text).split()
        if len(parts) != 3 or parts[1] not in CONSTRAINT_OPS:
            raise SpaceError(f"{path}: constraints[{i}] {text!r} must read '<a> <op> <b>' with op in "
                             f"{', '.join(CONSTRAINT_OPS)}")
        sides = []
        for token in (parts[0], parts[2]):
            if token in params:
                sides.append(_values(params[token], True))
            elif token in fixed:
                sides.append(_values(fixed[token], False))
            else:
                try:
                    sides.append([float(token)])
                except ValueError:
                    raise SpaceError(f"{path}: constraints[{i}] names {token!r}, which is neither a param, a fixed "
                                     "setting nor a number") from None
        op = CONSTRAINT_OPS[parts[1]]
        bad = [(a, b) for a in sides[0] for b in sides[1] if not op(a, b)]
        if bad:
            a, b = bad[0]
            raise SpaceError(f"{path}: constraints[{i}] {text!r} can be broken ({parts[0]}={a}, {parts[2]}={b}); "
                             "narrow the ranges so every sampled config satisfies it")
        out.append((parts[0], parts[1], parts[2]))
    return tuple(out)


def suggest(space: SearchSpace, trial) -> dict[str, Any]:
    """Optuna define-by-run: ask ``trial`` for every active parameter, in file order; returns the constants
    (fixed settings and ``constant`` params) that Optuna does not track. A conditional param is asked only when
    every ``when`` condition holds for the values chosen before it."""
    chosen: dict[str, Any] = dict(space.fixed)
    constants: dict[str, Any] = dict(space.fixed)
    for key, spec in space.params.items():
        if not _active(spec, chosen):
            continue
        kind = spec["type"]
        if kind == "constant":
            value = constants[key] = spec["value"]
        elif kind == "categorical":
            value = trial.suggest_categorical(key, spec["choices"])
        elif kind == "int":
            value = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False))
        elif kind == "uniform":
            value = trial.suggest_float(key, spec["low"], spec["high"], step=spec.get("step"))
        else:  # loguniform
            value = trial.suggest_float(key, spec["low"], spec["high"], log=True)
        chosen[key] = value
    return constants


def _active(spec: dict[str, Any], chosen: dict[str, Any]) -> bool:
    """Whether a param is asked, given the values chosen before it: every ``when`` condition holds."""
    return all(chosen.get(k) in allowed for k, allowed in spec.get("when", {}).items())


def finite_points(space: SearchSpace, limit: int = 100_000) -> list[dict[str, Any]] | None:
    """Every configuration of a finite space, as the params Optuna tracks (what :func:`suggest` asks: conditional params
    only where their conditions hold, constants left out), in file order; None when a param is continuous (a float
    range without ``step``) or the space holds more than ``limit`` configurations."""
    partial: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, dict(space.fixed))]  # (asked params, all chosen)
    for key, spec in space.params.items():
        grown = []
        for asked, chosen in partial:
            if not _active(spec, chosen):
                grown.append((asked, chosen))
                continue
            if spec["type"] == "constant":
                grown.append((asked, {**chosen, key: spec["value"]}))
                continue
            values = _grid(spec)
            if values is None:
                return None
            grown += [({**asked, key: v}, {**chosen, key: v}) for v in values]
            if len(grown) > limit:
                return None
        partial = grown
    return [asked for asked, _ in partial]


def _grid(spec: dict[str, Any]) -> list[Any] | None:
    """The values of one param, or None when it is continuous."""
    kind = spec["type"]
    if kind == "categorical":
        return list(spec["choices"])
    if kind == "int":  # a log-scaled int still takes every integer in its range (Optuna allows no step with log)
        return list(range(int(spec["low"]), int(spec["high"]) + 1, int(spec.get("step", 1))))
    if kind == "uniform" and spec.get("step"):
        count = int(round((spec["high"] - spec["low"]) / spec["step"]))
        return [spec["low"] + i * spec["step"] for i in range(count + 1)]
    return None


def _mapping(value: Any, path: Path, key: str) -> dict:
    if not isinstance(value, dict):
        raise SpaceError(f"{path}: {key} must be a mapping, got {type(value).__name__}")
    return value


def _only(value: dict, allowed: set[str], path: Path, key: str) -> None:
    unknown = set(value) - allowed
    if unknown:
        raise SpaceError(f"{path}: unknown key(s) {sorted(unknown)} in {key}; allowed: {sorted(allowed)}")


def _check_param(spec: Any, path: Path, key: str) -> dict[str, Any]:
    if not isinstance(spec, dict) or "type" not in spec:
        raise SpaceError(f"{path}: {key} must be a mapping with a 'type' ({', '.join(DISTRIBUTIONS)})")
    kind = spec["type"]
    if kind not in DISTRIBUTIONS:
        raise SpaceError(f"{path}: {key}.type is {kind!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    needed = DISTRIBUTIONS[kind]
    missing = [k for k in needed if k not in spec]
    if missing:
        raise SpaceError(f"{path}: {key} ({kind}) lacks {', '.join(missing)}")
    unknown = set(spec) - {"type", *needed, *OPTIONAL_PARAM_KEYS}
    if unknown:
        raise SpaceError(f"{path}: {key} has unknown key(s) {sorted(unknown)}; allowed for {kind}: "
                         f"{sorted({'type', *needed, *OPTIONAL_PARAM_KEYS})}")
    if kind in ("uniform", "loguniform", "int"):
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
            raise SpaceError(f"{path}: {key}.low/high must be finite numbers, got {low!r}, {high!r}")
        if low > high:
            raise SpaceError(f"{path}: {key}.low ({low}) exceeds high ({high})")
        if kind == "loguniform" and low <= 0:
            raise SpaceError(f"{path}: {key}.low must be > 0 for loguniform, got {low}")
        if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
            raise SpaceError(f"{path}: {key}.low/high must be integers for int, got {low!r}, {high!r}")
    if kind == "categorical" and (not isinstance(spec["choices"], list) or not spec["choices"]):
        raise SpaceError(f"{path}: {key}.choices must be a non-empty list")
    if "when" in spec and not isinstance(spec["when"], dict):
        raise SpaceError(f"{path}: {key}.when must be a mapping of parameter -> list of values")
    return dict(spec)
