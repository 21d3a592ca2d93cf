"""DrQ-v2 learner: one RoboBase-exact update per call, resumable state, actor weight export.

ROS-free. The update follows RoboBase ``DrQV2`` / ``ActorCritic.update`` (robobase-org/robobase,
``method/drqv2.py`` and ``method/actor_critic.py``) step by step:

1. random-shift augmentation (``RandomShiftsAug(pad)``) of ``rgb`` and of ``next_rgb``, one
   call each over the ``B*V`` images, independent shifts; nothing else augments (our replay
   buffer returns raw frames, unlike LeRobot's which already shifts on sample);
2. ``fused = encode(rgb)`` with gradient, ``next_fused = encode(next_rgb)`` without;
3. target ``y = r_n + discount_n * min_i Q'_i(s', a')`` with ``a' ~ TruncatedNormal(mu(s'),
   std)`` clipped by ``stddev_clip`` (no gradient; ``discount_n`` is ``gamma**n'`` or 0 at a
   termination, computed by the buffer, so RoboBase's ``bootstrap * discount`` is folded in);
4. critic loss = mean over batch AND critics of ``(Q_i(s, a) - y)**2`` (RoboBase:
   ``F.mse_loss(qs, y.repeat(1, N), reduction="none").mean(-1)`` then ``.mean()``; note the
   original facebookresearch DrQ-v2 *sums* the two critics' MSEs instead); one backward,
   critic step then encoder step (the encoder learns only through the critic loss);
5. actor loss ``-min_i Q_i(s, a~pi)`` on detached features, ``a`` sampled with the scheduled
   std and ``stddev_clip``; optional BC term (RoboBase ``get_bc_loss``); actor step;
6. ``critic_target <- tau * critic + (1 - tau) * critic_target``.

The std schedule is evaluated at :attr:`DrQV2Learner.iteration`, a RoboBase main-loop
iteration counter that starts at the checkpoint's ``main_loop_iterations`` (see
``docs/learner.md`` for the exact mapping).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drqv2_ros.policy.configuration_drqv2 import ConfigError, DrQV2Config
from drqv2_ros.policy.modeling_drqv2 import (
    CheckpointError,
    DrQV2Policy,
    RandomShiftsAug,
    check_state_dict,
    schedule,
)

__all__ = [
    "DrQV2Learner",
    "LearnerStateError",
    "STATE_FORMAT",
    "STATE_VERSION",
    "actor_state_dict",
    "actor_state_bytes",
    "load_actor_bytes",
    "exploration_std",
    "explore_action",
    "keep_freed_memory",
]

STATE_FORMAT = "drqv2_ros.learner_state"
STATE_VERSION = 1
_MAGIC = b"DRQV2LRN"  # file = magic (8) + sha256(payload) (32) + payload (torch.save zip)

# Config fields that may differ between a saved learner state and the learner loading it:
# counters (restored from the state) and provenance. Everything else must match.
_CONFIG_VOLATILE = {"main_loop_iterations", "pretrain_step", "global_env_episode", "source",
                    "defaulted"}
# Fields a learner config override may change (hyper-parameters, counters, provenance);
# every other field describes the network and must equal the policy's.
_CONFIG_HPARAMS = {
    "stddev_schedule", "stddev_clip", "critic_target_tau", "discount", "nstep", "actor_lr",
    "critic_lr", "encoder_lr", "view_fusion_lr", "weight_decay", "use_augmentation", "aug_pad",
    "batch_size",
} | _CONFIG_VOLATILE | {"num_train_envs", "action_repeat", "action_scale_m"}

_BATCH_KEYS = ("rgb", "low_dim", "action", "reward", "discount", "next_rgb", "next_low_dim")


class LearnerStateError(CheckpointError):
    """A learner state file cannot be used to resume (missing, corrupt or mismatched)."""


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS (process-wide).

    CPU training allocates activation buffers larger than glibc's mmap threshold cap (32 MB;
    at batch 256 / 84x84 a single conv output is 55 MB). glibc serves those with fresh
    ``mmap``s and unmaps them on free, so every update page-faults (and zeroes) hundreds of MB
    again: measured 3x slower updates at batch 256 on 2 cores. This sets ``M_MMAP_MAX = 0``
    (all allocations from the heap) and a 2 GB ``M_TRIM_THRESHOLD`` (freed heap is kept), the
    same as the environment variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``.
    Call it once at the start of a learner process; returns False where it is unavailable
    (not glibc). Peak memory use is unchanged; memory is just not handed back between updates.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


# ------------------------------------------------------------------- actor-side helpers
def exploration_std(config: DrQV2Config, iteration: int) -> float:
    """Exploration std of the checkpoint's schedule at main-loop iteration ``iteration``.

    The same schedule drives the learner's target/actor-loss sampling and the acting noise.
    """
    return float(schedule(config.stddev_schedule, int(iteration)))


def explore_action(
    policy: DrQV2Policy,
    batch: Mapping[str, Any],
    iteration: int,
    *,
    generator: torch.Generator | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """Exploration action (B, A): ``TruncatedNormal(mu, std(iteration))``, noise unclipped
    by default as in RoboBase ``DrQV2._act`` (``dist.sample()``), clamped to +-(1 - 1e-6)."""
    return policy.select_action(batch, step=int(iteration), explore=True, clip=clip,
                                generator=generator)


def _actor_keys(policy: nn.Module) -> list[str]:
    return [k for k in policy.state_dict() if k.startswith(("encoder.", "actor."))]


def actor_state_dict(policy: DrQV2Policy) -> dict[str, torch.Tensor]:
    """What ``select_action`` needs: ``encoder.*`` and ``actor.*`` (CPU float32 copies)."""
    sd = policy.state_dict()
    return {k: sd[k].detach().to("cpu", torch.float32).contiguous().clone()
            for k in _actor_keys(policy)}


def actor_state_bytes(policy: DrQV2Policy, metadata: Mapping[str, Any] | None = None) -> bytes:
    """safetensors bytes of :func:`actor_state_dict` (+ string metadata)."""
    from safetensors.torch import save

    meta = {"format": "pt", "type": "drqv2-actor"}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    return save(actor_state_dict(policy), metadata=meta)


def load_actor_bytes(policy: DrQV2Policy, data: bytes) -> dict[str, str]:
    """Load :func:`actor_state_bytes` output into ``policy`` (encoder + actor), strictly.

    Checks names, shapes and finiteness before touching the policy (nothing is loaded when
    anything is wrong: :class:`CheckpointError`). Returns the metadata.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise CheckpointError("actor weights: empty or not bytes")
    data = bytes(data)
    try:
        tensors = load(data)
        (n,) = struct.unpack("<Q", data[:8])
        meta = dict(json.loads(data[8 : 8 + n]).get("__metadata__") or {})
    except (SafetensorError, ValueError, RuntimeError, OSError, struct.error) as exc:
        raise CheckpointError(f"actor weights: unreadable safetensors bytes ({exc})") from None
    full = policy.state_dict()
    expected = {k: full[k] for k in _actor_keys(policy)}
    check_state_dict(expected, tensors, "actor weights")
    with torch.no_grad():
        for k, v in tensors.items():
            full[k].copy_(v.to(full[k].device, full[k].dtype))
    return meta


