"""`drqv2-ros pretrain`: a start policy from demonstration bags.

    drqv2-ros sim-train --demos-only --episodes 30 --out runs/demos     # scripted demos
    drqv2-ros pretrain runs/pretrained --demos runs/demos/demos
    drqv2-ros sim-train --checkpoint runs/pretrained/checkpoint ...     # fine-tune it

The demos (any bag with the ``step`` topic: ``drqv2-ros record``, the recorder node,
``sim-train --record-bag``) are ingested into the learner's offline buffer (every step
flagged as a demonstration). Then, in the RoboBase DrQ-v2 architecture:

1. behaviour cloning (``--bc-updates``, ``--bc-lr``): the actor's mean action regressed on
   the demo actions from randomly shifted images, its gradient into the actor and the
   encoder (``DrQV2Learner.bc_update``);
2. the critic (``--updates``): DrQ-v2 TD updates on the demo transitions with the cloned
   actor and its encoder held fixed (``critic_only``), so fine-tuning does not start from a
   random critic; ``--actor-updates`` runs RoboBase's full update there instead (critic,
   encoder, actor, plus its BC term weighted ``--bc-weight``);
3. the exploration schedule positioned for fine-tuning: the checkpoint's
   ``main_loop_iterations`` is where the std schedule reaches ``--start-std`` (RoboBase
   snapshots carry that counter too), so fine-tuning explores around the cloned actor
   instead of at the schedule's initial std 1.0.

The result is a checkpoint in the converted format (``OUT/checkpoint``: config.json +
model.safetensors + counters.json) that the policy node, ``sim-train`` and
``/load_checkpoint`` take as they are, and ``OUT/pretrain.json`` (the ingest summary, the
stages, the last losses, time).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from drqv2_ros.atomic_write import atomic_write_json


@dataclass
class PretrainConfig:
    demos: tuple[str, ...]
    out: str
    updates: int = 500                # DrQ-v2 TD updates after behaviour cloning
    checkpoint: str = ""              # start weights; "" = from scratch (pick-101 layout)
    batch_size: int = 64
    bc_updates: int = 2000            # behaviour-cloning steps (0: none)
    bc_lr: float = 3e-4               # their AdamW learning rate
    actor_updates: bool = False       # False: critic only after BC (actor, encoder fixed)
    bc_weight: float = 1.0            # RoboBase's BC term, with actor_updates
    start_std: float = 0.2            # the checkpoint's place in its std schedule
    freeze_encoder: bool = False      # also keep the encoder fixed during BC
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        import math

        for name in ("updates", "bc_updates"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 0, "
                                 f"got {v!r}")
        if self.updates + self.bc_updates < 1:
            raise ValueError("--updates and --bc-updates are both 0: nothing to train")
        if isinstance(self.batch_size, bool) or not 1 <= int(self.batch_size) <= 65536:
            raise ValueError(f"--batch-size must be in [1, 65536], got {self.batch_size}")
        if not (math.isfinite(self.bc_lr) and 0 < self.bc_lr <= 1):
            raise ValueError(f"--bc-lr must be in (0, 1], got {self.bc_lr}")
        if not (math.isfinite(self.bc_weight) and self.bc_weight >= 0):
            raise ValueError(f"--bc-weight must be finite and >= 0, got {self.bc_weight}")
        if not (math.isfinite(self.start_std) and self.start_std >= 0):
            raise ValueError(f"--start-std must be finite and >= 0, got {self.start_std}")
        if isinstance(self.seed, bool) or not 0 <= int(self.seed) < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32), got {self.seed}")


def pretrain(cfg: PretrainConfig, progress: bool = True) -> dict:
    """Behaviour cloning, then the critic, on the demos; returns (and writes) the summary."""
    from tqdm import tqdm

    from drqv2_ros.bags.episodes import TargetShapes, check_bags, count_step_messages
    from drqv2_ros.bags.ingest import ingest_bags
    from drqv2_ros.learning.training_loop import TrainingConfig, TrainingLoop
    from drqv2_ros.policy.schedule import parse_schedule

    if not cfg.demos:
        raise ValueError("no demonstration bags given (--demos)")
    out = Path(cfg.out)
    if (out / "checkpoint").exists():
        raise FileExistsError(f"{out / 'checkpoint'} exists: choose a new output folder")
    policy = start_policy(cfg.checkpoint, cfg.seed)
    c = policy.config
    start_iteration = parse_schedule(c.stddev_schedule).first_step_at(cfg.start_std)
    target = TargetShapes((c.num_views, c.channels_per_frame, c.image_height, c.image_width),
                          c.low_dim_per_frame, c.action_dim,
                          cfg.checkpoint or "the pick-101 architecture", c.frame_stack,
                          c.nstep, c.discount)
    steps = count_step_messages(check_bags(cfg.demos, target))  # refuses before any write
    t0 = time.perf_counter()
    loop = TrainingLoop(TrainingConfig(
        output_dir=str(out / "learner"), resume=False, online_capacity=max(64, c.nstep + 2),
        offline_capacity=max(steps, 64), offline_fraction=1.0, batch_size=cfg.batch_size,
        bc_weight=cfg.bc_weight, freeze_encoder=cfg.freeze_encoder, warmup_transitions=1,
        device=cfg.device, seed=cfg.seed, checkpoint_period_updates=10**9), policy)
    stages: dict[str, dict] = {}
    try:
        ingested = ingest_bags(cfg.demos, loop.replay.offline, demo_flags="all", target=target)
        if len(loop.replay.offline) == 0:
            raise ValueError(f"the demos hold no complete episode: {ingested}")
        learner, rng = loop.learner, loop.learner.rng
        bc_metrics: dict = {}
        t_stage = time.perf_counter()
        for _ in tqdm(range(cfg.bc_updates), desc="pretrain: behaviour cloning", unit="upd",
                      disable=not progress, dynamic_ncols=True):
            bc_metrics = learner.bc_update(loop.replay.sample(cfg.batch_size, rng), cfg.bc_lr)
        stages["bc"] = {"updates": cfg.bc_updates, "lr": cfg.bc_lr,
                        "encoder": not cfg.freeze_encoder,
                        "seconds": time.perf_counter() - t_stage, "last_metrics": bc_metrics}
        metrics: dict = {}
        t_stage = time.perf_counter()
        what = "DrQ-v2 updates" if cfg.actor_updates else "critic (actor fixed)"
        for _ in tqdm(range(cfg.updates), desc=f"pretrain: {what}", unit="upd",
                      disable=not progress, dynamic_ncols=True):
            metrics = dict(learner.update(loop.replay.sample(cfg.batch_size, rng),
                                          critic_only=not cfg.actor_updates))
            loop.counters.updates += 1
        stages["td"] = {"updates": cfg.updates, "actor_updates": cfg.actor_updates,
                        "bc_weight": cfg.bc_weight if cfg.actor_updates else 0.0,
                        "seconds": time.perf_counter() - t_stage,
                        "last_metrics": {k: float(v) for k, v in metrics.items()}}
        learner.set_iteration(max(learner.iteration, start_iteration))
        learner.pretrain_step += cfg.bc_updates + cfg.updates
        loop.save()
        where = loop.describe()
        std = learner.std()
        counters = learner.training_counters().to_dict()
    finally:
        loop.close()
    shutil.copytree(out / "learner" / "checkpoints" / "last", out / "checkpoint")
    train_s = sum(st["seconds"] for st in stages.values())
    report = {
        "demos": ingested.to_dict(), "updates": cfg.updates, "bc_updates": cfg.bc_updates,
        "batch_size": cfg.batch_size, "stages": stages, "bc_weight": cfg.bc_weight,
        "freeze_encoder": cfg.freeze_encoder, "device": where,
        "last_metrics": {**bc_metrics, **stages["td"]["last_metrics"]},
        "updates_per_s": (cfg.bc_updates + cfg.updates) / max(train_s, 1e-9),
        "seconds": time.perf_counter() - t0, "seed": cfg.seed,
        "start_std": std, "counters": counters,
        "checkpoint": str(out / "checkpoint"), "start": cfg.checkpoint or "scratch",
    }
    atomic_write_json(out / "pretrain.json", report)
    return report


def start_policy(checkpoint: str, seed: int):
    """The policy training starts from: ``checkpoint`` (converted folder or RoboBase .pt),
    or, without one, a fresh pick-101-layout policy (RoboBase's initialisation, seeded)."""
    from drqv2_ros.policy.configuration_drqv2 import DrQV2Config
    from drqv2_ros.policy.modeling_drqv2 import DrQV2Policy

    if checkpoint:
        from drqv2_ros.convert.robobase import load_checkpoint_any

        return load_checkpoint_any(checkpoint)
    import torch

    torch.manual_seed(seed)
    return DrQV2Policy(DrQV2Config())


def pretrain_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drqv2-ros pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    d = PretrainConfig((), "")
    ap.add_argument("out", help="output folder (OUT/checkpoint, OUT/pretrain.json)")
    ap.add_argument("--demos", nargs="+", required=True, help="demonstration bags")
    ap.add_argument("--bc-updates", type=int, default=d.bc_updates,
                    help=f"behaviour-cloning steps (default {d.bc_updates}; 0: none)")
    ap.add_argument("--bc-lr", type=float, default=d.bc_lr,
                    help=f"their learning rate (default {d.bc_lr})")
    ap.add_argument("--updates", type=int, default=d.updates,
                    help=f"DrQ-v2 TD updates after them (default {d.updates})")
    ap.add_argument("--actor-updates", action="store_true",
                    help="the TD updates also train the actor and encoder (RoboBase's full "
                    "update with its BC term); default: the critic alone")
    ap.add_argument("--bc-weight", type=float, default=d.bc_weight,
                    help="RoboBase's BC term weight, with --actor-updates")
    ap.add_argument("--start-std", type=float, default=d.start_std,
                    help=f"place the checkpoint where its std schedule reaches this "
                    f"(default {d.start_std})")
    ap.add_argument("--checkpoint", default="", help="start weights (default: from scratch)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--freeze-encoder", action="store_true",
                    help="keep the encoder fixed during behaviour cloning too")
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--seed", type=int, default=d.seed)
    a = ap.parse_args(argv)
    from drqv2_ros.bags.reader import BagError
    from drqv2_ros.policy.file_limits import CheckpointError

    try:
        cfg = PretrainConfig(
            tuple(a.demos), a.out, updates=a.updates, checkpoint=a.checkpoint,
            batch_size=a.batch_size, bc_updates=a.bc_updates, bc_lr=a.bc_lr,
            actor_updates=a.actor_updates, bc_weight=a.bc_weight, start_std=a.start_std,
            freeze_encoder=a.freeze_encoder, device=a.device, seed=a.seed)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        report = pretrain(cfg)
    except (ValueError, OSError, BagError, CheckpointError) as exc:
        print(f"drqv2-ros pretrain: {exc}", file=sys.stderr)
        return 1
    m = report["last_metrics"]
    print(f"pretrained on {report['demos']['transitions']} demo transitions "
          f"({report['demos']['episodes']} episodes, {report['demos']['successes']} "
          f"successful): {report['bc_updates']} behaviour-cloning steps (last loss "
          f"{m.get('bc_loss', float('nan')):.4f}), {report['updates']} TD updates (last "
          f"critic loss {m.get('critic_loss', float('nan')):.4f}) in "
          f"{report['seconds']:.0f} s ({report['device']}); exploration std "
          f"{report['start_std']:.3f}")
    print(f"checkpoint: {report['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(pretrain_main(sys.argv[1:]))
