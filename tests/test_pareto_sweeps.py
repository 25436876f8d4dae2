"""Pareto fronts and constrained promotion through the real entry points, checked against the MLflow records.

The store is a copy of the one holding the one-split sweeps ``rep`` and ``rep-b`` of ``tests/test_report.py``
(``tiny_sweeps``), with one more sweep, ``mo`` (experiment ``pareto``): a study with two objectives, validation CCC
(max) against GFLOPs per window (min), whose three one-epoch trials differ in their GRU size (8, 16, 32), so their
costs differ. Every expectation here is computed from the runs' metrics and tags by this file's own arithmetic (a
brute-force dominance check, the hypervolume as the area of a union of rectangles over a grid of their edges), not
by ``analysis``: the report's fronts, hypervolumes and reference points, the multi-objective leaderboard's order,
the leaderboard the sweep prints (its front first, marked), ``emotune compare``'s overlaid fronts, the trial a
constrained promotion picks, the refusal when none qualifies (and the registry left as it was), bad constraints
refused before anything runs, ``promote --history`` after two moves, and the README's lines. With ``-m slow``: a
cross-validated sweep's constrained promotion refits the chosen trial."""
from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest
import yaml

from test_cv_analysis import cv  # noqa: F401 (a fixture: the CV sweep, for the slow test)
from test_report import cli, tiny_sweeps
from test_sweep_e2e import emotune, run_cli

MO_SPACE = """
name: mo
objectives: {val_ccc_mean: max, gflops: min}
fidelity: {attr: epoch, max: 2, grace: 1, reduction_factor: 2}
resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
fixed: {backbone: cnn_rnn_tiny, window_length: 24, clip_len: 24, label_fusion: mean, ssts_stochastic: true,
        batch_size: 8, w_ccc: 1.0, seed: 0, window_overlap: 0.5, ssts_stride: 4, w_mse: 0.5}
params:
  rnn_hidden: {type: categorical, choices: [8, 16, 32]}
  lr: {type: loguniform, low: 1.0e-3, high: 3.0e-3}
initial_points:
  - {rnn_hidden: 8, lr: 0.002}
  - {rnn_hidden: 16, lr: 0.002}
  - {rnn_hidden: 32, lr: 0.002}
"""
COSTS = ("gflops", "params_m", "train_s", "infer_ms")
MODEL = "emotune-pareto"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(folder, tracking URI): a copy of the ``tiny_sweeps`` store with sweep ``mo`` added (module docstring)."""
    base = tiny_sweeps(tmp_path_factory.getbasetemp())
    work = tmp_path_factory.mktemp("pareto")
    for name in ("mlflow.db", "optuna.db"):
        shutil.copy(base / name, work / name)
    index, = (base / "cache").glob("index-*.json")
    (work / "mo.yaml").write_text(MO_SPACE)
    proc = emotune("sweep", "--space", "mo.yaml", "--data", str(index), "--trials", "3", "--epochs", "1",
                   "--max-concurrent", "1", "--name", "mo", "--experiment", "pareto", cwd=work)
    (work / "mo-sweep.out").write_text(proc.stdout)  # what the sweep printed: its leaderboard
    return work, f"sqlite:///{work / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def _parent(client, name: str):
    run, = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`emotune.sweep` = '{name}' and tags.`emotune.kind` = 'sweep'")
    return run


def records(client, name: str) -> dict[str, dict]:
    """Each complete trial of sweep ``name`` (its run FINISHED, not stopped early, not diverged) as MLflow holds it:
    its best objective (``best_val_ccc_mean``) and its last reported costs."""
    parent = _parent(client, name)
    out = {}
    for run in client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"):
        tags, metrics = run.data.tags, run.data.metrics
        if run.info.status != "FINISHED" or tags.get("emotune.stopped_early") != "false" or \
                tags.get("emotune.diverged") == "true":
            continue
        out[tags["emotune.trial_id"]] = {"run": run, "ccc": metrics["best_val_ccc_mean"],
                                         **{c: metrics[c] for c in (*COSTS, "peak_mem_mb")}}
    return out


def non_dominated(points: dict[str, tuple[float, float]]) -> set[str]:
    """Trials no other beats: (CCC to maximise, cost to minimise), by brute force."""
    def beats(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])

    return {t for t, p in points.items() if not any(beats(q, p) for s, q in points.items() if s != t)}


def fronts_in_order(points: dict[str, tuple[float, float]]) -> list[set[str]]:
    left, out = dict(points), []
    while left:
        first = non_dominated(left)
        out.append(first)
        left = {t: p for t, p in left.items() if t not in first}
    return out


def union_area(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """The area of the union of the rectangles [cost, ref cost] x [ref CCC, CCC]: a grid over every rectangle's edges,
    each cell counted once when some rectangle covers it."""
    boxes = [(c, ref[1], ref[0], y) for y, c in points if y > ref[0] and c < ref[1]]  # (x0, x1, y0, y1)
    xs = sorted({b[0] for b in boxes} | {b[1] for b in boxes})
    ys = sorted({b[2] for b in boxes} | {b[3] for b in boxes})
    area = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            if any(b[0] <= x0 and x1 <= b[1] and b[2] <= y0 and y1 <= b[3] for b in boxes):
                area += (x1 - x0) * (y1 - y0)
    return area


def stated_reference(cccs: list[float], costs: list[float]) -> tuple[float, float]:
    """The README's reference point: 0 or the worst CCC below it; 1.1 x the largest cost."""
    return min(0.0, min(cccs)), 1.1 * max(costs)


