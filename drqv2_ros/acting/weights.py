"""Actor weights on the wire (learner -> actor, ``msg/PolicyWeights.msg``): the safetensors
blob of ``learning.learner.actor_state_bytes`` (no pickle: safe to load from the network),
a version per learner run, and a SHA-256 so the actor applies only weights that arrived
whole. Names, shapes and finiteness are checked by ``learning.learner.load_actor_bytes``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


class WeightsError(ValueError):
    """Received weights that cannot be applied (corrupt, mismatched, non-finite)."""


@dataclass
class WeightsPacket:
    version: int
    learner_step: int  # the std schedule's main-loop iteration the weights come from
    run_id: str
    sha256: str
    data: bytes

    @classmethod
    def make(cls, data: bytes, *, version: int, learner_step: int, run_id: str):
        return cls(version, learner_step, run_id, hashlib.sha256(data).hexdigest(), data)

    def verified_data(self) -> bytes:
        data = bytes(self.data)
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise WeightsError(f"sha256 mismatch: got {digest[:12]}, announced "
                               f"{self.sha256[:12]} ({len(data)} bytes)")
        return data
