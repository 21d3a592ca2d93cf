"""FeetechBackend against LeRobot's real FeetechMotorsBus + scservo_sdk over a fake serial bus.

No hardware: ``fake_feetech_bus.FakeFeetechBus`` answers the Feetech protocol on a pty.
Every test has a timeout; prompts are made to fail loudly (``input`` raises in-process, and
one subprocess runs with stdin at EOF).
"""

from __future__ import annotations

import builtins
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from fake_feetech_bus import PING, SYNC_READ, SYNC_WRITE, TORQUE_ENABLE, FakeFeetechBus

from drqv2_ros.robot.backend import JOINT_NAMES, BackendError
from drqv2_ros.robot.feetech_backend import (
    FeetechBackend,
    FeetechConfig,
    UnitConverter,
    mjcf_gripper_range,
)

pytestmark = pytest.mark.timeout(120)

ROBOT_ID = "test_arm"
# per motor: (homing_offset, range_min, range_max); mid = (min + max) / 2
CAL = {
    1: (-512, 1000, 3000),   # mid 2000
    2: (300, 900, 3100),     # mid 2000
    3: (-40, 1200, 3000),    # mid 2100
    4: (0, 800, 3200),       # mid 2000
    5: (25, 0, 4095),        # mid 2047.5
    6: (-1000, 2000, 3000),  # gripper: 0..100 over 2000..3000
}
STEP_RAD = 2 * math.pi / 4095  # LeRobot's degree scale: 360 deg per 4095 steps


def write_calibration(directory: Path, cal=CAL, robot_id=ROBOT_ID) -> Path:
    data = {
        name: {"id": i, "drive_mode": 0, "homing_offset": cal[i][0],
               "range_min": cal[i][1], "range_max": cal[i][2]}
        for i, name in enumerate(JOINT_NAMES, start=1)
    }
    path = directory / f"{robot_id}.json"
    path.write_text(json.dumps(data, indent=4))
    return path


@pytest.fixture(autouse=True)
def no_prompt(monkeypatch):
    def _input(*_a, **_k):
        raise AssertionError("the backend let LeRobot prompt for input")

    monkeypatch.setattr(builtins, "input", _input)


@pytest.fixture
def bus():
    with FakeFeetechBus() as b:
        b.set_calibration(CAL)
        yield b


@pytest.fixture
def cal_dir(tmp_path):
    write_calibration(tmp_path)
    return tmp_path


def make_backend(bus, cal_dir, **kw) -> FeetechBackend:
    return FeetechBackend(FeetechConfig(port=bus.port, robot_id=ROBOT_ID,
                                        calibration_dir=str(cal_dir), **kw))


@pytest.fixture
def backend(bus, cal_dir):
    be = make_backend(bus, cal_dir, max_relative_target_rad=None)
    be.connect()
    yield be
    be.close()


def test_gripper_range_comes_from_mjcf():
    lo, hi = mjcf_gripper_range()
    assert lo == pytest.approx(-0.17453, abs=1e-4) and hi == pytest.approx(1.74533, abs=1e-4)


def test_read_positions_in_radians(bus, backend):
    bus.set_present({1: 2000 + 1024, 2: 2000 - 512, 3: 2100, 4: 2000 + 100, 5: 2047,
                     6: 2250})
    q, v = backend.read_joints()
    assert q.shape == (6,) and v.shape == (6,)
    np.testing.assert_allclose(q[:5], [1024 * STEP_RAD, -512 * STEP_RAD, 0.0, 100 * STEP_RAD,
                                       -0.5 * STEP_RAD], atol=1e-9)
    assert abs(q[0] - math.pi / 2) < 1e-3  # a quarter turn reads ~pi/2, not ~90
    lo, hi = mjcf_gripper_range()
    assert q[5] == pytest.approx(lo + 0.25 * (hi - lo))  # 25 % of the calibrated range
    np.testing.assert_array_equal(v, 0.0)  # first read: no velocity estimate yet


def test_velocity_is_finite_difference(bus, backend):
    bus.set_present({1: 2000})  # q = 0 at the calibrated mid-range
    t_outer = time.monotonic()
    backend.read_joints()
    time.sleep(0.05)
    bus.set_present({1: 2000 + 100})
    q, v = backend.read_joints()
    outer = time.monotonic() - t_outer
    assert q[0] == pytest.approx(100 * STEP_RAD)
    # v = dq / dt between the two reads' timestamps: 0.05 s <= dt <= the outer interval
    assert q[0] / outer <= v[0] <= q[0] / 0.05
    np.testing.assert_allclose(v[1:], 0.0, atol=1e-9)
    _, v2 = backend.read_joints()  # no motion since: the estimate returns to zero
    time.sleep(0.01)
    _, v3 = backend.read_joints()
    np.testing.assert_allclose(v3, 0.0, atol=1e-9)
    assert v2.shape == (6,)


