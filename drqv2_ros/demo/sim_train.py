"""`drqv2-ros sim-train`: the fine-tuning loop in one process, as fast as compute allows.

The same core as the ROS graph, without DDS and without waiting for wall time: the driver's
``ArmController`` (safety filter, EE tracking) around the MuJoCo SO-101 world stepped one
control period per step (5 driver ticks of 10 physics steps at 10 Hz / 50 Hz), the camera
crop/resize, the policy node's ``Actor`` (input checks, frame stacking, episodes, operator
vs policy), the scripted operator through the same Joy encoding and ``JoyMapper`` as a
gamepad, and the learner's ``TrainingLoop`` (online/offline replay with 50/50 mixing,
interventions routed offline, the DrQ-v2 update at the update-to-data ratio).

Every ``--eval-every`` training episodes (and before the first and after the last), the
policy is evaluated ALONE: ``--eval-episodes`` episodes on fixed seeded cube placements,
mean action, no operator, never stored for training. The report separates this
policy-only success from the operator-assisted success of the training episodes.

    drqv2-ros sim-train --checkpoint ckpt/ --episodes 40 --out runs/sim_train/x
    drqv2-ros sim-train --episodes 200 --render fast --render-size 160 120  # from scratch, fast

Outputs ``<out>/sim_train.json`` (per-episode and per-evaluation records, speeds, render),
the learner's output (``<out>/learner``: checkpoints, replay, TensorBoard).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from drqv2_ros.acting.actor_setup import PolicyParams, make_actor
from drqv2_ros.acting.control_loop import Event, TickResult
from drqv2_ros.acting.policy_runner import PolicyRunner
from drqv2_ros.acting.weights import actor_state_bytes
from drqv2_ros.atomic_write import atomic_write_json
from drqv2_ros.cli_checks import float_in, int_in
from drqv2_ros.demo.pretrain import start_policy
from drqv2_ros.robot.backend import JOINT_NAMES
from drqv2_ros.robot.driver_setup import (
    DriverParams,
    make_arm_controller,
    make_crop,
    sim_config,
)
from drqv2_ros.robot.kinematics import Kinematics
from drqv2_ros.robot.sim_shift import SHIFTS, shift_named
from drqv2_ros.robot.sim_world import RENDERS, WRIST_CAMERA
from drqv2_ros.teleop.joy_mapping import JoyEncoder, JoyMapper, JoyMapping, find_mapping_file
from drqv2_ros.teleop.scripted_operator import (
    TAKEOVERS,
    OperatorConfig,
    ScriptedOperator,
    SimStateData,
)

ACTOR_ID = "sim_train"
EVAL_SEED_BASE = 10_000  # evaluation placements: seeds EVAL_SEED_BASE + k, never trained on


@dataclass
class SimTrainConfig:
    checkpoint: str = ""              # converted folder or RoboBase .pt; "" = from scratch
    out: str = "runs/sim_train"
    episodes: int = 20                # training episodes
    episode_steps: int = 100          # pick-101's episode length at 10 Hz
    control_rate_hz: float = 10.0
    render: str = "pick101"
    render_width: int = 640
    render_height: int = 480
    shift: str = "none"               # sim-to-real proxy preset (robot/sim_shift.py)
    train: bool = True                # False: env stepping only (speed measurements)
    batch_size: int = 256
    utd_ratio: float = 1.0
    warmup: int = 500
    weights_every_updates: int = 50   # the actor takes the learner's weights this often
    freeze_encoder: bool = False
    bc_weight: float = 0.0            # RoboBase's BC term on demo/intervention samples
    device: str = "auto"
    intervene_probability: float = 0.5
    intervene_start_s: float = 1.0
    intervene_duration_s: float = 3.0
    operator: str = "schedule"        # scripted operator takeover: schedule | assist
    eval_every: int = 10              # training episodes between evaluations (0: start/end)
    eval_episodes: int = 5
    seed: int = 0
    envs: int = 1                     # envs stepped in lock-step, each on its own thread
    buffer_capacity: int = 0          # replay capacity, steps, per buffer (0: what the run
    #                                   produces, at least 1000; the buffers are preallocated
    #                                   on disk, ~21 KB a step at 84x84)
    policy_enabled: bool = True       # False: only the operator moves the arm (demos)
    demo: bool = False                # flag the stored steps as demonstrations
    record_bag: str = ""              # also write every training step to this rosbag2 bag


def demos_config(cfg: SimTrainConfig, bag: str) -> SimTrainConfig:
    """``cfg`` turned into demonstration recording: the scripted operator drives every
    episode from start to end, steps flagged ``is_demo``, no learner, no evaluation, every
    step written to ``bag``."""
    return replace(cfg, policy_enabled=False, demo=True, train=False, eval_episodes=0,
                   operator="schedule", intervene_probability=1.0, intervene_start_s=0.0,
                   intervene_duration_s=0.0, record_bag=bag)


@dataclass
class EpisodeRecord:
    episode: int
    evaluation: bool
    steps: int
    success: bool
    intervention_steps: int
    end_reason: str
    placement_seed: int | None = None
    cube_xy: tuple[float, float] = (0.0, 0.0)  # where the episode put the cube, m

    @property
    def policy_only_success(self) -> bool:
        return self.success and self.intervention_steps == 0


@dataclass
class Evaluation:
    after_episodes: int
    env_steps: int
    updates: int
    success_rate: float
    episodes: list[EpisodeRecord] = field(default_factory=list)


class SimEnv:
    """One MuJoCo world with the driver core, the camera crop, an actor and the scripted
    operator, on a clock of its own; stepped one control period at a time. Every call runs
    on the env's own thread (its renderer's GL context belongs to that thread)."""

    def __init__(self, cfg: SimTrainConfig, index: int, runner: PolicyRunner):
        from concurrent.futures import ThreadPoolExecutor

        self.cfg, self.index = cfg, index
        self.name = ACTOR_ID if index == 0 else f"{ACTOR_ID}_{index}"
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        try:
            self.thread.submit(self._build, runner).result()
        except BaseException:
            self.thread.shutdown()
            raise

    def _build(self, runner: PolicyRunner) -> None:
        from drqv2_ros.robot.sim_backend import SimBackend

        cfg, i = self.cfg, self.index
        d = DriverParams(seed=cfg.seed + 1000 * i, render_width=cfg.render_width,
                         render_height=cfg.render_height)
        self.kin = Kinematics()
        self.backend = SimBackend(sim_config(d, render=cfg.render, shift=cfg.shift))
        self.backend.connect()
        self.arm = make_arm_controller(d, self.backend, self.kin)
        self.crop = make_crop(d)
        self.substeps = max(1, round(d.rate_hz / cfg.control_rate_hz))
        self.dt_ns = round(1e9 / (cfg.control_rate_hz * self.substeps))
        self.t_ns = 1_000_000_000
        pp = PolicyParams(checkpoint="in-process", control_rate_hz=cfg.control_rate_hz,
                          max_episode_steps=cfg.episode_steps, seed=cfg.seed + i,
                          privileged_low_dim="sim_state", policy_enabled=cfg.policy_enabled,
                          demo=cfg.demo)
        self.actor = make_actor(pp, runner, self.kin)
        self.operator = ScriptedOperator(OperatorConfig(
            intervene_probability=cfg.intervene_probability, intervene_every_n_episodes=0,
            intervene_start_s=cfg.intervene_start_s,
            intervene_duration_s=cfg.intervene_duration_s, seed=cfg.seed + i,
            step_m=d.ee_step_m, takeover=cfg.operator))
        mapping = JoyMapping.load(find_mapping_file("xbox"))
        self.encoder, self.mapper = JoyEncoder(mapping), JoyMapper(mapping)
        self.episode: dict | None = None  # the running episode's bookkeeping

    # -- episodes -------------------------------------------------------------------------
    def begin(self, evaluate: bool, placement_seed: int | None) -> None:
        ok, msg = self.arm.reset_episode(5.0, placement_seed=placement_seed)
        if not ok:
            raise RuntimeError(f"episode reset failed: {msg}")
        cube = self.backend.task_state().cube_position
        self.t_ns += self.dt_ns
        self.arm.tick(self.t_ns, self.t_ns / 1e9)
        if not evaluate:
            self.operator.new_episode(self.t_ns / 1e9)
        self.mapper.reset()
        self.actor.loop.start_episode(self.t_ns, evaluate=evaluate)
        self.episode = {"evaluate": evaluate, "seed": placement_seed, "steps": 0,
                        "interventions": 0, "ticks": 0,
                        "cube": (round(float(cube[0]), 6), round(float(cube[1]), 6))}

    def step(self) -> tuple[TickResult, EpisodeRecord | None]:
        """One control period of the running episode; the record once it has ended."""
        ep = self.episode
        res = self._control_step(ep["evaluate"])
        ep["ticks"] += 1
        if res.step is not None:
            ep["steps"] += 1
            ep["interventions"] += int(res.step.is_intervention)
        if not res.request_reset:
            if ep["ticks"] > self.cfg.episode_steps + 2:
                raise RuntimeError("the episode did not end within episode_steps")
            return res, None
        if not ep["evaluate"]:
            self.operator.end_episode()
        self.episode = None
        success = bool(res.step.terminated and res.step.reward > 0)
        return res, EpisodeRecord(res.step.episode, ep["evaluate"], ep["steps"] - 1,
                                  success, ep["interventions"], res.end_reason, ep["seed"],
                                  ep["cube"])

    # -- one control period ---------------------------------------------------------------
    def _control_step(self, evaluate: bool) -> TickResult:
        now = self.t_ns
        t_s = now / 1e9
        a = self.actor
        a.on_image(self.crop(self.backend.render(WRIST_CAMERA)), now, now)
        q, v = self.backend.read_joints()
        a.on_joints(JOINT_NAMES, q, v, now, now)
        s = self.backend.task_state()
        if a.needs_cube:
            a.on_cube(s.cube_position)
        if not evaluate:  # the operator's gamepad, through the teleop node's mapping
            op = self.operator.tick(SimStateData(s.cube_position, s.gripper_position,
                                                 s.gripper_opening, s.cube_grasped,
                                                 s.success), t_s)
            axes, buttons = self.encoder.encode(op.intervene, op.action)
            active, action, _ = self.mapper.update(axes, buttons, t_s)
            a.on_operator(active, action if active else [], now)
        res = a.tick(now, t_s)
        if res.command is not None:
            c = res.command
            self.arm.ee_command(c[:3], float(c[3]) if c.shape[0] > 3 else 0.0, now, now)
        for _ in range(self.substeps):  # the driver's ticks until the next control tick
            self.t_ns += self.dt_ns
            out = self.arm.tick(self.t_ns, self.t_ns / 1e9)
            if out.new_success:
                a.on_event(int(Event.SUCCESS), self.t_ns)
        return res

    def close(self) -> None:
        self.thread.submit(self.backend.close).result()
        self.thread.shutdown()


class SimTrainer:
    """``cfg.envs`` synchronous envs stepped in lock-step (each on its own thread: MuJoCo
    renders and steps without the GIL) + one learner. ``run_episodes`` runs training
    episodes, ``run_episode`` one episode on the first env, ``evaluate`` the fixed
    evaluation set."""

    def __init__(self, cfg: SimTrainConfig):
        if cfg.envs < 1:
            raise ValueError(f"envs must be >= 1, got {cfg.envs}")
        if cfg.envs > 1 and cfg.record_bag:
            raise ValueError("--record-bag records one env's episodes: use --envs 1")
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.policy = start_policy(cfg.checkpoint, cfg.seed)
        self.envs: list[SimEnv] = []
        self.loop = None
        self.bag = None
        # The envs first (a bad render or shift is refused before a learner exists), each
        # acting with the start weights until the learner's first push.
        blob = actor_state_bytes(self.policy, self.policy.training_counters.to_dict())
        try:
            for i in range(cfg.envs):
                self.envs.append(SimEnv(cfg, i, PolicyRunner.from_actor_bytes(
                    self.policy.config, blob, source=cfg.checkpoint or "scratch")))
            if cfg.train:
                from drqv2_ros.learning.training_loop import TrainingConfig, TrainingLoop

                capacity = (cfg.buffer_capacity
                            or max(1000, cfg.episodes * (cfg.episode_steps + 1)))
                self.loop = TrainingLoop(TrainingConfig(
                    output_dir=str(self.out / "learner"), resume=False,
                    online_capacity=capacity, offline_capacity=capacity,
                    batch_size=cfg.batch_size, utd_ratio=cfg.utd_ratio,
                    warmup_transitions=cfg.warmup, freeze_encoder=cfg.freeze_encoder,
                    bc_weight=cfg.bc_weight,
                    device=cfg.device, seed=cfg.seed, checkpoint_period_updates=10**9,
                    replay_on_device="off"), self.policy)
        except BaseException:
            self.close()
            raise
        self.actor = self.envs[0].actor
        self.env_steps = self.train_episodes = self.updates_at_weights = 0
        self.stepped = 0  # every env step timed in t_env: training and evaluation
        self.t_env = self.t_update = 0.0
        if cfg.record_bag:  # the recorder node's format: topic /step, drqv2_ros/msg/Step
            from drqv2_ros.bags.recorder import BagRecorder
            from drqv2_ros.bags.typestore import STEP_TYPE

            self.bag = BagRecorder(cfg.record_bag)
            self.bag.add_topic("/step", STEP_TYPE)

    # -- policies -----------------------------------------------------------------------
    def _push_weights(self) -> None:
        packet = self.loop.weights_packet()
        for env in self.envs:
            env.actor.install(env.actor.runner_from_weights(packet))
        self.updates_at_weights = self.loop.counters.updates

    # -- episodes, all envs in lock-step --------------------------------------------------
    def _episodes(self, starts: list[tuple[bool, int | None]], on_end=None
                  ) -> list[EpisodeRecord]:
        """Run the episodes ``starts`` ((evaluate, placement_seed) each) over the envs."""
        pending, done = list(starts), []
        while pending or any(env.episode is not None for env in self.envs):
            for env in self.envs:
                if env.episode is None and pending:
                    env.thread.submit(env.begin, *pending.pop(0)).result()
            active = [env for env in self.envs if env.episode is not None]
            t0 = time.perf_counter()
            results = [f.result() for f in [env.thread.submit(env.step) for env in active]]
            self.t_env += time.perf_counter() - t0
            self.stepped += sum(res.step is not None for res, _ in results)
            for env, (res, rec) in zip(active, results):
                if res.step is not None and not res.evaluation:
                    self.env_steps += 1
                    if self.bag is not None:
                        self._record(res.step)
                    if self.loop is not None:
                        self.loop.submit(res.step, env.name)
                if rec is not None:
                    done.append(rec)
                    if not rec.evaluation:
                        self.train_episodes += 1
                    if on_end is not None:
                        on_end(rec)
            if self.loop is not None and any(not r[0].evaluation for r in results):
                self._learn()
        return done

    def run_episodes(self, n: int, on_end=None) -> list[EpisodeRecord]:
        """``n`` training episodes over the envs (in the order they end)."""
        return self._episodes([(False, None)] * n, on_end)

    def run_episode(self, *, evaluate: bool = False, placement_seed: int | None = None
                    ) -> EpisodeRecord:
        """One episode (on the first env)."""
        return self._episodes([(evaluate, placement_seed)])[0]

    def _record(self, step) -> None:
        from drqv2_ros.bags.typestore import STEP_TYPE, step_to_rosbags

        ts = self.bag.typestore
        self.bag.write("/step", step.stamp_ns, ts.serialize_cdr(step_to_rosbags(step, ts),
                                                                STEP_TYPE))

    def _learn(self) -> None:
        loop = self.loop
        loop.drain()
        t0 = time.perf_counter()
        for _ in range(loop.updates_owed()):
            loop.update_once()
        if loop.counters.updates - self.updates_at_weights >= self.cfg.weights_every_updates:
            self._push_weights()
        self.t_update += time.perf_counter() - t0

    def evaluate(self) -> Evaluation:
        if self.loop is not None and self.loop.counters.updates > self.updates_at_weights:
            self._push_weights()  # evaluate the learner's newest weights
        eps = self._episodes([(True, EVAL_SEED_BASE + k) for k in range(self.cfg.eval_episodes)])
        eps.sort(key=lambda e: e.placement_seed)
        return Evaluation(self.train_episodes, self.env_steps, self.updates,
                          float(np.mean([e.success for e in eps])) if eps else 0.0, eps)

    @property
    def env_steps_per_s(self) -> float:
        """Env stepping rate (act, step, render, store): every step stepped, training and
        evaluation, over the time spent stepping them."""
        return self.stepped / max(self.t_env, 1e-9)

    @property
    def updates(self) -> int:
        return self.loop.counters.updates if self.loop is not None else 0

    def close(self) -> None:
        if self.bag is not None:
            self.bag.close()
        if self.loop is not None:
            self.loop.save()
            self.loop.close()
        for env in self.envs:
            env.close()


def evaluate_policy(checkpoint: str, out: str, *, episodes: int, shift: str = "none",
                    render: str = "fast", render_size: tuple[int, int] = (160, 120),
                    episode_steps: int = 60, seed: int = 0) -> Evaluation:
    """The policy-only evaluation of ``checkpoint`` alone (no learner): ``episodes`` fixed
    seeded placements, mean action, no operator, under ``shift``."""
    t = SimTrainer(SimTrainConfig(checkpoint=checkpoint, out=out, train=False, shift=shift,
                                  render=render, render_width=render_size[0],
                                  render_height=render_size[1], episode_steps=episode_steps,
                                  eval_episodes=episodes, seed=seed))
    try:
        return t.evaluate()
    finally:
        t.close()


def run(cfg: SimTrainConfig, progress: bool = True) -> dict:
    """Train for ``cfg.episodes`` episodes with evaluations; returns (and writes) the
    report."""
    from tqdm import tqdm

    if cfg.render not in RENDERS:
        raise ValueError(f"render must be one of {RENDERS}")
    t_start = time.perf_counter()
    trainer = SimTrainer(cfg)
    evals: list[Evaluation] = []
    train: list[EpisodeRecord] = []
    try:
        if cfg.eval_episodes:
            evals.append(trainer.evaluate())
        bar = tqdm(total=cfg.episodes, unit="ep", desc="sim-train", disable=not progress,
                   dynamic_ncols=True)
        def ended(rec: EpisodeRecord) -> None:
            train.append(rec)
            bar.update(1)
            bar.set_postfix({
                "policy-only eval": f"{evals[-1].success_rate:.0%}" if evals else "-",
                "assisted": f"{np.mean([e.success for e in train]):.0%}",
                "policy alone (train)":
                    f"{np.mean([e.policy_only_success for e in train]):.0%}",
                "upd": trainer.updates,
                "steps/s": f"{trainer.env_steps_per_s:.1f}"})

        with bar:
            while len(train) < cfg.episodes:  # up to the next evaluation, over the envs
                left = cfg.episodes - len(train)
                n = min(left, cfg.eval_every) if cfg.eval_every else left
                trainer.run_episodes(n, ended)
                if cfg.eval_episodes and (cfg.eval_every or len(train) == cfg.episodes):
                    evals.append(trainer.evaluate())
    finally:
        trainer.close()
    wall = time.perf_counter() - t_start
    report = {
        "config": asdict(cfg),
        "render": {"mode": cfg.render, "width": cfg.render_width, "height": cfg.render_height},
        "shift": cfg.shift,  # the preset or file, and what it changes:
        "shift_parameters": asdict(shift_named(cfg.shift)),
        "env_steps": trainer.env_steps, "updates": trainer.updates,
        "wall_s": wall,
        "env_steps_per_s": trainer.env_steps_per_s,
        "updates_per_s": trainer.updates / max(trainer.t_update, 1e-9),
        "overall_steps_per_s": trainer.env_steps / wall,
        "real_time_factor": trainer.env_steps / wall / cfg.control_rate_hz,
        "train_episodes": [dict(asdict(e), policy_only_success=e.policy_only_success)
                           for e in train],
        "assisted_success_rate": float(np.mean([e.success for e in train])) if train else 0.0,
        "policy_alone_train_success_rate":
            float(np.mean([e.policy_only_success for e in train])) if train else 0.0,
        "intervention_rate": (sum(e.intervention_steps for e in train)
                              / max(1, sum(e.steps for e in train))),
        "evaluations": [{"after_episodes": ev.after_episodes, "env_steps": ev.env_steps,
                         "updates": ev.updates, "policy_only_success_rate": ev.success_rate,
                         "episodes": [asdict(e) for e in ev.episodes]} for ev in evals],
    }
    atomic_write_json(Path(cfg.out) / "sim_train.json", report)
    return report


def summary(report: dict) -> str:
    ev = report["evaluations"]
    curve = ", ".join(f"{e['policy_only_success_rate']:.0%} @ {e['env_steps']} steps"
                      for e in ev) or "no evaluation"
    r = report["render"]
    return (f"policy-only success (evaluation, mean action, no operator): {curve}\n"
            f"training episodes: {len(report['train_episodes'])}, operator-assisted success "
            f"{report['assisted_success_rate']:.0%}, of which by the policy alone "
            f"{report['policy_alone_train_success_rate']:.0%}; intervention rate "
            f"{report['intervention_rate']:.0%}\n"
            f"speed: {report['env_steps_per_s']:.1f} env steps/s (act, step, render, store), "
            f"{report['updates_per_s']:.1f} updates/s, {report['overall_steps_per_s']:.1f} "
            f"steps/s overall = {report['real_time_factor']:.2f}x real time; render "
            f"{r['mode']} {r['width']}x{r['height']}, shift {report['shift']}")


#: the largest render the offscreen buffer takes (and ~37 MB a frame at most)
MAX_RENDER_PX = 4096


def check_options(ap: argparse.ArgumentParser, a) -> None:
    """The checks across options, before any work (each option's own range is its
    argparse type, ``cli_checks``): exit 2 with the option named; an existing result or
    bag is refused (nothing is overwritten)."""
    try:
        shift_named(a.shift)
    except ValueError as exc:
        ap.error(f"--shift: {exc}")
    if a.out and (Path(a.out) / "sim_train.json").exists():
        ap.error(f"--out: {a.out} already holds a sim-train result: choose a new folder")
    bag = a.record_bag or (str(Path(a.out) / "demos") if a.demos_only and a.out else "")
    if bag and Path(bag).exists():
        ap.error(f"--record-bag: {bag} exists: choose a new bag path")


def sim_train_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drqv2-ros sim-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SimTrainConfig()
    ap.add_argument("--checkpoint", default="", help="start policy (converted folder or "
                    "RoboBase .pt); default: from scratch (RoboBase's online recipe)")
    ap.add_argument("--out", default="", help="output folder (default runs/sim_train/<time>)")
    ap.add_argument("--episodes", type=int_in(1, 1_000_000), default=d.episodes)
    ap.add_argument("--episode-steps", type=int_in(1, 100_000), default=d.episode_steps)
    ap.add_argument("--render", choices=RENDERS, default=d.render,
                    help="pick101: every mesh, faithful (default); wrist_only: the links "
                         "the wrist camera cannot see left out (same image); fast: "
                         "wrist_only + reduced jaw meshes and a coarser floor grid (a close "
                         "image, ~3x faster render on CPU)")
    ap.add_argument("--render-size", type=int_in(16, MAX_RENDER_PX), nargs=2,
                    default=(d.render_width, d.render_height), metavar=("W", "H"))
    ap.add_argument("--shift", default=d.shift,
                    help=f"sim-to-real proxy: a preset ({', '.join(sorted(SHIFTS))}) or a "
                    "YAML file of SimShift fields (robot/sim_shift.py; 'base: real_proxy' "
                    "starts from the preset)")
    ap.add_argument("--no-train", action="store_true", help="env stepping only")
    ap.add_argument("--batch-size", type=int_in(1, 65_536), default=d.batch_size)
    ap.add_argument("--utd-ratio", type=float_in(0, 64), default=d.utd_ratio)
    ap.add_argument("--warmup", type=int_in(0, 10**9), default=d.warmup)
    ap.add_argument("--freeze-encoder", action="store_true")
    ap.add_argument("--bc-weight", type=float_in(0, 1e6), default=d.bc_weight,
                    help="RoboBase's BC term on demonstration and intervention samples "
                    "(default 0: RoboBase's DrQ-v2 update alone)")
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--intervene-probability", type=float_in(0, 1), default=d.intervene_probability,
                    help="--operator schedule: chance of a takeover per episode")
    ap.add_argument("--operator", choices=TAKEOVERS, default=d.operator,
                    help="schedule: takeovers by episode (--intervene-probability); assist: "
                    "when the policy stalls or heads away from the cube")
    ap.add_argument("--eval-every", type=int_in(0, 1_000_000), default=d.eval_every)
    ap.add_argument("--eval-episodes", type=int_in(0, 10_000), default=d.eval_episodes)
    ap.add_argument("--seed", type=int_in(0, 2**31 - 1), default=d.seed)
    ap.add_argument("--envs", type=int_in(1, 64), default=d.envs, help="envs stepped in lock-step "
                    "(one thread each); their steps all go to the one learner")
    ap.add_argument("--record-bag", default="", help="also write every training step to this "
                    "rosbag2 bag (mcap), as the recorder node does")
    ap.add_argument("--demos-only", action="store_true",
                    help="demonstrations: the scripted operator drives every episode from "
                    "start to end, steps flagged is_demo, no learner; written to "
                    "--record-bag (default <out>/demos) for `drqv2-ros pretrain`")
    a = ap.parse_args(argv)
    check_options(ap, a)
    from drqv2_ros.bringup.graph import rendering_environment

    os.environ.update(rendering_environment(os.environ))  # before mujoco renders
    cfg = SimTrainConfig(
        checkpoint=a.checkpoint,
        out=a.out or f"runs/sim_train/{time.strftime('%Y%m%d-%H%M%S')}",
        episodes=a.episodes, episode_steps=a.episode_steps, render=a.render,
        render_width=a.render_size[0], render_height=a.render_size[1], shift=a.shift,
        train=not a.no_train,
        batch_size=a.batch_size, utd_ratio=a.utd_ratio, warmup=a.warmup,
        freeze_encoder=a.freeze_encoder, bc_weight=a.bc_weight, device=a.device,
        intervene_probability=a.intervene_probability, operator=a.operator,
        eval_every=a.eval_every,
        eval_episodes=a.eval_episodes, seed=a.seed, record_bag=a.record_bag, envs=a.envs)
    if a.demos_only:
        cfg = demos_config(cfg, a.record_bag or str(Path(cfg.out) / "demos"))
    try:
        report = run(cfg)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"drqv2-ros sim-train: {exc}", file=sys.stderr)
        return 1
    print(summary(report))
    if cfg.record_bag:
        print(f"bag: {cfg.record_bag}")
    print(f"report: {Path(cfg.out) / 'sim_train.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(sim_train_main(sys.argv[1:]))
