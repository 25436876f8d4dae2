"""The sweep's scheduler (``cluster.racing``): ASHA without folds; with subject K-fold cross-validation, ASHA's rungs
inside fold 1 and a paired race at every later fold boundary. The scheduler is driven directly, as Ray's own scheduler
tests drive theirs: stub ``Trial`` objects and result dicts, no Ray cluster (but for the resume test at the end)."""
from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.trial_scheduler import TrialScheduler

from cluster.racing import STATE_FILE, FoldRacing, make_scheduler
from search_spaces.schema import load_space

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
METRIC = "val_ccc_mean"
E, K = 6, 3  # epochs per fold, folds


def trial(name: str) -> Trial:
    return Trial("__fake", stub=True, trial_id=name)


def racing(grace: int = E, **kwargs) -> FoldRacing:
    """Fold racing over K folds of E epochs; by default without rungs inside fold 1 (grace E), for the races."""
    return FoldRacing(folds=K, fold_epochs=E, grace_period=grace, reduction_factor=3, metric=METRIC, mode="max",
                      **kwargs)


class CVTrial:
    """One cross-validated trial's reports as the training loop makes them (the result-key contract): ``curves[f]``
    is fold f+1's objective after each of its E epochs."""

    def __init__(self, sched: FoldRacing, name: str):
        self.sched, self.trial, self.done = sched, trial(name), []  # done: finished folds' scores
        sched.on_trial_add(None, self.trial)

    def report(self, fold: int, fold_epoch: int, best: float) -> str:
        """One report; ``best``: the fold's best value so far."""
        so_far = self.done + [best]
        result = {"fold": fold, "fold_epoch": fold_epoch, "fold_epochs": (fold - 1) * E + fold_epoch,
                  "folds_done": fold if fold_epoch == E else fold - 1, "fold_best": best, f"fold_{METRIC}": best,
                  METRIC: sum(so_far) / len(so_far), "training_iteration": (fold - 1) * E + fold_epoch}
        if fold_epoch == E:
            self.done.append(best)
        return self.sched.on_trial_result(None, self.trial, result)

    def fold(self, fold: int, score: float, start: float | None = None) -> list[str]:
        """A whole fold, rising linearly from ``start`` (default: the score) to ``score``; the decisions."""
        start = score if start is None else start
        return [self.report(fold, e, start + (score - start) * (e - 1) / (E - 1)) for e in range(1, E + 1)]


def test_the_rungs_are_asha_s_inside_fold_1_and_the_fold_boundaries():
    sched = racing(grace=1)
    assert sorted(sched._rungs) == [1, 3]  # grace * rf**j < E = 6
    assert sorted(sched._boundaries) == [1, 2]  # after folds 1 and 2 of 3 (the end of fold 3 is the trial's end)
    sched = FoldRacing(folds=5, fold_epochs=20, grace_period=2, reduction_factor=3, metric=METRIC, mode="max")
    assert sorted(sched._rungs) == [2, 6, 18] and sorted(sched._boundaries) == [1, 2, 3, 4]


def test_asha_inside_fold_1():
    """Before the end of fold 1 every decision is ASHA's on the same reports (ASHA's rungs below E are the same)."""
    import random

    rng = random.Random(0)
    sched = racing(grace=1)
    asha = ASHAScheduler(time_attr="fold_epochs", metric=METRIC, mode="max", max_t=E, grace_period=1,
                         reduction_factor=3)
    trials = [trial(f"t{i}") for i in range(40)]
    for t in trials:
        sched.on_trial_add(None, t)
        asha.on_trial_add(None, t)
    alive = set(range(len(trials)))
    decisions = {CONTINUE: 0, STOP: 0}
    for epoch in range(1, E):
        for i in sorted(alive):
            result = {"fold": 1, "fold_epoch": epoch, "fold_epochs": epoch, "folds_done": 0,
                      "fold_best": 0.5, METRIC: rng.random()}
            mine, theirs = sched.on_trial_result(None, trials[i], result), asha.on_trial_result(None, trials[i], result)
            assert mine == theirs, (i, epoch)
            decisions[mine] += 1
            if mine == STOP:
                alive.discard(i)
    assert decisions[STOP] > 10 and len(alive) > 2  # both kinds of decision were compared


def test_a_clearly_behind_trial_stops_at_a_fold_boundary_and_a_close_one_races_on():
    sched = racing()
    leader, close, behind = (CVTrial(sched, n) for n in ("leader", "close", "behind"))
    assert set(leader.fold(1, 0.80)) == {CONTINUE}
    assert set(close.fold(1, 0.77)) == {CONTINUE}  # 0.03 behind on fold 1: within delta = 0.05
    decisions = behind.fold(1, 0.70)  # 0.10 behind on fold 1
    assert decisions[:-1] == [CONTINUE] * (E - 1) and decisions[-1] == STOP  # at the boundary, not before
    assert "behind" in sched._stopped
    assert behind.report(2, 1, 0.9) == STOP  # a report after the stop (a resumed trial) is stopped again


