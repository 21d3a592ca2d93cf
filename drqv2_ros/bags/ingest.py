"""Demonstration bags -> replay buffer: rebuild transitions from recorded ``step`` messages.

    drqv2-ros ingest bags/demo_01 bags/demo_02 --buffer runs/offline --checkpoint ckpt/
    summary = ingest_bags([...], offline_buffer)          # what the learner node calls

Reads ``drqv2_ros/msg/Step`` messages from rosbag2 bags (mcap or sqlite3, written by
``ros2 bag record`` or ``drqv2-ros record``), decodes them with the codec the learner uses
live (:mod:`drqv2_ros.observation.step_record`: the same checks, the same bits), groups them
into episodes and adds the complete episodes, in bag order (= episode order), to a
:class:`~drqv2_ros.learning.replay_buffer.ReplayBuffer`, one ``add_steps`` per episode,
durable at the end. Deterministic: the same bags give the same buffer contents.

An ingest completes or changes nothing: nothing is durable before its one flush at the
end, so an ingest that fails (a bad record, an unreadable bag) or is killed half way leaves
the buffer as the last flush left it; a failing ingest abandons the buffer object (closed
without flushing) and raises :class:`IngestError`, naming the bag, the storage, the record
and the reason. Where the bags hold more steps than the ring has free slots (the ingest
would evict stored steps), every bag is first read through, without storing, so that a bad
record refuses the ingest before anything is evicted. The command (``drqv2-ros ingest``)
builds a new buffer in a temporary sibling folder, renamed into place once complete.

Bad input is refused or salvaged, never silently half-used:
  * a bag without the ``step`` topic is refused, naming it (and what the bag has);
  * steps whose image size / low-dim / action size differ from the target (checkpoint or
    buffer) are refused before anything is written, with both shapes;
  * a truncated or partly corrupt bag (recorder killed, disk full, chopped file) gives up
    what is whole: complete episodes are ingested, incomplete ones are skipped, and the
    summary says what was lost and why.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drqv2_ros.atomic_write import atomic_write_json
from drqv2_ros.bags.episodes import (
    EpisodeData,
    ReadReport,
    ShapeMismatchError,
    TargetShapes,
    check_bags,
    count_step_messages,
    read_episodes,
)
from drqv2_ros.bags.reader import BagError, storage_files

__all__ = ["IngestError", "IngestSummary", "ingest_bags", "ingest_into_replay"]


class IngestError(BagError):
    """An ingest that failed and changed nothing; the message says where and why."""


# =====================================================================================
# Ingest
# =====================================================================================

@dataclass
class IngestSummary:
    bags: list[str]
    episodes: int
    transitions: int
    steps: int
    successes: int
    intervention_transitions: int
    demo_transitions: int
    seconds: float
    skipped: list[str]
    lost: list[str]
    notes: list[str]
    dropped_steps: int
    buffer: str = ""

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def transitions_per_second(self) -> float:
        return self.transitions / self.seconds if self.seconds > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["success_rate"] = self.success_rate
        d["transitions_per_second"] = self.transitions_per_second
        return d

    def __str__(self) -> str:
        extra = []
        if self.skipped:
            extra.append(f"{len(self.skipped)} episode(s) skipped")
        if self.lost:
            extra.append(f"damage in {len(self.lost)} bag(s)")
        if self.notes:
            extra.append(f"{len(self.notes)} note(s)")
        return self.format().splitlines()[0] + (" [" + ", ".join(extra) + "]" if extra else "")

    def format(self) -> str:
        lines = [
            f"ingested {len(self.bags)} bag(s){' into ' + self.buffer if self.buffer else ''}: "
            f"{self.episodes} episodes, {self.transitions} transitions ({self.steps} steps), "
            f"success rate {100 * self.success_rate:.1f}% ({self.successes}/{self.episodes}), "
            f"{self.intervention_transitions} intervention and {self.demo_transitions} demo "
            f"transitions, {self.seconds:.2f} s "
            f"({self.transitions_per_second:.0f} transitions/s)"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} episode(s) ({self.dropped_steps} steps):")
            lines += [f"  {s}" for s in self.skipped]
        if self.lost:
            lines.append("lost (bag damage):")
            lines += [f"  {s}" for s in self.lost]
        if self.notes:
            lines.append("notes:")
            lines += [f"  {s}" for s in self.notes[:20]]
            if len(self.notes) > 20:
                lines.append(f"  ... and {len(self.notes) - 20} more")
        return "\n".join(lines)


def _demo_flags(episode: EpisodeData, mode: str) -> np.ndarray:
    recorded = episode.batch.is_demo
    if mode == "keep":
        return recorded
    if mode == "all":
        return np.ones_like(recorded)
    # auto: an episode whose steps carry no demo flag was recorded without demo mode but is
    # ingested as a demonstration; one that carries flags keeps them.
    return recorded if recorded[1:].any() else np.ones_like(recorded)


def ingest_bags(
    bags: Sequence[str | os.PathLike],
    buffer: Any,
    *,
    step_topic: str | None = None,
    demo_flags: str = "auto",
    target: TargetShapes | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Add the complete episodes of ``bags`` (in the given order) to ``buffer``.

    ``buffer`` is a :class:`~drqv2_ros.learning.replay_buffer.ReplayBuffer` (the learner's
    offline buffer); its shapes are the target unless ``target`` (e.g. from the checkpoint)
    is given, in which case both must agree. ``demo_flags``: ``"auto"`` (default: episodes
    are flagged ``is_demo`` unless their steps carry demo flags, which are then kept),
    ``"keep"`` (as recorded) or ``"all"``. Intervention flags are always kept.

    Raises :class:`BagError` (missing topic, unreadable bag) or :class:`ShapeMismatchError`
    before anything is added; salvageable damage is reported in the summary instead. Each
    episode is added in one :meth:`add_steps`; everything added is durable on return."""
    if demo_flags not in ("auto", "keep", "all"):
        raise ValueError(f"demo_flags must be auto, keep or all, got {demo_flags!r}")
    if not bags:
        raise BagError("no bags given")
    buf_target = TargetShapes.from_buffer(buffer)
    if target is not None:
        diff = [k for k in ("image_shape", "low_dim_size", "action_size")
                if tuple(np.atleast_1d(getattr(target, k)))
                != tuple(np.atleast_1d(getattr(buf_target, k)))]
        if diff:
            raise ShapeMismatchError(f"{buf_target.source} does not match {target.source}: "
                                     f"buffer has {buf_target.describe()}; "
                                     f"{target.source} has {target.describe()}")
    else:
        target = buf_target
    if getattr(buffer, "episode_open", False):
        raise BagError(f"{buf_target.source} has an open episode: finish it before ingesting")
    t0 = time.perf_counter()
    where = str(getattr(buffer, "directory", "the buffer"))
    checked = check_bags(bags, target, step_topic=step_topic)  # refuses before any write
    report = ReadReport()
    episodes = transitions = steps = successes = n_int = n_demo = 0
    free = int(getattr(buffer, "capacity", 0)) - int(getattr(buffer, "num_steps", 0))
    if count_step_messages(checked) > free:
        # storing would evict steps of the buffer: read every bag through first, so that a
        # bad record refuses the ingest before anything stored is overwritten
        try:
            for _ep in read_episodes(bags, target=target, report=ReadReport(),
                                     checked=checked):
                pass
        except Exception as exc:
            raise IngestError(f"ingest refused, nothing stored ({where} unchanged): "
                              f"{_reason(exc)}") from exc

    def store(b: Any, flags: np.ndarray) -> None:
        buffer.add_steps(b.images, b.low_dim, b.action, b.reward, is_first=b.is_first,
                         is_last=b.is_last, terminated=b.terminated,
                         is_intervention=b.is_intervention, is_demo=flags)
        buffer.write_back()  # the disk writes overlap the reading of the next episodes

    # Episode k is stored by a second thread while episode k + 1 is read: the copy into the
    # ring (pwrite) runs without the GIL. One episode in flight; the buffer is only touched
    # by that thread until the end (its errors surface here, at the next episode).
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="ingest-store") as pool:
            stored: Future | None = None
            failed: BaseException | None = None
            try:
                for ep in read_episodes(bags, target=target, report=report,
                                        progress=progress, checked=checked):
                    b, flags = ep.batch, _demo_flags(ep, demo_flags)
                    if stored is not None:
                        stored.result()
                    stored = pool.submit(store, b, flags)
                    episodes += 1
                    steps += len(b)
                    transitions += ep.transitions
                    successes += ep.success
                    n_int += int(b.is_intervention[1:].sum())
                    n_demo += int(flags[1:].sum())
            except BaseException as exc:
                failed = exc
            # never leave the store thread writing while the buffer is abandoned
            if stored is not None:
                try:
                    stored.result()
                except BaseException as exc:
                    failed = failed or exc
            if failed is not None:
                raise failed
        buffer.flush()
    except BaseException as exc:
        abandon = getattr(buffer, "abandon", None)
        if abandon is not None:
            abandon()  # nothing of this ingest becomes durable
        if isinstance(exc, Exception):
            raise IngestError(f"ingest failed, nothing stored ({where} left as it was): "
                              f"{_reason(exc)}") from exc
        raise
    summary = IngestSummary(
        bags=report.bags, episodes=episodes, transitions=transitions, steps=steps,
        successes=successes, intervention_transitions=n_int, demo_transitions=n_demo,
        seconds=time.perf_counter() - t0, skipped=report.skipped, lost=report.lost,
        notes=report.notes, dropped_steps=report.dropped_steps,
        buffer=str(getattr(buffer, "directory", "")))
    if log is not None:
        log(summary.format())
    return summary


