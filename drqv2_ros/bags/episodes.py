"""Demonstration bags -> complete episodes: the shapes a consumer expects, the Step codec
(straight from the CDR bytes for this package's definition, the bag's own definition through
a deserialiser where it differs), and assembly of steps into episodes (index 0 ``is_first``
... ``is_last``, no gaps) as arrays, with every skip and loss reported.

Read through :mod:`drqv2_ros.bags.reader`; used by ingest (replay buffer) and export
(LeRobot dataset) alike.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drqv2_ros.bags.reader import BagError, BagInfo, iter_topic, open_bag
from drqv2_ros.bags.typestore import STEP_TYPE, project_typestore
from drqv2_ros.observation.step_cdr import StepCdrDecoder
from drqv2_ros.observation.step_record import (
    StepBatch,
    StepFields,
    StepFormatError,
    StepRecord,
    StepStack,
    UndecodableStepError,
    check_step,
    from_msg,
)

# =====================================================================================
# Target shapes
# =====================================================================================

class ShapeMismatchError(BagError):
    """The bag's steps do not have the shapes the target checkpoint/buffer expects."""


@dataclass(frozen=True)
class TargetShapes:
    """What the consumer expects of one step: images ``(V, 3, H, W)``, single-frame
    ``low_dim_size``, ``action_size``; ``source`` says where it comes from."""

    image_shape: tuple[int, int, int, int]
    low_dim_size: int
    action_size: int
    source: str = "target"
    frame_stack: int = 3
    nstep: int = 3
    discount: float = 0.99

    @classmethod
    def from_buffer(cls, buffer: Any) -> TargetShapes:
        return cls(tuple(int(x) for x in buffer.image_shape), int(buffer.low_dim_size),
                   int(buffer.action_size), f"replay buffer {getattr(buffer, 'directory', '')}",
                   int(buffer.frame_stack), int(buffer.nstep), float(buffer.discount))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> TargetShapes:
        """Shapes from a converted checkpoint's ``config.json`` (the folder or the file),
        read and checked like every checkpoint config (size-limited, strict schema)."""
        from drqv2_ros.policy.configuration_drqv2 import ConfigError, DrQV2Config
        from drqv2_ros.policy.file_limits import DEFAULT_LIMITS, CheckpointError, read_text

        p = Path(path)
        cfg_path = p / "config.json" if p.is_dir() else p
        try:
            cfg = DrQV2Config.from_json(
                read_text(cfg_path, DEFAULT_LIMITS.max_config_bytes, "config.json"))
        except (CheckpointError, ConfigError) as exc:
            raise BagError(f"checkpoint {cfg_path}: {exc}") from None
        if cfg.channels_per_frame != 3:
            raise BagError(f"checkpoint {cfg_path}: channels_per_frame "
                           f"{cfg.channels_per_frame}; bags carry rgb8 frames (3 channels)")
        return cls((cfg.num_views, 3, cfg.image_height, cfg.image_width),
                   cfg.low_dim_per_frame, cfg.action_dim, f"checkpoint {cfg_path}",
                   cfg.frame_stack, cfg.nstep, cfg.discount)

    def describe(self) -> str:
        v, _, h, w = self.image_shape
        return (f"images (V,3,H,W)={self.image_shape} ({v} view(s) of {h}x{w} rgb8), "
                f"low_dim {self.low_dim_size}, action {self.action_size}")

    def mismatch(self, rec: StepRecord, action_size: int | None) -> list[str]:
        out = []
        if tuple(rec.images.shape) != tuple(self.image_shape):
            out.append(f"images {tuple(rec.images.shape)} != {tuple(self.image_shape)}")
        if rec.low_dim.size != self.low_dim_size:
            out.append(f"low_dim {rec.low_dim.size} != {self.low_dim_size}")
        if action_size is not None and action_size != self.action_size:
            out.append(f"action {action_size} != {self.action_size}")
        return out


