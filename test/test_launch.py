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


# Keyword arguments the real launch_ros Node (jazzy) accepts: its own, then those of
# launch's ExecuteProcess/ExecuteLocal it forwards **kwargs to. Anything else is a TypeError.
_NODE_KWARGS = {
    "executable", "package", "name", "namespace", "exec_name", "parameters", "remappings",
    "ros_arguments", "arguments",
    "prefix", "cwd", "env", "additional_env", "shell", "sigterm_timeout", "sigkill_timeout",
    "emulate_tty", "output", "output_format", "cached_output", "log_cmd", "on_exit",
    "respawn", "respawn_delay", "respawn_max_retries",
}


class _StandIn:
    """Minimal launch/launch_ros that behaves like the real API the launch file and this test
    use (checked against ros2/launch and ros2/launch_ros, branch jazzy): entities are applied
    with ``visit(context)``; DeclareLaunchArgument sets its default in
    ``context.launch_configurations`` unless given; OpaqueFunction keeps its function private
    and returns its actions from ``visit``; Node takes keyword arguments only and rejects
    unknown ones; ``parameters`` must be a list."""

    def __init__(self):
        self.modules = {}

        class LaunchContext:
            def __init__(self):
                self.launch_configurations = {}

        class LaunchDescription:
            def __init__(self, initial_entities=None):
                self.entities = list(initial_entities or [])

        class DeclareLaunchArgument:
            def __init__(self, name, *, default_value=None, description=None, choices=None,
                         **kwargs):
                self.name, self.description = name, description
                self.__default, self.__choices = default_value, choices

            def visit(self, context):
                if self.name not in context.launch_configurations:
                    if self.__default is None:
                        raise RuntimeError(f'Required launch argument "{self.name}" '
                                           "was not provided.")
                    context.launch_configurations[self.name] = str(self.__default)
                value = context.launch_configurations[self.name]
                if self.__choices is not None and value not in self.__choices:
                    raise RuntimeError(f'Argument "{self.name}" provided value "{value}" '
                                       "is not valid")
                return None

        class OpaqueFunction:
            def __init__(self, *, function, args=None, kwargs=None, **_):
                self.__function, self.__args, self.__kwargs = function, args or [], kwargs or {}

            def visit(self, context):
                return self.__function(context, *self.__args, **self.__kwargs)

        class LaunchConfiguration:
            def __init__(self, variable_name, *, default=None):
                self.__name, self.__default = variable_name, default

            def perform(self, context):
                if self.__name not in context.launch_configurations:
                    if self.__default is None:
                        raise LookupError(f"launch configuration '{self.__name}' does not "
                                          "exist")
                    return str(self.__default)
                return context.launch_configurations[self.__name]

        class Node:
            def __init__(self, **kwargs):
                unknown = set(kwargs) - _NODE_KWARGS
                if unknown:
                    raise TypeError(f"Node got unexpected keyword arguments {sorted(unknown)}")
                if "executable" not in kwargs:
                    raise TypeError("Node missing required keyword argument 'executable'")
                if kwargs.get("parameters") is not None and \
                        not isinstance(kwargs["parameters"], list):
                    raise TypeError("'parameters' must be a list")
                self.__package = kwargs.get("package")
                self.__executable = kwargs["executable"]

            @property
            def node_package(self):
                return self.__package

            @property
            def node_executable(self):
                return self.__executable

        mods = {
            "launch": dict(LaunchDescription=LaunchDescription, LaunchContext=LaunchContext),
            "launch.actions": dict(DeclareLaunchArgument=DeclareLaunchArgument,
                                   OpaqueFunction=OpaqueFunction),
            "launch.substitutions": dict(LaunchConfiguration=LaunchConfiguration),
            "launch_ros": {},
            "launch_ros.actions": dict(Node=Node),
        }
        for name, attrs in mods.items():
            m = types.ModuleType(name)
            m.__dict__.update(attrs)
            self.modules[name] = m
        for name, m in self.modules.items():  # as the import system does: launch.actions
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(self.modules[parent], child, m)


#: ROS packages the tests pretend are installed besides drqv2_ros (e.g. {"joy"})
INSTALLED: set[str] = set()


class PackageNotFoundError(KeyError):
    pass


def _share_directory(pkg):
    if pkg == "drqv2_ros":
        return str(ROOT)  # config/ from this checkout, not a possibly stale installed copy
    if pkg in INSTALLED:
        return f"/opt/ros/jazzy/share/{pkg}"
    raise _not_found_error()(pkg)


def _not_found_error():
    try:
        from ament_index_python.packages import PackageNotFoundError as err
    except ImportError:
        err = PackageNotFoundError
    return err


def _describe(monkeypatch, configs: dict[str, str]):
    """Evaluate the launch file as ``ros2 launch`` would for ``configs``: returns the
    declared argument names and the Node actions, each with ``.kw`` = its constructor
    keyword arguments."""
    configs = {"checkpoint": str(ROOT / "config"), **configs}  # an existing path
    real = _have_real_launch()
    if not real:
        for name, mod in _StandIn().modules.items():
            monkeypatch.setitem(sys.modules, name, mod)
    if importlib.util.find_spec("ament_index_python") is not None:
        import ament_index_python.packages as aip
        monkeypatch.setattr(aip, "get_package_share_directory", _share_directory)
    else:
        mod = types.ModuleType("ament_index_python.packages")
        mod.get_package_share_directory = _share_directory
        mod.PackageNotFoundError = PackageNotFoundError
        monkeypatch.setitem(sys.modules, "ament_index_python.packages", mod)

    import launch
    import launch.actions
    import launch_ros.actions

    class RecordingNode(launch_ros.actions.Node):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.kw = kwargs

    monkeypatch.setattr(launch_ros.actions, "Node", RecordingNode)
    ns = runpy.run_path(str(LAUNCH_FILE))
    ld = ns["generate_launch_description"]()
    context = launch.LaunchContext()
    context.launch_configurations.update(configs)
    args, nodes = [], []
    for e in ld.entities:
        if isinstance(e, launch.actions.DeclareLaunchArgument):
            args.append(e.name)
            e.visit(context)
        elif isinstance(e, launch.actions.OpaqueFunction):
            nodes += list(e.visit(context) or [])
        else:
            raise AssertionError(f"unexpected launch entity {e!r}")
    for n in nodes:
        assert isinstance(n, RecordingNode), n
        if real:
            # What Node.execute does first: validates node name and namespace and turns
            # the parameter dicts into a parameters file (raises on a bad value).
            n._perform_substitutions(context)
    return args, nodes


