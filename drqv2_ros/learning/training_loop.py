"""The learner process's work loop, ROS-free: take the actor's step stream, keep the
persistent online/offline replay buffers, run DrQ-v2 updates at an update-to-data ratio
once warmed up, and emit weights, checkpoints and metrics on their periods.

The learner node feeds :meth:`TrainingLoop.submit` from its subscription and runs
:meth:`TrainingLoop.run` in a thread of its own, so DDS callbacks never wait on an update.

Output directory layout::

    output_dir/learner_state.pt      full learner state (weights, optimisers, step, RNG)
    output_dir/checkpoints/last/     converted checkpoint (config.json + model.safetensors)
    output_dir/replay/online/        memory-mapped online buffer (every step)
    output_dir/replay/offline/       demos + intervention segments
    output_dir/tensorboard/          TensorBoard event files
"""

from __future__ import annotations

import logging
import math
import os
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drqv2_ros.acting.weights import WeightsPacket
from drqv2_ros.learning.device import describe_device
from drqv2_ros.learning.device_replay import DeviceReplay, mirror_bytes
from drqv2_ros.learning.intake import StepIntake
from drqv2_ros.learning.learner import DrQV2Learner
from drqv2_ros.learning.replay_buffer import MixedReplay, ReplayBuffer
from drqv2_ros.observation.step_record import StepRecord
from drqv2_ros.policy.modeling_drqv2 import DrQV2Policy
from drqv2_ros.settings import param

log = logging.getLogger("drqv2_ros.learner")

STATE_FILE = "learner_state.pt"


@dataclass
class TrainingConfig:
    output_dir: str = param("runs/learner", "checkpoints, replay buffers, TensorBoard logs")
    resume: bool = param(True, "continue from output_dir/learner_state.pt if present")
    online_capacity: int = param(100_000, "online buffer capacity, steps")
    offline_capacity: int = param(50_000, "offline (demos + interventions) capacity, steps")
    offline_fraction: float = param(0.5, "fraction of each batch from the offline buffer")
    batch_size: int = param(256, "update batch size")
    utd_ratio: float = param(1.0, "updates per stored transition (steps dropped on the way "
                                  "are no data)")
    warmup_transitions: int = param(500, "no update before the buffers hold this many")
    max_updates_per_second: float = param(0.0, "update rate cap (0 = unlimited)")
    publish_weights_period_s: float = param(4.0, "actor weights push period, s")
    checkpoint_period_updates: int = param(1000, "save learner state + checkpoint every N "
                                                "updates")
    metrics_period_s: float = param(2.0, "metrics period, s")
    flush_period_s: float = param(1.0, "replay buffer flush period (transitions are "
                                      "acknowledged once flushed), s")
    bc_weight: float = param(0.0, "BC term weight on demo/intervention samples (0 = off)")
    freeze_encoder: bool = param(False, "keep the checkpoint's encoder fixed; train only the "
                                        "bottlenecks and heads (HIL-SERL's real-robot practice)")
    seed: int = param(0, "learner seed")
    tensorboard: bool = param(True, "log metrics for TensorBoard under output_dir/tensorboard")
    device: str = param("auto", "where updates run: auto (CUDA when available), cpu, cuda, "
                                "cuda:N")
    precision: str = param("fp32", "update math: fp32 (RoboBase-exact), tf32 (CUDA), bf16")
    compile: bool = param(False, "torch.compile the networks (opt-in; first updates slower)")
    cuda_graphs: bool = param(True, "on CUDA, replay the update as one CUDA graph (same fp32 "
                                    "kernels, no per-kernel launch cost)")
    fault_retry_s: float = param(5.0, "after a disk fault (full, read-only), retry the "
                                      "failed write every this many seconds")
    intake_queue_steps: int = param(2000, "steps received but not yet stored, at most (about "
                                          "21 KB each at 84x84); past it, steps are dropped "
                                          "and counted")
    max_staged_steps: int = param(2000, "per actor: steps held in memory while another "
                                        "actor's episode is being written (several actors)")
    replay_on_device: str = param("auto", "keep the replay frames on the GPU and gather "
                                          "batches there: auto (CUDA and the rings fit in "
                                          "half the free GPU memory), on, off")


@dataclass
class Counters:
    """Learner-side counters; the step counts are the intake's, summed over actors."""

    intake: StepIntake
    updates: int = 0
    weights_version: int = 0

    @property
    def received(self) -> int:
        return self.intake.totals.received

    @property
    def stored(self) -> int:
        return self.intake.stored

    @property
    def interventions(self) -> int:
        return self.intake.totals.interventions

    @property
    def episodes(self) -> int:
        return self.intake.totals.episodes

    @property
    def dropped(self) -> dict[str, int]:
        return self.intake.totals.dropped