def test_write_goal_positions_in_motor_units(bus, backend):
    lo, hi = mjcf_gripper_range()
    bus.set_present({1: 2000, 2: 2000, 3: 2100, 4: 2000, 5: 2047, 6: 2500})
    writes = bus.count(SYNC_WRITE)
    backend.write_joint_targets(np.array([0.5, -0.25, 0.0, 0.1, 1.0, lo + 0.75 * (hi - lo)]))
    assert bus.wait_for(SYNC_WRITE, writes + 1)  # a broadcast: no status packet to wait on
    mids = [2000, 2000, 2100, 2000, 2047.5]
    for motor, (rad, mid) in enumerate(zip([0.5, -0.25, 0.0, 0.1, 1.0], mids), start=1):
        # the nearest tick (LeRobot truncates: the backend sends the tick's centre)
        assert bus.goal(motor) == round(math.degrees(rad) * 4095 / 360 + mid)
    assert bus.goal(6) == 2750
    # reported: the ticks on the wire, within half a tick of the request
    np.testing.assert_allclose(backend.last_sent_targets[:5], [0.5, -0.25, 0.0, 0.1, 1.0],
                               atol=STEP_RAD / 2 + 1e-12)


def test_per_step_clamp(bus, cal_dir):
    be = make_backend(bus, cal_dir, max_relative_target_rad=0.1)
    be.connect()
    try:
        bus.set_present({1: 2000, 2: 2000, 3: 2100, 4: 2000, 5: 2047, 6: 2500})
        q, _ = be.read_joints()
        reads, writes = bus.count(SYNC_READ), bus.count(SYNC_WRITE)
        target = q.copy()
        target[0] += 1.0   # far: clamped to +0.1 rad
        target[1] -= 0.05  # within the clamp: unchanged
        target[5] += 1.0   # gripper too: +0.1 rad of gripper joint
        be.write_joint_targets(target)
        assert bus.wait_for(SYNC_WRITE, writes + 1)
        assert bus.count(SYNC_READ) == reads + 1  # LeRobot reads the present position
        sent = be.last_sent_targets
        assert sent[0] == pytest.approx(q[0] + 0.1, abs=STEP_RAD)  # ticks on the wire
        assert sent[1] == pytest.approx(q[1] - 0.05, abs=STEP_RAD)
        lo, hi = mjcf_gripper_range()
        assert sent[5] == pytest.approx(q[5] + 0.1, abs=(hi - lo) / 1000)
        assert bus.goal(1) == int(math.degrees(0.1) * 4095 / 360 + 2000)
        lo, hi = mjcf_gripper_range()
        assert bus.goal(6) == int((0.5 + 0.1 / (hi - lo)) * 1000 + 2000)
        assert abs(bus.goal(1) - 2000) * STEP_RAD <= 0.1 + 1e-9
    finally:
        be.close()


def test_unit_converter_round_trip():
    conv = UnitConverter(mjcf_gripper_range())
    q = np.array([0.3, -1.2, 1.0, -0.4, 2.5, 0.9])
    np.testing.assert_allclose(conv.to_radians(conv.to_lerobot(q)), q)
    assert conv.to_lerobot(q)["shoulder_pan.pos"] == pytest.approx(math.degrees(0.3))


def test_missing_calibration_is_a_clear_error(bus, tmp_path):
    be = FeetechBackend(port=bus.port, robot_id="never_calibrated", calibration_dir=str(tmp_path))
    with pytest.raises(BackendError) as err:
        be.connect()
    msg = str(err.value)
    assert "lerobot-calibrate --robot.type=so101_follower" in msg
    assert f"--robot.port={bus.port}" in msg and "--robot.id=never_calibrated" in msg
    assert str(tmp_path / "never_calibrated.json") in msg
    assert bus.count(PING) == 0  # decided before touching the bus


def test_mismatched_calibration_raises_without_prompt(bus, tmp_path):
    other = dict(CAL)
    other[2] = (0, 1000, 3000)  # the file disagrees with motor 2's registers
    write_calibration(tmp_path, other)
    be = make_backend(bus, tmp_path)
    with pytest.raises(BackendError, match="do not match") as err:
        be.connect()
    assert "lerobot-calibrate --robot.type=so101_follower" in str(err.value)
    assert bus.register(2, (9, 2)) == CAL[2][1]  # nothing was written to the motors
    with pytest.raises(BackendError, match="not connected"):
        be.read_joints()


def test_write_calibration_to_motors_opt_in(bus, tmp_path):
    other = dict(CAL)
    other[2] = (7, 1000, 3000)
    write_calibration(tmp_path, other)
    be = make_backend(bus, tmp_path, write_calibration_to_motors=True)
    be.connect()
    try:
        assert bus.register(2, (31, 2)) == 7
        assert (bus.register(2, (9, 2)), bus.register(2, (11, 2))) == (1000, 3000)
    finally:
        be.close()


def test_close_disables_torque_and_is_idempotent(bus, cal_dir):
    be = make_backend(bus, cal_dir)
    be.connect()
    assert all(bus.register(i, TORQUE_ENABLE) == 1 for i in range(1, 7))
    be.close()
    be.close()
    assert all(bus.register(i, TORQUE_ENABLE) == 0 for i in range(1, 7))


