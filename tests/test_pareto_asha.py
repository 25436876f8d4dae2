"""Early stopping with several objectives (cluster/pareto_asha.py): the non-dominated sort and crowding distance on
hand-made points, and the scheduler's stop decisions driven by a table of results whose answers are known."""
from __future__ import annotations

import math

import pytest
from ray.tune.schedulers import TrialScheduler

from cluster.pareto_asha import ParetoASHA, asha_milestones, crowding_distances, nondominated_fronts, pareto_order

C, S = TrialScheduler.CONTINUE, TrialScheduler.STOP


def test_fronts_by_hand():
    #        0        1        2        3        4
    pts = [(3, 1), (2, 2), (1, 3), (1, 1), (2, 0.5)]
    assert nondominated_fronts(pts) == [[0, 1, 2], [3, 4]]
    assert nondominated_fronts([(1, 1), (1, 1)]) == [[0, 1]]  # equal points dominate neither
    crowd = crowding_distances(pts, [0, 1, 2])
    assert crowd[0] == crowd[2] == math.inf and crowd[1] == pytest.approx((3 - 1) / 2 + (3 - 1) / 2)
    assert pareto_order(pts)[:3] == [0, 2, 1]  # ends first (ties by the first objective), then the middle


@pytest.mark.parametrize("grace, max_t, rf, rungs", [(1, 4, 2, [1, 2]), (1, 9, 3, [1, 3]), (2, 16, 2, [2, 4, 8]),
                                                     (3, 3, 2, [])])
def test_asha_rungs(grace, max_t, rf, rungs):
    assert asha_milestones(grace, max_t, rf) == rungs


def test_the_rungs_promote_by_fronts():
    """Objectives: CCC (max) and GFLOPs (min); rungs at epochs 1 and 2 (grace 1, rf 2, max 4)."""
    s = ParetoASHA((("val_ccc_mean", "max"), ("gflops", "min")), time_attr="epoch", max_t=4, grace_period=1,
                   reduction_factor=2)
    table = [  # (trial, epoch, ccc, gflops, expected decision)
        ("a", 1, 0.50, 2.0, C),  # alone at the rung
        ("b", 1, 0.40, 3.0, S),  # dominated by a; 2 recorded, keep ceil(2/2) = 1
        ("c", 1, 0.30, 0.5, C),  # cheaper than everyone: front 1 with a; 3 recorded, keep 2 (a, c: the ends)
        ("d", 1, 0.45, 1.0, S),  # front 1 with a and c, but in its middle: 4 recorded, keep 2 (the ends a, c)
        ("a", 2, 0.60, 2.0, C),
        ("c", 2, 0.20, 0.5, S),  # not dominated, but the rung keeps ceil(2/2) = 1: the ends tie, the better CCC wins
        ("a", 3, 0.70, 2.0, C),  # between rungs: nothing decided
        ("a", 4, 0.70, 2.0, S),  # the end
    ]
    for trial, epoch, ccc, gflops, expected in table:
        got = s.decide(trial, epoch, {"val_ccc_mean": ccc, "gflops": gflops}) if epoch < 4 else \
            s.on_trial_result(None, type("T", (), {"trial_id": trial})(), {"epoch": epoch, "val_ccc_mean": ccc,
                                                                           "gflops": gflops})
        assert got == expected, (trial, epoch)
    assert s.stopped == {"b", "d", "c"}


def test_a_cost_known_early_keeps_a_cheap_trial_that_one_objective_would_stop():
    both = ParetoASHA((("val_ccc_mean", "max"), ("gflops", "min")), max_t=4, grace_period=1, reduction_factor=2)
    assert both.decide("big", 1, {"val_ccc_mean": 0.6, "gflops": 5.0}) == C
    assert both.decide("mid", 1, {"val_ccc_mean": 0.5, "gflops": 6.0}) == S  # dominated: worse and costlier
    assert both.decide("small", 1, {"val_ccc_mean": 0.3, "gflops": 0.1}) == C  # worse, but far cheaper: front 1
    one = ParetoASHA((("val_ccc_mean", "max"), ("val_ccc_valence", "max")), max_t=4, reduction_factor=2)
    for name, ccc in (("big", 0.6), ("mid", 0.5)):
        one.decide(name, 1, {"val_ccc_mean": ccc, "val_ccc_valence": ccc})
    assert one.decide("small", 1, {"val_ccc_mean": 0.3, "val_ccc_valence": 0.3}) == S  # CCC alone: behind


