"""The learner's intake while it trains: how many steps per second it stores, against one
actor's 10 Hz, with nothing lost.

    python bench/bench_intake.py [--seconds 20] [--batch 256] [--rate 100]

One TrainingLoop (the learner node's work loop, without ROS) with the pick-101 network
(84x84, frame stack 3, 18 low-dim), batch ``--batch`` on the CPU, training as fast as it can
(utd 1, no rate cap) while a producer thread submits steps (200-step episodes, as
``submit`` is called from the DDS callback):

  paced:  ``--rate`` steps/s (default 100 = ten actors at 10 Hz) for ``--seconds``;
  flood:  as fast as the bounded queue takes them (the intake's capacity while training).

Prints, for each: steps sent, stored, dropped (by reason), lost, the stored rate and its
ratio to one actor's 10 Hz, and the updates done meanwhile. The goal (issue 10): at least
10x with 0 steps lost or dropped.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from drqv2_ros.cli_checks import float_in, int_in
from drqv2_ros.learning.training_loop import TrainingConfig, TrainingLoop
from drqv2_ros.observation.step_record import StepRecord
from drqv2_ros.policy import DrQV2Config, DrQV2Policy

ACTOR_HZ = 10.0


def steps(rng: np.random.Generator, length: int = 200):
    """An endless stream of well-formed episodes (a few distinct frames, reused)."""
    frames = rng.integers(0, 256, (8, 1, 3, 84, 84), np.uint8)
    ep, t = 0, 0
    while True:
        for k in range(length + 1):
            t += 100_000_000
            yield StepRecord(
                episode=ep, index=k, stamp_ns=t, is_first=k == 0, is_last=k == length,
                terminated=False, images=frames[(ep + k) % 8], low_dim=np.zeros(18, np.float32),
                action=np.zeros(4, np.float32), reward=0.0, is_intervention=False)
        ep += 1


def run(mode: str, seconds: float, rate: float, batch: int, work: Path) -> dict:
    torch.manual_seed(0)
    policy = DrQV2Policy(DrQV2Config(batch_size=batch))
    cfg = TrainingConfig(output_dir=str(work / mode), batch_size=batch, warmup_transitions=batch,
                         online_capacity=20_000, offline_capacity=1000, tensorboard=False,
                         metrics_period_s=1.0, publish_weights_period_s=1e9,
                         checkpoint_period_updates=10**9, device="cpu")
    loop = TrainingLoop(cfg, policy)
    stop = threading.Event()
    th = threading.Thread(target=loop.run, args=(stop, lambda w: None, lambda m: None))
    sent = 0
    gen = steps(np.random.default_rng(0))
    # warm up: enough steps stored for training to run, then measure while it trains
    for _ in range(batch + 50):
        loop.submit(next(gen))
        sent += 1
    th.start()
    while loop.counters.updates < 1:
        time.sleep(0.05)
    u0, t0 = loop.counters.updates, time.monotonic()
    stored0, sent0 = loop.intake.totals.stored, sent
    cap = loop._queue.maxsize
    max_queue = 0
    while (now := time.monotonic()) - t0 < seconds:
        max_queue = max(max_queue, loop._queue.qsize())
        if mode == "idle":
            time.sleep(0.05)
        elif mode == "paced":
            due = int((now - t0) * rate) - (sent - batch - 50)
            for _ in range(max(0, due)):
                loop.submit(next(gen))
                sent += 1
            time.sleep(0.002)
        elif loop._queue.qsize() < 0.8 * cap:
            loop.submit(next(gen))
            sent += 1
        else:
            time.sleep(0.001)
    produced_s = time.monotonic() - t0
    updates = loop.counters.updates - u0
    # stop producing; let the intake catch up, then stop
    deadline = time.monotonic() + 120
    while loop._queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.05)
    dt = time.monotonic() - t0
    stop.set()
    th.join(300)
    totals = loop.intake.totals
    out = {"mode": mode, "sent": sent, "stored": totals.stored + totals.staged,
           "dropped": dict(totals.dropped), "lost": totals.lost,
           "offered_rate": (sent - sent0) / produced_s,
           "stored_rate": (totals.stored - stored0) / dt, "max_queue": max_queue,
           "updates_per_s": updates / produced_s, "seconds": produced_s}
    loop.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float_in(0, 3600, open_low=True), default=20.0)
    ap.add_argument("--rate", type=float_in(0, 1e6, open_low=True), default=100.0,
                    help="paced producer, steps/s")
    ap.add_argument("--batch", type=int_in(1, 65_536), default=256)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="bench_intake_") as tmp:
        base = None
        for mode in ("idle", "paced", "flood"):
            r = run(mode, args.seconds, args.rate, args.batch, Path(tmp))
            ok = r["stored"] == r["sent"] and not r["dropped"] and not r["lost"]
            if mode == "idle":
                base = r["updates_per_s"]
                print(f"idle  : training alone, {base:.2f} updates/s at batch {args.batch} "
                      "(the baseline)")
                continue
            print(f"{mode:6s}: offered {r['offered_rate']:.0f} steps/s = "
                  f"{r['offered_rate'] / ACTOR_HZ:.1f}x one actor's 10 Hz for "
                  f"{r['seconds']:.0f} s; sent {r['sent']}, stored {r['stored']}, dropped "
                  f"{r['dropped'] or 0}, lost {r['lost']} ({'nothing lost' if ok else 'LOSS'}); "
                  f"queue at most {r['max_queue']}; training at {r['updates_per_s']:.2f} "
                  f"updates/s = {r['updates_per_s'] / base:.2f}x the baseline")


if __name__ == "__main__":
    main()
