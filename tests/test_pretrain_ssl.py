"""BYOL and DINO pretext pretrainers (trainables.pretrain.ssl) on the tiny 3D-conv + ResNet backbone: EMA schedule,
DINO centring (also across a real 2-process gloo group), gradients, views, loss trend and the encoder export."""
from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from trainables.config import TrialConfig
from trainables.models.conv3d_resnet_gru import Conv3dResNetGRU
from trainables.models.registry import create_backbone
from trainables.pretrain import ssl
from trainables.pretrain.methods import _METHODS

BACKBONE = "conv3d_resnet_gru_tiny"
SIZE, FRAMES = 32, 4
KNOBS = {
    "byol": {"byol_hidden": 32, "byol_proj_dim": 16, "ema_momentum": 0.99},
    "dino": {"dino_out_dim": 64, "dino_hidden": 32, "dino_bottleneck": 16, "dino_local_crops": 2,
             "ema_momentum": 0.99, "dino_center_momentum": 0.8},
}
METHODS = tuple(KNOBS)


def build(method: str, seed: int = 0, **model_kwargs) -> ssl.BYOL | ssl.DINO:
    """The registered builder around a freshly seeded tiny backbone."""
    torch.manual_seed(seed)
    config = TrialConfig.from_dict({"backbone": BACKBONE, "pretrain_method": method, **KNOBS[method]})
    model = create_backbone(BACKBONE, out_dims=2, **model_kwargs)
    return _METHODS.get(method)(model, config)


def make_clips(seed: int = 1, batch: int = 3, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, FRAMES, channels, SIZE, SIZE, generator=g) * 2 - 1


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_builders_are_registered_and_refuse_other_models():
    assert isinstance(build("byol"), ssl.BYOL) and isinstance(build("dino"), ssl.DINO)
    config = TrialConfig.from_dict({"backbone": BACKBONE, "pretrain_method": "byol"})
    for method in METHODS:
        with pytest.raises(ValueError, match=r"Linear") as err:
            _METHODS.get(method)(nn.Linear(2, 2), config)
        assert "\n" not in str(err.value) and "Conv3dResNetEncoder" in str(err.value)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("step, total, momentum", [(0, 10, 0.99), (5, 10, 0.995), (10, 10, 1.0)])
def test_ema_update_follows_the_cosine_schedule(method, step, total, momentum):
    """tau_k = 1 - (1 - 0.99)(cos(pi k / K) + 1) / 2: 0.99 at k = 0, 0.995 at K / 2, 1 at K (hand-computed)."""
    p = build(method)
    assert ssl.ema_momentum_at(0.99, step, total) == pytest.approx(momentum, abs=1e-12)
    pairs = p._pairs()
    with torch.no_grad():  # move the online networks away from their copies so the update has something to do
        for online, _ in pairs:
            for q in online.parameters():
                q.add_(torch.randn_like(q) * 0.1)
            for b in online.buffers():
                if b.is_floating_point():
                    b.add_(0.5)
    old = [[q.detach().clone() for q in target.parameters()] for _, target in pairs]
    p.after_step(step, total)
    for (online, target), olds in zip(pairs, old):
        for q_online, q_target, q_old in zip(online.parameters(), target.parameters(), olds):
            expected = momentum * q_old + (1 - momentum) * q_online.detach()
            torch.testing.assert_close(q_target, expected, rtol=1e-6, atol=1e-7)  # float32 rounding
            if momentum < 1:
                assert not torch.equal(q_target, q_old)
        for b_online, b_target in zip(online.buffers(), target.buffers()):  # BN statistics are copied, not averaged
            assert torch.equal(b_online, b_target)


def test_dino_centre_update_by_hand():
    p = build("dino")
    p.train()
    with torch.no_grad():
        p.center.copy_(torch.linspace(-1, 1, p.center.numel()))
    c0 = p.center.clone()
    clips = make_clips()
    teacher = p.teacher_logits(p.draw_views(clips, gen(5))[:2])  # the same draws forward makes with seed 5
    assert teacher.shape == (2 * clips.shape[0], KNOBS["dino"]["dino_out_dim"])
    p(clips, gen(5))
    assert torch.equal(p.center, c0)  # forward only records; the step moves the centre
    p.after_step(1, 10)
    m = KNOBS["dino"]["dino_center_momentum"]
    torch.testing.assert_close(p.center, m * c0 + (1 - m) * teacher.mean(dim=0), rtol=0, atol=1e-6)
    # A validation forward (eval mode, no gradients) leaves the centre alone.
    c1 = p.center.clone()
    p.eval()
    with torch.no_grad():
        p(clips, gen(6))
    p.after_step(2, 10)
    assert torch.equal(p.center, c1)