BAD_OBJECTIVES = {
    "objectives: {val_ccc_mean: max, gflop: min}": "objectives.gflop is not a metric trials report or a measured "
                                                   "cost; did you mean 'gflops'?",
    "objectives: {val_ccc_mean: max, gflops: smallest}": "objectives.gflops is 'smallest'; allowed: min, max",
    "objectives: {val_ccc_mean: max, gflops: min, params_m: min, train_s: min}": "objectives names 4 metric(s); "
                                                                                 "allowed: 2 to 3",
    "objectives: {val_ccc_mean: max}": "objectives names 1 metric(s); allowed: 2 to 3",
    "objective: {metric: val_ccc_mean}\nobjectives: {val_ccc_mean: max, gflops: min}": "not both",
    "objectives: {val_ccc_mean: max, gflops: min}\ncv: {folds: 3}": "cv: cross-validation and several objectives do not go together",
    "objectives: {val_ccc_mean: max, gflops: min}\nsampler: nsga3": "sampler is 'nsga3'; allowed: tpe, random, nsga2",
}


@pytest.mark.parametrize("text", sorted(BAD_OBJECTIVES))
def test_bad_objectives_are_one_line_exit_2_before_anything_starts(text, tmp_path, prepared_index):
    from tests.test_sweep_e2e import run_cli

    (tmp_path / "mo.yaml").write_text("base: smoke\nname: mo\n" + text + "\n")
    proc = run_cli("sweep", "--space", "mo.yaml", "--data", str(prepared_index), "--dry-run", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("emotune: error: "), proc.stderr
    assert BAD_OBJECTIVES[text] in lines[0]
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_two_objective_study_and_its_scheduler(tmp_path):
    from cluster.racing import make_scheduler
    from search_spaces.schema import load_space

    (tmp_path / "mo.yaml").write_text("base: smoke\nname: mo\nobjectives: {val_ccc_mean: max, gflops: min}\n"
                                      "sampler: nsga2\n")
    space = load_space(tmp_path / "mo.yaml")
    assert space.objectives == (("val_ccc_mean", "max"), ("gflops", "min")) and space.metric == "val_ccc_mean"
    assert isinstance(make_scheduler(space, "epoch", 4), ParetoASHA)
    assert type(make_scheduler(load_space("smoke"), "epoch", 4)).__name__ == "AsyncHyperBandScheduler"


def test_the_readme_two_objective_sweep(tmp_path):
    """The README's accuracy-against-cost example as written: a two-objective sweep whose Optuna study holds both
    objectives for every trial, and whose MLflow records name them and carry every trial's costs."""
    import optuna
    from mlflow.tracking import MlflowClient

    from tests.test_readme import code_blocks, commands
    from tests.test_sweep_e2e import emotune

    outs = [emotune(*cmd[1:], cwd=tmp_path, timeout=900).stdout
            for cmd in commands(code_blocks("Accuracy against cost")[0])]
    assert "Trials:        " in outs[2] and "0 errored" in outs[2]
    study = optuna.load_study(study_name="smoke-cost", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6 and all(len(t.values) == 2 and t.values[1] > 0 for t in done)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("emotune").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("emotune.kind") == "sweep")
    assert parent.data.tags["emotune.objectives"] == '[["val_ccc_mean", "max"], ["gflops", "min"]]'
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    gflops = {round(t.values[1], 9) for t in done}
    assert {round(r.data.metrics["gflops"], 9) for r in trials} == gflops  # the searcher saw the measured costs
    assert (tmp_path / "ray_results" / "smoke-cost-report" / "report.html").is_file()


def test_a_study_with_several_objectives_starts_its_rungs_one_halving_later(tmp_path):
    """Default grace: the reduction factor with several objectives (``search_spaces.schema.multi_objective_grace``:
    the earliest rung judges an early accuracy against exact costs), 1 with one; a grace the study sets is kept."""
    from cluster.racing import make_scheduler
    from search_spaces.schema import load_space

    params = "params: {lr: {type: categorical, choices: [0.001, 0.002]}}\n"
    cases = {"several": ("objectives: {val_ccc_mean: max, gflops: min}\nfidelity: {max: 4}\n", 2, [2]),
             "rf3": ("objectives: {val_ccc_mean: max, gflops: min}\nfidelity: {max: 9, reduction_factor: 3}\n", 3, [3]),
             "short": ("objectives: {val_ccc_mean: max, gflops: min}\nfidelity: {max: 1}\n", 1, []),
             "set": ("objectives: {val_ccc_mean: max, gflops: min}\nfidelity: {max: 4, grace: 1}\n", 1, [1, 2]),
             "one": ("fidelity: {max: 4}\n", 1, None)}
    for name, (text, grace, rungs) in cases.items():
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\n{text}{params}")
        space = load_space(tmp_path / f"{name}.yaml")
        assert space.fidelity["grace"] == grace, name
        if rungs is not None:
            assert list(make_scheduler(space, "epoch", space.fidelity["max"])._rungs) == rungs, name
