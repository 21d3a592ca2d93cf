"""Actor-side timing of the fine-tuning graph over real DDS, against in-process baselines.

Architecture: pick-101 (``make_robobase_snapshot`` default config, converted: one camera,
3 stacked 84x84 rgb frames, low-dim 54, action 4, encoder 4 convs x 32 ch -> 39200 feats,
bottleneck 50, MLPs [256, 256], 2 critics).

In-process baselines (this process, torch 1 thread like the policy node, measured first,
before any node runs):

- ``forward``: ``DrQV2Policy.select_action`` batch 1 (explore=True, as the node acts);
- ``from_pretrained``: ``DrQV2Policy.from_pretrained(folder)``; also ``load_isolated`` (what
  the node's ``/load_checkpoint`` does: load + validate + dry-run forward) for the folder
  and for the RoboBase ``.pt`` (converted in memory);
- ``weights raw``: ``learning.learner.actor_state_bytes`` (serialise) + SHA-256 +
  ``load_actor_bytes`` (load); also the actor's whole ``PolicyRunner.with_weights`` and the
  rclpy (de)serialisation of a ``PolicyWeights`` message.

Then the graph: sim driver (``config/so101_driver.yaml``: 640x480 render at 10 Hz -> 84x84)
+ policy (``config/policy.yaml``, 10 Hz) + learner (``config/learner.yaml`` with batch 64,
warm-up 32 transitions, utd 1, updates UNCAPPED, torch threads = CPUs, weights pushed every
2 s), each its own process on a private ROS_DOMAIN_ID, and an in-process probe that records
wall-clock receive times of ``ee_command``, ``step``, ``camera/image_policy``,
``policy/status``, ``policy_weights`` and ``learner/metrics``.

1. control latency while the learner trains: per command, the image it was computed from
   is the ``step`` of the same tick (its stamp is the image stamp; received within a few ms
   of the command). ``image stamp -> command received`` splits into the image's age at the
   tick (``command stamp - image stamp``: camera render + transport + the wait for the
   unsynchronised 10 Hz tick) and ``tick -> received`` (inference + publish + DDS);
2. hot-swap: ``/load_checkpoint`` round trips (folder and ``.pt``, alternating), and the
   policy's own ``missed_ticks`` counter during the swaps vs during the same-graph window
   without swaps;
3. weight push: learner ``policy_weights`` header stamp -> applied by the actor (the
   policy's "applied learner weights vN" log line, ROS-timestamped; rclpy throttles it to
   one per 10 s, so only those pushes are timed) and -> received by the probe (transport).

Prints a table and the ratios; ``--json`` also writes everything. Whole run ~100 s on
2 cores, under 3 minutes (``--quick``: ~75 s).

    source tools/ros_env.sh && python bench/bench_actor_loop.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import bisect
import copy
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))

from ros_harness import NodeProcess, Probe, allocate_domain_id, ros_environment, wait_for  # noqa: E402

from drqv2_ros.acting.loader import load_isolated  # noqa: E402
from drqv2_ros.acting.policy_runner import PolicyRunner  # noqa: E402
from drqv2_ros.acting.weights import (  # noqa: E402
    WeightsPacket,
    actor_state_bytes,
    load_actor_bytes,
)
from drqv2_ros.cli_checks import float_in, int_in  # noqa: E402
from drqv2_ros.convert.robobase import convert_snapshot, load_checkpoint_any  # noqa: E402
from drqv2_ros.convert.robobase_writer import make_robobase_snapshot  # noqa: E402
from drqv2_ros.policy.modeling_drqv2 import DrQV2Policy  # noqa: E402

RATE_HZ = 10.0
LOG_FORMAT = "[{severity}] [{time}] [{name}]: {message}"
APPLIED_RE = re.compile(r"\[(\d+\.\d+)\] \[policy\]: applied learner weights v(\d+)")


# ------------------------------------------------------------------------------ helpers
def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, float), q)) if len(xs) else float("nan")


def timeit(fn, n: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# ------------------------------------------------------------------ in-process baselines
def baselines(tmp: Path, quick: bool) -> dict:
    torch.set_num_threads(1)  # as the policy node (main: torch.set_num_threads(1))
    ckpt, pt = tmp / "ckpt", tmp / "start.pt"
    out: dict = {}

    # 1. actor forward, batch 1
    runner = PolicyRunner(DrQV2Policy.from_pretrained(ckpt))
    c = runner.config
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (c.num_views, c.frame_stack * c.channels_per_frame,
                                c.image_height, c.image_width), dtype=np.uint8)
    low = rng.normal(size=c.low_dim_size).astype(np.float32)
    batch = {"rgb": torch.from_numpy(rgb).unsqueeze(0),
             "observation.state": torch.from_numpy(low)}
    gen = torch.Generator().manual_seed(0)
    pol = runner.policy
    n = 60 if quick else 200
    fwd = timeit(lambda: pol.select_action(batch, step=runner.schedule_step, explore=True,
                                           generator=gen), n, warmup=10)
    out["forward_ms"] = [x * 1e3 for x in fwd]
    out["runner_call_ms"] = [x * 1e3 for x in timeit(lambda: runner(rgb, low, True), n // 2)]

    # 2. checkpoint loads
    n = 4 if quick else 8
    out["from_pretrained_ms"] = [x * 1e3 for x in
                                 timeit(lambda: DrQV2Policy.from_pretrained(ckpt), n)]
    out["load_pt_ms"] = [x * 1e3 for x in timeit(lambda: load_checkpoint_any(pt), n)]
    out["load_isolated_folder_ms"] = [x * 1e3 for x in
                                    timeit(lambda: load_isolated(ckpt), n)]
    out["load_isolated_pt_ms"] = [x * 1e3 for x in
                                timeit(lambda: load_isolated(pt), n)]

    # 3. weights: serialise (learner), hash, verify + load (actor)
    full = DrQV2Policy.from_pretrained(ckpt)  # the learner holds critics too
    meta = {"main_loop_iterations": 0, "num_updates": 0, "std": "0.1"}
    data = actor_state_bytes(full, meta)
    out["weights_bytes"] = len(data)
    n = 5 if quick else 15
    out["serialise_ms"] = [x * 1e3 for x in timeit(lambda: actor_state_bytes(full, meta), n)]
    out["sha256_ms"] = [x * 1e3 for x in timeit(
        lambda: WeightsPacket.make(data, version=1, learner_step=0, run_id="bench"), n)]
    target = copy.deepcopy(runner.policy)
    out["load_actor_bytes_ms"] = [x * 1e3 for x in
                                  timeit(lambda: load_actor_bytes(target, data), n)]
    packet = WeightsPacket.make(data, version=1, learner_step=0, run_id="bench")
    out["with_weights_ms"] = [x * 1e3 for x in timeit(lambda: runner.with_weights(packet), n)]
    out["deepcopy_actor_ms"] = [x * 1e3 for x in timeit(lambda: copy.deepcopy(runner.policy), n)]
    from rclpy.serialization import deserialize_message, serialize_message

    from drqv2_ros.msg import PolicyWeights

    def make_msg():
        m = PolicyWeights()
        m.version, m.learner_step, m.run_id, m.sha256 = 1, 0, "bench", packet.sha256
        m.data = data
        return m

    msg = make_msg()
    wire = serialize_message(msg)
    out["msg_build_ms"] = [x * 1e3 for x in timeit(make_msg, n)]
    out["msg_serialise_ms"] = [x * 1e3 for x in timeit(lambda: serialize_message(msg), n)]
    out["msg_deserialise_ms"] = [x * 1e3 for x in
                                 timeit(lambda: deserialize_message(wire, PolicyWeights), n)]
    return out


# ------------------------------------------------------------------------------ the graph
class Recorder:
    """Probe subscriptions that record wall-clock (time.time_ns) receive times, the clock
    the nodes stamp with."""

    def __init__(self, probe: Probe):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from drqv2_ros.msg import EndEffectorCommand, PolicyWeights, Step, TrainingMetrics
        from drqv2_ros.nodes.common import SENSOR_QOS, reliable_qos, stamp_to_ns

        self.lock = threading.Lock()
        self.cmds: list[tuple[int, int]] = []           # (recv, stamp = tick time)
        self.steps: list[tuple[int, int, bool]] = []    # (recv, image stamp, is_last)
        self.images: list[tuple[int, int]] = []         # (recv, stamp)
        self.status: list[tuple[int, dict]] = []
        self.weights: list[tuple[int, int, int]] = []   # (recv, stamp, version)
        self.metrics: list[tuple[int, object]] = []
        node = probe.node

        def rec(lst, f):
            def cb(msg):
                t = time.time_ns()
                with self.lock:
                    lst.append(f(t, msg))
            return cb

        node.create_subscription(EndEffectorCommand, "ee_command", rec(
            self.cmds, lambda t, m: (t, stamp_to_ns(m.header.stamp))), reliable_qos(10))
        node.create_subscription(Step, "step", rec(
            self.steps, lambda t, m: (t, stamp_to_ns(m.header.stamp), bool(m.is_last))),
            reliable_qos(100))
        node.create_subscription(Image, "camera/image_policy", rec(
            self.images, lambda t, m: (t, stamp_to_ns(m.header.stamp))), SENSOR_QOS)
        node.create_subscription(String, "policy/status", rec(
            self.status, lambda t, m: (t, json.loads(m.data))), reliable_qos(10))
        node.create_subscription(PolicyWeights, "policy_weights", rec(
            self.weights, lambda t, m: (t, stamp_to_ns(m.header.stamp), int(m.version))),
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL))
        node.create_subscription(TrainingMetrics, "learner/metrics", rec(
            self.metrics, lambda t, m: (t, m)), reliable_qos(10))

    def status_at(self, t_ns: int, after: bool = False) -> dict:
        """Last status received before ``t_ns`` (or the first one after it)."""
        with self.lock:
            st = list(self.status)
        if after:
            return next((s for t, s in st if t >= t_ns), st[-1][1] if st else {})
        prev = [s for t, s in st if t <= t_ns]
        return prev[-1] if prev else (st[0][1] if st else {})


def start_graph(tmp: Path, args) -> tuple[dict, list[NodeProcess]]:
    env = ros_environment(allocate_domain_id(), tmp / "roslog")
    env["RCUTILS_CONSOLE_OUTPUT_FORMAT"] = LOG_FORMAT
    w, h = (int(v) for v in args.render.lower().split("x"))
    driver = NodeProcess("drqv2_ros.nodes.driver_node", env, tmp, name="driver",
                         params_file=ROOT / "config" / "so101_driver.yaml",
                         params={"render_width": w, "render_height": h})
    policy = NodeProcess("drqv2_ros.nodes.policy_node", env, tmp, name="policy",
                         params_file=ROOT / "config" / "policy.yaml",
                         params={"checkpoint": str(tmp / "ckpt"),
                                 "control_rate_hz": RATE_HZ})
    learner = NodeProcess("drqv2_ros.nodes.learner_node", env, tmp, name="learner",
                          params_file=ROOT / "config" / "learner.yaml",
                          params={"checkpoint": str(tmp / "ckpt"),
                                  "output_dir": str(tmp / "learner"), "resume": False,
                                  "batch_size": args.batch, "warmup_transitions": 32,
                                  "utd_ratio": 1.0,
                                  "max_updates_per_second": args.max_updates_per_second,
                                  "torch_threads": args.learner_threads,
                                  "online_capacity": 3000, "offline_capacity": 1000,
                                  "publish_weights_period_s": args.push_period,
                                  "metrics_period_s": 1.0})
    return env, [driver, policy, learner]


def latency_stats(rec: Recorder, t0: int, t1: int) -> dict:
    with rec.lock:
        cmds = [c for c in rec.cmds if t0 <= c[0] < t1]
        steps = [s for s in rec.steps if not s[2]]
        images = list(rec.images)
    step_recv = [s[0] for s in steps]
    img_by_stamp = {s: r for r, s in images}
    total, age, tick_recv, wait = [], [], [], []
    unmatched = 0
    for recv, stamp in cmds:
        i = bisect.bisect_left(step_recv, recv)
        best = min((j for j in (i - 1, i) if 0 <= j < len(steps)),
                   key=lambda j: abs(step_recv[j] - recv), default=None)
        if best is None or abs(step_recv[best] - recv) > 40e6:
            unmatched += 1
            continue
        img = steps[best][1]
        if not 0 <= stamp - img <= 0.25e9:  # max_obs_age_s: not this tick's image
            unmatched += 1
            continue
        total.append((recv - img) / 1e6)
        age.append((stamp - img) / 1e6)
        tick_recv.append((recv - stamp) / 1e6)
        if img in img_by_stamp:
            wait.append((stamp - img_by_stamp[img]) / 1e6)
    pipeline = [(r - s) / 1e6 for r, s in images if t0 <= r < t1]
    stamps = [s for _, s in cmds]
    periods = [(b - a) / 1e6 for a, b in zip(stamps, stamps[1:]) if b - a < 0.5e9]
    return dict(n=len(total), unmatched=unmatched, total_ms=total, image_age_ms=age,
                tick_to_recv_ms=tick_recv, camera_pipeline_ms=pipeline, wait_for_tick_ms=wait,
                tick_period_ms=periods, commands_per_s=len(cmds) / ((t1 - t0) / 1e9))


def max_tick_gap(rec: Recorder, t0: int, t1: int) -> float:
    """Largest timer gap the policy reported (status: max over each 1 s) in [t0, t1 + 1 s]."""
    with rec.lock:
        gaps = [st.get("max_tick_gap_ms", 0.0) for t, st in rec.status
                if t0 + 0.5e9 <= t <= t1 + 1.1e9]
    return max(gaps) if gaps else float("nan")


def status_delta(a: dict, b: dict) -> dict:
    skipped = {k: b.get("skipped", {}).get(k, 0) - a.get("skipped", {}).get(k, 0)
               for k in b.get("skipped", {})}
    return dict(ticks=b.get("ticks", 0) - a.get("ticks", 0),
                missed=b.get("missed_ticks", 0) - a.get("missed_ticks", 0),
                skipped={k: v for k, v in skipped.items() if v},
                node_latency_p50=b.get("latency_ms_p50"), node_latency_p99=b.get("latency_ms_p99"))


def timed_call(probe: Probe, client, request, timeout: float = 60.0):
    done = threading.Event()
    box: dict = {}

    def cb(fut):
        box["t"] = time.perf_counter()
        done.set()

    t0 = time.perf_counter()
    fut = client.call_async(request)
    fut.add_done_callback(cb)
    if not done.wait(timeout):
        raise TimeoutError("load_checkpoint did not answer")
    return (box["t"] - t0) * 1e3, fut.result()


def run_graph(tmp: Path, args) -> dict:
    from drqv2_ros.srv import LoadCheckpoint

    env, procs = start_graph(tmp, args)
    driver, policy, learner = procs
    probe = Probe(env, name="bench_probe")
    rec = Recorder(probe)
    out: dict = {}
    try:
        t_start = time.monotonic()
        wait_for(lambda: len(rec.cmds) >= 10, 120, "10 commands from the policy", procs)
        wait_for(lambda: rec.metrics and rec.metrics[-1][1].update_step >= 3, 120,
                 "learner updates", procs)
        out["startup_s"] = time.monotonic() - t_start
        time.sleep(1.0)

        # 1. latency window: learner training, nothing else
        pids = {p.name: p.proc.pid for p in procs}
        cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
        m0 = rec.metrics[-1][1]
        w0 = time.time_ns()
        time.sleep(args.window)
        w1 = time.time_ns()
        cpu1 = {k: cpu_seconds(v) for k, v in pids.items()}
        m1 = rec.metrics[-1][1]
        dt = (w1 - w0) / 1e9
        out["cpu_cores"] = {k: (cpu1[k] - cpu0[k]) / dt for k in pids}
        out["learner_updates_per_s"] = (m1.update_step - m0.update_step) / dt
        out["learner_update_step"] = int(m1.update_step)
        out["latency"] = latency_stats(rec, w0, w1)
        time.sleep(1.2)  # the status covering the window's end
        out["window_status"] = status_delta(rec.status_at(w0), rec.status_at(w1, after=True))
        out["window_s"] = dt
        out["window_max_tick_gap_ms"] = max_tick_gap(rec, w0, w1)

        # 2. hot-swaps (learner still training)
        client = probe.node.create_client(LoadCheckpoint, "load_checkpoint")
        if not client.wait_for_service(timeout_sec=30):
            raise TimeoutError("no load_checkpoint service")
        swaps: dict[str, list] = {"folder": [], "pt": []}
        server: dict[str, list] = {"folder": [], "pt": []}
        paths = {"folder": tmp / "ckpt", "pt": tmp / "start.pt"}
        s0 = time.time_ns()
        for _ in range(args.swaps):
            for kind in ("pt", "folder"):
                ms, resp = timed_call(probe, client, LoadCheckpoint.Request(path=str(paths[kind])))
                if not resp.success:
                    raise RuntimeError(resp.message)
                swaps[kind].append(ms)
                m = re.search(r" in (\d+\.\d+) s", resp.message)
                if m:
                    server[kind].append(float(m.group(1)) * 1e3)
                time.sleep(0.3)
        s1 = time.time_ns()
        time.sleep(1.2)
        out["swap_ms"] = swaps
        out["swap_server_ms"] = server  # as the node reports it (2 decimals of a second)
        out["swap_status"] = status_delta(rec.status_at(s0), rec.status_at(s1, after=True))
        out["swap_window_s"] = (s1 - s0) / 1e9
        out["swap_max_tick_gap_ms"] = max_tick_gap(rec, s0, s1)
        out["swap_latency"] = latency_stats(rec, s0, s1)
        time.sleep(max(0.0, args.push_period * 1.5))  # let a push land after the swaps
    finally:
        probe.close()
        for p in procs:
            p.stop(timeout=20)

    # 3. weight pushes: stamp -> applied (policy log) and stamp -> probe receive
    log = (tmp / "policy.log").read_text(errors="replace")
    applied = {int(v): int(round(float(t) * 1e9)) for t, v in APPLIED_RE.findall(log)}
    t_ready = w0 - int(5e9)  # ignore the start-up push (latched, applied long after)
    pushes = {v: (r, s) for r, s, v in rec.weights if s >= t_ready}
    out["push_count"] = len(pushes)
    out["push_to_probe_ms"] = [(r - s) / 1e6 for r, s in pushes.values()]
    out["push_to_applied_ms"] = [(applied[v] - s) / 1e6 for v, (r, s) in pushes.items()
                                 if v in applied]
    versions = {st.get("weights_version", -1) for _, st in rec.status}
    out["pushes_seen_applied_in_status"] = sum(1 for v in pushes if v in versions)
    out["log_errors"] = {p.name: p.log_path.read_text(errors="replace").count("[ERROR]")
                         for p in procs}
    return out


# --------------------------------------------------------------------------------- report
def fmt(x: float) -> str:
    return "   n/a" if x != x else f"{x:8.1f}"


def report(base: dict, g: dict, info: dict) -> dict:
    L = g["latency"]
    rows = []

    def row(name, xs, note=""):
        rows.append((name, len(xs), pct(xs, 50), pct(xs, 99), max(xs) if xs else float("nan"),
                     note))

    row("forward select_action b=1 (in-proc)", base["forward_ms"], "baseline 1")
    row("runner call np->np (in-proc)", base["runner_call_ms"])
    row("image stamp -> cmd received", L["total_ms"], "while training")
    row("  image age at tick", L["image_age_ms"], "cmd stamp - image stamp")
    row("    camera pipeline (render+pub)", L["camera_pipeline_ms"], "probe recv - stamp")
    row("    wait for the 10 Hz tick", L["wait_for_tick_ms"], "tick - image recv")
    row("  tick -> cmd received", L["tick_to_recv_ms"], "inference + publish + DDS")
    row("command interval (cmd stamps)", L["tick_period_ms"], "100; + resets, skips")
    S = g["swap_latency"]
    row("image stamp -> cmd, during swaps", S["total_ms"])
    row("  tick -> cmd received, during swaps", S["tick_to_recv_ms"])
    row("from_pretrained folder (in-proc)", base["from_pretrained_ms"], "baseline 2")
    row("load_isolated folder (child process)", base["load_isolated_folder_ms"], "node's work")
    row("load_checkpoint_any .pt (in-proc)", base["load_pt_ms"])
    row("load_isolated .pt (child process)", base["load_isolated_pt_ms"], "node's work")
    row("/load_checkpoint folder round trip", g["swap_ms"]["folder"], "while training")
    row("/load_checkpoint .pt round trip", g["swap_ms"]["pt"], "while training")
    row("actor_state_bytes (serialise)", base["serialise_ms"])
    row("sha256", base["sha256_ms"])
    row("load_actor_bytes", base["load_actor_bytes_ms"])
    raw = [a + b + c for a, b, c in zip(base["serialise_ms"], base["sha256_ms"],
                                        base["load_actor_bytes_ms"])]
    row("  raw = serialise+sha256+load", raw, "baseline 3")
    row("PolicyRunner.with_weights (actor)", base["with_weights_ms"], "verify+copy+load")
    row("PolicyWeights msg build+serialise", [a + b for a, b in zip(
        base["msg_build_ms"], base["msg_serialise_ms"])], "rclpy")
    row("PolicyWeights msg deserialise", base["msg_deserialise_ms"], "rclpy")
    row("push stamp -> probe received", g["push_to_probe_ms"], "transport")
    row("push stamp -> actor applied", g["push_to_applied_ms"], "from policy log")

    print()
    print(f"{'measurement':40s} {'n':>4s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}  note")
    print("-" * 96)
    for name, n, p50, p99, mx, note in rows:
        print(f"{name:40s} {n:4d} {fmt(p50)} {fmt(p99)} {fmt(mx)}  {note}")

    ws, ss = g["window_status"], g["swap_status"]
    ratios = {
        "latency_p50 / forward_p50": pct(L["total_ms"], 50) / pct(base["forward_ms"], 50),
        "tick->cmd_p50 / forward_p50": pct(L["tick_to_recv_ms"], 50) / pct(base["forward_ms"], 50),
        "swap_folder_p50 / from_pretrained_p50":
            pct(g["swap_ms"]["folder"], 50) / pct(base["from_pretrained_ms"], 50),
        "swap_pt_p50 / from_pretrained_p50":
            pct(g["swap_ms"]["pt"], 50) / pct(base["from_pretrained_ms"], 50),
        "swap_folder_p50 / load_isolated_folder_p50":
            pct(g["swap_ms"]["folder"], 50) / pct(base["load_isolated_folder_ms"], 50),
        "swap_pt_p50 / load_isolated_pt_p50":
            pct(g["swap_ms"]["pt"], 50) / pct(base["load_isolated_pt_ms"], 50),
        "push_applied_p50 / raw_weights_p50": pct(g["push_to_applied_ms"], 50) / pct(raw, 50),
    }
    print()
    print(f"policy node's own status: latency p50 {ws['node_latency_p50']:.1f} ms, p99 "
          f"{ws['node_latency_p99']:.1f} ms (last 200 ticks, image stamp -> after publish)")
    print(f"matched commands {L['n']} (unmatched {L['unmatched']}), commands/s "
          f"{L['commands_per_s']:.2f}")
    print(f"ticks missed while training: {ws['missed']} in {ws['ticks']} ticks "
          f"({g['window_s']:.0f} s), max timer gap {g['window_max_tick_gap_ms']:.0f} ms; "
          f"skipped {ws['skipped']}")
    print(f"ticks missed during {2 * len(g['swap_ms']['pt'])} swaps: {ss['missed']} in "
          f"{ss['ticks']} ticks ({g['swap_window_s']:.1f} s), max timer gap "
          f"{g['swap_max_tick_gap_ms']:.0f} ms; skipped {ss['skipped']}")
    print(f"weight pushes after warm-up: {g['push_count']}, timed applies (log, 1 per 10 s): "
          f"{len(g['push_to_applied_ms'])}, seen applied in status: "
          f"{g['pushes_seen_applied_in_status']}; weights {base['weights_bytes'] / 1e6:.2f} MB")
    print("CPU use in the training window (cores): " + ", ".join(
        f"{k} {v:.2f}" for k, v in g["cpu_cores"].items())
        + f"; learner {g['learner_updates_per_s']:.2f} updates/s (batch {info['batch']})")
    print(f"start-up {g['startup_s']:.1f} s; errors in node logs: {g['log_errors']}")
    print()
    print("RATIOS (same run)")
    for k, v in ratios.items():
        print(f"  {k:45s} {v:7.2f}")
    return ratios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter windows (~1.5 min)")
    ap.add_argument("--window", type=float_in(0, 3600, open_low=True), default=None,
                    help="latency window while training, s (default 45, quick 20)")
    ap.add_argument("--swaps", type=int_in(0, 10_000), default=None,
                    help="hot-swaps of each kind (default 8, quick 4)")
    ap.add_argument("--batch", type=int_in(1, 65_536), default=64, help="learner batch size")
    ap.add_argument("--learner-threads", type=int_in(1, 256), default=os.cpu_count() or 1,
                    help="learner torch threads (default: CPUs)")
    ap.add_argument("--max-updates-per-second", type=float_in(0, 1e6), default=0.0,
                    help="learner update cap (0 = uncapped, the default)")
    ap.add_argument("--push-period", type=float_in(0, 3600, open_low=True), default=2.0,
                    help="learner weight push period")
    ap.add_argument("--render", default="640x480", help="sim camera render WxH")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (node logs)")
    args = ap.parse_args(argv)
    args.window = args.window or (20.0 if args.quick else 45.0)
    args.swaps = args.swaps or (4 if args.quick else 8)
    t0 = time.perf_counter()
    info = dict(cpus=os.cpu_count(), machine=platform.processor() or platform.machine(),
                torch=torch.__version__, load_avg_start=os.getloadavg(), batch=args.batch,
                learner_threads=args.learner_threads,
                max_updates_per_second=args.max_updates_per_second, render=args.render,
                window_s=args.window, swaps=args.swaps, push_period_s=args.push_period)
    try:
        import subprocess

        info["git"] = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
            text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["git"] = "?"
    cap = (f"<= {args.max_updates_per_second}/s" if args.max_updates_per_second
           else "uncapped")
    print(f"{info['cpus']} CPUs, torch {info['torch']}, load avg {info['load_avg_start'][0]:.2f}"
          f"; learner batch {args.batch}, {args.learner_threads} threads, updates {cap}"
          f"; render {args.render} at 10 Hz; control 10 Hz; code {info['git']}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_actor_loop_"))
    try:
        make_robobase_snapshot(tmp / "start.pt", seed=0)
        convert_snapshot(tmp / "start.pt", tmp / "ckpt", progress=False)
        base = baselines(tmp, args.quick)
        print(f"baselines done ({time.perf_counter() - t0:.0f} s); starting the graph")
        g = run_graph(tmp, args)
        info["load_avg_end"] = os.getloadavg()
        info["wall_s"] = time.perf_counter() - t0
        ratios = report(base, g, info)
        print(f"\nload avg start {info['load_avg_start'][0]:.2f} end "
              f"{info['load_avg_end'][0]:.2f}; total {info['wall_s']:.0f} s")
        if args.json:
            args.json.write_text(json.dumps({"info": info, "baselines": base, "graph": g,
                                             "ratios": ratios}, indent=1, default=str) + "\n")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
