"""Where and how the learner computes: device choice and the float precision of the update.

ROS-free. One place decides, for the learner node, ``sim-finetune`` and the benchmarks:

- :func:`resolve_device`: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or
  ``cuda:N``; a CUDA device that is not there is refused with the reason (never a silent
  fall-back: a user who asked for ``cuda:1`` should learn that it is missing).
- :func:`configure_precision`: ``fp32`` (default, RoboBase-exact math: IEEE float32 in
  convolutions and matrix products, also on CUDA where PyTorch would otherwise let cuDNN
  use TF32), ``tf32`` (TensorFloat-32 matrix units for float32 convolutions and matrix
  products, CUDA only) or ``bf16`` (forward passes under bfloat16 autocast, weights,
  optimiser states and losses in float32). The TF32 switches are process-wide in PyTorch:
  the learner process owns them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["PRECISIONS", "resolve_device", "configure_precision", "describe_device"]

PRECISIONS = ("fp32", "tf32", "bf16")


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a usable :class:`torch.device`.

    Raises ``ValueError`` naming the problem for an unknown name or a CUDA device that this
    machine does not have.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    s = str(spec).strip().lower()
    if s in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(s)
    except RuntimeError as exc:
        raise ValueError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N ({exc})") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"device {spec!r}: only auto, cpu, cuda and cuda:N are supported")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r}: CUDA is not available here (torch "
                         f"{torch.__version__}, built for CUDA {torch.version.cuda}); use "
                         "device 'auto' or 'cpu'")
    n = torch.cuda.device_count()
    index = 0 if dev.index is None else dev.index
    if index >= n:
        raise ValueError(f"device {spec!r}: this machine has {n} CUDA device(s) "
                         f"(cuda:0..cuda:{n - 1})")
    return torch.device("cuda", index)


def describe_device(device: torch.device) -> str:
    """Human-readable name for logs and reports, e.g. ``cuda:0 (NVIDIA H200)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _set_tf32(enabled: bool) -> None:
    # PyTorch 2.9+ has per-backend fp32_precision settings and warns about the old flags;
    # older releases only have allow_tf32. Use whichever this torch has, never both.
    cudnn_conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if cudnn_conv is not None and matmul is not None:
        value = "tf32" if enabled else "ieee"
        torch.backends.cudnn.conv.fp32_precision = value
        torch.backends.cuda.matmul.fp32_precision = value
    else:  # pragma: no cover - older torch
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled


def configure_precision(device: torch.device, precision: str
                        ) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """Apply ``precision`` for ``device``; return the context to run forward passes in.

    ``fp32`` and ``tf32`` return a no-op context; ``bf16`` returns bfloat16 autocast for the
    device type. On CUDA, ``fp32`` also turns TF32 off (PyTorch's default lets cuDNN use it
    for float32 convolutions, which is not RoboBase-exact) and cuDNN autotuning on (the
    batch shapes are fixed; the chosen algorithms are still IEEE float32). ``tf32`` on a CPU
    is refused: there is no such mode there.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type == "cuda":
        _set_tf32(precision == "tf32")
        torch.backends.cudnn.benchmark = True
    elif precision == "tf32":
        raise ValueError("precision 'tf32' needs a CUDA device (TF32 is a GPU matrix-unit "
                         "mode); use fp32 or bf16 on the CPU")
    if precision == "bf16":
        dev_type = device.type
        # No cast cache: it must not outlive a CUDA-graph capture (and costs little here).
        return lambda: torch.autocast(device_type=dev_type, dtype=torch.bfloat16,
                                      cache_enabled=False)
    return contextlib.nullcontext
