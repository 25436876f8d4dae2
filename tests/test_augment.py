"""Tests of the clip augmentations (trainables/data/augment.py, their settings in augment_settings.py): shapes, one draw
per clip, the papers' rules, determinism and config errors."""
from __future__ import annotations

import pickle

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from trainables.data.augment import (
    ClipAugmentation,
    RandAugmentClip,
    build_eval_transform,
    build_train_transform,
    create_augmentation,
    draw_seed,
    list_augmentations,
)
from trainables.data.augment_settings import CONFIG_KEYS, crop_output_size, parse_augment_config

T, S = 8, 96
RANDOM_AUGS = ["hflip", "random_crop", "cropout", "missing_frames", "solarize", "salt_pepper", "randaugment",
               "grayscale"]
# Parameters that make every augmentation act on every clip, so "did it do something" is not left to chance.
ALWAYS = {"hflip": {"p": 1.0}, "solarize": {"p": 1.0}, "grayscale": {"p": 1.0}}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clip_(channels: int = 3, frames: int = T, size: int = S, seed: int = 1, low: int = 0,
          high: int = 256) -> torch.Tensor:
    """A clip of distinct random frames with values in [low, high)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (frames, channels, size, size), generator=g, dtype=torch.uint8)


def smooth_frame(channels: int = 3, size: int = S) -> torch.Tensor:
    """A structured (non-constant, non-noise) frame so geometric and photometric ops visibly change it."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    planes = [(xx * 2 + yy) % 256, (yy * 3) % 256, (xx * yy) % 256][:channels]
    return torch.stack(planes).to(torch.uint8)


def repeated_clip(channels: int = 3) -> torch.Tensor:
    return smooth_frame(channels).unsqueeze(0).repeat(T, 1, 1, 1)


def copy_gen(g: torch.Generator) -> torch.Generator:
    h = torch.Generator()
    h.set_state(g.get_state())
    return h


# ---------------------------------------------------------------------------------------------------------------
# Registry and shapes


def test_registry_lists_every_augmentation():
    assert set(RANDOM_AUGS) <= set(list_augmentations())
    for name in RANDOM_AUGS:
        assert isinstance(create_augmentation(name), ClipAugmentation)


SHAPES = [
    ("hflip", {}, (T, 3, S, S)),
    ("random_crop", {"size": 80}, (T, 3, 80, 80)),
    ("random_crop", {"size": 0.5}, (T, 3, 48, 48)),
    ("cropout", {}, (T, 3, S, S)),
    ("missing_frames", {}, (T, 3, S, S)),
    ("solarize", {"p": 1.0}, (T, 3, S, S)),
    ("salt_pepper", {"amount": 0.02}, (T, 3, S, S)),
    ("randaugment", {"num_ops": 3, "magnitude": 15}, (T, 3, S, S)),
    ("grayscale", {"p": 1.0}, (T, 3, S, S)),
]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name,params,shape", SHAPES, ids=[f"{n}-{p}" for n, p, _ in SHAPES])
def test_output_shape_and_dtype(name, params, shape, channels):
    x = clip_(channels)
    before = x.clone()
    out = create_augmentation(name, **params)(x, gen(3))
    assert out.dtype == torch.uint8
    assert tuple(out.shape) == (shape[0], channels, *shape[2:])
    assert torch.equal(x, before), "the input clip must not be modified in place"


def test_eval_transform_is_centre_crop_of_training_size():
    x = clip_(3)
    config = {"aug_random_crop": 80, "aug_hflip": 0.5, "aug_salt_pepper": 0.02, "lr": 1e-3}
    out = build_eval_transform(config)(x)
    assert out.shape == (T, 3, 80, 80)
    assert torch.equal(out, x[..., 8:88, 8:88])
    assert build_train_transform(config)(x, gen()).shape == out.shape
    assert crop_output_size(config, S) == (80, 80)
    # Without a crop, evaluation is the identity whatever else is on.
    assert torch.equal(build_eval_transform({"aug_hflip": 1.0, "aug_randaugment": True})(x), x)
    assert crop_output_size({}, (64, 48)) == (64, 48)


