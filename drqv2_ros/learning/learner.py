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

Devices and speed (``learning/device.py``): the update runs on any torch device (``auto``
picks CUDA when there is one). The default math is IEEE float32 everywhere (TF32 off on
CUDA); ``precision="tf32" | "bf16"`` and ``compile=True`` are opt-in and tested for their
deviation. The update never waits for the GPU except for the two loss finiteness checks
that guard the optimiser steps: its metrics are copied to the host only when read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drqv2_ros.acting.weights import actor_state_bytes
from drqv2_ros.learning.cuda_graph import GraphedUpdate
from drqv2_ros.learning.device import configure_precision, resolve_device
from drqv2_ros.learning.learner_state import (
    STATE_FORMAT,
    STATE_VERSION,
    LearnerStateError,
    read_state_file,
    write_state_file,
)
from drqv2_ros.policy.configuration_drqv2 import ConfigError, DrQV2Config
from drqv2_ros.policy.modeling_drqv2 import (
    CheckpointError,
    DrQV2Policy,
    RandomShiftsAug,
    TruncatedNormal,
    check_state_dict,
)
from drqv2_ros.policy.training_counters import TrainingCounters

__all__ = [
    "DrQV2Learner",
    "LearnerStateError",
    "STATE_FORMAT",
    "STATE_VERSION",
    "UpdateMetrics",
    "exploration_std",
    "explore_action",
]

_CONFIG_VOLATILE = {"source", "defaulted"}
# Fields a learner config override may change (hyper-parameters, counters, provenance);
# every other field describes the network and must equal the policy's.
_CONFIG_HPARAMS = {
    "stddev_schedule", "stddev_clip", "critic_target_tau", "discount", "nstep", "actor_lr",
    "critic_lr", "encoder_lr", "view_fusion_lr", "weight_decay", "use_augmentation", "aug_pad",
    "batch_size",
} | _CONFIG_VOLATILE | {"num_train_envs", "action_repeat", "action_scale_m"}

_BATCH_KEYS = ("rgb", "low_dim", "action", "reward", "discount", "next_rgb", "next_low_dim")


# ------------------------------------------------------------------- actor-side helpers
def exploration_std(config: DrQV2Config, iteration: int) -> float:
    """Exploration std of the checkpoint's schedule at main-loop iteration ``iteration``.

    The same schedule drives the learner's target/actor-loss sampling and the acting noise.
    """
    return config.std_at(int(iteration))


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


