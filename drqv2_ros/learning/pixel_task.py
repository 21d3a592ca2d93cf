"""A tiny pixel control task and a DrQ-v2 training loop over the real replay buffer and learner.

``PointReach``: a point mass in the square [-1, 1]^2 must reach a target drawn at random each
episode. The policy sees a small RGB image (target = green disc, agent = red disc, on a dark
background; default 3x32x32) plus the agent's own position as the low-dim state, so it can
only find the target through the image: the encoder has to learn (through the critic loss, as
in DrQ-v2). Actions in [-1, 1]^2 move the agent by ``0.15 * a``; the dense reward is
``-|p - target|`` after the move; episodes are truncated (not terminated) after 25 steps.
Rendering is numpy only (~20 us a frame).

``train`` runs the RoboBase online loop with one env: act (uniform random for the first
``explore_steps`` iterations, then ``TruncatedNormal(mu, std(iteration))``), store the step in a
:class:`~drqv2_ros.learning.replay_buffer.ReplayBuffer`, and every ``update_every_steps``
iterations run one :meth:`DrQV2Learner.update` on a sampled batch; ``evaluate`` rolls out the
mean action on a fixed set of episodes.
"""

from __future__ import annotations

import collections
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drqv2_ros.learning.learner import DrQV2Learner
from drqv2_ros.learning.replay_buffer import ReplayBuffer
from drqv2_ros.policy.configuration_drqv2 import DrQV2Config
from drqv2_ros.policy.modeling_drqv2 import DrQV2Policy

__all__ = ["PointReach", "make_config", "evaluate", "train", "TrainResult"]


class PointReach:
    """2-D point-mass reaching rendered as ``(3, size, size)`` uint8 frames.

    ``reset() -> (image, low_dim)``; ``step(action) -> (image, low_dim, reward, done)``,
    ``done`` = truncation at ``episode_length`` (never a termination).
    """

    action_dim = 2
    low_dim_size = 2

    def __init__(self, size: int = 32, episode_length: int = 25, speed: float = 0.15,
                 seed: int = 0) -> None:
        self.size = int(size)
        self.episode_length = int(episode_length)
        self.speed = float(speed)
        self.rng = np.random.default_rng(seed)
        c = (np.arange(self.size) + 0.5) / self.size * 2.0 - 1.0  # pixel centres in [-1, 1]
        self._yy, self._xx = np.meshgrid(c, c, indexing="ij")
        self._r_target = 3.0 / self.size * 2.0  # 3 px
        self._r_agent = 2.0 / self.size * 2.0  # 2 px
        self.pos = np.zeros(2)
        self.target = np.zeros(2)
        self.t = 0

    def render(self) -> np.ndarray:
        img = np.full((3, self.size, self.size), 20, np.uint8)
        tgt = (self._xx - self.target[0]) ** 2 + (self._yy - self.target[1]) ** 2
        img[1][tgt <= self._r_target**2] = 230
        agt = (self._xx - self.pos[0]) ** 2 + (self._yy - self.pos[1]) ** 2
        img[0][agt <= self._r_agent**2] = 230
        return img

    def obs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.render(), self.pos.astype(np.float32)

    def reset(self) -> tuple[np.ndarray, np.ndarray]:
        self.pos = self.rng.uniform(-0.9, 0.9, 2)
        self.target = self.rng.uniform(-0.8, 0.8, 2)
        self.t = 0
        return self.obs()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, bool]:
        a = np.clip(np.asarray(action, np.float64).reshape(2), -1.0, 1.0)
        self.pos = np.clip(self.pos + self.speed * a, -1.0, 1.0)
        self.t += 1
        reward = -float(np.linalg.norm(self.pos - self.target))
        img, low = self.obs()
        return img, low, reward, self.t >= self.episode_length


def make_config(
    size: int = 32,
    frame_stack: int = 1,
    *,
    encoder_channels: int = 16,
    mlp: tuple[int, ...] = (64, 64),
    stddev_schedule: str = "linear(1.0,0.1,4000)",
    lr: float = 3e-4,
    **overrides: Any,
) -> DrQV2Config:
    """A small DrQ-v2 config for :class:`PointReach` (other fields: RoboBase defaults)."""
    fields: dict[str, Any] = dict(
        camera_names=["rgb"], num_views=1, image_height=size, image_width=size,
        frame_stack=frame_stack, low_dim_per_frame=PointReach.low_dim_size,
        low_dim_size=PointReach.low_dim_size * frame_stack,
        low_dim_layout=[("agent_xy", PointReach.low_dim_size, "unit")],
        action_dim=PointReach.action_dim, encoder_channels=encoder_channels,
        actor_mlp_nodes=list(mlp), critic_mlp_nodes=list(mlp),
        stddev_schedule=stddev_schedule, actor_lr=lr, critic_lr=lr, encoder_lr=lr,
        view_fusion_lr=lr, aug_pad=max(1, round(size * 4 / 84)), batch_size=64, source="pixel_task",
    )
    fields.update(overrides)
    return DrQV2Config(**fields)


