"""Documented settings: a dataclass field that carries its help text (ROS-free).

Core configuration dataclasses use it, and ``nodes/common.declare_parameters`` turns every
such field into a ROS parameter with that text as its descriptor."""

from __future__ import annotations

import dataclasses
from typing import Any


def param(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with ``metadata["help"]``; list defaults are copied per instance."""
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help, **kw})
