"""Steps of several actors into one learner's replay, episodes kept apart.

ROS-free. The replay ring (``learning/replay_buffer.py``) rebuilds frame stacks and n-step
returns from consecutive steps of one episode, so an episode must be written contiguously.
Several actors (robots, sim drivers) stream their episodes at the same time; writing their
steps in arrival order would interleave them and fabricate transitions across actors.

:class:`StepIntake` keeps them apart: one actor at a time *holds* the ring and its steps are
written as they arrive (a single actor always holds it, so its steps are stored at once, as
before); the steps of the other actors' episodes are *staged* in memory, in order, and
written whole (and then live) as soon as the ring is free, oldest staged episode first. So
every transition, its frame stack and its n-step return come from one episode of one actor.

Each actor's stream is checked for continuity (the Step's episode number and index): a
duplicate or reordered step is dropped; a gap inside an episode (steps lost on the way: a
link cut longer than DDS could cover, a learner paused past its history) closes the episode
as a truncation at the last good step, counts the missing steps as *lost* and drops the rest
of that episode; a step of another episode while one is open (its end was lost) closes the
open one likewise. Nothing is ever stitched across a gap.

Staging is bounded (``max_staged_steps`` per actor, frames of one step each): past that the
actor's episode is cut (closed as a truncation at its last staged step, which stays
sampleable with bootstrapping) and the rest of that episode is dropped, counted under
"staging full". Any episode cut short (a new first step while it was open) is closed the
same way; nothing is stitched across a gap. Every dropped step is counted per actor with its
reason.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from drqv2_ros.learning.replay_buffer import MixedReplay
from drqv2_ros.observation.step_record import StepRecord

__all__ = ["ActorCounts", "StepIntake"]


@dataclass
class ActorCounts:
    """What the learner did with one actor's steps."""

    received: int = 0
    stored: int = 0
    interventions: int = 0
    episodes: int = 0  # episodes whose last step was stored (cut ones included)
    staged: int = 0  # steps waiting for the ring now
    lost: int = 0  # steps that never arrived (index gaps inside an episode)
    lost_episodes: int = 0  # episode numbers skipped by the stream
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


@dataclass
class _Episode:
    steps: list[StepRecord] = field(default_factory=list)
    complete: bool = False  # its last step arrived, or it was cut


@dataclass
class _Actor:
    counts: ActorCounts = field(default_factory=ActorCounts)
    staged: collections.deque[_Episode] = field(default_factory=collections.deque)
    open: bool = False  # an episode of this actor is in progress (staged or live)
    skipping: bool = False  # drop until the next first step (after a cut)
    last: tuple[int, int] | None = None  # (episode, index) of the last accepted step
    seen_episode: int | None = None  # highest episode number seen in the stream
    stored_before: int | None = None  # after a restart: stamp of the last durable step


