"""Tests for search_spaces.schema: YAML study files -> SearchSpace -> Optuna define-by-run."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.samplers import TPESampler

from search_spaces.schema import DISTRIBUTIONS, SearchSpace, SpaceError, load_space, resolve_space_path, \
    shipped_spaces, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _ask(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``n`` asks with a seeded TPE study; each told a deterministic value. Returns (trial.params, constants)."""
    study = optuna.create_study(direction="maximize" if space.mode == "max" else "minimize",
                                sampler=TPESampler(seed=seed))
    samples = []
    for i in range(n):
        trial = study.ask()
        constants = suggest(space, trial)
        samples.append((dict(trial.params), constants))
        study.tell(trial, float(i % 3))
    return samples


def _active(spec: dict[str, Any], chosen: dict[str, Any]) -> bool:
    return all(chosen.get(k) in allowed for k, allowed in spec.get("when", {}).items())


def _in_spec(value: Any, spec: dict[str, Any]) -> bool:
    kind = spec["type"]
    if kind == "categorical":
        return value in spec["choices"]
    if kind == "constant":
        return value == spec["value"]
    if kind == "int":
        step = spec.get("step", 1)
        return isinstance(value, int) and spec["low"] <= value <= spec["high"] and (value - spec["low"]) % step == 0
    return isinstance(value, float) and spec["low"] <= value <= spec["high"]


# --- shipped study files ---------------------------------------------------------------------------------------------

def test_smoke_is_shipped() -> None:
    assert [p.name for p in shipped_spaces()].count("smoke.yaml") == 1
    assert all(p.suffix == ".yaml" and p.is_file() for p in shipped_spaces())


@pytest.mark.parametrize("path", shipped_spaces(), ids=lambda p: p.stem)
def test_shipped_space_loads_and_samples_within_declared_ranges(path: Path) -> None:
    space = load_space(path)
    assert space.path == path
    assert space.mode in ("min", "max")
    assert space.params, "a shipped study should search something"
    assert not set(space.fixed) & set(space.params)

    for params, constants in _ask(space, 5):
        chosen = dict(space.fixed)
        for key, spec in space.params.items():
            if not _active(spec, chosen):
                assert key not in params and key not in constants, key
                continue
            value = constants[key] if spec["type"] == "constant" else params[key]
            assert _in_spec(value, spec), (key, value, spec)
            chosen[key] = value
        # Everything asked from Optuna is a declared, non-constant param; the constants are fixed + constant params.
        assert set(params) <= {k for k, s in space.params.items() if s["type"] != "constant"}
        expected_constants = {**space.fixed, **{k: s["value"] for k, s in space.params.items()
                                                if s["type"] == "constant" and k in chosen}}
        assert constants == expected_constants


def test_smoke_space_values() -> None:
    space = load_space("smoke")
    assert space.name == "smoke"
    assert space.path == resolve_space_path("smoke")
    assert (space.metric, space.mode) == ("val_ccc_mean", "max")
    assert space.fidelity == {"attr": "epoch", "max": 4, "grace": 1, "reduction_factor": 2, "per_epoch": 1}
    assert space.resources == {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}
    assert space.fixed["backbone"] == "cnn_rnn_tiny"
    assert space.params["lr"] == {"type": "loguniform", "low": 5.0e-4, "high": 5.0e-3}
    assert list(space.params) == ["lr", "batch_size", "ssts_stride", "window_overlap", "w_mse", "rnn_hidden"]

    for params, constants in _ask(space, 5):
        assert set(params) == set(space.params)
        assert constants == space.fixed


def test_same_seed_same_suggestions() -> None:
    space = load_space("smoke")
    first, second = _ask(space, 12, seed=0), _ask(space, 12, seed=0)
    assert first == second
    # ... and the seed matters.
    assert _ask(space, 12, seed=1) != first