def test_unplugged_bus_raises_promptly(bus, cal_dir):
    be = make_backend(bus, cal_dir, max_relative_target_rad=0.2)
    be.connect()
    try:
        bus.answering = False
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="lost the SO-101"):
            be.read_joints()
        # a write reads the present position first (for the clamp): it fails too. Without
        # the clamp a write is a broadcast SYNC_WRITE that no servo acknowledges.
        with pytest.raises(BackendError, match="lost the SO-101"):
            be.write_joint_targets(np.zeros(6))
        assert time.monotonic() - t0 < 5.0
    finally:
        be.close()  # torque-off fails on a silent bus: logged, not raised


def test_bad_port_is_a_backend_error(cal_dir):
    be = FeetechBackend(port="/dev/does-not-exist", robot_id=ROBOT_ID,
                        calibration_dir=str(cal_dir))
    with pytest.raises(BackendError, match="cannot connect"):
        be.connect()


def test_no_prompt_with_stdin_closed(tmp_path):
    """In a fresh process with stdin at EOF: missing and mismatched calibrations both give
    BackendError (a prompt would raise EOFError instead, or hang)."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from fake_feetech_bus import FakeFeetechBus
        from test_feetech_backend import CAL, write_calibration
        from pathlib import Path
        from drqv2_ros.robot.backend import BackendError
        from drqv2_ros.robot.feetech_backend import FeetechBackend
        d = Path({str(tmp_path)!r})
        other = dict(CAL); other[1] = (0, 0, 4095)
        write_calibration(d, other, robot_id="mismatch")
        with FakeFeetechBus() as bus:
            bus.set_calibration(CAL)
            for rid in ("missing", "mismatch"):
                try:
                    FeetechBackend(port=bus.port, robot_id=rid, calibration_dir=str(d)).connect()
                    print(rid, "CONNECTED")
                except BackendError as e:
                    print(rid, "BackendError", "lerobot-calibrate" in str(e))
    """)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-c", script], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=90, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "missing BackendError True" in out.stdout
    assert "mismatch BackendError True" in out.stdout, out.stdout + out.stderr[-2000:]


def _follower(cal_dir, use_degrees=True):
    from drqv2_ros.robot.feetech_backend import import_lerobot_follower

    follower_cls, config_cls = import_lerobot_follower()
    return follower_cls(config_cls(port="/dev/null", id=ROBOT_ID, calibration_dir=cal_dir,
                                   use_degrees=use_degrees))


@pytest.mark.parametrize("use_degrees", [True, False])
def test_holding_the_measured_position_writes_exactly_the_present_tick(cal_dir, use_degrees):
    """LeRobot's own normalise/unnormalise (no bus needed): for every tick of every motor,
    present tick -> radians -> our write -> the tick LeRobot puts on the wire is the same."""
    robot = _follower(cal_dir, use_degrees)
    bus = robot.bus
    conv = UnitConverter(mjcf_gripper_range(), use_degrees, robot.calibration)
    naive = UnitConverter(mjcf_gripper_range(), use_degrees, robot.calibration)
    naive.ticks = None  # the conversion before the fix: radians -> degrees round trip
    off_by_one = 0
    for i, name in enumerate(JOINT_NAMES, start=1):
        _homing, lo, hi = CAL[i]
        ticks = np.arange(lo, hi + 1)
        present = {f"{name}.pos": 0.0 for name in JOINT_NAMES}
        for tick in ticks:
            present[f"{name}.pos"] = bus._normalize({i: int(tick)})[i]
            q = conv.to_radians(present)
            wire = bus._unnormalize({i: conv.to_lerobot(q)[f"{name}.pos"]})[i]
            assert wire == tick, (name, tick, wire)
            off_by_one += bus._unnormalize({i: naive.to_lerobot(q)[f"{name}.pos"]})[i] != tick
            # what the backend reports as sent is what went on the wire
            sent = conv.wire_radians(conv.to_lerobot(q))
            assert sent[i - 1] == pytest.approx(q[i - 1], abs=1e-12)
    if use_degrees:
        assert off_by_one > 0  # the naive round trip does miss ticks (wrist_roll, mid .5)


def test_hold_on_the_bus_writes_the_present_tick(bus, cal_dir):
    be = make_backend(bus, cal_dir, max_relative_target_rad=0.25)
    be.connect()
    try:
        present = {1: 2000, 2: 2000, 3: 2100, 4: 2000, 5: 2046, 6: 2500}
        bus.set_present(present)
        q, _ = be.read_joints()
        writes = bus.count(SYNC_WRITE)
        be.write_joint_targets(q)  # hold: the measured position
        assert bus.wait_for(SYNC_WRITE, writes + 1)
        for motor, tick in present.items():
            assert bus.goal(motor) == tick, (motor, bus.goal(motor), tick)
        np.testing.assert_allclose(be.last_sent_targets, q, atol=1e-12)
    finally:
        be.close()
