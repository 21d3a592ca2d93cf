"""The learner state file: everything a learner needs to resume exactly (weights with the
target critics, optimisers, counters, RNGs), checked before use.

ROS-free. Layout: ``DRQV2LRN`` (8 bytes) + SHA-256 of the payload (32 bytes) + a
``torch.save`` payload of plain containers and tensors, read with ``weights_only=True`` (no
code from the file runs). Written atomically and durably (``drqv2_ros/atomic_write.py``).
What a state must match to be loaded (config, options, shapes) is checked by
``DrQV2Learner.load_state``.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from drqv2_ros.atomic_write import atomic_write_bytes
from drqv2_ros.policy.modeling_drqv2 import CheckpointError

__all__ = ["STATE_FORMAT", "STATE_VERSION", "LearnerStateError", "write_state_file",
           "read_state_file"]

STATE_FORMAT = "drqv2_ros.learner_state"
STATE_VERSION = 1
_MAGIC = b"DRQV2LRN"


class LearnerStateError(CheckpointError):
    """A learner state file cannot be used to resume (missing, corrupt or mismatched)."""


def write_state_file(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Serialise ``state`` (a ``DrQV2Learner.state_dict()``) to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return atomic_write_bytes(path, _MAGIC + hashlib.sha256(payload).digest() + payload)


def read_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a state file (magic, checksum, format tag, version); raises
    :class:`LearnerStateError` naming the file and the reason."""
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
