"""Replay sampling that keeps a GPU fed: the frames live on the device, batches are gathered
there.

ROS-free. The persistent buffers (``learning/replay_buffer.py``) store every frame once, as
uint8, memory-mapped on disk; a batch of 256 pick-101 transitions rebuilds 2 x 256 stacks of
three 3x84x84 frames (32.5 MB). Gathering that on the host and copying it to the GPU for
every update costs more than the update itself on a current GPU. :class:`DeviceReplay`
instead holds a device copy of each buffer's ``images`` (uint8) and ``low_dim`` rings (100k
pick-101 frames are 2.1 GB), uploads only the steps added since the last batch, and for
each batch:

1. draws the transitions and computes their ring slots, n-step rewards and discounts on the
   host with the buffer's own :meth:`ReplayBuffer.sample_plan` (a few KB; the same random
   draws, in the same order, as :meth:`MixedReplay.sample`);
2. copies the plan (slots, actions, rewards, discounts) to the device in one pinned,
   asynchronous transfer;
3. gathers frames and low-dim states by slot on the device.

The batch equals :meth:`MixedReplay.sample` for the same ``rng`` element for element (tested
on the CPU and on CUDA), as tensors on the device; ``is_intervention``, ``is_demo`` and
``is_offline`` stay host arrays (the learner counts BC samples without waiting for the GPU).
Nothing here waits for the device. Chosen by measurement over a host gather + pinned copy:
see ``bench/bench_update.py`` and the README's learner section.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from drqv2_ros.learning.replay_buffer import MixedReplay, ReplayBuffer

__all__ = ["DeviceReplay", "mirror_bytes"]

_UPLOAD_CHUNK_BYTES = 64 << 20  # host staging per upload copy


def mirror_bytes(replay: MixedReplay) -> int:
    """Device memory a :class:`DeviceReplay` of ``replay`` takes (both rings, full size)."""
    total = 0
    for buf in (replay.online, replay.offline):
        images, low_dim = buf.frame_arrays()
        total += images.nbytes + low_dim.nbytes
    return total


class _Mirror:
    """Device copy of one buffer's ``images`` and ``low_dim`` rings, synced by step id."""

    def __init__(self, buffer: ReplayBuffer, device: torch.device) -> None:
        self.buffer = buffer
        images, low_dim = buffer.frame_arrays()
        self.images = torch.empty(images.shape, dtype=torch.uint8, device=device)
        self.low_dim = torch.empty(low_dim.shape, dtype=torch.float32, device=device)
        self.synced = 0  # steps with global id < synced are on the device
        self._pin = self.images.device.type == "cuda"
        row = images[0].nbytes + low_dim[0].nbytes
        self._chunk = max(1, _UPLOAD_CHUNK_BYTES // max(1, row))

    def _staged(self, a: np.ndarray) -> torch.Tensor:
        # Pinned host memory (PyTorch's caching host allocator keeps it until the
        # asynchronous copy has read it), so the upload does not block the update thread.
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.pin_memory() if self._pin else t

    def sync(self) -> int:
        """Upload the steps added since the last sync (at most the whole ring)."""
        buf = self.buffer
        total, cap = buf.total_steps_added, buf.capacity
        start = max(self.synced, total - cap)
        n = total - start
        if n <= 0:
            return 0
        images, low_dim = buf.frame_arrays()
        g = start
        while g < total:
            s0 = g % cap
            s1 = min(cap, s0 + (total - g), s0 + self._chunk)
            self.images[s0:s1].copy_(self._staged(images[s0:s1]), non_blocking=True)
            self.low_dim[s0:s1].copy_(self._staged(low_dim[s0:s1]), non_blocking=True)
            g += s1 - s0
        self.synced = total
        return n


class DeviceReplay:
    """Samples a :class:`MixedReplay` with the frames gathered on ``device``.

    The caller adds steps to ``replay`` as usual (same thread); :meth:`sample` uploads what
    was added since the last call first, so a batch never sees a step the host did not
    write. Device memory: :func:`mirror_bytes`, allocated at construction.
    """

    def __init__(self, replay: MixedReplay, device: str | torch.device) -> None:
        self.replay = replay
        self.device = torch.device(device)
        self._mirrors = {id(buf): _Mirror(buf, self.device)
                         for buf in (replay.online, replay.offline)}
        self.uploaded_steps = 0
        self._ahead: dict[str, Any] | None = None

    def sync(self) -> int:
        """Upload every step added since the last sync; returns how many."""
        n = sum(m.sync() for m in self._mirrors.values())
        self.uploaded_steps += n
        return n

    def take(self, batch_size: int, rng: np.random.Generator) -> dict[str, Any]:
        """The batch :meth:`prefetch` prepared (if of this size), else a fresh sample."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead["is_offline"].shape[0] == int(batch_size):
            return ahead
        return self.sample(batch_size, rng)

    def prefetch(self, batch_size: int, rng: np.random.Generator) -> None:
        """Sample the next batch now (for :meth:`take`), e.g. while the GPU runs an update.
        The draws are the ones the next :meth:`sample` would make, in the same order; the
        batch sees the steps added up to now."""
        self._ahead = self.sample(batch_size, rng)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, Any]:
        """A :meth:`MixedReplay.sample` batch for ``rng``, frames gathered on the device."""
        self.sync()
        plans = self.replay.sample_plans(int(batch_size), rng)
        parts = [self._gather(self._mirrors[id(buf)], plan) for buf, plan in plans]
        out: dict[str, Any] = {}
        for k in parts[0]:
            vals = [p[k] for p in parts]
            if isinstance(vals[0], torch.Tensor):
                out[k] = vals[0] if len(vals) == 1 else torch.cat(vals)
            else:
                out[k] = vals[0] if len(vals) == 1 else np.concatenate(vals)
        out["is_offline"] = self.replay.offline_mask(plans)
        return out

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _gather(self, m: _Mirror, plan: dict[str, np.ndarray]) -> dict[str, Any]:
        buf = m.buffer
        _, b, t = plan["slots"].shape
        a = buf.action_size
        # One host->device copy for the plan: the slots (int64), then the float32 fields.
        slots = np.ascontiguousarray(plan["slots"], dtype=np.int64).reshape(-1)
        floats = np.concatenate([plan["action"].reshape(-1), plan["reward"],
                                 plan["discount"]]).astype(np.float32)
        packed = np.concatenate([slots.view(np.uint8), floats.view(np.uint8)])
        dev = self._to_device(packed)
        idx = dev[: slots.nbytes].view(torch.int64)
        fdev = dev[slots.nbytes:].view(torch.float32)
        v, c, h, w = buf.image_shape
        img = m.images.index_select(0, idx).view(2, b, t, v, c, h, w)
        img = img.permute(0, 1, 3, 2, 4, 5, 6).reshape(2, b, v, t * c, h, w)
        low = m.low_dim.index_select(0, idx).view(2, b, t * buf.low_dim_size)
        return {
            "rgb": img[0],
            "low_dim": low[0],
            "action": fdev[: b * a].view(b, a),
            "reward": fdev[b * a: b * a + b],
            "discount": fdev[b * a + b:],
            "next_rgb": img[1],
            "next_low_dim": low[1],
            "is_intervention": plan["is_intervention"],
            "is_demo": plan["is_demo"],
        }
