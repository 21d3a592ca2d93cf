"""`drqv2-ros pretrain`: a start policy from demonstration bags.

    drqv2-ros sim-train --demos-only --episodes 30 --out runs/demos     # scripted demos
    drqv2-ros pretrain --demos runs/demos/demos --updates 2000 runs/pretrained
    drqv2-ros sim-train --checkpoint runs/pretrained/checkpoint ...     # fine-tune it

The demos (any bag with the ``step`` topic: ``drqv2-ros record``, the recorder node,
``sim-train --record-bag``) are ingested into the learner's offline buffer (every step
flagged as a demonstration) and the learner's own update runs on them alone: the DrQ-v2
critic (TD on the demo transitions) and actor, plus RoboBase's BC term on the demo actions
(``--bc-weight``, 1 by default here). The result is a checkpoint in the converted format
(``OUT/checkpoint``: config.json + model.safetensors + counters.json) that the policy node,
``sim-train`` and ``/load_checkpoint`` take as they are, and ``OUT/pretrain.json`` (the
ingest summary, updates, the last losses, time).
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
    updates: int = 2000
    checkpoint: str = ""              # start weights; "" = from scratch (pick-101 layout)
    batch_size: int = 256
    bc_weight: float = 1.0
    freeze_encoder: bool = False
    device: str = "auto"
    seed: int = 0


def pretrain(cfg: PretrainConfig, progress: bool = True) -> dict:
    """Train ``cfg.updates`` updates on the demos; returns (and writes) the summary."""
    from tqdm import tqdm

    from drqv2_ros.bags.episodes import TargetShapes, check_bags, count_step_messages
    from drqv2_ros.bags.ingest import ingest_bags
    from drqv2_ros.learning.training_loop import TrainingConfig, TrainingLoop

    if cfg.updates < 1:
        raise ValueError(f"updates must be >= 1, got {cfg.updates}")
    if not cfg.demos:
        raise ValueError("no demonstration bags given (--demos)")
    out = Path(cfg.out)
    if (out / "checkpoint").exists():
        raise FileExistsError(f"{out / 'checkpoint'} exists: choose a new output folder")
    policy = start_policy(cfg.checkpoint, cfg.seed)
    c = policy.config
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
    try:
        ingested = ingest_bags(cfg.demos, loop.replay.offline, demo_flags="all", target=target)
        if len(loop.replay.offline) == 0:
            raise ValueError(f"the demos hold no complete episode: {ingested}")
        metrics = {}
        t_train = time.perf_counter()
        for _ in tqdm(range(cfg.updates), desc="pretrain", unit="upd", disable=not progress,
                      dynamic_ncols=True):
            metrics = loop.update_once()
        train_s = time.perf_counter() - t_train
        loop.save()
        where = loop.describe()
    finally:
        loop.close()
    shutil.copytree(out / "learner" / "checkpoints" / "last", out / "checkpoint")
    report = {
        "demos": ingested.to_dict(), "updates": cfg.updates, "batch_size": cfg.batch_size,
        "bc_weight": cfg.bc_weight, "freeze_encoder": cfg.freeze_encoder, "device": where,
        "last_metrics": {k: float(v) for k, v in metrics.items()},
        "updates_per_s": cfg.updates / train_s, "seconds": time.perf_counter() - t0,
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
    ap.add_argument("--updates", type=int, default=d.updates)
    ap.add_argument("--checkpoint", default="", help="start weights (default: from scratch)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--bc-weight", type=float, default=d.bc_weight)
    ap.add_argument("--freeze-encoder", action="store_true")
    ap.add_argument("--device", default=d.device)
    ap.add_argument("--seed", type=int, default=d.seed)
    a = ap.parse_args(argv)
    from drqv2_ros.bags.reader import BagError
    from drqv2_ros.policy.file_limits import CheckpointError

    try:
        report = pretrain(PretrainConfig(
            tuple(a.demos), a.out, updates=a.updates, checkpoint=a.checkpoint,
            batch_size=a.batch_size, bc_weight=a.bc_weight, freeze_encoder=a.freeze_encoder,
            device=a.device, seed=a.seed))
    except (ValueError, OSError, BagError, CheckpointError) as exc:
        print(f"drqv2-ros pretrain: {exc}", file=sys.stderr)
        return 1
    m = report["last_metrics"]
    print(f"pretrained {report['updates']} updates on {report['demos']['transitions']} demo "
          f"transitions ({report['demos']['episodes']} episodes, "
          f"{report['demos']['successes']} successful) in {report['seconds']:.0f} s "
          f"({report['updates_per_s']:.2f} updates/s, {report['device']}); last critic loss "
          f"{m.get('critic_loss', float('nan')):.4f}, actor loss "
          f"{m.get('actor_loss', float('nan')):.4f}")
    print(f"checkpoint: {report['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(pretrain_main(sys.argv[1:]))
