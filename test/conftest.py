import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ros_harness import NodeProcess, Probe, allocate_domain_id, ros_environment

SHARED = Path(os.environ.get("DRQV2_SHARED_DIR",
                             Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture
def ros_env(tmp_path):
    """Environment for node processes: a fresh ROS_DOMAIN_ID and log dir per test."""
    return ros_environment(allocate_domain_id(), tmp_path / "roslog")


@pytest.fixture
def launch_node(ros_env, tmp_path):
    """Start node processes; all are stopped (SIGINT, then SIGKILL) at teardown."""
    procs: list[NodeProcess] = []

    def start(module: str, **kw) -> NodeProcess:
        p = NodeProcess(module, ros_env, tmp_path, **kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def probe(ros_env):
    p = Probe(ros_env)
    yield p
    p.close()


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """One intra-op torch thread in the test process: on a busy 2-core machine OpenMP threads
    contend badly (node processes set their own)."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_sessionfinish(session, exitstatus):
    """Tests SIGKILL node processes on purpose; remove the shared memory they could not
    (only segments no live process holds: a robot graph running beside the tests keeps
    its own)."""
    from drqv2_ros.bringup.shm_clean import clean

    clean()
