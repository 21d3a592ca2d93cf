"""DrQ-v2 update throughput on this machine, against the raw network cost.

Architecture: pick-101 (one camera, 9x84x84 uint8, low-dim 54, action 4, actor/critic MLPs
[256, 256], bottleneck 50, 2 critics, encoder 4 convs x 32 channels -> 39200 features).

For each batch size it measures, in the same process:

- ``update``: one full :meth:`DrQV2Learner.update` (numpy batch -> tensors, augmentation of
  rgb and next_rgb, encoder with grad + next encoder without, target actor + target critics,
  critic + encoder backward and AdamW steps, actor loss backward and AdamW step, Polyak
  target update, metrics);
- ``raw``: encoder + critic forward/backward on an MSE loss, then actor + critic forward /
  backward on ``-min Q`` with detached features: the gradient work of an update without
  augmentation, next-observation encoding, target computation, optimisers or target update;
- a breakdown of the rest (augmentation, next encode + target, optimiser steps, target EMA).

Prints updates/s and ``update / raw``. ``--quick`` runs fewer iterations (< 1 minute);
by default the process first applies :func:`keep_freed_memory` (glibc keeps freed memory
instead of unmapping it, as a learner process should); ``--glibc-default`` skips that, to
see the page-fault cost (3-6x slower at batch 256 here, and runs past 2 minutes).

    .venv/bin/python bench/bench_update.py [--quick] [--glibc-default] [--batch 256 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drqv2_ros.learning.learner import DrQV2Learner, keep_freed_memory
from drqv2_ros.policy.configuration_drqv2 import DrQV2Config
from drqv2_ros.policy.modeling_drqv2 import DrQV2Policy


def make_batch(cfg: DrQV2Config, b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shape = (b, cfg.num_views, cfg.in_channels, cfg.image_height, cfg.image_width)
    return {
        "rgb": rng.integers(0, 256, shape, dtype=np.uint8),
        "next_rgb": rng.integers(0, 256, shape, dtype=np.uint8),
        "low_dim": rng.normal(size=(b, cfg.low_dim_size)).astype(np.float32),
        "next_low_dim": rng.normal(size=(b, cfg.low_dim_size)).astype(np.float32),
        "action": rng.uniform(-1, 1, (b, cfg.action_dim)).astype(np.float32),
        "reward": rng.normal(size=b).astype(np.float32),
        "discount": np.full(b, 0.99**3, np.float32),
        "is_intervention": np.zeros(b, bool),
        "is_demo": np.zeros(b, bool),
    }


def timeit(fn, iters: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_batch(b: int, iters: int, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    policy = DrQV2Policy(DrQV2Config())
    learner = DrQV2Learner(policy, seed=seed)
    cfg = policy.config
    rng = np.random.default_rng(seed)
    batch = make_batch(cfg, b, rng)
    tb = {k: torch.from_numpy(v) for k, v in batch.items()}
    rgb_f = tb["rgb"].float()
    target = torch.randn(b, 1)

    def update():
        learner.update(batch)

    params = list(policy.parameters())

    def raw():
        fused = policy.encode(rgb_f)
        qs = policy.critic(tb["low_dim"], fused, tb["action"])
        F.mse_loss(qs, target.expand_as(qs)).backward()
        feats = fused.detach()
        mu = policy.actor_mean(tb["low_dim"], feats)
        q = policy.critic(tb["low_dim"], feats, mu)
        (-q.min(-1, keepdim=True)[0].mean()).backward()
        for p in params:
            p.grad = None

    def aug():
        learner.augment(tb["rgb"])
        learner.augment(tb["next_rgb"])

    def next_and_target():
        with torch.no_grad():
            nf = policy.encode(rgb_f)
        learner.target_q(tb["reward"][:, None], tb["discount"][:, None], tb["next_low_dim"], nf,
                         learner.std())

    # optimiser steps need gradients: run one raw backward without clearing them
    fused = policy.encode(rgb_f)
    qs = policy.critic(tb["low_dim"], fused, tb["action"])
    F.mse_loss(qs, target.expand_as(qs)).backward()
    mu = policy.actor_mean(tb["low_dim"], fused.detach())
    (-policy.critic(tb["low_dim"], fused.detach(), mu).min(-1)[0].mean()).backward()

    def optim_steps():
        learner.critic_opt.step()
        learner.encoder_opt.step()
        learner.actor_opt.step()

    def ema():
        policy.soft_update_target()

    fns = {"optimiser_steps_s": optim_steps}  # needs the gradients left above
    times: dict[str, list[float]] = {k: timeit(f, iters) for k, f in fns.items()}
    for p in params:
        p.grad = None
    # Round-robin, so that load from other processes hits every measurement alike.
    fns = {"update_s": update, "raw_fwd_bwd_s": raw, "aug_s": aug,
           "next_encode_and_target_s": next_and_target, "target_ema_s": ema}
    for f in fns.values():
        f()  # warm-up
    for k in fns:
        times[k] = []
    for _ in range(iters):
        for k, f in fns.items():
            times[k] += timeit(f, 1, warmup=0)
    med = statistics.median
    res = {"batch": b, "iters": iters}
    res.update({k: med(v) for k, v in times.items()})
    res["updates_per_s"] = 1.0 / res["update_s"]
    res["samples_per_s"] = b / res["update_s"]
    res["update_over_raw"] = res["update_s"] / res["raw_fwd_bwd_s"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="DrQ-v2 update throughput (pick-101 architecture)")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (< 1 minute)")
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per measurement")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--glibc-default", action="store_true",
                    help="do NOT call learner.keep_freed_memory() (glibc mallopt) first")
    args = ap.parse_args(argv)
    tuned = False if args.glibc_default else keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_avg_1m": os.getloadavg()[0],
        "keep_freed_memory": tuned,
    }
    print(f"torch {info['torch']}, {info['threads']} threads, {info['cpus']} CPUs, "
          f"load avg {info['load_avg_1m']:.2f}, keep_freed_memory {tuned}")
    results = []
    t0 = time.perf_counter()
    for b in args.batch:
        iters = args.iters or ((2 if b >= 128 else 4) if args.quick else (5 if b >= 128 else 12))
        r = bench_batch(b, iters)
        results.append(r)
        print(f"batch {b:4d}: update {r['update_s'] * 1e3:8.1f} ms = {r['updates_per_s']:6.2f} "
              f"updates/s ({r['samples_per_s']:6.0f} samples/s) | raw fwd+bwd "
              f"{r['raw_fwd_bwd_s'] * 1e3:8.1f} ms | update/raw {r['update_over_raw']:.2f}")
        print(f"            rest: aug {r['aug_s'] * 1e3:.1f} ms, next encode + target "
              f"{r['next_encode_and_target_s'] * 1e3:.1f} ms, AdamW steps "
              f"{r['optimiser_steps_s'] * 1e3:.1f} ms, target EMA {r['target_ema_s'] * 1e3:.1f} ms")
    info["wall_s"] = time.perf_counter() - t0
    print(f"total {info['wall_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
