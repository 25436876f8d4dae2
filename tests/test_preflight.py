"""The pre-flight check on its own: what it resolves, what it drops, what it warns about."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from search_spaces.schema import load_space
from test_sweep_e2e import SPACE, emotune


def _rows(manifest: Path) -> list[dict]:
    return list(csv.DictReader(manifest.open()))


@pytest.fixture(scope="module")
def mixed_lengths(tmp_path_factory) -> Path:
    """A dataset whose validation video (40 frames) is shorter than its training video (96 frames): two synthetic
    datasets, train and test from one, the validation subject from the other, in one manifest."""
    work = tmp_path_factory.mktemp("mixed")
    emotune("data", "synth", "--out", "long", "--subjects", "3", "--videos-per-subject", "1", "--frames", "96",
            "--size", "64", cwd=work)
    emotune("data", "synth", "--out", "short", "--subjects", "3", "--videos-per-subject", "1", "--frames", "40",
            "--size", "64", "--seed", "1", cwd=work)
    rows = [dict(r, **{k: f"long/{r[k]}" for k in ("path", "labels", "faces")})
            for r in _rows(work / "long" / "manifest.csv") if r["split"] != "val"]
    rows += [dict(r, video_id="short_" + r["video_id"], subject="short_" + r["subject"],
                  **{k: f"short/{r[k]}" for k in ("path", "labels", "faces")})
             for r in _rows(work / "short" / "manifest.csv") if r["split"] == "val"]
    with (work / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    prep = emotune("data", "prepare", "--manifest", "manifest.csv", "--cache", "cache", "--size", "32", cwd=work)
    (work / "e2e.yaml").write_text(SPACE)
    return (work / prep.stdout.split("dataset index: ")[1].strip()).resolve()


def test_a_validation_video_shorter_than_a_window_is_named(mixed_lengths):
    from cluster.preflight import preflight

    space = load_space(mixed_lengths.parent.parent / "e2e.yaml", {"window_length": 48})
    report = preflight(space, {"data_index": str(mixed_lengths), "epochs": 1})
    short = [w for w in report.warnings if "validation video" in w]
    assert len(short) == 1 and short[0].startswith("validation video short_s")
    assert "has 40 frames, fewer than window_length=48" in short[0]
    # the fixed settings, one configuration per value of each searched parameter (2 strides; lr and w_mse: low and
    # high), and the random draws
    assert report.configs == 1 + 2 + 2 + 2 + 32


def test_a_searched_parameter_that_never_applies_is_not_searched(mixed_lengths):
    from cluster.preflight import preflight

    space = load_space(mixed_lengths.parent.parent / "e2e.yaml", {"sampler": "uniform", "num_frames": 16})
    report = preflight(space, {"data_index": str(mixed_lengths), "epochs": 1})
    assert "ssts_stride" in space.params and "ssts_stride" not in report.space.params
    assert ("e2e.yaml: ssts_stride does not apply (only with sampler in (ssts); sampler is uniform); not searched"
            in report.warnings)
    # a fixed setting of the study that does not apply is dropped, with its own warning
    assert ("e2e.yaml: ssts_stochastic does not apply (only with sampler in (ssts, consecutive); sampler is uniform); "
            "dropped" in report.warnings)


def test_draws_follow_optunas_step_and_the_enqueued_points(tmp_path):
    """The configurations are Optuna trials: a float with a step is drawn on its grid, an int on its step, and a
    point's values are used as given, the rest drawn."""
    from cluster.preflight import candidate_points

    (tmp_path / "steps.yaml").write_text(SPACE.replace("params:", "params:\n  dropout: {type: uniform, low: 0.0, "
                                                       "high: 0.5, step: 0.125}\n  batch_size: {type: int, low: 4, "
                                                       "high: 64, step: 4}").replace("batch_size: 8, ", ""))
    space = load_space(tmp_path / "steps.yaml", {})
    points = candidate_points(space, samples=40, seed=3)
    assert {p["dropout"] for _, p in points} <= {0.0, 0.125, 0.25, 0.375, 0.5}
    assert len({p["dropout"] for _, p in points}) >= 4
    assert all(p["batch_size"] % 4 == 0 and 4 <= p["batch_size"] <= 64 for _, p in points)
    fixed = dict(points)["params.ssts_stride=6"]
    assert fixed["ssts_stride"] == 6 and 1e-4 <= fixed["lr"] <= 3e-3
    assert candidate_points(space, samples=5, seed=3) == points[:len(points) - 35]  # seeded: the same draws


def test_every_combination_of_the_shape_settings_is_a_point():
    """``all`` searches backbone, cnn (for two backbones), pyramid levels (for one) and batch size: 12 backbone/CNN/
    pyramid combinations times 3 batch sizes, a CNN only where its condition holds."""
    from cluster.preflight import candidate_points, shape_points

    space = load_space("all", {})
    points = shape_points(space)
    assert len(points) == (3 + 3 + 1 + 1 + 1 + 1 + 2) * 3
    assert {"backbone": "i3d", "cnn": "vgg16_bn", "batch_size": 16} in points
    assert not any("cnn" in p for p in points if p["backbone"] not in ("cnn_rnn", "i3d"))
    assert {p["pyramid_levels"] for p in points if p["backbone"] == "mimamo"} == {1, 2}
    origins = [origin for origin, _ in candidate_points(space, samples=0, seed=0)]
    assert "params.backbone='mimamo', params.pyramid_levels=2, params.batch_size=4" in origins
    assert len(shape_points(load_space("smoke", {}))) == 2 * 3  # batch_size x ssts_stride
    # a single shape setting: its values are checked one by one already
    assert shape_points(load_space("ssts_strides", {"registration": "coarse"})) == []


def test_the_ends_of_a_stepped_range_are_values_a_trial_can_draw(tmp_path):
    from cluster.preflight import candidate_points

    (tmp_path / "ends.yaml").write_text(SPACE.replace("params:", "params:\n  batch_size: {type: int, low: 4, high: 63, "
                                                      "step: 4}").replace("batch_size: 8, ", ""))
    origins = [o for o, _ in candidate_points(load_space(tmp_path / "ends.yaml", {}), samples=0, seed=0)]
    assert "params.batch_size=4" in origins and "params.batch_size=60" in origins
    assert "params.batch_size=63" not in origins
