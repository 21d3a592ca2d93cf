"""LeRobot's ``drqv2`` policy: drqv2_ros's DrQ-v2 networks behind LeRobot's
``PreTrainedPolicy`` interface, trained through LeRobot 0.4.4's learner helpers.

The modules are drqv2_ros's own (``encoder``, ``actor``, ``critic``, ``critic_target``, with
RoboBase's parameter names: a converted ``model.safetensors`` loads key for key), and the
update math is drqv2_ros's learner's (``DrQV2Learner.critic_loss`` / ``actor_loss`` /
``target_q``, RoboBase's ``update_critic`` / ``update_actor``), so nothing is computed twice
in two ways.

LeRobot's learner loop (``lerobot.rl.learner``) per iteration: ``forward(batch,
model="critic")`` -> critic optimiser step (its ``critic_ensemble``: the encoder and the
critics, as in DrQ-v2 where the encoder learns through the critic loss) ->
``forward(batch, model="actor")`` (on the critic call's features, detached, as RoboBase) ->
actor step -> ``forward(batch, model="temperature")`` (DrQ-v2 has no temperature: a zero
loss, so its step changes nothing) -> ``update_target_networks()`` (Polyak, and the
exploration schedule advances as RoboBase's does per update).

Batches: ``state`` / ``next_state`` dicts with ``observation.images.<camera>`` (B, T*C, H, W)
or (B, T, C, H, W) and ``observation.state`` (B, T*D) or (B, T, D); ``action`` (B, A);
``reward`` (B,); ``done`` (B,) float. Images: uint8 are RoboBase's 0..255; float images are
LeRobot's [0, 1] and are scaled back to 0..255 (rounded: lossless for frames that were
uint8). LeRobot's batch is 1-step: the TD target is ``r + discount * (1 - done) * min Q'``
(n = 1); for RoboBase's n-step targets, train with drqv2_ros's learner, whose replay buffer
computes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lerobot.policies.pretrained import PreTrainedPolicy
from torch import nn

from drqv2_ros.learning.learner import DrQV2Learner
from drqv2_ros.policy.modeling_drqv2 import DrQV2Policy as CorePolicy
from drqv2_ros.policy.training_counters import COUNTERS_NAME, TrainingCounters
from lerobot_policy_drqv2.configuration_drqv2 import DrQV2Config

IMAGE_PREFIX = "observation.images."
STATE = "observation.state"


class _Params:
    """A parameter group that is not a submodule (so the state dict keeps its names)."""

    def __init__(self, *modules: nn.Module):
        self._modules = modules

    def parameters(self):
        for m in self._modules:
            yield from m.parameters()

    def named_parameters(self):
        for m in self._modules:
            yield from m.named_parameters()


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    """RoboBase's pixel convention: uint8 as it is; LeRobot's float [0, 1] scaled, rounded."""
    if x.dtype == torch.uint8:
        return x
    if not torch.is_floating_point(x):
        raise ValueError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    return (x.detach() * 255.0).round().clamp(0, 255).to(torch.uint8)


class DrQV2Policy(PreTrainedPolicy):
    config_class = DrQV2Config
    name = "drqv2"

    def __init__(self, config: DrQV2Config, dataset_stats: Any = None, **kwargs: Any):
        super().__init__(config)
        net = CorePolicy(config.core_config())
        # the very modules of drqv2_ros's policy, registered under RoboBase's names
        self.encoder, self.actor = net.encoder, net.actor
        self.critic, self.critic_target = net.critic, net.critic_target
        object.__setattr__(self, "net", net)
        device = config.device or "cpu"
        object.__setattr__(self, "learner", DrQV2Learner(
            net, device=device, seed=config.update_seed, cuda_graphs=False))
        # LeRobot's learner builds a temperature optimiser over this; DrQ-v2 has none
        self.log_alpha = torch.zeros((), requires_grad=True)
        self._features: tuple | None = None   # the critic call's, for the actor call
        if not config.augment_in_policy:
            self.learner.aug = None
        self.eval()

    # -- LeRobot's learner helpers read these
    @property
    def critic_ensemble(self) -> _Params:
        """What the critic loss trains: the encoder and the critics (DrQ-v2)."""
        return _Params(self.encoder, self.critic)

    @property
    def temperature(self) -> float:
        return 0.0

    def get_optim_params(self) -> dict:
        return {"actor": list(self.actor.parameters()),
                "critic": list(self.critic_ensemble.parameters()),
                "temperature": self.log_alpha}

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        dev = next(self.parameters()).device
        self.learner.device = dev
        if self.learner.generator.device != dev:
            g = torch.Generator(device=dev)
            g.manual_seed(self.config.update_seed)
            self.learner.generator = g
        return out

    # -- acting
    def reset(self) -> None:
        """Frames are stacked upstream (the processor): no recurrent state."""

    def _obs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A LeRobot observation dict in the network's layout: uint8 images (B, T*C, H, W)
        per camera, the state (B, T*D)."""
        c = self.config
        out = {}
        for name in c.camera_names:
            key = IMAGE_PREFIX + name
            if key not in obs:
                raise ValueError(f"batch has no {key!r} (keys: {sorted(obs)})")
            x = obs[key]
            if x.dim() == 5:      # (B, T, C, H, W): stacked frames from delta indices
                x = x.flatten(1, 2)
            elif x.dim() == 3:
                x = x.unsqueeze(0)
            out[key] = as_uint8(x)
        if c.low_dim_size:
            s = obs[STATE]
            if s.dim() == 1:
                s = s.unsqueeze(0)
            out[STATE] = s.flatten(1).to(torch.float32)
        return out

    @torch.no_grad()
    def select_action(self, batch: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        """The actor's mean action (B, A) in [-1, 1] (``explore=True``: RoboBase's
        exploration noise at the checkpoint's schedule step)."""
        return self.net.select_action(self._obs(batch), **kwargs)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, torch.Tensor], **kwargs: Any
                             ) -> torch.Tensor:
        return self.net.predict_action_chunk(self._obs(batch), **kwargs)

    # -- training (LeRobot's learner interface)
    def _learner_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        c = self.config
        s, ns = self._obs(batch["state"]), self._obs(batch["next_state"])

        def views(o):
            v = [o[IMAGE_PREFIX + n] for n in c.camera_names]
            return v[0].unsqueeze(1) if len(v) == 1 else torch.stack(v, 1)

        b = views(s).shape[0]
        dev = self.learner.device
        zeros = torch.zeros(b, c.low_dim_size, device=dev)
        done = batch["done"].reshape(-1).to(torch.float32)
        out = {"rgb": views(s), "next_rgb": views(ns),
               "low_dim": s.get(STATE, zeros), "next_low_dim": ns.get(STATE, zeros),
               "action": batch["action"].reshape(b, -1),
               "reward": batch["reward"].reshape(-1).to(torch.float32),
               "discount": c.discount * (1.0 - done)}
        info = batch.get("complementary_info") or {}
        for k in ("is_intervention", "is_demo"):
            if k in info:
                out[k] = info[k]
        return self.learner._to_tensors(out)

    def forward(self, batch: dict[str, Any], model: str = "critic") -> dict[str, torch.Tensor]:
        """``{"loss_<model>": loss}`` for ``model`` in critic | actor | temperature."""
        lr = self.learner
        if model == "critic":
            b = self._learner_batch(batch)
            rnd = lr.draw(b["rgb"].shape[0])
            std = lr.std()
            rgb = lr.augment(b["rgb"], rnd["shift"])
            with torch.no_grad():
                next_fused = lr.encode(lr.augment(b["next_rgb"], rnd["next_shift"]))
            fused = lr.encode(rgb)
            loss, _qs, _target = lr.critic_loss(b, rnd, std, fused, next_fused)
            self._features = (batch.get("state"), b, rnd, std, fused.detach())
            return {"loss_critic": loss}
        if model == "actor":
            f = self._features
            if f is None or f[0] is not batch.get("state"):
                self.forward(batch, "critic")  # this batch's features (no critic step)
                f = self._features
            _state, b, rnd, std, feats = f
            loss = lr.actor_loss(b, rnd, std, feats)[0]
            return {"loss_actor": loss}
        if model == "temperature":
            return {"loss_temperature": self.log_alpha * 0.0}
        raise ValueError(f"drqv2 trains 'critic', 'actor' and 'temperature' (a no-op), not "
                         f"{model!r}")

    def update_target_networks(self) -> None:
        """Polyak update of the target critic; the exploration schedule advances as one
        RoboBase update does (``update_every_steps`` main-loop iterations)."""
        self.net.soft_update_target(self.config.critic_target_tau)
        self.learner.num_updates += 1
        self.learner.iteration += self.learner.update_every_steps
        self._features = None

    # -- checkpoints
    @classmethod
    def from_pretrained(cls, pretrained_name_or_path, *, strict: bool = True, **kwargs):
        """LeRobot's loader, strict by default (every tensor used, none missing), plus the
        training counters of ``counters.json`` where the folder has one."""
        policy = super().from_pretrained(pretrained_name_or_path, strict=strict, **kwargs)
        path = Path(pretrained_name_or_path) / COUNTERS_NAME
        if path.is_file():
            policy.set_counters(TrainingCounters.from_dict(json.loads(path.read_text())))
        return policy

    def set_counters(self, counters: TrainingCounters) -> None:
        """Where training stands (the std schedule's step): the acting net and the update."""
        self.net.training_counters = counters
        self.learner.iteration = counters.main_loop_iterations
        self.learner.pretrain_step = counters.pretrain_step
        self.learner.global_env_episode = counters.global_env_episode

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)
        self.learner.training_counters().save(save_directory)

    @classmethod
    def from_robobase_checkpoint(cls, path: str | Path, device: str = "cpu",
                                 **config_overrides: Any) -> DrQV2Policy:
        """A RoboBase snapshot (``.pt``) or a converted folder, every dimension from the
        weights (drqv2_ros's converter and its safety checks)."""
        from drqv2_ros.convert.robobase import load_checkpoint_any

        core = load_checkpoint_any(str(path))
        policy = cls(DrQV2Config.from_core(core.config, device=device, **config_overrides))
        policy.load_state_dict(core.state_dict(), strict=True)
        policy.set_counters(core.training_counters)
        return policy.to(device)