# ------------------------------------------------------------------------- the learner
@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop parameter gradients of ``module`` (inputs still get gradients).

    The actor loss only steps the actor; RoboBase lets the critic accumulate (then discard)
    gradients there, which changes nothing but costs a backward through the critic weights.
    """
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


class DrQV2Learner:
    """Owns the optimisers, the RNGs and the step counter of a DrQ-v2 fine-tuning run.

    Args:
        policy: the :class:`DrQV2Policy` to train in place (encoder, actor, critic and
            ``critic_target``); moved to ``device``.
        config: hyper-parameters (lrs, weight decay, tau, std schedule/clip, augmentation).
            Default: ``policy.config``. An override must describe the same network; it
            becomes ``policy.config``.
        device: torch device of the update.
        bc_weight: weight of RoboBase's BC term on demo/intervention samples (0 = off).
        seed: seeds the learner's numpy ``rng`` (for buffer sampling) and torch generator
            (augmentation shifts and policy noise).
        update_every_steps: main-loop iterations the counter advances per update (RoboBase
            ``update_every_steps``: one update per 2 env steps with one env).
        actor_grad_clip / critic_grad_clip: RoboBase's optional grad-norm clips (None = off,
            RoboBase's default).
    """

    def __init__(
        self,
        policy: DrQV2Policy,
        config: DrQV2Config | None = None,
        *,
        device: str | torch.device = "cpu",
        bc_weight: float = 0.0,
        seed: int = 0,
        update_every_steps: int = 2,
        actor_grad_clip: float | None = None,
        critic_grad_clip: float | None = None,
    ) -> None:
        if not isinstance(policy, DrQV2Policy):
            raise TypeError(f"policy must be a DrQV2Policy, got {type(policy).__name__}")
        if config is not None:
            if not isinstance(config, DrQV2Config):
                raise TypeError(f"config must be a DrQV2Config, got {type(config).__name__}")
            diff = _config_diff(policy.config, config, ignore=_CONFIG_HPARAMS)
            if diff:
                raise ConfigError(f"learner config describes another network than the "
                                  f"policy: {diff}")
            policy.config = config
        if int(update_every_steps) < 1:
            raise ValueError(f"update_every_steps must be >= 1, got {update_every_steps}")
        if not np.isfinite(bc_weight) or bc_weight < 0:
            raise ValueError(f"bc_weight must be finite and >= 0, got {bc_weight}")
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        cfg = self.policy.config
        self.bc_weight = float(bc_weight)
        self.update_every_steps = int(update_every_steps)
        self.actor_grad_clip = actor_grad_clip
        self.critic_grad_clip = critic_grad_clip
        self.seed = int(seed)

        params = self.policy.get_optim_params()
        wd = cfg.weight_decay
        self.encoder_opt = torch.optim.AdamW(params["encoder"], lr=cfg.encoder_lr,
                                             weight_decay=wd)
        self.critic_opt = torch.optim.AdamW(params["critic"], lr=cfg.critic_lr, weight_decay=wd)
        self.actor_opt = torch.optim.AdamW(params["actor"], lr=cfg.actor_lr, weight_decay=wd)
        # The view fusion (flatten) has no parameters: no optimiser, as in RoboBase.
        self.aug: nn.Module | None = RandomShiftsAug(cfg.aug_pad) if cfg.use_augmentation \
            else None

        self.rng = np.random.default_rng(self.seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self.iteration = int(cfg.main_loop_iterations)
        self.start_iteration = self.iteration
        self.num_updates = 0
        self.global_env_episode = int(cfg.global_env_episode)
        self.pretrain_step = int(cfg.pretrain_step)

    # ------------------------------------------------------------------ counters
    @property
    def config(self) -> DrQV2Config:
        return self.policy.config

    def std(self, iteration: int | None = None) -> float:
        """Scheduled std at ``iteration`` (default: the current one)."""
        return exploration_std(self.config, self.iteration if iteration is None else iteration)

    def exploration_std(self) -> float:
        """Std the actor should explore with now (same schedule, same counter)."""
        return self.std()

    def set_iteration(self, iteration: int) -> None:
        """Synchronise the main-loop counter with an external env-step count (monotone)."""
        iteration = int(iteration)
        if iteration < self.iteration:
            raise ValueError(f"iteration may not go back: {iteration} < {self.iteration}")
        self.iteration = iteration

    # ------------------------------------------------------------------ the update
    def _to_tensors(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        missing = [k for k in _BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing} (has {sorted(batch)})")
        cfg = self.config
        dev = self.device

        def t(x: Any) -> torch.Tensor:
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
            return x.to(dev, non_blocking=True)

        out = {k: t(batch[k]) for k in _BATCH_KEYS}
        b = out["rgb"].shape[0]
        img = (b, cfg.num_views, cfg.in_channels, cfg.image_height, cfg.image_width)
        for k in ("rgb", "next_rgb"):
            if tuple(out[k].shape) != img:
                raise ValueError(f"batch[{k!r}] must be {img}, got {tuple(out[k].shape)}")
            if out[k].dtype != torch.uint8:
                raise ValueError(f"batch[{k!r}] must be uint8 frames, got {out[k].dtype}")
        for k, n in (("low_dim", cfg.low_dim_size), ("next_low_dim", cfg.low_dim_size),
                     ("action", cfg.action_dim * cfg.action_sequence)):
            out[k] = out[k].to(torch.float32).reshape(b, -1)
            if out[k].shape[1] != n:
                raise ValueError(f"batch[{k!r}] must be ({b}, {n}), got {tuple(out[k].shape)}")
        for k in ("reward", "discount"):
            out[k] = out[k].to(torch.float32).reshape(-1, 1)
            if out[k].shape[0] != b:
                raise ValueError(f"batch[{k!r}] must have {b} entries, got {out[k].shape[0]}")
        mask = torch.zeros(b, dtype=torch.bool, device=dev)
        for k in ("is_demo", "is_intervention"):
            if k in batch:
                mask |= t(batch[k]).reshape(-1).to(torch.bool)
        out["bc_mask"] = mask
        if cfg.time_obs_size > 0:
            for k in ("time_obs", "next_time_obs"):
                if k not in batch:
                    raise KeyError(f"config has time_obs_size {cfg.time_obs_size}: batch "
                                   f"needs {k!r}")
                out[k] = t(batch[k]).to(torch.float32).reshape(b, -1)
        return out

    def augment(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, V, C, H, W) uint8 -> float 0..255, random-shifted once per image (if enabled)."""
        b, v, c, h, w = rgb.shape
        x = rgb.to(torch.float32).reshape(b * v, c, h, w)
        if self.aug is not None:
            x = self.aug(x, generator=self.generator)
        return x.reshape(b, v, c, h, w)

    def target_q(
        self,
        reward: torch.Tensor,
        discount: torch.Tensor,
        next_low_dim: torch.Tensor | None,
        next_fused: torch.Tensor,
        std: float,
        next_time_obs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """TD target (B, 1): ``r_n + discount_n * min_i Q'_i(s', a')``, ``a'`` clipped noise."""
        p = self.policy
        with torch.no_grad():
            dist = p.actor_dist(next_low_dim, next_fused, std)
            next_action = dist.sample(clip=self.config.stddev_clip, generator=self.generator)
            target_qs = p.critic_target(next_low_dim, next_fused, next_action, next_time_obs)
            min_q = target_qs.min(-1, keepdim=True)[0]
            return reward + discount * min_q

    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One DrQ-v2 update on ``batch`` (numpy or torch, layout of ``ReplayBuffer.sample``).

        Returns float metrics. The std schedule is read at :attr:`iteration`, which then
        advances by ``update_every_steps``. Raises ``FloatingPointError`` when a loss is not
        finite: a bad critic loss before any step (nothing changed), a bad actor loss after
        the critic/encoder steps but before the actor step.
        """
        cfg = self.config
        p = self.policy
        b = self._to_tensors(batch)
        step = self.iteration
        std = self.std(step)
        low, next_low = (b["low_dim"], b["next_low_dim"]) if cfg.low_dim_size > 0 else (None,
                                                                                         None)
        time_obs, next_time_obs = b.get("time_obs"), b.get("next_time_obs")

        # 1-2. augmentation (once per image) and encoding
        rgb = self.augment(b["rgb"])
        next_rgb = self.augment(b["next_rgb"])
        fused = p.encode(rgb)
        with torch.no_grad():
            next_fused = p.encode(next_rgb)

        # 3-4. critic + encoder
        target = self.target_q(b["reward"], b["discount"], next_low, next_fused, std,
                               next_time_obs)
        qs = p.critic(low, fused, b["action"], time_obs)
        critic_loss = F.mse_loss(qs, target.expand_as(qs))
        if not torch.isfinite(critic_loss):
            raise FloatingPointError(f"critic loss is {critic_loss.item()} at update "
                                     f"{self.num_updates}: weights left unchanged")
        self.encoder_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        if self.critic_grad_clip:
            nn.utils.clip_grad_norm_(p.critic.parameters(), self.critic_grad_clip)
        self.critic_opt.step()
        if self.critic_grad_clip:
            nn.utils.clip_grad_norm_(p.encoder.parameters(), self.critic_grad_clip)
        self.encoder_opt.step()

        # 5. actor on detached features
        feats = fused.detach()
        dist = p.actor_dist(low, feats, std)
        action = dist.sample(clip=cfg.stddev_clip, generator=self.generator)
        with _frozen(p.critic):
            q_pi = p.critic(low, feats, action, time_obs)
        actor_q_loss = -q_pi.min(-1, keepdim=True)[0].mean()
        bc_loss, n_bc = self.bc_loss(dist.mean, b["action"], b["bc_mask"])
        actor_loss = actor_q_loss + bc_loss if n_bc else actor_q_loss
        if not torch.isfinite(actor_loss):
            raise FloatingPointError(f"actor loss is {actor_loss.item()} at update "
                                     f"{self.num_updates}")
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        if self.actor_grad_clip:
            nn.utils.clip_grad_norm_(p.actor.parameters(), self.actor_grad_clip)
        self.actor_opt.step()

        # 6. target critic
        p.soft_update_target(cfg.critic_target_tau)

        self.num_updates += 1
        self.iteration = step + self.update_every_steps
        metrics = {
            "critic_loss": critic_loss.item(),
            "critic_target_q": target.mean().item(),
            "actor_loss": actor_loss.item(),
            "actor_q": -actor_q_loss.item(),
            "mean_act": dist.mean.mean().item(),
            "batch_reward": b["reward"].mean().item(),
            "std": std,
            "iteration": float(step),
            "num_updates": float(self.num_updates),
            "ratio_bc_samples": float(b["bc_mask"].float().mean().item()),
        }
        for i in range(qs.shape[1]):
            metrics[f"critic_q{i + 1}"] = qs[:, i].mean().item()
        if n_bc:
            metrics["actor_bc_loss"] = float(bc_loss.item())
        return metrics

    def bc_loss(self, mu: torch.Tensor, action: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, int]:
        """RoboBase ``get_bc_loss``: ``w * sum_{i in mask, j} (mu_ij - a_ij)**2 / |mask|``.

        (Squared error summed over action dims, averaged over the masked samples.) Returns
        (loss, number of masked samples); loss is 0 when off or no sample is masked.
        """
        n = int(mask.sum().item()) if self.bc_weight > 0 else 0
        if n == 0:
            return torch.zeros((), device=mu.device), 0
        se = F.mse_loss(mu.reshape(mu.shape[0], -1), action.reshape(mu.shape[0], -1),
                        reduction="none") * mask.to(mu.dtype).unsqueeze(1)
        return self.bc_weight * se.sum() / n, n

    # ------------------------------------------------------------------ actor weights
    def actor_state_bytes(self) -> bytes:
        """Encoder + actor weights as safetensors bytes; metadata: ``main_loop_iterations``,
        ``num_updates`` and the exploration ``std`` now (strings)."""
        return actor_state_bytes(self.policy, {
            "main_loop_iterations": self.iteration, "num_updates": self.num_updates,
            "std": repr(self.exploration_std())})

    # ------------------------------------------------------------------ checkpoints
    def counters_config(self) -> DrQV2Config:
        """The policy config with the counters of now (what export writes)."""
        return dataclasses.replace(
            self.config, main_loop_iterations=self.iteration,
            global_env_episode=self.global_env_episode, pretrain_step=self.pretrain_step)

    def export_checkpoint(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (LeRobot style, target critic
        included) with ``main_loop_iterations`` = :attr:`iteration`."""
        self.policy.config = self.counters_config()
        return self.policy.save_pretrained(directory)

    def _options(self) -> dict[str, Any]:
        return {
            "bc_weight": self.bc_weight,
            "update_every_steps": self.update_every_steps,
            "actor_grad_clip": self.actor_grad_clip,
            "critic_grad_clip": self.critic_grad_clip,
        }

    def state_dict(self) -> dict[str, Any]:
        """Full learner state (weights incl. target critic, optimisers, counters, RNGs)."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": self.config.to_json(),
            "options": self._options(),
            "model": self.policy.flat_state_dict(),
            "optim": {
                "encoder": self.encoder_opt.state_dict(),
                "critic": self.critic_opt.state_dict(),
                "actor": self.actor_opt.state_dict(),
            },
            "counters": {
                "iteration": self.iteration,
                "start_iteration": self.start_iteration,
                "num_updates": self.num_updates,
                "global_env_episode": self.global_env_episode,
                "pretrain_step": self.pretrain_step,
                "seed": self.seed,
            },
            "rng": {
                "torch": self.generator.get_state(),
                "numpy": self.rng.bit_generator.state,
            },
        }

    def save_state(self, path: str | os.PathLike) -> Path:
        """Atomically write the full learner state to ``path`` (temp file, fsync, rename).

        Layout: ``DRQV2LRN`` + sha256 of the payload + a ``torch.save`` payload that loads
        with ``weights_only=True``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        payload = buf.getvalue()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        with contextlib.suppress(OSError):
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return path

    @staticmethod
    def read_state(path: str | os.PathLike) -> dict[str, Any]:
        """Read and verify a state file (magic, checksum, format); raises LearnerStateError."""
        path = Path(path)
        if not path.is_file():
            raise LearnerStateError(f"learner state {path}: no such file (refusing to start "
                                    "from scratch on a resume)")
        data = path.read_bytes()
        head = len(_MAGIC) + 32
        if len(data) < head or data[: len(_MAGIC)] != _MAGIC:
            raise LearnerStateError(f"learner state {path}: not a drqv2_ros learner state "
                                    "(bad magic)")
        payload = data[head:]
        if hashlib.sha256(payload).digest() != data[len(_MAGIC):head]:
            raise LearnerStateError(f"learner state {path}: checksum mismatch (truncated or "
                                    "corrupt file)")
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as exc:  # any unpickling failure means a corrupt file
            raise LearnerStateError(f"learner state {path}: unreadable ({exc})") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise LearnerStateError(f"learner state {path}: wrong format tag")
        if state.get("version") != STATE_VERSION:
            raise LearnerStateError(f"learner state {path}: version {state.get('version')} "
                                    f"!= supported {STATE_VERSION}")
        return state

    def load_state(self, path: str | os.PathLike) -> None:
        """Resume from :meth:`save_state` output. Everything is checked before anything is
        changed; a missing, corrupt or mismatched file raises :class:`LearnerStateError`
        and leaves the learner as it was (never a silent re-initialisation)."""
        state = self.read_state(path)
        try:
            self._load_checked(state, str(path))
        except LearnerStateError:
            raise
        except (KeyError, TypeError, ValueError, ConfigError, CheckpointError) as exc:
            raise LearnerStateError(f"learner state {path}: {exc}") from None

    def _load_checked(self, state: dict[str, Any], what: str) -> None:
        saved_cfg = DrQV2Config.from_json(state["config"])
        diff = _config_diff(saved_cfg, self.config, ignore=_CONFIG_VOLATILE)
        if diff:
            raise LearnerStateError(f"learner state {what}: saved with another config: {diff}")
        opts = state["options"]
        odiff = [f"{k}: saved {opts.get(k)!r} != now {v!r}"
                 for k, v in self._options().items() if opts.get(k) != v]
        if odiff:
            raise LearnerStateError(f"learner state {what}: saved with other learner "
                                    f"options: {odiff}")
        model = state["model"]
        check_state_dict(self.policy.state_dict(), model, f"learner state {what}: model")
        optims = {"encoder": self.encoder_opt, "critic": self.critic_opt,
                  "actor": self.actor_opt}
        for name, opt in optims.items():
            _check_optim_state(opt, state["optim"][name], f"learner state {what}: {name} optim")
        counters = state["counters"]
        rng = state["rng"]
        torch_rng = rng["torch"]
        if not isinstance(torch_rng, torch.Tensor) or torch_rng.dtype != torch.uint8:
            raise LearnerStateError(f"learner state {what}: bad torch RNG state")
        np_rng = np.random.default_rng()
        np_rng.bit_generator.state = rng["numpy"]
        probe = torch.Generator(device=self.device)
        probe.set_state(torch_rng)

        # All checks passed: apply.
        self.policy.load_state_dict(model, strict=True)
        for name, opt in optims.items():
            opt.load_state_dict(state["optim"][name])
        self.policy.config = dataclasses.replace(
            self.config, main_loop_iterations=int(counters["iteration"]),
            global_env_episode=int(counters["global_env_episode"]),
            pretrain_step=int(counters["pretrain_step"]))
        self.iteration = int(counters["iteration"])
        self.start_iteration = int(counters["start_iteration"])
        self.num_updates = int(counters["num_updates"])
        self.global_env_episode = int(counters["global_env_episode"])
        self.pretrain_step = int(counters["pretrain_step"])
        self.seed = int(counters["seed"])
        self.generator.set_state(torch_rng)
        self.rng = np_rng

    @classmethod
    def resume(cls, policy: DrQV2Policy, path: str | os.PathLike, **kwargs: Any
               ) -> DrQV2Learner:
        """Build a learner for ``policy`` and load ``path`` into it (raises if it cannot)."""
        learner = cls(policy, **kwargs)
        learner.load_state(path)
        return learner


def _config_diff(a: DrQV2Config, b: DrQV2Config, ignore: set[str]) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} != {db[k]!r}" for k in da if k not in ignore and da[k] != db[k]]


def _check_optim_state(opt: torch.optim.Optimizer, sd: Any, what: str) -> None:
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise LearnerStateError(f"{what}: not an optimiser state dict")
    groups = opt.param_groups
    if len(sd["param_groups"]) != len(groups):
        raise LearnerStateError(f"{what}: {len(sd['param_groups'])} param groups, expected "
                                f"{len(groups)}")
    params = []
    for g_saved, g in zip(sd["param_groups"], groups):
        if len(g_saved["params"]) != len(g["params"]):
            raise LearnerStateError(f"{what}: group has {len(g_saved['params'])} params, "
                                    f"expected {len(g['params'])}")
        params += list(zip(g_saved["params"], g["params"]))
    for pid, param in params:
        st = sd["state"].get(pid)
        if st is None:
            continue
        for k in ("exp_avg", "exp_avg_sq"):
            v = st.get(k)
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(param.shape):
                raise LearnerStateError(f"{what}: {k} of param {pid} has shape "
                                        f"{getattr(v, 'shape', None)}, expected "
                                        f"{tuple(param.shape)}")
            if not bool(torch.isfinite(v).all()):
                raise LearnerStateError(f"{what}: {k} of param {pid} has NaN/Inf")