def test_fractional_crop_size():
    x = clip_(1)
    config = {"aug_random_crop": 80 / 96}
    assert build_train_transform(config)(x, gen()).shape == (T, 1, 80, 80)
    assert torch.equal(build_eval_transform(config)(x), x[..., 8:88, 8:88])


# ---------------------------------------------------------------------------------------------------------------
# One choice per clip


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", ["hflip", "random_crop", "cropout", "randaugment", "grayscale", "solarize"])
def test_identical_frames_stay_identical(name, channels):
    x = repeated_clip(channels)
    aug = create_augmentation(name, **ALWAYS.get(name, {}))
    changed = False
    for seed in range(8):
        out = aug(x, gen(seed))
        assert all(torch.equal(out[0], out[t]) for t in range(1, T)), f"{name} seed {seed}: frames differ"
        changed |= out.shape != x.shape or not torch.equal(out, x)
    if not (name == "grayscale" and channels == 1):  # gray of a gray clip is the clip
        assert changed, f"{name} never changed the clip"


def test_random_crop_same_box_on_distinct_frames():
    x = clip_(3)
    aug = create_augmentation("random_crop", size=80)
    boxes = set()
    for seed in range(6):
        out = aug(x, gen(seed))
        # Recover the box from frame 0 (random content: exactly one position matches), then check every frame.
        hits = [(i, j) for i in range(S - 80 + 1) for j in range(S - 80 + 1)
                if torch.equal(out[0], x[0, :, i:i + 80, j:j + 80])]
        assert len(hits) == 1
        i, j = hits[0]
        assert torch.equal(out, x[..., i:i + 80, j:j + 80])
        boxes.add(hits[0])
    assert len(boxes) > 1, "the crop box should vary between clips"


def test_hflip_all_or_nothing_on_distinct_frames():
    x = clip_(3)
    aug = create_augmentation("hflip", p=0.5)
    outcomes = []
    for seed in range(20):
        out = aug(x, gen(seed))
        flipped = torch.equal(out, x.flip(-1))
        assert flipped or torch.equal(out, x)
        outcomes.append(flipped)
    assert any(outcomes) and not all(outcomes)


def test_grayscale_all_or_nothing_on_distinct_frames():
    x = clip_(3)
    gray = TF.rgb_to_grayscale(x, num_output_channels=3)
    outcomes = []
    for seed in range(20):
        out = create_augmentation("grayscale", p=0.5)(x, gen(seed))
        is_gray = torch.equal(out, gray)
        assert is_gray or torch.equal(out, x)
        outcomes.append(is_gray)
    assert any(outcomes) and not all(outcomes)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 0], gray[:, 2])


@pytest.mark.parametrize("channels", [3, 1])
def test_randaugment_one_draw_for_the_whole_clip(channels):
    """Proof that v2.RandAugment on the clip (wrapped as a Video) draws once: replaying the same seed on each frame
    ALONE reproduces that frame of the clip output. Were ops drawn per frame, frames t > 0 would get other ops."""
    frames = [smooth_frame(channels, size=48).roll(shifts=7 * t, dims=-1) for t in range(T)]
    x = torch.stack(frames)
    aug = create_augmentation("randaugment", num_ops=2, magnitude=12)
    assert isinstance(aug, RandAugmentClip)
    for seed in range(4):
        g = gen(seed)
        replay_seed = draw_seed(copy_gen(g))
        out = aug(x, g)
        for t in range(T):
            assert torch.equal(out[t], aug.apply_seeded(x[t:t + 1], replay_seed)[0]), f"seed {seed}, frame {t}"


def test_randaugment_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    create_augmentation("randaugment")(clip_(3), gen())
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------------------------------------------------
# The papers' rules


@pytest.mark.parametrize("frames", [8, 10, 5, 1])
def test_missing_frames_count_and_rest_unchanged(frames):
    x = clip_(3, frames=frames, low=1)  # no zero pixels, so black frames are only the missing ones
    out = create_augmentation("missing_frames", fraction=0.2)(x, gen(4))
    black = [t for t in range(frames) if not out[t].any()]
    assert len(black) == int(0.2 * frames + 0.5)  # round half up: 8 -> 2, 10 -> 2, 5 -> 1, 1 -> 0
    for t in range(frames):
        if t not in black:
            assert torch.equal(out[t], x[t])


