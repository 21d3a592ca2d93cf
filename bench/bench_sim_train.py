"""sim-train speed: env steps/s of the in-process loop against real time (10 Hz), per render.

    python bench/bench_sim_train.py [--episodes 3 --episode-steps 50 --train-batch 64]

For each render (pick101 640x480 = the faithful default; wrist_only 640x480 and 160x120;
fast 160x120, with 1 and 2 envs in lock-step) it times env stepping (act, step the world one
control period, render, crop, operator, hand the step over) with updates off, then the
same loop while training (the learner's update at utd 1 after a short warm-up), and prints
steps/s, updates/s and the real-time factor (steps/s over the 10 Hz the ROS graph runs at:
the baseline). The scripted operator takes over in half the episodes, as in the embedded
run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from drqv2_ros.bringup.graph import rendering_environment

os.environ.update(rendering_environment(os.environ))

from drqv2_ros.cli_checks import int_in
from drqv2_ros.demo.sim_train import SimTrainConfig, SimTrainer

REAL_TIME_HZ = 10.0


def measure(render: str, size: tuple[int, int], train: bool, a, envs: int = 1
            ) -> tuple[float, float, float]:
    cfg = SimTrainConfig(envs=envs, out=tempfile.mkdtemp(prefix="bench_sim_train_"), train=train,
                         render=render, render_width=size[0], render_height=size[1],
                         episode_steps=a.episode_steps, batch_size=a.train_batch,
                         warmup=a.train_batch, utd_ratio=1.0, eval_episodes=0,
                         intervene_probability=0.5, seed=a.seed)
    t = SimTrainer(cfg)
    try:
        t.run_episodes(envs)  # warm-up: renderers, first updates
        n0, s0, e0, u0, tu0 = t.env_steps, t.stepped, t.t_env, t.updates, t.t_update
        wall0 = time.perf_counter()
        t.run_episodes(a.episodes * envs)
        wall = time.perf_counter() - wall0
        steps = t.env_steps - n0
        env_rate = (t.stepped - s0) / (t.t_env - e0)
        overall = steps / wall
        upd = (t.updates - u0) / max(t.t_update - tu0, 1e-9)
        return env_rate, overall, upd
    finally:
        t.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int_in(1, 10_000), default=3)
    ap.add_argument("--episode-steps", type=int_in(1, 100_000), default=50)
    ap.add_argument("--train-batch", type=int_in(1, 65_536), default=64)
    ap.add_argument("--seed", type=int_in(0, 2**31 - 1), default=0)
    a = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; {a.episodes} x {a.episode_steps}-step episodes per row; "
          f"baseline: real time = {REAL_TIME_HZ:.0f} steps/s")
    print(f"{'render':<30} {'updates':<8} {'env steps/s':>11} {'overall/s':>10} "
          f"{'updates/s':>10} {'x real time':>12}")
    for render, size, envs in (("pick101", (640, 480), 1), ("wrist_only", (640, 480), 1),
                               ("wrist_only", (160, 120), 1), ("fast", (160, 120), 1),
                               ("fast", (160, 120), 2)):
        for train in (False, True):
            env_rate, overall, upd = measure(render, size, train, a, envs)
            label = f"{render} {size[0]}x{size[1]}" + (f", {envs} envs" if envs > 1 else "")
            print(f"{label:<30} {'on' if train else 'off':<8} "
                  f"{env_rate:11.1f} {overall:10.1f} {upd if train else 0.0:10.1f} "
                  f"{overall / REAL_TIME_HZ:12.2f}")


if __name__ == "__main__":
    main()
