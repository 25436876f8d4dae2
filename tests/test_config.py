"""The typed trial config: every key declared once, checked with one-line errors, routed to the backbone that takes it."""
from __future__ import annotations

import inspect
import math
import typing

import numpy as np
import pytest

from trainables.config import KEYS, SPECS, USER_KEYS, TrialConfig, check_user_key, check_value
from trainables.data.augment_settings import CONFIG_KEYS as AUG_KEYS
from trainables.errors import ConfigError, UserError
from trainables.loop import worst_value
from trainables.reports import metric_names, reported_metrics
from trainables.models import backbone_arguments, create_backbone, list_backbones


def test_defaults_build_and_every_key_has_a_rule():
    config = TrialConfig.from_dict({})
    assert config.backbone == "cnn_rnn_tiny" and config.metric == "val_ccc_mean"
    for key, spec in SPECS.items():
        assert spec.metadata["help"], key
    assert set(config.to_dict()) == set(KEYS)


def test_augmentation_keys_are_the_augment_modules_keys():
    # One declaration each: the config's aug_* keys are exactly those the augmentation pipeline understands.
    assert {k for k in KEYS if k.startswith("aug_")} == set(AUG_KEYS)


@pytest.mark.parametrize("given, expected", [
    ({"lrr": 0.1}, "unknown trial setting 'lrr'; did you mean 'lr'?"),
    ({"window_lenght": 16}, "did you mean 'window_length'?"),
    ({"lr": -1}, "lr=-1 is not allowed; allowed: a number > 0"),
    ({"lr": "fast"}, "lr='fast' is not allowed; allowed: a number > 0"),
    ({"batch_size": 2.5}, "batch_size=2.5 is not allowed; allowed: an integer >= 1"),
    ({"batch_size": True}, "batch_size=True is not allowed"),
    ({"window_overlap": 1.0}, "window_overlap=1.0 is not allowed; allowed: a number >= 0 and < 1"),
    ({"label_fusion": "max"}, "label_fusion='max' is not allowed; allowed: one of mean, extremum, median, center, last"),
    ({"inflation_dilation": "1-2", "backbone": "i3d_tiny"}, "four integers joined by '-'"),
    ({"backbone": "cnn_rn"}, "backbone='cnn_rn' is not registered; did you mean 'cnn_rnn'?"),
    ({"window_length": 20, "clip_len": 21}, "window_length=20 is shorter than clip_len=21"),
    ({"aug_random_crop": -3}, "aug_random_crop=-3"),
    ({"pretrained": "/nonexistent/weights.pt"}, "pretrained='/nonexistent/weights.pt': no such checkpoint file"),
])
def test_bad_settings_are_refused_in_one_line(given, expected):
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_dict(given)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, UserError)


def test_numbers_written_as_strings_are_read_as_numbers():
    # YAML reads `--set lr=1e-3` as the string "1e-3"
    config = TrialConfig.from_dict({"lr": "1e-3", "batch_size": "4", "fps": "none"})
    assert config.lr == 1e-3 and config.batch_size == 4 and config.fps is None
    assert TrialConfig.from_dict({"freeze": "none", "backbone": "conv3d_resnet_gru_tiny"}).freeze == "none"


def test_a_key_that_does_not_apply_is_refused_or_dropped_when_lenient():
    with pytest.raises(ConfigError, match="freeze='none' does not apply: backbone cnn_rnn_tiny takes no 'freeze'"):
        TrialConfig.from_dict({"backbone": "cnn_rnn_tiny", "freeze": "none"})
    dropped: list[str] = []
    config = TrialConfig.from_dict({"backbone": "cnn_rnn_tiny", "freeze": "none", "rnn_hidden": 16},
                                   lenient={"freeze"}, dropped=dropped)
    assert config.freeze is None and config.model_kwargs() == {"hidden": 16}
    assert dropped == ["freeze does not apply (backbone cnn_rnn_tiny takes no 'freeze' argument); dropped"]
    with pytest.raises(ConfigError, match="ssts_stride=3 does not apply: only with sampler in \\(ssts\\)"):
        TrialConfig.from_dict({"sampler": "uniform", "ssts_stride": 3, "num_frames": 8, "window_length": 16})


