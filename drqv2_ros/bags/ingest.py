"""Demonstration bags -> replay buffer: rebuild transitions from recorded ``step`` messages.

    drqv2-ros ingest bags/demo_01 bags/demo_02 --buffer runs/offline --checkpoint ckpt/
    summary = ingest_bags([...], offline_buffer)          # what the learner node calls

Reads ``drqv2_ros/msg/Step`` messages from rosbag2 bags (mcap or sqlite3, written by
``ros2 bag record`` or ``drqv2-ros record``), decodes them with the same codec the learner uses
live (:func:`drqv2_ros.observation.step_record.from_msg`), groups them into episodes and adds
the complete episodes, in bag order (= episode order), to a
:class:`~drqv2_ros.learning.replay_buffer.ReplayBuffer`. Deterministic: the same bags give
the same buffer contents.

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
import mmap
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zlib import crc32

import numpy as np

from drqv2_ros.atomic_write import atomic_write_json
from drqv2_ros.bags.typestore import STEP_TYPE, project_typestore
from drqv2_ros.observation.step_record import StepFormatError, StepRecord, from_msg

__all__ = [
    "BagError",
    "BagInfo",
    "EpisodeData",
    "IngestSummary",
    "ReadReport",
    "ShapeMismatchError",
    "TargetShapes",
    "ingest_bags",
    "ingest_into_replay",
    "open_bag",
    "read_episodes",
]

_STORAGE_SUFFIXES = (".mcap", ".db3")


class BagError(ValueError):
    """A bag that cannot be used; the message names the bag and the reason."""


class ShapeMismatchError(BagError):
    """The bag's steps do not have the shapes the target checkpoint/buffer expects."""