def _front_section(page: str, title: str) -> tuple[list[str], float, str]:
    """(trial ids of the front's table in order, its printed hypervolume, its printed reference) from a report."""
    table = page.split(f"<h3>Pareto front: {title}</h3>")[1].split("</table>")[0]
    trials = re.findall(r"<tr><td>([0-9a-f]{8})</td>", table)
    hv = re.search(rf"<p class='hypervolume'>hypervolume of {re.escape(title)}: (\S+) \(reference point: ([^)]*)\)</p>",
                   page)
    assert hv, title
    return trials, float(hv.group(1)), hv.group(2)


def test_the_report_draws_a_one_objective_sweeps_front_against_each_cost(store, tmp_path, capsys):
    work, uri = store
    client = _client(uri)
    trials = records(client, "rep")
    assert trials, "the sweep rep has no complete trial"
    status, out, _ = cli("report", "rep", "--out", str(tmp_path / "r"), "--mlflow-uri", uri, cwd=work, capsys=capsys)
    assert status == 0
    page = (tmp_path / "r" / "report.html").read_text()
    for cost in COSTS:
        points = {t: (v["ccc"], v[cost]) for t, v in trials.items()}
        members = non_dominated(points)
        ref = stated_reference([p[0] for p in points.values()], [p[1] for p in points.values()])
        area = union_area([points[t] for t in members], ref)
        title = f"val_ccc_mean (max) against {cost} (min)"
        listed, hv, reference = _front_section(page, title)
        assert set(listed) == members, cost
        assert [points[t][0] for t in listed] == sorted((points[t][0] for t in members), reverse=True)
        assert hv == pytest.approx(area, rel=1e-3), cost
        assert reference == f"val_ccc_mean = {ref[0]:.4g}, {cost} = {ref[1]:.4g}"
        line = re.search(rf"^Pareto front {re.escape(title)}: (.*); hypervolume (\S+) ", out, re.M)
        assert line and set(line.group(1).split(", ")) == members and float(line.group(2)) == pytest.approx(hv)
    assert "infer_ms) is wall time: on shared CPU cores it is noisy" in page
    assert "<img src='figures/pareto.png'" in page
    assert (tmp_path / "r" / "figures" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = {a.path for a in client.list_artifacts(_parent(client, "rep").info.run_id, "report/figures")}
    assert "report/figures/pareto.png" in logged


def test_a_multi_objective_sweep_has_one_front_and_its_leaderboard_lists_it_first(store, tmp_path, capsys):
    work, uri = store
    client = _client(uri)
    parent = _parent(client, "mo")
    assert json.loads(parent.data.tags["emotune.objectives"]) == [["val_ccc_mean", "max"], ["gflops", "min"]]
    trials = records(client, "mo")
    assert len(trials) == 3 and len({v["gflops"] for v in trials.values()}) == 3
    status, out, _ = cli("report", "mo", "--out", str(tmp_path / "r"), "--mlflow-uri", uri, cwd=work, capsys=capsys)
    assert status == 0
    page = (tmp_path / "r" / "report.html").read_text()
    points = {t: (v["ccc"], v["gflops"]) for t, v in trials.items()}
    ranks = {t: i for i, front in enumerate(fronts_in_order(points), 1) for t in front}
    # only the objectives' front: no front against the other costs
    assert page.count("<h3>Pareto front: ") == 1
    listed, hv, reference = _front_section(page, "val_ccc_mean (max) against gflops (min)")
    assert set(listed) == {t for t, r in ranks.items() if r == 1}
    ref = stated_reference([p[0] for p in points.values()], [p[1] for p in points.values()])
    assert hv == pytest.approx(union_area([points[t] for t in listed], ref), rel=1e-3)
    assert reference == f"val_ccc_mean = {ref[0]:.4g}, gflops = {ref[1]:.4g}"
    board = page.split("<h3>Leaderboard</h3>")[1].split("</table>")[0]
    head = re.findall(r"<th>(.*?)</th>", board)
    assert head[:3] == ["rank", "front", "trial"] and head[-3:-1] == ["val_ccc_mean", "gflops"]
    rows = re.findall(r"<tr><td>(\d+)</td><td>([\d-]+)</td><td>([0-9a-f]{8})</td>", board)
    expected = sorted(trials, key=lambda t: (ranks[t], -points[t][0]))
    assert [r[2] for r in rows] == expected
    assert [r[1] for r in rows] == [str(ranks[t]) for t in expected]
    assert "<th>objectives</th><td>val_ccc_mean (max), gflops (min) (the first is primary)</td>" in page
    assert (tmp_path / "r" / "figures" / "pareto.png").is_file()


def test_the_leaderboard_a_multi_objective_sweep_prints_lists_its_front_first_and_marks_it(store):
    """What ``emotune sweep`` printed for ``mo``: its leaderboard ranks the trials by their front in the non-dominated
    sort of (CCC, GFLOPs) computed here from the MLflow records, within a front by CCC, and marks the Pareto front
    (``1*``); each row shows both objectives as MLflow holds them."""
    work, uri = store
    trials = records(_client(uri), "mo")
    points = {t: (v["ccc"], v["gflops"]) for t, v in trials.items()}
    ranks = {t: i for i, front in enumerate(fronts_in_order(points), 1) for t in front}
    lines = (work / "mo-sweep.out").read_text().splitlines()
    title = ("Leaderboard of sweep mo (3 trials, objectives val_ccc_mean (max), gflops (min), the Pareto front "
             "first):")
    start = lines.index(title)
    head = lines[start + 1].split()
    assert head[:3] == ["rank", "front", "trial"] and head[-2:] == ["val_ccc_mean", "gflops"]
    rows = [line.split() for line in lines[start + 3:start + 6]]
    expected = sorted(trials, key=lambda t: (ranks[t], -points[t][0]))
    assert [r[2] for r in rows] == expected
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert [r[1] for r in rows] == [f"{ranks[t]}*" if ranks[t] == 1 else str(ranks[t]) for t in expected]
    assert all(r[-5] == "complete" for r in rows)
    for row, t in zip(rows, expected):
        assert row[-2] == f"{points[t][0]:.4f}" and row[-1] == f"{points[t][1]:.4g}", t
    assert lines[start + 6].startswith("front: the trial's front in the non-dominated sort")


def test_the_printed_leaderboard_of_several_objectives_places_only_complete_trials_on_fronts():
    """``rows_from_results`` on Tune results made here: the complete trials by front over (CCC max, GFLOPs min), within
    a front by CCC; a trial stopped early (CCC 0.9, cheapest, which would dominate every other) and an errored one
    after them, in their one-objective order; one objective: the order by CCC alone, no front."""
    import pandas as pd
    from types import SimpleNamespace

    from analysis.leaderboard import format_leaderboard, rows_from_results

    def result(trial: str, cccs: list[float], gflops: float, error=None):
        df = pd.DataFrame([{"epoch": e, "val_ccc_mean": c, "gflops": gflops, "trial_id": trial}
                           for e, c in enumerate(cccs, 1)])
        return SimpleNamespace(metrics_dataframe=df, config={"lr": 1e-3}, error=error, metrics={"trial_id": trial})

    results = [result("a", [0.2, 0.5], 4.0),  # front 1: the best CCC
               result("b", [0.3, 0.2], 1.0),  # front 1: the cheapest complete (best CCC 0.3 at epoch 1)
               result("c", [0.1, 0.38], 4.0),  # front 2: dominated by a and d
               result("d", [0.4, 0.35], 2.0),  # front 1: between a and b
               result("e", [0.25, 0.28], 3.0),  # front 2: dominated by d
               result("f", [0.9], 0.5),  # stopped early
               result("g", [0.6, 0.7], 1.0, error=RuntimeError("boom"))]  # errored
    objectives = (("val_ccc_mean", "max"), ("gflops", "min"))
    rows = rows_from_results(results, "val_ccc_mean", "max", ["lr"], 2, objectives=objectives)
    assert [(r.trial_id, r.front, r.status) for r in rows] == [
        ("a", 1, "complete"), ("d", 1, "complete"), ("b", 1, "complete"), ("c", 2, "complete"),
        ("e", 2, "complete"), ("f", None, "stopped early"), ("g", None, "errored")]
    assert rows[2].values == {"val_ccc_mean": 0.3, "gflops": 1.0}
    lines = format_leaderboard(rows, "val_ccc_mean").splitlines()
    assert lines[0].split() == ["rank", "front", "trial", "lr", "epochs", "status", "ccc_valence", "ccc_arousal",
                                "val_ccc_mean", "gflops"]
    assert [line.split()[:3] for line in lines[2:9]] == [["1", "1*", "a"], ["2", "1*", "d"], ["3", "1*", "b"],
                                                        ["4", "2", "c"], ["5", "2", "e"], ["6", "-", "f"],
                                                        ["7", "-", "g"]]
    assert lines[3].split()[-2:] == ["0.4000", "2"] and lines[9].startswith("front: ")
    single = rows_from_results(results, "val_ccc_mean", "max", ["lr"], 2)
    assert [(r.trial_id, r.front) for r in single] == [(t, None) for t in "fgadcbe"]
    assert format_leaderboard(single, "val_ccc_mean").splitlines()[0].split()[:2] == ["rank", "trial"]


def test_compare_overlays_the_sweeps_fronts_against_gflops(store, tmp_path, capsys, monkeypatch):
    from analysis import figures
    from analysis.commands import mlflow_client
    from analysis.fronts import shared_fronts
    from analysis.sweeps import load_sweep

    work, uri = store
    client = _client(uri)
    status, out, _ = cli("compare", "rep", "mo", "--out", str(tmp_path / "c"), "--mlflow-uri", uri, cwd=work,
                         capsys=capsys)
    assert status == 0
    both = {name: {t: (v["ccc"], v["gflops"]) for t, v in records(client, name).items()} for name in ("rep", "mo")}
    everything = [p for points in both.values() for p in points.values()]
    ref = stated_reference([p[0] for p in everything], [p[1] for p in everything])
    page = (tmp_path / "c" / "compare.html").read_text()
    section = page.split("Pareto front: objective against gflops (complete trials)</h2>")[1]
    section = section.split("</table>")[0]
    on = re.search(r"<th>on the front</th><td>([^<]*)</td><td>([^<]*)</td>", section)
    assert set(on.group(1).split(", ")) == non_dominated(both["rep"])
    assert set(on.group(2).split(", ")) == non_dominated(both["mo"])
    hv = re.search(r"<th>hypervolume</th><td>([^<]*)</td><td>([^<]*)</td>", section)
    for cell, name in zip(hv.groups(), ("rep", "mo")):
        members = non_dominated(both[name])
        assert float(cell) == pytest.approx(union_area([both[name][t] for t in members], ref), rel=2e-3,
                                            abs=5e-5), name
    reference = re.search(r"<th>reference point</th><td>([^<]*)</td><td>([^<]*)</td>", section).groups()
    assert reference == (f"val_ccc_mean={ref[0]:.4g},gflops={ref[1]:.4g}",) * 2
    assert re.search(rf"^  reference point +val_ccc_mean={ref[0]:.4g},gflops={ref[1]:.4g} ", out, re.M), out
    assert (tmp_path / "c" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<img src='compare.png' alt='best objective so far and Pareto fronts'>" in page

    # the figure itself: its right panel holds each sweep's front as one labelled series of points
    drawn = {}

    def keep(fig, path):
        drawn["fig"] = fig
        return path

    monkeypatch.setattr(figures, "_save", keep)
    sweeps = [load_sweep(mlflow_client(uri), name) for name in ("rep", "mo")]
    figures.comparison(sweeps, shared_fronts(sweeps)[0], tmp_path / "unused.png")
    right = drawn["fig"].axes[1]
    series = {c.get_label().split(" ")[0]: {(float(x), float(y)) for x, y in c.get_offsets()}
              for c in right.collections if not c.get_label().startswith("_")}
    assert series == {name: {(both[name][t][1], both[name][t][0]) for t in non_dominated(both[name])}
                      for name in ("rep", "mo")}
    import matplotlib.pyplot as plt

    plt.close(drawn["fig"])


def _excluding_the_best(trials: dict[str, dict]) -> tuple[str, str]:
    """A gflops constraint that leaves out the trial with the best CCC (another trial costs less, or more), and the
    trial a constrained promotion must then pick: the best CCC among those that meet it."""
    best = max(trials, key=lambda t: trials[t]["ccc"])
    cheaper = [v["gflops"] for t, v in trials.items() if v["gflops"] < trials[best]["gflops"]]
    if cheaper:
        bound = (max(cheaper) + trials[best]["gflops"]) / 2
        text, meets = f"gflops<={bound:.9g}", (lambda v: v <= bound)
    else:
        bound = (min(v["gflops"] for t, v in trials.items() if t != best) + trials[best]["gflops"]) / 2
        text, meets = f"gflops>={bound:.9g}", (lambda v: v >= bound)
    chosen = max((t for t, v in trials.items() if meets(v["gflops"])), key=lambda t: trials[t]["ccc"])
    assert chosen != best
    return text, chosen


@pytest.fixture(scope="module")
def promoted(store, tmp_path_factory):
    """Sweep ``mo`` promoted twice to model ``emotune-pareto`` through the installed command: first its best trial,
    then under a constraint that leaves that trial out (``--margin -2``: the second move happens whatever the two score
    on the one test subject). (the constraint, the trial it must pick, each promotion's output and out folder)."""
    work, uri = store
    trials = records(_client(uri), "mo")
    constraint, chosen = _excluding_the_best(trials)
    params_bound = max(v["params_m"] for v in trials.values())  # met by every trial: the gflops bound decides
    outs = []
    for i, extra in enumerate(([], ["--constraint", constraint, "--constraint", f"params_m<={params_bound:.9g}",
                                    "--margin", "-2"])):
        folder = tmp_path_factory.mktemp(f"promote{i}")
        proc = emotune("promote", "mo", "--mlflow-uri", uri, "--model-name", MODEL, "--out", str(folder), *extra,
                       cwd=folder)
        outs.append((proc.stdout, folder))
    return (constraint, f"params_m<={params_bound:.9g}"), chosen, outs


def test_a_constrained_promotion_picks_the_best_trial_meeting_every_constraint(store, promoted):
    work, uri = store
    client = _client(uri)
    (gflops, params), chosen, outs = promoted
    out, folder = outs[1]
    trials = records(client, "mo")
    assert re.search(rf"^constraints {re.escape(gflops)}, {re.escape(params)}: trial {chosen} \(gflops "
                     rf"{trials[chosen]['gflops']:.4g}, params_m {trials[chosen]['params_m']:.4g}\) is the best "
                     rf"complete trial of sweep mo meeting them$", out, re.M), out
    assert re.search(rf"^promoted: trial {chosen} of sweep mo scores test ccc_mean", out, re.M), out
    version = client.get_model_version_by_alias(MODEL, "production")
    assert str(version.version) == "2" and version.tags["emotune.trial"] == chosen
    assert version.tags["emotune.trial_run_id"] == trials[chosen]["run"].info.run_id
    assert version.tags["emotune.constraints"] == f"{gflops}, {params}"
    for cost in ("gflops", "params_m", "infer_ms", "peak_mem_mb"):
        assert float(version.tags[f"emotune.cost.{cost}"]) == pytest.approx(trials[chosen][cost], rel=1e-5), cost
    # train_s: the sum of every report's training seconds, which for a trial that never restarted is its last train_s
    assert float(version.tags["emotune.cost.train_s"]) == pytest.approx(trials[chosen]["train_s"], rel=1e-4)
    produced = yaml.safe_load((folder / "production.yaml").read_text())
    assert produced["trial"] == chosen and produced["constraints"] == [gflops, params]
    assert produced["costs"]["gflops"] == pytest.approx(trials[chosen]["gflops"])
    # the first promotion (no constraint) registered the sweep's best trial, with its costs too
    first = client.get_model_version(MODEL, "1")
    best = max(trials, key=lambda t: trials[t]["ccc"])
    assert first.tags["emotune.trial"] == best and "emotune.constraints" not in first.tags
    assert float(first.tags["emotune.cost.gflops"]) == pytest.approx(trials[best]["gflops"], rel=1e-5)


def test_promote_history_lists_both_moves(store, promoted, tmp_path):
    work, uri = store
    client = _client(uri)
    (gflops, params), chosen, outs = promoted
    proc = run_cli("promote", "--history", "--model-name", MODEL, "--mlflow-uri", uri, cwd=tmp_path)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"2 move(s) of the aliases of model '{MODEL}', oldest first:"
    head = lines[1].split("  ")
    head = [h.strip() for h in head if h.strip()]
    assert head == ["time (UTC)", "alias", "version", "replaced", "sweep", "trial", "test ccc_mean", "params_m",
                    "gflops", "infer_ms", "train_s", "peak_mem_mb", "constraints"]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 2
    trials = records(client, "mo")
    best = max(trials, key=lambda t: trials[t]["ccc"])
    for row, number, replaced, trial, (_, folder) in zip(rows, ("1", "2"), ("-", "1"), (best, chosen), outs):
        assert row[1:6] == ["production", number, replaced, "mo", trial]
        produced = yaml.safe_load((folder / "production.yaml").read_text())
        assert produced["version"] == number and row[6] == f"{produced['test']['value']:.4f}"
        assert row[8] == f"{trials[trial]['gflops']:.4g}" and row[7] == f"{trials[trial]['params_m']:.4g}"
    assert rows[0][-1] == "-" and " ".join(rows[1][-2:]) == f"{gflops}, {params}"
    assert rows[0][0] <= rows[1][0]  # ISO times, oldest first
    # recorded on the registered model, one tag per move
    tags = client.get_registered_model(MODEL).tags
    moves = {k: json.loads(v) for k, v in tags.items() if k.startswith("emotune.alias_move.")}
    assert set(moves) == {"emotune.alias_move.000001", "emotune.alias_move.000002"}
    assert moves["emotune.alias_move.000002"]["replaced"] == "1"
    assert moves["emotune.alias_move.000002"]["costs"]["gflops"] == pytest.approx(trials[chosen]["gflops"])

    proc = run_cli("promote", "--history", "--model-name", "nobody", "--mlflow-uri", uri, cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == "no model named 'nobody' is registered: no move of its alias 'production' is recorded"


def _registry_state(client) -> tuple:
    model = client.get_registered_model(MODEL)
    versions = sorted(v.version for v in client.search_model_versions(f"name = '{MODEL}'"))
    return versions, client.get_model_version_by_alias(MODEL, "production").version, dict(model.tags)


def test_no_trial_meeting_the_constraints_moves_nothing(store, promoted, tmp_path):
    work, uri = store
    client = _client(uri)
    before = _registry_state(client)
    trials = records(client, "mo")
    closest = min(trials, key=lambda t: trials[t]["gflops"])  # one constraint: the least gflops misses it least
    proc = run_cli("promote", "mo", "--mlflow-uri", uri, "--model-name", MODEL, "--out", str(tmp_path),
                   "--constraint", "gflops<=1e-9", "--margin", "-2", cwd=tmp_path)
    assert proc.returncode == 2 and not proc.stdout, proc.stdout
    line, = proc.stderr.splitlines()
    assert line == (f"emotune: error: no complete trial of sweep 'mo' meets gflops<=1e-09 (3 complete trial(s)); "
                    f"closest: trial {closest} (gflops {trials[closest]['gflops']:.4g}); nothing promoted")
    assert _registry_state(client) == before
    assert not (tmp_path / "production.yaml").exists()


@pytest.mark.parametrize("args, words", [
    (["--constraint", "gflops=2"], "constraint 'gflops=2' is not <name><op><number>"),
    (["--constraint", "gflops<=2", "--constraint", "flops<=2"], "names 'flops', which is neither a measured cost"),
    (["--constraint", "val_ccc_mean>=high"], "is not <name><op><number>"),
    (["--constraint", "epoch<=3"], "names 'epoch', which is neither"),
], ids=["no-operator", "unknown-name", "not-a-number", "not-a-cost-or-metric"])
def test_a_bad_constraint_is_one_line_before_anything_runs(args, words, tmp_path):
    """Refused while the command line is read: no store is opened (none exists here, and none is created)."""
    proc = run_cli("promote", "somesweep", *args, cwd=tmp_path)
    assert proc.returncode == 2 and not proc.stdout
    line, = proc.stderr.splitlines()
    assert line.startswith("emotune: error: promote: argument --constraint: ") and words in line, line
    assert "names: costs params_m, gflops, infer_ms, train_s, peak_mem_mb; metrics val_" in line
    assert not list(tmp_path.iterdir())


def test_history_and_sweep_arguments_that_do_not_go_together(store, tmp_path, capsys):
    work, uri = store
    for args, words in ((["promote", "mo", "--history", "--mlflow-uri", uri], "it takes no SWEEP"),
                        (["promote", "--mlflow-uri", uri], "promote needs SWEEP"),
                        (["promote", "mo", "--constraint", "gflops<=1", "--retrain-top", "2", "--mlflow-uri", uri],
                         "--constraint and --retrain-top do not go together")):
        status, out, err = cli(*args, cwd=tmp_path, capsys=capsys)
        assert status == 2 and not out and err.count("\n") == 1 and words in err, err


def test_the_readme_constrained_promotion_and_history(store, tmp_path):
    """The README's constrained promotion and history lines as written, with SWEEP=mo (model ``emotune``, which no
    other test here promotes to): its bounds are far above what the tiny trials cost, so the best trial is chosen."""
    from test_readme import code_blocks

    work, uri = store
    blocks = code_blocks("Promotion and prediction")
    block = next(b for b in blocks if "--constraint" in b)
    env = {"SWEEP": "mo", "MLFLOW": uri}
    outputs = []
    for line in block.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = [re.sub(r"\$(\w+)", lambda m: env[m.group(1)], w) for w in shlex.split(line)]
        assert words[0] == "emotune"
        outputs.append(emotune(*words[1:], cwd=tmp_path).stdout)
    assert len(outputs) == 2
    trials = records(_client(uri), "mo")
    best = max(trials, key=lambda t: trials[t]["ccc"])
    assert re.search(rf"^constraints gflops<=2, params_m<=10: trial {best} ", outputs[0], re.M), outputs[0]
    assert outputs[1].splitlines()[0] == "1 move(s) of the aliases of model 'emotune', oldest first:"
    assert outputs[1].splitlines()[2].split()[1:6] == ["production", "1", "-", "mo", best]


@pytest.mark.slow
def test_a_cross_validated_sweeps_constrained_promotion_refits_the_chosen_trial(cv, tmp_path):
    """On the CV sweep of ``tests/test_cv_analysis.py`` (in a copy of its store): the constraint leaves the best
    configuration out when another finished every fold (a bound on the mean over folds), and the refit is of the
    trial it picks; the registered version names the constraint."""
    import test_cv_analysis

    for name in ("mlflow.db", "optuna.db"):
        shutil.copy(cv[0] / name, tmp_path / name)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = _client(uri)
    trials = {t: v for t, v in test_cv_analysis.expected(client).items() if v["complete"]}
    ranked = sorted(trials, key=lambda t: trials[t]["mean"], reverse=True)
    if len(ranked) > 1:
        bound = (trials[ranked[0]]["mean"] + trials[ranked[1]]["mean"]) / 2
        constraint, chosen = f"val_ccc_mean<={bound:.9g}", ranked[1]
    else:
        constraint, chosen = "params_m<=1000", ranked[0]
    out = emotune("promote", "cv", "--mlflow-uri", uri, "--model-name", "emotune-cv-constrained", "--constraint",
                  constraint, "--margin", "-2", "--out", str(tmp_path), cwd=tmp_path).stdout
    assert re.search(rf"^constraints {re.escape(constraint)}: trial {chosen} ", out, re.M), out
    assert re.search(rf"^promoted: the refit of trial {chosen} of sweep cv ", out, re.M), out
    refit, = client.search_runs([_parent(client, "cv").info.experiment_id], "tags.`emotune.refit_of` = 'cv'")
    assert refit.data.tags["emotune.refit_trial"] == chosen
    assert refit.data.tags["emotune.refit_trial_run_id"] == trials[chosen]["run"].info.run_id
    version = client.get_model_version_by_alias("emotune-cv-constrained", "production")
    assert version.tags["emotune.constraints"] == constraint and version.tags["emotune.trial"] == chosen
    assert (tmp_path / "production.yaml").is_file()
