"""The Pareto arithmetic of ``analysis.pareto`` against fronts and hypervolumes computed by hand, and against Optuna's
public hypervolume history; a sweep's fronts, its leaderboard with several objectives, the comparison figure's overlay
and the constraints of a constrained promotion, on hand-made trials (no sweep needed)."""
from __future__ import annotations

import math
import random

import pytest

from analysis.pareto import dominates, front, hypervolume, minimised, non_dominated_sort, reference_point


# ---- fronts ----

def test_domination_needs_no_worse_everywhere_and_better_somewhere():
    assert dominates((1, 2), (2, 2)) and dominates((1, 1), (2, 3))
    assert not dominates((1, 2), (1, 2))  # equal points dominate neither way
    assert not dominates((1, 3), (2, 2)) and not dominates((2, 2), (1, 3))


def test_non_dominated_sort_of_a_hand_made_set():
    # minimising both: (1,5), (2,3), (4,1) trade off; (3,4) is dominated by (2,3) only; (5,5) by every other
    points = [(1, 5), (2, 3), (4, 1), (3, 4), (5, 5), (2, 3)]
    assert non_dominated_sort(points) == [[0, 1, 2, 5], [3], [4]]
    assert front(points) == [0, 1, 2, 5]  # the duplicate (2, 3) sits on the front beside its twin


def test_maximised_coordinates_are_negated():
    # CCC (max) against GFLOPs (min): (0.6, 3) and (0.4, 1) trade off; (0.5, 3) loses to (0.6, 3)
    values = [(0.6, 3.0), (0.4, 1.0), (0.5, 3.0)]
    points = [minimised(v, ("max", "min")) for v in values]
    assert points[0] == (-0.6, 3.0)
    assert front(points) == [0, 1]
    with pytest.raises(ValueError):
        minimised((1.0,), ("up",))


def test_three_objective_front():
    points = [(1, 2, 3), (2, 3, 1), (3, 1, 2), (3, 3, 3), (1, 2, 4)]
    assert non_dominated_sort(points) == [[0, 1, 2], [3, 4]]


def test_a_nan_is_refused():
    with pytest.raises(ValueError):
        non_dominated_sort([(1.0, math.nan)])
    with pytest.raises(ValueError):
        hypervolume([(1.0, math.nan)], (2.0, 2.0))


# ---- hypervolume ----

def test_hypervolume_2d_by_hand():
    # the union of [1,6]x[5,6], [2,6]x[3,6], [4,6]x[1,6] in bands of y: [1,3]: 2*2, [3,5]: 4*2, [5,6]: 5*1
    assert hypervolume([(1, 5), (2, 3), (4, 1)], (6, 6)) == pytest.approx(17.0)
    # a dominated point and a point outside the reference box add nothing
    assert hypervolume([(1, 5), (2, 3), (4, 1), (3, 4), (7, 0)], (6, 6)) == pytest.approx(17.0)
    assert hypervolume([(6, 1)], (6, 6)) == 0.0  # on the reference's boundary: a box of width 0
    assert hypervolume([], (6, 6)) == 0.0


def test_hypervolume_3d_by_hand():
    # three unit-offset boxes of 2 each, pairwise overlapping in the unit cube [1,2]^3 (inclusion-exclusion: 6-3+1)
    assert hypervolume([(0, 1, 1), (1, 0, 1), (1, 1, 0)], (2, 2, 2)) == pytest.approx(4.0)
    # boxes of 6 each, pairwise intersections of 2, all three of 1: 18 - 6 + 1
    assert hypervolume([(1, 2, 3), (2, 3, 1), (3, 1, 2)], (4, 4, 4)) == pytest.approx(13.0)
    assert hypervolume([(1, 1, 1)], (2, 3, 4)) == pytest.approx(6.0)


def test_hypervolume_1d_and_dimension_checks():
    assert hypervolume([(3,), (1,), (5,)], (4,)) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        hypervolume([(1, 1, 1, 1)], (2, 2, 2, 2))
    with pytest.raises(ValueError):
        hypervolume([(1, 1)], (2, 2, 2))