def _step_typestore(info: BagInfo, topic: str) -> tuple[Any, str | None]:
    """Our typestore, or one built from the bag's own Step definition when it differs."""
    return _typestore_for(info.topics[topic].msgdef, info.topics[topic].digest)


@functools.lru_cache(maxsize=16)
def _typestore_for(text: str, digest: str) -> tuple[Any, str | None]:
    ours = project_typestore()
    our_hash = ours.hash_rihs01(STEP_TYPE)
    if digest and digest == our_hash:
        return ours, None
    if not text:
        return ours, None
    try:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        ts = get_typestore(Stores.EMPTY)
        ts.register(get_types_from_msg(text, STEP_TYPE))
        theirs = ts.hash_rihs01(STEP_TYPE)
    except Exception:  # unparsable definition: decode with ours
        return ours, None
    if theirs == our_hash:
        return ours, None
    return ts, (f"the bag's {STEP_TYPE} definition differs from the installed one "
                f"({theirs} vs {our_hash}); decoded with the bag's definition")



@dataclass
class EpisodeData:
    """One complete episode of a bag, decoded: its steps as arrays (``batch``)."""

    bag: str
    episode: int
    batch: StepBatch

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def steps(self) -> list[StepRecord]:
        """The steps one by one (views of ``batch``)."""
        return [self.batch.record(k) for k in range(len(self.batch))]

    @property
    def transitions(self) -> int:
        return len(self.batch) - 1

    @property
    def success(self) -> bool:
        return bool(self.batch.terminated[-1] and self.batch.reward[-1] > 0)


@dataclass
class ReadReport:
    """What reading bags produced and what it could not use."""

    bags: list[str] = field(default_factory=list)
    step_messages: int = 0
    episodes: int = 0
    steps: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per skipped episode/cause
    lost: list[str] = field(default_factory=list)  # storage-level losses per bag
    notes: list[str] = field(default_factory=list)
    dropped_steps: int = 0


class _Assembler:
    """Steps of one bag -> complete episodes (index 0 ``is_first`` ... ``is_last``, no gaps),
    each decoded by a :class:`StepStack` (a step it refuses skips its episode)."""

    def __init__(self, bag: str, report: ReadReport, action_size: int | None = None,
                 max_episode_bytes: int | None = None):
        self.bag, self.report, self.action_size = bag, report, action_size
        self.max_episode_bytes = max_episode_bytes
        self.open: dict[int, StepStack] = {}
        self.length_hint = 64  # the last episode's length: the next one's first allocation
        self.poisoned: dict[int, str] = {}
        self.seen_any = False

    def _skip(self, episode: int, reason: str, steps: int) -> None:
        self.report.skipped.append(f"{self.bag}: episode {episode}: {reason}")
        self.report.dropped_steps += steps

    def poison(self, episode: int, reason: str, held: bool = False) -> None:
        """Skip ``episode`` for ``reason`` and drop its later steps as they come. The step
        at hand is counted too: on top of the open ones, unless it is ``held`` among them."""
        steps = self.open.pop(episode, ())
        if episode not in self.poisoned:
            self._skip(episode, reason, len(steps) + (not held))
            self.poisoned[episode] = reason
        else:
            self.report.dropped_steps += 1

    def feed(self, rec: StepFields) -> EpisodeData | None:
        ep = rec.episode
        first_seen, self.seen_any = not self.seen_any, True
        if rec.is_first:
            self.poisoned.pop(ep, None)
            if ep in self.open:
                prev = self.open.pop(ep)
                self._skip(ep, f"restarted at index 0 after {len(prev)} steps without is_last",
                           len(prev))
            # One policy node runs one episode at a time: an earlier episode still open
            # when a later one starts has lost its remaining steps.
            for old in sorted(e for e in self.open if e < ep):
                steps = self.open.pop(old)
                self._skip(old, f"steps after index {steps.last.index} missing (episode {ep} "
                                "started; lost messages)", len(steps))
            steps = self.open[ep] = StepStack(self.length_hint)
        elif ep in self.poisoned:
            self.report.dropped_steps += 1
            return None
        elif ep not in self.open:
            self.poison(ep, f"first step missing (the bag starts at index {rec.index}: "
                            "recording began mid-episode)" if first_seen else
                        f"steps 0..{rec.index - 1} missing (lost messages)")
            return None
        else:
            steps = self.open[ep]
            prev = steps.last.index
            if rec.index == prev and rec.stamp_ns == steps.last.stamp_ns:
                self.report.notes.append(f"{self.bag}: duplicate step {ep}/{rec.index} ignored")
                return None
            if rec.index != prev + 1:
                what = (f"steps {prev + 1}..{rec.index - 1} missing" if rec.index > prev + 1
                        else f"index went back from {prev} to {rec.index}")
                self.poison(ep, what + " (lost messages)")
                return None
        try:
            steps.append(rec)  # its frames are copied now, while in the cache
        except StepFormatError as exc:
            self.poison(ep, f"invalid step: {exc}")
            return None
        if self.max_episode_bytes is not None and steps.nbytes > self.max_episode_bytes:
            self.poison(ep, f"its frames pass {self.max_episode_bytes} bytes after "
                            f"{len(steps)} steps without is_last (ReadLimits.max_episode_bytes)",
                        held=True)  # its memory goes now; the rest is dropped as it comes
            return None
        if rec.is_last:
            del self.open[ep]
            self.length_hint = len(steps)
            try:
                return EpisodeData(self.bag, ep, steps.finish(self.action_size))
            except StepFormatError as exc:
                self._skip(ep, f"invalid step: {exc}", len(steps))
        return None

    def finish(self) -> None:
        for ep, steps in sorted(self.open.items()):
            self._skip(ep, f"no is_last after {len(steps)} steps (the bag ends there: "
                           "truncated, or recording stopped mid-episode)", len(steps))
        self.open.clear()


