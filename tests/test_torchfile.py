"""The one torch-file reader (trainables.torchfile): the papers' files with their ``args`` namespace load as data; a
file pickling anything else is refused in one line that names the file and the class; no other module calls
``torch.load``."""
from __future__ import annotations

import argparse
import fractions
import subprocess
from pathlib import Path

import pytest
import torch

from trainables.errors import DataError
from trainables.torchfile import load_torch_file

REPO = Path(__file__).resolve().parents[1]


def test_an_svfap_style_file_loads_with_its_args(tmp_path):
    path = tmp_path / "checkpoint-799.pth"
    args = argparse.Namespace(model="pretrain_svfap_base_patch16_160", mask_ratio=0.9, lr=1.5e-4, depth=[4, 4, 4])
    torch.save({"model": {"w": torch.ones(3)}, "optimizer": {"state": {}}, "epoch": 799, "scaler": {}, "args": args},
               path)
    obj = load_torch_file(path)
    assert torch.equal(obj["model"]["w"], torch.ones(3)) and obj["epoch"] == 799
    assert obj["args"] == args  # rebuilt from its attributes: plain data


def test_any_other_class_is_refused_naming_it(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"model": {"w": torch.ones(1)}, "share": fractions.Fraction(1, 3)}, path)
    with pytest.raises(DataError) as err:
        load_torch_file(path, shown="s3://bucket/odd.pth")
    message = str(err.value)
    assert "\n" not in message and "s3://bucket/odd.pth" in message and "fractions.Fraction" in message
    assert "argparse" not in message and "refused" in message


def test_a_file_that_is_not_there_or_not_torch_is_a_one_line_data_error(tmp_path):
    with pytest.raises(DataError, match="not found: .*missing.pt"):
        load_torch_file(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match="junk.pt is not a torch checkpoint"):
        load_torch_file(tmp_path / "junk.pt")


def test_only_the_reader_calls_torch_load():
    found = subprocess.run(["git", "grep", "-n", "--untracked", "torch.load(", "--", "*.py", ":!tests"], cwd=REPO,
                           capture_output=True, text=True).stdout.splitlines()
    code = [line for line in found if not line.split(":", 2)[2].lstrip().startswith(("#", '"', "'", "``"))
            and "``torch.load(" not in line]
    assert [line.split(":")[0] for line in code] == ["trainables/torchfile.py"]
