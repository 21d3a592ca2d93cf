"""Benchmark of drqv2_ros.learning.replay_buffer (plain script, < 60 s, CPU).

    .venv/bin/python bench/bench_replay_buffer.py [--steps 10000] [--naive 2000]

(1) bytes per transition: this buffer (uint8, each frame once, measured on disk for a real
    filled buffer) vs LeRobot's float32 ReplayBuffer layout, COMPUTED from that layout
    (state and next_state image tensors stored as float32 per transition, 9x84x84 each,
    plus low-dim state/next_state, action, reward, done, truncated); not a run of LeRobot.
(2) sample(256) time vs a naive baseline measured in the same run: a float32 stored-stacks
    layout (state + next_state arrays (N, 9, 84, 84)) gathered with numpy fancy indexing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from drqv2_ros.cli_checks import int_in
from drqv2_ros.learning.replay_buffer import ReplayBuffer

V, H, W = 1, 84, 84
T, NSTEP = 3, 3
D_FRAME, A = 18, 4  # pick-101 single-frame low-dim state, action
EP_LEN = 100
BATCH = 256


def disk_bytes(directory: Path) -> int:
    """Allocated bytes on disk (st_blocks), so sparse unfilled regions do not count."""
    return sum(p.stat().st_blocks * 512 for p in directory.iterdir() if p.is_file())


def lerobot_float32_bytes_per_transition() -> int:
    img = T * 3 * H * W * 4  # one float32 9x84x84 stacked image
    low = T * D_FRAME * 4
    # state + next_state images and low-dim, action f32, reward f32, done bool, truncated bool
    return 2 * img * V + 2 * low + A * 4 + 4 + 1 + 1


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t0)
    return float(np.median(best))


def bench_naive(n: int, pool: np.ndarray, rng: np.random.Generator, repeats: int
                ) -> tuple[float, float]:
    """sample(256) of stored-stacks layouts (float32 as LeRobot, and uint8), fancy indexing."""
    state = np.empty((n, V * T * 3, H, W), np.float32)
    for i in range(n):
        state[i] = pool[i % len(pool)].reshape(1, 3, H, W).repeat(T, 0).reshape(-1, H, W)
    next_state = np.roll(state, -1, axis=0)
    low_s = rng.normal(size=(n, T * D_FRAME)).astype(np.float32)
    low_n = np.roll(low_s, -1, axis=0)
    act = rng.uniform(-1, 1, (n, A)).astype(np.float32)
    rew = rng.normal(size=n).astype(np.float32)
    done = np.zeros(n, bool)

    def naive_f32():
        idx = rng.integers(0, n, BATCH)
        return (state[idx], next_state[idx], low_s[idx], low_n[idx], act[idx], rew[idx],
                done[idx])

    t_f32 = timeit(naive_f32, repeats)
    state_u8 = state.astype(np.uint8)
    next_u8 = np.roll(state_u8, -1, axis=0)

    def naive_u8():
        idx = rng.integers(0, n, BATCH)
        return state_u8[idx], next_u8[idx], low_s[idx], low_n[idx], act[idx], rew[idx]

    return t_f32, timeit(naive_u8, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int_in(100, 10_000_000), default=10_000,
                    help="steps written to the buffer")
    ap.add_argument("--naive", type=int_in(1, 1_000_000), default=2_000,
                    help="transitions in the naive layout")
    ap.add_argument("--repeats", type=int_in(1, 10_000), default=30)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_rb_"))
    try:
        rb = ReplayBuffer(tmp / "buf", capacity=args.steps, image_shape=(V, 3, H, W),
                          low_dim_size=D_FRAME, action_size=A, frame_stack=T, nstep=NSTEP)
        pool = rng.integers(0, 256, (97, V, 3, H, W), dtype=np.uint8)
        lows = rng.normal(size=(97, D_FRAME)).astype(np.float32)
        acts = rng.uniform(-1, 1, (97, A)).astype(np.float32)
        t0 = time.perf_counter()
        for g in range(args.steps):
            k = g % EP_LEN
            rb.add_step(pool[g % 97], lows[g % 97], None if k == 0 else acts[g % 97],
                        float(k == EP_LEN - 1), is_first=k == 0, is_last=k == EP_LEN - 1,
                        terminated=k == EP_LEN - 1, is_intervention=(g // 7) % 5 == 0)
        add_s = (time.perf_counter() - t0) / args.steps
        t0 = time.perf_counter()
        rb.flush()
        flush_s = time.perf_counter() - t0
        n_trans = len(rb)
        n = args.naive
        ours_disk = disk_bytes(tmp / "buf")
        ours_slot = (V * 3 * H * W) + 4 * D_FRAME + 4 * A + 4 + 1 + 8 + 8
        lerobot = lerobot_float32_bytes_per_transition()

        t_ours = timeit(lambda: rb.sample(BATCH, rng), args.repeats)

        t_naive, t_naive_u8 = bench_naive(args.naive, pool, rng, args.repeats)

        print(f"# replay buffer bench: {V} view(s) {H}x{W}, frame_stack {T} "
              f"({T * 3}x{H}x{W} stacked), nstep {NSTEP}, low_dim {D_FRAME}/frame, A={A}, "
              f"{os.cpu_count()} CPU(s), numpy {np.__version__}")
        print()
        print("| storage | bytes / transition | 100k transitions |")
        print("|---|---:|---:|")
        rows = [
            ("LeRobot float32 layout (computed: 2 x 9x84x84 x 4 B + low-dim etc.)", lerobot),
            ("this buffer, per-step slot (computed)", ours_slot),
            (f"this buffer, on disk, filled ({args.steps} steps, {n_trans} transitions)",
             ours_disk / n_trans),
        ]
        for name, b in rows:
            print(f"| {name} | {b:,.0f} | {b * 1e5 / 2**30:.2f} GiB |")
        print(f"\nmemory ratio LeRobot layout / this buffer on disk: "
              f"{lerobot / (ours_disk / n_trans):.1f}x")
        print()
        print(f"| sample({BATCH}) | median ms |")
        print("|---|---:|")
        print(f"| this buffer (uint8 frames, stacks + n-step rebuilt from indices) "
              f"| {t_ours * 1e3:.2f} |")
        print(f"| naive float32 stored stacks, numpy fancy indexing ({n} transitions) "
              f"| {t_naive * 1e3:.2f} |")
        print(f"| naive uint8 stored stacks, numpy fancy indexing | {t_naive_u8 * 1e3:.2f} |")
        print(f"\nsample speed-up vs naive float32: {t_naive / t_ours:.1f}x; "
              f"vs naive uint8 stacks: {t_naive_u8 / t_ours:.2f}x")
        print(f"add_step: {add_s * 1e6:.0f} us/step; flush after {args.steps} steps: "
              f"{flush_s * 1e3:.0f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
