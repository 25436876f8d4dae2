"""Tests for the label-file adapters (trainables/prepare/adapters.py).

Every adapter is exercised on small files in its native format written here: exact values, times, the rescale round
trip, and each error with a message naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainables.prepare.adapters import (
    LabelFileError,
    LabelTrack,
    get_adapter,
    list_adapters,
    read_labels,
    register_adapter,
)
from trainables.prepare.sidecar import read_frame_labels

NAN = np.nan
ALL = ["afew_va", "affwild2_va", "frame_csv", "recola_arff", "second_csv", "sewa_csv"]


def _w(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _arff(path: Path, rows: list[tuple[float | str, float | str]], name: str = "train_1") -> Path:
    head = ("@relation GoldStandard\n\n@attribute Instance_name string\n@attribute frameTime numeric\n"
            "@attribute GoldStandard numeric\n\n@data\n\n")
    return _w(path, head + "".join(f"'{name}',{t},{v}\n" for t, v in rows))


def _raises(path: Path, fn, *fragments: str) -> str:
    with pytest.raises(LabelFileError) as exc:
        fn()
    msg = str(exc.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


# ---------------------------------------------------------------------------
# registry and LabelTrack
# ---------------------------------------------------------------------------

def test_registry_lists_all_adapters():
    names = list_adapters()
    assert set(ALL) <= set(names) and names == sorted(names)
    assert get_adapter("afew_va").extensions == (".json",)
    assert get_adapter("recola_arff").extensions == (".arff",)
    assert get_adapter("affwild2_va").extensions == (".txt",)


def test_unknown_format_lists_valid_names(tmp_path):
    with pytest.raises(ValueError) as exc:
        read_labels("nope", tmp_path / "x.csv", fps=25)
    assert "'nope'" in str(exc.value) and ", ".join(list_adapters()) in str(exc.value)


def test_unknown_option_and_bad_fps_dims(tmp_path):
    p = _w(tmp_path / "l.txt", "valence,arousal\n0.1,0.2\n")
    with pytest.raises(ValueError, match="does not take option.*scale.*allowed: none"):
        read_labels("affwild2_va", p, fps=25, scale=(0, 1))
    for fps in (0, -1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="fps must be a positive"):
            read_labels("affwild2_va", p, fps=fps)
    with pytest.raises(ValueError, match="distinct"):
        read_labels("affwild2_va", p, fps=25, dims=("valence", "Valence"))
    with pytest.raises(ValueError, match="non-empty"):
        read_labels("affwild2_va", p, fps=25, dims=())
    with pytest.raises(ValueError, match="must be taken from"):
        read_labels("affwild2_va", p, fps=25, dims=("dominance",))


def test_register_adapter_rejects_duplicates_and_bad_signatures():
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("frame_csv")(lambda path, *, fps, dims: None)
    with pytest.raises(ValueError, match="lacks parameter"):
        register_adapter("never_added")(lambda path: None)
    assert "never_added" not in list_adapters()


def test_custom_adapter_is_selectable_by_name(tmp_path):
    name = "test_constant_adapter"

    @register_adapter(name, extensions=("lab",))
    def _read(path, *, fps, dims, level=0.5):
        return LabelTrack(np.full((3, len(dims)), level, np.float32), np.arange(3.0) / fps, dims, (-1.0, 1.0), fps)

    try:
        track = read_labels(name, tmp_path / "any.lab", fps=10, dims=("valence",), level=0.25)
        assert get_adapter(name).extensions == (".lab",) and get_adapter(name).options == ("level",)
        np.testing.assert_array_equal(track.values, [[0.25]] * 3)
        np.testing.assert_allclose(track.times, [0.0, 0.1, 0.2])
    finally:
        from trainables.prepare import adapters
        adapters._ADAPTERS.entries.pop(name)


@pytest.mark.parametrize("scale, native, unit", [
    ((-10.0, 10.0), [-10, -5, 0, 5, 10], [-1, -0.5, 0, 0.5, 1]),
    ((-1.0, 1.0), [-1, -0.3, 0.0123, 1], [-1, -0.3, 0.0123, 1]),
    ((0.0, 10.0), [0, 2.5, 5, 10], [-1, -0.5, 0, 1]),
    ((1.0, 9.0), [1, 3, 5, 9], [-1, -0.5, 0, 1]),
])
def test_to_native_inverts_rescale(scale, native, unit):
    from trainables.data.labels import to_unit

    np.testing.assert_allclose(to_unit(np.array(native, float), scale), unit, atol=1e-12)
    track = LabelTrack(np.array(unit, np.float32)[:, None], np.arange(len(unit), dtype=np.float64), ("valence",),
                       scale, 1.0)
    back = track.to_native(track.values)
    assert back.dtype == np.float64 and back.shape == (len(unit), 1)
    np.testing.assert_allclose(back[:, 0], native, rtol=0, atol=1e-6 * (scale[1] - scale[0]))
    assert np.isnan(track.to_native(np.array([NAN])))[0]


def test_labeltrack_validates_fields():
    good = dict(values=np.zeros((2, 1), np.float32), times=np.array([0.0, 1.0]), dims=("valence",),
                scale=(-1.0, 1.0), rate=1.0)
    LabelTrack(**good)
    for change, match in [
        (dict(values=np.zeros((2, 1), np.float64)), "float32"),
        (dict(times=np.array([0.0])), "length 2"),
        (dict(times=np.array([1.0, 1.0])), "strictly increasing"),
        (dict(dims=("valence", "arousal")), "name the 1 columns"),
        (dict(scale=(1.0, 1.0)), "low < high"),
        (dict(rate=0.0), "positive"),
    ]:
        with pytest.raises(ValueError, match=match):
            LabelTrack(**{**good, **change})


# ---------------------------------------------------------------------------
# frame_csv
# ---------------------------------------------------------------------------

def test_frame_csv_values_times_and_empty_cells(tmp_path):
    p = _w(tmp_path / "v.csv", "frame,valence,arousal\n0,0.25,-0.5\n1,,0.125\n2,-1.0,\n3,,\n4,1,0\n")
    t = read_labels("frame_csv", p, fps=25)
    expected = np.array([[0.25, -0.5], [NAN, 0.125], [-1, NAN], [NAN, NAN], [1, 0]], np.float32)
    np.testing.assert_array_equal(t.values, expected)
    np.testing.assert_allclose(t.times, [0, 0.04, 0.08, 0.12, 0.16])
    assert t.values.dtype == np.float32 and t.times.dtype == np.float64
    assert (t.dims, t.scale, t.rate) == (("valence", "arousal"), (-1.0, 1.0), 25.0)
    # Same numbers as the existing per-frame reader.
    np.testing.assert_array_equal(t.values, read_frame_labels(p))


def test_frame_csv_dims_by_name_extra_columns_and_scale(tmp_path):
    p = _w(tmp_path / "v.csv", "frame,arousal,note,valence\n0,0,x,10\n1,5,y,2.5\n")
    t = read_labels("frame_csv", p, fps=10, dims=("valence", "arousal"), scale=(0, 10))
    np.testing.assert_array_equal(t.values, np.array([[1, -1], [-0.5, 0]], np.float32))
    np.testing.assert_allclose(t.to_native(t.values), [[10, 0], [2.5, 5]])
    t1 = read_labels("frame_csv", p, fps=10, dims=("arousal",), scale=(0, 10))
    assert t1.values.shape == (2, 1) and t1.dims == ("arousal",)


def test_frame_csv_reads_synthetic_dataset_file(synth_manifest):
    path = synth_manifest.parent / "labels" / "s00_v0.csv"
    t = read_labels("frame_csv", path, fps=25)
    np.testing.assert_array_equal(t.values, read_frame_labels(path))
    np.testing.assert_allclose(t.times, np.arange(len(t.values)) / 25)


@pytest.mark.parametrize("text, fragments", [
    ("frame,valence,arousal\n0,0.1,0.2\n1,0.1,0.2\n1,0.3,0.4\n", ["line 4", "duplicated frame 1 (first on line 3)"]),
    ("frame,valence,arousal\n0,0.1,0.2\n1,0.1,0.2\n3,0.3,0.4\n", ["line 4", "frame 2 is missing"]),
    ("frame,valence,arousal\n0,0.1,0.2\n4,0.1,0.2\n", ["line 3", "frames 1..3 are missing"]),
    ("frame,valence,arousal\n1,0.1,0.2\n2,0.1,0.2\n", ["line 2", "frame 0 is missing"]),
    ("frame,valence,arousal\n0,0.1,0.2\n2,0.1,0.2\n1,0.1,0.2\n", ["line 3", "frame 1 is missing"]),
    ("frame,valence,arousal\n0,0.1,0.2\n0.5,0.1,0.2\n", ["line 3", "'0.5' is not an integer"]),
    ("frame,valence,arousal\n0,0.1,0.2\n,0.1,0.2\n", ["line 3", "empty cell"]),
    ("frame,valence,arousal\n0,0.1,0.2\n1,nan,0.2\n", ["line 3", "column 'valence'", "NaN text 'nan'"]),
    ("frame,valence,arousal\n0,0.1,NaN\n", ["line 2", "NaN text 'NaN'", "use ''"]),
    ("frame,valence,arousal\n0,0.5x,0.2\n", ["line 2", "non-numeric value '0.5x'"]),
    ("frame,valence,arousal\n0,0.1,inf\n", ["line 2", "infinite value 'inf'"]),
    ("frame,valence,arousal\n0,0.1,0.2\n1,1.5,0.2\n", ["line 3", "column 'valence'", "value 1.5 is outside",
                                                        "[-1, 1]"]),
    ("frame,valence,arousal\n0,,\n1,,\n", ["no annotated value"]),
    ("frame,valence,arousal\n", ["no data rows"]),
    ("", ["is empty"]),
    ("  \n\n", ["is empty"]),
    ("t,valence,arousal\n0,0.1,0.2\n", ["must start with column 'frame'"]),
    ("frame,valence\n0,0.1\n", ["lacks column 'arousal'", "expected frame,valence,arousal"]),
    ("frame,valence,valence,arousal\n0,0.1,0.1,0.2\n", ["repeats column 'valence'"]),
    ("frame,valence,arousal\n0,0.1,0.2,9\n", ["line 2", "4 field(s) but the header has 3"]),
    ("frame,valence,arousal\n0,0.1\n", ["line 2", "2 field(s)"]),
    ("frame,valence,arousal\n0,0.1,0.2\n\n1,0.1,0.2\n", ["line 3", "blank line"]),
], ids=["duplicate", "gap", "gap_range", "offset", "out_of_order", "fractional_frame", "empty_frame", "nan_text",
        "nan_text_hint", "non_numeric", "infinite", "out_of_scale", "no_annotation", "header_only", "empty_file",
        "blank_file", "wrong_key", "missing_dim", "repeated_column", "extra_field", "missing_field", "blank_line"])
def test_frame_csv_errors(tmp_path, text, fragments):
    p = _w(tmp_path / "bad_labels.csv", text)
    _raises(p, lambda: read_labels("frame_csv", p, fps=25), "frame_csv", *fragments)


def test_missing_file_named(tmp_path):
    for fmt in ALL:
        p = tmp_path / f"missing_{fmt}.x"
        _raises(p, lambda: read_labels(fmt, p, fps=25, dims=("valence",)), "does not exist")


def test_trailing_blank_lines_and_bom_accepted(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufeffframe,valence,arousal\n0,0.1,0.2\n\n\n".encode("utf-8"))
    t = read_labels("frame_csv", p, fps=25)
    assert t.values.shape == (1, 2)


def test_rounding_slack_at_scale_bound_is_clipped(tmp_path):
    p = _w(tmp_path / "v.csv", "frame,valence\n0,1.0000001\n1,-1.0000001\n")
    t = read_labels("frame_csv", p, fps=25, dims=("valence",))
    np.testing.assert_array_equal(t.values[:, 0], [1, -1])


def test_scale_option_validated(tmp_path):
    p = _w(tmp_path / "v.csv", "frame,valence\n0,1\n")
    for scale in [(1, 1), (2, 1), ("a", 1), (0,), (0, float("inf"))]:
        with pytest.raises(ValueError, match="scale"):
            read_labels("frame_csv", p, fps=25, dims=("valence",), scale=scale)


# ---------------------------------------------------------------------------
# second_csv
# ---------------------------------------------------------------------------

def test_second_csv_times_are_interval_centres(tmp_path):
    p = _w(tmp_path / "infant.csv", "second,valence\n0,0.5\n1,\n2,-0.25\n")
    t = read_labels("second_csv", p, fps=30, dims=("valence",))
    np.testing.assert_array_equal(t.values[:, 0], np.array([0.5, NAN, -0.25], np.float32))
    np.testing.assert_array_equal(t.times, [0.5, 1.5, 2.5])
    assert t.rate == 1.0 and t.scale == (-1.0, 1.0)


def test_second_csv_other_scale(tmp_path):
    p = _w(tmp_path / "infant.csv", "second,valence,arousal\n0,1,9\n1,5,3\n")
    t = read_labels("second_csv", p, fps=25, scale=(1, 9))
    np.testing.assert_array_equal(t.values, np.array([[-1, 1], [0, -0.5]], np.float32))
    np.testing.assert_allclose(t.to_native(t.values), [[1, 9], [5, 3]])
    _w(p, "second,valence,arousal\n0,1,9\n1,0,3\n")
    _raises(p, lambda: read_labels("second_csv", p, fps=25, scale=(1, 9)), "line 3", "value 0 is outside", "[1, 9]")


def test_second_csv_reads_synthetic_per_second_file(tmp_path):
    from trainables.prepare.synth import synthesize

    m = synthesize(tmp_path / "ps", subjects=3, videos_per_subject=1, frames=60, size=64, seed=0, progress=False,
                   variant="per_second")
    t = read_labels("second_csv", m.parent / "labels" / "s00_v0.csv", fps=25)
    assert t.values.shape == (3, 2)  # ceil(60 / 25) seconds
    np.testing.assert_array_equal(t.times, [0.5, 1.5, 2.5])


@pytest.mark.parametrize("text, fragments", [
    ("second,valence\n0,0.1\n0,0.2\n", ["line 3", "duplicated second 0"]),
    ("second,valence\n0,0.1\n2,0.2\n", ["line 3", "second 1 is missing"]),
    ("frame,valence\n0,0.1\n", ["must start with column 'second'"]),
    ("second,valence\n0,-1.2\n", ["line 2", "value -1.2 is outside"]),
    ("second,valence\n0,\n", ["no annotated value"]),
], ids=["duplicate", "gap", "wrong_header", "out_of_scale", "no_annotation"])
def test_second_csv_errors(tmp_path, text, fragments):
    p = _w(tmp_path / "sec.csv", text)
    _raises(p, lambda: read_labels("second_csv", p, fps=25, dims=("valence",)), "second_csv", *fragments)


# ---------------------------------------------------------------------------
# affwild2_va
# ---------------------------------------------------------------------------

def test_affwild2_values_minus5_and_times(tmp_path):
    p = _w(tmp_path / "video1.txt", "valence,arousal\n0.1,0.2\n-5,-5\n-5,0.3\n-0.4,-5\n-1,1\n-5.0,-5.0\n")
    t = read_labels("affwild2_va", p, fps=30)
    expected = np.array([[0.1, 0.2], [NAN, NAN], [NAN, 0.3], [-0.4, NAN], [-1, 1], [NAN, NAN]], np.float32)
    np.testing.assert_array_equal(t.values, expected)
    np.testing.assert_allclose(t.times, np.arange(6) / 30)
    assert (t.scale, t.rate) == ((-1.0, 1.0), 30.0)
    ta = read_labels("affwild2_va", p, fps=30, dims=("arousal", "valence"))
    np.testing.assert_array_equal(ta.values, expected[:, ::-1])


@pytest.mark.parametrize("text, fragments", [
    ("valence,arousal\n-5,-5\n-5,-5\n", ["no annotated value at all", "-5"]),
    ("arousal,valence\n0.1,0.2\n", ["header ['arousal', 'valence'] but expected ['valence', 'arousal']"]),
    ("0.1,0.2\n0.3,0.4\n", ["header ['0.1', '0.2']"]),
    ("valence,arousal\n0.1,0.2\n0.1\n", ["line 3", "1 field(s)"]),
    ("valence,arousal\n0.1,0.2,0.3\n", ["line 2", "3 field(s)"]),
    ("valence,arousal\n0.1,0.2\n\n0.1,0.2\n", ["line 3", "blank line"]),
    ("valence,arousal\n0.1,\n", ["line 2", "column 'arousal'", "empty cell"]),
    ("valence,arousal\nnan,0.1\n", ["line 2", "NaN text 'nan'"]),
    ("valence,arousal\n0.1,-inf\n", ["line 2", "infinite"]),
    ("valence,arousal\n0.1,0.2\n-4,0.2\n", ["line 3", "column 'valence'", "value -4 is outside"]),
    ("valence,arousal\n", ["no data rows"]),
    ("", ["is empty"]),
], ids=["only_minus5", "swapped_header", "no_header", "missing_field", "extra_field", "blank_line", "empty_cell",
        "nan_text", "infinite", "out_of_scale", "header_only", "empty"])
def test_affwild2_errors(tmp_path, text, fragments):
    p = _w(tmp_path / "aw2_video.txt", text)
    _raises(p, lambda: read_labels("affwild2_va", p, fps=30), "affwild2_va", *fragments)


# ---------------------------------------------------------------------------
# afew_va
# ---------------------------------------------------------------------------

def _afew(path: Path, frames: dict, **extra) -> Path:
    return _w(path, json.dumps({"actor": "x", "frames": frames, **extra}))


def test_afew_values_rescaled_and_gaps_nan(tmp_path):
    p = _afew(tmp_path / "001.json", {
        "00000": {"valence": 5, "arousal": -10, "landmarks": [[1, 2]]},
        "00001": {"valence": 0, "arousal": 10.0},
        "00003": {"valence": -2.5, "arousal": 1},
    })
    t = read_labels("afew_va", p, fps=25)
    expected = np.array([[0.5, -1], [0, 1], [NAN, NAN], [-0.25, 0.1]], np.float32)
    np.testing.assert_array_equal(t.values, expected)
    np.testing.assert_allclose(t.times, [0, 0.04, 0.08, 0.12])
    assert (t.scale, t.rate) == ((-10.0, 10.0), 25.0)
    native = t.to_native(t.values)
    np.testing.assert_allclose(native[[0, 1, 3]], [[5, -10], [0, 10], [-2.5, 1]], atol=1e-5)


def test_afew_keys_need_not_be_sorted_or_start_with_an_entry(tmp_path):
    p = _afew(tmp_path / "002.json", {"00002": {"valence": 1, "arousal": 2}, "00001": {"valence": 3, "arousal": 4}})
    t = read_labels("afew_va", p, fps=10, dims=("valence",))
    np.testing.assert_array_equal(t.values[:, 0], np.array([NAN, 0.3, 0.1], np.float32))


@pytest.mark.parametrize("text, fragments", [
    ('{"frames": {"00000": {"valence": NaN, "arousal": 1}}}', ["NaN/Infinity literal 'NaN'"]),
    ('{"frames": {"00000": {"valence": Infinity, "arousal": 1}}}', ["'Infinity'"]),
    ('{"frames": {"00000": {"valence": 1e400, "arousal": 1}}}', ["infinite"]),
    ('{"frames": {"00000": {"valence": "1", "arousal": 1}}}', ["frame '00000'", "'1', not a number"]),
    ('{"frames": {"00000": {"valence": null, "arousal": 1}}}', ["None, not a number"]),
    ('{"frames": {"00000": {"valence": true, "arousal": 1}}}', ["True, not a number"]),
    ('{"frames": {"00000": {"valence": 1, "arousal": 11}}}', ["frame '00000'", "arousal value 11", "outside",
                                                              "[-10, 10]"]),
    ('{"frames": {"00000": {"valence": 1}}}', ["frame '00000' lacks 'arousal'"]),
    ('{"frames": {"00000": {"valence": 1, "arousal": 1}, "00000": {"valence": 2, "arousal": 1}}}',
     ["duplicated JSON key '00000'"]),
    ('{"frames": {"7": {"valence": 1, "arousal": 1}, "00007": {"valence": 2, "arousal": 1}}}',
     ["frame keys '7' and '00007' both name frame 7"]),
    ('{"frames": {"x1": {"valence": 1, "arousal": 1}}}', ["frame key 'x1' is not"]),
    ('{"frames": {"-1": {"valence": 1, "arousal": 1}}}', ["frame key '-1' is not"]),
    ('{"frames": {"00000": [1, 2]}}', ["frame '00000': expected an object"]),
    ('{"frames": {}}', ['"frames" is empty']),
    ('{"labels": {}}', ['"frames" object']),
    ('[1, 2]', ['"frames" object']),
    ('{"frames": {', ["invalid JSON"]),
    ("", ["is empty"]),
], ids=["nan", "infinity", "overflow", "string", "null", "bool", "out_of_scale", "missing_dim", "duplicate_key",
        "same_frame_two_keys", "non_numeric_key", "negative_key", "entry_not_object", "no_frames", "no_frames_key",
        "not_object", "truncated", "empty"])
def test_afew_errors(tmp_path, text, fragments):
    p = _w(tmp_path / "clip_017.json", text)
    _raises(p, lambda: read_labels("afew_va", p, fps=25), "afew_va", *fragments)


# ---------------------------------------------------------------------------
# sewa_csv
# ---------------------------------------------------------------------------

def test_sewa_times_from_file_and_case_insensitive_dims(tmp_path):
    p = _w(tmp_path / "Train_01.csv",
           "Instance_name;frameTime;Arousal;Valence\n'Train_01';0.1;0.5;-0.25\n'Train_01';0.2;;0.75\n"
           "'Train_01';0.3;-1;1\n")
    t = read_labels("sewa_csv", p, fps=50)
    np.testing.assert_array_equal(t.values, np.array([[-0.25, 0.5], [0.75, NAN], [1, -1]], np.float32))
    np.testing.assert_allclose(t.times, [0.1, 0.2, 0.3])
    assert (t.rate, t.scale) == (10.0, (-1.0, 1.0))
    q = _w(tmp_path / "b.csv", "time;valence\n0;0.1\n0.1;0.2\n")
    np.testing.assert_allclose(read_labels("sewa_csv", q, fps=25, dims=("valence",)).times, [0, 0.1])


@pytest.mark.parametrize("text, fragments", [
    ("time;valence\n0.0;0.1\n0.1;0.1\n0.1;0.2\n", ["line 4", "duplicated time 0.1 (also on line 3)"]),
    ("time;valence\n0.0;0.1\n0.1;0.1\n0.4;0.2\n", ["line 4", "2 row(s) missing between time 0.1 (line 3) and 0.4"]),
    ("time;valence\n0.0;0.1\n0.2;0.1\n0.1;0.2\n", ["line 3", "1 row(s) missing"]),
    ("time;valence\n0.1;0.1\n0.0;0.2\n", ["line 3", "goes back"]),
    ("time;valence\n0.0;0.1\n0.15;0.2\n", ["line 3", "expected a 0.1 s hop"]),
    ("time;valence\n-0.1;0.1\n0.0;0.2\n", ["line 2", "negative time"]),
    ("time;valence\nnan;0.1\n", ["line 2", "column 'time'", "NaN text"]),
    ("time;valence\n0;nan\n", ["line 2", "column 'valence'", "NaN text"]),
    ("time;valence\n0;0.1\n0.1;2\n", ["line 3", "value 2 is outside"]),
    ("time;valence\n0;inf\n", ["infinite"]),
    ("stamp;valence\n0;0.1\n", ["no time column"]),
    ("time;frameTime;valence\n0;0;0.1\n", ["more than one time column"]),
    ("time;arousal\n0;0.1\n", ["lacks column 'valence'"]),
    ("time,valence\n0,0.1\n", ["no time column"]),
    ("time;valence\n0;\n0.1;\n", ["no annotated value"]),
    ("time;valence\n", ["no data rows"]),
], ids=["duplicate", "missing_rows", "missing_then_back", "back", "irregular", "negative", "nan_time", "nan_value",
        "out_of_scale", "infinite", "no_time", "two_times", "missing_dim", "comma_separated", "no_annotation",
        "header_only"])
def test_sewa_errors(tmp_path, text, fragments):
    p = _w(tmp_path / "sewa_bad.csv", text)
    _raises(p, lambda: read_labels("sewa_csv", p, fps=25, dims=("valence",)), "sewa_csv", *fragments)


# ---------------------------------------------------------------------------
# recola_arff
# ---------------------------------------------------------------------------

def test_recola_per_dimension_files(tmp_path):
    _arff(tmp_path / "gs" / "valence" / "train_1.arff", [("0.00", "0.0123"), ("0.04", "-0.5"), ("0.08", "?")])
    _arff(tmp_path / "gs" / "arousal" / "train_1.arff", [("0.00", "0.25"), ("0.04", "1.0"), ("0.08", "-1")])
    t = read_labels("recola_arff", tmp_path / "gs" / "{dim}" / "train_1.arff", fps=25)
    np.testing.assert_array_equal(t.values, np.array([[0.0123, 0.25], [-0.5, 1], [NAN, -1]], np.float32))
    np.testing.assert_allclose(t.times, [0, 0.04, 0.08])
    assert (t.rate, t.scale, t.dims) == (25.0, (-1.0, 1.0), ("valence", "arousal"))
    # A single dimension may be read from a plain path.
    t1 = read_labels("recola_arff", tmp_path / "gs" / "arousal" / "train_1.arff", fps=25, dims=("arousal",))
    np.testing.assert_array_equal(t1.values[:, 0], t.values[:, 1])


def test_recola_comments_and_spacing(tmp_path):
    p = _w(tmp_path / "dev_2.arff",
           "% exported\n@RELATION gs\n@ATTRIBUTE Instance_name string\n@ATTRIBUTE frameTime real\n"
           "@ATTRIBUTE GoldStandard numeric\n@DATA\n% first rows\n'dev_2', 0.40, 0.1\n'dev_2', 0.44, 0.2\n\n")
    t = read_labels("recola_arff", p, fps=25, dims=("arousal",))
    np.testing.assert_allclose(t.times, [0.40, 0.44])
    np.testing.assert_array_equal(t.values[:, 0], np.array([0.1, 0.2], np.float32))


def test_recola_several_dims_need_placeholder(tmp_path):
    p = _arff(tmp_path / "a.arff", [("0.00", "0.1")])
    with pytest.raises(ValueError, match=r"\{dim\}"):
        read_labels("recola_arff", p, fps=25)


def test_recola_grids_must_match_naming_both_files(tmp_path):
    v = _arff(tmp_path / "valence" / "t.arff", [("0.00", "0.1"), ("0.04", "0.1")])
    a = _arff(tmp_path / "arousal" / "t.arff", [("0.00", "0.1"), ("0.04", "0.1"), ("0.08", "0.1")])
    msg = _raises(v, lambda: read_labels("recola_arff", tmp_path / "{dim}" / "t.arff", fps=25), "different frameTime")
    assert str(a) in msg
    _arff(a, [("0.04", "0.1"), ("0.08", "0.1")])
    _raises(a, lambda: read_labels("recola_arff", tmp_path / "{dim}" / "t.arff", fps=25), str(v), "different")


def test_recola_missing_dimension_file_named(tmp_path):
    _arff(tmp_path / "valence" / "t.arff", [("0.00", "0.1")])
    missing = tmp_path / "arousal" / "t.arff"
    _raises(missing, lambda: read_labels("recola_arff", tmp_path / "{dim}" / "t.arff", fps=25), "does not exist")


HEAD = "@relation gs\n@attribute Instance_name string\n@attribute frameTime numeric\n@attribute GoldStandard numeric\n"


@pytest.mark.parametrize("text, fragments", [
    (HEAD + "@data\n'a',0.00,0.1\n'a',0.00,0.2\n", ["line 7", "duplicated time 0"]),
    (HEAD + "@data\n'a',0.00,0.1\n'a',0.08,0.2\n", ["line 7", "1 row(s) missing"]),
    (HEAD + "@data\n'a',0.00,nan\n", ["line 6", "NaN text 'nan'", "use '?'"]),
    (HEAD + "@data\n'a',0.00,inf\n", ["line 6", "infinite"]),
    (HEAD + "@data\n'a',0.00,0.1\n'a',0.04,-1.5\n", ["line 7", "value -1.5 is outside"]),
    (HEAD + "@data\n'a',0.00,?\n", ["no annotated value"]),
    (HEAD + "@data\n'a',0.00\n", ["line 6", "2 field(s) but 3 attributes"]),
    (HEAD + "@data\n", ["no data rows"]),
    (HEAD + "'a',0.00,0.1\n", ["unexpected line", "before @data"]),
    ("@attribute frameTime numeric\n@attribute GoldStandard numeric\n@data\n0,0.1\n", ["lacks @relation"]),
    ("@relation gs\n@attribute frameTime numeric\n@attribute GoldStandard numeric\n", ["lacks @data"]),
    ("@relation gs\n@attribute frameTime numeric\n@attribute Gold numeric\n@data\n0,0.1\n",
     ["needs exactly one 'goldstandard'"]),
    ("@relation gs\n@attribute frameTime string\n@attribute GoldStandard numeric\n@data\n0,0.1\n",
     ["'frameTime' has type 'string'"]),
    ("", ["is empty"]),
], ids=["duplicate", "missing_row", "nan_text", "infinite", "out_of_scale", "no_annotation", "missing_field",
        "no_rows", "no_data_marker_row", "no_relation", "no_data", "no_gold", "string_time", "empty"])
def test_recola_errors(tmp_path, text, fragments):
    p = _w(tmp_path / "train_9.arff", text)
    _raises(p, lambda: read_labels("recola_arff", p, fps=25, dims=("valence",)), "recola_arff", *fragments)