def test_runtime_keys_are_the_sweeps_own():
    with pytest.raises(ConfigError, match="'epochs' is set by the sweep itself"):
        check_user_key("epochs")
    assert "epochs" not in USER_KEYS and "lr" in USER_KEYS
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        check_user_key("lrr")


def _valid_value(key: str):
    """A valid non-default value of a model key, for the routing test."""
    spec = SPECS[key].metadata
    if spec["choices"]:
        return spec["choices"][-1]
    examples = {"cnn": "test_resnet", "inflation_dilation": "1-2-4-8", "pretrained": False, "time_kernel": 3,
                "pretext_checkpoint": None, "checkpoint": None}
    if key in examples:
        return examples[key]
    hint = typing.get_type_hints(TrialConfig)[key]
    if bool in typing.get_args(hint):
        return True
    return 0.1 if float in typing.get_args(hint) else 2


@pytest.mark.parametrize("backbone", list_backbones())
def test_each_backbone_gets_only_the_arguments_its_constructor_takes(backbone):
    model_keys = [k for k, f in SPECS.items() if f.metadata["arg"]]
    values = {k: _valid_value(k) for k in model_keys}
    dropped: list[str] = []
    config = TrialConfig.from_dict({"backbone": backbone, **values}, lenient=model_keys, dropped=dropped)
    kwargs = config.model_kwargs()
    assert set(kwargs) <= backbone_arguments(backbone)
    # every dropped key is one the constructor lacks; every kept one it has
    for key in model_keys:
        arg = SPECS[key].metadata["arg"]
        assert (arg in kwargs) == (arg in backbone_arguments(backbone) and values[key] is not None), key
    if not backbone.endswith("_tiny"):
        return
    model = create_backbone(backbone, out_dims=2, in_chans=3, **{k: v for k, v in kwargs.items()
                                                                 if k not in ("rnn", "layers", "bidirectional")})
    assert sum(p.numel() for p in model.parameters()) > 0


def test_backbone_arguments_follow_the_constructor_and_the_variants_pins():
    from trainables.models.cnn_rnn import CnnRnn

    own = set(inspect.signature(CnnRnn).parameters) - {"out_dims", "in_chans", "n_bins"}
    assert backbone_arguments("cnn_rnn") == own
    assert backbone_arguments("cnn_rnn_tiny") == own - {"cnn"}  # the tiny variant pins its CNN
    assert "freeze" in backbone_arguments("conv3d_resnet_gru_tiny") and "freeze" not in own


def test_check_value_names_the_allowed_choices():
    with pytest.raises(ConfigError, match="rnn='rnn' is not allowed; allowed: one of gru, lstm"):
        check_value("rnn", "rnn")
    assert check_value("dropout", "0.2") == 0.2


def test_the_objective_reaches_the_loop():
    assert "val_ccc_mean" in reported_metrics() and "val_rmse_arousal" in reported_metrics()
    assert "val_ccc_valence_native" in reported_metrics(native_scale=(-10.0, 10.0))
    config = TrialConfig.from_dict({"metric": "val_rmse_valence", "mode": "min"})
    assert worst_value(config.metric, config.mode) == math.inf
    assert worst_value("val_ccc_mean", "max") == -1.0


@pytest.mark.parametrize("dims", [("valence", "arousal"), ("valence",), ("a", "b", "c")])
@pytest.mark.parametrize("scale", [None, (-10.0, 10.0)])
def test_metric_names_are_the_keys_of_the_regression_report(dims, scale):
    """The driver names the metrics without computing them (no torch); they must be what trials report."""
    from trainables.objectives.metrics import regression_report

    probe = np.linspace(-1, 1, 8)[:, None].repeat(len(dims), 1)
    report = regression_report(probe, probe[::-1], dims=dims, scale=scale, include_mape=True)
    assert list(report) == metric_names(dims, native=scale is not None)


def test_settings_command_lists_every_user_key(capsys):
    from cluster.cli import main

    assert main(["settings"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["setting", "group", "default", "allowed"]
    listed = [line.split()[0] for line in out[1:]]
    assert listed == list(USER_KEYS)
    assert any(line.split()[:3] == ["lr", "optim", "0.001"] and line.endswith("a number > 0") for line in out)
