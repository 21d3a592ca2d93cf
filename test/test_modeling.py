"""Unit tests of the DrQ-v2 networks, config and policy (no ROS, no snapshot files)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from small_models import small_config

from drqv2_ros.policy import (
    CheckpointError,
    ConfigError,
    DrQV2Config,
    DrQV2Policy,
    RandomShiftsAug,
    TruncatedNormal,
    schedule,
)
from drqv2_ros.policy.configuration_drqv2 import CONFIG_NAME
from drqv2_ros.policy.modeling_drqv2 import WEIGHTS_NAME


def batch_for(cfg: DrQV2Config, b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {
        f"observation.images.{name}": torch.randint(
            0, 256, (b, cfg.in_channels, cfg.image_height, cfg.image_width), generator=g
        ).to(torch.uint8)
        for name in cfg.camera_names
    }
    out["observation.state"] = torch.randn(b, cfg.low_dim_size, generator=g)
    return out


# ------------------------------------------------------------------------------ schedule
def test_schedule_linear_and_constants():
    spec = "linear(1.0,0.1,500000)"
    assert schedule(spec, 0) == pytest.approx(1.0)
    assert schedule(spec, 250000) == pytest.approx(0.55)
    assert schedule(spec, 500000) == pytest.approx(0.1)
    assert schedule(spec, 10**7) == pytest.approx(0.1)
    assert schedule("0.2", 123) == pytest.approx(0.2)
    assert schedule(0.3, 5) == pytest.approx(0.3)
    sl = "step_linear(1.0,0.5,100,0.1,100)"
    assert schedule(sl, 50) == pytest.approx(0.75)
    assert schedule(sl, 100) == pytest.approx(0.5)
    assert schedule(sl, 150) == pytest.approx(0.3)
    assert schedule(sl, 1000) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not understood"):
        schedule("cosine(1,2)", 0)


# ----------------------------------------------------------------------- TruncatedNormal
def test_truncated_normal_clamps_and_clips():
    g = torch.Generator().manual_seed(0)
    loc = torch.tensor([[0.99, -0.99, 0.0]]).repeat(1000, 1)
    dist = TruncatedNormal(loc, torch.full_like(loc, 5.0))
    x = dist.sample(generator=g)
    assert x.max() <= 1 - 1e-6 and x.min() >= -1 + 1e-6
    assert (x == 1 - 1e-6).any() and (x == -1 + 1e-6).any()  # clamping happened
    y = TruncatedNormal(torch.zeros(1000, 2), torch.full((1000, 2), 5.0)).sample(clip=0.3)
    assert y.abs().max() <= 0.3 + 1e-7
    # straight-through gradient of the clamp
    loc = torch.full((4, 2), 0.999, requires_grad=True)
    TruncatedNormal(loc, torch.ones(4, 2)).sample().sum().backward()
    assert torch.equal(loc.grad, torch.ones(4, 2))


# ----------------------------------------------------------------------- RandomShiftsAug
def test_random_shifts_matches_integer_shift():
    pad = 2
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="replicate")
    shifts = torch.tensor([[0, 4], [3, 1]])  # (s_x, s_y) per image
    out = RandomShiftsAug(pad)(x, shifts=shifts)
    for n, (sx, sy) in enumerate(shifts.tolist()):
        expect = padded[n, :, sy : sy + 5, sx : sx + 5]
        assert torch.allclose(out[n], expect, atol=1e-4), (sx, sy)
    # random shifts land on one of the (2p+1)^2 integer shifts
    g = torch.Generator().manual_seed(1)
    out = RandomShiftsAug(pad)(x[:1], generator=g)
    cands = [
        padded[0, :, sy : sy + 5, sx : sx + 5] for sx in range(2 * pad + 1)
        for sy in range(2 * pad + 1)
    ]
    assert any(torch.allclose(out[0], c, atol=1e-4) for c in cands)
    with pytest.raises(ValueError, match="square"):
        RandomShiftsAug(pad)(torch.zeros(1, 3, 4, 5))


# ------------------------------------------------------------------------------- config
def test_config_json_roundtrip_and_strictness(tmp_path):
    cfg = small_config(defaulted=["action_scale_m"])
    assert DrQV2Config.from_json(cfg.to_json()) == cfg
    cfg.save_pretrained(tmp_path)
    assert DrQV2Config.from_pretrained(tmp_path) == cfg
    d = json.loads((tmp_path / CONFIG_NAME).read_text())
    d["bogus"] = 1
    with pytest.raises(ConfigError, match=r"unknown fields \['bogus'\]"):
        DrQV2Config.from_dict(d)
    d.pop("bogus")
    d.pop("frame_stack")
    with pytest.raises(ConfigError, match=r"missing fields \['frame_stack'\]"):
        DrQV2Config.from_dict(d)
    with pytest.raises(ConfigError, match="low_dim_size"):
        DrQV2Config(low_dim_size=50)
    with pytest.raises(ConfigError, match="camera_names"):
        DrQV2Config(num_views=2)
    with pytest.raises(ConfigError, match="stddev_schedule"):
        DrQV2Config(stddev_schedule="cosine(1)")
    with pytest.raises(ConfigError, match="frame_stack must be an int"):
        DrQV2Config(frame_stack=3.0)
    with pytest.raises(ConfigError, match="low_dim_layout"):
        DrQV2Config(low_dim_layout=[("joint_pos", 6, "rad")])
    assert DrQV2Config().low_dim_slices()["gripper_xyz"] == slice(12, 15)
    assert DrQV2Config().feat_per_view == 32 * 35 * 35


# ------------------------------------------------------------------ architecture generality
@pytest.mark.parametrize("frame_stack", [1, 3])
def test_generic_architecture_save_load(tmp_path, frame_stack):
    per_frame = 63 // frame_stack
    cfg = small_config(
        camera_names=["wrist", "front"],
        num_views=2,
        frame_stack=frame_stack,
        low_dim_size=63,
        low_dim_per_frame=per_frame,
        low_dim_layout=[("state", per_frame, "mixed")],
        action_dim=7,
        actor_mlp_nodes=[64],
        critic_mlp_nodes=[64],
        num_critics=3,
    )
    torch.manual_seed(0)
    policy = DrQV2Policy(cfg)
    b = batch_for(cfg, b=3)
    rgb = torch.stack([b["observation.images.wrist"], b["observation.images.front"]], 1)
    low = b["observation.state"]
    action = torch.rand(3, 7) * 2 - 1
    with torch.no_grad():
        fused = policy.encode(rgb)
        # 24 -> 11 -> 9 -> 7 -> 5 pixels, 8 channels, 2 views
        assert fused.shape == (3, cfg.fused_dim) and cfg.fused_dim == 2 * 8 * 5 * 5
        mu = policy.actor_mean(low, fused)
        assert mu.shape == (3, 7) and mu.abs().max() < 1
        assert policy.critic(low, fused, action).shape == (3, 3)
        assert policy.critic_target(low, fused, action).shape == (3, 3)
    w = policy.state_dict()["encoder.convs_per_cam.1.0.weight"]
    assert w.shape == (8, 3 * frame_stack, 3, 3)
    assert policy.state_dict()["critic.qs.2.main_mlp.0.weight"].shape == (64, 16 + 16 + 7)
    act = policy.select_action(b)
    assert torch.allclose(act, mu)

    policy.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())["num_critics"] == 3
    again = DrQV2Policy.from_pretrained(tmp_path / "ckpt")
    assert again.config == cfg
    sd1, sd2 = policy.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert torch.equal(again.select_action(b), act)


def test_select_action_inputs_and_exploration():
    cfg = small_config()
    policy = DrQV2Policy(cfg)
    policy.training_counters.main_loop_iterations = 10
    b = batch_for(cfg, b=1)
    mean = policy.select_action(b)
    assert mean.shape == (1, 4)
    # unbatched and stacked inputs give the same action
    single = {k: v[0] for k, v in b.items()}
    assert torch.allclose(policy.select_action(single), mean)
    stacked = {"rgb": b["observation.images.rgb"].unsqueeze(1), **single}
    del stacked["observation.images.rgb"]
    assert torch.allclose(policy.select_action(stacked), mean)
    g = torch.Generator().manual_seed(0)
    noisy = policy.select_action(b, explore=True, step=0, generator=g)
    assert noisy.abs().max() < 1 and not torch.allclose(noisy, mean)
    assert (noisy - mean).abs().max() <= cfg.stddev_clip + 1e-6
    with pytest.raises(ValueError, match="uint8"):
        policy.select_action({**b, "observation.images.rgb": b["observation.images.rgb"].float()})
    with pytest.raises(ValueError, match="observation.state"):
        policy.select_action({"observation.images.rgb": b["observation.images.rgb"]})
    with pytest.raises(ValueError, match="observation.images.rgb"):
        policy.select_action({"observation.state": b["observation.state"]})
    policy.reset()


def test_soft_update_target():
    policy = DrQV2Policy(small_config())
    with torch.no_grad():
        for p in policy.critic.parameters():
            p.add_(1.0)
    before = [p.clone() for p in policy.critic_target.parameters()]
    policy.soft_update_target(0.5)
    for b, t, s in zip(before, policy.critic_target.parameters(), policy.critic.parameters()):
        assert torch.allclose(t, 0.5 * b + 0.5 * s)
    assert not policy.critic_target.training
    policy.train()
    assert policy.training and not policy.critic_target.training


def _write_weights(src, dst, edit):
    dst.mkdir()
    (dst / CONFIG_NAME).write_text((src / CONFIG_NAME).read_text())
    tensors = load_file(str(src / WEIGHTS_NAME))
    edit(tensors)
    save_file(tensors, str(dst / WEIGHTS_NAME))
    return dst


def test_strict_loading_errors(tmp_path):
    src = DrQV2Policy(small_config()).save_pretrained(tmp_path / "ok")
    key = "actor.actor_model.main_mlp.0.weight"

    def nan(t):
        t[key][0, 0] = float("nan")

    cases = {
        "missing 1 tensors": lambda t: t.pop(key),
        "unexpected 1 tensors": lambda t: t.update(extra=torch.zeros(1)),
        "has shape": lambda t: t.update({key: torch.zeros(3, 3)}),
        "NaN/Inf": nan,
    }
    for i, (msg, edit) in enumerate(cases.items()):
        bad = _write_weights(src, tmp_path / f"bad{i}", edit)
        with pytest.raises(CheckpointError, match=msg):
            DrQV2Policy.from_pretrained(bad)
    with pytest.raises(CheckpointError, match="config.json not found"):
        DrQV2Policy.from_pretrained(tmp_path)
    (tmp_path / "cfgbad").mkdir()
    (tmp_path / "cfgbad" / CONFIG_NAME).write_text('{"type": "drqv2"}')
    (tmp_path / "cfgbad" / WEIGHTS_NAME).write_bytes((src / WEIGHTS_NAME).read_bytes())
    with pytest.raises(CheckpointError, match="missing fields"):
        DrQV2Policy.from_pretrained(tmp_path / "cfgbad")
    (tmp_path / "cfgbad" / CONFIG_NAME).write_text((src / CONFIG_NAME).read_text())
    (tmp_path / "cfgbad" / WEIGHTS_NAME).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="truncated safetensors"):
        DrQV2Policy.from_pretrained(tmp_path / "cfgbad")


def test_actor_forward_is_fast_at_batch_1():
    cfg = DrQV2Config()  # the pick-101 shape: 9x84x84, 54 low-dim
    policy = DrQV2Policy(cfg, init_weights=False)
    b = batch_for(cfg, b=1)
    # Single intra-op thread (module fixture): on a shared 2-core box, OpenMP threads
    # fighting other processes cost 10-100x; a policy process sharing its cores should
    # do the same.
    for _ in range(5):
        policy.select_action(b)
    n = 30
    t0 = time.perf_counter()
    for _ in range(n):
        policy.select_action(b)
    ms = (time.perf_counter() - t0) / n * 1e3
    print(f"actor forward batch 1: {ms:.2f} ms")
    assert ms < 50  # ~1.5 ms on 2 cores; loose bound against gross regressions only


def test_training_counters_live_beside_the_config(tmp_path):
    from drqv2_ros.policy.training_counters import TrainingCounters

    policy = DrQV2Policy(small_config())
    policy.training_counters = TrainingCounters(55, 2, 7)
    out = policy.save_pretrained(tmp_path / "ckpt")
    assert "main_loop_iterations" not in json.loads((out / CONFIG_NAME).read_text())
    assert DrQV2Policy.from_pretrained(out).training_counters == TrainingCounters(55, 2, 7)
    # a folder of an older version: the counters inside config.json are taken from there
    cfg = json.loads((out / CONFIG_NAME).read_text())
    cfg.update(main_loop_iterations=99, global_env_episode=3,
               defaulted=cfg["defaulted"] + ["pretrain_step"])
    (out / CONFIG_NAME).write_text(json.dumps(cfg))
    (out / "counters.json").unlink()
    assert DrQV2Policy.from_pretrained(out).training_counters == TrainingCounters(99, 0, 3)
    (out / "counters.json").write_text('{"main_loop_iterations": -1}')
    with pytest.raises(CheckpointError, match="counters.json"):
        DrQV2Policy.from_pretrained(out)