def test_paired_comparison_only_on_equal_folds():
    """Fold 2 is hard for everybody: the leader, two folds in, has a cross-validated mean (0.60) below a newcomer's
    fold-1 score (0.70). Compared on fold 1 alone, the newcomer trails the leader's fold 1 by 0.10 and stops; a trial
    reaching the second boundary is compared on folds 1 and 2, not with the leader's three folds."""
    sched = racing()
    leader = CVTrial(sched, "leader")
    leader.fold(1, 0.80)
    leader.fold(2, 0.40)
    assert leader.report(3, 1, 0.5) == CONTINUE
    newcomer = CVTrial(sched, "newcomer")
    newcomer.fold(1, 0.70, start=0.5)
    assert newcomer.trial.trial_id in sched._stopped
    assert sched._boundaries[1]["newcomer"] == (0.70,)
    # A trial level with the leader on fold 1 and better on the hard fold: raced on the two folds the leader also
    # had at that boundary (0.80, 0.40), of which it leads the mean: it is the boundary's new leader.
    second = CVTrial(sched, "second")
    second.fold(1, 0.79)
    assert second.fold(2, 0.45) == [CONTINUE] * E
    assert sched._boundaries[2] == {"leader": (0.80, 0.40), "second": (0.79, 0.45)}
    # The leader finishing fold 3 changes nothing at boundary 2 (its record there keeps folds 1 and 2 only).
    leader.fold(3, 0.9)
    assert sched._boundaries[2]["leader"] == (0.80, 0.40)


def test_the_race_rule():
    """mean(d) > delta on one fold; mean(d) > delta + z * sd(d) / sqrt(k) on k >= 2 (delta 0.05, z 1): on two folds,
    behind by more than delta on both."""
    sched = racing()
    behind = sched.clearly_behind
    assert not behind((0.76,), (0.80,))  # d = 0.04: not more than delta
    assert behind((0.74,), (0.80,))
    assert not behind((0.90,), (0.80,))  # ahead
    assert behind((0.73, 0.53), (0.80, 0.60))  # 0.07 on both folds: sd 0
    assert not behind((0.65, 0.63), (0.80, 0.60))  # 0.15 then -0.03: mean 0.06 < 0.05 + 0.127 / sqrt(2)
    assert behind((0.65, 0.55, 0.55), (0.80, 0.60, 0.62))  # 0.15, 0.05, 0.07: mean 0.09 > 0.05 + 0.031
    assert not racing(delta=0.1).clearly_behind((0.74,), (0.80,))


def test_a_slow_starter_is_judged_at_the_fold_s_end():
    """No rung inside folds 2..K: a trial whose second fold starts far below the leader's is kept through the fold
    and judged on the fold's score."""
    sched = racing()
    leader = CVTrial(sched, "leader")
    leader.fold(1, 0.80)
    leader.fold(2, 0.70)
    slow = CVTrial(sched, "slow")
    slow.fold(1, 0.79)
    assert slow.fold(2, 0.72, start=0.20) == [CONTINUE] * E  # its objective falls to 0.495 at fold 2's start
    assert "slow" not in sched._stopped


def test_a_trial_first_reporting_past_a_rung_is_recorded_there_once():
    sched = racing(grace=1)
    a = CVTrial(sched, "a")
    assert a.report(1, 2, 0.3) == CONTINUE  # passed the rung at 1 without a report there: recorded at 1, once
    assert sched._rungs[1] == {"a": 0.3}


def test_minimised_objectives_race_the_other_way():
    sched = FoldRacing(folds=2, fold_epochs=2, grace_period=2, metric="val_loss", mode="min")
    good, bad = trial("good"), trial("bad")
    for t, score in ((good, 0.10), (bad, 0.30)):
        sched.on_trial_add(None, t)
        for e in (1, 2):
            decision = sched.on_trial_result(None, t, {"fold": 1, "fold_epoch": e, "fold_epochs": e, "fold_best": score,
                                                       "val_loss": score})
    assert decision == STOP and sched._stopped == {"bad"}


STUDY = """
name: tiny
objective: {metric: val_ccc_mean, mode: max}
fidelity: {attr: epoch, max: 6, grace: 1, reduction_factor: 3}
fixed: {backbone: cnn_rnn_tiny}
params:
  window_length: {type: categorical, choices: [16, 32]}
"""


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(STUDY))
    return load_space(path)