class StepIntake:
    """Assembles the step streams of any number of actors into ``replay``."""

    def __init__(self, replay: MixedReplay, *, max_staged_steps: int = 2000) -> None:
        if int(max_staged_steps) < 1:
            raise ValueError(f"max_staged_steps must be >= 1, got {max_staged_steps}")
        self.replay = replay
        self.max_staged_steps = int(max_staged_steps)
        self.actors: dict[str, _Actor] = {}
        self._holder: str | None = None  # actor whose episode is open in the ring
        self._order: collections.deque[str] = collections.deque()  # who staged first
        self._storage_error: OSError | None = None

    # ------------------------------------------------------------------ input
    def add(self, record: StepRecord, actor: str = "") -> None:
        """One step of ``actor``'s stream (any thread-safe caller order per actor).

        Raises ``OSError`` when the replay buffer could not write (a full or read-only
        disk): the step (and any staged one that could not be written with it) is counted
        as dropped, the episode is closed at its last stored step, and the caller decides
        what to do (the learner stops storing until the disk works again)."""
        try:
            self._add(record, actor)
        finally:
            err, self._storage_error = self._storage_error, None
        if err is not None:
            raise err

    def _add(self, record: StepRecord, actor: str) -> None:
        a = self.actors.setdefault(actor, _Actor())
        a.counts.received += 1
        ep, k = int(record.episode), int(record.index)
        if a.stored_before is not None:
            # Re-sent history (DDS transient local) the ring already holds durably: older by
            # stamp AND by (episode, index). An actor that restarted too (episode numbers
            # from 0 again) has newer stamps; the first newer step ends this check.
            if int(record.stamp_ns) <= a.stored_before and a.last is not None and \
                    (ep, k) <= a.last:
                return a.counts.drop("stored before the learner restarted")
            a.stored_before = None
        if a.seen_episode is not None and ep > a.seen_episode + 1:
            a.counts.lost_episodes += ep - a.seen_episode - 1  # never saw a step of them
        if a.seen_episode is None or ep > a.seen_episode:
            a.seen_episode = ep
        if record.is_first:
            if a.last is not None and a.last[0] == ep and (a.open or a.skipping):
                return a.counts.drop("duplicate step (episode already started)")
            if a.open:  # the previous episode never got its last step: cut it there
                self._cut(actor, a)
            a.open, a.skipping = True, False
        elif a.last is not None and a.last[0] == ep and k <= a.last[1]:
            return a.counts.drop("duplicate or reordered step")
        elif a.skipping:
            return a.counts.drop("after a cut episode (waiting for the next episode start)")
        elif not a.open:
            return a.counts.drop("mid-episode step (waiting for the next episode start)")
        elif a.last is not None and (a.last[0] != ep or k != a.last[1] + 1):
            if a.last[0] == ep:
                a.counts.lost += k - a.last[1] - 1
            # else: the open episode's end and this one's start never arrived
            a.counts.drop("after a gap in the stream (episode closed at its last step)")
            self._cut(actor, a)
            a.skipping = not record.is_last
            return
        a.last = (ep, k)
        self._pump()  # a free ring goes to the oldest staged episode first
        if self._holder is None and not a.staged:
            self._holder = actor
        if self._holder == actor:
            self._write(actor, a, record, current=True)
        else:
            self._stage(actor, a, record)
        self._pump()

    # ------------------------------------------------------------------ ring access
    def _write(self, actor: str, a: _Actor, r: StepRecord, *, current: bool) -> bool:
        """Write one step of the ring holder ``actor``; ``current``: it belongs to the
        actor's episode in progress (not an older staged one). False if refused."""
        try:
            self.replay.add_step_routed(
                r.images, r.low_dim, None if r.is_first else r.action, r.reward,
                is_first=r.is_first, is_last=r.is_last, terminated=r.terminated,
                is_intervention=r.is_intervention, is_demo=r.is_demo)
        except (ValueError, OSError) as exc:
            if isinstance(exc, OSError):  # a disk fault: counted here, raised by add()
                a.counts.drop(f"storage fault ({exc.strerror or exc})")
                self._storage_error = self._storage_error or exc
            else:
                a.counts.drop(f"refused by the replay buffer: {exc}")
            if not r.is_first:
                a.counts.episodes += 1  # closed below at its last stored step
            self._close_ring()
            if current:
                a.open, a.skipping = False, not r.is_last
            return False
        a.counts.stored += 1
        a.counts.interventions += int(r.is_intervention)
        self.replay.online.stream_marks[actor] = {  # durable with the ring's next flush
            "episode": int(r.episode), "index": int(r.index), "stamp_ns": int(r.stamp_ns),
            "open": not r.is_last}
        if r.is_last:
            a.counts.episodes += 1
            self._holder = None
            if current:
                a.open = False
        return True

    def restore(self) -> int:
        """After a restart: take up each actor's stream where the durable ring state says
        it was (``ReplayBuffer.stream_marks``). Steps the actor re-sends that are not newer
        than the last durable one are dropped as stored before; the rest of an episode the
        restart cut (the buffer closed it at its last flushed step) is dropped as after a
        cut. Returns how many actors were restored."""
        marks = self.replay.online.stream_marks
        for actor, m in marks.items():
            try:
                ep, k, stamp = int(m["episode"]), int(m["index"]), int(m["stamp_ns"])
                was_open = bool(m["open"])
            except (KeyError, TypeError, ValueError):
                continue  # a mark this version cannot read: start that stream afresh
            a = self.actors.setdefault(actor, _Actor())
            a.last, a.seen_episode, a.stored_before = (ep, k), ep, stamp
            a.open, a.skipping = False, was_open
            if was_open:
                m["open"] = False
        return len(marks)

    def _close_ring(self) -> None:
        """End the episode open in the ring as a truncation at its last stored step."""
        if self._holder is not None:
            mark = self.replay.online.stream_marks.get(self._holder)
            if mark:
                mark["open"] = False
        if self.replay.online.episode_open:
            self.replay.online.end_episode()
        if self.replay.offline.episode_open:
            self.replay.offline.end_episode()
        self._holder = None

    def _cut(self, actor: str, a: _Actor) -> None:
        """Close ``actor``'s open episode where it stands (truncated, never stitched)."""
        if self._holder == actor:
            self._close_ring()
            a.counts.episodes += 1
        elif a.staged and not a.staged[-1].complete:
            a.staged[-1].complete = True
        a.open = False

    def _stage(self, actor: str, a: _Actor, r: StepRecord) -> None:
        if a.counts.staged >= self.max_staged_steps:
            a.counts.drop("staging full (another actor held the replay ring too long)")
            self._cut(actor, a)
            a.skipping = not r.is_last
            return
        if r.is_first or not a.staged or a.staged[-1].complete:
            a.staged.append(_Episode())
            if actor not in self._order:
                self._order.append(actor)
        ep = a.staged[-1]
        ep.steps.append(r)
        a.counts.staged += 1
        if r.is_last:
            ep.complete = True
            a.open = False

    def _pump(self) -> None:
        """While the ring is free, write staged episodes (oldest actor first); an episode
        still in progress is written so far and its actor then holds the ring."""
        while self._holder is None and self._order:
            actor = self._order[0]
            a = self.actors[actor]
            if not a.staged:
                self._order.popleft()
                continue
            ep = a.staged.popleft()
            a.counts.staged -= len(ep.steps)
            current = not ep.complete  # the actor's episode in progress
            self._holder = actor
            for i, r in enumerate(ep.steps):
                if not self._write(actor, a, r, current=current):
                    for _ in ep.steps[i + 1:]:
                        a.counts.drop("after a refused step of the same episode")
                    break
            if ep.complete and self._holder == actor:  # cut while staged: close it here
                self._close_ring()
                a.counts.episodes += 1
            if self._holder == actor:  # in progress: live from now on
                return
            self._order.popleft()
            if a.staged:
                self._order.append(actor)

    def count_drops(self, actor: str, reason: str, n: int) -> None:
        """Record ``n`` steps of ``actor`` dropped before reaching the intake."""
        if n > 0:
            c = self.actors.setdefault(actor, _Actor()).counts
            c.received += n
            c.drop(reason, n)

    # ------------------------------------------------------------------ reading
    @property
    def totals(self) -> ActorCounts:
        """The counts summed over actors."""
        t = ActorCounts()
        for a in self.actors.values():
            c = a.counts
            t.received += c.received
            t.stored += c.stored
            t.interventions += c.interventions
            t.episodes += c.episodes
            t.staged += c.staged
            t.lost += c.lost
            t.lost_episodes += c.lost_episodes
            for k, v in c.dropped.items():
                t.dropped[k] = t.dropped.get(k, 0) + v
        return t

    @property
    def stored(self) -> int:
        """Steps written to the ring, all actors (the learner's update-to-data count)."""
        return sum(a.counts.stored for a in self.actors.values())

    def counts(self) -> dict[str, ActorCounts]:
        return {k: a.counts for k, a in self.actors.items()}
