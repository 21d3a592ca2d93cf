"""The DDS profile is really loaded (Fast DDS 2.x reads FASTRTPS_..., 3.x FASTDDS_...), the
launchers apply it (or the user's own), and a peer argument gives every node the two-host
profile with a discovery range that reaches the other host."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from ros_harness import ROOT, allocate_domain_id, ros_environment

from drqv2_ros.bringup.dds import (
    LEASE_S,
    MAX_UDP_MESSAGE,
    PROFILE_VARS,
    graph_environment,
    peer_environment,
    profile_environment,
    two_host_profile,
)
from drqv2_ros.bringup.graph import GraphOptions, build_graph, parse_nodes
from drqv2_ros.bringup.launcher import GraphProcesses

NS = "{http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles}"
SHIPPED = ROOT / "config" / "fastdds_profile.xml"


def test_both_profile_variables_user_profile_wins_unless_overridden():
    env = profile_environment({}, SHIPPED)
    assert env == {v: str(SHIPPED) for v in PROFILE_VARS}
    for var in PROFILE_VARS:  # a user's profile in either variable wins, in both
        assert profile_environment({var: "/mine.xml"}, SHIPPED) == {
            v: "/mine.xml" for v in PROFILE_VARS}
    assert profile_environment({PROFILE_VARS[1]: "/mine.xml"}, SHIPPED, override=True) == env


def test_two_host_profile_names_the_peer_and_keeps_datagrams_in_one_packet():
    root = ET.fromstring(two_host_profile(["10.1.2.3"]))
    udp = [t for t in root.iter(f"{NS}transport_descriptor")
           if t.findtext(f"{NS}type") == "UDPv4"][0]
    assert int(udp.findtext(f"{NS}maxMessageSize")) == MAX_UDP_MESSAGE <= 1472
    peers = [a.text for a in root.iter(f"{NS}address")]
    assert peers == ["10.1.2.3", "127.0.0.1", "239.255.0.1"]
    lease = root.find(f".//{NS}leaseDuration/{NS}sec")
    assert int(lease.text) == LEASE_S >= 60  # a 30 s link cut keeps the participants
    assert root.findtext(f".//{NS}useBuiltinTransports") == "false"
    with pytest.raises(ValueError, match="at least one peer"):
        two_host_profile([])
    with pytest.raises(ValueError, match="neither an IPv4 address nor a host name"):
        two_host_profile(["no-such-host.invalid"])


def test_peer_environment_leaves_localhost_only_discovery():
    env = peer_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                            PROFILE_VARS[0]: "/mine.xml"}, "/two.xml")
    assert env[PROFILE_VARS[0]] == env[PROFILE_VARS[1]] == "/two.xml"
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    assert "ROS_AUTOMATIC_DISCOVERY_RANGE" not in peer_environment(
        {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}, "/two.xml")


def test_launcher_applies_the_profile_and_the_peer_profile(tmp_path, monkeypatch):
    monkeypatch.delenv(PROFILE_VARS[0], raising=False)
    monkeypatch.delenv(PROFILE_VARS[1], raising=False)
    g = GraphProcesses(GraphOptions(operator="none"), env={})
    assert all(g.env[v].endswith("fastdds_profile.xml") for v in PROFILE_VARS)
    g = GraphProcesses(GraphOptions(operator="none", peer="127.0.0.2"),
                       env={"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"})
    path = g.env[PROFILE_VARS[0]]
    assert path == g.env[PROFILE_VARS[1]] and "127.0.0.2" in open(path).read()
    assert g.env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    env = graph_environment({}, peer="127.0.0.3", default_profile=SHIPPED, directory=tmp_path)
    assert env[PROFILE_VARS[0]] == str(tmp_path / "fastdds_two_hosts_127.0.0.3.xml")


def test_node_subsets_per_host():
    assert parse_nodes("learner") == ("learner",)
    assert parse_nodes(" so101_driver, policy ") == ("so101_driver", "policy")
    assert parse_nodes("") == ()
    names = [s.name for s in build_graph(GraphOptions(operator="none", nodes=("learner",)))]
    assert names == ["learner"]
    robot = build_graph(GraphOptions(mode="real", operator="joy",
                                     nodes=("so101_driver", "camera", "policy", "teleop",
                                            "joy_node")))
    assert "learner" not in [s.name for s in robot]
    with pytest.raises(ValueError, match=r"nodes \['lerner'\] are not in this graph"):
        build_graph(GraphOptions(operator="none", nodes=("lerner",)))


_SEGMENT_PROBE = """
import glob, os, time
before = set(glob.glob('/dev/shm/fastrtps_*'))
import rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node('profile_probe')
node.create_publisher(String, 'profile_probe', 10)
time.sleep(0.3)
new = [f for f in set(glob.glob('/dev/shm/fastrtps_*')) - before
       if not f.endswith('_el') and 'port' not in os.path.basename(f)]
print(max(os.path.getsize(f) for f in new))
node.destroy_node()
rclpy.shutdown()
"""


@pytest.mark.dds
def test_the_shipped_profile_is_in_effect_for_the_installed_fast_dds(tmp_path):
    """The profile's 16 MB shared-memory segment exists: the profile was loaded. (With only
    FASTDDS_DEFAULT_PROFILES_FILE, Jazzy's Fast DDS 2.14 makes its default 0.5 MB one.)"""
    pytest.importorskip("rclpy")
    env = ros_environment(allocate_domain_id(), tmp_path)
    for v in PROFILE_VARS:
        env.pop(v, None)
    env.update(profile_environment(env, SHIPPED))
    out = subprocess.run([sys.executable, "-c", _SEGMENT_PROBE], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) >= 16 * 1024 * 1024
