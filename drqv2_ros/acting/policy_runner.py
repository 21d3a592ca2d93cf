"""A loaded DrQ-v2 policy ready for the control loop: checked against the live sensors,
numpy in, numpy out, exploration std from the schedule at the weights' step.

Hot-swaps build a new :class:`PolicyRunner` off the control thread (:func:`load_runner`)
and hand it to ``ControlLoop.swap_policy``; learner weight pushes are applied the same way.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import torch

from drqv2_ros.acting.weights import WeightsError, WeightsPacket, load_actor_bytes
from drqv2_ros.observation.low_dim import LowDimLayout
from drqv2_ros.policy.configuration_drqv2 import DrQV2Config
from drqv2_ros.policy.modeling_drqv2 import CheckpointError, DrQV2Policy


class IncompatibleCheckpoint(ValueError):
    """The checkpoint does not fit the live sensors or cannot run safely."""


class PolicyRunner:
    def __init__(self, policy: DrQV2Policy, *, source: str = "", weights_version: int = -1,
                 schedule_step: int | None = None, seed: int = 0):
        # The actor needs the encoder and the actor network only: the critics stay with the
        # learner (less memory, and weight pushes copy a quarter of the tensors).
        for name in ("critic", "critic_target"):
            if name in policy._modules:
                setattr(policy, name, torch.nn.Module())  # parameter-free placeholder
        self.policy = policy.eval()
        self.config: DrQV2Config = policy.config
        self.source = source
        self.weights_version = weights_version
        self.run_id = ""
        self.schedule_step = (self.config.main_loop_iterations if schedule_step is None
                              else schedule_step)
        self.layout = LowDimLayout.infer(self.config.low_dim_size, self.config.frame_stack)
        self._gen = torch.Generator().manual_seed(seed)

    # -- validation ------------------------------------------------------------------------
    def check_sensors(self, image_shape: tuple[int, int, int, int] | None) -> None:
        """Refuse a checkpoint whose image layout differs from the live camera's
        ((V, C, H, W) of one frame)."""
        c = self.config
        want = (c.num_views, c.channels_per_frame, c.image_height, c.image_width)
        if image_shape is not None and tuple(image_shape) != want:
            raise IncompatibleCheckpoint(
                f"checkpoint expects frames {want} (views, channels, H, W), the live camera "
                f"delivers {tuple(image_shape)}")

    def check_finite_and_run(self) -> None:
        for k, v in self.policy.state_dict().items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise IncompatibleCheckpoint(f"{k} has NaN/Inf values")
        c = self.config
        rgb = np.zeros((c.num_views, c.frame_stack * c.channels_per_frame, c.image_height,
                        c.image_width), np.uint8)
        a = self(rgb, np.zeros(c.low_dim_size, np.float32), False)
        if not np.all(np.isfinite(a)):
            raise IncompatibleCheckpoint("a dry-run forward pass gave a non-finite action")

    def summary(self) -> dict:
        c = self.config
        return {"source": self.source, "views": c.num_views, "image": [c.image_height,
                c.image_width], "frame_stack": c.frame_stack, "low_dim_size": c.low_dim_size,
                "low_dim_layout": [n for n, _ in self.layout.fields],
                "action_dim": c.action_dim, "schedule_step": self.schedule_step,
                "weights_version": self.weights_version}

    # -- acting ----------------------------------------------------------------------------
    def __call__(self, rgb: np.ndarray, low_dim: np.ndarray, explore: bool) -> np.ndarray:
        batch = {"rgb": torch.from_numpy(np.ascontiguousarray(rgb)).unsqueeze(0),
                 "observation.state": torch.from_numpy(np.ascontiguousarray(low_dim))}
        # RoboBase acts with unclipped TruncatedNormal noise (stddev_clip is for the update).
        a = self.policy.select_action(batch, step=self.schedule_step, explore=explore,
                                      clip=None, generator=self._gen)
        return a[0].numpy()

    # -- learner weights --------------------------------------------------------------------
    def with_weights(self, packet: WeightsPacket) -> PolicyRunner:
        """A new runner with the learner's actor weights (the running one is untouched)."""
        data = packet.verified_data()
        policy = copy.deepcopy(self.policy)
        try:
            load_actor_bytes(policy, data)
        except CheckpointError as exc:
            raise WeightsError(str(exc)) from None
        runner = PolicyRunner(policy, source=f"learner {packet.run_id}",
                              weights_version=packet.version, schedule_step=packet.learner_step)
        runner.run_id = packet.run_id
        runner._gen = self._gen
        return runner


def load_runner(path: str | os.PathLike, *, image_shape=None, root: str = "") -> PolicyRunner:
    """Load, convert (RoboBase .pt, safely) and fully validate a checkpoint for hot-swap.
    Raises ``CheckpointError`` / ``IncompatibleCheckpoint`` with the reason."""
    from drqv2_ros.convert.robobase import load_checkpoint_any

    p = Path(path).expanduser()
    if root:
        rp = Path(root).expanduser().resolve()
        if not p.resolve().is_relative_to(rp):
            raise IncompatibleCheckpoint(f"{p} is outside the allowed checkpoint root {rp}")
    policy = load_checkpoint_any(p)
    runner = PolicyRunner(policy, source=str(p))
    runner.check_sensors(image_shape)
    runner.check_finite_and_run()
    return runner


def describe(runner: PolicyRunner) -> str:
    return json.dumps(runner.summary(), sort_keys=True)