def _peek(info: BagInfo, topic: str, limit: int = 50
          ) -> tuple[StepRecord | None, int | None]:
    """The first decodable step of ``topic`` and the action size of the first non-first
    step (within ``limit`` messages), in one pass."""
    ts, _ = _step_typestore(info, topic)
    first, action = None, None
    for i, (_stamp, raw) in enumerate(iter_topic(info, topic)):
        if i >= limit and first is not None:
            break
        try:
            rec = from_msg(ts.deserialize_cdr(bytes(raw), STEP_TYPE))
        except Exception:  # look for the first decodable one
            continue
        first = first or rec
        if not rec.is_first:
            action = int(rec.action.size)
            break
    return first, action


def check_bags(bags: Sequence[str | os.PathLike], target: TargetShapes | None = None, *,
               step_topic: str | None = None) -> list[tuple[BagInfo, str, StepRecord | None]]:
    """Open every bag, find its Step topic and (with ``target``) check the shapes of its
    first steps, before anything is written. Raises :class:`BagError` /
    :class:`ShapeMismatchError` naming the bag."""
    out = []
    for bag in bags:
        info = open_bag(bag)
        open_problems = list(info.problems)
        topic = info.step_topic(step_topic)
        first, action_size = _peek(info, topic)
        if first is None:
            raise BagError(f"bag {info.path}: topic {topic} has no decodable Step message"
                           + (f" ({'; '.join(info.problems)})" if info.problems else ""))
        if target is not None:
            bad = target.mismatch(first, action_size)
            if bad:
                raise ShapeMismatchError(
                    f"bag {info.path}: its steps do not fit {target.source}: "
                    + "; ".join(bad) + f". Bag steps: images {tuple(first.images.shape)}, "
                    f"low_dim {first.low_dim.size}; expected {target.describe()}")
        info.problems[:] = open_problems  # the peek's read problems recur in the real read
        out.append((info, topic, first))
    return out


