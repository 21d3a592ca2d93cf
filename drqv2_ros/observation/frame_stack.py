"""Frame stacking exactly as RoboBase trains with ``frame_stack_on_channel``: the newest
``T`` frames, oldest first, concatenated on the channel axis (images) or the last axis
(low-dim state). At an episode's first observation the stack is filled with copies of it
(gym/RoboBase FrameStack reset semantics). The replay buffer rebuilds the same stacks from
stored single frames at sample time."""

from __future__ import annotations

import numpy as np


class FrameStacker:
    def __init__(self, frame_stack: int):
        if frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        self.frame_stack = frame_stack
        self._images: list[np.ndarray] = []
        self._low_dim: list[np.ndarray] = []

    def reset(self) -> None:
        self._images.clear()
        self._low_dim.clear()

    @property
    def empty(self) -> bool:
        return not self._images

    def push(self, images: np.ndarray, low_dim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add one observation (images (V, C, H, W) uint8, low_dim (D,) float32) and return
        the stacked observation ((V, T*C, H, W), (T*D,))."""
        if self.empty:
            self._images = [images] * self.frame_stack
            self._low_dim = [low_dim] * self.frame_stack
        else:
            self._images = [*self._images[1:], images]
            self._low_dim = [*self._low_dim[1:], low_dim]
        return self.stacked()

    def stacked(self) -> tuple[np.ndarray, np.ndarray]:
        if self.empty:
            raise RuntimeError("no observation pushed since reset()")
        return np.concatenate(self._images, axis=1), np.concatenate(self._low_dim, axis=0)
