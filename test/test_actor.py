"""The actor (ROS-free): one contract for every policy that may act, every input range-checked
and counted per reason, missed ticks counted as ticks, checkpoint loading in a child process
with a timeout."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from drqv2_ros.acting.actor import Actor, TickClock
from drqv2_ros.acting.contract import IncompatibleCheckpoint
from drqv2_ros.acting.control_loop import LoopConfig
from drqv2_ros.acting.loader import load_isolated
from drqv2_ros.acting.policy_runner import PolicyRunner
from drqv2_ros.acting.weights import WeightsError, WeightsPacket, actor_state_bytes
from drqv2_ros.policy.configuration_drqv2 import PICK101_LOW_DIM_LAYOUT_21, DrQV2Config
from drqv2_ros.policy.file_limits import CheckpointError
from drqv2_ros.policy.modeling_drqv2 import DrQV2Policy
from drqv2_ros.robot.backend import JOINT_NAMES
from drqv2_ros.robot.kinematics import Kinematics

S = 1_000_000_000
NOW = 1_000 * S


def small(**kw):
    base = dict(image_height=24, image_width=24, frame_stack=2, low_dim_size=36,
                low_dim_per_frame=18, actor_mlp_nodes=[16], critic_mlp_nodes=[16],
                encoder_channels=4, bottleneck_size=8)
    base.update(kw)
    return DrQV2Policy(DrQV2Config(**base))


@pytest.fixture(scope="module")
def kin():
    return Kinematics()


def make_actor(kin, policy=None, **kw):
    return Actor(PolicyRunner(policy or small()), LoopConfig(max_episode_steps=0),
                 kinematics=kin, control_rate_hz=10.0, **kw)


def feed(actor, t_ns, q=None):
    q = np.zeros(6) if q is None else q
    assert actor.on_image(np.zeros((24, 24, 3), np.uint8), t_ns, t_ns)
    assert actor.on_joints(JOINT_NAMES, q, np.zeros(6), t_ns, t_ns)


# ---------------------------------------------------------------- the checkpoint contract
@pytest.mark.parametrize("change,why", [
    (dict(frame_stack=3, low_dim_size=54), "frame_stack is 3, the running loop has 2"),
    (dict(action_dim=3), "action_dim is 3"),
    (dict(image_height=32, image_width=32), "image_height is 32"),
    (dict(low_dim_layout=[["joint_pos", 6, "deg"], ["joint_vel", 6, "rad/s"],
                          ["gripper_xyz", 3, "m"], ["gripper_euler", 3, "rad"]]),
     "low_dim_layout"),
])
def test_a_swap_that_does_not_fit_the_loop_is_refused_and_the_old_policy_acts(kin, change, why):
    actor = make_actor(kin)
    old = actor.runner
    with pytest.raises(IncompatibleCheckpoint, match=why):
        actor.install(PolicyRunner(small(**change)), hot_swap=True)
    assert actor.runner is old and actor.refused_swaps == 1 and actor.hot_swaps == 0
    actor.loop.start_episode(NOW)
    feed(actor, NOW)
    assert actor.tick(NOW, 0.0).command is not None


def test_a_schedule_or_weights_that_produce_nan_are_refused(kin):
    actor = make_actor(kin)
    bad = PolicyRunner(small())
    bad.config.stddev_schedule = "linear(1.0,0.1,0)"  # set after the config's own check
    with pytest.raises(IncompatibleCheckpoint, match="durations"):
        actor.install(bad)
    huge = small()
    with torch.no_grad():  # finite weights whose forward pass overflows to NaN
        for p in huge.actor.parameters():
            p.fill_(3e38)
    with pytest.raises(IncompatibleCheckpoint, match="dry-run"):
        actor.install(PolicyRunner(huge))
    nan = small()
    with torch.no_grad():
        next(nan.actor.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(IncompatibleCheckpoint, match="NaN/Inf"):
        actor.install(PolicyRunner(nan))


def test_privileged_layout_needs_the_sim_and_unknown_fields_are_refused(kin):
    cfg = dict(low_dim_size=42, low_dim_per_frame=21, low_dim_layout=PICK101_LOW_DIM_LAYOUT_21)
    with pytest.raises(IncompatibleCheckpoint, match="PRIVILEGED"):
        make_actor(kin, small(**cfg))
    actor = make_actor(kin, small(**cfg), privileged_low_dim="sim_state")
    assert actor.needs_cube
    odd = dict(low_dim_size=36, low_dim_per_frame=18, low_dim_layout=[["force", 18, "N"]])
    with pytest.raises(IncompatibleCheckpoint, match="'force' cannot be filled"):
        make_actor(kin, small(**odd))


def test_learner_weights_of_another_architecture_refused(kin):
    actor = make_actor(kin)
    other = small(actor_mlp_nodes=[32])
    pkt = WeightsPacket.make(actor_state_bytes(other), version=1, learner_step=5, run_id="r")
    with pytest.raises(WeightsError):
        actor.runner_from_weights(pkt)
    ok = actor.runner_from_weights(WeightsPacket.make(actor_state_bytes(small()), version=2,
                                                      learner_step=7, run_id="r"))
    assert ok.weights_version == 2 and ok.schedule_step == 7
    assert actor.runner.weights_version == -1  # untouched until installed
    assert actor.install(ok, replaces=actor.runner) and actor.runner is ok
    stale = actor.runner_from_weights(WeightsPacket.make(actor_state_bytes(small()), version=3,
                                                         learner_step=9, run_id="r"))
    actor.install(PolicyRunner(small()), hot_swap=True)
    assert not actor.install(stale, replaces=ok)  # a hot-swap happened meanwhile: it wins


# ---------------------------------------------------------------- inputs, range-checked
def test_a_stray_frame_of_another_size_is_dropped_not_used_for_validation(kin):
    actor = make_actor(kin)
    assert not actor.on_image(np.zeros((84, 84, 3), np.uint8), NOW, NOW)
    assert actor.dropped["image: wrong size"] == 1
    actor.install(PolicyRunner(small()), hot_swap=True)  # a good checkpoint still fits
    assert actor.hot_swaps == 1


@pytest.mark.parametrize("q,v,reason", [
    (np.full(6, 1e6), np.zeros(6), "out of joint limits"),
    (np.degrees(np.full(6, 1.0)), np.zeros(6), "out of joint limits"),   # degrees as radians
    (np.zeros(6), np.full(6, 1e30), "velocity out of range"),
    (np.full(6, np.nan), np.zeros(6), "non-finite"),
])
def test_joint_states_out_of_range_are_dropped_and_counted(kin, q, v, reason):
    actor = make_actor(kin)
    assert not actor.on_joints(JOINT_NAMES, q, v, NOW, NOW)
    assert actor.dropped[f"joint_states: {reason}"] == 1
    actor.loop.start_episode(NOW)
    assert actor.on_image(np.zeros((24, 24, 3), np.uint8), NOW, NOW)
    assert actor.tick(NOW, 0.0).command is None  # nothing commanded from it


def test_future_stamps_are_refused_so_a_stopped_stream_goes_stale(kin):
    actor = make_actor(kin)
    actor.loop.start_episode(NOW)
    future = NOW + 10 * S
    assert not actor.on_image(np.zeros((24, 24, 3), np.uint8), future, NOW)
    assert not actor.on_joints(JOINT_NAMES, np.zeros(6), np.zeros(6), future, NOW)
    assert actor.dropped["image: future stamp"] == 1
    assert actor.dropped["joint_states: future stamp"] == 1
    feed(actor, NOW)
    assert actor.tick(NOW, 0.0).command is not None
    assert actor.tick(NOW + S, 1.0).skipped == "stale image"   # the stream stopped


@pytest.mark.parametrize("action,reason", [
    ([1e9, -1e9, 5, -7], "out of range"), ([np.nan, 0, 0, 0], "non-finite"),
    ([0.1, 0.2], "wrong length"), ([], "wrong length"),
])
def test_bad_operator_actions_are_counted_never_executed_or_stored(kin, action, reason):
    actor = make_actor(kin)
    actor.loop.start_episode(NOW)
    assert not actor.on_operator(True, action, NOW)
    assert actor.dropped[f"intervention: {reason}"] == 1
    feed(actor, NOW)
    res = actor.tick(NOW, 0.0)
    assert not res.is_intervention  # the policy acted
    feed(actor, NOW + S // 10)
    step = actor.tick(NOW + S // 10, 0.1).step
    assert not step.is_intervention and np.all(np.abs(step.action) <= 1)


def test_a_valid_operator_action_is_executed_and_stored(kin):
    actor = make_actor(kin)
    actor.loop.start_episode(NOW)
    feed(actor, NOW)
    assert actor.on_operator(True, [0.5, -0.5, 1.0, -1.0], NOW)
    res = actor.tick(NOW, 0.0)
    assert res.is_intervention and res.command.tolist() == [0.5, -0.5, 1.0, -1.0]


def test_a_human_action_is_used_only_while_its_input_is_fresh(kin):
    """The deadman promise: when the Joy stream stops with the deadman held, the teleop's
    heartbeats keep the last input's stamp, and the policy acts on the human action only
    while that input is younger than intervention_timeout_s (0.45 s, 50 ms inside the
    teleop's 0.5 s joy_timeout), however late or often the messages arrive."""
    actor = make_actor(kin)
    actor.loop.start_episode(NOW)
    human = [0.5, -0.5, 1.0, -1.0]
    last_joy = NOW
    ms = S // 1000
    for t in range(0, 600, 50):  # heartbeats every 50 ms, all stamped with the last Joy
        now = NOW + t * ms
        assert actor.on_operator(True, human, last_joy, now)
        feed(actor, now)
        res = actor.tick(now, t / 1000)
        assert res.is_intervention == (t <= 450), t
        if t > 450:
            assert res.command is None or res.command.tolist() != human or not res.is_intervention
    # a stamp from the future (another machine's clock) is refused, not trusted to extend it
    assert not actor.on_operator(True, human, NOW + 10 * S, NOW + 600 * ms)
    assert actor.dropped["intervention: future stamp"] == 1
    assert not actor.on_operator(True, human, 0, NOW)  # no stamp at all
    assert actor.dropped["intervention: no stamp"] == 1


def test_missed_ticks_are_counted_as_ticks():
    clock = TickClock(10.0)
    for t in (0.0, 0.1, 0.2, 5.0, 5.1, 5.4, 5.52):
        clock.tick(t)
    assert clock.missed == 47 + 2  # a 4.8 s stall misses 47 ticks, a 0.3 s gap 2, 0.12 s none
    assert clock.max_gap == pytest.approx(4.8)


def test_wait_for_tick_returns_after_the_next_tick(kin):
    actor = make_actor(kin)
    assert not actor.wait_for_tick(0.05)  # no loop ticking: a bounded wait, nothing held up
    done = []
    waiter = threading.Thread(target=lambda: done.append(actor.wait_for_tick(5.0)))
    waiter.start()
    time.sleep(0.2)
    assert not done  # still waiting: the tick has not run
    actor.tick(NOW, 0.0)
    waiter.join(5.0)
    assert done == [True]


def test_late_ticks_are_not_missed_ticks():
    # ROS timers keep their phase: a tick 80 ms late (a 180 ms gap, then 20 ms) used no slot
    # less; only a slot that got no tick is missed. A late first tick moves the origin.
    clock = TickClock(10.0)
    for t in (0.05, 0.1, 0.2, 0.38, 0.4, 0.5, 0.6, 0.79, 0.8):
        clock.tick(t)
    assert (clock.missed, clock.late) == (0, 2)
    clock.tick(1.03)  # slot 0.9 had no tick; 1.03 is slot 1.0, 30 ms late
    assert (clock.missed, clock.late) == (1, 2)
    assert clock.max_gap == pytest.approx(0.23)


# ---------------------------------------------------------------- isolated loading
def test_loading_in_a_child_process_with_root_and_timeout(tmp_path, kin):
    small().save_pretrained(tmp_path / "root" / "ok")
    runner = load_isolated(tmp_path / "root" / "ok", root=str(tmp_path / "root"))
    assert runner.summary()["image"] == [24, 24]
    assert not any(p.numel() for p in runner.policy.critic.parameters())  # actor parts only
    make_actor(kin).install(runner)
    small().save_pretrained(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="outside the allowed checkpoint root"):
        load_isolated(tmp_path / "elsewhere", root=str(tmp_path / "root"))
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match="did not finish within"):
        load_isolated(tmp_path / "root" / "ok", timeout_s=0.05)
    assert time.monotonic() - t0 < 5.0
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(CheckpointError, match="named pipe"):
        load_isolated(tmp_path / "pipe", timeout_s=30)
    assert load_isolated(tmp_path / "root" / "ok").summary()["frame_stack"] == 2  # still works


