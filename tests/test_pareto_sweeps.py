"""Pareto fronts through the real entry points, checked against the MLflow records.

The store is a copy of the one holding the one-split sweeps ``rep`` and ``rep-b`` of ``tests/test_report.py``
(``tiny_sweeps``), with one more sweep, ``mo`` (experiment ``pareto``): a study with two objectives, validation CCC
(max) against GFLOPs per window (min), whose three one-epoch trials differ in their GRU size (8, 16, 32), so their
costs differ. Every expectation here is computed from the runs' metrics and tags by this file's own arithmetic (a
brute-force dominance check, the hypervolume as the area of a union of rectangles over a grid of their edges), not by
``analysis``: the report's fronts, hypervolumes and reference points, the multi-objective leaderboard's order, and
``emotune compare``'s overlaid fronts."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from test_report import cli, tiny_sweeps
from test_sweep_e2e import emotune

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


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(folder, tracking URI): a copy of the ``tiny_sweeps`` store with sweep ``mo`` added (module docstring)."""
    base = tiny_sweeps(tmp_path_factory.getbasetemp())
    work = tmp_path_factory.mktemp("pareto")
    for name in ("mlflow.db", "optuna.db"):
        shutil.copy(base / name, work / name)
    index, = (base / "cache").glob("index-*.json")
    (work / "mo.yaml").write_text(MO_SPACE)
    emotune("sweep", "--space", "mo.yaml", "--data", str(index), "--trials", "3", "--epochs", "1",
            "--max-concurrent", "1", "--name", "mo", "--experiment", "pareto", cwd=work)
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
    assert f"(val_ccc_mean = {ref[0]:.4g}, gflops = {ref[1]:.4g}: 0 or the worst" in out
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
