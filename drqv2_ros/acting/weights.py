"""Actor weights on the wire (learner -> actor, ``msg/PolicyWeights.msg``): the safetensors
blob of ``learning.learner.actor_state_bytes`` (no pickle: safe to load from the network),
a version per learner run, and a SHA-256 so the actor applies only weights that arrived
whole. Names, shapes and finiteness are checked by ``learning.learner.load_actor_bytes``."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from drqv2_ros.policy.modeling_drqv2 import CheckpointError, DrQV2Policy, check_state_dict


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


# --------------------------------------------- the blob: encoder + actor as safetensors
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