@pytest.mark.parametrize("dims", [2, 3])
def test_hypervolume_agrees_with_optunas(dims):
    """Optuna's public ``plot_hypervolume_history`` (matplotlib backend): its last point is the hypervolume of every
    trial's values, on random point sets including dominated ones."""
    import warnings

    import optuna
    from optuna.visualization.matplotlib import plot_hypervolume_history

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(dims)
    for _ in range(3):
        points = [tuple(rng.random() for _ in range(dims)) for _ in range(12)]
        study = optuna.create_study(directions=["minimize"] * dims)
        for p in points:
            study.add_trial(optuna.trial.create_trial(values=list(p), params={}, distributions={}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the plot is marked experimental
            ax = plot_hypervolume_history(study, [1.1] * dims)
        import matplotlib.pyplot as plt

        theirs = float(ax.lines[0].get_ydata()[-1])
        plt.close(ax.figure)
        assert hypervolume(points, (1.1,) * dims) == pytest.approx(theirs, rel=1e-9)


def test_the_stated_reference_point():
    # maximised: 0 when every value is above it, else the worst; minimised: 1.1 x the largest (1 when it is 0)
    assert reference_point([[0.2, 0.5], [1.0, 2.0]], ("max", "min")) == pytest.approx((0.0, 2.2))
    assert reference_point([[-0.1, 0.3], [0.0, 0.0]], ("max", "min")) == pytest.approx((-0.1, 1.0))
    assert reference_point([[0.4, math.nan], [3.0, 5.0]], ("max", "min")) == pytest.approx((0.0, 5.5))


# ---- a sweep's fronts, on hand-made trials ----

def _trial(i: int, ccc: float, gflops: float, params_m: float, train_s: float, status: str = "complete"):
    from analysis.sweeps import Trial

    history = {"val_ccc_mean": {1: ccc - 0.1, 2: ccc}, "val_rmse_mean": {1: 0.5, 2: 1 - ccc},
               "val_ccc_valence": {2: ccc}, "val_ccc_arousal": {2: ccc}, "epoch_time_s": {1: 1.0, 2: 1.0}}
    return Trial(f"t{i}", f"r{i}", {"lr": 1e-3 * (i + 1)}, status, i, history, 2.0,
                 costs={"gflops": gflops, "params_m": params_m, "train_s": train_s, "infer_ms": 1.0 + i})


def _sweep(objectives=None):
    from analysis.sweeps import Sweep

    trials = [_trial(0, 0.5, 2.0, 1.0, 30.0), _trial(1, 0.6, 3.0, 1.0, 20.0), _trial(2, 0.4, 1.0, 2.0, 10.0),
              _trial(3, 0.45, 2.5, 0.5, 40.0),
              _trial(4, 0.9, 0.1, 0.1, 1.0, status="stopped early"),  # cheap and good, but trained less: left out
              _trial(5, 0.3, 0.5, 0.2, 5.0, status="errored")]
    return Sweep("s", "p", "e", "x", "val_ccc_mean", "max", ["lr"], {}, trials, objectives=objectives or [])


def test_a_one_objective_sweep_has_a_front_per_cost_over_its_complete_trials():
    from analysis.fronts import COST_FRONTS, sweep_fronts

    sweep = _sweep()
    fronts = sweep_fronts(sweep)
    assert [f.names for f in fronts] == [("val_ccc_mean", c) for c in COST_FRONTS]
    gflops, params, train, _ = fronts
    assert [t.trial_id for t in gflops.trials] == ["t0", "t1", "t2", "t3"]
    assert gflops.member_ids() == ["t1", "t0", "t2"] and gflops.ranks == [1, 1, 1, 2]
    assert params.member_ids() == ["t1", "t3"]
    assert train.member_ids() == ["t1", "t2"]
    # reference (0, 1.1 x 3.0); strips of gflops from t2 (1.0), t0 (2.0), t1 (3.0) up to 3.3 at their best CCC so far
    assert gflops.reference == pytest.approx((0.0, 3.3))
    assert gflops.hypervolume == pytest.approx(1.0 * 0.4 + 1.0 * 0.5 + 0.3 * 0.6)
    assert gflops.hypervolume_text() == "1.08 (reference point: val_ccc_mean = 0, gflops = 3.3)"


def test_several_objectives_make_one_front_and_lead_the_leaderboard():
    from analysis.fronts import sweep_fronts
    from analysis.report import leaderboard_table

    sweep = _sweep([("val_ccc_mean", "max"), ("gflops", "min"), ("val_rmse_mean", "min")])
    [only] = sweep_fronts(sweep)
    assert only.names == ("val_ccc_mean", "gflops", "val_rmse_mean")
    # rmse = 1 - CCC at the best epoch: the third objective says what the first does, so the front is the 2D one
    assert only.member_ids() == ["t1", "t0", "t2"]
    table = leaderboard_table(sweep)
    assert table.columns[:3] == ["rank", "front", "trial"]
    assert [(r[1], r[2]) for r in table.rows] == [(1, "t1"), (1, "t0"), (1, "t2"), (2, "t3"), ("-", "t4"),
                                                  ("-", "t5")]
    assert table.columns[-4:-1] == ["val_ccc_mean", "gflops", "val_rmse_mean"]
    assert table.cells()[0][-3] == "3"  # a cost in 4 significant digits


def test_a_trial_without_costs_is_left_out_of_the_front():
    from analysis.fronts import build_front

    sweep = _sweep()
    sweep.trials[0].costs = {}
    f = build_front(sweep, ("val_ccc_mean", "gflops"), ("max", "min"))
    assert f.left_out == 1 and [t.trial_id for t in f.trials] == ["t1", "t2", "t3"]
    for t in sweep.trials:
        t.costs = {}
    empty = build_front(sweep, ("val_ccc_mean", "gflops"), ("max", "min"))
    assert empty.trials == [] and empty.note == "no complete trial recorded val_ccc_mean, gflops"


def test_the_comparison_figure_overlays_each_sweeps_front(monkeypatch, tmp_path):
    """The right panel of compare.png: per sweep, its front's trials as one labelled series of points and the
    dominated ones faded, over one reference point when the sweeps share their objective."""
    from analysis import figures
    from analysis.fronts import shared_fronts

    a, b = _sweep(), _sweep()
    b.name = "other"
    for t in b.trials:
        t.costs = {**t.costs, "gflops": t.costs["gflops"] * 2}
    fronts, shared = shared_fronts([a, b])
    assert shared and fronts[0].reference == fronts[1].reference == pytest.approx((0.0, 6.6))
    # strips of gflops up to 6.6 at the best CCC so far: (1, 2, 3) at 0.4, 0.5, 0.6; then (2, 4, 6)
    assert fronts[0].hypervolume == pytest.approx(1.0 * 0.4 + 1.0 * 0.5 + 3.6 * 0.6)
    assert fronts[1].hypervolume == pytest.approx(2.0 * 0.4 + 2.0 * 0.5 + 0.6 * 0.6)
    drawn = {}

    def keep(fig, path):
        drawn["fig"] = fig
        return path

    monkeypatch.setattr(figures, "_save", keep)
    figures.comparison([a, b], fronts, tmp_path / "compare.png")
    right = drawn["fig"].axes[1]
    series = {c.get_label(): [tuple(p) for p in c.get_offsets()] for c in right.collections
              if not c.get_label().startswith("_")}
    assert series == {"s (3 on the front)": [(3.0, 0.6), (2.0, 0.5), (1.0, 0.4)],
                      "other (3 on the front)": [(6.0, 0.6), (4.0, 0.5), (2.0, 0.4)]}
    faded = [c for c in right.collections if c.get_label().startswith("_")]
    assert len(faded) == 2 and all(c.get_alpha() < 1 for c in faded)
    assert right.get_xlabel() == "gflops per window" and right.get_ylabel() == "val_ccc_mean"


# ---- constraints ----

@pytest.mark.parametrize("text, parsed", [("gflops<=2", ("gflops", "<=", 2.0)),
                                          (" params_m < 1e1 ", ("params_m", "<", 10.0)),
                                          ("val_ccc_arousal>=.25", ("val_ccc_arousal", ">=", 0.25)),
                                          ("train_s>-3", ("train_s", ">", -3.0))])
def test_constraint_grammar(text, parsed):
    from analysis.constraints import parse_constraint

    c = parse_constraint(text)
    assert (c.name, c.op, c.bound) == parsed


@pytest.mark.parametrize("text, words", [("gflops=2", "is not <name><op><number>"),
                                         ("gflops<=two", "is not <name><op><number>"),
                                         ("<=2", "is not <name><op><number>"),
                                         ("flops<=2", "did you mean gflops?"),
                                         ("lr<=0.1", "neither a measured cost nor a validation metric")])
def test_bad_constraints_name_what_is_allowed(text, words):
    from analysis.constraints import parse_constraint
    from trainables.errors import UserError

    with pytest.raises(UserError) as err:
        parse_constraint(text)
    assert words in str(err.value)
    assert "costs params_m, gflops, infer_ms, train_s, peak_mem_mb; metrics val_" in str(err.value)


def test_choose_the_best_complete_trial_meeting_every_constraint():
    from analysis.constraints import choose, parse_constraint
    from trainables.errors import UserError

    sweep = _sweep()
    assert choose(sweep, []).trial_id == "t1"
    chosen = choose(sweep, [parse_constraint("gflops<=2.5"), parse_constraint("params_m<=1")])
    assert (chosen.trial_id, chosen.values) == ("t0", {"gflops": 2.0, "params_m": 1.0})
    # the stopped-early trial t4 meets everything but is not complete; t3 is the only complete one under 0.6 params
    assert choose(sweep, [parse_constraint("params_m<0.6")]).trial_id == "t3"
    assert choose(sweep, [parse_constraint("val_ccc_mean<0.55")]).trial_id == "t0"
    with pytest.raises(UserError) as err:
        choose(sweep, [parse_constraint("gflops<=0.5"), parse_constraint("params_m<=0.6")])
    # shortfalls: t0 3 + 0.67, t1 5 + 0.67, t2 1 + 2.33, t3 4 + 0: t2 misses by the least
    assert str(err.value) == ("no complete trial of sweep 's' meets gflops<=0.5, params_m<=0.6 (4 complete "
                              "trial(s)); closest: trial t2 (gflops 1, params_m 2); nothing promoted")
    for t in sweep.trials:
        t.costs.pop("train_s")
    with pytest.raises(UserError, match="recorded train_s"):
        choose(sweep, [parse_constraint("train_s<=10")])