# ------------------------------------------------------------------------- the learner
class UpdateMetrics(Mapping[str, float]):
    """The metrics of one update, read as floats; device values are copied to the host on
    first read, all at once (one transfer, and no wait for the GPU before that)."""

    def __init__(self, values: dict[str, float | torch.Tensor]) -> None:
        self._values = values
        self._host: dict[str, float] | None = None

    def _materialise(self) -> dict[str, float]:
        if self._host is None:
            keys = [k for k, v in self._values.items() if isinstance(v, torch.Tensor)]
            host = {k: float(v) for k, v in self._values.items() if k not in keys}
            if keys:
                stacked = torch.stack([self._values[k].detach().float().reshape(())
                                       for k in keys])
                host.update(zip(keys, stacked.tolist()))
            self._host = {k: host[k] for k in self._values}
        return self._host

    def __getitem__(self, key: str) -> float:
        return self._materialise()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"UpdateMetrics({self._materialise()!r})"


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
        device: torch device of the update: ``"auto"`` (CUDA when available), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`.
        precision: ``"fp32"`` (default, RoboBase-exact IEEE float32), ``"tf32"`` (CUDA
            TF32 matrix units) or ``"bf16"`` (bfloat16 autocast forward passes); see
            ``learning/device.py``.
        compile: ``torch.compile`` the encoder, actor and critics in place (opt-in; the
            state-dict names do not change).
        cuda_graphs: on a CUDA device, replay the update as one CUDA graph
            (``learning/cuda_graph.py``: the same float32 kernels without per-kernel launch
            cost; the optimisers then keep their step counters on the device). Ignored on
            the CPU.
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
        precision: str = "fp32",
        compile: bool = False,
        cuda_graphs: bool = True,
        bc_weight: float = 0.0,
        seed: int = 0,
        update_every_steps: int = 2,
        actor_grad_clip: float | None = None,
        critic_grad_clip: float | None = None,
        freeze_encoder: bool = False,
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
        self.device = resolve_device(device)
        self.precision = precision
        self._autocast = configure_precision(self.device, precision)
        self.compiled = bool(compile)
        self.policy = policy.to(self.device)
        if self.compiled:
            for module in (self.policy.encoder, self.policy.actor, self.policy.critic,
                           self.policy.critic_target):
                module.compile()  # in place: parameter names stay RoboBase's
        cfg = self.policy.config
        self.bc_weight = float(bc_weight)
        self.update_every_steps = int(update_every_steps)
        self.actor_grad_clip = actor_grad_clip
        self.critic_grad_clip = critic_grad_clip
        self.seed = int(seed)
        # HIL-SERL's practice on real robots: keep the (sim-)trained encoder fixed and train
        # only the bottlenecks and heads. Off (default): RoboBase's update, unchanged.
        self.freeze_encoder = bool(freeze_encoder)
        self.policy.encoder.requires_grad_(not self.freeze_encoder)
        if self.freeze_encoder:  # forward only from now on: its ReLUs may work in place
            for m in self.policy.encoder.modules():
                if isinstance(m, nn.ReLU):
                    m.inplace = True

        params = self.policy.get_optim_params()
        wd = cfg.weight_decay
        graphs = bool(cuda_graphs) and self.device.type == "cuda"
        opt = dict(weight_decay=wd, capturable=True) if graphs else dict(weight_decay=wd)
        self.encoder_opt = torch.optim.AdamW(params["encoder"], lr=cfg.encoder_lr, **opt)
        self.critic_opt = torch.optim.AdamW(params["critic"], lr=cfg.critic_lr, **opt)
        self.actor_opt = torch.optim.AdamW(params["actor"], lr=cfg.actor_lr, **opt)
        self._graphs = GraphedUpdate(self) if graphs else None
        self._bc_opt: torch.optim.Optimizer | None = None  # bc_update's, made on first use
        # The view fusion (flatten) has no parameters: no optimiser, as in RoboBase.
        self.aug: nn.Module | None = RandomShiftsAug(cfg.aug_pad) if cfg.use_augmentation \
            else None

        self.rng = np.random.default_rng(self.seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        counters = policy.training_counters
        self.iteration = int(counters.main_loop_iterations)
        self.start_iteration = self.iteration
        self.num_updates = 0
        self.global_env_episode = int(counters.global_env_episode)
        self.pretrain_step = int(counters.pretrain_step)
        self.rng_note = ""  # set by a resume across devices (the torch stream restarts)

    # ------------------------------------------------------------------ counters
    @property
    def graphed(self) -> bool:
        """Whether updates replay as one CUDA graph (``cuda_graph.GraphedUpdate``)."""
        return self._graphs is not None

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
    def _to_tensors(self, batch: Mapping[str, Any]) -> dict[str, Any]:
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
        host_mask: np.ndarray | None = np.zeros(b, bool)
        for k in ("is_demo", "is_intervention"):
            if k in batch:
                v = batch[k]
                mask |= t(v).reshape(-1).to(torch.bool)
                if isinstance(v, torch.Tensor) and v.device.type != "cpu":
                    host_mask = None  # counted on the device when needed
                elif host_mask is not None:
                    host_mask = host_mask | np.asarray(v).reshape(-1).astype(bool)
        out["bc_mask"] = mask
        # BC sample count known on the host when the flags came from there (no GPU wait).
        out["bc_count"] = None if host_mask is None else int(host_mask.sum())
        if cfg.time_obs_size > 0:
            for k in ("time_obs", "next_time_obs"):
                if k not in batch:
                    raise KeyError(f"config has time_obs_size {cfg.time_obs_size}: batch "
                                   f"needs {k!r}")
                out[k] = t(batch[k]).to(torch.float32).reshape(b, -1)
        return out

    def augment(self, rgb: torch.Tensor, shifts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V, C, H, W) uint8 -> float 0..255, random-shifted once per image (if enabled);
        ``shifts`` (B*V, 1, 1, 2) integers as drawn by :meth:`draw` (else drawn here)."""
        b, v, c, h, w = rgb.shape
        x = rgb.to(torch.float32).reshape(b * v, c, h, w)
        if self.aug is not None:
            x = self.aug(x, shifts=shifts, generator=self.generator)
        return x.reshape(b, v, c, h, w)

    def draw(self, batch_size: int) -> dict[str, torch.Tensor | None]:
        """The random numbers of one update, drawn from :attr:`generator` in the order
        RoboBase consumes them: shifts of ``rgb``, shifts of ``next_rgb``, target-action
        noise, actor-action noise (so the update equals RoboBase's draw for draw)."""
        cfg, dev, g = self.config, self.device, self.generator
        out: dict[str, torch.Tensor | None] = {"shift": None, "next_shift": None}
        if self.aug is not None and cfg.aug_pad > 0:
            n = batch_size * cfg.num_views
            for k in ("shift", "next_shift"):
                out[k] = torch.randint(0, 2 * cfg.aug_pad + 1, (n, 1, 1, 2), device=dev,
                                       generator=g)
        shape = (batch_size, cfg.action_dim * cfg.action_sequence)
        out["target_noise"] = torch.randn(shape, dtype=torch.float32, device=dev, generator=g)
        out["actor_noise"] = torch.randn(shape, dtype=torch.float32, device=dev, generator=g)
        return out

    def target_q(
        self,
        reward: torch.Tensor,
        discount: torch.Tensor,
        next_low_dim: torch.Tensor | None,
        next_fused: torch.Tensor,
        std: float | torch.Tensor,
        next_time_obs: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """TD target (B, 1): ``r_n + discount_n * min_i Q'_i(s', a')``, ``a'`` clipped noise."""
        p = self.policy
        with torch.no_grad():
            dist = self.actor_dist(next_low_dim, next_fused, std)
            next_action = dist.sample(clip=self.config.stddev_clip, generator=self.generator,
                                      noise=noise)
            with self._autocast():
                target_qs = p.critic_target(next_low_dim, next_fused, next_action,
                                            next_time_obs).float()
            min_q = target_qs.min(-1, keepdim=True)[0]
            return reward + discount * min_q

    def actor_dist(self, low_dim: torch.Tensor | None, fused: torch.Tensor,
                   std: float | torch.Tensor) -> TruncatedNormal:
        """``policy.actor_dist`` in the learner's precision (the distribution in float32)."""
        with self._autocast():
            return self.policy.actor_dist(low_dim, fused, std)

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """``policy.encode`` in the learner's precision."""
        with self._autocast():
            return self.policy.encode(rgb)

    def update(self, batch: Mapping[str, Any],
               after_launch: Callable[[], None] | None = None, *,
               critic_only: bool = False) -> UpdateMetrics:
        """One DrQ-v2 update on ``batch`` (numpy or torch, layout of ``ReplayBuffer.sample``).

        Returns the metrics (floats; on the eager path read from the device only when
        accessed). The batch may hold numpy arrays or tensors on any device. The std schedule
        is read at :attr:`iteration`, which then advances by ``update_every_steps``. Raises
        ``FloatingPointError`` when a loss is not finite: a bad critic loss before any step
        (nothing changed), a bad actor loss after the critic/encoder steps but before the
        actor step (the CUDA-graph path restores exactly that state).

        ``after_launch`` runs once the update's device work is queued and before the host
        waits for it (e.g. to prepare the next batch while the GPU computes this one).

        ``critic_only`` (opt-in, not RoboBase's update): steps 1-4 and 6 with the encoder
        and the actor held fixed: the critic learns by TD the value of the actor as it is
        (a critic warm-up before actor updates, or pretraining a critic for a cloned actor).
        """
        b = self._to_tensors(batch)
        step = self.iteration
        std = self.std(step)
        rnd = self.draw(b["rgb"].shape[0])
        if self._graphs is not None and self._graphs.usable(b) and not critic_only:
            values = self._graphs.run(b, rnd, std, after_launch)
        else:
            values = self.update_math(b, rnd, std, self.check_host, critic_only=critic_only)
            if after_launch is not None:
                after_launch()
        self.num_updates += 1
        self.iteration = step + self.update_every_steps
        values.update(std=std, iteration=float(step), num_updates=float(self.num_updates))
        return UpdateMetrics(values)

    def check_host(self, name: str, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):  # waits for the device: the guard of the next step
            what = ": weights left unchanged" if name == "critic" else ""
            raise FloatingPointError(f"{name} loss is {loss.item()} at update "
                                     f"{self.num_updates}{what}")

    def update_math(self, b: Mapping[str, Any], rnd: Mapping[str, torch.Tensor | None],
                    std: float | torch.Tensor,
                    check: Callable[[str, torch.Tensor], None], *,
                    critic_only: bool = False) -> dict[str, Any]:
        """The update itself, steps 1-6 of the module docstring, on tensors already on the
        device and the draws of :meth:`draw`. ``check(name, loss)`` runs before the critic
        and the actor steps (the eager path raises there; the CUDA graph records a flag).
        Returns the device metrics (no host wait). ``critic_only``: see :meth:`update`."""
        cfg = self.config
        p = self.policy

        # 1-2. augmentation (once per image) and encoding
        rgb = self.augment(b["rgb"], rnd["shift"])
        next_rgb = self.augment(b["next_rgb"], rnd["next_shift"])
        if critic_only:
            with torch.no_grad():
                fused, next_fused = self.encode(rgb), self.encode(next_rgb)
        elif self.freeze_encoder:  # no encoder gradients: both batches in one forward pass,
            # each view's images laid out channels-last (oneDNN / cuDNN's preferred layout:
            # ~1.8x faster convolutions on these CPUs, within ~2e-6 of the default layout)
            with torch.no_grad():
                n = rgb.shape[0]
                both = rgb.new_empty((2 * n, *rgb.shape[1:2], *rgb.shape[3:], rgb.shape[2]))
                both[:n].copy_(rgb.permute(0, 1, 3, 4, 2))
                both[n:].copy_(next_rgb.permute(0, 1, 3, 4, 2))
                fused, next_fused = self.encode(both.permute(0, 1, 4, 2, 3)).chunk(2)
        else:
            fused = self.encode(rgb)
            with torch.no_grad():
                next_fused = self.encode(next_rgb)

        # 3-4. critic + encoder
        critic_loss, qs, target = self.critic_loss(b, rnd, std, fused, next_fused)
        check("critic", critic_loss)
        self.encoder_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        if self.critic_grad_clip:
            nn.utils.clip_grad_norm_(p.critic.parameters(), self.critic_grad_clip)
        self.critic_opt.step()
        if critic_only:
            p.soft_update_target(cfg.critic_target_tau)
            return {"critic_loss": critic_loss.detach(), "critic_target_q": target.mean(),
                    "batch_reward": b["reward"].mean(),
                    **{f"critic_q{i + 1}": qs[:, i].mean() for i in range(qs.shape[1])}}
        if not self.freeze_encoder:
            if self.critic_grad_clip:
                nn.utils.clip_grad_norm_(p.encoder.parameters(), self.critic_grad_clip)
            self.encoder_opt.step()

        # 5. actor on detached features
        actor_loss, actor_q_loss, bc_loss, n_bc, dist = self.actor_loss(b, rnd, std,
                                                                        fused.detach())
        check("actor", actor_loss)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        if self.actor_grad_clip:
            nn.utils.clip_grad_norm_(p.actor.parameters(), self.actor_grad_clip)
        self.actor_opt.step()

        # 6. target critic
        p.soft_update_target(cfg.critic_target_tau)

        with torch.no_grad():
            values: dict[str, Any] = {
                "critic_loss": critic_loss.detach(),
                "critic_target_q": target.mean(),
                "actor_loss": actor_loss.detach(),
                "actor_q": -actor_q_loss.detach(),
                "mean_act": dist.mean.mean(),
                "batch_reward": b["reward"].mean(),
                "ratio_bc_samples": b["bc_mask"].float().mean(),
            }
            for i in range(qs.shape[1]):
                values[f"critic_q{i + 1}"] = qs[:, i].mean()
            if n_bc:
                values["actor_bc_loss"] = bc_loss.detach()
        return values

    def critic_loss(self, b: Mapping[str, Any], rnd: Mapping[str, torch.Tensor | None],
                    std: float | torch.Tensor, fused: torch.Tensor, next_fused: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 3-4's loss (facebookresearch/drqv2 ``update_critic``, RoboBase's mean over
        batch and critics): ``mean_i (Q_i(s, a) - y)**2`` with the TD target ``y`` of
        :meth:`target_q`. Returns (loss, qs (B, N), target (B, 1))."""
        cfg, p = self.config, self.policy
        low = b["low_dim"] if cfg.low_dim_size > 0 else None
        next_low = b["next_low_dim"] if cfg.low_dim_size > 0 else None
        target = self.target_q(b["reward"], b["discount"], next_low, next_fused, std,
                               b.get("next_time_obs"), noise=rnd["target_noise"])
        with self._autocast():
            qs = p.critic(low, fused, b["action"], b.get("time_obs")).float()
        return F.mse_loss(qs, target.expand_as(qs)), qs, target

    def actor_loss(self, b: Mapping[str, Any], rnd: Mapping[str, torch.Tensor | None],
                   std: float | torch.Tensor, feats: torch.Tensor):
        """Step 5's loss (facebookresearch/drqv2 ``update_actor``): ``-min_i Q_i(s, a)`` for
        ``a ~ pi(s)`` sampled with the scheduled std and ``stddev_clip`` on the DETACHED
        features ``feats``, the critics frozen, plus RoboBase's BC term where enabled.
        Returns (loss, q part, bc part, bc sample count, the actor's distribution)."""
        cfg, p = self.config, self.policy
        low = b["low_dim"] if cfg.low_dim_size > 0 else None
        dist = self.actor_dist(low, feats, std)
        action = dist.sample(clip=cfg.stddev_clip, noise=rnd["actor_noise"])
        with _frozen(p.critic), self._autocast():
            q_pi = p.critic(low, feats, action, b.get("time_obs")).float()
        actor_q_loss = -q_pi.min(-1, keepdim=True)[0].mean()
        bc_loss, n_bc = self.bc_loss(dist.mean, b["action"], b["bc_mask"], b["bc_count"])
        actor_loss = actor_q_loss + bc_loss if n_bc else actor_q_loss
        return actor_loss, actor_q_loss, bc_loss, n_bc, dist

    def bc_update(self, batch: Mapping[str, Any], lr: float) -> dict[str, float]:
        """One behaviour-cloning step (pretraining; not part of RoboBase's update): the
        actor's mean action on the augmented images regressed on the batch's actions, the
        squared error summed over action dimensions and averaged over the batch (RoboBase's
        ``get_bc_loss`` with weight 1 and every sample), its gradient into the actor and,
        unless the encoder is frozen, into the encoder. Its own AdamW (``lr``, the config's
        weight decay), so the update's optimiser moments stay untouched; the schedule's
        iteration does not move."""
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {lr}")
        cfg, p = self.config, self.policy
        if self._bc_opt is None:
            params = list(p.actor.parameters())
            if not self.freeze_encoder:
                params += list(p.encoder.parameters())
            self._bc_opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        for group in self._bc_opt.param_groups:
            group["lr"] = float(lr)
        b = self._to_tensors(batch)
        rnd = self.draw(b["rgb"].shape[0])
        rgb = self.augment(b["rgb"], rnd["shift"])
        if self.freeze_encoder:
            with torch.no_grad():
                fused = self.encode(rgb)
        else:
            fused = self.encode(rgb)
        low = b["low_dim"] if cfg.low_dim_size > 0 else None
        mu = self.actor_dist(low, fused, self.std()).mean
        loss = (mu.float() - b["action"]).square().sum(-1).mean()
        self.check_host("bc", loss)
        self._bc_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._bc_opt.step()
        return {"bc_loss": float(loss.detach())}

    def bc_loss(self, mu: torch.Tensor, action: torch.Tensor, mask: torch.Tensor,
                count: int | None = None) -> tuple[torch.Tensor, int]:
        """RoboBase ``get_bc_loss``: ``w * sum_{i in mask, j} (mu_ij - a_ij)**2 / |mask|``.

        (Squared error summed over action dims, averaged over the masked samples.) Returns
        (loss, number of masked samples); loss is 0 when off or no sample is masked.
        ``count``: the number of masked samples when the caller knows it on the host; when
        None it is counted on the device (no wait; the loss is then exactly 0 for an empty
        mask and the returned count is -1, "not known here").
        """
        if self.bc_weight <= 0 or count == 0:
            return torch.zeros((), device=mu.device), 0
        se = F.mse_loss(mu.reshape(mu.shape[0], -1), action.reshape(mu.shape[0], -1),
                        reduction="none") * mask.to(mu.dtype).unsqueeze(1)
        if count is None:
            return self.bc_weight * se.sum() / mask.sum().clamp_min(1).to(mu.dtype), -1
        return self.bc_weight * se.sum() / int(count), int(count)

    # ------------------------------------------------------------------ actor weights
    def actor_state_bytes(self) -> bytes:
        """Encoder + actor weights as safetensors bytes; metadata: ``main_loop_iterations``,
        ``num_updates`` and the exploration ``std`` now (strings)."""
        return actor_state_bytes(self.policy, {
            "main_loop_iterations": self.iteration, "num_updates": self.num_updates,
            "std": repr(self.exploration_std())})

    # ------------------------------------------------------------------ checkpoints
    def training_counters(self) -> TrainingCounters:
        """Where training stands now (what an exported checkpoint's counters.json holds)."""
        return TrainingCounters(self.iteration, self.pretrain_step, self.global_env_episode)

    def export_checkpoint(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (LeRobot style, target critic
        included) + ``counters.json`` with ``main_loop_iterations`` = :attr:`iteration`."""
        self.policy.training_counters = self.training_counters()
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
                "torch_device": self.generator.device.type,
                "numpy": self.rng.bit_generator.state,
            },
        }

    def save_state(self, path: str | os.PathLike) -> Path:
        """Atomically write the full learner state to ``path`` (temp file, fsync, rename).

        Layout: ``DRQV2LRN`` + sha256 of the payload + a ``torch.save`` payload that loads
        with ``weights_only=True``.
        """
        return write_state_file(path, self.state_dict())

    @staticmethod
    def read_state(path: str | os.PathLike) -> dict[str, Any]:
        """Read and verify a state file (``learning/learner_state.py``)."""
        return read_state_file(path)

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
        # A CPU generator's state cannot seed a CUDA generator (other algorithm, other state
        # size) nor the reverse: across devices the torch stream restarts from a seed derived
        # from (seed, num_updates); the numpy stream (buffer sampling) carries on exactly.
        rng_device = str(rng.get("torch_device", "cpu"))
        same_device = rng_device == self.generator.device.type
        if same_device:
            probe = torch.Generator(device=self.device)
            try:
                probe.set_state(torch_rng)
            except RuntimeError as exc:
                raise LearnerStateError(f"learner state {what}: bad torch RNG state "
                                        f"({exc})") from None
        np_rng = np.random.default_rng()
        np_rng.bit_generator.state = rng["numpy"]

        # All checks passed: apply.
        self.policy.load_state_dict(model, strict=True)
        capturable = self._graphs is not None
        for name, opt in optims.items():
            opt.load_state_dict(state["optim"][name])
            _set_capturable(opt, capturable)  # the saved groups carry the saver's setting
        if self._graphs is not None:
            self._graphs.invalidate()  # the optimiser tensors it captured were replaced
        self.iteration = int(counters["iteration"])
        self.start_iteration = int(counters["start_iteration"])
        self.num_updates = int(counters["num_updates"])
        self.global_env_episode = int(counters["global_env_episode"])
        self.pretrain_step = int(counters["pretrain_step"])
        self.seed = int(counters["seed"])
        self.policy.training_counters = self.training_counters()
        if same_device:
            self.generator.set_state(torch_rng)
            self.rng_note = ""
        else:
            reseed = (self.seed * 1_000_003 + self.num_updates) % 2**63
            self.generator.manual_seed(reseed)
            self.rng_note = (f"state saved on {rng_device}, resumed on "
                             f"{self.generator.device.type}: torch RNG reseeded with {reseed}")
        self.rng = np_rng

    @classmethod
    def resume(cls, policy: DrQV2Policy, path: str | os.PathLike, **kwargs: Any
               ) -> DrQV2Learner:
        """Build a learner for ``policy`` and load ``path`` into it (raises if it cannot)."""
        learner = cls(policy, **kwargs)
        learner.load_state(path)
        return learner


def _set_capturable(opt: torch.optim.Optimizer, capturable: bool) -> None:
    """Make a loaded optimiser run as this learner does: a state saved by a CUDA-graph
    learner (step counters on the GPU) resumes on the CPU and the reverse."""
    for group in opt.param_groups:
        group["capturable"] = capturable
        for param in group["params"]:
            st = opt.state.get(param)
            if st and isinstance(st.get("step"), torch.Tensor):
                dev = param.device if capturable else torch.device("cpu")
                st["step"] = st["step"].to(device=dev, dtype=torch.float32)


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