def test_a_stuck_load_is_stopped_and_the_next_load_gets_a_fresh_loader(tmp_path):
    from drqv2_ros.acting.loader import CheckpointLoader

    small().save_pretrained(tmp_path / "ok")
    loader = CheckpointLoader(timeout_s=0.05)  # the child cannot even import torch this fast
    try:
        with pytest.raises(CheckpointError, match="did not finish within"):
            loader.load(tmp_path / "ok")
        loader.timeout_s = 60.0
        first = loader.load(tmp_path / "ok")
        pid = loader._child.pid
        with pytest.raises(CheckpointError, match="no such checkpoint"):
            loader.load(tmp_path / "missing")
        assert loader.load(tmp_path / "ok").summary() == first.summary()
        assert loader._child.pid == pid  # refusals keep the warm child
    finally:
        loader.close()


def test_the_loader_child_outlives_a_ctrl_c_quietly(tmp_path, capfd):
    """Ctrl-C in a terminal signals the whole process group: the loader child ignores it
    (its parent ends it by closing the pipe), keeps serving loads, and prints no traceback
    into the node's log; closing the loader ends it."""
    import signal

    from drqv2_ros.acting.loader import CheckpointLoader

    small().save_pretrained(tmp_path / "ok")
    loader = CheckpointLoader(timeout_s=60.0)
    try:
        first = loader.load(tmp_path / "ok")
        child = loader._child
        child.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert child.poll() is None
        assert loader.load(tmp_path / "ok").summary() == first.summary()
        assert loader._child is child
    finally:
        loader.close()
    assert child.poll() is not None
    assert "Traceback" not in capfd.readouterr().err


