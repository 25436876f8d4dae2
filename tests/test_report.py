"""``emotune report`` through the real CLI on a tiny real sweep (Ray Tune, Optuna, ASHA, MLflow): the HTML holds the
leaderboard, the fANOVA importance and the study's tables, every figure it shows exists as a PNG, and the parent run
holds them all under ``report/``; the paper-style tables on hand-made trials; the headless browser check (``-m slow``).
The sweeps are shared with ``tests/test_compare.py`` (``tiny_sweeps``)."""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from test_sweep_e2e import SPACE, emotune, synth_and_prepare

_BUILT: dict[str, Path] = {}


def tiny_sweeps(base: Path) -> Path:
    """Once per test session: a 3-subject dataset, sweep ``rep`` (3 trials x up to 2 epochs of cnn_rnn_tiny, ASHA
    stopping some after 1, experiment ``emotune``) and sweep ``rep-b`` (2 trials x 1 epoch, experiment ``other``), in
    the working folder this returns (./mlflow.db, ./optuna.db, ./ray_results)."""
    if "work" not in _BUILT:
        import optuna
        from mlflow.tracking import MlflowClient

        work = Path(tempfile.mkdtemp(prefix="sweeps-", dir=base))
        index, _ = synth_and_prepare(work)
        (work / "e2e.yaml").write_text(SPACE)
        # Both stores get their tables before two processes would race to create them in the same empty file.
        MlflowClient(f"sqlite:///{work / 'mlflow.db'}").search_experiments()
        optuna.storages.RDBStorage(f"sqlite:///{work / 'optuna.db'}")
        # The two sweeps run at once, a trial at a time each, so their Ray start-ups overlap (two local sweeps work
        # side by side); the second one's MLflow experiment is created while the first one's is in use.
        second = subprocess.Popen(
            [str(Path(sys.executable).with_name("emotune")), "sweep", "--space", "e2e.yaml", "--data", str(index),
             "--trials", "2", "--epochs", "1", "--max-concurrent", "1", "--name", "rep-b", "--seed", "2",
             "--experiment", "other"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            emotune("sweep", "--space", "e2e.yaml", "--data", str(index), "--trials", "3", "--max-concurrent", "1",
                    "--name", "rep", "--seed", "1", cwd=work)
        finally:
            log = second.communicate(timeout=600)[0]
        assert second.returncode == 0, log[-5000:]
        _BUILT["work"] = work
    return _BUILT["work"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Path:
    return tiny_sweeps(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def report(sweeps):
    out = emotune("report", "rep", cwd=sweeps).stdout
    path = Path(out.split("report: ")[1].splitlines()[0])
    return sweeps, path, out


def _client(work: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{work / 'mlflow.db'}")


def _parent(client, name: str):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`emotune.sweep` = '{name}'")
    return next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)


def _children(client, parent):
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


def test_report_is_written_beside_the_ray_results(report):
    work, path, out = report
    assert path == (work / "ray_results" / "rep-report" / "report.html").resolve()
    assert "Downloading artifacts" not in out


def test_report_holds_leaderboard_importance_and_study_tables(report):
    work, path, _ = report
    page = path.read_text()
    client = _client(work)
    children = _children(client, _parent(client, "rep"))
    board = page.split("<h3>Leaderboard</h3>")[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>(\d+)</td><td>([0-9a-f]+)</td>", board)
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert {r[1] for r in rows} == {c.data.tags["emotune.trial_id"] for c in children}
    # one format per column: every objective cell has 4 decimals, every lr cell is scientific
    cells = [re.findall(r"<td>([^<]*)</td>", row) for row in board.split("<tr>")[2:]]
    assert all(re.fullmatch(r"-?\d\.\d{4}", c[-2]) for c in cells)
    assert all(re.fullmatch(r"\d\.\d{3}e-0\d", c[2]) for c in cells)
    importance = page.split("Hyperparameter importance for val_ccc_mean (fANOVA)</h3>")[1].split("</table>")[0]
    values = dict(re.findall(r"<tr><td>(\w+)</td><td>([0-9.]+)</td></tr>", importance))
    assert set(values) == {"lr", "ssts_stride", "w_mse"}
    assert math.isclose(sum(float(v) for v in values.values()), 1.0, abs_tol=2e-3)
    # the generic study table: one table per searched parameter, each value with its trials
    tables = page.split("<h2>Study tables</h2>")[1]
    for p in ("lr", "ssts_stride", "w_mse"):
        assert f"<h3>{p}</h3>" in tables
    stride = tables.split("<h3>ssts_stride</h3>")[1].split("</table>")[0]
    counts = re.findall(r"<tr><td>([46])</td><td>(\d+)</td>", stride)
    assert sum(int(n) for _, n in counts) == 3


def test_every_figure_exists_and_is_logged_to_the_parent_run(report):
    work, path, _ = report
    page = path.read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert {Path(i).name for i in images} == {"importance.png", "parallel.png", "learning_curves.png", "time.png",
                                              "pareto.png"}
    for image in images:
        assert (path.parent / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
    client = _client(work)
    parent = _parent(client, "rep")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in logged
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "report/figures")}
    assert figures == {f"report/{i}" for i in images}
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_loaded_sweep_names_its_log_scaled_params_from_the_study_file(sweeps):
    """lr is loguniform in the study the sweep logged; w_mse (uniform) and ssts_stride (categorical) are not."""
    from analysis.figures import parallel_axes
    from analysis.sweeps import load_sweep

    sweep = load_sweep(_client(sweeps), "rep")
    assert set(sweep.searched) == {"lr", "ssts_stride", "w_mse"} and sweep.log_scaled == {"lr"}
    finished = [t for t in sweep.trials if not math.isnan(sweep.objective(t))]
    labels = [a.label for a in parallel_axes(sweep, finished)]
    assert sorted(labels) == sorted(["lr (log)", "ssts_stride", "w_mse", "val_ccc_mean"])


def cli(*args: str, cwd: Path, capsys) -> tuple[int, str, str]:
    """The CLI's ``main`` in this process (the checks below need no new process to import everything again)."""
    import os

    from cluster.cli import main

    here = os.getcwd()
    os.chdir(cwd)
    try:
        status = main(list(args))
    finally:
        os.chdir(here)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_report_by_parent_run_id_into_a_chosen_folder(sweeps, tmp_path, capsys):
    client = _client(sweeps)
    run_id = _parent(client, "rep-b").info.run_id
    status, out, _ = cli("report", run_id, "--out", str(tmp_path / "r"), "--experiment", "other", cwd=sweeps,
                         capsys=capsys)
    assert status == 0 and f"report: {tmp_path / 'r' / 'report.html'}" in out
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Sweep rep-b" in page and "<h3>Leaderboard</h3>" in page


def test_unknown_sweep_is_one_line_naming_the_sweeps(sweeps, capsys):
    status, _, err = cli("report", "nope", cwd=sweeps, capsys=capsys)
    assert status == 2 and err == "emotune: error: no sweep 'nope'; sweeps: rep, rep-b\n"
    status, _, err = cli("report", "rep", "--experiment", "other", cwd=sweeps, capsys=capsys)
    assert status == 2 and err == "emotune: error: no sweep 'rep' in experiment 'other'; sweeps: rep-b\n"
    status, _, err = cli("report", "rep", "--mlflow-uri", f"sqlite:///{sweeps / 'missing.db'}", cwd=sweeps,
                         capsys=capsys)
    assert status == 2 and err.count("\n") == 1 and "no MLflow store" in err


# ---- the paper-style tables on hand-made trials (no sweep needed) ----

def _sweep(space: str, searched: list[str], trials: list[tuple[dict, float, str]]):
    from analysis.sweeps import Sweep, Trial

    made = []
    for i, (params, value, status) in enumerate(trials):
        history = {"val_ccc_mean": {1: value - 0.1, 2: value}, "val_ccc_valence": {2: value + 0.05},
                   "val_ccc_arousal": {2: value - 0.05}, "val_rmse_valence": {2: 0.3}, "val_rmse_arousal": {2: 0.2},
                   "epoch_time_s": {1: 10.0, 2: 10.0}}
        made.append(Trial(f"t{i}", f"r{i}", params, status, i, history, 20.0))
    return Sweep("s", "p", "e", space, "val_ccc_mean", "max", searched, {}, made)


def test_ssts_strides_table_is_stride_by_registration():
    from analysis.tables import study_tables

    sweep = _sweep("ssts_strides", ["ssts_stride", "registration"], [
        ({"ssts_stride": 4, "registration": "coarse", "lr": 1e-3}, 0.5, "complete"),
        ({"ssts_stride": 4, "registration": "coarse", "lr": 2e-3}, 0.6, "stopped early"),
        ({"ssts_stride": 8, "registration": "fine", "lr": 1e-3}, 0.4, "complete"),
        ({"ssts_stride": 8, "registration": "fine", "lr": 1e-3}, 0.9, "errored")])
    [table] = study_tables(sweep)
    assert "Table II" in table.title
    assert table.to_text().splitlines() == [
        "ssts_stride  registration  trials  best val_ccc_mean  ccc_valence  ccc_arousal  rmse_valence  rmse_arousal"
        "  train time (s)",
        "4            coarse        2       0.6000             0.6500       0.5500       0.3000        0.2000"
        "        20.0000",
        "8            fine          1       0.4000             0.4500       0.3500       0.3000        0.2000"
        "        20.0000"]


def test_sequence_windows_and_losses_augment_tables():
    from analysis.tables import study_tables

    windows = _sweep("sequence_windows", ["window_length", "window_overlap", "label_fusion", "fps"], [
        ({"window_length": 16, "window_overlap": 0.2, "label_fusion": "mean", "fps": 10}, 0.3, "complete"),
        ({"window_length": 32, "window_overlap": 0.5, "label_fusion": "extremum", "fps": 25}, 0.5, "complete")])
    [table] = study_tables(windows)
    assert "Table 2" in table.title and table.columns[:4] == ["window_length", "window_overlap", "label_fusion", "fps"]
    assert [r[:4] for r in table.rows] == [[16, 0.2, "mean", 10], [32, 0.5, "extremum", 25]]

    losses = _sweep("losses_augment", ["w_ccc", "w_mse", "aug_hflip"], [
        ({"w_ccc": 1.0, "w_mse": 0.0, "aug_hflip": 0.5}, 0.7, "complete"),
        ({"w_ccc": 0.2, "w_mse": 0.8, "aug_hflip": 0.0}, 0.4, "complete"),
        ({"w_ccc": 0.5, "w_mse": 0.5, "aug_hflip": 0.5}, 0.5, "stopped early")])
    table3, table4 = study_tables(losses)
    assert "Table III" in table3.title and [r[:2] for r in table3.rows] == [[1.0, 0.0], [0.5, 0.5], [0.2, 0.8]]
    assert "Table IV" in table4.title
    assert [(r[0], r[1]) for r in table4.rows] == [(0.0, 1), (0.5, 2)]
    assert math.isclose(table4.rows[1][2], 0.6) and math.isclose(table4.rows[1][3], 0.7)


def test_generic_table_bins_a_continuous_parameter_on_a_log_scale():
    from analysis.tables import study_tables

    sweep = _sweep("other", ["lr"], [({"lr": v}, 0.1 * i, "complete")
                                     for i, v in enumerate([1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3])])
    [table] = study_tables(sweep)
    labels = [r[0] for r in table.cells()]
    assert labels[0] == "[1.000e-05, 4.162e-05)" and labels[-1].endswith("3.000e-03]")
    assert sum(r[1] for r in table.rows) == 6


def test_parallel_axes_are_log_only_for_params_searched_on_a_log_scale():
    """The objective axis is linear (0.05 lies where a linear axis puts it, though the values span > 100x); a
    loguniform param is on a log axis marked ``(log)``; a uniform param spanning > 20x stays linear, unmarked."""
    from analysis.figures import parallel_axes

    sweep = _sweep("other", ["lr", "w_mse", "stride"], [
        ({"lr": 1e-4, "w_mse": 0.01, "stride": 4}, 0.005, "complete"),
        ({"lr": 1e-3, "w_mse": 0.5, "stride": 6}, 0.05, "complete"),
        ({"lr": 1e-2, "w_mse": 1.0, "stride": 4}, 0.724, "stopped early")])
    sweep.log_scaled = {"lr"}
    lr, w_mse, stride, objective = parallel_axes(sweep, sweep.trials)
    assert objective.label == "val_ccc_mean"
    assert objective.positions[1] == pytest.approx((0.05 - 0.005) / (0.724 - 0.005))
    assert objective.positions[0] == 0.0 and objective.positions[2] == 1.0
    assert lr.label == "lr (log)" and lr.positions == pytest.approx([0.0, 0.5, 1.0])
    assert [text for _, text in lr.ticks] == ["0.0001", "0.01"]  # labelled at both ends
    assert w_mse.label == "w_mse" and w_mse.positions[1] == pytest.approx((0.5 - 0.01) / (1.0 - 0.01))
    assert stride.label == "stride" and "(log)" not in objective.label


def test_a_sweep_knows_which_params_its_study_drew_on_a_log_scale():
    from analysis.sweeps import log_scaled

    assert log_scaled({"type": "loguniform", "low": 1e-4, "high": 1e-2})
    assert log_scaled({"type": "int", "low": 8, "high": 512, "log": True})
    assert not log_scaled({"type": "int", "low": 1, "high": 100})
    assert not log_scaled({"type": "uniform", "low": 0.001, "high": 1.0})
    assert not log_scaled({"type": "categorical", "choices": [1, 10, 100]})


def test_leaderboard_columns_have_one_format_each():
    from analysis.leaderboard import Row, format_leaderboard

    rows = [Row("a", {"lr": 0.0008091, "w_mse": 0.5, "stride": 4}, 2, 2, 0.724,
                {"val_ccc_valence": -0.002859, "val_ccc_arousal": 0.5}, "complete"),
            Row("b", {"lr": 0.02, "w_mse": 0.25, "stride": 8}, 1, 1, 0.005375, {}, "stopped early")]
    lines = format_leaderboard(rows, "val_ccc_mean").splitlines()
    assert lines[2].split() == ["1", "a", "8.091e-04", "0.5000", "4", "2", "complete", "-0.0029", "0.5000", "0.7240"]
    assert lines[3].split() == ["2", "b", "2.000e-02", "0.2500", "8", "1", "stopped", "early", "-", "-", "0.0054"]


# ---- the page as a browser shows it ----

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); the browser checks need it")
    return exe


def dump_dom(url: str, tmp_path: Path, budget_ms: int = 5000) -> str:
    """The DOM of ``url`` after ``budget_ms`` of virtual time in a fresh headless Chromium profile."""
    proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--allow-file-access-from-files", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def figure_widths(page: Path, tmp_path: Path) -> dict[str, int]:
    """Each image of ``page`` -> its natural width once Chromium has loaded the page (0: it did not decode). A copy of
    the page gets a script that writes the widths into the DOM, which Chromium then dumps."""
    probe = page.with_name("probe.html")
    script = ("<script>window.addEventListener('load',()=>{const p=document.createElement('pre');p.id='probe';"
              "p.textContent=[...document.images].map(i=>i.getAttribute('src')+'='+i.naturalWidth).join(';');"
              "document.body.appendChild(p);});</script>")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    try:
        dom = dump_dom(probe.as_uri(), tmp_path)
    finally:
        probe.unlink()
    found = re.search(r"<pre id=\"probe\">([^<]*)</pre>", dom)
    assert found, dom[-2000:]
    return {src: int(w) for src, w in (item.split("=") for item in found.group(1).split(";"))}


@pytest.mark.slow
def test_every_figure_loads_in_a_browser(report, tmp_path):
    widths = figure_widths(report[1], tmp_path)
    assert len(widths) == 5 and all(w > 0 for w in widths.values()), widths


def test_importance_without_the_study_says_where_it_looked(tmp_path):
    from analysis.report import importance

    sweep = _sweep("other", ["lr"], [({"lr": 1e-3}, 0.5, "complete")])
    missing = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert importance(sweep, missing).note == f"no Optuna storage at {missing} (give the sweep's --optuna-storage)"
    assert not (tmp_path / "optuna.db").exists()