# =====================================================================================
# Target shapes
# =====================================================================================

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
        """Shapes from a converted checkpoint's ``config.json`` (read as JSON)."""
        p = Path(path)
        cfg_path = p / "config.json" if p.is_dir() else p
        try:
            cfg = json.loads(cfg_path.read_text())
        except FileNotFoundError:
            raise BagError(f"checkpoint {p}: no config.json") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise BagError(f"checkpoint {cfg_path}: unreadable config: {exc}") from None
        try:
            views = int(cfg.get("num_views", len(cfg.get("camera_names", ["rgb"]))))
            channels = int(cfg.get("channels_per_frame", 3))
            h, w = int(cfg["image_height"]), int(cfg["image_width"])
            frame_stack = int(cfg.get("frame_stack", 3))
            if "low_dim_per_frame" in cfg:
                low = int(cfg["low_dim_per_frame"])
            else:
                low = int(cfg["low_dim_size"]) // max(frame_stack, 1)
            action = int(cfg["action_dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BagError(f"checkpoint {cfg_path}: missing/invalid field {exc}") from None
        if channels != 3:
            raise BagError(f"checkpoint {cfg_path}: channels_per_frame {channels}; bags carry "
                           "rgb8 frames (3 channels)")
        return cls((views, 3, h, w), low, action, f"checkpoint {cfg_path}", frame_stack,
                   int(cfg.get("nstep", 3)), float(cfg.get("discount", 0.99)))

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


# =====================================================================================
# Reading bags (rosbags first; a tolerant MCAP scanner for truncated / corrupt files)
# =====================================================================================

@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int | None  # as the bag's index/metadata states it (None: unknown)
    msgdef: str = ""
    digest: str = ""


@dataclass
class BagInfo:
    """A bag opened for reading: its topics and how it is read."""

    path: Path
    storage: str  # "mcap" | "sqlite3"
    files: list[Path]
    topics: dict[str, TopicInfo]
    metadata_counts: dict[str, int] = field(default_factory=dict)  # from metadata.yaml
    problems: list[str] = field(default_factory=list)
    salvage: bool = False  # read with the tolerant scanner (no valid index/footer)

    @property
    def name(self) -> str:
        return self.path.name

    def step_topic(self, requested: str | None = None) -> str:
        """The Step topic to read; :class:`BagError` naming what is missing otherwise."""
        steps = sorted(t for t, i in self.topics.items() if i.msgtype == STEP_TYPE)
        have = ", ".join(f"{t} ({i.msgtype})" for t, i in sorted(self.topics.items())) or "none"
        if requested:
            want = requested if requested.startswith("/") else "/" + requested
            if want in steps:
                return want
            raise BagError(f"bag {self.path}: required topic {want} ({STEP_TYPE}) is missing; "
                           f"it has: {have}")
        if len(steps) == 1:
            return steps[0]
        if "/step" in steps:
            return "/step"
        if not steps:
            raise BagError(
                f"bag {self.path}: required topic /step ({STEP_TYPE}) is missing; it has: "
                f"{have}. Record the demo topic set (config/recorder.yaml) while the policy "
                "node runs (it publishes `step`).")
        raise BagError(f"bag {self.path}: several Step topics {steps}; choose one with "
                       "--step-topic")


def _storage_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _STORAGE_SUFFIXES)
    return files


def _metadata_counts(path: Path) -> dict[str, int]:
    meta = path / "metadata.yaml" if path.is_dir() else None
    if meta is None or not meta.is_file():
        return {}
    try:
        import yaml

        info = (yaml.safe_load(meta.read_text()) or {}).get("rosbag2_bagfile_information", {})
        return {t["topic_metadata"]["name"]: int(t["message_count"])
                for t in info.get("topics_with_message_count", [])}
    except Exception:  # a broken metadata file only loses the cross-check
        return {}


def _topics_from_connections(conns: Iterable[Any]) -> dict[str, TopicInfo]:
    topics: dict[str, TopicInfo] = {}
    for c in conns:
        info = topics.get(c.topic)
        if info is None:
            topics[c.topic] = TopicInfo(c.topic, c.msgtype, int(c.msgcount),
                                        getattr(c.msgdef, "data", "") or "", c.digest or "")
        else:
            info.count = (info.count or 0) + int(c.msgcount)
    return topics


def open_bag(path: str | os.PathLike) -> BagInfo:
    """Open a bag (directory with metadata.yaml, a directory of storage files without one,
    or a single ``.mcap``/``.db3`` file) and list its topics.

    Falls back to the tolerant MCAP scanner when the file has no valid footer/index
    (recording killed, file truncated); :class:`BagError` when nothing is readable."""
    from rosbags.rosbag2 import Reader

    p = Path(path)
    if not p.exists():
        raise BagError(f"bag {p}: does not exist")
    files = _storage_files(p)
    if not files:
        raise BagError(f"bag {p}: no .mcap or .db3 storage file")
    storage = "sqlite3" if all(f.suffix == ".db3" for f in files) else "mcap"
    meta_counts = _metadata_counts(p)
    problems: list[str] = []
    targets = [p] if p.is_dir() and (p / "metadata.yaml").is_file() else files
    try:
        topics: dict[str, TopicInfo] = {}
        for target in targets:
            with Reader(target) as reader:
                for name, info in _topics_from_connections(reader.connections).items():
                    if name in topics:
                        topics[name].count = (topics[name].count or 0) + (info.count or 0)
                    else:
                        topics[name] = info
        return BagInfo(p, storage, files, topics, meta_counts, problems)
    except Exception as exc:  # anything: try to salvage below
        problems.append(f"not a cleanly closed bag, read record by record "
                        f"({type(exc).__name__}: {exc})")
    topics = {}
    for f in files:
        scan_problems: list[str] = []
        found = (_mcap_scan_topics(f, scan_problems) if f.suffix == ".mcap"
                 else _sqlite_topics(f, scan_problems))
        for name, info in found.items():
            if name in topics:
                topics[name].count = (topics[name].count or 0) + (info.count or 0)
            else:
                topics[name] = info
        problems += [f"{f.name}: {m}" for m in scan_problems]
    if not topics:
        raise BagError(f"bag {p}: unreadable: " + "; ".join(problems))
    return BagInfo(p, storage, files, topics, meta_counts, problems, salvage=True)


# ---- tolerant MCAP scanner ------------------------------------------------------------

_MCAP_MAGIC = b"\x89MCAP0\r\n"
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_MSG_HEAD = struct.Struct("<HIQQ")
_CHUNK_HEAD = struct.Struct("<QQQI")


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    if compression == "":
        return bytes(data)
    if compression == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
        except ImportError:
            from backports import zstd  # type: ignore[no-redef]
        return zstd.decompress(bytes(data))
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.decompress(bytes(data))
    raise ValueError(f"unsupported chunk compression {compression!r}")


def _str(buf: memoryview, pos: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise ValueError("string runs past its record")
    return bytes(buf[pos : pos + n]).decode(), pos + n


def _mcap_records(path: Path, problems: list[str]) -> Iterator[tuple]:
    """Yield ('schema', id, name, encoding, data), ('channel', id, schema_id, topic) and
    ('message', channel_id, log_time, data) from an MCAP file in file order, stopping at the
    first truncated record and skipping chunks that fail their size/CRC check; every loss
    is described in ``problems``."""
    size = path.stat().st_size
    if size < len(_MCAP_MAGIC):
        problems.append(f"file has {size} bytes: no MCAP data")
        return
    with path.open("rb") as fh:
        # Not closed explicitly: yielded memoryviews may still point into the map; it is
        # unmapped when the last of them is gone.
        buf = memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
    if bytes(buf[:8]) != _MCAP_MAGIC:
        problems.append("not an MCAP file (bad magic)")
        return
    yield from _mcap_scan(buf, 8, len(buf), problems, top=True)


def _mcap_scan(buf: memoryview, pos: int, end: int, problems: list[str], top: bool
               ) -> Iterator[tuple]:
    where = "file" if top else "chunk"
    while pos < end:
        if end - pos < 9:
            problems.append(f"{where} ends inside a record header at byte {pos} "
                            f"(truncated: {end - pos} trailing bytes)")
            return
        op = buf[pos]
        (length,) = _U64.unpack_from(buf, pos + 1)
        start, stop = pos + 9, pos + 9 + length
        if stop > end:
            problems.append(f"{where} truncated at byte {pos}: record 0x{op:02x} announces "
                            f"{length} bytes, {end - start} present")
            if op == 0x06 and top:  # an uncompressed chunk cut short: keep its whole records
                yield from _partial_chunk(buf[start:end], problems)
            return
        body = buf[start:stop]
        try:
            if op == 0x03:  # schema
                (sid,) = _U16.unpack_from(body, 0)
                name, p2 = _str(body, 2)
                enc, p2 = _str(body, p2)
                (n,) = _U32.unpack_from(body, p2)
                yield ("schema", sid, name, enc, bytes(body[p2 + 4 : p2 + 4 + n]).decode())
            elif op == 0x04:  # channel
                cid, sid = struct.unpack_from("<HH", body, 0)
                topic, _ = _str(body, 4)
                yield ("channel", cid, sid, topic)
            elif op == 0x05:  # message
                cid, _seq, log_time, _pub = _MSG_HEAD.unpack_from(body, 0)
                yield ("message", cid, log_time, body[_MSG_HEAD.size :])
            elif op == 0x06:  # chunk
                _t0, _t1, usize, crc = _CHUNK_HEAD.unpack_from(body, 0)
                comp, p2 = _str(body, _CHUNK_HEAD.size)
                (clen,) = _U64.unpack_from(body, p2)
                data = body[p2 + 8 : p2 + 8 + clen]
                if len(data) != clen:
                    raise ValueError("chunk data runs past its record")
                raw = _decompress(data, comp, usize)
                if len(raw) != usize or (crc and crc32(raw) != crc):
                    raise ValueError("chunk fails its size/CRC check")
                inner = memoryview(raw)
                yield from _mcap_scan(inner, 0, len(inner), problems, top=False)
            elif op in (0x02, 0x0F) and top:  # footer / data end: the summary follows
                return
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            problems.append(f"{where} record 0x{op:02x} at byte {pos} skipped: {exc}")
        pos = stop


def _partial_chunk(body: memoryview, problems: list[str]) -> Iterator[tuple]:
    try:
        comp, p2 = _str(body, _CHUNK_HEAD.size)
        if comp != "":
            problems.append(f"the cut chunk is {comp}-compressed: its messages are lost")
            return
        inner = body[p2 + 8 :]
    except (ValueError, struct.error, UnicodeDecodeError):
        return
    yield from _mcap_scan(inner, 0, len(inner), [], top=False)


def _mcap_scan_topics(path: Path, problems: list[str]) -> dict[str, TopicInfo]:
    schemas: dict[int, tuple[str, str]] = {}
    channels: dict[int, tuple[str, int]] = {}
    counts: dict[int, int] = {}
    for rec in _mcap_records(path, problems):
        if rec[0] == "message":
            counts[rec[1]] = counts.get(rec[1], 0) + 1
        elif rec[0] == "schema":
            schemas[rec[1]] = (rec[2], rec[4])
        else:
            channels[rec[1]] = (rec[3], rec[2])
    out: dict[str, TopicInfo] = {}
    for cid, (topic, sid) in channels.items():
        name, text = schemas.get(sid, ("", ""))
        out[topic] = TopicInfo(topic, name, counts.get(cid, 0), text)
    return out


def _mcap_scan_messages(path: Path, topic: str, problems: list[str]
                        ) -> Iterator[tuple[int, bytes]]:
    channels: dict[int, str] = {}
    for rec in _mcap_records(path, problems):
        if rec[0] == "channel":
            channels[rec[1]] = rec[3]
        elif rec[0] == "message" and channels.get(rec[1]) == topic:
            yield rec[2], bytes(rec[3])


def _sqlite_messages(path: Path, topic: str, problems: list[str]
                     ) -> Iterator[tuple[int, bytes]]:
    """Rows of ``topic`` from a (possibly damaged) ``.db3`` file, until sqlite reports the
    damage (described in ``problems``)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        problems.append(f"sqlite: {exc}")
        return
    try:
        row = con.execute("SELECT id FROM topics WHERE name = ?", (topic,)).fetchone()
        if row is None:
            return
        for ts, data in con.execute(
                "SELECT timestamp, data FROM messages WHERE topic_id = ? ORDER BY timestamp",
                (row[0],)):
            yield int(ts), bytes(data)
    except sqlite3.Error as exc:
        problems.append(f"sqlite: {exc}")
    finally:
        con.close()


def _sqlite_topics(path: Path, problems: list[str]) -> dict[str, TopicInfo]:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        problems.append(f"sqlite: {exc}")
        return {}
    out: dict[str, TopicInfo] = {}
    try:
        for tid, name, msgtype in con.execute("SELECT id, name, type FROM topics"):
            try:
                (n,) = con.execute("SELECT COUNT(*) FROM messages WHERE topic_id = ?",
                                   (tid,)).fetchone()
            except sqlite3.Error:
                n = None
            out[name] = TopicInfo(name, msgtype, n)
    except sqlite3.Error as exc:
        problems.append(f"sqlite: {exc}")
    finally:
        con.close()
    return out


def iter_topic(info: BagInfo, topic: str) -> Iterator[tuple[int, bytes]]:
    """(timestamp_ns, raw CDR) of every readable message of ``topic``, in bag order.
    Read errors end the stream early and are appended to ``info.problems``."""
    from rosbags.rosbag2 import Reader

    if info.salvage:
        for f in info.files:
            scan: list[str] = []
            yield from (_mcap_scan_messages(f, topic, scan) if f.suffix == ".mcap"
                        else _sqlite_messages(f, topic, scan))
            info.problems += [f"{f.name}: {m}" for m in scan]
        return
    targets = [info.path] if info.path.is_dir() and (info.path / "metadata.yaml").is_file() \
        else info.files
    for target in targets:
        last_ts, at_last = -1, []  # messages at the last stamp, to resume after it
        try:
            with Reader(target) as reader:
                conns = [c for c in reader.connections if c.topic == topic]
                if not conns:
                    continue
                for _conn, ts, raw in reader.messages(connections=conns):
                    if ts != last_ts:
                        last_ts, at_last = ts, []
                    at_last.append(raw)
                    yield ts, raw
        except Exception as exc:  # keep what was read, then salvage the rest
            info.problems.append(f"read error in {target.name} after t={last_ts}: "
                                 f"{type(exc).__name__}: {exc}")
            seen = {bytes(r) for r in at_last}
            files = [target] if target.is_file() else info.files
            for f in files:
                scan: list[str] = []
                source = (_mcap_scan_messages(f, topic, scan) if f.suffix == ".mcap"
                          else _sqlite_messages(f, topic, scan))
                for ts, raw in source:
                    if ts > last_ts or (ts == last_ts and raw not in seen):
                        yield ts, raw
                info.problems += [f"{f.name}: {m}" for m in scan]


def _step_typestore(info: BagInfo, topic: str) -> tuple[Any, str | None]:
    """Our typestore, or one built from the bag's own Step definition when it differs."""
    ours = project_typestore()
    text = info.topics[topic].msgdef
    digest = info.topics[topic].digest
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


# =====================================================================================
# Episodes
# =====================================================================================

@dataclass
class EpisodeData:
    bag: str
    episode: int
    steps: list[StepRecord]

    @property
    def transitions(self) -> int:
        return len(self.steps) - 1

    @property
    def success(self) -> bool:
        last = self.steps[-1]
        return bool(last.terminated and last.reward > 0)


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
    """Steps of one bag -> complete episodes (index 0 ``is_first`` ... ``is_last``, no gaps)."""

    def __init__(self, bag: str, report: ReadReport):
        self.bag, self.report = bag, report
        self.open: dict[int, list[StepRecord]] = {}
        self.poisoned: dict[int, str] = {}
        self.seen_any = False

    def _skip(self, episode: int, reason: str, steps: int) -> None:
        self.report.skipped.append(f"{self.bag}: episode {episode}: {reason}")
        self.report.dropped_steps += steps

    def poison(self, episode: int, reason: str) -> None:
        steps = self.open.pop(episode, [])
        if episode not in self.poisoned:
            self._skip(episode, reason, len(steps) + 1)
            self.poisoned[episode] = reason
        else:
            self.report.dropped_steps += 1

    def feed(self, rec: StepRecord) -> EpisodeData | None:
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
                self._skip(old, f"steps after index {steps[-1].index} missing (episode {ep} "
                                "started; lost messages)", len(steps))
            self.open[ep] = [rec]
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
            prev = steps[-1].index
            if rec.index == prev and rec.stamp_ns == steps[-1].stamp_ns:
                self.report.notes.append(f"{self.bag}: duplicate step {ep}/{rec.index} ignored")
                return None
            if rec.index != prev + 1:
                what = (f"steps {prev + 1}..{rec.index - 1} missing" if rec.index > prev + 1
                        else f"index went back from {prev} to {rec.index}")
                self.poison(ep, what + " (lost messages)")
                return None
            steps.append(rec)
        if rec.is_last:
            return EpisodeData(self.bag, ep, self.open.pop(ep))
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
            rec = from_msg(ts.deserialize_cdr(raw, STEP_TYPE))
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
        asm = _Assembler(info.name, report)
        total = info.topics[topic].count
        read = 0
        with tqdm(total=total or None, unit="step", desc=info.name, disable=not progress,
                  leave=False) as bar:
            for _stamp, raw in iter_topic(info, topic):
                read += 1
                bar.update(1)
                try:
                    msg = typestore.deserialize_cdr(raw, STEP_TYPE)
                except Exception as exc:  # a corrupt message: cannot attribute
                    report.lost.append(f"{info.name}: undecodable Step message #{read}: "
                                       f"{type(exc).__name__}: {exc}")
                    continue
                try:
                    rec = from_msg(msg, **expect)
                except StepFormatError as exc:
                    asm.poison(int(getattr(msg, "episode", -1)), f"invalid step: {exc}")
                    continue
                episode = asm.feed(rec)
                if episode is not None:
                    report.episodes += 1
                    report.steps += len(episode.steps)
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


def _demo_flags(episode: EpisodeData, mode: str) -> list[bool]:
    recorded = [s.is_demo for s in episode.steps]
    if mode == "keep":
        return recorded
    if mode == "all":
        return [True] * len(recorded)
    # auto: an episode whose steps carry no demo flag was recorded without demo mode but is
    # ingested as a demonstration; one that carries flags keeps them.
    return recorded if any(recorded[1:]) else [True] * len(recorded)


def ingest_bags(
    bags: Sequence[str | os.PathLike],
    buffer: Any,
    *,
    step_topic: str | None = None,
    demo_flags: str = "auto",
    target: TargetShapes | None = None,
    progress: bool = False,
    flush_every: int = 50,
    log: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Add the complete episodes of ``bags`` (in the given order) to ``buffer``.

    ``buffer`` is a :class:`~drqv2_ros.learning.replay_buffer.ReplayBuffer` (the learner's
    offline buffer); its shapes are the target unless ``target`` (e.g. from the checkpoint)
    is given, in which case both must agree. ``demo_flags``: ``"auto"`` (default: episodes
    are flagged ``is_demo`` unless their steps carry demo flags, which are then kept),
    ``"keep"`` (as recorded) or ``"all"``. Intervention flags are always kept.

    Raises :class:`BagError` (missing topic, unreadable bag) or :class:`ShapeMismatchError`
    before anything is added; salvageable damage is reported in the summary instead."""
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
    checked = check_bags(bags, target, step_topic=step_topic)
    report = ReadReport()
    episodes = transitions = steps = successes = n_int = n_demo = 0
    since_flush = 0
    for ep in read_episodes(bags, target=target, report=report, progress=progress,
                            checked=checked):
        flags = _demo_flags(ep, demo_flags)
        for rec, is_demo in zip(ep.steps, flags):
            buffer.add_step(rec.images, rec.low_dim, rec.action, rec.reward,
                            is_first=rec.is_first, is_last=rec.is_last,
                            terminated=rec.terminated, is_intervention=rec.is_intervention,
                            is_demo=is_demo)
        episodes += 1
        steps += len(ep.steps)
        transitions += ep.transitions
        successes += ep.success
        n_int += sum(s.is_intervention for s in ep.steps[1:])
        n_demo += sum(flags[1:])
        since_flush += 1
        if since_flush >= flush_every:
            buffer.flush()
            since_flush = 0
    buffer.flush()
    summary = IngestSummary(
        bags=report.bags, episodes=episodes, transitions=transitions, steps=steps,
        successes=successes, intervention_transitions=n_int, demo_transitions=n_demo,
        seconds=time.perf_counter() - t0, skipped=report.skipped, lost=report.lost,
        notes=report.notes, dropped_steps=report.dropped_steps,
        buffer=str(getattr(buffer, "directory", "")))
    if log is not None:
        log(summary.format())
    return summary


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


# =====================================================================================
# Learner entry point: ingest each bag once per buffer
# =====================================================================================

LEDGER_FILE = "ingested_bags.json"


def _fingerprint(path: Path) -> list[list]:
    files = _storage_files(path) if path.exists() else []
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