def test_defaults_when_optional_sections_are_missing(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        params:
          x: {type: uniform, low: 0.0, high: 1.0}
        """)
    space = load_space(path)
    assert space.name == "study"
    assert (space.metric, space.mode) == ("val_ccc_mean", "max")
    assert space.fidelity == {"attr": "epoch", "max": 4, "grace": 1, "reduction_factor": 2, "per_epoch": 1}
    assert space.resources == {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}
    assert space.fixed == {}
    assert space.description == ""


def test_every_distribution_is_suggested_with_its_settings(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        fixed: {seed: 3}
        params:
          u: {type: uniform, low: -1.0, high: 1.0}
          us: {type: uniform, low: 0.0, high: 1.0, step: 0.25}
          lu: {type: loguniform, low: 1.0e-5, high: 1.0e-1}
          i: {type: int, low: 2, high: 10, step: 4}
          il: {type: int, low: 1, high: 64, log: true}
          c: {type: categorical, choices: [a, b]}
          k: {type: constant, value: 7}
        """)
    space = load_space(path)
    study = optuna.create_study(sampler=TPESampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        constants = suggest(space, trial)
        assert constants == {"seed": 3, "k": 7}
        p = trial.params
        assert set(p) == {"u", "us", "lu", "i", "il", "c"}
        assert -1.0 <= p["u"] <= 1.0
        assert p["us"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert 1e-5 <= p["lu"] <= 1e-1
        assert p["i"] in (2, 6, 10)
        assert 1 <= p["il"] <= 64 and isinstance(p["il"], int)
        assert p["c"] in ("a", "b")
        study.tell(trial, p["u"])
    dists = study.trials[0].distributions
    assert dists["lu"].log is True
    assert dists["il"].log is True
    assert dists["us"].step == 0.25
    assert dists["u"].log is False


# --- conditional parameters ------------------------------------------------------------------------------------------

def test_conditional_param_asked_exactly_when_condition_holds(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        params:
          rnn: {type: categorical, choices: [gru, lstm]}
          rnn_layers: {type: int, low: 1, high: 3, when: {rnn: [gru]}}
          hidden: {type: categorical, choices: [8, 16]}
        """)
    space = load_space(path)
    seen = set()
    for params, constants in _ask(space, 40):
        assert constants == {}
        seen.add(params["rnn"])
        assert "hidden" in params
        if params["rnn"] == "gru":
            assert params["rnn_layers"] in (1, 2, 3)
        else:
            assert "rnn_layers" not in params
    assert seen == {"gru", "lstm"}, "both branches must have been exercised"


def test_conditional_on_fixed_setting(tmp_path: Path) -> None:
    text = """\
        fixed: {rnn: %s}
        params:
          rnn_layers: {type: int, low: 1, high: 3, when: {rnn: [gru]}}
          lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
        """
    off = load_space(_write(tmp_path, text % "lstm", "off.yaml"))
    on = load_space(_write(tmp_path, text % "gru", "on.yaml"))
    for params, constants in _ask(off, 5):
        assert set(params) == {"lr"}
        assert constants == {"rnn": "lstm"}
    for params, constants in _ask(on, 5):
        assert set(params) == {"rnn_layers", "lr"}
        assert constants == {"rnn": "gru"}


def test_conditional_chain_skips_descendants_of_inactive_params(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        params:
          rnn: {type: categorical, choices: [gru, lstm]}
          rnn_layers: {type: int, low: 1, high: 2, when: {rnn: [gru]}}
          rnn_dropout: {type: uniform, low: 0.0, high: 0.5, when: {rnn_layers: [2]}}
        """)
    space = load_space(path)
    for params, _ in _ask(space, 40):
        if params["rnn"] != "gru":
            assert set(params) == {"rnn"}
        elif params["rnn_layers"] == 2:
            assert 0.0 <= params["rnn_dropout"] <= 0.5
        else:
            assert "rnn_dropout" not in params


# --- broken files ----------------------------------------------------------------------------------------------------

BROKEN = {
    "unknown_top_key": ("""\
        params:
          lr: {type: uniform, low: 0.0, high: 1.0}
        paramz: {}
        """, ["unknown top-level key", "paramz", "allowed"]),
    "unknown_type": ("""\
        params:
          lr: {type: gaussian, low: 0.0, high: 1.0}
        """, ["params.lr.type", "gaussian", *DISTRIBUTIONS]),
    "missing_type": ("""\
        params:
          lr: {low: 0.0, high: 1.0}
        """, ["params.lr", "'type'", *DISTRIBUTIONS]),
    "missing_low": ("""\
        params:
          lr: {type: uniform, high: 1.0}
        """, ["params.lr", "lacks low"]),
    "unknown_param_key": ("""\
        params:
          lr: {type: uniform, low: 0.0, high: 1.0, hihg: 2.0}
        """, ["params.lr", "hihg"]),
    "low_gt_high": ("""\
        params:
          lr: {type: uniform, low: 2.0, high: 1.0}
        """, ["params.lr.low", "exceeds high"]),
    "non_numeric_bound": ("""\
        params:
          lr: {type: uniform, low: zero, high: 1.0}
        """, ["params.lr.low/high", "finite numbers"]),
    "loguniform_zero_low": ("""\
        params:
          lr: {type: loguniform, low: 0.0, high: 1.0}
        """, ["params.lr.low", "> 0"]),
    "loguniform_negative_low": ("""\
        params:
          lr: {type: loguniform, low: -1.0, high: 1.0}
        """, ["params.lr.low", "> 0"]),
    "int_float_bounds": ("""\
        params:
          layers: {type: int, low: 1.5, high: 3}
        """, ["params.layers.low/high", "integers"]),
    "empty_choices": ("""\
        params:
          bs: {type: categorical, choices: []}
        """, ["params.bs.choices", "non-empty list"]),
    "when_unknown_key": ("""\
        params:
          layers: {type: int, low: 1, high: 3, when: {rnnn: [gru]}}
        """, ["params.layers.when", "rnnn"]),
    "when_later_param": ("""\
        params:
          layers: {type: int, low: 1, high: 3, when: {rnn: [gru]}}
          rnn: {type: categorical, choices: [gru, lstm]}
        """, ["params.layers.when", "'rnn'", "not declared before"]),
    "when_itself": ("""\
        params:
          rnn: {type: categorical, choices: [gru, lstm], when: {rnn: [gru]}}
        """, ["params.rnn.when", "'rnn'", "not declared before"]),
    "when_not_list": ("""\
        params:
          rnn: {type: categorical, choices: [gru, lstm]}
          layers: {type: int, low: 1, high: 3, when: {rnn: gru}}
        """, ["params.layers.when.rnn", "list"]),
    "bad_mode": ("""\
        objective: {metric: val_ccc_mean, mode: maximize}
        params:
          lr: {type: uniform, low: 0.0, high: 1.0}
        """, ["objective.mode", "maximize", "min, max"]),
    "grace_gt_max": ("""\
        fidelity: {max: 4, grace: 5}
        params:
          lr: {type: uniform, low: 0.0, high: 1.0}
        """, ["fidelity.grace", "(5)", "fidelity.max (4)"]),
    "fidelity_zero": ("""\
        fidelity: {reduction_factor: 0}
        params:
          lr: {type: uniform, low: 0.0, high: 1.0}
        """, ["fidelity.reduction_factor", "integer >= 1"]),
    "fidelity_unknown_key": ("""\
        fidelity: {grase: 1}
        params:
          lr: {type: uniform, low: 0.0, high: 1.0}
        """, ["grase", "fidelity"]),
    "resources_unknown_key": ("""\
        resources: {gpus: 1}
        params:
          lr: {type: uniform, low: 0.0, high: 1.0}
        """, ["'gpus'", "resources", "gpus_per_worker"]),
    "fixed_and_searched": ("""\
        fixed: {lr: 0.001}
        params:
          lr: {type: uniform, low: 0.0, high: 1.0}
        """, ["['lr']", "both fixed and searched"]),
    "params_not_mapping": ("""\
        params: [lr, bs]
        """, ["params must be a mapping"]),
    "top_level_list": ("""\
        - name: smoke
        """, ["top level must be a mapping"]),
    "invalid_yaml": ("""\
        params:
          lr: {type: uniform, low: 0.0, high: 1.0
        """, ["not valid YAML"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_space_raises_naming_file_and_key(tmp_path: Path, case: str) -> None:
    text, fragments = BROKEN[case]
    path = _write(tmp_path, text, f"{case}.yaml")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert isinstance(info.value, ValueError)


# --- resolving names and overrides -----------------------------------------------------------------------------------

def test_resolve_shipped_name_and_path() -> None:
    smoke = resolve_space_path("smoke")
    assert smoke.name == "smoke.yaml" and smoke.is_file()
    assert smoke in shipped_spaces()
    assert resolve_space_path(smoke) == smoke
    assert load_space("smoke") == load_space(smoke)


def test_resolve_unknown_name_lists_shipped(tmp_path: Path) -> None:
    with pytest.raises(SpaceError) as info:
        load_space("no_such_study")
    message = str(info.value)
    assert "'no_such_study'" in message
    for path in shipped_spaces():
        assert path.stem in message
    with pytest.raises(SpaceError, match="neither a file nor a shipped study"):
        load_space(tmp_path / "missing.yaml")


def test_override_pins_searched_param_to_constant() -> None:
    base = load_space("smoke")
    space = load_space("smoke", {"lr": 0.001})
    assert space.params["lr"] == {"type": "constant", "value": 0.001}
    assert space.fixed == base.fixed
    assert {k: v for k, v in space.params.items() if k != "lr"} == {k: v for k, v in base.params.items() if k != "lr"}
    for params, constants in _ask(space, 5):
        assert "lr" not in params
        assert constants == {**base.fixed, "lr": 0.001}
        assert set(params) == set(base.params) - {"lr"}


def test_override_new_key_lands_in_fixed_and_fixed_key_is_replaced() -> None:
    base = load_space("smoke")
    space = load_space("smoke", {"new_key": 3, "seed": 42})
    assert space.fixed == {**base.fixed, "new_key": 3, "seed": 42}
    assert space.params == base.params
    for _, constants in _ask(space, 2):
        assert constants["new_key"] == 3 and constants["seed"] == 42


def test_override_keeps_condition_of_pinned_param(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        params:
          rnn: {type: categorical, choices: [gru, lstm]}
          rnn_layers: {type: int, low: 1, high: 3, when: {rnn: [gru]}}
        """)
    space = load_space(path, {"rnn_layers": 2})
    assert space.params["rnn_layers"] == {"type": "constant", "value": 2, "when": {"rnn": ["gru"]}}
    for params, constants in _ask(space, 30):
        assert constants == ({"rnn_layers": 2} if params["rnn"] == "gru" else {})


def test_overrides_do_not_leak_between_loads() -> None:
    load_space("smoke", {"lr": 0.001, "new_key": 1})
    fresh = load_space("smoke")
    assert fresh.params["lr"]["type"] == "loguniform"
    assert "new_key" not in fresh.fixed
    assert not math.isnan(fresh.params["lr"]["low"])


def test_data_fraction_fidelity(tmp_path):
    ok = tmp_path / "frac.yaml"
    ok.write_text("fidelity: {attr: data_fraction, max: 8, grace: 2}\nparams: {lr: {type: uniform, low: 0.1, high: 1}}\n")
    assert load_space(ok).fidelity == {"attr": "data_fraction", "max": 8, "grace": 2, "reduction_factor": 2,
                                       "per_epoch": 4}
    bad = tmp_path / "bad.yaml"
    bad.write_text("fidelity: {attr: batches}\n")
    with pytest.raises(SpaceError, match=r"bad\.yaml.*fidelity\.attr.*epoch, data_fraction"):
        load_space(bad)
    bad.write_text("fidelity: {attr: epoch, per_epoch: 2}\n")
    with pytest.raises(SpaceError, match=r"bad\.yaml.*per_epoch"):
        load_space(bad)
