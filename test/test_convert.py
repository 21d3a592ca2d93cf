"""Tests of the RoboBase snapshot converter, the restricted unpickler and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import small_models
import torch
from safetensors.torch import load_file

from drqv2_ros.convert import (
    CheckpointError,
    UnsafePickleError,
    convert_snapshot,
    load_checkpoint_any,
    make_robobase_snapshot,
    policy_from_snapshot,
    safe_torch_load,
    to_plain,
)
from drqv2_ros.convert.cli import convert_main
from drqv2_ros.convert.robobase_writer import robobase_state_dict
from drqv2_ros.policy import DrQV2Config, DrQV2Model, DrQV2Policy
from drqv2_ros.policy.modeling_drqv2 import WEIGHTS_NAME
from drqv2_ros.policy.training_counters import TrainingCounters

SHARED = Path(
    os.environ.get("DRQV2_SHARED_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared"
)
FIXTURE = SHARED / "fixtures" / "robobase_drqv2_pick101_54"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason=f"shared fixtures dir {SHARED} not present (set DRQV2_SHARED_DIR)",
)


COUNTERS = TrainingCounters(main_loop_iterations=77, global_env_episode=5)


def small_config(**kw) -> DrQV2Config:
    base = dict(num_train_envs=2)
    base.update(kw)
    return small_models.small_config(**base)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was created"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, leftovers


# ------------------------------------------------------------------- the real snapshot
@pytest.fixture(scope="module")
def converted_real(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip(f"shared fixtures dir {SHARED} not present (set DRQV2_SHARED_DIR)")
    out = tmp_path_factory.mktemp("real") / "pick101"
    report = convert_snapshot(FIXTURE / "latest_snapshot.pt", out, progress=False)
    return out, report


@needs_shared
def test_real_snapshot_reproduces_reference_outputs(converted_real):
    out, report = converted_real
    policy = DrQV2Policy.from_pretrained(out)
    ref = torch.load(FIXTURE / "reference_outputs.pt", weights_only=True)
    with torch.no_grad():
        fused = policy.encode(ref["rgb"])
        mean = policy.actor_mean(ref["low_dim"], fused)
        q = policy.critic(ref["low_dim"], fused, ref["action"])
        qt = policy.critic_target(ref["low_dim"], fused, ref["action"])
    errs = {
        "fused": (fused - ref["fused"]).abs().max().item(),
        "actor_mean": (mean - ref["actor_mean"].reshape(mean.shape)).abs().max().item(),
        "q": (q - ref["q"]).abs().max().item(),
        "q_target": (qt - ref["q_target"]).abs().max().item(),
    }
    print("max abs error vs RoboBase reference:", errs)
    assert all(e < 1e-4 for e in errs.values()), errs
    # the policy API gives the same mean
    batch = {"observation.images.rgb": ref["rgb"][:, 0], "observation.state": ref["low_dim"]}
    assert torch.allclose(policy.select_action(batch), mean, atol=1e-6)


@needs_shared
def test_real_snapshot_config_and_round_trip(converted_real, tmp_path):
    out, report = converted_real
    cfg = json.loads((out / "config.json").read_text())
    expect = {
        "type": "drqv2", "camera_names": ["rgb"], "num_views": 1, "channels_per_frame": 3,
        "image_height": 84, "image_width": 84, "frame_stack": 3, "low_dim_size": 54,
        "low_dim_per_frame": 18, "action_dim": 4, "encoder_channels": 32,
        "bottleneck_size": 50, "actor_mlp_nodes": [256, 256], "critic_mlp_nodes": [256, 256],
        "num_critics": 2, "stddev_schedule": "linear(1.0,0.1,500000)", "stddev_clip": 0.3,
        "critic_target_tau": 0.01, "discount": 0.99, "nstep": 3, "num_train_envs": 8,
        "action_scale_m": 0.02,
    }
    assert {k: cfg[k] for k in expect} == expect
    # the training counters are not configuration: counters.json beside it
    assert not {"main_loop_iterations", "global_env_episode"} & set(cfg)
    assert json.loads((out / "counters.json").read_text()) == {
        "main_loop_iterations": 1234, "pretrain_step": 0, "global_env_episode": 56}
    assert "action_scale_m" in cfg["defaulted"] and "discount" not in cfg["defaulted"]
    assert report.carried["discount"]["from"] == "cfg.replay.gamma"
    tensors = load_file(str(out / WEIGHTS_NAME))
    assert len(tensors) == 78
    assert not any(k.endswith("hidden_state") or k.startswith("actor_model.") for k in tensors)
    assert len(report.dropped_keys) == 6 + 14

    first = DrQV2Policy.from_pretrained(out)
    first.save_pretrained(tmp_path / "again")
    second = DrQV2Policy.from_pretrained(tmp_path / "again")
    assert second.config == first.config
    s1, s2 = first.state_dict(), second.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    # hot-swap helper: folder and .pt give identical weights
    from_pt = load_checkpoint_any(FIXTURE / "latest_snapshot.pt")
    s3 = from_pt.state_dict()
    assert all(torch.equal(s1[k], s3[k]) for k in s1)


# ----------------------------------------------------------------- synthetic snapshots
def test_synthetic_snapshot_multi_camera(tmp_path):
    cfg = small_config(
        camera_names=["wrist", "front"], num_views=2, frame_stack=1, low_dim_size=21,
        low_dim_per_frame=21, action_dim=7, actor_mlp_nodes=[64], critic_mlp_nodes=[64, 48],
        num_critics=3, low_dim_layout=[("a", 21, "rad")],
    )
    snap = make_robobase_snapshot(tmp_path / "snap.pt", cfg, seed=3, counters=COUNTERS)
    raw = safe_torch_load(snap)
    assert sorted(raw) == sorted(
        ["_pretrain_step", "_main_loop_iterations", "_global_env_episode", "cfg", "agent"]
    )
    assert type(raw["cfg"]).__name__ == "DictConfig"
    assert raw["agent"]["critic.qs.0.hidden_state"].shape == (1, 3, 128)
    report = convert_snapshot(snap, tmp_path / "out", progress=False)
    got = report.config
    for name in ["num_views", "frame_stack", "low_dim_size", "action_dim", "num_critics",
                 "actor_mlp_nodes", "critic_mlp_nodes", "image_height", "encoder_channels",
                 "bottleneck_size"]:
        assert getattr(got, name) == getattr(cfg, name), name
    assert report.counters == COUNTERS
    assert got.camera_names == ["wrist", "front"]  # from cfg.env.cameras
    assert "camera_names" not in got.defaulted
    # outputs equal to the model the snapshot was made from
    policy = DrQV2Policy.from_pretrained(tmp_path / "out")
    sd = {k: v for k, v in raw["agent"].items() if not k.endswith("hidden_state")}
    for k, v in policy.state_dict().items():
        assert torch.equal(v, sd[k])


def test_cfg_to_plain_resolves_only_plain_references():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"a": {"b": 3}, "c": "${a.b}", "d": "x${a.b}y", "e": "${oc.env:HOME}", "f": "???"}
    )
    plain = to_plain(cfg)
    assert plain == {"a": {"b": 3}, "c": 3, "d": "x3y", "e": "${oc.env:HOME}", "f": "???"}


# ---------------------------------------------------------------------- hostile pickles
class _Hostile:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_hostile_pickle_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "PWNED"
    cmd = f"touch {marker}"
    payload = {
        "os.system": _Hostile(os.system, cmd),
        "builtins.eval": _Hostile(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Hostile(subprocess.Popen, ["touch", str(marker)]),
    }[kind]
    good = make_robobase_snapshot(tmp_path / "good.pt", small_config(), seed=0)
    snap = safe_torch_load(good)
    snap["cfg"] = payload
    evil = tmp_path / "evil.pt"
    torch.save(snap, evil)
    out = tmp_path / "out"
    with pytest.raises(UnsafePickleError) as info:
        convert_snapshot(evil, out, progress=False)
    msg = str(info.value)
    names = {"os.system": ("os.system", "posix.system"), "builtins.eval": ("builtins.eval",),
             "subprocess.Popen": ("subprocess.Popen",)}[kind]
    assert any(n in msg for n in names), msg
    assert not marker.exists()
    assert_nothing_written(out)
    with pytest.raises(UnsafePickleError):
        load_checkpoint_any(evil)
    assert not marker.exists()


# ---------------------------------------------------------------------- bad inputs
def _bad_snapshots(tmp: Path) -> dict[str, tuple[Path, str]]:
    cfg = small_config()
    good = make_robobase_snapshot(tmp / "good.pt", cfg, seed=1)
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp / "nope.pt", "file not found")
    (tmp / "text.pt").write_text("hello, not a checkpoint\n")
    cases["not_torch"] = (tmp / "text.pt", "not a torch file")
    data = good.read_bytes()
    (tmp / "trunc.pt").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp / "trunc.pt", "truncated")
    torch.save({"weights": torch.zeros(2)}, tmp / "other.pt")
    cases["missing_keys"] = (tmp / "other.pt", r"missing keys \['agent', 'cfg'\]")
    make_robobase_snapshot(
        tmp / "nocritic.pt", cfg, seed=1, agent_overrides={"critic.qs.0.out_mlp.0.weight": None}
    )
    cases["missing_agent_keys"] = (tmp / "nocritic.pt", "critic.qs.0.out_mlp.0.weight")
    make_robobase_snapshot(
        tmp / "shape.pt", cfg, seed=1,
        agent_overrides={"critic.qs.1.main_mlp.0.weight": torch.zeros(32, 99)},
    )
    cases["inconsistent_shapes"] = (tmp / "shape.pt", "critic.qs.1.main_mlp.0.weight has shape")
    nan_w = torch.zeros(4, 32)
    nan_w[1, 2] = float("nan")
    make_robobase_snapshot(
        tmp / "nan.pt", cfg, seed=1,
        agent_overrides={"actor.actor_model.out_mlp.0.weight": nan_w,
                         "actor_model.out_mlp.0.weight": nan_w},
    )
    cases["nan"] = (tmp / "nan.pt", "NaN/Inf")
    make_robobase_snapshot(
        tmp / "twins.pt", cfg, seed=1,
        agent_overrides={"actor_model.out_mlp.0.bias": torch.ones(4)},
    )
    cases["actor_copies_differ"] = (tmp / "twins.pt", "actor copies differ")
    return cases


def test_bad_inputs_refused_nothing_written(tmp_path, capsys):
    cases = _bad_snapshots(tmp_path)
    for name, (path, pattern) in cases.items():
        out = tmp_path / f"out_{name}"
        with pytest.raises(CheckpointError, match=pattern):
            convert_snapshot(path, out, progress=False)
        assert_nothing_written(out)
        # the CLI: exit code 2, one line on stderr, no traceback
        assert convert_main([str(path), str(out), "--quiet"]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
        assert_nothing_written(out)


def test_existing_out_dir_needs_force(tmp_path, capsys):
    snap = make_robobase_snapshot(tmp_path / "s.pt", small_config(), seed=2, counters=COUNTERS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert convert_main([str(snap), str(out), "--quiet"]) == 2
    assert "use --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert convert_main([str(snap), str(out)]) == 2  # still refused
    capsys.readouterr()
    assert convert_main([str(snap), str(out), "--force"]) == 0
    printed = capsys.readouterr().out
    assert "stddev_schedule" in printed and "defaulted" in printed and "low_dim" in printed
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert DrQV2Policy.from_pretrained(out).training_counters == COUNTERS
    # a failing --force conversion leaves the previous folder intact
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert convert_main([str(tmp_path / "junk.pt"), str(out), "--force", "--quiet"]) == 2
    assert (out / "config.json").is_file()


def test_defaults_reported_when_cfg_lacks_hyperparameters(tmp_path):
    from omegaconf import OmegaConf

    cfg = small_config()
    snap = make_robobase_snapshot(tmp_path / "s.pt", cfg, seed=4)
    raw = safe_torch_load(snap)
    plain = to_plain(raw["cfg"])
    del plain["replay"]["gamma"], plain["method"]["stddev_clip"]
    raw["cfg"] = OmegaConf.create(plain)
    del raw["_global_env_episode"]
    torch.save(raw, tmp_path / "s2.pt")
    policy, report = policy_from_snapshot(tmp_path / "s2.pt")
    assert {"discount", "stddev_clip", "global_env_episode"} <= set(report.defaulted)
    assert policy.config.discount == DrQV2Config().discount
    assert "discount" not in report.carried


def test_robobase_state_dict_layout():
    model = DrQV2Model(small_config())
    sd = robobase_state_dict(model, num_envs=9)
    # RoboBase layout: duplicate actor + one hidden_state per fully-connected module
    assert sum(k.endswith("hidden_state") for k in sd) == 6
    assert len(sd) == len(model.state_dict()) + len(
        [k for k in model.state_dict() if k.startswith("actor.")]
    ) + 6
