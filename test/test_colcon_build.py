"""The ROS 2 user's install: `colcon build` of this package (against the ROS 2 wheels in the
set-up venv, which stands in for /opt/ros/<distro>), then the install is checked as `ros2 run`
and `ros2 launch` use it: a launcher per executable in lib/drqv2_ros, launch/ and config/ in
share, the interfaces and the package importable from install/, one metadata record listing
the executables, and a node started from its launcher answers over DDS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drqv2_ros.executables import EXECUTABLES

ROOT = Path(__file__).resolve().parents[1]
PREFIX = Path(sys.prefix)
pytestmark = [
    pytest.mark.dds,
    pytest.mark.slow,
    # above the colcon build's own wait (900 s) plus the checks after it
    pytest.mark.timeout(1200),
    pytest.mark.skipif(not (PREFIX / ".drqv2_stamps").is_dir(),
                       reason=f"not the venv made by tools/setup.sh ({PREFIX})"),
]
PYVER = f"python{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    assert shutil.which("colcon", path=str(PREFIX / "bin")), \
        "colcon is missing from the venv (tools/requirements.txt installs it)"
    ws = tmp_path_factory.mktemp("ws")
    (ws / "src").mkdir()
    (ws / "src" / "drqv2_ros").symlink_to(ROOT)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(PREFIX),
               PATH=f"{PREFIX / 'bin'}:{os.environ.get('PATH', '')}")
    r = subprocess.run(
        [str(PREFIX / "bin" / "colcon"), "build", "--base-paths", "src",
         "--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text()[-3000:] for p in (ws / "log").rglob("stderr.log")
                     if p.is_file())
    assert r.returncode == 0, f"colcon build failed:\n{r.stdout[-3000:]}\n{logs}"
    return ws / "install" / "drqv2_ros"


def _env(install: Path, domain: int, log_dir: Path) -> dict[str, str]:
    """What sourcing install/setup.bash gives a node (the install first on every path); the
    wheels' bootstrap mark is not inherited (it would skip loading the install's libraries)."""
    env = {k: v for k, v in os.environ.items() if k != "_ROS_WHEELS_BOOTSTRAP_COMPLETE"}
    env.update(PYTHONPATH=str(install / "lib" / PYVER / "site-packages"),
               AMENT_PREFIX_PATH=f"{install}:{PREFIX}", ROS_DOMAIN_ID=str(domain),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOG_DIR=str(log_dir),
               FASTDDS_DEFAULT_PROFILES_FILE=str(install / "share/drqv2_ros/config/"
                                                 "fastdds_profile.xml"),
               FASTRTPS_DEFAULT_PROFILES_FILE=str(install / "share/drqv2_ros/config/"
                                                  "fastdds_profile.xml"))
    return env


def test_the_install_has_what_ros2_run_and_launch_need(install, tmp_path):
    lib = install / "lib" / "drqv2_ros"
    for exe in EXECUTABLES:
        assert os.access(lib / exe, os.X_OK), f"no launcher {lib / exe}"
    share = install / "share" / "drqv2_ros"
    assert (share / "launch" / "finetune.launch.py").is_file()
    assert (share / "config" / "policy.yaml").is_file() and (share / "package.xml").is_file()
    assert (install / "share/ament_index/resource_index/packages/drqv2_ros").is_file()
    env = _env(install, 0, tmp_path)
    code = ("import importlib.metadata as m, drqv2_ros, drqv2_ros.srv, drqv2_ros.msg\n"
            "from drqv2_ros.srv import LoadCheckpoint\n"
            "from drqv2_ros.msg import Step\n"
            "recs = [d for d in m.distributions() if (d.metadata['Name'] or '')"
            ".replace('-', '_').lower() == 'drqv2_ros']\n"
            "print(drqv2_ros.__file__)\n"
            "print(len(recs), sorted(e.name for e in recs[0].entry_points "
            "if e.group == 'console_scripts'))\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)  # not this checkout's folder
    assert r.returncode == 0, r.stderr
    path, records = r.stdout.strip().splitlines()
    assert path.startswith(str(install)), f"drqv2_ros imported from {path}, not the install"
    # the install's record (the editable dist-info of the venv is also on the path here,
    # as a user's own venv would not be: both list the same executables)
    assert records.split(" ", 1)[1] == str(sorted(EXECUTABLES))


def test_a_node_started_from_its_launcher_answers(install, tmp_path):
    from ros_harness import Probe, allocate_domain_id, ros_environment

    domain = allocate_domain_id()
    env = _env(install, domain, tmp_path)
    log = open(tmp_path / "teleop.log", "w")
    proc = subprocess.Popen([str(install / "lib/drqv2_ros/teleop"), "--ros-args", "-r",
                             "__node:=teleop_from_colcon", "--params-file",
                             str(install / "share/drqv2_ros/config/teleop.yaml")],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                            start_new_session=True)
    probe = Probe(ros_environment(domain, tmp_path))
    try:
        from rcl_interfaces.srv import ListParameters

        try:
            resp = probe.call(ListParameters, "/teleop_from_colcon/list_parameters",
                              ListParameters.Request(), timeout=60, resend_every=5.0)
        except TimeoutError as e:
            log.flush()
            state = "running" if proc.poll() is None else f"exited {proc.returncode}"
            text = (tmp_path / "teleop.log").read_text()[-4000:]
            raise AssertionError(f"{e}; teleop {state}, its log:\n{text}") from e
        assert "use_sim_time" in resp.result.names and len(resp.result.names) > 3, resp
        assert proc.poll() is None, (tmp_path / "teleop.log").read_text()
    finally:
        probe.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