def _reason(exc: BaseException) -> str:
    """What failed, for the message: the reader's own errors name the bag, the storage and
    the record; anything else gets its type."""
    text = str(exc)
    return text if isinstance(exc, BagError) else f"{type(exc).__name__}: {text}"


# =====================================================================================
# Learner entry point: ingest each bag once per buffer
# =====================================================================================

LEDGER_FILE = "ingested_bags.json"


def _fingerprint(path: Path) -> list[list]:
    files = storage_files(path) if path.exists() else []
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def ingest_into_replay(
    bags: Sequence[str | os.PathLike],
    buffer: Any,
    state_dir: str | os.PathLike | None = None,
    **kw: Any,
) -> IngestSummary:
    """:func:`ingest_bags` for a persistent buffer that outlives runs (the learner's offline
    buffer): bags already ingested into this buffer (recorded in
    ``state_dir/ingested_bags.json``, same files, same sizes and mtimes) are not added again
    when the learner restarts. Without ``state_dir`` every bag is ingested."""
    ledger_path = Path(state_dir) / LEDGER_FILE if state_dir is not None else None
    ledger: dict[str, Any] = {}
    if ledger_path is not None and ledger_path.is_file():
        try:
            ledger = json.loads(ledger_path.read_text())
        except (OSError, json.JSONDecodeError):
            ledger = {}
        # A buffer that holds fewer steps than when the ledger was written was recreated.
        if int(ledger.get("buffer_total_steps", 0)) > int(buffer.total_steps_added):
            ledger = {}
    done = ledger.get("bags", {})
    todo, notes = [], []
    for bag in bags:
        key = str(Path(bag).resolve())
        if key in done and done[key] == _fingerprint(Path(bag)):
            notes.append(f"{Path(bag).name}: already ingested into this buffer, not added again")
        else:
            todo.append(bag)
    if todo:
        summary = ingest_bags(todo, buffer, **kw)
    else:
        summary = IngestSummary([], 0, 0, 0, 0, 0, 0, 0.0, [], [], [], 0,
                                str(getattr(buffer, "directory", "")))
    summary.notes[:0] = notes
    if ledger_path is not None and todo:
        for bag in todo:
            done[str(Path(bag).resolve())] = _fingerprint(Path(bag))
        ledger = {"bags": done, "buffer_total_steps": int(buffer.total_steps_added)}
        atomic_write_json(ledger_path, ledger, sort_keys=False)
    return summary
