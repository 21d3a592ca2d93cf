"""The reverse of the converter: a snapshot in RoboBase's ``Workspace.save_snapshot`` layout
written from a drqv2_ros network (its cfg with RoboBase's keys, the agent's state dict with
RoboBase's names, the duplicated actor and the ``hidden_state`` buffers, the counters).

The project makes its own RoboBase-format start snapshots with it (``drqv2-ros
sim-finetune --scratch``), and the tests make hostile and round-trip snapshots. The
converter (``convert/robobase.py``) reads what this writes as it reads RoboBase's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from drqv2_ros.policy.configuration_drqv2 import DrQV2Config
from drqv2_ros.policy.modeling_drqv2 import DrQV2Model
from drqv2_ros.policy.training_counters import TrainingCounters

__all__ = ["make_robobase_snapshot", "robobase_cfg_for", "robobase_state_dict"]


def robobase_cfg_for(config: DrQV2Config, *, num_train_envs: int | None = None) -> dict:
    """A RoboBase-shaped cfg dict (same keys as robobase_config.yaml + method/drqv2.yaml)."""
    n_envs = config.num_train_envs if num_train_envs is None else num_train_envs

    def fc_model(target: str, mlp: list[int], output_shape: Any) -> dict:
        return {
            "_target_": target,
            "_partial_": True,
            "input_shapes": "???",
            "output_shape": output_shape,
            "num_envs": "???",
            "num_rnn_layers": 1,
            "rnn_hidden_size": 128,
            "keys_to_bottleneck": ["fused_view_feats", "low_dim_obs", "time_obs"],
            "bottleneck_size": config.bottleneck_size,
            "norm_after_bottleneck": True,
            "tanh_after_bottleneck": True,
            "mlp_nodes": list(mlp),
        }

    actor = fc_model(
        "robobase.models.MLPWithBottleneckFeaturesAndSequenceOutput", config.actor_mlp_nodes, "???"
    )
    actor.update(output_sequence_network_type="rnn", output_sequence_length="${action_sequence}")
    return {
        "create_train_env": True,
        "num_train_envs": n_envs,
        "replay_size_before_train": 2000,
        "num_pretrain_steps": 0,
        "num_train_frames": 1100000,
        "update_every_steps": 2,
        "num_explore_steps": 2000,
        "save_snapshot": True,
        "snapshot_every_n": 1000,
        "batch_size": config.batch_size,
        "pixels": True,
        "visual_observation_shape": [config.image_height, config.image_width],
        "frame_stack": config.frame_stack,
        "frame_stack_on_channel": True,
        "use_onehot_time_and_no_bootstrap": config.time_obs_size > 0,
        "action_repeat": config.action_repeat,
        "action_sequence": config.action_sequence,
        "replay": {"prioritization": False, "size": 1000000, "gamma": config.discount,
                   "nstep": config.nstep},
        "seed": 1,
        "env": {
            "env_name": "so101_pick",
            "stddev_schedule": config.stddev_schedule,
            "cameras": list(config.camera_names),
        },
        "method": {
            "_target_": "robobase.method.drqv2.DrQV2",
            "is_rl": True,
            "num_explore_steps": "${num_explore_steps}",
            "actor_lr": config.actor_lr,
            "critic_lr": config.critic_lr,
            "view_fusion_lr": config.view_fusion_lr,
            "encoder_lr": config.encoder_lr,
            "weight_decay": config.weight_decay,
            "num_critics": config.num_critics,
            "critic_target_tau": config.critic_target_tau,
            "stddev_schedule": "${env.stddev_schedule}",
            "stddev_clip": config.stddev_clip,
            "use_augmentation": config.use_augmentation,
            "actor_grad_clip": None,
            "critic_grad_clip": None,
            "bc_lambda": 0.0,
            "always_bootstrap": False,
            "action_sequence_network_type": "rnn",
            "critic_updates_shared_vision_encoder": True,
            "distributional_critic": False,
            "actor_model": actor,
            "critic_model": fc_model(
                "robobase.models.MLPWithBottleneckFeatures", config.critic_mlp_nodes, 1
            ),
            "encoder_model": {
                "_target_": "robobase.models.EncoderCNNMultiViewDownsampleWithStrides",
                "_partial_": True,
                "input_shape": "???",
                "num_downsample_convs": config.encoder_num_downsample_convs,
                "num_post_downsample_convs": config.encoder_num_post_downsample_convs,
                "channels": config.encoder_channels,
                "kernel_size": config.encoder_kernel_size,
            },
            "view_fusion_model": {
                "_target_": "robobase.models.FusionMultiCamFeature",
                "_partial_": True,
                "input_shape": "???",
                "mode": "flatten",
            },
        },
    }


def robobase_state_dict(model: DrQV2Model, *, num_envs: int) -> dict[str, torch.Tensor]:
    """Our flat state dict laid out as RoboBase's DrQV2.state_dict() (duplicate actor and
    ``hidden_state`` buffers re-added, in RoboBase's registration order)."""
    flat = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hidden = torch.zeros(1, num_envs, 128)
    out: dict[str, torch.Tensor] = {k: v for k, v in flat.items() if k.startswith("encoder.")}
    actor = {k[len("actor."):]: v for k, v in flat.items() if k.startswith("actor.")}
    out["actor_model.hidden_state"] = hidden.clone()
    out.update({k: v for k, v in actor.items()})
    out["actor.actor_model.hidden_state"] = hidden.clone()
    out.update({"actor." + k: v for k, v in actor.items()})
    for prefix in ("critic.", "critic_target."):
        for i in range(model.config.num_critics):
            q = f"{prefix}qs.{i}."
            out[q + "hidden_state"] = hidden.clone()
            out.update({k: v for k, v in flat.items() if k.startswith(q)})
    return out


def make_robobase_snapshot(
    path: str | os.PathLike,
    config: DrQV2Config | None = None,
    seed: int = 0,
    *,
    perturb: float = 0.01,
    agent_overrides: Mapping[str, torch.Tensor | None] | None = None,
    extra: Mapping[str, Any] | None = None,
    counters: TrainingCounters | None = None,
) -> Path:
    """Write a synthetic snapshot in RoboBase's ``Workspace.save_snapshot`` layout.

    Weights are DrQ-v2-initialised from ``seed`` and perturbed (so actor, critic and target
    differ); ``cfg`` is an omegaconf ``DictConfig`` with RoboBase's keys (see
    :func:`robobase_cfg_for`). ``agent_overrides`` replaces (or, with None, deletes) agent
    tensors and ``extra`` adds/overrides top-level snapshot keys: handy for bad-input tests.
    """
    from omegaconf import OmegaConf

    config = config or DrQV2Config()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DrQV2Model(config)
    with torch.no_grad():
        for p in list(model.parameters()) + list(model.critic_target.parameters()):
            p.add_(torch.randn(p.shape, generator=gen) * perturb)
    num_envs = config.num_train_envs + 1
    agent = robobase_state_dict(model, num_envs=num_envs)
    for k, v in (agent_overrides or {}).items():
        if v is None:
            agent.pop(k, None)
        else:
            agent[k] = v
    counters = counters or TrainingCounters()
    snap: dict[str, Any] = {
        "_pretrain_step": counters.pretrain_step,
        "_main_loop_iterations": counters.main_loop_iterations,
        "_global_env_episode": counters.global_env_episode,
        "cfg": OmegaConf.create(robobase_cfg_for(config)),
        "agent": agent,
    }
    snap.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(snap, path)
    return path