def test_the_loader_child_exits_quietly_when_its_parent_is_gone(tmp_path):
    """A parent that dies while the child loads: the answer meets a closed pipe, and the
    child exits 0 without a traceback."""
    import json
    import subprocess
    import sys

    small().save_pretrained(tmp_path / "ok")
    child = subprocess.Popen([sys.executable, "-m", "drqv2_ros.acting.loader"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.close()  # nobody reads the answer
    child.stdin.write(json.dumps({"path": str(tmp_path / "ok"),
                                  "max_file_bytes": 1 << 30}).encode() + b"\n")
    child.stdin.close()
    err = child.stderr.read()  # until the child exits
    assert child.wait(timeout=120) == 0, err.decode()
    assert b"Traceback" not in err and b"Exception ignored" not in err, err.decode()


def test_the_loader_carries_the_checkpoints_counters(tmp_path):
    from drqv2_ros.policy.training_counters import TrainingCounters

    p = small()
    p.training_counters = TrainingCounters(main_loop_iterations=777)
    p.save_pretrained(tmp_path / "ckpt")
    assert load_isolated(tmp_path / "ckpt").schedule_step == 777


def test_the_loader_cannot_answer_the_wrong_request(tmp_path):
    """A child that writes one well-formed answer before its real one (or after it) would
    shift every later reply by one: a random-bytes .pt answered "success", the next good
    load refused with the previous reason. Each answer carries its request's id: the
    mismatch is noticed, the child replaced, the request answered by a fresh one."""
    import sys

    from drqv2_ros.acting.loader import CheckpointLoader

    p = small()
    p.save_pretrained(tmp_path / "ok")
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    marker = tmp_path / "injected"
    cfg = p.config.to_json().encode()
    # the first child injects a well-formed "O" answer (a good config, an empty blob) before
    # it reads anything, then serves as the real child does
    injector = (
        "import os, struct, sys\n"
        f"m = {str(marker)!r}\n"
        "if not os.path.exists(m):\n"
        "    open(m, 'w').close()\n"
        f"    cfg = {cfg!r}\n"
        "    q = struct.Struct('<Q')\n"
        "    sys.stdout.buffer.write(b'O' + q.pack(len(cfg)) + cfg + q.pack(0) + b'')\n"
        "    sys.stdout.buffer.flush()\n"
        "from drqv2_ros.acting.loader import child_main\n"
        "sys.exit(child_main())\n")

    class Injected(CheckpointLoader):
        command = (sys.executable, "-c", injector)

    loader = Injected(timeout_s=60.0)
    try:
        with pytest.raises(CheckpointError) as exc:
            loader.load(bad)
        assert "another request" not in str(exc.value) and marker.exists()
        assert loader.load(tmp_path / "ok").summary()["frame_stack"] == 2
    finally:
        loader.close()
    # a child that answers every request twice, the second time "refused: stale": the stray
    # answer waiting in the pipe is caught before the next request, never read as its answer
    twice = ("import sys\n"
             "import drqv2_ros.acting.loader as L\n"
             "real = L._answer\n"
             "def _answer(out, tag, rid, *parts):\n"
             "    real(out, tag, rid, *parts)\n"
             "    real(out, b'E', rid, b'stale answer')\n"
             "L._answer = _answer\n"
             "sys.exit(L.child_main())\n")

    class Twice(CheckpointLoader):
        command = (sys.executable, "-c", twice)

    loader = Twice(timeout_s=60.0)
    try:
        assert loader.load(tmp_path / "ok").summary()["frame_stack"] == 2
        with pytest.raises(CheckpointError) as exc:
            loader.load(bad)
        assert "stale" not in str(exc.value)
        assert loader.load(tmp_path / "ok").summary()["frame_stack"] == 2
    finally:
        loader.close()