@pytest.mark.parametrize("channels", [3, 1])
def test_cropout_area_and_same_squares(channels):
    x = clip_(channels, low=1)
    fractions = []
    for seed in range(5):
        out = create_augmentation("cropout", n=5, area=0.25)(x, gen(seed))
        mask = out == 0
        assert all(torch.equal(mask[0], mask[t]) for t in range(T)), "squares must sit at the same place on every frame"
        assert torch.equal(mask[:, 0:1].expand_as(mask), mask), "a square blacks out every channel"
        assert torch.equal(out[~mask], x[~mask])
        fractions.append(mask[0, 0].float().mean().item())
    # Side round(sqrt(0.25 * 96^2 / 5)) = 21: 5 * 441 / 9216 = 0.239 when the squares do not overlap.
    assert all(abs(f - 0.25) < 0.03 for f in fractions), fractions


def test_solarize_rule():
    x = clip_(1)
    x[0] = 255  # shift the mean away from 127.5 to check it is the clip's mean
    out = create_augmentation("solarize", p=1.0)(x, gen())
    mean = x.float().mean()
    above = x.float() > mean
    assert torch.equal(out[above], 255 - x[above])
    assert torch.equal(out[~above], x[~above])
    assert torch.equal(create_augmentation("solarize", p=0.0)(x, gen()), x)


def test_solarize_probability_per_clip():
    x = clip_(1, frames=2, size=16)
    aug = create_augmentation("solarize", p=0.2)
    g = gen(7)
    hits = sum(not torch.equal(aug(x, g), x) for _ in range(500))
    assert 0.14 < hits / 500 < 0.26


@pytest.mark.parametrize("channels", [3, 1])
def test_salt_pepper_fraction(channels):
    x = clip_(channels, low=1, high=255)  # no 0 or 255 in the input, so every extreme value is noise
    out = create_augmentation("salt_pepper", amount=0.02)(x, gen(5))
    pepper, salt = (out == 0), (out == 255)
    assert torch.equal(pepper[:, 0:1].expand_as(pepper), pepper), "a noisy pixel is noisy in every channel"
    noisy = (pepper | salt)[:, 0]
    assert abs(noisy.float().mean().item() - 0.02) < 0.003
    assert abs(pepper[:, 0].float().sum().item() / noisy.sum().item() - 0.5) < 0.05
    assert torch.equal(out[~(pepper | salt)], x[~(pepper | salt)])


# ---------------------------------------------------------------------------------------------------------------
# Determinism

ALL_ON = {"aug_hflip": 0.5, "aug_random_crop": 80, "aug_cropout": True, "aug_missing_frames": 0.2,
          "aug_solarize": 0.5, "aug_salt_pepper": 0.02, "aug_randaugment": True, "aug_grayscale": 0.3}


@pytest.mark.parametrize("name", RANDOM_AUGS)
def test_same_seed_same_output_different_seed_different(name):
    x = clip_(3)
    aug = create_augmentation(name, **{"hflip": {"p": 0.5}, "grayscale": {"p": 0.5}}.get(name, {}))
    assert torch.equal(aug(x, gen(11)), aug(x, gen(11)))
    outs = [aug(x, gen(seed)) for seed in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:]), f"{name} ignores the generator"


def test_pipeline_deterministic_and_picklable():
    x = clip_(3)
    train = build_train_transform(ALL_ON)
    a, b = train(x, gen(21)), train(x, gen(21))
    assert torch.equal(a, b) and a.shape == (T, 3, 80, 80)
    assert not torch.equal(a, train(x, gen(22)))
    clone = pickle.loads(pickle.dumps(train))
    assert torch.equal(clone(x, gen(21)), a)
    # Consecutive clips from one generator get different draws.
    g = gen(21)
    assert not torch.equal(train(x, g), train(x, g))