def test_without_folds_the_scheduler_is_asha_exactly(space):
    sched = make_scheduler(space, "epoch", 6, cv_folds=0)
    assert type(sched) is ASHAScheduler
    asha = ASHAScheduler(time_attr="epoch", max_t=6, grace_period=1, reduction_factor=3)
    assert sched._time_attr == "epoch" and sched._max_t == 6
    assert [m for m, _ in sched._brackets[0]._rungs] == [m for m, _ in asha._brackets[0]._rungs] == [3, 1]
    for s in (sched, asha):
        s.set_search_properties(METRIC, "max")
    values = [0.9, 0.1, 0.5, 0.7, 0.2, 0.95, 0.3, 0.8]
    for i, v in enumerate(values):
        t = trial(f"t{i}")
        for s in (sched, asha):
            s.on_trial_add(None, t)
        for epoch in (1, 2, 3, 6):
            result = {"epoch": epoch, METRIC: v + 0.01 * epoch}
            assert sched.on_trial_result(None, t, result) == asha.on_trial_result(None, t, result)


def test_with_folds_the_scheduler_races(space):
    sched = make_scheduler(space, "fold_epochs", 3 * 6, cv_folds=3)
    assert isinstance(sched, FoldRacing) and sched._max_t == 18 and sched._time_attr == "fold_epochs"
    assert make_scheduler(space, "fold_epochs", 6, cv_folds=3)._max_t == 18  # one fold's epochs, read per fold
    with pytest.raises(ValueError, match="neither one fold"):
        make_scheduler(space, "fold_epochs", 7, cv_folds=3)
    with pytest.raises(ValueError, match="cv_folds"):
        make_scheduler(space, "fold_epochs", 6, cv_folds=1)
    with pytest.raises(ValueError, match="fold_epochs"):
        make_scheduler(space, "epoch", 18, cv_folds=3)


def test_the_scheduler_pickles_and_its_rungs_come_back_from_its_state_file(tmp_path):
    sched = racing()
    a, b = CVTrial(sched, "a"), CVTrial(sched, "b")
    a.fold(1, 0.8)
    b.fold(1, 0.6)
    copy = pickle.loads(pickle.dumps(sched))  # as Tune pickles the Tuner's config (tuner.pkl)
    assert copy._boundaries == sched._boundaries and copy._stopped == {"b"}
    sched.save(str(tmp_path / STATE_FILE))
    fresh = racing()
    fresh._state_dir = None

    class Storage:
        experiment_driver_staging_path = str(tmp_path)

    t = trial("c")
    t.storage = Storage()
    fresh.on_trial_add(None, t)  # the first trial a resumed sweep adds
    assert fresh._boundaries == sched._boundaries and fresh._scores == sched._scores and fresh._stopped == {"b"}
    assert fresh._rungs == sched._rungs


def test_rungs_survive_a_resumed_tune_run(tmp_path):
    """A real Tune run (1 trial at a time): the leader runs all folds, then a trial far behind errors before its first
    fold ends. The sweep is resumed (``Tuner.restore``, errored trials rerun): the restored scheduler holds the
    leader's fold scores, so the rerun trial is stopped at the end of its first fold, as it would have been without
    the error."""
    import ray
    from ray import tune

    def fake_cv_trial(config):
        from ray import tune as rt

        marker = Path(config["folder"]) / f"{config['name']}.failed"
        done = []
        for fold in range(1, 3):
            for e in range(1, 3):
                if config["name"] == "behind" and e == 2 and not marker.exists():
                    marker.write_text("once")
                    raise RuntimeError("the trial's process died")
                best = 0.9 if config["name"] == "leader" else 0.5
                so_far = done + [best]
                rt.report({"fold": fold, "fold_epoch": e, "fold_epochs": (fold - 1) * 2 + e, "fold_best": best,
                           "score": sum(so_far) / len(so_far)})
            done.append(best)

    def run(restore: bool):
        sched = FoldRacing(folds=2, fold_epochs=2, grace_period=2)
        if restore:
            tuner = tune.Tuner.restore(str(tmp_path / "results" / "race"), fake_cv_trial, resume_errored=True)
        else:
            tuner = tune.Tuner(
                fake_cv_trial,
                param_space={"folder": str(tmp_path), "name": tune.grid_search(["leader", "behind"])},
                tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=sched, max_concurrent_trials=1),
                run_config=tune.RunConfig(name="race", storage_path=str(tmp_path / "results"), verbose=0))
        return tuner, tuner.fit()

    ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        _, first = run(restore=False)
        assert sorted(r.config["name"] for r in first if r.error is not None) == ["behind"]
        assert (tmp_path / "results" / "race" / STATE_FILE).is_file()  # uploaded with the experiment's snapshot
        tuner, second = run(restore=True)
    finally:
        ray.shutdown()
    sched = tuner._local_tuner._tune_config.scheduler
    behind = next(r for r in second if r.config["name"] == "behind")
    assert behind.error is None
    assert behind.metrics["fold_epochs"] == 2  # stopped at the end of fold 1, by the restored leader's score
    assert len(sched._boundaries[1]) == 2 and len(sched._stopped) == 1