def _dino_worker(rank: int, world: int, folder: str) -> None:
    """One worker of the 2-process test: same model and centre on both, different batches (2 and 3 clips)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        p = build("dino")
        p.train()
        with torch.no_grad():
            p.center.copy_(torch.linspace(-1, 1, p.center.numel()))
        clips = make_clips(seed=10 + rank, batch=2 + rank)
        teacher = p.teacher_logits(p.draw_views(clips, gen(5))[:2])
        before = p.center.clone()
        p(clips, gen(5))
        p.after_step(1, 10)
        torch.save({"teacher": teacher, "before": before, "after": p.center.clone()}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_dino_centre_is_all_reduced_across_workers(tmp_path):
    ctx = mp.start_processes(_dino_worker, args=(2, str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    try:
        while not ctx.join(timeout=2):  # raises if a worker failed (and then ends the other one)
            if time.monotonic() > deadline:
                raise TimeoutError("the 2 DINO workers did not finish in 180 s")
    finally:
        for proc in ctx.processes:  # only the test's own workers, and only if still running
            if proc.is_alive():
                proc.kill()
            proc.join()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(r0["before"], r1["before"])
    m = KNOBS["dino"]["dino_center_momentum"]
    both = torch.cat([r0["teacher"], r1["teacher"]])  # 4 + 6 teacher rows: the mean over every worker's sample
    expected = m * r0["before"] + (1 - m) * both.mean(dim=0)
    torch.testing.assert_close(r0["after"], expected, rtol=0, atol=1e-6)
    assert torch.equal(r0["after"], r1["after"])
    local = m * r0["before"] + (1 - m) * r0["teacher"].mean(dim=0)
    assert not torch.allclose(r0["after"], local, atol=1e-4)  # the test tells the all-reduced mean from a local one


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_every_online_parameter_and_no_target(method):
    p = build(method)
    p.train()
    p(make_clips(), gen(3))["loss"].backward()
    online = {n: q for n, q in p.named_parameters() if q.requires_grad}
    assert {f"encoder.{n}" for n, _ in p.encoder.named_parameters()} <= set(online)
    for name, q in online.items():
        assert q.grad is not None and q.grad.abs().sum() > 0, name
    for _, target in p._pairs():
        for q in target.parameters():
            assert not q.requires_grad and q.grad is None


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_one_augmentation_draw_per_view(method, in_chans):
    p = build(method, in_chans=in_chans)
    frame = make_clips(batch=3)[:, :1]
    still = frame.expand(-1, FRAMES, -1, -1, -1)  # every frame of a clip the same
    views = p.draw_views(still, gen(7))
    assert len(views) == (2 if method == "byol" else 2 + KNOBS["dino"]["dino_local_crops"])
    for view in views:
        assert view.shape[:3] == (3, FRAMES, in_chans)
        assert view.min() >= -1 and view.max() <= 1
        for t in range(1, FRAMES):
            torch.testing.assert_close(view[:, t], view[:, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(views[0], views[1], atol=1e-3)
    assert views[0].shape[-2:] == (SIZE, SIZE)
    if method == "dino":
        assert views[2].shape[-2:] == (round(SIZE * 96 / 224),) * 2
        assert not torch.allclose(views[2], views[3], atol=1e-3)
    for a, b in zip(views, p.draw_views(still, gen(7))):  # a seed fixes every view
        assert torch.equal(a, b)


def test_byol_loss_falls():
    p = build("byol")
    p.train()
    opt = torch.optim.Adam([q for q in p.parameters() if q.requires_grad], lr=1e-3)
    clips, losses = make_clips(batch=4), []
    for step in range(1, 21):
        out = p(clips, gen(0))  # the same views every step: a fixed objective apart from the moving target
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        p.after_step(step, 20)
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_dino_student_approaches_teacher():
    """DINO's loss is the teacher's entropy plus the student's KL divergence from the teacher. Centring flattens the
    teacher on purpose (its entropy rises from a sharpened start), so the total need not fall over a few steps; what
    the student's gradient must lower is the KL part, and the split must be exact."""
    p = build("dino")
    p.train()
    opt = torch.optim.Adam([q for q in p.parameters() if q.requires_grad], lr=1e-3)
    clips, logs = make_clips(batch=4), []
    for step in range(1, 21):
        out = p(clips, gen(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        p.after_step(step, 20)
        logs.append({k: v.item() for k, v in out.items()})
    for log in logs:
        assert log["loss"] == pytest.approx(log["teacher_entropy"] + log["kl"], abs=1e-5)
        assert log["kl"] >= -1e-5
    assert logs[-1]["kl"] < 0.75 * logs[0]["kl"], logs
    assert logs[-1]["teacher_entropy"] > logs[0]["teacher_entropy"], logs


@pytest.mark.parametrize("method", METHODS)
def test_encoder_state_round_trips_through_pretext_checkpoint(method, tmp_path):
    p = build(method)
    p.train()
    opt = torch.optim.Adam([q for q in p.parameters() if q.requires_grad], lr=1e-2)
    p(make_clips(), gen(0))["loss"].backward()  # weights and BN statistics away from their initial values
    opt.step()
    p.after_step(1, 10)
    state = p.encoder_state()
    assert all(k.startswith("encoder.") for k in state) and all(v.device.type == "cpu" for v in state.values())
    assert len(state) == len(p.encoder.state_dict())
    path = tmp_path / f"{method}.pt"
    torch.save(state, path)
    torch.manual_seed(123)
    model = create_backbone(BACKBONE, out_dims=2, pretext_checkpoint=str(path))
    assert isinstance(model, Conv3dResNetGRU)
    report = model.load_reports["pretext"]
    assert report.ok, report.summary()
    assert set(report.loaded) == set(model.encoder.state_dict())
    p.eval()
    model.eval()
    clips = make_clips(seed=4)
    with torch.no_grad():
        ours = p.encode(clips)
        theirs = model.encoder(model._to_model_channels(clips).transpose(1, 2))
    assert ours.shape == (clips.shape[0], FRAMES, p.encoder.num_features)
    assert torch.equal(ours, theirs)