def test_pipeline_order():
    steps = [key for key, _ in parse_augment_config(ALL_ON)]
    assert steps == ["aug_random_crop", "aug_hflip", "aug_randaugment", "aug_solarize", "aug_grayscale",
                     "aug_cropout", "aug_missing_frames", "aug_salt_pepper"]
    assert parse_augment_config({"lr": 1.0, "aug_hflip": 0, "aug_cropout": False}) == []


def test_config_parameters_reach_augmentations():
    steps = dict(parse_augment_config({"aug_cropout": True, "aug_cropout_n": 3, "aug_cropout_area": 0.1,
                                       "aug_randaugment": True, "aug_randaugment_ops": 1,
                                       "aug_randaugment_magnitude": 5, "aug_hflip": True}))
    assert (steps["aug_cropout"].n, steps["aug_cropout"].area) == (3, 0.1)
    assert (steps["aug_randaugment"].num_ops, steps["aug_randaugment"].magnitude) == (1, 5)
    assert steps["aug_hflip"].p == 0.5  # true = the paper default
    assert set(CONFIG_KEYS) == {"aug_hflip", "aug_random_crop", "aug_cropout", "aug_cropout_n", "aug_cropout_area",
                                "aug_missing_frames", "aug_solarize", "aug_salt_pepper", "aug_randaugment",
                                "aug_randaugment_ops", "aug_randaugment_magnitude", "aug_grayscale"}


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_unknown_config_key():
    with pytest.raises(ValueError, match="aug_hflp") as err:
        build_train_transform({"aug_hflp": 0.5})
    assert "aug_hflip" in str(err.value) and "aug_randaugment_magnitude" in str(err.value)


@pytest.mark.parametrize("config,words", [
    ({"aug_hflip": -0.1}, ["aug_hflip", "-0.1", "[0, 1]"]),
    ({"aug_solarize": 1.5}, ["aug_solarize", "1.5", "[0, 1]"]),
    ({"aug_missing_frames": -0.2}, ["aug_missing_frames", "-0.2"]),
    ({"aug_random_crop": -5}, ["aug_random_crop", "-5"]),
    ({"aug_random_crop": 80.5}, ["aug_random_crop", "80.5"]),
    ({"aug_cropout": "yes"}, ["aug_cropout", "'yes'", "true or false"]),
    ({"aug_cropout": False, "aug_cropout_area": 1.2}, ["aug_cropout_area", "1.2", "(0, 1)"]),
    ({"aug_cropout": True, "aug_cropout_n": 0}, ["aug_cropout_n", "0", ">= 1"]),
    ({"aug_randaugment": True, "aug_randaugment_magnitude": 31}, ["aug_randaugment_magnitude", "31", "[0, 30]"]),
])
def test_bad_config_values(config, words):
    for build in (build_train_transform, build_eval_transform):
        with pytest.raises(ValueError) as err:
            build(config)
        for word in words:
            assert word in str(err.value), (word, str(err.value))


def test_crop_larger_than_frame():
    config = {"aug_random_crop": 120}
    with pytest.raises(ValueError, match=r"aug_random_crop.*120.*96x96"):
        build_train_transform(config)(clip_(3), gen())
    with pytest.raises(ValueError, match=r"aug_random_crop.*120"):
        build_eval_transform(config)(clip_(3))
    with pytest.raises(ValueError, match=r"aug_random_crop=120.*96x96"):
        build_train_transform(config, frame_size=96)
    build_train_transform(config, frame_size=128)  # fits


def test_create_augmentation_errors():
    with pytest.raises(ValueError, match="unknown augmentation 'blur'.*hflip"):
        create_augmentation("blur")
    with pytest.raises(ValueError, match="hflip: unknown parameter.*prob.*allowed: p"):
        create_augmentation("hflip", prob=0.5)
    with pytest.raises(ValueError, match=r"salt_pepper: amount=2.*\[0, 1\]"):
        create_augmentation("salt_pepper", amount=2)


def test_bad_clip():
    train = build_train_transform({"aug_hflip": 0.5})
    with pytest.raises(ValueError, match="uint8"):
        train(clip_(3).float(), gen())
    with pytest.raises(ValueError, match=r"\(T, C, H, W\)"):
        train(clip_(3)[0], gen())
