"""Training counters of a checkpoint, kept out of its config (LeRobot keeps training state
apart from the policy's configuration): RoboBase's ``_main_loop_iterations`` (where the std
schedule continues), ``_pretrain_step`` and ``_global_env_episode``.

Stored as ``counters.json`` beside ``config.json`` and ``model.safetensors``. A folder
without it (an older conversion kept the counters inside ``config.json``: those values are
taken from there, see :func:`DrQV2Config.from_dict`) starts at zero.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drqv2_ros.atomic_write import atomic_write_text

COUNTERS_NAME = "counters.json"
FIELDS = ("main_loop_iterations", "pretrain_step", "global_env_episode")


class CountersError(ValueError):
    """A counters file or dict that is not three non-negative integers."""


@dataclass
class TrainingCounters:
    main_loop_iterations: int = 0   # RoboBase main-loop iterations: the std schedule's step
    pretrain_step: int = 0
    global_env_episode: int = 0

    def __post_init__(self) -> None:
        for name in FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise CountersError(f"{name} must be an int >= 0, got {v!r}")

    @classmethod
    def from_dict(cls, data: Any) -> TrainingCounters:
        if not isinstance(data, dict):
            raise CountersError(f"counters must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise CountersError(f"unknown counters {unknown}")
        return cls(**{k: data[k] for k in FIELDS if k in data})

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def save(self, directory: str | os.PathLike) -> Path:
        return atomic_write_text(Path(directory) / COUNTERS_NAME,
                                 json.dumps(self.to_dict(), indent=2) + "\n")
