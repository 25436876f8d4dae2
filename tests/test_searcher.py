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


# -- trials stopped before their end reach Optuna as PRUNED ----------------------------------------------------------
def stopping_searcher(space, seed: int = 0, sampler=None) -> DistinctOptunaSearch:
    """A sweep's searcher over 6-epoch trials (the progress attribute ``epoch``)."""
    return DistinctOptunaSearch(space=DefineByRun(space, {}), metric="val_ccc_mean", mode="max",
                                sampler=sampler or optuna.samplers.TPESampler(seed=seed, n_startup_trials=2),
                                points=finite_points(space), seed=seed, progress_attr="epoch", max_progress=6)


def train(searcher, trial_id: str, values: list[float], stop: bool, **last) -> dict:
    """Tune's calls for one trial reporting ``values`` (one per epoch): every result but a stopping one goes to
    ``on_trial_result`` (Tune does not pass the result that stops a trial; the trial's end at max progress is a stop
    too), the last one to ``on_trial_complete``."""
    config = searcher.suggest(trial_id)
    results = [{"epoch": e, "training_iteration": e, "val_ccc_mean": v} for e, v in enumerate(values, 1)]
    results[-1].update(last)
    for r in results[:-1]:
        searcher.on_trial_result(trial_id, r)
    if not stop:
        searcher.on_trial_result(trial_id, results[-1])
    searcher.on_trial_complete(trial_id, results[-1])
    return config


def test_a_stopped_trial_is_pruned_with_its_last_value_a_finished_one_complete(space):
    searcher = stopping_searcher(space)
    train(searcher, "stopped", [0.40, 0.55, 0.52], stop=True)  # ASHA stopped it at epoch 3 of 6
    train(searcher, "finished", [0.30, 0.40, 0.50, 0.60, 0.62, 0.61], stop=True)  # stopped at its end: finished
    train(searcher, "returned", [0.2, 0.3], stop=False)  # ended by itself (a time budget), before its end
    train(searcher, "diverged", [0.1, -1.0], stop=False, diverged=1)  # its worst value is its answer
    searcher.suggest("errored")
    searcher.on_trial_complete("errored", None, error=True)
    by_id = {tid: searcher._ot_study._storage.get_trial(t._trial_id) for tid, t in searcher._ot_trials.items()}
    stopped = by_id["stopped"]
    assert stopped.state == TrialState.PRUNED
    assert stopped.intermediate_values == {1: 0.40, 2: 0.55, 3: 0.52}  # the last value is the last intermediate
    assert stopped.value == 0.52  # Optuna records a pruned trial's last intermediate value as its value
    assert by_id["returned"].state == TrialState.PRUNED and by_id["returned"].intermediate_values == {1: 0.2, 2: 0.3}
    assert by_id["finished"].state == TrialState.COMPLETE and by_id["finished"].value == 0.61
    assert by_id["diverged"].state == TrialState.COMPLETE and by_id["diverged"].value == -1.0
    assert by_id["errored"].state == TrialState.FAIL


def test_tpe_ranks_a_stopped_trial_as_pruned(space):
    """A trial stopped after one epoch at a value above a finished trial's final value: as PRUNED, TPE puts the
    finished trial in its good group ("below") and the stopped one in the other, and the study's best is the
    finished one. (Told as COMPLETE, as Ray's OptunaSearch tells it, the stopped trial's early value would win.)"""
    from optuna.samplers._tpe.sampler import _split_trials

    searcher = stopping_searcher(space)
    train(searcher, "early", [0.9], stop=True)
    train(searcher, "whole", [0.3, 0.4, 0.5, 0.6, 0.7, 0.8], stop=True)
    study = searcher._ot_study
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert study.best_trial.number == 1
    below, above = _split_trials(study, study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)), 1)
    assert [t.number for t in below] == [1] and [t.number for t in above] == [0]


def test_pruned_trials_count_as_tried(space):
    """ASHA stops half the trials: each configuration is still started once, and the space is used up."""
    searcher = stopping_searcher(space)
    started = []
    for i in range(30):
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        started.append(tuple(sorted(config.items())))
        s = score(config) / 4
        train_values = [s] if i % 2 else [s] * 6
        for e, v in enumerate(train_values[:-1], 1):
            searcher.on_trial_result(f"t{i}", {"epoch": e, "training_iteration": e, "val_ccc_mean": v})
        e = len(train_values)
        searcher.on_trial_complete(f"t{i}", {"epoch": e, "training_iteration": e, "val_ccc_mean": train_values[-1]})
    assert len(started) == len(set(started)) == 18 and searcher.exhausted
    states = [t.state for t in searcher._ot_study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))]
    assert states.count(TrialState.PRUNED) == 9 and states.count(TrialState.COMPLETE) == 9


