"""teleop node over real DDS: Joy from the probe -> intervention / episode_event; and the
scripted operator node driving the teleop node from a synthetic sim/state."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ros_harness import wait_for

from drqv2_ros.teleop.joy_mapping import GRIPPER_CLOSED, GRIPPER_OPEN

pytestmark = pytest.mark.dds

RB, Y = 5, 3
TIMEOUT = 0.3


def _joy(deadman=False, ly=0.0, rt=1.0, press=()):
    from sensor_msgs.msg import Joy

    m = Joy()
    axes = [0.0] * 8
    axes[1], axes[5] = ly, rt
    buttons = [0] * 11
    buttons[RB] = int(deadman)
    for b in press:
        buttons[b] = 1
    m.axes, m.buttons = axes, buttons
    return m


def test_teleop_joy_to_intervention_and_events(launch_node, probe):
    from sensor_msgs.msg import Joy

    from drqv2_ros.msg import EpisodeEvent, Intervention
    from drqv2_ros.nodes.common import SENSOR_QOS, reliable_qos, stamp_to_ns

    interventions = probe.collect(Intervention, "intervention", reliable_qos(100))
    events = probe.collect(EpisodeEvent, "episode_event", reliable_qos(10))
    pub = probe.publisher(Joy, "joy", SENSOR_QOS)
    node = launch_node("drqv2_ros.nodes.teleop_node", params_file="config/teleop.yaml",
                       params={"joy_timeout": TIMEOUT, "publish_rate": 50.0})
    procs = [node]
    wait_for(lambda: pub.get_subscription_count() > 0 and interventions, 20,
             "teleop discovery", procs)

    def stream(msg, seconds, until=None):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pub.publish(msg)
            if until is not None and until():
                return True
            time.sleep(0.05)
        return False

    def last():
        with probe.lock:
            return interventions[-1][1]

    # deadman held: active with the mapped action (stick 0.5 up, RT fully pressed)
    assert stream(_joy(deadman=True, ly=0.5, rt=-1.0), 5, lambda: last().active), node.log()
    time.sleep(0.2)
    a = np.array(last().action)
    expected_x = (0.5 - 0.15) / 0.85
    np.testing.assert_allclose(a, [expected_x, 0, 0, GRIPPER_CLOSED], atol=1e-5)

    # deadman released: inactive
    assert stream(_joy(deadman=False, ly=0.5), 3, lambda: not last().active)

    # Joy stops while the deadman is held: inactive within joy_timeout + margin
    assert stream(_joy(deadman=True, ly=0.5), 3, lambda: last().active)
    t_last = time.time_ns()
    t_last_mono = time.monotonic_ns()
    pub.publish(_joy(deadman=True, ly=0.5))
    wait_for(lambda: not last().active, 3, "timeout ends the intervention", procs)
    with probe.lock:
        after = [(t, m) for t, m in interventions if t > t_last_mono]
    end_t, end = next((t, m) for t, m in after if not m.active)
    # Every message stamps the time of the human input it reflects (the last valid Joy),
    # heartbeats too: a receiver bounds the age of the human action by it, however late
    # the messages come (the policy acts on it only while younger than its
    # intervention_timeout_s, 50 ms inside joy_timeout).
    last_input = stamp_to_ns(end.header.stamp)
    assert t_last <= last_input <= t_last + 300_000_000  # the last Joy's time, not the end's
    quiet = [m for _, m in after if stamp_to_ns(m.header.stamp) == last_input]
    assert sum(m.active for m in quiet) >= 2  # heartbeats while Joy was quiet, same stamp
    assert all(stamp_to_ns(m.header.stamp) <= last_input for _, m in after)
    # hence the loose upper bound (JoyMapper's own precision: test_joy_mapping.py): the
    # delivery of the last Joy and of the ending message both count here
    delay = (end_t - t_last_mono) / 1e9
    print(f"\nJoy timeout {TIMEOUT}s -> intervention ended after {delay:.3f}s")
    assert TIMEOUT - 0.02 <= delay <= TIMEOUT + 0.6

    # success button held for several messages: exactly one SUCCESS event
    stream(_joy(press=[Y]), 0.5)
    stream(_joy(), 0.3)
    wait_for(lambda: len(events) > 0, 5, "the SUCCESS event", procs)
    time.sleep(0.5)  # a second (wrong) event would be here by now
    with probe.lock:
        got = [(m.event, m.source) for _, m in events]
    assert got == [(EpisodeEvent.SUCCESS, "joy")]


def test_scripted_operator_drives_teleop(launch_node, probe):
    from drqv2_ros.msg import EpisodeEvent, Intervention, SimState
    from drqv2_ros.nodes.common import reliable_qos

    interventions = probe.collect(Intervention, "intervention", reliable_qos(100))
    events = probe.collect(EpisodeEvent, "episode_event", reliable_qos(10))
    state_pub = probe.publisher(SimState, "sim/state", reliable_qos(10))
    procs = [
        launch_node("drqv2_ros.nodes.teleop_node", params_file="config/teleop.yaml"),
        launch_node("drqv2_ros.nodes.scripted_operator_node",
                    params_file="config/scripted_operator.yaml"),
    ]

    def send(grip, cube=(0.3, 0.05, 0.015), grasped=False, success=False):
        m = SimState()
        m.cube_position.x, m.cube_position.y, m.cube_position.z = cube
        m.gripper_position.x, m.gripper_position.y, m.gripper_position.z = grip
        m.gripper_opening = 1.0
        m.cube_grasped, m.success = grasped, success
        state_pub.publish(m)

    def active_toward_cube():
        with probe.lock:
            if not interventions:
                return False
            m = interventions[-1][1]
        return m.active and m.action[0] > 0.5 and m.action[1] > 0.5 and m.action[3] == GRIPPER_OPEN

    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and not active_toward_cube():
        send((0.2, -0.05, 0.1))
        time.sleep(0.05)
    assert active_toward_cube(), "\n".join(p.log()[-2000:] for p in procs)
    # the cube is lifted and the sim says success: the operator presses Y -> SUCCESS
    end = time.monotonic() + 5
    while time.monotonic() < end and not events:
        send((0.3, 0.05, 0.12), cube=(0.3, 0.05, 0.12), grasped=True, success=True)
        time.sleep(0.05)
    time.sleep(0.5)
    with probe.lock:
        got = [(m.event, m.source) for _, m in events]
    assert got == [(EpisodeEvent.SUCCESS, "joy")]
    # after the episode event the operator lets go
    wait_for(lambda: not interventions[-1][1].active, 3, "operator releases the deadman",
             procs)
