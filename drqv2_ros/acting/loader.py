"""Checkpoint loading for the actor, isolated from the control loop.

A :class:`CheckpointLoader` keeps one child process (``python -m drqv2_ros.acting.loader``,
torch already imported, lowest CPU priority) that does the whole load: bounded-cost file
checks, the restricted unpickler, RoboBase conversion, strict shape and finiteness checks.
It sends back only what acting needs: the config and the encoder + actor weights as a
safetensors blob (the learner's weight-push format), at most ``limits.max_file_bytes``. So a
checkpoint that is slow, huge or hostile costs the policy process nothing: no GIL held by a
41 MB conversion while the control tick waits, no memory beyond the blob. A child that does
not answer within the timeout is killed and the next load starts a fresh one, so a stuck load
never blocks later loads (and learner weight pushes never go through here at all).

Protocol: the parent writes one JSON line ``{"id": ..., "path": ..., "max_file_bytes":
...}``; the child answers ``b"O"`` + the request's id (8 bytes, little endian) + two frames
(config JSON, blob) or ``b"E"`` + the id + one frame (the reason), a frame being an 8-byte
little-endian length and that many bytes. Every answer is matched to its request: the id is
a fresh random 63-bit number per request, and a child with bytes waiting before a request,
or whose answer carries another id or does not parse, is stopped and the request is sent
once more to a fresh child (an extra frame can never shift the answers by one). The child
runs until its stdin closes (or it is killed): it ignores SIGINT, which a terminal's Ctrl-C
sends to the whole process group.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from drqv2_ros.policy.file_limits import DEFAULT_LIMITS, CheckpointError, LoadLimits

_LEN = struct.Struct("<Q")


def _resolve(path: str | os.PathLike, root: str) -> Path:
    p = Path(path).expanduser()
    if root:
        rp = Path(root).expanduser().resolve()
        if not p.resolve().is_relative_to(rp):
            raise CheckpointError(f"{p} is outside the allowed checkpoint root {rp}")
    return p


class _Mismatch(OSError):
    """The child's answer is not the answer to this request."""