def test_a_stopped_trial_of_several_objectives_is_complete_with_its_rung_values_and_where_it_stopped(space):
    """Optuna keeps no values for a pruned multi-objective trial: the searcher tells a stopped one COMPLETE with the
    values it stopped at and ``emotune_stopped_at``, and NSGA-II / TPE then count it among the study's trials."""
    from cluster.searcher import STOPPED_ATTR

    searcher = DistinctOptunaSearch(space=DefineByRun(space, {}), metric=["val_ccc_mean", "gflops"],
                                    mode=["max", "min"], sampler=optuna.samplers.TPESampler(seed=0),
                                    points=finite_points(space), seed=0, progress_attr="epoch", max_progress=6)
    for trial_id, epochs in (("stopped", 2), ("whole", 6)):
        searcher.suggest(trial_id)
        last = {"epoch": epochs, "training_iteration": epochs, "val_ccc_mean": 0.1 * epochs, "gflops": 1.5}
        searcher.on_trial_complete(trial_id, last)
    by_id = {tid: searcher._ot_study._storage.get_trial(t._trial_id) for tid, t in searcher._ot_trials.items()}
    assert by_id["stopped"].state == TrialState.COMPLETE and by_id["stopped"].values == [pytest.approx(0.2), 1.5]
    assert by_id["stopped"].user_attrs == {STOPPED_ATTR: 2.0}
    assert by_id["whole"].state == TrialState.COMPLETE and STOPPED_ATTR not in by_id["whole"].user_attrs
    assert len(searcher._ot_study.best_trials) == 1  # the whole trial dominates the stopped one


WINDOWS = """
name: windows
objective: {metric: val_ccc_mean, mode: max}
fidelity: {attr: epoch, max: 6, grace: 1, reduction_factor: 3}
fixed: {backbone: cnn_rnn_tiny}
params:
  window_length: {type: categorical, choices: [16, 32, 64]}
  window_overlap: {type: categorical, choices: [0.2, 0.5, 0.8]}
  label_fusion: {type: categorical, choices: [mean, extremum]}
  fps: {type: categorical, choices: [10, 25]}
"""


@pytest.mark.parametrize("seed", range(6))
def test_a_neighbour_is_the_untried_one_tpe_rates_highest(tmp_path, seed):
    """The study of a window-grid sweep (bench_search_efficiency, TPE seed 1) when TPE keeps proposing its best
    trial, (32, 0.8, mean, 25): two neighbours are untried, (16, 0.8, mean, 25) and (32, 0.5, mean, 25). Window 16 is
    in the study's other good trial and in no bad one, overlap 0.5 only in bad ones: the neighbour is (16, 0.8, mean,
    25), whatever the seed (a draw took either)."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    path = tmp_path / "windows.yaml"
    path.write_text(textwrap.dedent(WINDOWS))
    space = load_space(path)
    searcher = stopping_searcher(space, seed=seed)
    keys = ("window_length", "window_overlap", "label_fusion", "fps")
    dists = {k: CategoricalDistribution(space.params[k]["choices"]) for k in keys}
    finished = {(32, 0.8, "mean", 25): 0.950, (16, 0.2, "extremum", 25): 0.937, (32, 0.2, "extremum", 25): 0.329}
    stopped = {(64, 0.5, "extremum", 25): 0.004, (32, 0.2, "extremum", 10): 0.035, (32, 0.5, "extremum", 25): 0.056,
               (32, 0.2, "mean", 25): 0.035, (32, 0.8, "mean", 10): 0.002, (64, 0.8, "mean", 25): -0.005,
               (64, 0.5, "mean", 10): 0.015, (32, 0.8, "extremum", 25): 0.871}
    rand = stopping_searcher(space, sampler=optuna.samplers.RandomSampler(seed=seed))
    for study in (searcher._ot_study, rand._ot_study):
        for config, value in finished.items():
            study.add_trial(create_trial(params=dict(zip(keys, config)), distributions=dists, value=value))
        for config, value in stopped.items():
            study.add_trial(create_trial(params=dict(zip(keys, config)), distributions=dists, state=TrialState.PRUNED,
                                         intermediate_values={1: value}))
    best = {**dict(zip(keys, (32, 0.8, "mean", 25))), "backbone": "cnn_rnn_tiny"}
    chosen = searcher._closest_untried(best)
    assert {k: chosen[k] for k in keys} == dict(zip(keys, (16, 0.8, "mean", 25)))
    # Random search keeps its draw: no TPE rating without TPE.
    assert searcher._value_ratios() is not None and rand._value_ratios() is None
