"""`drqv2-ros sim-finetune`: the whole product in simulation, in one command.

1. Start checkpoint: by default the start policy made in simulation
   (``demo/start_policy.py``: scripted demos from the ``wrist_view`` pose, behaviour cloning,
   the critic; made once, ~6-7 minutes on 2 cores, then reused from
   ``runs/start_policy/``); or ``--checkpoint`` (a converted folder), ``--snapshot`` (your
   RoboBase snapshot, converted), ``--scratch`` (a project-made RoboBase-layout snapshot of
   random weights, converted).
2. Its policy-only success under the shift (``--shift``, default ``real_proxy``), measured
   in-process before the graph starts: ``--eval-episodes`` fixed placements, mean action,
   no operator, the driver's render.
3. The fine-tuning graph against the MuJoCo SO-101 under that shift (driver with rendering,
   policy, learner, teleop fed by the scripted operator through the same Joy path a human
   uses, taking over when the policy stalls, the bag recorder), each node its own process
   on a private ROS_DOMAIN_ID.
4. Progress while it runs; part-way, a hot-swap to the learner's latest checkpoint through
   ``/load_checkpoint``; at the end (budget or Ctrl-C) every process is stopped cleanly.
5. The learner's last checkpoint evaluated like the start (policy alone, the same
   placements), then a report: text, JSON, PNG plots and TensorBoard logs, with their paths
   printed; policy-alone success before and after, assisted successes apart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np

from drqv2_ros.bringup.dds import PROFILE_VARS, profile_environment
from drqv2_ros.bringup.graph import GraphOptions
from drqv2_ros.bringup.launcher import GraphProcesses
from drqv2_ros.bringup.shm_clean import SHM, stale_segments
from drqv2_ros.cli_checks import float_in, int_in
from drqv2_ros.demo.report import EpisodeSummary, RunRecord, write_report
from drqv2_ros.package_files import config_file

NODES = ("so101_driver", "policy", "learner", "teleop", "scripted_operator", "recorder")


def _demo_params(a) -> dict:
    """Overrides for a short CPU run (written to <out>/params.yaml, applied last)."""
    return {
        # The sim renders its 640x480 wrist camera on the same CPU cores as everything else
        # (55-140 ms a frame on 2 cores): allow older frames than on the robot (0.25 s).
        "policy": {"ros__parameters": {"max_episode_steps": a.episode_steps,
                                       "max_obs_age_s": 0.4}},
        "learner": {"ros__parameters": {
            "batch_size": a.batch_size, "warmup_transitions": a.warmup,
            "utd_ratio": a.utd_ratio, "checkpoint_period_updates": a.checkpoint_every,
            "publish_weights_period_s": a.weights_period, "online_capacity": 20000,
            "offline_capacity": 10000, "torch_threads": 1, "metrics_period_s": 2.0,
            "max_updates_per_second": a.max_updates_per_second,
            # the benchmark's fine-tuning recipe for a pretrained start (bench_learning:
            # the cloned encoder kept, RoboBase's BC term on demos and interventions);
            # from random weights (--scratch) RoboBase's update alone
            "freeze_encoder": a.freeze_encoder == "on" or (a.freeze_encoder == "auto"
                                                          and not a.scratch),
            "bc_weight": a.bc_weight}},
        # HIL: 'assist' takes over when the policy stalls or heads away (a person watching
        # it); 'schedule' in about half the episodes, for a few seconds each.
        "scripted_operator": {"ros__parameters": {
            "seed": a.seed, "intervene_every_n_episodes": 0, "takeover": a.operator,
            "intervene_probability": a.intervene_probability, "intervene_start_s": 0.5,
            "intervene_duration_s": 3.0}},
        "so101_driver": {"ros__parameters": {"seed": a.seed, "sim_shift": a.shift}},
        # The run's bag: the transition stream and the small topics (raw 640x480 frames
        # would add ~9 MB/s; `drqv2-ros record` records them when asked).
        "recorder": {"ros__parameters": {"topics": [
            "step", "joint_states", "camera/image_policy", "ee_command", "intervention",
            "episode_event", "driver/status"]}},
    }


def prepare_checkpoint(out: Path, snapshot: str | None, seed: int, *, checkpoint: str = "",
                       scratch: bool = False, progress: bool = True) -> tuple[Path, str]:
    from drqv2_ros.convert.robobase import convert_snapshot
    from drqv2_ros.convert.robobase_writer import make_robobase_snapshot

    if checkpoint:
        return Path(checkpoint), f"checkpoint {checkpoint}"
    if not snapshot and not scratch:
        from drqv2_ros.demo.start_policy import StartPolicyRecipe, cached_start_policy

        path, info, reused = cached_start_policy(StartPolicyRecipe(seed=seed),
                                                 progress=progress)
        nominal = info.get("nominal_policy_only") or {}
        return path, (f"start policy {path} ({'reused' if reused else 'made now'}, "
                      f"{info['seconds']['total']:.0f} s to make; nominal policy-only "
                      f"success {nominal.get('successes', '?')}/{nominal.get('episodes', '?')}"
                      f"; how: {Path(path).parents[1] / 'start_policy.json'})")
    if snapshot:
        src = Path(snapshot)
        origin = f"user snapshot {src}"
    else:
        src = make_robobase_snapshot(out / "start_snapshot.pt", seed=seed)
        origin = f"project-made RoboBase-format snapshot {src} (pick-101 architecture)"
    report = convert_snapshot(src, out / "checkpoint", progress=False, force=True)
    return out / "checkpoint", f"{origin}\n{report.summary()}"


def _ros_env(out: Path, domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_LOG_DIR=str(out / "ros_logs"), HOME=env.get("HOME", str(out)),
               MUJOCO_GL=env.get("MUJOCO_GL", "egl"), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    # the run's own one-machine profile, for Fast DDS 2.x and 3.x alike
    env.update(profile_environment(env, config_file("fastdds_profile.xml"), override=True))
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    return env


def _shm_files(shm: Path = SHM) -> set[str]:
    try:
        return {p.name for p in shm.iterdir() if "fast" in p.name}
    except OSError:
        return set()


def _release_shm(before: set[str], domain_id: int, timeout: float = 5.0, shm: Path = SHM
                 ) -> tuple[list[str], list[str]]:
    """Fast DDS shared memory the run left behind, once all its processes have exited.

    The run's own are the files new since it started that no live process holds (their
    ``_el`` lock is free: a node that did not exit cleanly) and the port files of its
    private domain (``fastrtps_port<N>``, N in 7400 + 250 * domain + [0, 250)). Files of
    other ROS 2 processes running meanwhile (a test suite, another graph) are never
    touched or reported. Waits up to ``timeout`` for the run's segments to be released,
    then removes its domain's port files (every process that could use them is gone, as
    ``fastdds shm clean`` would). Returns (cleaned, leftover)."""
    lo = 7400 + 250 * domain_id

    def own_port(name: str) -> bool:
        if "fastrtps_port" not in name:
            return False
        digits = "".join(c for c in name.split("port", 1)[-1] if c.isdigit())
        return bool(digits) and lo <= int(digits[:5]) < lo + 250

    def left() -> list[str]:
        new = _shm_files(shm) - before
        unheld = set(stale_segments(shm))
        return sorted(n for n in new if n in unheld or own_port(n))

    deadline = time.monotonic() + timeout
    while [n for n in left() if not own_port(n)] and time.monotonic() < deadline:
        time.sleep(0.25)
    cleaned = []
    for name in left():
        if own_port(name):
            try:
                (shm / name).unlink()
                cleaned.append(name)
            except OSError:
                pass
    return cleaned, left()


class Monitor:
    """An in-process rclpy node that watches the run and drives the hot-swap."""

    def __init__(self, rec: RunRecord):
        import rclpy
        from rclpy.signals import SignalHandlerOptions
        from std_msgs.msg import String

        from drqv2_ros.msg import Step, TrainingMetrics
        from drqv2_ros.nodes.common import STEP_QOS, reliable_qos

        # Ctrl-C is ours: it must stop the graph in order and still write the report.
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.rclpy = rclpy
        self.node = rclpy.create_node("sim_finetune_monitor")
        self.rec = rec
        self.t0 = time.monotonic()
        self._ep: dict[int, list] = {}
        self._status: list[tuple[float, dict]] = []
        self.node.create_subscription(String, "policy/status", self._on_status, reliable_qos(10))
        self.node.create_subscription(TrainingMetrics, "learner/metrics", self._on_metrics,
                                      reliable_qos(10))
        self.node.create_subscription(Step, "step", self._on_step, STEP_QOS)
        self._swap_future = None

    def _on_status(self, msg) -> None:
        s = json.loads(msg.data)
        t = time.monotonic() - self.t0
        self._status.append((t, s))
        self.rec.weights_applied = int(s.get("weights_version", -1))
        self.rec.skipped_ticks = s.get("skipped", {})
        if s.get("commanded", 0) > 0:
            self.rec.latency.append({"t": t, "p50": s["latency_ms_p50"],
                                     "p99": s["latency_ms_p99"]})

    def _on_metrics(self, m) -> None:
        self.rec.metrics.append({
            "t": time.monotonic() - self.t0, "update_step": m.update_step,
            "critic_loss": m.critic_loss, "actor_loss": m.actor_loss, "q_mean": m.q_mean,
            "stddev": m.stddev, "updates_per_second": m.updates_per_second,
            "online_size": m.online_size, "offline_size": m.offline_size,
            "transitions_received": m.transitions_received,
            "intervention_rate": m.intervention_rate, "weights_version": m.weights_version})

    def _on_step(self, m) -> None:
        self.rec.steps_received += 1
        ep = self._ep.setdefault(int(m.episode), [])
        ep.append((bool(m.is_intervention), float(m.reward), bool(m.terminated)))
        if m.is_last:
            steps = self._ep.pop(int(m.episode))[1:]  # transitions (skip the first obs)
            self.rec.episodes.append(EpisodeSummary(
                episode=int(m.episode), steps=len(steps),
                success=bool(m.terminated and m.reward > 0),
                intervention_rate=float(np.mean([s[0] for s in steps])) if steps else 0.0,
                ret=float(sum(s[1] for s in steps))))

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rclpy.spin_once(self.node, timeout_sec=min(0.1, max(0.0, end - time.monotonic())))

    def nodes_seen(self) -> set[str]:
        return {n for n, _ in self.node.get_node_names_and_namespaces()}

    def hot_swap(self, path: Path, timeout: float = 60.0) -> dict:
        from drqv2_ros.srv import LoadCheckpoint

        client = self.node.create_client(LoadCheckpoint, "load_checkpoint")
        t0 = time.monotonic()
        if not client.wait_for_service(timeout_sec=10.0):
            return {"success": False, "message": "load_checkpoint service not available"}
        future = client.call_async(LoadCheckpoint.Request(path=str(path)))
        while not future.done() and time.monotonic() - t0 < timeout:
            self.rclpy.spin_once(self.node, timeout_sec=0.1)
        if not future.done():
            return {"success": False, "message": f"no answer within {timeout:.0f} s"}
        r = future.result()
        return {"success": bool(r.success), "message": r.message, "loaded": r.loaded,
                "path": str(path), "seconds": time.monotonic() - t0}

    def commands_per_second(self) -> float:
        pts = [(t, s["commanded"]) for t, s in self._status if s.get("commanded", 0) > 0]
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            return 0.0
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    def progress(self) -> dict:
        last = self._status[-1][1] if self._status else {}
        m = self.rec.metrics[-1] if self.rec.metrics else {}
        eps = self.rec.episodes
        split = self.rec.successes()
        return {"ep": len(eps), "succ alone": split["policy_alone"],
                "succ assisted": split["operator_assisted"],
                "steps": self.rec.steps_received,
                "upd": int(m.get("update_step", 0)),
                "upd/s": f"{m.get('updates_per_second', 0.0):.2f}",
                "interv": f"{np.mean([e.intervention_rate for e in eps]) if eps else 0:.0%}",
                "w": last.get("weights_version", -1)}

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.shutdown()


def _check_options(ap: argparse.ArgumentParser, a) -> None:
    """The checks across options, before any work (each option's own range is its argparse
    type, ``cli_checks``): exit 2, the options named."""
    from drqv2_ros.robot.sim_shift import shift_named

    if sum(map(bool, (a.snapshot, a.checkpoint, a.scratch))) > 1:
        ap.error("--snapshot, --checkpoint and --scratch exclude each other")
    try:
        shift_named(a.shift)
    except ValueError as exc:
        ap.error(f"--shift: {exc}")


def _evaluate(checkpoint: Path, out: Path, a) -> dict:
    """Policy-only success of ``checkpoint`` under the run's shift, on the driver's render
    (the graph's camera: 640x480, every mesh), at fixed placements."""
    from drqv2_ros.bringup.graph import rendering_environment
    from drqv2_ros.demo.sim_train import evaluate_policy
    from drqv2_ros.robot.driver_setup import DriverParams

    os.environ.update(rendering_environment(os.environ))
    d = DriverParams()
    t0 = time.monotonic()
    ev = evaluate_policy(str(checkpoint), str(out), episodes=a.eval_episodes, shift=a.shift,
                         render=d.sim_render, render_size=(d.render_width, d.render_height),
                         episode_steps=a.episode_steps, seed=a.seed)
    return {"checkpoint": str(checkpoint), "episodes": len(ev.episodes),
            "successes": sum(e.success for e in ev.episodes),
            "success_rate": ev.success_rate, "seconds": time.monotonic() - t0}


def _fmt_eval(e: dict) -> str:
    return (f"policy-only success {e['successes']}/{e['episodes']} "
            f"({100 * e['success_rate']:.0f}%)")


def _bag_info(path: Path) -> dict:
    info = {"path": str(path), "messages": 0, "bytes": 0, "topics": {}}
    if not path.exists():
        return info
    info["bytes"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    try:
        from rosbags.rosbag2 import Reader

        with Reader(path) as reader:
            info["messages"] = reader.message_count
            info["topics"] = {c.topic: c.msgcount for c in reader.connections}
    except Exception as exc:  # report, never crash the report
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def sim_finetune_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drqv2-ros sim-finetune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float_in(0, 24 * 60, open_low=True), default=4.0,
                    help="run budget (default 4)")
    ap.add_argument("--snapshot", default="", help="your RoboBase snapshot (.pt), converted; "
                    "default: the start policy made in simulation")
    ap.add_argument("--checkpoint", default="", help="a converted checkpoint folder to start "
                    "from")
    ap.add_argument("--scratch", action="store_true", help="start from random weights (a "
                    "project-made RoboBase-layout snapshot, converted)")
    ap.add_argument("--shift", default="real_proxy", help="the sim-to-real proxy the robot "
                    "runs under: none, real_proxy (default) or a SimShift YAML file")
    ap.add_argument("--eval-episodes", type=int_in(0, 1_000_000), default=10,
                    help="policy-only evaluation episodes before and after (default 10; 0: "
                    "none)")
    ap.add_argument("--operator", choices=("assist", "schedule"), default="assist",
                    help="when the scripted operator takes over (default assist)")
    ap.add_argument("--freeze-encoder", choices=("auto", "on", "off"), default="auto",
                    help="keep the start policy's encoder fixed (auto: on unless --scratch)")
    ap.add_argument("--bc-weight", type=float_in(0, 1e6), default=1.0,
                    help="RoboBase's BC term on demo and intervention samples (default 1; "
                    "0: RoboBase's update alone)")
    ap.add_argument("--out", default="", help="output folder (default runs/sim_finetune/<time>)")
    ap.add_argument("--hot-swap-at", type=float_in(0, 1), default=0.6,
                    help="fraction of the budget at which to hot-swap (default 0.6)")
    ap.add_argument("--episode-steps", type=int_in(1, 1_000_000), default=60)
    ap.add_argument("--batch-size", type=int_in(1, 1_000_000), default=64)
    ap.add_argument("--warmup", type=int_in(0, 1_000_000), default=120)
    ap.add_argument("--utd-ratio", type=float_in(0, 1e6), default=0.5)
    ap.add_argument("--checkpoint-every", type=int_in(1, 1_000_000), default=10)
    ap.add_argument("--weights-period", type=float_in(0, 1e6, open_low=True), default=4.0)
    ap.add_argument("--max-updates-per-second", type=float_in(0, 1e6), default=4.0)
    ap.add_argument("--intervene-probability", type=float_in(0, 1), default=0.5,
                    help="chance that the scripted operator takes over in an episode")
    ap.add_argument("--seed", type=int_in(0, 2**31 - 1), default=0)
    ap.add_argument("--device", default="auto",
                    help="learner device: auto (CUDA when available), cpu, cuda, cuda:N")
    a = ap.parse_args(argv)
    _check_options(ap, a)

    out = Path(a.out or f"runs/sim_finetune/{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = a.minutes * 60.0
    print(f"[sim-finetune] output: {out}", flush=True)
    checkpoint, origin = prepare_checkpoint(out, a.snapshot or None, a.seed,
                                            checkpoint=a.checkpoint, scratch=a.scratch)
    print(f"[sim-finetune] start checkpoint: {origin}", flush=True)
    rec = RunRecord(shift=a.shift, start=str(checkpoint))
    if a.eval_episodes:
        rec.policy_only_before = _evaluate(checkpoint, out / "eval_before", a)
        print(f"[sim-finetune] before: {_fmt_eval(rec.policy_only_before)} under {a.shift}",
              flush=True)

    import yaml

    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(_demo_params(a)))
    domain_id = 1 + random.SystemRandom().randrange(100)
    env = _ros_env(out, domain_id)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                                          "ROS_LOG_DIR", *PROFILE_VARS)})
    opt = GraphOptions(mode="sim", checkpoint=str(checkpoint), record=True,
                       bag_path=str(out / "bag"), operator="scripted",
                       output_dir=str(out / "learner"), extra_params_file=str(params),
                       learner_device=a.device)
    shm_before = _shm_files()
    stop = {"flag": False}

    def _stop(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    graph = GraphProcesses(opt, log_dir=out / "logs", env=env)
    monitor = Monitor(rec)
    t0 = time.monotonic()
    graph.start()
    try:
        print("[sim-finetune] started " + ", ".join(r.spec.name for r in graph.running)
              + f" (ROS_DOMAIN_ID={domain_id}; logs in {out / 'logs'})", flush=True)
        from tqdm import tqdm

        swapped = False
        code = 0
        with tqdm(total=int(budget), unit="s", desc="sim fine-tuning", dynamic_ncols=True,
                  bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}s {postfix}") as bar:
            while not stop["flag"]:
                monitor.spin(1.0)
                elapsed = time.monotonic() - t0
                bar.n = min(int(elapsed), int(budget))
                bar.set_postfix(monitor.progress(), refresh=True)
                for name in monitor.nodes_seen():
                    if name in NODES:
                        rec.nodes_up[name] = True
                failed = graph.failed()
                if failed:
                    names = ", ".join(f"{r.spec.name} (exit {r.proc.returncode}, log "
                                      f"{r.log_path})" for r in failed)
                    tqdm.write(f"[sim-finetune] a node died: {names}")
                    code = 1
                    break
                if not swapped and elapsed >= a.hot_swap_at * budget:
                    last = out / "learner" / "checkpoints" / "last"
                    target = last if (last / "model.safetensors").exists() else checkpoint
                    rec.hot_swap = monitor.hot_swap(target)
                    swapped = True
                    tqdm.write(f"[sim-finetune] hot-swap to {target}: "
                               f"{'ok' if rec.hot_swap['success'] else 'FAILED'} "
                               f"{rec.hot_swap['message']}")
                if elapsed >= budget:
                    break
    except BaseException:
        # Whatever went wrong here, no node process may outlive this command.
        graph.stop()
        raise
    if stop["flag"]:
        print("[sim-finetune] interrupted: stopping every node", flush=True)
    rec.duration_s = time.monotonic() - t0
    rec.commands_per_s = monitor.commands_per_second()
    for name in NODES:
        rec.nodes_up.setdefault(name, False)
    monitor.close()
    rec.exit_codes = graph.stop()
    time.sleep(0.5)
    rec.cleaned_shm, rec.leftover_shm = _release_shm(shm_before, domain_id)
    rec.bag = _bag_info(out / "bag")
    last = out / "learner" / "checkpoints" / "last"
    if a.eval_episodes and (last / "model.safetensors").exists():
        rec.policy_only_after = _evaluate(last, out / "eval_after", a)
    text, _plots = write_report(rec, out)
    print("\n" + text, flush=True)
    print(f"\n[sim-finetune] report: {out / 'report.txt'} (JSON: {out / 'report.json'})")
    if not rec.hot_swap.get("success"):
        code = code or (1 if not stop["flag"] else 0)
    return code
