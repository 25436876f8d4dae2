"""Errors of the prepare path are user errors (``trainables.errors.DataError``): the CLI prints them as one line and
a sweep does not retry them. Each class keeps its name; a few bad inputs are checked to raise the right one."""
from __future__ import annotations

import shutil

import pytest

from trainables.data.cache import load_split
from trainables.errors import DataError, UserError
from trainables.prepare.adapters import read_labels
from trainables.prepare.decode import VideoDecodeError, VideoTooSmallError
from trainables.prepare.faces import DetectorUnavailableError, MissingWeightsError, read_crops_folder
from trainables.prepare.manifest import ManifestError
from trainables.prepare.registration import Registration
from trainables.prepare.sidecar import LabelFileError, read_face_sidecar
from trainables.prepare.splits import check_disjoint


@pytest.mark.parametrize("cls", [ManifestError, LabelFileError, VideoDecodeError, VideoTooSmallError,
                                 MissingWeightsError, DetectorUnavailableError])
def test_every_prepare_error_is_a_data_error(cls):
    assert issubclass(cls, DataError) and issubclass(cls, UserError) and issubclass(cls, ValueError)


def test_missing_weights_is_also_a_missing_file():
    err = MissingWeightsError("no weights", ["s3fd.pth"], [])
    assert isinstance(err, FileNotFoundError) and isinstance(err, DataError)
    assert err.missing == ["s3fd.pth"] and str(err) == "no weights"


def test_bad_inputs_raise_the_named_errors(tmp_path, synth_manifest):
    with pytest.raises(LabelFileError, match="face crops folder .* does not exist"):
        read_crops_folder(tmp_path / "absent")
    sidecar = tmp_path / "faces.csv"
    rows = (synth_manifest.parent / "faces" / "s00_v0.csv").read_text().splitlines()
    rows[3] = rows[3].replace(rows[3].split(",")[1], "left", 1)  # x1 of frame 2
    sidecar.write_text("\n".join(rows) + "\n")
    with pytest.raises(LabelFileError, match=r"non-numeric value 'left' in column 'x1' at frame 2"):
        read_face_sidecar(sidecar)
    with pytest.raises(LabelFileError, match=r"put \{dim\} in the path"):
        read_labels("recola_arff", tmp_path / "gs.arff", fps=25, dims=("valence", "arousal"))
    with pytest.raises(ManifestError, match="subject-disjoint"):
        check_disjoint([("a", "s1", "train"), ("b", "s1", "val")])
    with pytest.raises(UserError, match="align 'fine' needs landmarks"):
        Registration(detector="opencv", align="fine")


def test_dataset_index_errors_are_data_errors(tmp_path, prepared_index):
    with pytest.raises(DataError, match="cannot be read"):
        load_split(tmp_path / "absent.json", "train")
    with pytest.raises(DataError, match="no prepared video in split 'dev'"):
        load_split(prepared_index, "dev")


def test_every_reader_of_a_dataset_index_refuses_a_malformed_one_the_same_way(tmp_path):
    """Training, fold planning, prediction's settings and test scoring read an index through one reader: a file that
    is not JSON is a DataError naming it and what went wrong, never a JSONDecodeError from deep inside."""
    from analysis.scoring import test_split
    from trainables.predict import data_settings
    from trainables.prepare.folds import plan_folds

    bad = tmp_path / "index.json"
    bad.write_text('{"videos": [')
    readers = {"load_split": lambda: load_split(bad, "train"), "plan_folds": lambda: plan_folds(bad, 3),
               "data_settings": lambda: data_settings(bad), "test_split": lambda: test_split(str(bad))}
    for name, read in readers.items():
        with pytest.raises(DataError) as exc:
            read()
        assert str(exc.value).startswith(f"dataset index {bad} cannot be read (Expecting value"), name


def test_corrupt_video_is_skipped_as_a_decode_error(tmp_path, synth_manifest):
    root = tmp_path / "ds"
    shutil.copytree(synth_manifest.parent, root)
    (root / "videos" / "s01_v0.mp4").write_bytes(b"not a video" * 100)
    from trainables.prepare.run import prepare

    _, summary = prepare(root / "manifest.csv", tmp_path / "cache", Registration(size=32), progress=False)
    assert summary.ok == ["s00_v0", "s02_v0"]
    assert summary.skipped["s01_v0"].startswith("VideoDecodeError: video ")