@pytest.mark.parametrize("configs", [
    {"mode": "sim", "operator": "scripted", "record": "true"},
    {"mode": "real", "operator": "joy"},
    {"mode": "real", "operator": "gamepad", "demo_mode": "true"},
])
def test_launch_file_names_existing_executables_and_params(monkeypatch, configs):
    import drqv2_ros.bringup.graph as graph

    monkeypatch.setattr(sys.modules[__name__], "INSTALLED", {"joy"})
    monkeypatch.setattr(graph, "module_available", lambda name: True)  # pygame
    args, nodes = _describe(monkeypatch, configs)
    for required in ("mode", "checkpoint", "params_file", "namespace", "use_sim_time",
                     "log_level", "record"):
        assert required in args, f"launch argument {required} missing"
    assert nodes, "the launch file starts no node"
    names = {n.kw["name"] for n in nodes}
    assert {"so101_driver", "policy"} <= names
    for n in nodes:
        assert (n.node_package, n.node_executable) == (n.kw["package"], n.kw["executable"])
        if n.node_package == "drqv2_ros":
            assert n.node_executable in EXECUTABLES, f"unknown executable {n.node_executable}"
            module = EXECUTABLES[n.node_executable].split(":")[0]
            assert importlib.util.find_spec(module) is not None, f"{module} missing"
        else:
            assert (n.node_package, n.node_executable) == ("joy", "joy_node")
        for p in n.kw["parameters"]:
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
    assert [n.kw["name"] for n in nodes] == [s.name for s in specs]
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


def test_learner_device_argument_reaches_the_learner_and_bad_names_fail_early(monkeypatch):
    _, nodes = _describe(monkeypatch, {"mode": "sim", "operator": "scripted",
                                       "learner_device": "cuda:1"})
    learner = next(n for n in nodes if n.kw["name"] == "learner")
    assert {"device": "cuda:1"}.items() <= learner.kw["parameters"][-1].items()
    spec = next(s for s in build_graph(GraphOptions(operator="none")) if s.name == "learner")
    assert "device" not in spec.parameters  # config/learner.yaml's default (auto) applies
    with pytest.raises(ValueError, match="learner device must be auto, cpu, cuda or cuda:N"):
        build_graph(GraphOptions(operator="none", learner_device="gpu"))
    cfg = yaml.safe_load((ROOT / "config" / "learner.yaml").read_text())
    assert cfg["/**/learner"]["ros__parameters"]["device"] == "auto"


# ------------------------------------------------------------ arguments refused early
@pytest.mark.parametrize("configs,why", [
    ({"checkpoint": ""}, "checkpoint:=<path> is required"),
    ({"checkpoint": "/nonexistent/ckpt"}, "does not exist"),
    ({"mode": "real", "operator": "joy"}, "needs the ROS 2 joy package"),
    ({"operator": "wiimote"}, "operator must be one of"),
    ({"mode": "moon"}, "mode must be"),
])
def test_bad_launch_arguments_are_refused_before_any_node_starts(monkeypatch, configs, why):
    with pytest.raises(ValueError, match=why):
        _describe(monkeypatch, configs)


def test_plain_launcher_refuses_the_same_before_starting(capsys):
    from drqv2_ros.bringup.launcher import launcher_main

    assert launcher_main(["--mode", "sim"]) == 2
    assert "checkpoint:=<path> is required" in capsys.readouterr().err
    assert launcher_main(["--mode", "real", "--operator", "joy", "--checkpoint",
                          str(ROOT / "config")]) == 2
    assert "joy package" in capsys.readouterr().err


def test_operator_auto_works_on_a_fresh_install(monkeypatch):
    import drqv2_ros.bringup.graph as graph

    args, nodes = _describe(monkeypatch, {})  # defaults: sim, operator auto
    assert "scripted_operator" in {n.kw["name"] for n in nodes}
    ck = str(ROOT / "config")
    monkeypatch.setattr(graph, "module_available", lambda name: True)
    real = graph.GraphOptions(mode="real", checkpoint=ck)
    assert graph.prepare(real, package_available=lambda p: p == "joy").operator == "joy"
    assert graph.prepare(real, package_available=lambda p: False).operator == "gamepad"
    monkeypatch.setattr(graph, "module_available", lambda name: False)
    with pytest.raises(ValueError, match="pip install pygame"):
        graph.prepare(real, package_available=lambda p: False)


def test_headless_rendering_is_chosen_unless_the_user_chose():
    from drqv2_ros.bringup.graph import rendering_environment

    assert rendering_environment({}) == {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}
    assert rendering_environment({"DISPLAY": ":0"}) == {}
    assert rendering_environment({"MUJOCO_GL": "osmesa"}) == {}