class TrainingLoop:
    def __init__(self, cfg: TrainingConfig, policy: DrQV2Policy):
        self.cfg = cfg
        replay_mode = str(cfg.replay_on_device).strip().lower()
        if replay_mode not in ("auto", "on", "off"):
            raise ValueError(f"replay_on_device must be auto, on or off, got "
                             f"{cfg.replay_on_device!r}")
        self.out = Path(cfg.output_dir)
        _check_writable(self.out)
        state_path = self.out / STATE_FILE
        compute = dict(device=cfg.device, precision=cfg.precision, compile=cfg.compile,
                       cuda_graphs=cfg.cuda_graphs, bc_weight=cfg.bc_weight,
                       freeze_encoder=cfg.freeze_encoder)
        if cfg.resume and state_path.exists():
            # A resume that cannot load is an error: never silently start from scratch.
            self.learner = DrQV2Learner.resume(policy, state_path, **compute)
            self.resumed = True
        else:
            self.learner = DrQV2Learner(policy, seed=cfg.seed, **compute)
            self.resumed = False
        c = self.learner.config
        spec = dict(image_shape=(c.num_views, c.channels_per_frame, c.image_height,
                                 c.image_width),
                    low_dim_size=c.low_dim_per_frame, action_size=c.action_dim,
                    frame_stack=c.frame_stack, nstep=c.nstep, discount=c.discount)
        self.replay = MixedReplay(
            ReplayBuffer(self.out / "replay" / "online", capacity=cfg.online_capacity, **spec),
            ReplayBuffer(self.out / "replay" / "offline", capacity=cfg.offline_capacity, **spec),
            offline_fraction=cfg.offline_fraction)
        self.spec = spec
        self.device_replay = self._device_replay(replay_mode)
        self.run_id = uuid.uuid4().hex[:12]
        self.intake = StepIntake(self.replay, max_staged_steps=cfg.max_staged_steps)
        self.counters = Counters(self.intake)
        self.restored_actors = self.intake.restore()  # streams taken up after a restart
        if cfg.intake_queue_steps < 1:
            raise ValueError(f"intake_queue_steps must be >= 1, got {cfg.intake_queue_steps}")
        self._queue: queue.Queue[tuple[str, StepRecord]] = queue.Queue(cfg.intake_queue_steps)
        # steps dropped before the intake, by (actor, reason), counted in the DDS thread
        self._rejected: dict[tuple[str, str], int] = {}
        self._rejected_lock = threading.Lock()
        self.fault = ""  # the storage fault being waited out ("" = none)
        self.checkpoint_fault = ""  # the last failed save of state + checkpoint ("" = none)
        self.checkpoint_faults = 0
        self._tb_warned = False
        self.faults = 0
        self._last_metrics: Mapping[str, float] = {}
        self._t_update_window: list[float] = []
        self._writer = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out / "tensorboard"))

    def _device_replay(self, mode: str) -> DeviceReplay | None:
        dev = self.learner.device
        if mode == "off" or (mode == "auto" and dev.type != "cuda"):
            return None
        need = mirror_bytes(self.replay)
        if mode == "auto":
            free, _total = torch.cuda.mem_get_info(dev)
            if need > free // 2:
                log.warning("replay frames stay on the host: the device copy would take "
                            "%.1f GB of %.1f GB free on %s", need / 1e9, free / 1e9, dev)
                return None
        return DeviceReplay(self.replay, dev)

    def describe(self) -> str:
        """Where the learner computes, for the start-up log and reports."""
        where = describe_device(self.learner.device)
        replay = "replay gathered on the device" if self.device_replay else "replay on host"
        note = f"; {self.learner.rng_note}" if self.learner.rng_note else ""
        graphs = ", CUDA graph" if self.learner.graphed else ""
        return (f"{where}, {self.learner.precision}{graphs}"
                f"{', compiled' if self.learner.compiled else ''}, {replay}{note}")

    # -- input (any thread) -----------------------------------------------------------------
    def submit(self, record: StepRecord, actor: str = "") -> bool:
        """A step of ``actor``'s stream (any thread); stored by the training thread. Never
        blocks: when ``intake_queue_steps`` are waiting (the training thread is stuck),
        the step is dropped and counted (False)."""
        try:
            self._queue.put_nowait((actor, record))
        except queue.Full:
            self.reject(actor, "intake queue full (the learner fell behind)")
            return False
        return True

    def reject(self, actor: str, reason: str) -> None:
        """Count a step of ``actor`` dropped before the intake (any thread): a malformed
        message, a full queue. It shows in the per-actor and per-reason metrics."""
        with self._rejected_lock:
            key = (actor, reason)
            self._rejected[key] = self._rejected.get(key, 0) + 1

    def drain(self, timeout: float = 0.0) -> int:
        with self._rejected_lock:
            rejected, self._rejected = self._rejected, {}
        for (actor, reason), count in rejected.items():
            self.intake.count_drops(actor, reason, count)
        n = 0
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            while True:
                self.intake.add(item[1], item[0])
                n += 1
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        return n

    # -- learning ---------------------------------------------------------------------------
    @property
    def sampleable(self) -> int:
        return len(self.replay.online) + len(self.replay.offline)

    def updates_owed(self) -> int:
        if self.sampleable < max(1, self.cfg.warmup_transitions):
            return 0
        want = math.floor(self.cfg.utd_ratio * self.counters.stored)
        return max(0, want - self.counters.updates)

    def update_once(self) -> Mapping[str, float]:
        b, rng, dr = self.cfg.batch_size, self.learner.rng, self.device_replay
        t0 = time.perf_counter()
        if dr is not None:
            # The next batch is sampled while the GPU runs this update (one update ahead).
            metrics = self.learner.update(dr.take(b, rng),
                                          after_launch=lambda: dr.prefetch(b, rng))
        else:
            metrics = self.learner.update(self.replay.sample(b, rng))
        self._t_update_window.append(time.perf_counter() - t0)
        del self._t_update_window[:-50]
        self.counters.updates += 1
        self._last_metrics = metrics
        return metrics

    def weights_packet(self) -> WeightsPacket:
        self.counters.weights_version += 1
        return WeightsPacket.make(self.learner.actor_state_bytes(),
                                  version=self.counters.weights_version,
                                  learner_step=self.learner.iteration, run_id=self.run_id)

    def save(self) -> None:
        """Flush the buffers, then write the learner state and the converted checkpoint."""
        self.replay.flush()
        self._save_learner()

    def _save_learner(self) -> None:
        self.learner.save_state(self.out / STATE_FILE)
        self.learner.export_checkpoint(self.out / "checkpoints" / "last")

    def metrics(self) -> dict[str, float]:
        m = {k: float(v) for k, v in self._last_metrics.items()}
        qs = [v for k, v in m.items() if k.startswith("critic_q") and k[8:].isdigit()]
        m["q_mean"] = float(np.mean(qs)) if qs else float("nan")
        t = self._t_update_window
        m.update(
            update_step=float(self.counters.updates),
            updates_per_second=(len(t) / sum(t)) if t and sum(t) > 0 else 0.0,
            online_size=float(len(self.replay.online)),
            offline_size=float(len(self.replay.offline)),
            transitions_received=float(self.counters.received),
            intervention_rate=(self.counters.interventions / self.counters.stored
                               if self.counters.stored else 0.0),
            episodes=float(self.counters.episodes),
            stddev=float(self.learner.std()),
            weights_version=float(self.counters.weights_version),
            storage_ok=0.0 if self.fault else 1.0,
            storage_faults=float(self.faults),
            checkpoint_ok=0.0 if self.checkpoint_fault else 1.0,
            checkpoint_faults=float(self.checkpoint_faults),
        )
        if self._writer is not None:
            try:
                for k, v in m.items():
                    if np.isfinite(v):
                        self._writer.add_scalar(f"learner/{k}", v, self.counters.updates)
                for actor, c in self.intake.counts().items():
                    name = actor.strip("/").replace("/", "_") or "default"
                    for k in ("received", "stored", "episodes", "staged", "lost"):
                        self._writer.add_scalar(f"actors/{name}/{k}", getattr(c, k),
                                                self.counters.updates)
                    self._writer.add_scalar(f"actors/{name}/dropped", sum(c.dropped.values()),
                                            self.counters.updates)
                self._writer.flush()
            except OSError as exc:  # a full disk must not stop the learner over its logs
                if not self._tb_warned:
                    log.warning("TensorBoard logging failed (%s); going on without it", exc)
                    self._tb_warned = True
        return m

    # -- disk faults ------------------------------------------------------------------------
    def _durable(self, what: str, fn: Callable[[], object]) -> bool:
        """Run a write; a disk error (full, read-only, I/O) puts the loop into the fault
        state instead of killing it. Returns whether it worked."""
        try:
            fn()
        except OSError as exc:
            self._enter_fault(what, exc)
            return False
        return True

    def _enter_fault(self, what: str, exc: OSError) -> None:
        if not self.fault:
            log.error("storage fault while %s: %s; storing and training stop, the actor keeps "
                      "the last weights; retrying every %.0f s", what, exc,
                      self.cfg.fault_retry_s)
        self.fault = f"{what}: {exc}"
        self.faults += 1

    def _checkpoint(self) -> bool:
        """The periodic save: the replay flush is storage (a failure is a fault: storing
        waits for it), the learner state and the checkpoint are not: a disk with room for
        the buffers but not for them (full, quota) must not stop the learner storing steps
        or training. Each failed write is reported (log, ``checkpoint_faults`` and
        ``checkpoint_ok`` in the metrics) and tried again at the next period; acknowledged
        steps stay durable meanwhile."""
        if not self._durable("flushing the replay buffer", self.replay.flush):
            return False
        try:
            self._save_learner()
        except OSError as exc:
            self.checkpoint_faults += 1
            self.checkpoint_fault = f"saving the learner state and checkpoint: {exc}"
            log.error("%s; storing steps and training go on, the save is tried again at the "
                      "next checkpoint (%d failed so far)", self.checkpoint_fault,
                      self.checkpoint_faults)
            return True
        if self.checkpoint_fault:
            log.warning("the learner state and checkpoint are saved again (after: %s)",
                        self.checkpoint_fault)
            self.checkpoint_fault = ""
        return True

    def _retry_storage(self) -> None:
        """Try what failed again (a flush, then a full save): back to work when it works."""
        if self._checkpoint():
            log.warning("storage works again after: %s; storing and training resume",
                        self.fault)
            self.fault = ""

    def status(self) -> str:
        """``ok``, or the storage fault the learner is waiting out."""
        return f"storage fault (retrying): {self.fault}" if self.fault else "ok"

    # -- the work loop ----------------------------------------------------------------------
    def run(self, stop: threading.Event,
            publish_weights: Callable[[WeightsPacket], None],
            publish_metrics: Callable[[dict[str, float]], None]) -> None:
        """Work until ``stop`` is set; saves on the way out. A disk fault stops storing and
        training (received steps wait in the bounded queue, then are counted as dropped)
        until a retry of the failed write succeeds; the process stays up."""
        cfg = self.cfg
        now = time.monotonic()
        next_flush = now + cfg.flush_period_s
        next_metrics = now + cfg.metrics_period_s
        next_weights = now  # push at start: the actor may hold other (older) weights
        next_retry = now
        pushed_at_update = -1
        last_ckpt_update = self.counters.updates
        min_dt = 1.0 / cfg.max_updates_per_second if cfg.max_updates_per_second > 0 else 0.0
        last_update_t = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_metrics:
                    publish_metrics(self.metrics())
                    next_metrics = now + cfg.metrics_period_s
                if self.fault:
                    if now >= next_retry:
                        self._retry_storage()
                        next_retry = now + cfg.fault_retry_s
                    if self.fault:
                        stop.wait(0.1)
                        continue
                owed = self.updates_owed()
                if not self._durable("storing steps",
                                     lambda owed=owed: self.drain(0.0 if owed else 0.05)):
                    continue
                now = time.monotonic()
                if owed and now - last_update_t >= min_dt:
                    self.update_once()
                    last_update_t = time.monotonic()
                if now >= next_flush:
                    next_flush = now + cfg.flush_period_s
                    # transitions are acknowledged once flushed
                    if not self._durable("flushing the replay buffer", self.replay.flush):
                        continue
                if now >= next_weights and pushed_at_update != self.counters.updates:
                    publish_weights(self.weights_packet())
                    pushed_at_update = self.counters.updates
                    next_weights = now + cfg.publish_weights_period_s
                if self.counters.updates - last_ckpt_update >= cfg.checkpoint_period_updates:
                    last_ckpt_update = self.counters.updates
                    if not self._checkpoint():
                        continue
        finally:
            if not self.fault:
                self._durable("storing steps", self.drain)
                self._checkpoint()
            publish_metrics(self.metrics())

    def close(self) -> None:
        for buf in (self.replay.online, self.replay.offline):
            try:
                buf.close()
            except OSError as exc:
                log.error("closing %s: %s (steps since its last flush are not kept)",
                          buf.directory, exc)
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as exc:
                log.warning("closing the TensorBoard log: %s", exc)


def _check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there, or say plainly why not (a
    read-only mount, permissions, a full disk) before any state is touched."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno, f"output_dir {out} is not writable ({exc.strerror}); the "
                                 "learner needs it for its replay buffers, checkpoints and "
                                 "state: set output_dir to a writable folder") from None
