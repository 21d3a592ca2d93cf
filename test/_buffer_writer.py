"""Subprocess helper for the SIGKILL persistence test of the replay buffer.

Usage: python _buffer_writer.py DIR CAPACITY N_FLUSHED N_UNFLUSHED

Writes N_FLUSHED steps of deterministic episodes, flushes, prints "flushed N", writes
N_UNFLUSHED more steps without flushing, prints "unflushed M" and sleeps until killed.
The test imports ``make_step`` to know what every step must hold.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

IMAGE_SHAPE = (2, 3, 4, 4)
LOW_DIM = 3
ACTION = 2
EPISODE_LEN = 7  # steps (observations) per episode


def make_step(g: int) -> dict:
    """Step ``g`` of the writer's stream (episodes of EPISODE_LEN steps, odd ones terminate)."""
    e, k = divmod(g, EPISODE_LEN)
    rng = np.random.default_rng(g)
    last = k == EPISODE_LEN - 1
    return dict(
        images=rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8),
        low_dim=np.array([g, e, k], np.float32),
        action=None if k == 0 else rng.uniform(-1, 1, ACTION).astype(np.float32),
        reward=0.0 if k == 0 else float(rng.normal()),
        is_first=k == 0,
        is_last=last,
        terminated=last and e % 2 == 1,
        is_intervention=k in (2, 3),
        is_demo=False,
    )


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from drqv2_ros.learning.replay_buffer import ReplayBuffer

    directory, capacity, n_flushed, n_unflushed = sys.argv[1], *map(int, sys.argv[2:5])
    rb = ReplayBuffer(directory, capacity=capacity, image_shape=IMAGE_SHAPE,
                      low_dim_size=LOW_DIM, action_size=ACTION, frame_stack=3, nstep=3,
                      discount=0.9)
    for g in range(n_flushed):
        rb.add_step(**make_step(g))
    rb.flush()
    print(f"flushed {n_flushed}", flush=True)
    for g in range(n_flushed, n_flushed + n_unflushed):
        rb.add_step(**make_step(g))
    print(f"unflushed {n_unflushed}", flush=True)
    while True:
        time.sleep(1.0)


if __name__ == "__main__":
    main()