class CheckpointLoader:
    """Loads checkpoints in a long-lived child process; one load at a time."""

    #: the child's command line
    command: tuple[str, ...] = (sys.executable, "-m", "drqv2_ros.acting.loader")

    def __init__(self, *, limits: LoadLimits = DEFAULT_LIMITS, timeout_s: float = 60.0):
        self.limits, self.timeout_s = limits, timeout_s
        self._child: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the child now (else the first load does)."""
        with self._lock:
            self._ensure_child()

    def _ensure_child(self) -> subprocess.Popen:
        if self._child is None or self._child.poll() is not None:
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            self._child = subprocess.Popen(
                list(self.command), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, env=env, close_fds=True, bufsize=0)
        return self._child

    def _kill(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None

    def close(self) -> None:
        with self._lock:
            if self._child is not None and self._child.poll() is None:
                try:
                    self._child.stdin.close()
                    self._child.wait(2.0)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._kill()

    def load(self, path: str | os.PathLike, *, root: str = "", source: str | None = None):
        """A :class:`~drqv2_ros.acting.policy_runner.PolicyRunner` for ``path``. Raises
        :class:`CheckpointError` with the reason (refused, timed out, the loader died)."""
        from drqv2_ros.acting.policy_runner import PolicyRunner

        config, blob, src = self.fetch(path, root=root, source=source)
        return PolicyRunner.from_actor_bytes(config, blob, source=src)

    def fetch(self, path: str | os.PathLike, *, root: str = "", source: str | None = None):
        """The child's answer for ``path``: ``(config, actor weights blob, source)``, for
        ``PolicyRunner.from_actor_bytes`` (a caller beside a control loop builds the runner
        when it suits the loop). Raises :class:`CheckpointError` like :meth:`load`."""
        from drqv2_ros.policy.configuration_drqv2 import ConfigError, DrQV2Config

        p = _resolve(path, root)
        with self._lock:
            config_json, blob = self._request(p)
        try:
            config = DrQV2Config.from_json(config_json.decode())
        except (ConfigError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{p}: the loader's answer is unreadable ({exc})") from None
        return config, blob, source or str(p)

    def _request(self, p: Path) -> tuple[bytes, bytes]:
        deadline = time.monotonic() + self.timeout_s
        try:
            try:
                return self._exchange(p, deadline)
            except _Mismatch:  # once more, on a fresh child
                self._kill()
                return self._exchange(p, deadline)
        except TimeoutError:
            self._kill()
            raise CheckpointError(f"{p}: loading did not finish within {self.timeout_s:g} s; "
                                  "the loader was stopped (the next load starts a new one)"
                                  ) from None
        except (OSError, ValueError) as exc:
            self._kill()
            raise CheckpointError(f"{p}: the loader process failed ({exc}); the next load "
                                  "starts a new one") from None

    def _exchange(self, p: Path, deadline: float) -> tuple[bytes, bytes]:
        import secrets

        child = self._ensure_child()
        if select.select([child.stdout.fileno()], [], [], 0)[0]:
            self._kill()  # bytes nobody asked for: this child cannot be trusted to answer
            child = self._ensure_child()
        rid = secrets.randbits(63)
        line = json.dumps({"id": rid, "path": str(p),
                           "max_file_bytes": self.limits.max_file_bytes})
        child.stdin.write(line.encode() + b"\n")
        tag = self._read(child, 1, deadline)
        if tag not in (b"O", b"E"):
            raise _Mismatch(f"unexpected answer {tag!r}")
        (got,) = _LEN.unpack(self._read(child, _LEN.size, deadline))
        if got != rid:
            raise _Mismatch("an answer to another request")
        if tag == b"E":
            raise CheckpointError(self._frame(child, 64 << 10, deadline).decode(
                errors="replace"))
        config = self._frame(child, self.limits.max_config_bytes, deadline)
        blob = self._frame(child, self.limits.max_file_bytes, deadline)
        return config, blob

    def _frame(self, child, cap: int, deadline: float) -> bytes:
        (n,) = _LEN.unpack(self._read(child, _LEN.size, deadline))
        if n > cap:
            raise ValueError(f"answer of {n} bytes, above {cap}")
        return self._read(child, n, deadline)

    @staticmethod
    def _read(child, n: int, deadline: float) -> bytes:
        fd = child.stdout.fileno()
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise OSError(f"loader exited ({child.poll()})")
            buf += chunk
        return bytes(buf)


def load_isolated(path: str | os.PathLike, *, root: str = "", timeout_s: float = 60.0,
                  limits: LoadLimits = DEFAULT_LIMITS, source: str | None = None):
    """One load in a fresh child process (see :class:`CheckpointLoader`)."""
    loader = CheckpointLoader(limits=limits, timeout_s=timeout_s)
    try:
        return loader.load(path, root=root, source=source)
    finally:
        loader.close()


# ------------------------------------------------------------------------------ the child
def _answer(out, tag: bytes, rid: int, *parts: bytes) -> None:
    out.write(tag)
    out.write(_LEN.pack(rid))
    for part in parts:
        out.write(_LEN.pack(len(part)))
        out.write(part)
    out.flush()


def _load_one(req: dict) -> tuple[bytes, bytes]:
    from drqv2_ros.acting.weights import actor_state_bytes
    from drqv2_ros.convert.robobase import load_checkpoint_any

    policy = load_checkpoint_any(req["path"],
                                 limits=LoadLimits(max_file_bytes=int(req["max_file_bytes"])))
    return (policy.config.to_json().encode(),
            actor_state_bytes(policy, policy.training_counters.to_dict()))


def child_main() -> int:
    # The parent decides when this process ends (it closes the pipe, or kills it): a Ctrl-C
    # in the terminal reaches the whole process group, and the policy node shuts down on
    # it by itself; here it would only print a traceback into the node's log.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(19)  # below everything else on the machine
    except OSError:
        pass
    import torch

    torch.set_num_threads(1)
    out = os.fdopen(os.dup(1), "wb")  # the answers' channel; stray prints go to stderr
    os.dup2(2, 1)
    try:
        for request in sys.stdin.buffer:
            rid = 0
            try:
                req = json.loads(request)
                rid = int(req.get("id", 0)) & ((1 << 64) - 1)
                config, blob = _load_one(req)
            except CheckpointError as exc:
                _answer(out, b"E", rid, str(exc).encode())
                continue
            except MemoryError:
                _answer(out, b"E", rid, b"out of memory while loading")
                continue
            except Exception as exc:  # one reason for the caller, never a trace
                _answer(out, b"E", rid, f"{type(exc).__name__}: {exc}".encode())
                continue
            _answer(out, b"O", rid, config, blob)
    except BrokenPipeError:  # the parent went away mid-answer: nobody to tell
        pass
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
