"""The sweep's searcher never trains a configuration twice: repeats are closed in Optuna without training, TPE is asked
again, then the closest untried configuration is taken, and a finite space that has been tried whole ends the sweep."""
from __future__ import annotations

import textwrap

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from cluster.searcher import REPEAT_ATTR, DistinctOptunaSearch
from cluster.sweep import DefineByRun
from search_spaces.schema import finite_points, load_space

optuna.logging.set_verbosity(optuna.logging.ERROR)

STUDY = """
name: tiny_grid
objective: {metric: val_ccc_mean, mode: max}
fidelity: {attr: epoch, max: 2, grace: 1, reduction_factor: 2}
fixed: {backbone: cnn_rnn_tiny}
params:
  window_length: {type: categorical, choices: [16, 32, 64]}
  label_fusion: {type: categorical, choices: [mean, extremum]}
  rnn: {type: categorical, choices: [gru, lstm]}
  rnn_layers: {type: int, low: 1, high: 2, when: {rnn: [gru]}}
"""


def score(config: dict) -> float:
    """A landscape with one clear best (64, extremum, gru, 2 layers) that TPE soon keeps proposing."""
    return (config["window_length"] / 64 + (config["label_fusion"] == "extremum") + (config["rnn"] == "gru")
            + 0.5 * config.get("rnn_layers", 0))


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "tiny_grid.yaml"
    path.write_text(textwrap.dedent(STUDY))
    return load_space(path)


def test_finite_points_follow_the_conditions(space, tmp_path):
    points = finite_points(space)
    assert len(points) == 3 * 2 * (2 + 1)  # gru with 1 or 2 layers, lstm without the layers param
    assert {"window_length": 64, "label_fusion": "mean", "rnn": "lstm"} in points
    assert all(("rnn_layers" in p) == (p["rnn"] == "gru") for p in points)
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    continuous = tmp_path / "c.yaml"
    continuous.write_text(textwrap.dedent(STUDY) + "  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-3}\n")
    assert finite_points(load_space(continuous)) is None


def run(space, trials: int, seed: int = 0) -> tuple[DistinctOptunaSearch, list[dict]]:
    """A sweep's searcher calls, one trial at a time: suggest, then complete with the landscape's score."""
    searcher = DistinctOptunaSearch(space=DefineByRun(space, {}), metric="val_ccc_mean", mode="max",
                                    sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=2),
                                    points=finite_points(space), seed=seed)
    started = []
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        started.append(config)
        searcher.on_trial_complete(f"t{i}", {"val_ccc_mean": score(config)})
    return searcher, started


def test_no_configuration_is_started_twice_and_the_space_is_used_up(space, capsys):
    searcher, started = run(space, trials=30)
    keys = [tuple(sorted(c.items())) for c in started]
    assert len(keys) == len(set(keys)) == 18  # each of the 18 configurations once, then the searcher is finished
    assert searcher.exhausted
    assert "every one of the study's 18 configurations has been tried" in capsys.readouterr().out
    study = searcher._ot_study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(complete) == 18
    # TPE did repeat itself on this landscape; every repeat is closed, names the trial it repeats, and holds its params
    assert searcher.repeats_skipped == len(failed) > 0
    by_number = {t.number: t for t in complete}
    for t in failed:
        assert by_number[t.user_attrs[REPEAT_ATTR]].params == t.params
    assert searcher.neighbours_chosen > 0


def test_the_best_configuration_is_found_early_and_kept_once(space):
    _searcher, started = run(space, trials=10)
    best = {"window_length": 64, "label_fusion": "extremum", "rnn": "gru", "rnn_layers": 2, "backbone": "cnn_rnn_tiny"}
    assert started.count(best) == 1


def test_a_running_configuration_is_not_started_again(space):
    """Two trials at a time: the second suggestion may not repeat the first while it still runs."""
    searcher = DistinctOptunaSearch(space=DefineByRun(space, {}), metric="val_ccc_mean", mode="max",
                                    sampler=optuna.samplers.RandomSampler(seed=3), points=finite_points(space),
                                    reasks=0)
    running = [searcher.suggest(f"r{i}") for i in range(18)]
    assert len({tuple(sorted(c.items())) for c in running}) == 18
    assert searcher.suggest("r18") == Searcher.FINISHED
