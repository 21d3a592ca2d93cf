"""Memory-lean, persistent replay buffer for DrQ-v2 / HIL-SERL fine-tuning (numpy only, no ROS).

Steps arrive in dm_env layout (the ``drqv2_ros/Step`` message): step ``k`` of an episode
carries the observation ``o_k`` (one single uint8 frame per view plus a single-frame float32
low-dim state) and, unless ``is_first``, the action ``a_{k-1}`` that led to it, the reward
``r_k`` and the flags of that transition. Every frame is stored once, as uint8; frame stacks
and next observations are rebuilt from indices at sample time.

Storage is one ``.npy`` memmap per field inside ``directory`` (a ring of ``capacity`` steps)
plus ``spec.json`` (written once) and ``state.json`` (the ring state, replaced atomically on
every :meth:`ReplayBuffer.flush`). A process that dies after ``flush()`` keeps every step it
had flushed; on reopen an episode left open is closed as truncated (bootstrapped).

See ``docs/replay_buffer.md`` for the layout, the sampling semantics and the mixing design.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from drqv2_ros.atomic_write import atomic_write_json

__all__ = ["ReplayBuffer", "MixedReplay", "FORMAT_VERSION"]

FORMAT_VERSION = 1

# Per-step flag bits (uint8). FIRST/LAST/TERMINATED describe the step itself; INTERVENTION,
# DEMO and NO_SAMPLE describe the transition that ENDS at this step (o_{k-1}, a_{k-1} -> o_k),
# i.e. they are read from step t+1 when transition t is sampled.
_FIRST = 1
_LAST = 2
_TERMINATED = 4
_INTERVENTION = 8
_DEMO = 16
_NO_SAMPLE = 32

#: Segments of at least this many steps go to the images file by ``pwrite`` (bulk adds).
_PWRITE_ROWS = 8

_SPEC_FILE = "spec.json"
_STATE_FILE = "state.json"
_LOCK_FILE = "lock"


def _read_json(path: Path) -> dict:
    """A small JSON object file; ValueError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def _preallocate(path: Path) -> None:
    """Give a ring file all its disk blocks now. A memory-mapped file is sparse when created;
    writing a page whose block cannot be allocated (a full disk) kills the process with
    SIGBUS. Allocated up front, a full disk shows here, once, as a clear ``OSError``
    (ENOSPC), and later writes to the ring cannot fail."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # file system cannot: skip
                return
            raise OSError(exc.errno, f"replay buffer file {path}: cannot allocate its "
                          f"{size / 1e6:.1f} MB on disk ({exc.strerror})") from None
    finally:
        os.close(fd)


class _WriteBack:
    """Background write-back of a ring file (:meth:`ReplayBuffer.write_back`): one thread,
    started on the first request, that ``fdatasync``-s the file while the writer goes on
    (one call per round: the thread needs the GIL only between rounds). It changes what is
    on disk, never what the state file claims; a later :meth:`ReplayBuffer.flush` waits
    for it and raises its error."""

    def __init__(self, fd: int):
        self._fd = fd
        self._cv = threading.Condition()
        self._requested = self._busy = self._stopping = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        with self._cv:
            if self._stopping:  # the buffer is closed
                return
            self._requested = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="replay-write-back")
                self._thread.start()
            self._cv.notify_all()

    def settle(self) -> None:
        """Wait until no round runs or is requested; raise the error of one that failed."""
        with self._cv:
            while self._busy or self._requested:
                self._cv.wait()
            err, self._error = self._error, None
        if err is not None:
            raise err

    def stop(self) -> None:
        with self._cv:
            self._requested, self._stopping = False, True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._requested and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                self._requested, self._busy = False, True
            try:
                os.fdatasync(self._fd)
            except Exception as exc:  # raised on the writer's thread, at its next flush
                with self._cv:
                    self._error = exc
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()


class ReplayBuffer:
    """Ring buffer of single-frame steps on disk, sampled as frame-stacked n-step transitions.

    Args:
        directory: folder holding the memmaps; created if missing, reopened if it holds a
            buffer (the stored spec must equal the arguments, else ``ValueError``).
        capacity: number of STEPS kept (FIFO eviction of the oldest).
        image_shape: ``(V, 3, H, W)`` of one observation (one frame per view), uint8.
        low_dim_size: size of ONE frame of the low-dim state (float32).
        action_size: ``A``.
        frame_stack: ``T`` frames per stacked observation (oldest first).
        nstep: ``n`` of the n-step return.
        discount: per-step ``gamma``.

    A transition ``t`` is (stack of ``o_t``, ``a_t``, n-step reward, discount, stack of
    ``o_{t+n'}``). ``len(buffer)`` is the number of transitions :meth:`sample` can return.
    One writer per directory (an exclusive ``flock`` on ``directory/lock``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        capacity: int,
        image_shape: tuple[int, int, int, int],
        low_dim_size: int,
        action_size: int,
        frame_stack: int = 3,
        nstep: int = 3,
        discount: float = 0.99,
    ) -> None:
        self.directory = Path(directory)
        spec = self._make_spec(capacity, image_shape, low_dim_size, action_size, frame_stack,
                               nstep, discount)
        self.capacity = spec["capacity"]
        self.image_shape: tuple[int, ...] = tuple(spec["image_shape"])
        self.low_dim_size = spec["low_dim_size"]
        self.action_size = spec["action_size"]
        self.frame_stack = spec["frame_stack"]
        self.nstep = spec["nstep"]
        self.discount = spec["discount"]
        self._spec = spec
        # Eviction happens in chunks, each followed by a flush, so that the durable state never
        # claims a slot that unflushed writes may have overwritten (see _evict_for_write).
        self.evict_chunk = int(min(max(1, self.capacity // 100), 4096))

        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        self._acquire_lock()
        try:
            spec_path = self.directory / _SPEC_FILE
            if spec_path.exists():
                self._reopen(spec_path)
            else:
                self._create()
        except BaseException:
            self._release_lock()
            raise

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _make_spec(capacity, image_shape, low_dim_size, action_size, frame_stack, nstep,
                   discount) -> dict[str, Any]:
        image_shape = tuple(int(x) for x in image_shape)
        if len(image_shape) != 4 or image_shape[1] != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (V, 3, H, W) with V, H, W >= 1, got "
                             f"{image_shape}")
        frame_stack, nstep = int(frame_stack), int(nstep)
        if frame_stack < 1 or nstep < 1:
            raise ValueError(f"frame_stack and nstep must be >= 1, got {frame_stack}, {nstep}")
        capacity = int(capacity)
        if capacity < frame_stack + nstep + 1:
            raise ValueError(f"capacity {capacity} too small: need >= frame_stack + nstep + 1 "
                             f"= {frame_stack + nstep + 1} steps")
        if int(low_dim_size) < 0 or int(action_size) < 1:
            raise ValueError(f"low_dim_size must be >= 0 and action_size >= 1, got "
                             f"{low_dim_size}, {action_size}")
        discount = float(discount)
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"discount must be in [0, 1], got {discount}")
        return {
            "format_version": FORMAT_VERSION,
            "capacity": capacity,
            "image_shape": list(image_shape),
            "low_dim_size": int(low_dim_size),
            "action_size": int(action_size),
            "frame_stack": frame_stack,
            "nstep": nstep,
            "discount": discount,
        }

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> ReplayBuffer:
        """Reopen an existing buffer with the spec stored in ``directory/spec.json``."""
        spec_path = Path(directory) / _SPEC_FILE
        if not spec_path.exists():
            raise FileNotFoundError(f"no replay buffer in {directory} ({_SPEC_FILE} missing)")
        spec = _read_json(spec_path)
        try:
            return cls(directory, capacity=spec["capacity"], image_shape=spec["image_shape"],
                       low_dim_size=spec["low_dim_size"], action_size=spec["action_size"],
                       frame_stack=spec["frame_stack"], nstep=spec["nstep"],
                       discount=spec["discount"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{spec_path}: not a replay buffer spec ({type(exc).__name__}: "
                             f"{exc})") from None

    def _acquire_lock(self) -> None:
        fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RuntimeError(f"replay buffer {self.directory} is already open (by this "
                                   "or another process); one writer per directory") from e
            raise
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _field_specs(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        c = self.capacity
        return {
            "images": (np.dtype(np.uint8), (c, *self.image_shape)),
            "low_dim": (np.dtype(np.float32), (c, self.low_dim_size)),
            "action": (np.dtype(np.float32), (c, self.action_size)),
            "reward": (np.dtype(np.float32), (c,)),
            "flags": (np.dtype(np.uint8), (c,)),
            "ep_start": (np.dtype(np.int64), (c,)),  # global step id of the episode's o_0
            "step_id": (np.dtype(np.int64), (c,)),  # global step id held by the slot, -1 none
        }

    def _create(self) -> None:
        stray = [p.name for p in self.directory.iterdir() if p.name != _LOCK_FILE]
        if stray:
            raise ValueError(f"{self.directory} is not empty and holds no {_SPEC_FILE}: refusing "
                             f"to create a replay buffer over {sorted(stray)[:5]}")
        self._mm: dict[str, np.memmap] = {}
        try:
            for name, (dtype, shape) in self._field_specs().items():
                path = self.directory / f"{name}.npy"
                self._mm[name] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype,
                                                           shape=shape)
                _preallocate(path)
        except OSError:
            self._mm = {}
            for name in self._field_specs():  # nothing half-made stays behind
                (self.directory / f"{name}.npy").unlink(missing_ok=True)
            raise
        self._mm["step_id"][:] = -1
        self.stream_marks: dict[str, Any] = {}
        self._views()
        self._open_fds()
        self._total = 0  # global id of the next step
        self._lo = 0  # oldest stored step (global id)
        self._open_start: int | None = None  # o_0 global id of the open episode
        self._episodes_added = 0
        self._recount()
        self.flush()
        atomic_write_json(self.directory / _SPEC_FILE, self._spec)

    def _reopen(self, spec_path: Path) -> None:
        stored = _read_json(spec_path)
        diffs = [f"{k}: stored {stored.get(k)!r} != requested {v!r}"
                 for k, v in self._spec.items() if stored.get(k) != v]
        if diffs:
            raise ValueError(f"replay buffer {self.directory} was created with another spec: "
                             + "; ".join(diffs))
        self._mm = {}
        for name, (dtype, shape) in self._field_specs().items():
            path = self.directory / f"{name}.npy"
            if not path.exists():
                raise ValueError(f"replay buffer {self.directory} is incomplete: {path.name} "
                                 "missing")
            _preallocate(path)  # a ring made sparse (older versions, copies) gets its blocks
            mm = np.lib.format.open_memmap(path, mode="r+")
            if mm.dtype != dtype or mm.shape != shape:
                raise ValueError(f"{path}: dtype/shape {mm.dtype}{mm.shape} != expected "
                                 f"{dtype}{shape}")
            self._mm[name] = mm
        self._views()
        self._open_fds()
        state_path = self.directory / _STATE_FILE
        if not state_path.exists():
            raise ValueError(f"replay buffer {self.directory} is incomplete: {_STATE_FILE} "
                             "missing")
        state = _read_json(state_path)
        try:
            self._total = int(state["total"])
            self._lo = int(state["lo"])
            self._open_start = (None if state["open_episode_start"] is None
                                else int(state["open_episode_start"]))
            self._episodes_added = int(state["episodes_added"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{state_path}: not a replay ring state ({type(exc).__name__}: "
                             f"{exc})") from None
        marks = state.get("stream_marks", {})
        self.stream_marks = marks if isinstance(marks, dict) else {}
        if not (0 <= self._lo <= self._total and self._total - self._lo <= self.capacity):
            raise ValueError(f"{state_path}: inconsistent ring state {state}")
        ids = np.arange(self._lo, self._total, dtype=np.int64)
        bad = np.flatnonzero(self._mm["step_id"][ids % self.capacity] != ids)
        if bad.size:
            raise ValueError(f"replay buffer {self.directory} is corrupt: {bad.size} slots do "
                             f"not hold the steps the state file claims (first: step "
                             f"{int(ids[bad[0]])})")
        self._recount()
        if self._open_start is not None:
            # The writer died (or stopped) inside an episode: it cannot be continued by a new
            # process, so close it as a truncation at its last stored step (bootstrap).
            self.end_episode(terminated=False)
            self.flush()

    def _open_fds(self) -> None:
        """A descriptor per ring file: durability through ``fdatasync`` (which, unlike the
        memmap's ``msync``, lets other Python threads run meanwhile; on Linux both write back
        the same page-cache pages, the mapping's included) and bulk rows through ``pwrite``."""
        self._fds: dict[str, int] = {}
        try:
            for name in self._mm:
                self._fds[name] = os.open(self.directory / f"{name}.npy", os.O_RDWR)
        except OSError:
            self._close_fds()
            raise
        self._write_back = _WriteBack(self._fds["images"])

    def _close_fds(self) -> None:
        """Stop the write-back thread, then close the descriptors it and flush use."""
        write_back = getattr(self, "_write_back", None)
        if write_back is not None:
            write_back.stop()
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}

    def _views(self) -> None:
        # Plain ndarray views of the memmaps: same memory, no np.memmap subclass overhead, and
        # fancy-indexed results are ordinary arrays.
        self._a = {name: np.asarray(mm) for name, mm in self._mm.items()}

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Flush and release the directory lock. The object is unusable afterwards. If the
        flush fails (a full disk), the lock is released anyway and the error raised: the
        steps since the last flush are not durable, the flushed ones are intact."""
        try:
            if getattr(self, "_mm", None) and self._lock_fd is not None:
                self.flush()
        finally:
            self._close_fds()
            self._mm, self._a = {}, {}
            self._release_lock()

    def abandon(self) -> None:
        """Close WITHOUT flushing and release the lock: every step added since the last
        :meth:`flush` is dropped, and the directory describes the buffer exactly as that
        flush left it (its state file is not touched; frames written meanwhile sit in slots
        no reader of that state reads). For a command that failed half way: it changes
        nothing. The object is unusable afterwards (``close`` is then a no-op)."""
        self._close_fds()
        self._mm, self._a = {}, {}
        self._release_lock()

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._close_fds()
            self._release_lock()
        except Exception:
            pass

    def flush(self) -> None:
        """Make every step added so far durable: the ring files synced, then the state
        replaced atomically (so the state never claims a step that is not on disk).

        ``stream_marks`` (a small JSON dict the writer keeps: the learner's position in each
        actor's step stream) is written with the ring state, so the two always agree."""
        self._write_back.settle()
        for fd in self._fds.values():
            os.fdatasync(fd)  # on Linux what msync(MS_SYNC) does, without holding the GIL
        atomic_write_json(self.directory / _STATE_FILE, {
            "format_version": FORMAT_VERSION,
            "total": self._total,
            "lo": self._lo,
            "open_episode_start": self._open_start,
            "episodes_added": self._episodes_added,
            "stream_marks": self.stream_marks,
        })
        self._durable_total = self._total

    def write_back(self) -> None:
        """Start writing the frames added so far to disk in the background, and return at
        once: the disk then works while the caller adds the next steps (a bulk ingest), and
        the next :meth:`flush` has little left to wait for. Nothing becomes durable before
        that flush: the state file still describes the ring as at the last flush (so an
        ingest killed half way leaves the buffer as it was before it)."""
        self._write_back.request()

    # ------------------------------------------------------------------ counters
    def _slots(self, ids: np.ndarray) -> np.ndarray:
        return ids % self.capacity

    def _recount(self) -> None:
        """Recompute the per-window counters from the flags (O(capacity), on open only)."""
        ids = np.arange(self._lo, self._total, dtype=np.int64)
        f = self._a["flags"][self._slots(ids)]
        cand = (f & (_FIRST | _NO_SAMPLE)) == 0
        self._n_first = int(np.count_nonzero(f & _FIRST))
        self._n_cand = int(np.count_nonzero(cand))
        self._n_cand_int = int(np.count_nonzero(cand & ((f & _INTERVENTION) != 0)))
        self._n_cand_demo = int(np.count_nonzero(cand & ((f & _DEMO) != 0)))
        self._durable_total = self._total

    def _count_flags(self, f: np.ndarray, sign: int) -> None:
        cand = (f & (_FIRST | _NO_SAMPLE)) == 0
        self._n_first += sign * int(np.count_nonzero(f & _FIRST))
        self._n_cand += sign * int(np.count_nonzero(cand))
        self._n_cand_int += sign * int(np.count_nonzero(cand & ((f & _INTERVENTION) != 0)))
        self._n_cand_demo += sign * int(np.count_nonzero(cand & ((f & _DEMO) != 0)))

    def _edge_invalid(self) -> tuple[int, int, int]:
        """Candidates (non-first, sampleable steps s -> transition s-1) that are not valid.

        Invalid candidates can only sit at the tail (stack or step s-1 evicted) or at the head
        (n-step window of the open episode not complete yet): a few steps to look at.
        """
        lo, hi, T, n = self._lo, self._total, self.frame_stack, self.nstep
        if hi <= lo:
            return 0, 0, 0
        s = np.unique(np.concatenate([np.arange(lo, min(lo + T, hi)),
                                      np.arange(max(hi - n, lo), hi)]))
        f = self._a["flags"][self._slots(s)]
        cand = (f & (_FIRST | _NO_SAMPLE)) == 0
        bad = cand & ~self._valid(s - 1)
        return (int(np.count_nonzero(bad)),
                int(np.count_nonzero(bad & ((f & _INTERVENTION) != 0))),
                int(np.count_nonzero(bad & ((f & _DEMO) != 0))))

    def __len__(self) -> int:
        """Number of sampleable transitions."""
        return self._n_cand - self._edge_invalid()[0]

    @property
    def num_steps(self) -> int:
        """Steps (single observations) currently stored."""
        return self._total - self._lo

    @property
    def num_episodes(self) -> int:
        """Episodes with at least one stored step (a partly evicted one included)."""
        if self._total == self._lo:
            return 0
        head_partial = not (self._a["flags"][self._lo % self.capacity] & _FIRST)
        return self._n_first + int(head_partial)

    @property
    def num_intervention_transitions(self) -> int:
        """Sampleable transitions whose action came from the human operator."""
        return self._n_cand_int - self._edge_invalid()[1]

    @property
    def num_demo_transitions(self) -> int:
        """Sampleable transitions recorded in demo mode."""
        return self._n_cand_demo - self._edge_invalid()[2]

    @property
    def total_steps_added(self) -> int:
        """Steps ever added (evicted ones included); the global id of the next step."""
        return self._total

    @property
    def episodes_added(self) -> int:
        return self._episodes_added

    @property
    def episode_open(self) -> bool:
        return self._open_start is not None

    @property
    def num_unflushed_steps(self) -> int:
        return self._total - self._durable_total

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    def frame_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The ring's ``images`` (capacity, V, 3, H, W) uint8 and ``low_dim`` (capacity, D)
        float32 arrays, indexed by slot (memory-mapped; for readers such as a device mirror,
        which must not write them). Slot ``g % capacity`` holds step ``g``."""
        return self._a["images"], self._a["low_dim"]

    # ------------------------------------------------------------------ writing
    @staticmethod
    def _check_rows(name: str, value: Any, n: int, shape: tuple[int, ...], *,
                    image: bool = False) -> np.ndarray:
        """``value`` as ``n`` rows of ``shape`` (float32 unless ``image``), every value
        finite; ValueError naming the field otherwise."""
        if value is None:
            raise ValueError(f"{name}: expected an array of shape {shape}, got None")
        arr = np.asarray(value)
        if image:
            if arr.dtype != np.uint8:
                raise ValueError(f"{name}: dtype must be uint8 (0..255 frames), got {arr.dtype} "
                                 f"with shape {arr.shape[1:]}")
        elif not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name}: dtype must be floating (stored as float32), got "
                             f"{arr.dtype}")
        if arr.shape != (n, *shape):
            got = arr.shape[1:] if arr.ndim and arr.shape[0] == n else arr.shape
            raise ValueError(f"{name}: shape {got} != expected {shape}")
        if not image:
            arr = arr.astype(np.float32, copy=False)
            # finite iff the dot product with zeros is (inf * 0 and NaN * 0 are NaN): one
            # call instead of isfinite + all
            if arr.size and not math.isfinite(float(np.dot(arr.reshape(-1),
                                                            np.zeros(arr.size, arr.dtype)))):
                bad = np.flatnonzero(~np.isfinite(arr).reshape(n, -1).all(axis=1))
                raise ValueError(f"{name}: contains NaN or Inf (shape {shape}"
                                 f"{f', step {int(bad[0])} of {n}' if n > 1 else ''}): "
                                 f"{np.flatnonzero(~np.isfinite(arr[bad[0]]))[:8].tolist()} ...")
        return arr

    def add_step(
        self,
        images: np.ndarray,
        low_dim: np.ndarray,
        action: np.ndarray | None,
        reward: float,
        *,
        is_first: bool,
        is_last: bool,
        terminated: bool,
        is_intervention: bool = False,
        is_demo: bool = False,
        sampleable: bool = True,
    ) -> None:
        """Append one dm_env step (observation ``o_k``; ``a_{k-1}``, ``r_k`` unless first).

        ``action`` may be ``None`` (or empty) on a first step; on a first step ``reward`` is
        ignored and ``is_intervention``/``is_demo``/``sampleable`` are not stored (they describe
        the transition ending at this step, and there is none). ``sampleable=False`` keeps the
        transition ``(o_{k-1}, a_{k-1}) -> o_k`` out of :meth:`sample` (context-only steps, see
        :class:`MixedReplay`). Not durable until :meth:`flush`. The same as :meth:`add_steps`
        of one step (tested), without its array bookkeeping.
        """
        is_first, is_last, terminated = bool(is_first), bool(is_last), bool(terminated)
        if terminated and not is_last:
            raise ValueError("terminated=True requires is_last=True")
        if is_first != (self._open_start is None):
            raise self._order_error(is_first, self._open_start)
        imgs = self._check_one("images", images, self.image_shape, image=True)
        low = self._check_one("low_dim", low_dim, (self.low_dim_size,))
        if is_first:
            if action is not None and np.size(action) != 0:
                self._check_one("action", action, (self.action_size,))
            act = np.zeros(self.action_size, np.float32)
            rew = 0.0
        else:
            act = self._check_one("action", action, (self.action_size,))
            try:
                rew = float(reward)
            except (TypeError, ValueError) as e:
                raise ValueError(f"reward: expected a real scalar, got {reward!r}") from e
            if not math.isfinite(rew):
                raise ValueError(f"reward: must be finite, got {rew}")

        # One step: the per-field writes of add_steps' ring segments, with scalars (the live
        # learner's path, one call per received step; tested equal to add_steps).
        g = self._total
        if g - self.capacity >= self._lo:
            self._evict_for_write(g)
        flags = (_FIRST * is_first) | (_LAST * is_last) | (_TERMINATED * terminated)
        if not is_first:
            flags |= (_INTERVENTION * bool(is_intervention)) | (_DEMO * bool(is_demo))
            flags |= _NO_SAMPLE * (not sampleable)
        ep_start = g if is_first else self._open_start
        slot = g % self.capacity
        mm = self._a
        mm["step_id"][slot] = -1  # invalidate first: a torn slot is never mistaken for valid
        mm["images"][slot] = imgs
        mm["low_dim"][slot] = low
        mm["action"][slot] = act
        mm["reward"][slot] = rew
        mm["ep_start"][slot] = ep_start
        mm["flags"][slot] = flags
        mm["step_id"][slot] = g
        self._total = g + 1
        if flags & _FIRST:  # _count_flags for one step, without numpy
            self._n_first += 1
        elif not flags & _NO_SAMPLE:
            self._n_cand += 1
            self._n_cand_int += bool(flags & _INTERVENTION)
            self._n_cand_demo += bool(flags & _DEMO)
        if is_first:
            self._episodes_added += 1
        self._open_start = None if is_last else ep_start

    @staticmethod
    def _order_error(is_first: bool, open_start: Any, at: str = "") -> ValueError:
        """A step that does not fit the episode order: a first step while ``open_start``'s
        episode is open, or a later step while none is."""
        if is_first:
            return ValueError(f"is_first step while episode starting at step {open_start} is "
                              f"still open: finish it with is_last=True or end_episode(){at}")
        return ValueError("non-first step without an open episode: the first step of an "
                          f"episode must have is_first=True{at}")

    def _check_one(self, name: str, value: Any, shape: tuple[int, ...], *,
                   image: bool = False) -> np.ndarray:
        """:meth:`_check_rows` of one row."""
        rows = None if value is None else np.asarray(value)[None]
        return self._check_rows(name, rows, 1, shape, image=image)[0]

    def add_steps(
        self,
        images: np.ndarray,
        low_dim: np.ndarray,
        action: np.ndarray | None,
        reward: np.ndarray,
        *,
        is_first: Any,
        is_last: Any,
        terminated: Any,
        is_intervention: Any = False,
        is_demo: Any = False,
        sampleable: Any = True,
    ) -> None:
        """Append ``T`` consecutive steps at once: arrays with a leading step axis (images
        ``(T, V, 3, H, W)``, low_dim ``(T, D)``, action ``(T, A)``, reward ``(T,)``; first
        steps' actions and rewards are ignored) and flags as ``(T,)`` arrays or scalars. The
        same as ``T`` calls of :meth:`add_step`, with every step checked before any is
        written: a refused batch leaves the buffer as it was. One copy per field and ring
        segment (what bag ingest uses: an episode per call). Not durable until :meth:`flush`.
        """
        imgs = np.asarray(images)
        if imgs.ndim < 1 or imgs.shape[0] < 1:
            raise ValueError(f"images: expected (T, *{self.image_shape}) with T >= 1, got "
                             f"shape {imgs.shape}")
        n = int(imgs.shape[0])

        def flag(name: str, value: Any) -> np.ndarray:
            arr = np.asarray(value)
            if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
                raise ValueError(f"{name}: expected booleans, got {value!r}")
            try:
                return np.broadcast_to(arr.astype(bool), (n,))
            except ValueError:
                raise ValueError(f"{name}: {arr.shape} values for {n} steps") from None

        first, last, term = flag("is_first", is_first), flag("is_last", is_last), \
            flag("terminated", terminated)
        bad = np.flatnonzero(term & ~last)
        if bad.size:
            raise ValueError("terminated=True requires is_last=True"
                             + (f" (step {int(bad[0])} of {n})" if n > 1 else ""))
        # Step k opens an episode iff none is open before it: the buffer's open episode for
        # k = 0, else whether step k - 1 closed one.
        none_open = np.concatenate([[self._open_start is None], last[:-1]])
        bad = np.flatnonzero(first != none_open)
        if bad.size:
            k = int(bad[0])
            raise self._order_error(bool(first[k]), self._open_start if k == 0 else
                                    "earlier in this batch", f" (step {k} of {n})" if n > 1
                                    else "")
        imgs = self._check_rows("images", imgs, n, self.image_shape, image=True)
        low = self._check_rows("low_dim", low_dim, n, (self.low_dim_size,))
        if action is None and first.all():
            act = np.zeros((n, self.action_size), np.float32)
        else:
            act = self._check_rows("action", action, n, (self.action_size,))
        try:
            rew = np.asarray(reward, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"reward: expected real scalars, got {reward!r}") from e
        if rew.shape != (n,):
            raise ValueError(f"reward: {rew.shape[0]} values for {n} steps")
        rew = np.where(first, 0.0, rew).astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(rew))
        if bad.size:
            raise ValueError(f"reward: must be finite, got {float(rew[bad[0]])}"
                             + (f" (step {int(bad[0])} of {n})" if n > 1 else ""))
        if first.any():
            act = np.where(first[:, None], np.float32(0), act)
        mid = ~first  # the transition flags describe a transition ending at the step
        flags = ((_FIRST * first) | (_LAST * last) | (_TERMINATED * term)
                 | (_INTERVENTION * (flag("is_intervention", is_intervention) & mid))
                 | (_DEMO * (flag("is_demo", is_demo) & mid))
                 | (_NO_SAMPLE * (~flag("sampleable", sampleable) & mid))).astype(np.uint8)
        ids = self._total + np.arange(n, dtype=np.int64)
        starts = np.maximum.accumulate(np.where(first, ids, -1))
        if self._open_start is not None:
            starts[starts < 0] = self._open_start

        mm, cap, k = self._a, self.capacity, 0
        while k < n:  # ring segments: contiguous slots, evicting (and flushing) as needed
            g = self._total
            if g - cap >= self._lo:
                self._evict_for_write(g)
            slot = g % cap
            m = min(n - k, self._lo + cap - g, cap - slot)
            dst, src = slice(slot, slot + m), slice(k, k + m)
            mm["step_id"][dst] = -1  # invalidate first: a torn slot is never taken for valid
            if m >= _PWRITE_ROWS:
                self._pwrite_rows("images", slot, imgs[src])
            else:
                mm["images"][dst] = imgs[src]
            mm["low_dim"][dst] = low[src]
            mm["action"][dst] = act[src]
            mm["reward"][dst] = rew[src]
            mm["ep_start"][dst] = starts[src]
            mm["flags"][dst] = flags[src]
            mm["step_id"][dst] = ids[src]
            self._total = g + m
            self._count_flags(flags[src], +1)
            self._episodes_added += int(np.count_nonzero(first[src]))
            k += m
            self._open_start = None if last[k - 1] else int(starts[k - 1])

    def _pwrite_rows(self, name: str, slot: int, rows: np.ndarray) -> None:
        """Write whole rows of a ring file at ``slot`` through its descriptor: the same
        page-cache pages the memmap shows, without a page fault per 4 KB of a fresh ring."""
        mm = self._mm[name]
        data = memoryview(np.ascontiguousarray(rows, dtype=mm.dtype)).cast("B")
        offset = mm.offset + slot * mm.strides[0]
        while data:
            written = os.pwrite(self._fds[name], data, offset)
            data, offset = data[written:], offset + written

    def _evict_for_write(self, g: int) -> None:
        """Drop the oldest ``evict_chunk`` steps, then flush.

        Step ``g`` overwrites the slot of step ``g - capacity``. Evicting a chunk and flushing
        before that write keeps ``state.json`` from ever describing a slot that an unflushed
        write may have changed (safe across SIGKILL and power loss), at the cost of up to
        ``evict_chunk`` steps of capacity and one flush per chunk once full.
        """
        new_lo = min(g - self.capacity + self.evict_chunk, g)
        ids = np.arange(self._lo, new_lo, dtype=np.int64)
        self._count_flags(self._a["flags"][self._slots(ids)], -1)
        self._lo = new_lo
        self.flush()

    def end_episode(self, terminated: bool = False) -> bool:
        """Close the open episode at its last stored step (truncation unless ``terminated``).

        For episodes cut without an ``is_last`` step (driver fault, reset, lost stream).
        Returns False when no episode was open.
        """
        if self._open_start is None:
            return False
        slot = (self._total - 1) % self.capacity
        self._a["flags"][slot] |= _LAST | (_TERMINATED * bool(terminated))
        self._open_start = None
        return True

    def read_step(self, step_id: int) -> dict[str, Any]:
        """One stored step by global id (``total_steps_added - num_steps <= id < total``)."""
        lo, hi = self._lo, self._total
        if not lo <= int(step_id) < hi:
            raise IndexError(f"step {step_id} not stored (stored: [{lo}, {hi}))")
        s = int(step_id) % self.capacity
        f = int(self._a["flags"][s])
        return {
            "images": self._a["images"][s].copy(),
            "low_dim": self._a["low_dim"][s].copy(),
            "action": self._a["action"][s].copy(),
            "reward": float(self._a["reward"][s]),
            "episode_start": int(self._a["ep_start"][s]),
            "is_first": bool(f & _FIRST),
            "is_last": bool(f & _LAST),
            "terminated": bool(f & _TERMINATED),
            "is_intervention": bool(f & _INTERVENTION),
            "is_demo": bool(f & _DEMO),
            "sampleable": not f & _NO_SAMPLE,
        }

    # ------------------------------------------------------------------ sampling
    def _valid(self, t: np.ndarray) -> np.ndarray:
        """Whether transitions starting at global steps ``t`` can be sampled (vectorised)."""
        t = np.asarray(t, dtype=np.int64)
        lo, hi, cap = self._lo, self._total, self.capacity
        ok = (t >= lo) & (t + 1 < hi)
        tc = np.clip(t, lo, max(hi - 2, lo))
        f_next = self._a["flags"][(tc + 1) % cap]
        ok &= (f_next & (_FIRST | _NO_SAMPLE)) == 0
        ep = self._a["ep_start"][tc % cap]
        ok &= np.maximum(t - (self.frame_stack - 1), ep) >= lo
        if self._open_start is not None:
            ok &= (t < self._open_start) | (t + self.nstep <= hi - 1)
        return ok

    def _draw(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform draw over valid transitions: rejection sampling, exact enumeration fallback."""
        lo, hi = self._lo, self._total
        out = np.empty(0, np.int64)
        for _ in range(8):
            cand = rng.integers(lo, hi - 1, size=max(2 * batch_size, 64))
            out = np.concatenate([out, cand[self._valid(cand)]])
            if out.size >= batch_size:
                return out[:batch_size]
        all_t = np.arange(lo, hi - 1, dtype=np.int64)
        valid = all_t[self._valid(all_t)]
        return rng.choice(valid, size=batch_size, replace=True)

    def sample(self, batch_size: int, rng: np.random.Generator | None = None
               ) -> dict[str, np.ndarray]:
        """Sample ``batch_size`` transitions uniformly (with replacement).

        Returns ``rgb`` uint8 (B, V, T*3, H, W) and ``low_dim`` float32 (B, T*D) stacked oldest
        first, ``action`` (B, A) = a_t, ``reward`` (B,) n-step discounted sum, ``discount``
        (B,) = gamma**n' (0 when the episode terminated within the window), ``next_rgb``,
        ``next_low_dim`` (stack at t+n'), ``is_intervention``, ``is_demo`` (B,) bool.
        """
        rng = np.random.default_rng() if rng is None else rng
        return self.gather_frames(self.sample_plan(batch_size, rng))

    def sample_plan(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw ``batch_size`` transitions and say where their frames are, without reading
        them: :meth:`sample` is ``gather_frames`` over this plan, and a device mirror of the
        frames (``learning/device_replay.py``) gathers from the same plan on the GPU.

        Returns ``slots`` int64 (2, B, T) (ring slots of the current and next stacks, oldest
        first), the small per-transition arrays of :meth:`sample` (``action``, ``reward``,
        ``discount``, ``is_intervention``, ``is_demo``) and ``t`` (the global step ids).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(self) == 0:
            raise ValueError("cannot sample: the replay buffer holds no sampleable transition")
        t = self._draw(int(batch_size), rng)
        mm, cap, T, B = self._a, self.capacity, self.frame_stack, t.shape[0]
        ep = mm["ep_start"][t % cap]
        # n-step return over the steps available in the episode.
        reward = np.zeros(B, np.float64)
        nprime = np.zeros(B, np.int64)
        alive = np.ones(B, bool)
        term = np.zeros(B, bool)
        for i in range(1, self.nstep + 1):
            s = np.minimum(t + i, self._total - 1) % cap
            r = mm["reward"][s]
            f = mm["flags"][s]
            reward += np.where(alive, self.discount ** (i - 1) * r, 0.0)
            nprime += alive
            term |= alive & ((f & _TERMINATED) != 0)
            alive &= (f & _LAST) == 0
        discount = np.where(term, 0.0, float(self.discount) ** nprime)
        # Stacks oldest first; frames before the episode start repeat o_0.
        offs = np.arange(T - 1, -1, -1, dtype=np.int64)
        cur = np.maximum(t[:, None] - offs, ep[:, None])
        nxt = np.maximum((t + nprime)[:, None] - offs, ep[:, None])
        f1 = mm["flags"][(t + 1) % cap]
        return {
            "t": t,
            "slots": np.stack([cur, nxt]) % cap,
            "action": mm["action"][(t + 1) % cap],
            "reward": reward.astype(np.float32),
            "discount": discount.astype(np.float32),
            "is_intervention": (f1 & _INTERVENTION) != 0,
            "is_demo": (f1 & _DEMO) != 0,
        }

    def gather_frames(self, plan: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch of :meth:`sample` for a :meth:`sample_plan` (reads the frames)."""
        mm, T = self._a, self.frame_stack
        _, B, _ = plan["slots"].shape
        idx = plan["slots"].reshape(-1)
        V, C, H, W = self.image_shape
        img = mm["images"][idx].reshape(2, B, T, V, C, H, W).transpose(0, 1, 3, 2, 4, 5, 6)
        img = np.ascontiguousarray(img).reshape(2, B, V, T * C, H, W)
        low = mm["low_dim"][idx].reshape(2, B, T * self.low_dim_size)
        return {
            "rgb": img[0],
            "low_dim": low[0],
            "action": plan["action"],
            "reward": plan["reward"],
            "discount": plan["discount"],
            "next_rgb": img[1],
            "next_low_dim": low[1],
            "is_intervention": plan["is_intervention"],
            "is_demo": plan["is_demo"],
        }


class MixedReplay:
    """Online + offline buffers sampled with an exact split (HIL-SERL / RLPD style).

    ``sample(B)`` takes ``round(B * offline_fraction)`` (half up) transitions from ``offline``
    when it is non-empty and the rest from ``online``; all from ``online`` when ``offline`` is
    empty, all from ``offline`` when ``online`` is empty. The result is the online part
    followed by the offline part, with an extra ``is_offline`` (B,) bool.

    Intervention and demo transitions belong in BOTH buffers; :meth:`add_step_routed` does
    that from the plain step stream: every step goes to ``online``; ``offline`` receives
    segments that hold each flagged transition with its exact context: the ``frame_stack``
    steps before it (written as non-sampleable context, the first as ``is_first`` so that the
    offline stack equals the online one) and at least ``nstep`` steps after it (so the n-step
    return and next observation are the online ones). Only flagged transitions are sampleable
    in ``offline``. A segment stays open across short gaps and is closed (as a truncation at
    its last step, which only context transitions see) after ``nstep - 1 + frame_stack``
    unflagged steps, or by the episode's real end.
    """

    def __init__(self, online: ReplayBuffer, offline: ReplayBuffer,
                 offline_fraction: float = 0.5) -> None:
        if not 0.0 <= float(offline_fraction) <= 1.0:
            raise ValueError(f"offline_fraction must be in [0, 1], got {offline_fraction}")
        keys = ("image_shape", "low_dim_size", "action_size", "frame_stack", "nstep", "discount")
        diffs = [f"{k}: online {online.spec[k]!r} != offline {offline.spec[k]!r}"
                 for k in keys if online.spec[k] != offline.spec[k]]
        if diffs:
            raise ValueError("online and offline buffers differ: " + "; ".join(diffs))
        self.online = online
        self.offline = offline
        self.offline_fraction = float(offline_fraction)
        self._ctx: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=online.frame_stack)
        self._segment_open = False
        self._k = 0  # index of the incoming step within the current episode
        self._last_flag_k = -1
        self._close_after = online.nstep - 1 + online.frame_stack

    def split(self, batch_size: int) -> tuple[int, int]:
        """(n_online, n_offline) that :meth:`sample` would draw now."""
        n_on_avail, n_off_avail = len(self.online), len(self.offline)
        if n_on_avail == 0 and n_off_avail == 0:
            raise ValueError("cannot sample: both replay buffers are empty")
        if n_off_avail == 0:
            return batch_size, 0
        if n_on_avail == 0:
            return 0, batch_size
        n_off = int(math.floor(batch_size * self.offline_fraction + 0.5))
        return batch_size - n_off, n_off

    def sample_plans(self, batch_size: int, rng: np.random.Generator
                     ) -> list[tuple[ReplayBuffer, dict[str, np.ndarray]]]:
        """The draws of :meth:`sample` (online part first), as ``(buffer, plan)`` pairs of
        :meth:`ReplayBuffer.sample_plan`, frames not read."""
        n_on, n_off = self.split(int(batch_size))
        parts = []
        if n_on:
            parts.append((self.online, self.online.sample_plan(n_on, rng)))
        if n_off:
            parts.append((self.offline, self.offline.sample_plan(n_off, rng)))
        return parts

    def sample(self, batch_size: int, rng: np.random.Generator | None = None
               ) -> dict[str, np.ndarray]:
        rng = np.random.default_rng() if rng is None else rng
        plans = self.sample_plans(batch_size, rng)
        parts = [buf.gather_frames(plan) for buf, plan in plans]
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out["is_offline"] = self.offline_mask(plans)
        return out

    def offline_mask(self, plans: list[tuple[ReplayBuffer, dict[str, np.ndarray]]]
                     ) -> np.ndarray:
        """``is_offline`` (B,) bool of a batch made of :meth:`sample_plans` ``plans``."""
        return np.concatenate(
            [np.full(plan["t"].shape[0], buf is self.offline) for buf, plan in plans])

    def flush(self) -> None:
        self.online.flush()
        self.offline.flush()

    def close(self) -> None:
        self.online.close()
        self.offline.close()

    def add_step_routed(
        self,
        images: np.ndarray,
        low_dim: np.ndarray,
        action: np.ndarray | None,
        reward: float,
        *,
        is_first: bool,
        is_last: bool,
        terminated: bool,
        is_intervention: bool = False,
        is_demo: bool = False,
    ) -> None:
        """Add a step to ``online``; mirror intervention/demo transitions into ``offline``."""
        step = dict(images=images, low_dim=low_dim, action=action, reward=reward,
                    is_first=is_first, is_last=is_last, terminated=terminated,
                    is_intervention=is_intervention, is_demo=is_demo)
        self.online.add_step(**step)  # validates; nothing below runs on a refused step
        if is_first:
            self._ctx.clear()
            self._k = 0
            self._segment_open = False
            self._last_flag_k = -1
            if self.offline.episode_open:  # a previous segment cut without a real end
                self.offline.end_episode()
        flagged = (not is_first) and bool(is_intervention or is_demo)
        if flagged and not self._segment_open:
            for j, c in enumerate(self._ctx):
                if j == 0:
                    self.offline.add_step(c["images"], c["low_dim"], None, 0.0, is_first=True,
                                          is_last=False, terminated=False)
                else:
                    self.offline.add_step(c["images"], c["low_dim"], c["action"], c["reward"],
                                          is_first=False, is_last=False, terminated=False,
                                          is_intervention=c["is_intervention"],
                                          is_demo=c["is_demo"], sampleable=False)
            self._segment_open = True
            if not self._ctx:  # cannot happen for a non-first step, kept for safety
                raise RuntimeError("flagged step without context")
        if self._segment_open:
            self.offline.add_step(**step, sampleable=flagged)
            if flagged:
                self._last_flag_k = self._k
            if is_last:
                self._segment_open = False
            elif self._k - self._last_flag_k >= self._close_after:
                self.offline.end_episode()
                self._segment_open = False
        if not is_last:
            self._ctx.append(dict(
                images=np.array(images, dtype=np.uint8, copy=True),
                low_dim=np.array(low_dim, dtype=np.float32, copy=True),
                action=None if action is None else np.array(action, np.float32, copy=True),
                reward=float(reward), is_intervention=bool(is_intervention),
                is_demo=bool(is_demo)))
        self._k += 1
