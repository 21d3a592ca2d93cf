"""The actor's checkpoint contract: the one place that decides whether a policy may act in
the running control loop.

A loop is configured once, from the checkpoint it starts with (camera views, channels and
image size, frame stack, low-dim layout as recorded in the checkpoint, action size). Every
later policy (``/load_checkpoint`` hot-swap or learner weight push) must match it exactly, and
must be runnable: finite weights, a std schedule that is finite and in range over the whole
step range (``policy.schedule``), a dry-run action that is finite with and without
exploration. A refusal names the first difference; the running policy is untouched.

What arrives on the camera topic plays no part: a stray frame of another size is dropped as
bad input, it never changes what a checkpoint is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from drqv2_ros.observation.low_dim import LowDimLayout, LowDimLayoutError
from drqv2_ros.policy.configuration_drqv2 import DrQV2Config
from drqv2_ros.policy.schedule import ScheduleError, StdSchedule


class IncompatibleCheckpoint(ValueError):
    """The checkpoint does not fit the running loop or cannot run safely."""


@dataclass(frozen=True)
class ActorContract:
    num_views: int
    channels_per_frame: int
    image_height: int
    image_width: int
    frame_stack: int
    low_dim_layout: tuple[tuple[str, int, str], ...]
    action_dim: int
    privileged_low_dim: str = ""  # "sim_state": cube_pos may be filled from the simulator

    @classmethod
    def from_config(cls, config: DrQV2Config, privileged_low_dim: str = "") -> ActorContract:
        return cls(config.num_views, config.channels_per_frame, config.image_height,
                   config.image_width, config.frame_stack,
                   tuple(tuple(e) for e in config.low_dim_layout), config.action_dim,
                   privileged_low_dim)

    @property
    def frame_shape(self) -> tuple[int, int, int, int]:
        """(V, C, H, W) of one frame."""
        return (self.num_views, self.channels_per_frame, self.image_height, self.image_width)

    def layout(self) -> LowDimLayout:
        return LowDimLayout.from_recorded(self.low_dim_layout)

    # -- the checks ------------------------------------------------------------------------
    def check_config(self, config: DrQV2Config) -> LowDimLayout:
        """Refuse a config that differs from the loop's; returns its low-dim layout."""
        mine = ActorContract.from_config(config, self.privileged_low_dim)
        for name in ("num_views", "channels_per_frame", "image_height", "image_width",
                     "frame_stack", "low_dim_layout", "action_dim"):
            want, got = getattr(self, name), getattr(mine, name)
            if want != got:
                raise IncompatibleCheckpoint(
                    f"checkpoint {name} is {_fmt(got)}, the running loop has {_fmt(want)}")
        try:
            layout = LowDimLayout.from_recorded(config.low_dim_layout)
        except LowDimLayoutError as exc:
            raise IncompatibleCheckpoint(str(exc)) from None
        if layout.needs_privileged and self.privileged_low_dim != "sim_state":
            raise IncompatibleCheckpoint(
                "checkpoint expects the PRIVILEGED cube position (cube_pos), which a real robot "
                "does not have; set privileged_low_dim:=sim_state to run it in simulation")
        try:
            StdSchedule.parse(config.stddev_schedule)
        except ScheduleError as exc:
            raise IncompatibleCheckpoint(f"stddev_schedule: {exc}") from None
        return layout

    def check_runner(self, runner) -> LowDimLayout:
        """Config, finite weights and a finite dry-run action (mean and explored); returns
        the low-dim layout."""
        layout = self.check_config(runner.config)
        for k, v in runner.policy.state_dict().items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise IncompatibleCheckpoint(f"{k} has NaN/Inf values")
        v, c, h, w = self.frame_shape
        rgb = np.zeros((v, self.frame_stack * c, h, w), np.uint8)
        low = np.zeros(runner.config.low_dim_size, np.float32)
        for explore in (False, True):
            a = np.asarray(runner.act_quietly(rgb, low, explore))
            if a.shape != (self.action_dim,) or not np.all(np.isfinite(a)):
                raise IncompatibleCheckpoint(
                    f"a dry-run forward pass (explore={explore}) gave {a!r}, not "
                    f"{self.action_dim} finite values")
        return layout


def _fmt(v) -> str:
    return str([list(e) for e in v]) if isinstance(v, tuple) and v and \
        isinstance(v[0], tuple) else str(v)
