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

With ``--device cuda`` (or ``auto`` on a machine with a GPU) the same is measured on the GPU
(timed with device synchronisation around each measured run), and for the learner's whole
loop from a filled on-disk replay buffer (online + offline, 50/50 mixing):

- ``loop``: what ``TrainingLoop.update_once`` does by default on that device (on CUDA: the
  frames kept on the GPU by ``DeviceReplay``, plan sampled on the host, gather on the GPU,
  the update replayed as one CUDA graph, ``learning/cuda_graph.py``);
- ``baseline``: a plain eager loop with synchronous sampling: ``MixedReplay.sample`` on the
  host, pageable copy to the device, update, every metric read back (``.item()``);
- ``sample``: the default path's sampling alone, and the share of the loop it takes.

Ratios printed: ``loop / update-only`` throughput (goal >= 0.9 on a GPU), ``loop /
baseline`` (goal >= 3 on a GPU) and ``update / raw``. ``--precision fp32 tf32 bf16`` and
``--compile`` add the opt-in variants (update-only and loop); ``fp32+eager`` is the default
math launched kernel by kernel (no CUDA graph).

Prints updates/s and ``update / raw``. ``--quick`` runs fewer iterations (< 1 minute);
by default the process first applies :func:`keep_freed_memory` (glibc keeps freed memory
instead of unmapping it, as a learner process should); ``--glibc-default`` skips that, to
see the page-fault cost (3-6x slower at batch 256 here, and runs past 2 minutes).

    .venv/bin/python bench/bench_update.py [--quick] [--glibc-default] [--batch 256 64]
    python bench/bench_update.py --device cuda [--precision fp32 tf32 bf16] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drqv2_ros.cli_checks import int_in
from drqv2_ros.learning.device import describe_device, resolve_device
from drqv2_ros.learning.device_replay import DeviceReplay
from drqv2_ros.learning.glibc import keep_freed_memory
from drqv2_ros.learning.learner import DrQV2Learner
from drqv2_ros.learning.replay_buffer import MixedReplay, ReplayBuffer
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

    frozen_policy = DrQV2Policy(DrQV2Config())
    frozen = DrQV2Learner(frozen_policy, seed=seed, freeze_encoder=True)

    def frozen_update():
        frozen.update(batch)

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
    fns = {"update_s": update, "frozen_encoder_update_s": frozen_update,
           "raw_fwd_bwd_s": raw, "aug_s": aug,
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
    res["frozen_speedup"] = res["update_s"] / res["frozen_encoder_update_s"]
    return res


def fill_replay(directory: Path, cfg: DrQV2Config, steps: int, seed: int = 0) -> MixedReplay:
    """Online + offline buffers holding ``steps`` random pick-101 steps (episodes of 50, a
    quarter of the transitions flagged as interventions, so the offline half is sampled)."""
    v, c, h, w = cfg.num_views, cfg.channels_per_frame, cfg.image_height, cfg.image_width
    spec = dict(image_shape=(v, c, h, w), low_dim_size=cfg.low_dim_per_frame,
                action_size=cfg.action_dim, frame_stack=cfg.frame_stack, nstep=cfg.nstep,
                discount=cfg.discount)
    replay = MixedReplay(ReplayBuffer(directory / "online", capacity=steps + 100, **spec),
                         ReplayBuffer(directory / "offline", capacity=steps + 100, **spec))
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (1000, v, c, h, w), dtype=np.uint8)
    for k in range(steps):
        i = k % 50
        replay.add_step_routed(
            frames[rng.integers(0, 1000)], rng.normal(size=cfg.low_dim_per_frame),
            None if i == 0 else rng.uniform(-1, 1, cfg.action_dim), float(rng.normal()),
            is_first=i == 0, is_last=i == 49, terminated=False,
            is_intervention=(i % 4 == 1))
    replay.flush()
    return replay


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _per_call(fn, n: int, dev: torch.device, repeats: int) -> float:
    """Median over ``repeats`` of (time of ``n`` back-to-back calls) / n, device-synchronised."""
    fn()
    _sync(dev)
    out = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(dev)
        out.append((time.perf_counter() - t) / n)
    return statistics.median(out)


