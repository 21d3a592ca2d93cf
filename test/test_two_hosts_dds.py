"""Actor and learner on two "hosts": two network namespaces joined by an emulated link with
20 ms delay and 1% packet loss (``netns_link.py``), each side with the two-host DDS profile
naming the other (``drqv2_ros.bringup.dds``). Steps flow and are stored exactly once, weight
pushes arrive, the actor keeps its control rate, and link cuts of 5 s and 30 s are survived:
the actor commands throughout, and the steps produced during a cut are stored after it.

Needs root and /dev/net/tun (skipped with the reason elsewhere)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("mujoco")

import netns_link
from ros_harness import ROOT, allocate_domain_id, ros_environment

from drqv2_ros.bringup.dds import peer_environment, write_two_host_profile
from drqv2_ros.convert.robobase import convert_snapshot
from drqv2_ros.convert.robobase_writer import make_robobase_snapshot

pytestmark = [pytest.mark.dds, pytest.mark.slow]
WHY = netns_link.available()
RATE_HZ = 10.0


def _params(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        v = ("true" if v else "false") if isinstance(v, bool) else v
        out += ["-p", f"{k}:={v}"]
    return out


class Side:
    """The processes of one namespace, logs in tmp."""

    def __init__(self, link, side, env, tmp):
        self.link, self.side, self.env, self.tmp = link, side, env, tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopped: set[str] = set()  # stopped on purpose

    def start(self, name: str, cmd: list[str]) -> None:
        log = open(self.tmp / f"{self.side}_{name}.log", "w")
        self.procs[name] = subprocess.Popen(self.link.exec_in(self.side, cmd), env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            cwd=str(ROOT), start_new_session=True)

    def node(self, name: str, module: str, params_file: str, params: dict) -> None:
        self.start(name, [sys.executable, "-m", module, "--ros-args", "--params-file",
                          str(ROOT / "config" / params_file), *_params(params)])

    def log(self, name: str) -> str:
        return (self.tmp / f"{self.side}_{name}.log").read_text(errors="replace")[-3000:]

    def stop(self, name: str, timeout: float = 20.0) -> int | None:
        self.stopped.add(name)
        p = self.procs[name]
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        return p.returncode

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, 10)


def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.skipif(bool(WHY), reason=f"two-namespace link: {WHY}")
def test_actor_and_learner_on_two_hosts_survive_loss_delay_and_cuts(tmp_path):
    make_robobase_snapshot(tmp_path / "start.pt", seed=0)
    convert_snapshot(tmp_path / "start.pt", tmp_path / "ckpt", progress=False)
    link = netns_link.Link.create(delay_ms=20, loss=0.01, seed=1)
    base = ros_environment(allocate_domain_id(), tmp_path / "roslog")
    sides = {}
    for side, other in (("a", "b"), ("b", "a")):
        env = dict(base)
        env.update(peer_environment(base, write_two_host_profile(tmp_path / f"dds_{side}",
                                                                 [link.addresses[other]])))
        sides[side] = Side(link, side, env, tmp_path)
    actor, learner = sides["a"], sides["b"]
    fa, fb = tmp_path / "probe_a.json", tmp_path / "probe_b.json"

    def probe_a():
        return read(fa) or {}

    def metrics():
        return (read(fb) or {}).get("metrics") or {}

    def wait(pred, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            for s in sides.values():
                for name, p in s.procs.items():
                    if p.poll() is not None and name not in s.stopped:
                        raise AssertionError(f"{s.side}/{name} exited {p.returncode} waiting "
                                             f"for {what}:\n{s.log(name)}")
            time.sleep(0.2)
        logs = "\n".join(f"--- {s.side}/{n} ---\n{s.log(n)}" for s in sides.values()
                         for n in s.procs)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; link "
                             f"{link.close()}; a: {probe_a().get('status')}; b: {metrics()}"
                             f"\n{logs}")

    try:
        learner.node("learner", "drqv2_ros.nodes.learner_node", "learner.yaml", {
            "checkpoint": str(tmp_path / "ckpt"), "output_dir": str(tmp_path / "learner"),
            "device": "cpu", "batch_size": 16, "warmup_transitions": 40, "utd_ratio": 0.2,
            "max_updates_per_second": 1.0, "publish_weights_period_s": 3.0,
            "metrics_period_s": 0.5, "tensorboard": False, "torch_threads": 1})
        learner.start("probe", [sys.executable, "test/netns_probe.py", str(fb), "learner"])
        actor.start("probe", [sys.executable, "test/netns_probe.py", str(fa), "actor"])
        actor.node("policy", "drqv2_ros.nodes.policy_node", "policy.yaml", {
            "checkpoint": str(tmp_path / "ckpt"), "max_episode_steps": 40,
            "control_rate_hz": RATE_HZ, "max_obs_age_s": 0.4})
        wait(lambda: metrics().get("actors") is not None, 90, "the learner's metrics")
        time.sleep(3.0)  # discovery across the link settles before the first step exists
        actor.node("driver", "drqv2_ros.nodes.driver_node", "so101_driver.yaml",
                   {"render_width": 160, "render_height": 120})
        wait(lambda: sum(metrics().get("stored") or [0]) > 60, 120, "steps stored")
        wait(lambda: ((probe_a().get("status") or {}).get("weights_version") or 0) >= 1, 60,
             "learner weights applied by the actor")

        def rate(t0, t1):
            cmds = [t for t in probe_a()["commands"] if t0 <= t <= t1]
            return len(cmds) / (t1 - t0)

        rates = {}
        for cut in (5.0, 30.0):
            v0 = probe_a()["status"]["weights_version"]
            t0 = time.monotonic()
            link.cut(cut)
            time.sleep(cut)
            t1 = time.monotonic()
            rates[cut] = rate(t0 + 0.5, t1 - 0.5)  # the actor kept commanding
            wait(lambda v0=v0: probe_a()["status"]["weights_version"] > v0, 60,
                 f"a weight push after the {cut:.0f} s cut")
        # Stop producing: no images -> no steps. Then every produced step must be in.
        actor.stop("driver")
        time.sleep(2.0)
        produced = probe_a()["status"]["steps_published"]
        time.sleep(1.5)
        assert probe_a()["status"]["steps_published"] == produced

        def accounted():
            m = metrics()
            return m and m["received"] and m["received"][0] >= produced

        wait(accounted, 60, f"all {produced} produced steps received")
        m = metrics()
        stats = link.close()
        print(f"link {stats}; rates {rates}; learner {m}; produced {produced}")
        assert m["actors"] == [""]
        assert m["received"][0] == produced  # exactly once: none lost, none twice
        assert m["lost"] == [0] and m["dropped"] == [0]
        assert m["stored"][0] + m["staged"][0] == produced
        assert stats["dropped_cut"] > 0 and stats["dropped_loss"] > 0
        for cut, r in rates.items():
            assert r >= 0.7 * RATE_HZ, f"command rate {r:.1f}/s during the {cut} s cut"
    finally:
        for s in sides.values():
            s.stop_all()
        link.close()
