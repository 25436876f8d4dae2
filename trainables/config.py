"""The trial config: every key a trial reads, declared once with its type, its allowed values, its default and where
it applies.

A trial's settings come from a study file (``fixed`` and sampled ``params``), the user's ``--set`` and the sweep itself
(dataset index, epochs, threads). :meth:`TrialConfig.from_dict` turns that flat dict into one frozen, typed object; the
training loop reads attributes, never the dict. Plain dataclasses rather than pydantic: the checks are a few lines each,
and the errors are ours to word (one line: the key, the value, what is allowed, the closest valid name for a typo).

Where a key applies:

* model keys (``Setting.arg``) go to the backbone's constructor argument of that name, so a key applies to the backbones
  whose constructor takes it (``trainables.models.backbone_arguments``), and each backbone gets only those;
* sampler keys apply to the samplers named in ``Setting.when`` (``ssts_stride`` only to ``ssts``).

A key that does not apply is refused (:class:`ConfigError`) unless it is listed in ``lenient``: the sweep passes the keys
that come from the study file, so a study shrunk to a tiny backbone with ``--set backbone=...`` drops the knobs that
backbone does not have (with one warning each) instead of failing.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from trainables.backbone_catalog import DEFAULT_BACKBONE, LAYER_DECAY_BACKBONES, PRETRAINED_BY
from trainables.errors import ConfigError
from trainables.names import FUSIONS, PRETRAIN_METHODS, SAMPLERS

#: Groups of keys: ``runtime`` keys are written by the sweep, never by a study or ``--set``.
GROUPS = ("model", "data", "optim", "loss", "augment", "pretrain", "runtime")
FUSION_CHOICES = FUSIONS
SAMPLER_CHOICES = SAMPLERS
FACELESS_RULES = ("model", "affwild2")


def setting(default: Any, group: str, help: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, choices: tuple | None = None, arg: str | None = None,
            when: Mapping[str, tuple] | None = None, pattern: str | None = None) -> Any:
    """A declared trial key (a dataclass field with its rules in ``metadata``).

    Args:
        default: the value when the key is absent (``None``: not set; a model key left ``None`` is not passed).
        group: one of :data:`GROUPS`.
        low, high, low_open, high_open: numeric range (closed unless ``*_open``).
        choices: the allowed values.
        arg: the backbone constructor argument this key feeds (model keys).
        when: ``{other_key: values}``: the key applies only when ``other_key`` takes one of ``values``.
        pattern: a human description of a string format (checked by the field's own parser).
    """
    assert group in GROUPS, group
    return field(default=default, metadata=dict(group=group, help=help, low=low, high=high, low_open=low_open,
                                                high_open=high_open, choices=choices, arg=arg, when=when or {},
                                                pattern=pattern))


@dataclass(frozen=True)
class TrialConfig:
    """One trial's settings. Build it with :meth:`from_dict`; see the module docstring for the rules."""

    # ---- model: which backbone, and its constructor arguments
    backbone: str = setting(DEFAULT_BACKBONE, "model", "registered backbone name (trainables.models.list_backbones)")
    cnn: str | None = setting(None, "model", "timm model name of the per-frame / inflated 2D CNN", arg="cnn")
    rnn: str | None = setting(None, "model", "recurrent layer of a CNN-RNN", choices=("gru", "lstm"), arg="rnn")
    rnn_hidden: int | None = setting(None, "model", "RNN hidden size", low=1, arg="hidden")
    rnn_layers: int | None = setting(None, "model", "RNN layers", low=1, arg="layers")
    bidirectional: bool | None = setting(None, "model", "bidirectional GRU", arg="bidirectional")
    dropout: float | None = setting(None, "model", "dropout before the head / between RNN layers", low=0.0, high=1.0,
                                    high_open=True, arg="dropout")
    time_kernel: int | None = setting(None, "model", "temporal kernel of inflated convolutions (a centre tap)",
                                      low=1, arg="time_kernel", pattern="an odd integer >= 1")
    inflation_mode: str | None = setting(None, "model", "paper 003 inflation", choices=("centered", "copied"),
                                         arg="mode")
    inflation_surround: str | None = setting(None, "model", "initialisation of the temporal surround (centered)",
                                             choices=("zero", "random"), arg="surround")
    inflation_dilation: str | None = setting(None, "model", "temporal dilation per stage", arg="dilation",
                                             pattern="four integers joined by '-', e.g. 1-2-4-8")
    inflation_masking: bool | None = setting(None, "model", "freeze the centre slice (only the surround learns)",
                                             arg="masking")
    freeze: str | None = setting(None, "model", "paper 001 freeze policy",
                                 choices=("none", "first_layer", "stem_trunk"), arg="freeze")
    pretrained: bool | str | None = setting(None, "model", "true for the library's own weights, or a checkpoint path",
                                            arg="pretrained", pattern="true, false or the path of a checkpoint file")
    pretext_checkpoint: str | None = setting(None, "model", "paper 001 pretext checkpoint file",
                                             arg="pretext_checkpoint")
    target_multiplier: float = setting(1.0, "model", "labels scaled up for training, predictions scaled back (003)",
                                       low=0.0, low_open=True)
    checkpoint: str | None = setting(None, "model", "self-supervised checkpoint of a video transformer (000, 002)",
                                     arg="checkpoint", pattern="a .pth/.pt/.safetensors file or a transformers "
                                                               "save_pretrained folder")
    embed_dim: int | None = setting(None, "model", "transformer width (ViT-S 384, ViT-B 768)", low=1, arg="embed_dim")
    depth: int | None = setting(None, "model", "transformer blocks", low=1, arg="depth")
    num_heads: int | None = setting(None, "model", "attention heads (embed_dim must be divisible by it)", low=1,
                                    arg="num_heads")
    drop_path: float | None = setting(None, "model", "stochastic depth rate of the last block", low=0.0, high=1.0,
                                      high_open=True, arg="drop_path")
    bottleneck_tokens: int | None = setting(None, "model", "TPSBT bottleneck tokens per temporal slice (002)", low=1,
                                            arg="bottleneck_tokens")
    pyramid_levels: int | None = setting(None, "model", "MIMAMO steerable pyramid levels (004)", low=1,
                                         arg="pyramid_levels")
    pyramid_orientations: int | None = setting(None, "model", "MIMAMO pyramid orientations per level (004)", low=1,
                                               arg="pyramid_orientations")
    pyramid_extension: bool | None = setting(None, "model", "MIMAMO: mirror phase frames to 2H x 2W before the "
                                             "pyramid, as the authors (default true; false is a deviation: borders "
                                             "wrap around)", arg="pyramid_extension")

    # ---- data: which cache, how it is cut into windows and clips
    registration: str | None = setting(None, "data", "face registration: selects one of the sweep's dataset indexes")
    window_length: int = setting(32, "data", "window length in frames at the trial's fps", low=1)
    window_overlap: float = setting(0.5, "data", "fraction of a window shared with the previous one", low=0.0,
                                    high=1.0, high_open=True)
    label_fusion: str = setting("mean", "data", "how a window's labels become one target", choices=FUSION_CHOICES)
    label_target: str = setting("window", "data", "one fused label per window, or per-frame labels",
                                choices=("window", "sequence"))
    sampler: str = setting("ssts", "data", "frames taken from a window's valid frames", choices=SAMPLER_CHOICES)
    clip_len: int = setting(24, "data", "valid frames drawn per window (SSTS: before the stride)", low=1)
    ssts_stride: int = setting(2, "data", "SSTS stride s (paper 000)", low=1, when={"sampler": ("ssts",)})
    ssts_stochastic: bool = setting(True, "data", "random draw and offset (false: the paper 000 ablation)",
                                    when={"sampler": ("ssts", "consecutive")})
    num_frames: int | None = setting(None, "data", "frames taken by the uniform / consecutive samplers "
                                     "(default clip_len)", low=1, when={"sampler": ("uniform", "consecutive")})
    fps: float | None = setting(None, "data", "view the cache at this frame rate (default: its own)", low=0.0,
                                low_open=True)
    gap_tolerance: int | None = setting(None, "data", "drop training windows with valid frames further apart",
                                        low=0)
    frame_step: int = setting(1, "data", "temporal stride inside a consecutive clip (paper 002: 4)", low=1,
                              when={"sampler": ("consecutive",)})
    eval_clips: int = setting(1, "data", "consecutive clips spread over a window and averaged at evaluation "
                              "(paper 002: 2)", low=1, when={"sampler": ("consecutive",)})
    faceless: str = setting("model", "data", "label steps without a face: the model's prediction, or Aff-Wild2's rule "
                            "(before the first face not scored, later the previous prediction; 004)",
                            choices=FACELESS_RULES)

    # ---- optimisation
    lr: float = setting(1e-3, "optim", "AdamW learning rate", low=0.0, low_open=True)
    layer_decay: float = setting(1.0, "optim", "layer-wise learning-rate decay of a video transformer (1 = off)",
                                 low=0.0, low_open=True, high=1.0, when={"backbone": LAYER_DECAY_BACKBONES})
    weight_decay: float = setting(1e-4, "optim", "AdamW weight decay", low=0.0)
    batch_size: int = setting(8, "optim", "clips per batch (per worker)", low=1)
    warmup_epochs: float = setting(0.0, "optim", "linear warmup, then cosine decay", low=0.0)
    min_lr_ratio: float = setting(0.01, "optim", "final learning rate / lr", low=0.0, high=1.0)
    grad_clip: float = setting(0.0, "optim", "max gradient norm (0 = off)", low=0.0)
    ema_decay: float = setting(0.0, "optim", "weight EMA decay (0 = off; evaluated and checkpointed)", low=0.0,
                               high=1.0, high_open=True)
    amp: bool = setting(True, "optim", "mixed precision on GPU workers")
    postprocess: bool = setting(True, "optim", "search post-processing on validation predictions each epoch")
    seed: int = setting(0, "optim", "seed of weights, sampling and augmentation", low=0)

    # ---- loss weights (paper 001): w_<term> for every dimension, w_<term>_<dim> for one
    w_ccc: float = setting(1.0, "loss", "weight of 1 - CCC", low=0.0)
    w_mse: float = setting(0.0, "loss", "weight of MSE", low=0.0)
    w_ce: float = setting(0.0, "loss", "weight of CE over 20 label bins", low=0.0)
    w_ncce: float = setting(0.0, "loss", "weight of nCCE", low=0.0)
    w_ccc_valence: float | None = setting(None, "loss", "w_ccc for valence", low=0.0)
    w_ccc_arousal: float | None = setting(None, "loss", "w_ccc for arousal", low=0.0)
    w_mse_valence: float | None = setting(None, "loss", "w_mse for valence", low=0.0)
    w_mse_arousal: float | None = setting(None, "loss", "w_mse for arousal", low=0.0)
    w_ce_valence: float | None = setting(None, "loss", "w_ce for valence", low=0.0)
    w_ce_arousal: float | None = setting(None, "loss", "w_ce for arousal", low=0.0)
    w_ncce_valence: float | None = setting(None, "loss", "w_ncce for valence", low=0.0)
    w_ncce_arousal: float | None = setting(None, "loss", "w_ncce for arousal", low=0.0)

    # ---- augmentations (trainables.data.augment_settings validates each value against its augmentation)
    aug_random_crop: Any = setting(0, "augment", "random crop size in pixels or fraction (0 = off)")
    aug_hflip: Any = setting(0.0, "augment", "horizontal flip probability")
    aug_randaugment: Any = setting(False, "augment", "RandAugment per clip")
    aug_randaugment_ops: Any = setting(None, "augment", "RandAugment operations per clip")
    aug_randaugment_magnitude: Any = setting(None, "augment", "RandAugment magnitude")
    aug_solarize: Any = setting(0.0, "augment", "solarization probability")
    aug_grayscale: Any = setting(0.0, "augment", "grayscale probability")
    aug_cropout: Any = setting(False, "augment", "crop-out squares")
    aug_cropout_n: Any = setting(None, "augment", "crop-out squares per frame")
    aug_cropout_area: Any = setting(None, "augment", "crop-out total area fraction")
    aug_missing_frames: Any = setting(0.0, "augment", "fraction of frames set black")
    aug_salt_pepper: Any = setting(0.0, "augment", "salt and pepper amount")

    # ---- self-supervised pretraining (``emotune pretrain``; trainables.pretrain): the papers' values as defaults
    pretrain_method: str | None = setting(None, "pretrain", "pretraining method (a pretraining study; fine-tuning "
                                          "leaves it unset)", choices=PRETRAIN_METHODS)
    mask_ratio: float = setting(0.9, "pretrain", "share of a clip's spatial patches masked, the same at every time "
                                "step (tube masking; 002, VideoMAE: 0.9)", low=0.0, high=1.0, low_open=True,
                                high_open=True, when={"pretrain_method": ("mae",)})
    decoder_depth: int = setting(4, "pretrain", "decoder blocks (002, VideoMAE: 4)", low=1,
                                 when={"pretrain_method": ("mae",)})
    decoder_width: int | None = setting(None, "pretrain", "decoder width (default: half the encoder's; VideoMAE "
                                        "ViT-S 192, ViT-B 384)", low=1, when={"pretrain_method": ("mae",)})
    decoder_heads: int | None = setting(None, "pretrain", "decoder attention heads (default: width / 64, at least "
                                        "1)", low=1, when={"pretrain_method": ("mae",)})
    norm_pix_loss: bool = setting(True, "pretrain", "reconstruct per-patch, per-channel normalised pixels "
                                  "(VideoMAE), else raw pixels", when={"pretrain_method": ("mae",)})
    ema_momentum: float = setting(0.996, "pretrain", "EMA target momentum at the start, rising to 1 on a cosine "
                                  "(BYOL, DINO: 0.996)", low=0.0, high=1.0, when={"pretrain_method": ("byol", "dino")})
    byol_hidden: int = setting(4096, "pretrain", "BYOL projector / predictor hidden width (BYOL: 4096)", low=1,
                               when={"pretrain_method": ("byol",)})
    byol_proj_dim: int = setting(256, "pretrain", "BYOL projection width (BYOL: 256)", low=1,
                                 when={"pretrain_method": ("byol",)})
    dino_out_dim: int = setting(65536, "pretrain", "DINO head output width (DINO: 65536)", low=1,
                                when={"pretrain_method": ("dino",)})
    dino_hidden: int = setting(2048, "pretrain", "DINO head hidden width (DINO: 2048)", low=1,
                               when={"pretrain_method": ("dino",)})
    dino_bottleneck: int = setting(256, "pretrain", "DINO head bottleneck width (DINO: 256)", low=1,
                                   when={"pretrain_method": ("dino",)})
    dino_student_temp: float = setting(0.1, "pretrain", "DINO student temperature (DINO: 0.1)", low=0.0,
                                       low_open=True, when={"pretrain_method": ("dino",)})
    dino_teacher_temp: float = setting(0.04, "pretrain", "DINO teacher sharpening temperature (DINO: 0.04)",
                                       low=0.0, low_open=True, when={"pretrain_method": ("dino",)})
    dino_center_momentum: float = setting(0.9, "pretrain", "DINO centre EMA momentum (DINO: 0.9)", low=0.0,
                                          high=1.0, high_open=True, when={"pretrain_method": ("dino",)})
    dino_local_crops: int = setting(8, "pretrain", "DINO local crops per clip besides the 2 global ones (DINO: 8)",
                                    low=0, when={"pretrain_method": ("dino",)})
    global_crop_scale: float = setting(0.4, "pretrain", "smallest area share of a global view's crop (BYOL 0.08, "
                                       "DINO 0.4)", low=0.0, high=1.0, low_open=True,
                                       when={"pretrain_method": ("byol", "dino")})
    local_crop_scale: float = setting(0.4, "pretrain", "largest area share of a DINO local crop (DINO: 0.05-0.4)",
                                      low=0.0, high=1.0, low_open=True, when={"pretrain_method": ("dino",)})
    pretrain_videos: str = setting("train", "pretrain", "videos pretrained on: every train-split video (labelled "
                                   "or not), or only the unlabelled ones (their subjects are in no fold, so a "
                                   "cross-validated fine-tuning may use the encoder)", choices=("train", "unlabelled"),
                                   when={"pretrain_method": PRETRAIN_METHODS})
    probe_epochs: int = setting(5, "pretrain", "epochs of the frozen probe's temporal head on the train subjects' "
                                "labels", low=1, when={"pretrain_method": PRETRAIN_METHODS})
    probe_lr: float = setting(1e-3, "pretrain", "learning rate of the frozen probe's head", low=0.0, low_open=True,
                              when={"pretrain_method": PRETRAIN_METHODS})

    # ---- runtime: written by the sweep
    data_index: str | None = setting(None, "runtime", "dataset index (one registration)")
    data_indexes: dict | None = setting(None, "runtime", "dataset index per registration setting")
    epochs: int = setting(1, "runtime", "epochs at most (the fidelity's max)", low=1)
    reports_per_epoch: int = setting(1, "runtime", "reports per epoch (data-fraction fidelity)", low=1)
    max_units: int | None = setting(None, "runtime", "reports at most", low=1)
    threads: int = setting(1, "runtime", "torch threads (the worker's CPUs)", low=1)
    gpus: float = setting(0.0, "runtime", "GPUs per worker", low=0.0)
    cv: dict | None = setting(None, "runtime", "subject folds of a cross-validated sweep "
                              "(trainables.prepare.folds.FoldPlan.to_config)")
    refit: dict | None = setting(None, "runtime", "refit on every non-test subject: epochs and the post-processing "
                                 "fitted on the out-of-fold predictions (promotion of a CV sweep)")
    metric: str = setting("val_ccc_mean", "runtime", "the study's objective metric")
    mode: str = setting("max", "runtime", "the objective's direction", choices=("min", "max"))

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], lenient: Iterable[str] = (),
                  dropped: list[str] | None = None) -> "TrialConfig":
        """Check ``values`` and build the config.

        Args:
            values: flat trial settings (a Tune trial config without its ``runtime`` entry).
            lenient: keys that may be dropped when they do not apply (they come from a study file).
            dropped: if given, receives a message for every dropped key.

        Raises:
            ConfigError: an unknown key (with the closest valid name), a value of the wrong type or outside its range,
                a key that does not apply (and is not lenient), an unknown backbone.
        """
        unknown = [k for k in values if k not in SPECS]
        if unknown:
            raise ConfigError(_unknown_key(unknown[0]))
        kwargs = {k: check_value(k, v) for k, v in values.items()}
        backbone = kwargs.get("backbone", SPECS["backbone"].default)
        _check_backbone(backbone)
        sampler = kwargs.get("sampler", SPECS["sampler"].default)
        lenient = set(lenient)
        for key in list(kwargs):
            reason = inapplicable(key, {"backbone": backbone, "sampler": sampler, **kwargs})
            if reason is None or kwargs[key] is None:
                continue
            if key not in lenient:
                raise ConfigError(f"{key}={values[key]!r} does not apply: {reason}")
            del kwargs[key]
            if dropped is not None:
                dropped.append(f"{key} does not apply ({reason}); dropped")
        config = cls(**kwargs)
        config._check_combinations()
        config.clip_spec()
        return config

    def _check_combinations(self) -> None:
        if self.pretrain_method is not None and self.backbone not in PRETRAINED_BY[self.pretrain_method]:
            raise ConfigError(f"pretrain_method={self.pretrain_method!r} does not fit backbone {self.backbone!r}; "
                              f"{self.pretrain_method} pretrains: {', '.join(PRETRAINED_BY[self.pretrain_method])}")
        if self.data_indexes is not None and self.registration not in self.data_indexes:
            raise ConfigError(f"registration={self.registration!r} has no dataset index; the sweep has: "
                              f"{', '.join(sorted(self.data_indexes))}")
        for key in ("pretrained", "pretext_checkpoint"):
            path = getattr(self, key)
            if isinstance(path, str) and not Path(path).expanduser().is_file():
                raise ConfigError(f"{key}={path!r}: no such checkpoint file (a path on every node that runs trials)")
        if self.checkpoint is not None and not Path(self.checkpoint).expanduser().exists():
            raise ConfigError(f"checkpoint={self.checkpoint!r}: no such file or folder (a .pth/.pt/.safetensors file or "
                              f"a transformers save_pretrained folder, at a path on every node that runs trials)")
        from trainables.data.augment_settings import parse_augment_config  # validates every aug_* value

        try:
            parse_augment_config(self.augmentations())
        except ValueError as err:
            raise ConfigError(str(err)) from None

    # ---- views for the modules that consume the settings
    def to_dict(self) -> dict[str, Any]:
        """Every key with its value (defaults included): what MLflow records as the resolved config."""
        return dataclasses.asdict(self)

    def augmentations(self) -> dict[str, Any]:
        """The ``aug_*`` settings (checked by ``trainables.data.augment_settings``, applied by
        ``trainables.data.augment``)."""
        return {k: v for k, v in self.to_dict().items() if SPECS[k].metadata["group"] == "augment" and v is not None}

    def loss_weights(self) -> dict[str, float]:
        """The ``w_*`` settings that are set (for ``CompositeLoss.from_config``)."""
        return {k: v for k, v in self.to_dict().items() if SPECS[k].metadata["group"] == "loss" and v is not None}

    def weighted(self, term: str) -> bool:
        """Whether loss term ``term`` has a positive weight for any dimension."""
        return any(v > 0 for k, v in self.loss_weights().items() if k == f"w_{term}" or k.startswith(f"w_{term}_"))

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments for the backbone: the model keys that are set and apply to it."""
        kwargs = {}
        for key, spec in SPECS.items():
            arg, value = spec.metadata["arg"], getattr(self, key)
            if arg is None or value is None:
                continue
            if key == "inflation_dilation":
                value = [int(v) for v in value.split("-")]
            kwargs[arg] = value
        return kwargs

    def clip_spec(self):
        """The window and sampling settings as a ``trainables.data.views.ClipSpec``.

        Raises:
            ConfigError: a window shorter than the frames its sampler draws.
        """
        from trainables.data.views import ClipSpec

        try:
            return ClipSpec(length=self.window_length, overlap=self.window_overlap, fusion=self.label_fusion,
                            clip_len=self.clip_len, stride=self.ssts_stride, stochastic=self.ssts_stochastic,
                            sampler=self.sampler, num_frames=self.num_frames, fps=self.fps,
                            gap_tolerance=self.gap_tolerance, target=self.label_target, frame_step=self.frame_step,
                            eval_clips=self.eval_clips)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    @property
    def index_path(self) -> str:
        """The dataset index this trial trains on (one per registration setting when the study searches it)."""
        if self.data_indexes is not None:
            return self.data_indexes[self.registration]
        if self.data_index is None:
            raise ConfigError("the trial has no dataset index (data_index)")
        return self.data_index


# ---------------------------------------------------------------------------------------------------------------------
SPECS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrialConfig)}
KEYS: tuple[str, ...] = tuple(SPECS)
#: Keys a study file or ``--set`` may hold (runtime keys are the sweep's).
USER_KEYS: tuple[str, ...] = tuple(k for k, f in SPECS.items() if f.metadata["group"] != "runtime")
_HINTS = typing.get_type_hints(TrialConfig)


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(str(key), USER_KEYS, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "`emotune settings` lists the valid ones"
    return f"unknown trial setting {key!r}; {hint}"


def check_user_key(key: str) -> None:
    """Refuse a key that is unknown, or written by the sweep itself, in a study file or ``--set``.

    Raises:
        ConfigError: naming the key and the closest valid one.
    """
    if key not in SPECS:
        raise ConfigError(_unknown_key(key))
    if SPECS[key].metadata["group"] == "runtime":
        raise ConfigError(f"{key!r} is set by the sweep itself (from --data, --trials, the fidelity, the resources); "
                          "it cannot be a study setting or --set")


def allowed_text(key: str) -> str:
    """What ``key`` accepts, in words."""
    spec, hint = SPECS[key].metadata, _HINTS[key]
    if key == "backbone":
        from trainables.backbone_catalog import list_backbones

        return "one of " + ", ".join(list_backbones())
    if spec["choices"]:
        return "one of " + ", ".join(str(c) for c in spec["choices"])
    if spec["pattern"]:
        return spec["pattern"]
    base = _base_type(hint)
    if base in (int, float):
        lo, hi = spec["low"], spec["high"]
        kind = "an integer" if base is int else "a number"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if spec['low_open'] else '>='} {lo:g}")
        if hi is not None:
            parts.append(f"{'<' if spec['high_open'] else '<='} {hi:g}")
        return kind + (" " + " and ".join(parts) if parts else "")
    if base is bool:
        return "true or false"
    if base is str:
        return "a string"
    return "a value"


def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and args:
        return args[0] if len(args) == 1 else tuple(args)
    return hint


def check_value(key: str, value: Any) -> Any:
    """``value`` converted to ``key``'s type and checked against its range or choices.

    Strings that read as numbers are accepted for numeric keys (``--set lr=1e-3`` is a string to YAML).

    Raises:
        ConfigError: ``<key>=<value>: allowed: <what>``.
    """
    spec, hint = SPECS[key].metadata, _HINTS[key]
    nullable = type(None) in typing.get_args(hint)
    # "none" is a value of `freeze`; elsewhere, as YAML's null, it means "not set".
    spelled_null = isinstance(value, str) and value.lower() in ("none", "null") and value not in (spec["choices"] or ())
    if value is None or (nullable and spelled_null):
        if nullable or spec["group"] == "augment":
            return None
        raise ConfigError(f"{key} must be set: allowed: {allowed_text(key)}")
    base = _base_type(hint)

    def bad() -> ConfigError:
        return ConfigError(f"{key}={value!r} is not allowed; allowed: {allowed_text(key)}")

    def number() -> float:
        num = value
        if isinstance(num, str):
            try:
                num = float(num)
            except ValueError:
                raise bad() from None
        if isinstance(num, bool) or not isinstance(num, numbers.Real) or not math.isfinite(float(num)):
            raise bad()
        return float(num)

    if base is Any:  # augmentations: checked by their own parser (TrialConfig._check_combinations)
        out = value
    elif base is int:
        num = number()
        if not num.is_integer():
            raise bad()
        out = int(num)
    elif base is float:
        out = number()
    else:  # bool, str, dict, or a tuple of types (`pretrained`: a flag or a path)
        if not isinstance(value, Mapping if base is dict else base):
            raise bad()
        out = dict(value) if base is dict else value
    if spec["choices"] is not None and out not in spec["choices"]:
        raise bad()
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        lo, hi = spec["low"], spec["high"]
        if lo is not None and (out < lo or (spec["low_open"] and out == lo)):
            raise bad()
        if hi is not None and (out > hi or (spec["high_open"] and out == hi)):
            raise bad()
    if key == "time_kernel" and out % 2 == 0:
        raise bad()
    if key == "time_kernel" and out % 2 == 0:
        raise bad()
    if key == "inflation_dilation":
        parts = out.split("-")
        if len(parts) != 4 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise bad()
    return out


def _check_backbone(name: str) -> None:
    from trainables.backbone_catalog import list_backbones

    if name not in list_backbones():
        close = difflib.get_close_matches(name, list_backbones(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"backbone={name!r} is not registered{hint} (valid backbones: {', '.join(list_backbones())})")


def inapplicable(key: str, context: Mapping[str, Any]) -> str | None:
    """Why ``key`` does not apply under ``context`` (the chosen ``backbone``, ``sampler`` ...), or None if it does."""
    spec = SPECS[key].metadata
    if spec["arg"] is not None:
        from trainables.backbone_catalog import backbone_arguments

        backbone = context.get("backbone", SPECS["backbone"].default)
        if spec["arg"] not in backbone_arguments(backbone):
            return f"backbone {backbone} takes no {spec['arg']!r} argument"
    for other, values in spec["when"].items():
        current = context.get(other, SPECS[other].default)
        if current not in values:
            return f"only with {other} in ({', '.join(map(str, values))}); {other} is {current}"
    return None


def describe() -> list[tuple[str, str, str, str]]:
    """(key, group, default, allowed) for every user key: the table ``emotune sweep --list-settings`` prints."""
    return [(k, SPECS[k].metadata["group"], repr(SPECS[k].default), allowed_text(k)) for k in USER_KEYS]