def bench_device_batch(b: int, dev: torch.device, replay: MixedReplay, variants: list[str],
                       n: int, repeats: int, seed: int = 0) -> dict:
    """Update-only, whole loop and baseline on ``dev`` (see the module docstring)."""
    res: dict = {"batch": b, "device": describe_device(dev), "calls": n, "repeats": repeats}

    def make(precision: str = "fp32", compile: bool = False, graphs: bool = True
             ) -> DrQV2Learner:
        torch.manual_seed(seed)
        return DrQV2Learner(DrQV2Policy(DrQV2Config()), seed=seed, device=dev,
                            precision=precision, compile=compile, cuda_graphs=graphs)

    dreplay = DeviceReplay(replay, dev)
    rng = np.random.default_rng(seed)
    fixed = dreplay.sample(b, rng)  # one device batch for the update-only figures

    learner = make(graphs=False)  # the plain eager learner of the baseline
    policy = learner.policy
    rgb_f = fixed["rgb"].float()
    low, act = fixed["low_dim"], fixed["action"]
    target = torch.randn(b, 1, device=dev)
    params = list(policy.parameters())

    def raw():
        fused = policy.encode(rgb_f)
        qs = policy.critic(low, fused, act)
        F.mse_loss(qs, target.expand_as(qs)).backward()
        feats = fused.detach()
        q = policy.critic(low, feats, policy.actor_mean(low, feats))
        (-q.min(-1, keepdim=True)[0].mean()).backward()
        for p in params:
            p.grad = None

    res["raw_fwd_bwd_s"] = _per_call(raw, n, dev, repeats)
    res["sample_s"] = _per_call(lambda: dreplay.sample(b, rng), n, dev, repeats)

    def host_sample_and_copy():
        batch = replay.sample(b, rng)
        for k in ("rgb", "next_rgb", "low_dim", "next_low_dim", "action", "reward",
                  "discount"):
            torch.from_numpy(batch[k]).to(dev)

    res["host_sample_copy_s"] = _per_call(host_sample_and_copy, max(2, n // 4), dev, repeats)

    def baseline():
        m = learner.update({k: v for k, v in replay.sample(b, rng).items()})
        {k: float(m[k]) for k in m}  # every metric read back, as a plain loop logs them

    res["baseline_s"] = _per_call(baseline, max(2, n // 4), dev, repeats)
    for name in variants:
        precision, *opts = name.split("+")
        t0 = time.perf_counter()
        lrn = make(precision, compile="compile" in opts, graphs="eager" not in opts)
        lrn.update(fixed)  # warm-up (compilation, cuDNN autotuning)
        _sync(dev)
        res[f"{name}_first_update_s"] = time.perf_counter() - t0
        res[f"{name}_update_s"] = _per_call(lambda lrn=lrn: lrn.update(fixed), n, dev,
                                            repeats)
        res[f"{name}_loop_s"] = _per_call(  # TrainingLoop.update_once on a device
            lambda lrn=lrn: lrn.update(dreplay.take(b, rng), after_launch=lambda: (
                dreplay.prefetch(b, rng))), n, dev, repeats)
    main_v = variants[0]
    res["updates_per_s"] = 1.0 / res[f"{main_v}_update_s"]
    res["loop_updates_per_s"] = 1.0 / res[f"{main_v}_loop_s"]
    res["baseline_updates_per_s"] = 1.0 / res["baseline_s"]
    res["loop_over_update_only"] = res[f"{main_v}_update_s"] / res[f"{main_v}_loop_s"]
    res["loop_over_baseline"] = res["baseline_s"] / res[f"{main_v}_loop_s"]
    res["sample_share_of_loop"] = res["sample_s"] / res[f"{main_v}_loop_s"]
    res["update_over_raw"] = res[f"{main_v}_update_s"] / res["raw_fwd_bwd_s"]
    return res


def print_device(r: dict, variants: list[str]) -> None:
    b = r["batch"]
    print(f"batch {b:4d} on {r['device']}: raw fwd+bwd {r['raw_fwd_bwd_s'] * 1e3:.2f} ms | "
          f"device sample {r['sample_s'] * 1e3:.2f} ms | host sample+copy "
          f"{r['host_sample_copy_s'] * 1e3:.2f} ms")
    for v in variants:
        u, lp = r[f"{v}_update_s"], r[f"{v}_loop_s"]
        print(f"   {v:13s} update-only {u * 1e3:7.2f} ms = {1 / u:7.1f} updates/s | whole loop "
              f"{lp * 1e3:7.2f} ms = {1 / lp:7.1f} updates/s | first update "
              f"{r[f'{v}_first_update_s']:.1f} s")
    print(f"   baseline (host sample, sync, eager fp32): {r['baseline_s'] * 1e3:.2f} ms = "
          f"{r['baseline_updates_per_s']:.1f} updates/s")
    print(f"   ratios ({variants[0]}): loop/update-only {r['loop_over_update_only']:.2f} "
          f"(goal >= 0.9) | loop/baseline {r['loop_over_baseline']:.2f}x (goal >= 3) | "
          f"sample share {r['sample_share_of_loop']:.2f} | update/raw "
          f"{r['update_over_raw']:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="DrQ-v2 update throughput (pick-101 architecture)")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (< 1 minute)")
    ap.add_argument("--batch", type=int_in(1, 65_536), nargs="+", default=[256, 64])
    ap.add_argument("--iters", type=int_in(1, 1_000_000), default=None,
                    help="timed iterations per measurement")
    ap.add_argument("--threads", type=int_in(1, 256), default=None, help="torch.set_num_threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--glibc-default", action="store_true",
                    help="do NOT call learner.keep_freed_memory() (glibc mallopt) first")
    ap.add_argument("--device", default="cpu",
                    help="cpu (default: the CPU figures), cuda, cuda:N or auto")
    ap.add_argument("--precision", nargs="+", default=["fp32"],
                    choices=["fp32", "tf32", "bf16"], help="GPU: variants to time (first = "
                    "the one the ratios are for)")
    ap.add_argument("--compile", action="store_true", help="GPU: also time fp32+compile")
    ap.add_argument("--replay-steps", type=int_in(100, 10_000_000), default=6000,
                    help="GPU: steps in each on-disk buffer of the whole-loop measurement")
    args = ap.parse_args(argv)
    tuned = False if args.glibc_default else keep_freed_memory()
    dev = resolve_device(args.device)
    if dev.type != "cpu":
        return main_device(args, dev, tuned)
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
        print(f"            freeze_encoder: {r['frozen_encoder_update_s'] * 1e3:8.1f} ms = "
              f"{1 / r['frozen_encoder_update_s']:6.2f} updates/s, "
              f"{r['frozen_speedup']:.2f}x the full update")
        print(f"            rest: aug {r['aug_s'] * 1e3:.1f} ms, next encode + target "
              f"{r['next_encode_and_target_s'] * 1e3:.1f} ms, AdamW steps "
              f"{r['optimiser_steps_s'] * 1e3:.1f} ms, target EMA {r['target_ema_s'] * 1e3:.1f} ms")
    info["wall_s"] = time.perf_counter() - t0
    print(f"total {info['wall_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    return 0


def main_device(args, dev: torch.device, tuned: bool) -> int:
    variants = list(args.precision) + ["fp32+eager"] + (["fp32+compile"] if args.compile
                                                         else [])
    info = {"torch": torch.__version__, "device": describe_device(dev),
            "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
            "keep_freed_memory": tuned, "variants": variants}
    print(f"torch {info['torch']} on {info['device']}, {info['cpus']} CPUs, load avg "
          f"{info['load_avg_1m']:.2f}")
    n, repeats = (10, 3) if args.quick else (25, 5)
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_update_") as tmp:
        replay = fill_replay(Path(tmp), DrQV2Config(), args.replay_steps)
        print(f"replay: {len(replay.online)} online + {len(replay.offline)} offline "
              f"transitions on disk ({time.perf_counter() - t0:.1f} s to fill)")
        for b in args.batch:
            r = bench_device_batch(b, dev, replay, variants, args.iters or n, repeats)
            results.append(r)
            print_device(r, variants)
        replay.close()
    info["wall_s"] = time.perf_counter() - t0
    print(f"total {info['wall_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