class _Stacker:
    """Frame stack (oldest first), the first frame repeated at an episode start."""

    def __init__(self, n: int) -> None:
        self.img: collections.deque = collections.deque(maxlen=n)
        self.low: collections.deque = collections.deque(maxlen=n)
        self.n = n

    def reset(self, img: np.ndarray, low: np.ndarray) -> None:
        for _ in range(self.n):
            self.img.append(img)
            self.low.append(low)

    def push(self, img: np.ndarray, low: np.ndarray) -> None:
        self.img.append(img)
        self.low.append(low)

    def batch(self) -> dict[str, torch.Tensor]:
        rgb = np.concatenate(list(self.img), 0)[None, None]  # (1, V=1, T*3, H, W)
        low = np.concatenate(list(self.low), 0)[None]
        return {"rgb": torch.from_numpy(rgb), "observation.state": torch.from_numpy(low)}


def evaluate(policy: DrQV2Policy, *, episodes: int = 10, seed: int = 12345,
             size: int | None = None) -> float:
    """Mean return of the deterministic (mean) action over a fixed set of episodes."""
    cfg = policy.config
    env = PointReach(size=size or cfg.image_height, seed=seed)
    stack = _Stacker(cfg.frame_stack)
    total = 0.0
    for _ in range(episodes):
        stack.reset(*env.reset())
        done = False
        while not done:
            a = policy.select_action(stack.batch())[0].cpu().numpy()
            img, low, r, done = env.step(a)
            stack.push(img, low)
            total += r
    return total / episodes


@dataclass
class TrainResult:
    eval_returns: list[tuple[int, float]]  # (env steps, mean eval return)
    train_returns: list[float]  # per training episode
    num_updates: int
    seconds: float
    last_metrics: dict[str, float]


def train(
    policy: DrQV2Policy,
    learner: DrQV2Learner,
    steps: int,
    *,
    env: PointReach | None = None,
    buffer_dir: str | Path | None = None,
    explore_steps: int = 500,
    min_buffer: int = 250,
    eval_every: int = 0,
    eval_episodes: int = 10,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """RoboBase online loop on :class:`PointReach` for ``steps`` env steps (one env).

    The learner's main-loop counter is synchronised with the env steps
    (its value at the call + env step) before each update; one update every
    ``learner.update_every_steps`` iterations once the buffer holds ``min_buffer``
    transitions. Batches come from the real :class:`ReplayBuffer` (frame stack, n-step return
    and discount from ``policy.config``), sampled with ``learner.rng``.
    """
    cfg = policy.config
    env = env or PointReach(size=cfg.image_height, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    act_rng = np.random.default_rng(seed + 2)
    stack = _Stacker(cfg.frame_stack)
    tmp = None
    if buffer_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pixel_task_rb_")
        buffer_dir = tmp.name
    buf = ReplayBuffer(Path(buffer_dir) / "rb", capacity=steps + steps // 10 + 64,
                       image_shape=(1, 3, env.size, env.size), low_dim_size=env.low_dim_size,
                       action_size=env.action_dim, frame_stack=cfg.frame_stack,
                       nstep=cfg.nstep, discount=cfg.discount)
    evals: list[tuple[int, float]] = []
    returns: list[float] = []
    metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    base = learner.iteration
    try:
        img, low = env.reset()
        stack.reset(img, low)
        buf.add_step(img[None], low, None, 0.0, is_first=True, is_last=False, terminated=False)
        ep_ret = 0.0
        for k in range(steps):
            it = base + k
            if len(buf) >= min_buffer and it % learner.update_every_steps == 0:
                learner.set_iteration(it)
                metrics = learner.update(buf.sample(cfg.batch_size, learner.rng))
            if k < explore_steps:
                a = act_rng.uniform(-1.0, 1.0, env.action_dim).astype(np.float32)
            else:
                a = policy.select_action(stack.batch(), step=it, explore=True, clip=None,
                                         generator=gen)[0].cpu().numpy()
            img, low, r, done = env.step(a)
            ep_ret += r
            buf.add_step(img[None], low, a, r, is_first=False, is_last=done, terminated=False)
            stack.push(img, low)
            if done:
                returns.append(ep_ret)
                ep_ret = 0.0
                img, low = env.reset()
                stack.reset(img, low)
                buf.add_step(img[None], low, None, 0.0, is_first=True, is_last=False,
                             terminated=False)
            if eval_every and (k + 1) % eval_every == 0:
                evals.append((k + 1, evaluate(policy, episodes=eval_episodes)))
                if log:
                    log(f"step {k + 1}: eval {evals[-1][1]:.2f} updates {learner.num_updates} "
                        f"{time.perf_counter() - t0:.1f}s {metrics}")
        learner.set_iteration(max(learner.iteration, base + steps))
    finally:
        buf.close()
        if tmp is not None:
            tmp.cleanup()
    return TrainResult(evals, returns, learner.num_updates, time.perf_counter() - t0, metrics)


if __name__ == "__main__":  # pragma: no cover - manual experiment
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    pol = DrQV2Policy(make_config())
    lrn = DrQV2Learner(pol, seed=args.seed)
    print("before", evaluate(pol))
    res = train(pol, lrn, args.steps, eval_every=1000, seed=args.seed, log=print)
    print("after", evaluate(pol), f"{res.seconds:.1f}s", res.num_updates, "updates")
