"""Joy mapping (deadman, axes, gripper, edge-triggered buttons, timeout, malformed input),
its inverse (JoyEncoder), the shipped controller files, and gamepad_joy's conversion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drqv2_ros.teleop.joy_mapping import (
    GRIPPER_CLOSED,
    GRIPPER_OPEN,
    AxisMap,
    JoyEncoder,
    JoyMapper,
    JoyMapping,
    MappingError,
    find_mapping_file,
)

XBOX = JoyMapping.load(find_mapping_file("xbox"))
RB, Y, A, X = 5, 3, 0, 2


def joy(deadman=False, lx=0.0, ly=0.0, ry=0.0, rt=1.0, press=()):
    axes = [0.0] * 8
    axes[0], axes[1], axes[4], axes[5] = lx, ly, ry, rt
    buttons = [0] * 11
    buttons[RB] = int(deadman)
    for b in press:
        buttons[b] = 1
    return axes, buttons


def test_shipped_mappings_load_and_roles():
    for name in ("xbox", "ps4"):
        m = JoyMapping.load(find_mapping_file(name))
        assert m.name == name
        assert set(m.buttons) == {"success", "failure", "rerecord"}
        assert m.deadman == 5  # RB / R1
    assert XBOX.buttons == {"success": Y, "failure": A, "rerecord": X}


def test_deadman_gates_intervention_and_axes_map_to_rep103():
    m = JoyMapper(XBOX)
    on, act, ev = m.update(*joy(deadman=False, ly=1.0), t=0.0)
    assert not on and ev == [] and act[:3].tolist() == [0, 0, 0]
    on, act, _ = m.update(*joy(deadman=True, ly=1.0, lx=-1.0, ry=0.5, rt=-1.0), t=0.05)
    assert on
    assert act.dtype == np.float32 and act.shape == (4,)
    assert act[0] == pytest.approx(1.0)           # stick up -> forward (+x)
    assert act[1] == pytest.approx(-1.0)          # stick right -> -y (right)
    assert 0 < act[2] < 0.5                       # deadzone-rescaled
    assert act[3] == GRIPPER_CLOSED               # RT fully pressed
    on, act, _ = m.update(*joy(deadman=False, ly=1.0), t=0.1)
    assert not on and act[:3].tolist() == [0, 0, 0]


def test_deadzone_and_clipping():
    a = AxisMap(axis=0, sign=-1.0, scale=0.5, deadzone=0.2)
    assert a.apply(0.19) == 0.0 and a.apply(-0.1) == 0.0
    assert a.apply(-1.0) == pytest.approx(0.5)     # sign and scale
    assert a.apply(0.6) == pytest.approx(-0.25)   # (0.6 - 0.2) / 0.8 * 0.5
    assert a.apply(5.0) == pytest.approx(-0.5)    # out-of-range input saturates


def test_buttons_are_edge_triggered():
    m = JoyMapper(XBOX)
    assert m.update(*joy(press=[Y]), t=0.0)[2] == ["success"]
    for k in range(5):  # held: no repeat
        assert m.update(*joy(press=[Y]), t=0.05 * (k + 1))[2] == []
    assert m.update(*joy(), t=0.4)[2] == []
    assert m.update(*joy(press=[Y, A]), t=0.45)[2] == ["success", "failure"]
    assert m.update(*joy(press=[X]), t=0.5)[2] == ["rerecord"]


def test_timeout_ends_intervention():
    m = JoyMapper(XBOX, timeout=0.3)
    m.update(*joy(deadman=True, ly=0.8), t=10.0)
    assert not m.check_timeout(10.29) and m.intervening
    assert m.check_timeout(10.31)
    assert not m.intervening and m.action[:3].tolist() == [0, 0, 0] and m.timeouts == 1
    assert not m.check_timeout(11.0)  # reported once
    assert m.update(*joy(deadman=True), t=11.0)[0]  # a fresh Joy resumes


def test_malformed_joy_counted_and_ignored():
    m = JoyMapper(XBOX, timeout=0.3)
    m.update(*joy(deadman=True, ly=0.5), t=0.0)
    before = m.action.copy()
    axes, buttons = joy(deadman=False, ly=-1.0)
    assert m.update(axes[:3], buttons, t=0.1)[0]            # too few axes
    assert m.update(axes, buttons[:4], t=0.1)[0]            # too few buttons
    nan_axes = list(axes)
    nan_axes[1] = math.nan
    on, act, _ = m.update(nan_axes, buttons, t=0.1)
    assert on and np.array_equal(act, before)
    assert m.malformed == 3
    # malformed messages do not refresh the Joy timeout
    assert m.check_timeout(0.31)


def test_trigger_reads_zero_until_first_touched():
    m = JoyMapper(XBOX)
    assert m.update(*joy(deadman=True, rt=0.0), t=0.0)[1][3] == GRIPPER_OPEN  # untouched
    assert m.update(*joy(deadman=True, rt=-1.0), t=0.1)[1][3] == GRIPPER_CLOSED
    assert m.update(*joy(deadman=True, rt=0.0), t=0.2)[1][3] == pytest.approx(0.0)


def _buttons_mapping():
    return JoyMapping.from_dict({
        "name": "custom",
        "axes": {"x": {"axis": 1}, "y": {"axis": 0, "sign": -1}, "z": {"axis": 3,
                                                                       "scale": 0.5}},
        "gripper": {"mode": "buttons", "close": 1, "open": 2},
        "buttons": {"deadman": 4, "success": 7},
    })


def test_gripper_buttons_latch():
    m = JoyMapper(_buttons_mapping())
    b = [0] * 8
    b[4] = 1
    assert m.update([0.0] * 4, b, 0.0)[1][3] == GRIPPER_OPEN
    b[1] = 1
    assert m.update([0.0] * 4, b, 0.1)[1][3] == GRIPPER_CLOSED
    b[1] = 0
    assert m.update([0.0] * 4, b, 0.2)[1][3] == GRIPPER_CLOSED  # latched
    b[2] = 1
    assert m.update([0.0] * 4, b, 0.3)[1][3] == GRIPPER_OPEN


@pytest.mark.parametrize("name", ["xbox", "ps4", "buttons"])
def test_encoder_is_the_mappers_inverse(name):
    mapping = _buttons_mapping() if name == "buttons" else JoyMapping.load(
        find_mapping_file(name))
    enc = JoyEncoder(mapping)
    rng = np.random.default_rng(0)
    mapper = JoyMapper(mapping)
    for k in range(200):
        want = rng.uniform(-1, 1, 4).astype(np.float32)
        want[rng.random(4) < 0.2] = 0.0
        if name == "buttons":
            want[3] = 1.0 if want[3] > 0 else -1.0
        # the buttons mapping scales z by 0.5: only |z| <= 0.5 is reachable
        if name == "buttons":
            want[2] *= 0.5
        on, got, ev = mapper.update(*enc.encode(True, want), t=0.05 * k)
        assert on and ev == []
        np.testing.assert_allclose(got, want, atol=1e-5)
    on, _, ev = mapper.update(*enc.encode(False, [0, 0, 0, GRIPPER_OPEN], press=["success"]),
                              t=100.0)
    assert not on and ev == ["success"]


@pytest.mark.parametrize("bad, match", [
    ({"axes": {"x": {"axis": 1}, "y": {"axis": 1}, "z": {"axis": 2}}}, "mapped twice"),
    ({"buttons": {"deadman": 3, "success": 3}}, "distinct"),
    ({"gripper": {"mode": "wheel"}}, "gripper.mode"),
    ({"axes": {"x": {"axis": 1, "sign": 2}, "y": {"axis": 0}, "z": {"axis": 4}}}, "sign"),
    ({"buttons": {}}, "deadman"),
])
def test_bad_mappings_rejected(bad, match):
    d = {"axes": {"x": {"axis": 1}, "y": {"axis": 0}, "z": {"axis": 4}},
         "gripper": {"mode": "axis", "axis": 5}, "buttons": {"deadman": 5, "success": 3}}
    d.update(bad)
    with pytest.raises(MappingError, match=match):
        JoyMapping.from_dict(d)


def test_find_mapping_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("x: 1")
    assert find_mapping_file("xbox", str(p)) == p
    with pytest.raises(FileNotFoundError, match="nope"):
        find_mapping_file("nope")


# -- gamepad_joy conversion -------------------------------------------------------------

def test_pygame_state_to_joy():
    from drqv2_ros.teleop.gamepad import joy_from_pygame

    # pygame: stick pushed up-left (-1, -1), trigger released (-1) ... pressed (+1)
    axes, buttons = joy_from_pygame([-1.0, -1.0, -1.0, 0.02, 0.5, 1.0], [0, 1, True],
                                    [(-1, 1)], deadzone=0.05)
    assert axes == [1.0, 1.0, 1.0, 0.0, -0.5, -1.0, 1.0, 1.0]
    assert buttons == [0, 1, 1]


def test_evdev_events_to_joy_matches_mapping():
    from drqv2_ros.teleop.gamepad import EvdevState

    EV_KEY, EV_ABS = 1, 3
    ABS_X, ABS_Y, ABS_Z, ABS_RX, ABS_RY, ABS_RZ, HAT_X, HAT_Y = 0, 1, 2, 3, 4, 5, 0x10, 0x11
    BTN_A, BTN_B, BTN_X, BTN_Y, BTN_TL, BTN_TR = 0x130, 0x131, 0x133, 0x134, 0x136, 0x137
    stick = (-32768, 32767, 0)
    s = EvdevState({ABS_X: stick, ABS_Y: stick, ABS_Z: (0, 255, 0), ABS_RX: stick,
                    ABS_RY: stick, ABS_RZ: (0, 255, 0), HAT_X: (-1, 1), HAT_Y: (-1, 1)},
                   [BTN_TR, BTN_A, BTN_B, BTN_X, BTN_Y, BTN_TL], deadzone=0.05)
    axes, buttons = s.joy()
    assert axes[2] == 1.0 and axes[5] == 1.0      # triggers at rest = +1 (released)
    assert abs(axes[0]) < 1e-4 and buttons == [0] * 6
    s.event(EV_ABS, ABS_Y, -32768)   # left stick fully up
    s.event(EV_ABS, ABS_RZ, 255)     # RT fully pressed
    s.event(EV_ABS, HAT_X, -1)       # d-pad left
    s.event(EV_KEY, BTN_TR, 1)       # RB
    s.event(EV_KEY, BTN_Y, 1)
    s.event(EV_KEY, 0x2FF, 1)        # unknown key: ignored
    s.event(4, 4, 123)               # EV_MSC: ignored
    axes, buttons = s.joy()
    assert axes[1] == 1.0 and axes[5] == -1.0 and axes[6] == 1.0
    assert buttons == [0, 0, 0, 1, 0, 1]           # A B X Y LB RB
    on, act, ev = JoyMapper(XBOX).update(axes, buttons, t=0.0)
    assert on and ev == ["success"]
    assert act.tolist() == pytest.approx([1.0, 0.0, 0.0, GRIPPER_CLOSED], abs=1e-4)
