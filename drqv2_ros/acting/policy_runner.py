"""A loaded DrQ-v2 policy ready for the control loop: numpy in, numpy out, exploration std
from the schedule at the weights' step.

Whether a runner may act in a given loop is decided by ``acting.contract.ActorContract``;
how a checkpoint file becomes a runner without stalling control, by ``acting.loader``.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch

from drqv2_ros.acting.weights import WeightsError, WeightsPacket, load_actor_bytes
from drqv2_ros.policy.configuration_drqv2 import DrQV2Config
from drqv2_ros.policy.modeling_drqv2 import CheckpointError, DrQV2Policy
from drqv2_ros.policy.training_counters import FIELDS as COUNTER_FIELDS
from drqv2_ros.policy.training_counters import CountersError, TrainingCounters


class PolicyRunner:
    def __init__(self, policy: DrQV2Policy, *, source: str = "", weights_version: int = -1,
                 schedule_step: int | None = None, seed: int = 0):
        # The actor needs the encoder and the actor network only: the critics stay with the
        # learner (less memory, and weight pushes copy a quarter of the tensors).
        policy.drop_critics()
        self.policy = policy.eval()
        self.config: DrQV2Config = policy.config
        self.source = source
        self.weights_version = weights_version
        self.run_id = ""
        self.schedule_step = (policy.training_counters.main_loop_iterations
                              if schedule_step is None else schedule_step)
        self._gen = torch.Generator().manual_seed(seed)

    @classmethod
    def from_actor_bytes(cls, config: DrQV2Config, data: bytes, **kw) -> PolicyRunner:
        """A runner from a config and the encoder + actor safetensors blob
        (``weights.actor_state_bytes``): only the acting parts are built, on the meta device,
        then allocated and loaded (names, shapes, finiteness checked)."""
        with torch.device("meta"):
            policy = DrQV2Policy(config, init_weights=False, critics=False)
        policy.to_empty(device="cpu")
        meta = load_actor_bytes(policy, data)
        try:  # where training stood travels in the blob's metadata
            policy.training_counters = TrainingCounters.from_dict(
                {k: int(meta[k]) for k in COUNTER_FIELDS if k in meta})
        except (ValueError, CountersError) as exc:
            raise CheckpointError(f"actor weights: bad counters in the metadata ({exc})") from None
        return cls(policy, **kw)

    def summary(self) -> dict:
        c = self.config
        return {"source": self.source, "views": c.num_views, "image": [c.image_height,
                c.image_width], "frame_stack": c.frame_stack, "low_dim_size": c.low_dim_size,
                "low_dim_layout": [e[0] for e in c.low_dim_layout],
                "action_dim": c.action_dim, "schedule_step": self.schedule_step,
                "weights_version": self.weights_version}

    # -- acting ----------------------------------------------------------------------------
    def __call__(self, rgb: np.ndarray, low_dim: np.ndarray, explore: bool) -> np.ndarray:
        return self._act(rgb, low_dim, explore, self._gen)

    def act_quietly(self, rgb: np.ndarray, low_dim: np.ndarray, explore: bool) -> np.ndarray:
        """An action drawn from a private generator (a dry run leaves the live noise stream
        as it was)."""
        return self._act(rgb, low_dim, explore, torch.Generator().manual_seed(0))

    def _act(self, rgb, low_dim, explore, gen) -> np.ndarray:
        batch = {"rgb": torch.from_numpy(np.ascontiguousarray(rgb)).unsqueeze(0),
                 "observation.state": torch.from_numpy(np.ascontiguousarray(low_dim))}
        # RoboBase acts with unclipped TruncatedNormal noise (stddev_clip is for the update).
        a = self.policy.select_action(batch, step=self.schedule_step, explore=explore,
                                      clip=None, generator=gen)
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


def describe(runner: PolicyRunner) -> str:
    return json.dumps(runner.summary(), sort_keys=True)
