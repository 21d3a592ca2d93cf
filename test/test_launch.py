"""The launch file's description: with the real `launch`/`launch_ros` when importable, a
faithful stand-in otherwise (they cannot be installed from PyPI). Every executable it names
must exist and every parameter file must be in config/ and load as ROS parameters YAML."""

import importlib.util
import runpy
import sys
import types
from pathlib import Path

import pytest
import yaml

from drqv2_ros.bringup.graph import GraphOptions, build_graph
from drqv2_ros.bringup.launcher import node_command
from drqv2_ros.executables import EXECUTABLES

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "launch" / "finetune.launch.py"


def _have_real_launch() -> bool:
    spec = importlib.util.find_spec("launch")
    return spec is not None and importlib.util.find_spec("launch_ros") is not None and \
        spec.origin is not None and "launch_description" in "".join(
            p.name for p in Path(spec.origin).parent.iterdir())


class _StandIn:
    """Minimal launch/launch_ros with the same call signatures the launch file uses."""

    def __init__(self):
        self.modules = {}

        class LaunchDescription:
            def __init__(self, entities):
                self.entities = list(entities)

        class DeclareLaunchArgument:
            def __init__(self, name, default_value=None, description=""):
                self.name, self.default_value, self.description = name, default_value, description

        class OpaqueFunction:
            def __init__(self, function, args=None, kwargs=None):
                self.function = function

        class LaunchConfiguration:
            def __init__(self, name):
                self.name = name

            def perform(self, context):
                return context.launch_configurations[self.name]

        class Node:
            def __init__(self, *, package, executable, name=None, namespace="",
                         parameters=(), output="log", emulate_tty=False, arguments=()):
                self.package, self.executable, self.name = package, executable, name
                self.namespace, self.parameters, self.arguments = namespace, parameters, arguments

        def get_package_share_directory(pkg):
            assert pkg == "drqv2_ros"
            return str(ROOT)

        mods = {
            "launch": dict(LaunchDescription=LaunchDescription),
            "launch.actions": dict(DeclareLaunchArgument=DeclareLaunchArgument,
                                   OpaqueFunction=OpaqueFunction),
            "launch.substitutions": dict(LaunchConfiguration=LaunchConfiguration),
            "launch_ros": {},
            "launch_ros.actions": dict(Node=Node),
            "ament_index_python.packages": dict(
                get_package_share_directory=get_package_share_directory),
        }
        for name, attrs in mods.items():
            m = types.ModuleType(name)
            m.__dict__.update(attrs)
            self.modules[name] = m


def _describe(monkeypatch, configs: dict[str, str]):
    if not _have_real_launch():
        for name, mod in _StandIn().modules.items():
            monkeypatch.setitem(sys.modules, name, mod)
    ns = runpy.run_path(str(LAUNCH_FILE))
    ld = ns["generate_launch_description"]()
    args = {e.name: e.default_value for e in ld.entities if hasattr(e, "default_value")}
    args.update(configs)
    ctx = types.SimpleNamespace(launch_configurations=args)
    nodes = []
    for e in ld.entities:
        if hasattr(e, "function"):
            nodes += e.function(ctx)
    return args, nodes


@pytest.mark.parametrize("configs", [
    {"mode": "sim", "operator": "scripted", "record": "true"},
    {"mode": "real", "operator": "joy"},
    {"mode": "real", "operator": "gamepad", "demo_mode": "true"},
])
def test_launch_file_names_existing_executables_and_params(monkeypatch, configs):
    args, nodes = _describe(monkeypatch, configs)
    for required in ("mode", "checkpoint", "params_file", "namespace", "use_sim_time",
                     "log_level", "record"):
        assert required in args, f"launch argument {required} missing"
    assert nodes, "the launch file starts no node"
    names = {n.name for n in nodes}
    assert {"so101_driver", "policy"} <= names
    for n in nodes:
        if n.package == "drqv2_ros":
            assert n.executable in EXECUTABLES, f"unknown executable {n.executable}"
            module = EXECUTABLES[n.executable].split(":")[0]
            assert importlib.util.find_spec(module) is not None, f"{module} missing"
        else:
            assert (n.package, n.executable) == ("joy", "joy_node")
        for p in n.parameters:
            if isinstance(p, str):
                path = Path(p)
                assert path.is_file(), f"parameter file {p} missing"
                data = yaml.safe_load(path.read_text())
                assert isinstance(data, dict) and all(
                    "ros__parameters" in v for v in data.values()), f"{p} is not ROS params YAML"


def test_graph_matches_launch_and_plain_launcher(monkeypatch):
    _, nodes = _describe(monkeypatch, {"mode": "sim", "operator": "scripted"})
    opt = GraphOptions(mode="sim", operator="scripted")
    specs = build_graph(opt)
    assert [n.name for n in nodes] == [s.name for s in specs]
    for s in specs:
        cmd = node_command(s, opt)
        assert cmd[:3] == [sys.executable, "-m", EXECUTABLES[s.executable].split(":")[0]]
        assert f"__node:={s.name}" in cmd


def test_scripted_operator_refused_on_real_robot():
    with pytest.raises(ValueError, match="sim only"):
        build_graph(GraphOptions(mode="real", operator="scripted"))


def test_package_xml_and_cmake_install_what_launch_needs():
    import xml.etree.ElementTree as ET

    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "install(DIRECTORY launch config" in cmake
    assert "srv/LoadCheckpoint.srv" in cmake
    for msg in sorted((ROOT / "msg").glob("*.msg")):
        assert f"msg/{msg.name}" in cmake, f"{msg.name} not generated"