def decode_step(raw: Any, decode: StepCdrDecoder, typestore: Any, expect: dict, *,
                own_definition: bool = True) -> StepFields:
    """One Step message of a bag: straight from its bytes (``decode``) where it is of our
    definition, else (or where those bytes are not one the fast path reads) through the
    rosbags deserialiser; both apply ``check_step``'s checks. The fast path accepts nothing
    the deserialiser refuses (test_bags: a differential test over mutated messages)."""
    try:
        if not own_definition:
            raise UndecodableStepError("the bag's own definition")
        return decode(raw)
    except UndecodableStepError:  # a deserialiser for anything else
        return check_step(typestore.deserialize_cdr(bytes(raw), STEP_TYPE), **expect)


def read_episodes(
    bags: Sequence[str | os.PathLike], *, target: TargetShapes | None = None,
    step_topic: str | None = None, report: ReadReport | None = None, progress: bool = False,
    checked: list[tuple[BagInfo, str, StepRecord | None]] | None = None,
) -> Iterator[EpisodeData]:
    """Complete episodes of the bags, in bag order then episode order. Bags are checked
    first (:func:`check_bags`). Skips and losses go to ``report``."""
    from tqdm import tqdm

    report = report if report is not None else ReadReport()
    checked = checked if checked is not None else check_bags(bags, target,
                                                             step_topic=step_topic)
    expect = {} if target is None else dict(image_shape=target.image_shape,
                                             low_dim_size=target.low_dim_size,
                                             action_size=target.action_size)
    for info, topic, _first in checked:
        report.bags.append(str(info.path))
        typestore, note = _step_typestore(info, topic)
        if note:
            report.notes.append(f"{info.name}: {note}")
        asm = _Assembler(info.name, report, expect.get("action_size"),
                         info.limits.max_episode_bytes)
        decode = StepCdrDecoder(**expect)
        total = info.topics[topic].count
        read = 0
        with tqdm(total=total or None, unit="step", desc=info.name, disable=not progress,
                  leave=False) as bar:
            for _stamp, raw in iter_topic(info, topic):
                read += 1
                bar.update(1)
                try:
                    rec = decode_step(raw, decode, typestore, expect, own_definition=not note)
                except StepFormatError as exc:
                    asm.poison(-1 if exc.episode is None else exc.episode,
                               f"invalid step: {exc}")
                    continue
                except Exception as exc:  # a corrupt message: cannot attribute
                    report.lost.append(f"{info.name}: undecodable Step message #{read}: "
                                       f"{type(exc).__name__}: {exc}")
                    continue
                episode = asm.feed(rec)
                if episode is not None:
                    report.episodes += 1
                    report.steps += len(episode)
                    yield episode
        asm.finish()
        report.step_messages += read
        expected = info.metadata_counts.get(topic)
        if expected is None and not info.salvage:
            expected = total
        if info.problems or (expected is not None and read < expected):
            what = "; ".join(dict.fromkeys(info.problems)) or "messages missing"
            count = (f"{expected} {topic} messages listed, {read} readable "
                     f"({expected - read} lost)" if expected is not None and read < expected
                     else f"{read} {topic} messages readable")
            report.lost.append(f"{info.name}: {count}: {what}")


def infer_target(bags: Sequence[str | os.PathLike], step_topic: str | None = None
                 ) -> TargetShapes:
    """Shapes of the first bag's steps (when no checkpoint or sizes are given)."""
    info = open_bag(bags[0])
    topic = info.step_topic(step_topic)
    first, action = _peek(info, topic)
    if first is None or action is None:
        raise BagError(f"bag {info.path}: cannot infer step shapes (no decodable step with an "
                       "action); give --checkpoint or the sizes")
    return TargetShapes(tuple(int(x) for x in first.images.shape), int(first.low_dim.size),
                        action, f"the steps of {info.path}")


def count_step_messages(checked: list[tuple[BagInfo, str, StepRecord | None]]) -> int:
    total = 0
    for info, topic, _ in checked:
        total += info.metadata_counts.get(topic) or info.topics[topic].count or 0
    return total
