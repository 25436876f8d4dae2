"""Pre-flight: every configuration a sweep can start is checked before any trial starts.

A setting that cannot work (an unknown key, a value outside its range, a crop larger than the cached faces, windows
longer than the videos, a metric no trial reports, more CPUs than the cluster has) would otherwise surface inside a
trial, one retry after another. Checked here, in order:

1. every key of the study file and of ``--set`` is a trial setting a user may give (``trainables.config``);
2. the configurations the sweep can start: the fixed and pinned values alone, every initial point, every value of
   every searched parameter (each with the others drawn at random), every combination of the searched values that
   enter a shape rule (:func:`shape_points`), and ``samples`` random draws, each resolved into a ``TrialConfig``. A
   key that does not apply to the chosen backbone or sampler is refused when the user set it (``--set``) and dropped
   with one warning when it comes from the study file; a searched parameter that never applies is not searched at all;
3. each distinct data view of those configurations against its dataset index: the crop against the cached frame
   size, the windows against the training videos' valid frames (at least one training window), the frame rate
   against the cache's;
4. the clips of each configuration against its sampler's and its backbone's shape rules (``trainables.shapes``): the
   cached face size after the crop (patch divisibility of a video transformer, a CNN's smallest input, the pyramid's
   levels) and every frame count the sampler gives;
5. the objective's metric against what trials report.

Resources are checked by ``cluster.resources.max_concurrent_trials`` against the running cluster.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from search_spaces.schema import SearchSpace, _grid, suggest
from trainables.config import TrialConfig, check_user_key, check_value
from trainables.errors import ConfigError, DataError

#: Random configurations drawn on top of the systematic ones.
DEFAULT_SAMPLES = 32


@dataclass
class PreflightReport:
    """What the check found: the space to search (parameters that never apply removed), one warning per dropped key,
    and how many configurations and data views were checked."""

    space: SearchSpace
    warnings: list[str]
    configs: int
    data_views: int

    def lines(self) -> list[str]:
        return [f"warning: {w}" for w in self.warnings] + [
            f"pre-flight: {self.configs} configurations and {self.data_views} data views checked: ok"]


#: At most this many combinations of the searched shape settings are checked one by one (see :func:`shape_points`).
MAX_SHAPE_POINTS = 1000


def candidate_points(space: SearchSpace, samples: int, seed: int,
                     combinations: Any = ...) -> list[tuple[str, dict[str, Any]]]:
    """(where it came from, the trial settings) of every configuration the check resolves. ``combinations``: the
    space's :func:`shape_points` when the caller has them already (computed here when not given).

    Each configuration is an Optuna trial of an in-memory study with a seeded ``RandomSampler``: the values a point
    gives are enqueued (``Study.enqueue_trial``, as the sweep's searcher enqueues initial points), every other
    parameter is drawn by the sampler, and :func:`search_spaces.schema.suggest` walks the study's conditions exactly
    as a sweep's trial does. So a draw honours ``step`` and ``log`` as the sweep's own trials do.
    """
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line per check
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    finally:
        optuna.logging.set_verbosity(verbosity)
    out = []

    def resolve(origin: str, point: dict[str, Any] | None = None) -> None:
        if point:
            study.enqueue_trial(point, skip_if_exists=False)
        trial = study.ask()
        constants = suggest(space, trial)
        out.append((origin, {**constants, **trial.params}))

    resolve("the fixed settings")
    for i, point in enumerate(space.initial_points):
        resolve(f"initial_points[{i}]", point)
    for key, spec in space.params.items():
        if spec["type"] == "categorical":
            values = list(spec["choices"])
        elif spec["type"] == "constant":
            values = []
        else:  # the ends of the range; with a step, the last value on its grid (what a trial can draw)
            grid = _grid(spec)
            values = [grid[0], grid[-1]] if grid else [spec["low"], spec["high"]]
        for value in values:
            resolve(f"params.{key}={value!r}", {key: value})
    for point in (shape_points(space) if combinations is ... else combinations) or ():
        resolve(", ".join(f"params.{k}={v!r}" for k, v in point.items()), point)
    for i in range(samples):
        resolve(f"random configuration {i + 1}")
    return out


def shape_points(space: SearchSpace, limit: int = MAX_SHAPE_POINTS) -> list[dict[str, Any]] | None:
    """Every combination of the searched values that enter a shape rule (``trainables.shapes.SHAPE_KEYS``, with the
    parameters their conditions name), as points to enqueue; the other parameters are drawn.

    A parameter is asked only where its conditions hold for the values chosen before it (file order), as
    :func:`search_spaces.schema.suggest` does. Continuous parameters are left to the per-value and random checks.
    Returns [] when fewer than two such parameters are searched (each value is checked on its own already), None when
    there are more than ``limit`` combinations.
    """
    from trainables.shapes import SHAPE_KEYS

    searched = {k for k, spec in space.params.items() if spec["type"] != "constant"}
    keys = set(SHAPE_KEYS) & searched
    grown = True
    while grown:  # the parameters a shape parameter's conditions depend on decide whether it is asked
        more = {w for k in keys for w in space.params[k].get("when", {}) if w in searched} - keys
        keys |= more
        grown = bool(more)
    grids = {k: _grid(space.params[k]) for k in keys}
    grids = {k: v for k, v in grids.items() if v is not None}
    if len(grids) < 2:
        return []
    partial: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, dict(space.fixed))]
    for key, spec in space.params.items():
        if spec["type"] == "constant":
            partial = [(asked, {**chosen, key: spec["value"]}) for asked, chosen in partial]
            continue
        if key not in grids:
            continue
        out = []
        for asked, chosen in partial:
            if all(chosen[k] in allowed for k, allowed in spec.get("when", {}).items() if k in chosen):
                out += [({**asked, key: v}, {**chosen, key: v}) for v in grids[key]]
            else:
                out.append((asked, chosen))
        partial = out
        if len(partial) > limit:
            return None
    return [asked for asked, _ in partial if len(asked) > 1]


def check_keys(space: SearchSpace) -> None:
    """Every key of the study file and of ``--set`` names a trial setting a user may give.

    Raises:
        ConfigError: naming where the key is (``--set`` or the file's section) and the closest valid key.
    """
    for key in (*space.fixed, *space.params):
        try:
            check_user_key(key)
            if key in space.overrides:
                check_value(key, space.overrides[key])
        except ConfigError as err:
            where = "--set" if key in space.overrides else (
                f"{space.path}: params" if key in space.params else f"{space.path}: fixed")
            raise ConfigError(f"{where}: {err}") from None


def preflight(space: SearchSpace, runtime: dict[str, Any], samples: int = DEFAULT_SAMPLES,
              seed: int = 0) -> PreflightReport:
    """Check every configuration the sweep can start (see the module docstring).

    Args:
        space: the loaded study with the user's ``--set`` applied.
        runtime: the trial settings the sweep writes (``data_index`` or ``data_indexes``, ``epochs``, ``metric``,
            ``mode`` ...), merged into every configuration.
        samples: random configurations on top of the systematic ones.

    Raises:
        ConfigError, DataError: one line naming the key, the value, where it came from and what is allowed.
    """
    check_keys(space)
    from_study = {k for k in (*space.fixed, *space.params) if k not in space.overrides}
    warnings: dict[str, str] = {}
    applied: dict[str, bool] = {}  # searched key -> did it apply in any configuration that sampled it
    configs = []
    combinations = shape_points(space)  # None: too many to check one by one (warned below)
    for origin, settings in candidate_points(space, samples, seed, combinations):
        dropped: list[str] = []
        try:
            config = TrialConfig.from_dict({**settings, **runtime}, lenient=from_study, dropped=dropped)
        except ConfigError as err:
            raise ConfigError(f"{_origin_text(space, origin)}: {err}") from None
        for message in dropped:
            key = message.split(" ", 1)[0]
            warnings.setdefault(key, f"{space.path.name}: {message}")
        for key in settings:
            if key in space.params:
                applied[key] = applied.get(key, False) or not any(m.startswith(f"{key} ") for m in dropped)
        configs.append((origin, config))

    never = [k for k, ok in applied.items() if not ok and space.params[k]["type"] != "constant"]
    if never:
        params = {k: v for k, v in space.params.items() if k not in never}
        space = dataclasses.replace(space, params=params, initial_points=tuple(
            {k: v for k, v in p.items() if k not in never} for p in space.initial_points))
        for key in never:
            warnings[key] = warnings[key].replace("; dropped", "; not searched")
    views, data_warnings = check_data(space, configs)
    if combinations is None:
        data_warnings.append(f"{space.path.name}: the searched shape settings have more than {MAX_SHAPE_POINTS} "
                             "combinations; each value was checked, not each combination")
    return PreflightReport(space, [*warnings.values(), *data_warnings], len(configs), views)


def _origin_text(space: SearchSpace, origin: str) -> str:
    return f"{space.path.name} ({origin})"


def check_data(space: SearchSpace, configs: list[tuple[str, TrialConfig]]) -> tuple[int, list[str]]:
    """Check each distinct data view (index, windows, sampler, crop) against its dataset; returns how many, and a
    warning for each validation video shorter than a window (it is predicted as neutral 0 throughout).

    Raises:
        ConfigError: a crop, window or frame rate the data cannot give, naming the setting and the data's figures.
        DataError: an index without training or validation videos.
    """
    # None of these imports torch: the driver checks before Ray starts, and a trial process imports the models.
    from trainables.data.augment_settings import crop_output_size
    from trainables.data.cache import load_split, unlabelled_videos
    from trainables.data.views import VideoView, training_windows
    from trainables.reports import DIMS, reported_metrics

    splits: dict[str, tuple[list, list]] = {}
    seen: set = set()
    shapes_seen: set = set()
    short: dict[str, tuple[int, int]] = {}  # validation video -> (its frames, the longest window) at the trial's fps
    notes: list[str] = []
    unlabelled_train: dict[str, list[str]] = {}  # index -> its unlabelled train videos (what pretraining may take)
    for origin, config in configs:
        index = config.index_path
        if index not in splits:
            try:
                splits[index] = (load_split(index, "train"), load_split(index, "val"))
            except ValueError as err:
                raise DataError(str(err)) from None
            unlabelled = unlabelled_videos(index)
            unlabelled_train[index] = [vid for vid, split in unlabelled if split == "train"]
            if unlabelled and space.kind != "pretrain":
                notes.append(f"{len(unlabelled)} unlabelled video(s) of {index} left out (pretraining only: "
                             f"emotune pretrain)")
        train, val = splits[index]
        if config.pretrain_method is not None and config.pretrain_videos == "unlabelled" and \
                not unlabelled_train[index]:
            raise DataError(f"{_origin_text(space, origin)}: pretrain_videos=unlabelled, but the train split of "
                            f"{index} has no unlabelled video (a manifest row with an empty labels cell)")
        frame_hw = tuple(train[0].frames.shape[1:3])
        spec = config.clip_spec()
        key = (index, spec, tuple(sorted(config.augmentations().items(), key=lambda kv: kv[0])))
        where = _origin_text(space, origin)
        if key in seen:
            check_shape(where, config, spec, index, frame_hw, shapes_seen)
            continue
        seen.add(key)
        try:
            crop_output_size(config.augmentations(), frame_hw)
        except ValueError as err:
            raise ConfigError(f"{where}: {err} (the cache {index} holds {frame_hw[0]}x{frame_hw[1]} faces)") from None
        check_shape(where, config, spec, index, frame_hw, shapes_seen)
        try:
            training_windows([VideoView(v, spec.fps) for v in train], spec)
        except ValueError as err:
            longest = max(int(VideoView(v, spec.fps).valid.sum()) for v in train)
            rate = f"at fps={spec.fps:g}" if spec.fps else "at the cache's frame rate"
            raise ConfigError(f"{where}: window_length={spec.length}, {_needed_text(spec)}: {err}; the longest "
                              f"training video has {longest} valid frames {rate} ({index})") from None
        for video in val:
            frames = len(VideoView(video, spec.fps))
            if frames < spec.length:
                short[video.video_id] = (frames, max(spec.length, short.get(video.video_id, (0, 0))[1]))
        dims = DIMS[: train[0].labels.shape[1]]
        scale = tuple(train[0].meta.get("label_scale", (-1.0, 1.0)))
        metrics = reported_metrics(dims, None if scale == (-1.0, 1.0) else scale)
        if config.metric not in metrics:
            import difflib

            close = difflib.get_close_matches(config.metric, sorted(metrics), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; reported: {', '.join(sorted(metrics))}"
            raise ConfigError(f"{space.path}: objective.metric {config.metric!r} is not a metric trials report{hint}")
    warnings = [f"validation video {vid} has {frames} frames, fewer than window_length={length}: with such windows "
                "it is predicted as neutral 0 throughout" for vid, (frames, length) in sorted(short.items())]
    return len(seen), notes + warnings


def check_shape(where: str, config: TrialConfig, spec, index: str, frame_hw: tuple[int, int],
                seen: set | None = None) -> None:
    """The clips of ``config`` against its sampler's and its backbone's shape rules (``trainables.shapes``): the
    cached face size after the crop, and every frame count the sampler gives.

    Raises:
        ConfigError: one line naming the settings, the clip shape, where it comes from and what is allowed.
    """
    from trainables.data.augment_settings import crop_output_size
    from trainables.shapes import clip_frames, input_verdict

    height, width = crop_output_size(config.augmentations(), frame_hw)
    model = config.model_kwargs()
    key = (config.backbone, repr(sorted(model.items())), height, width, spec.sampler, spec.clip_len, spec.stride,
           spec.num_frames, config.batch_size)
    if seen is not None:
        if key in seen:
            return
        seen.add(key)
    counts, sampled = clip_frames(spec.sampler, spec.clip_len, spec.stride, spec.num_frames, config.batch_size)
    if not sampled.ok:
        raise ConfigError(f"{where}: {sampled.reason}")
    crop = config.aug_random_crop
    source = (f"the cache {index} holds {frame_hw[0]}x{frame_hw[1]} faces"
              + (f", aug_random_crop={crop!r} cuts {height}x{width}" if crop else ""))
    for frames in counts:
        verdict = input_verdict(config.backbone, height, width, frames, model)
        if not verdict.ok:
            raise ConfigError(f"{where}: {verdict.reason} ({source}; clips of {frames} frame{'s' * (frames != 1)})")


def _needed_text(spec) -> str:
    return f"clip_len={spec.clip_len}" if spec.sampler == "ssts" else f"num_frames={spec.needed}"


def check_objectives(space) -> None:
    """Every objective of a study with several (``objectives:``) is a metric trials report or a measured cost.

    Raises:
        ConfigError: one line naming the study file, the objective and the closest valid name.
    """
    import difflib

    from trainables.reports import COST_KEYS, reported_metrics

    known = reported_metrics() | reported_metrics(native_scale=(0.0, 1.0))
    for name, _ in space.objectives[1:] if len(space.objectives) > 1 else ():
        if name not in known:
            close = difflib.get_close_matches(str(name), sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"costs: {', '.join(COST_KEYS)}"
            raise ConfigError(f"{space.path}: objectives.{name} is not a metric trials report or a measured cost; "
                              f"{hint}")

