"""Reading rosbag2 bags at a bounded cost: topics, and the raw messages of one topic.

MCAP files are read with the ``mcap`` library's record types (schemas, channels, chunks)
under a framing loop of our own, so that one bad record costs only that record (message
records inside a chunk are framed from their fixed fields, and those of other topics are
skipped without a copy: a chunk of a camera bag holds thousands):

* every record's declared length is checked against the file before it is read;
* a chunk's data is inflated here, bounded: a chunk that declares more than
  ``ReadLimits.max_chunk_bytes`` uncompressed, or inflates past its declared size, or fails
  to inflate (corrupt zstd / lz4) or its CRC, is skipped, counted and reported with the bag's
  path; reading continues with the next record;
* a file cut short (recorder killed, disk full) gives up what is whole, including the whole
  records of a cut uncompressed chunk.

All channels of a topic are read, whatever the QoS in their metadata or in ``metadata.yaml``
(rosbag2's own test bags disagree between the two; ``ros2 bag play`` plays them). SQLite
(``.db3``) files are read with ``sqlite3`` directly, until sqlite reports damage.

The one reader of the package: ingest and export both go through :func:`open_bag` and
:func:`iter_topic`.
"""

from __future__ import annotations

import io
import os
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from zlib import crc32

from drqv2_ros.bags.typestore import STEP_TYPE

_STORAGE_SUFFIXES = (".mcap", ".db3")
_MAGIC = b"\x89MCAP0\r\n"
_HEAD = struct.Struct("<BQ")
#: A Message record's fixed fields (channel id, sequence, log time, publish time); its data
#: is the rest of the record (MCAP specification, "Message (op=0x05)").
_MESSAGE_FIELDS = struct.Struct("<HIQQ")
_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x03, 0x04, 0x05, 0x06
_OP_FOOTER, _OP_DATA_END = 0x02, 0x0F


class BagError(ValueError):
    """A bag that cannot be used; the message names the bag and the reason."""


@dataclass(frozen=True)
class ReadLimits:
    #: A chunk declaring or inflating to more than this is skipped (rosbag2 writes ~1 MB).
    max_chunk_bytes: int = 256 << 20
    #: Any single record (a message, an uncompressed chunk) larger than this is skipped.
    max_record_bytes: int = 1 << 30
    #: metadata.yaml larger than this is ignored (only a cross-check is lost).
    max_metadata_bytes: int = 16 << 20
    #: An episode is held in memory until its last step; one whose frames pass this is
    #: skipped (a bag whose episode never ends cannot exhaust memory; the frame array grows
    #: by doubling, so the peak is ~2x this). 1 GiB: 50,000 steps of one 84x84 view, 1.4
    #: hours at 10 Hz.
    max_episode_bytes: int = 1 << 30


DEFAULT_READ_LIMITS = ReadLimits()


@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int | None  # as the bag's index/metadata states it (None: unknown)
    msgdef: str = ""
    digest: str = ""


@dataclass
class BagInfo:
    """A bag opened for reading: its topics and what reading it has lost so far."""

    path: Path
    storage: str  # "mcap" | "sqlite3"
    files: list[Path]
    topics: dict[str, TopicInfo]
    metadata_counts: dict[str, int] = field(default_factory=dict)  # from metadata.yaml
    problems: list[str] = field(default_factory=list)
    limits: ReadLimits = DEFAULT_READ_LIMITS
    skipped_chunks: int = 0
    salvage: bool = False  # the files have no readable summary (cut short)

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


def storage_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _STORAGE_SUFFIXES)


def _metadata_counts(path: Path, limits: ReadLimits) -> dict[str, int]:
    meta = path / "metadata.yaml" if path.is_dir() else None
    if meta is None or not meta.is_file() or meta.stat().st_size > limits.max_metadata_bytes:
        return {}
    try:
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where it is built
        info = (yaml.load(meta.read_text(), Loader=loader) or {}).get(
            "rosbag2_bagfile_information", {})
        return {t["topic_metadata"]["name"]: int(t["message_count"])
                for t in info.get("topics_with_message_count", [])}
    except Exception:  # a broken metadata file only loses the cross-check
        return {}


def open_bag(path: str | os.PathLike, limits: ReadLimits = DEFAULT_READ_LIMITS) -> BagInfo:
    """Open a bag (directory with metadata.yaml, a directory of storage files without one,
    or a single ``.mcap``/``.db3`` file) and list its topics (from the MCAP summary, or a
    bounded scan when a file has none); :class:`BagError` when nothing is readable."""
    p = Path(path)
    if not p.exists():
        raise BagError(f"bag {p}: does not exist")
    files = storage_files(p)
    if not files:
        raise BagError(f"bag {p}: no .mcap or .db3 storage file")
    storage = "sqlite3" if all(f.suffix == ".db3" for f in files) else "mcap"
    info = BagInfo(p, storage, files, {}, _metadata_counts(p, limits), limits=limits)
    for f in files:
        found = _mcap_topics(f, info) if f.suffix == ".mcap" else _sqlite_topics(f, info)
        for name, t in found.items():
            if name in info.topics:
                info.topics[name].count = (info.topics[name].count or 0) + (t.count or 0)
            else:
                info.topics[name] = t
    if not info.topics:
        raise BagError(f"bag {p}: unreadable: " + ("; ".join(info.problems) or "no topics"))
    return info


def iter_topic(info: BagInfo, topic: str) -> Iterator[tuple[int, bytes | memoryview]]:
    """(log time ns, raw CDR) of every readable message of ``topic``, file by file in file
    order. The CDR is a bytes-like object (a ``memoryview`` of its chunk, not a copy).
    Losses (skipped chunks, a cut file, sqlite damage) go to ``info.problems``."""
    for f in info.files:
        if f.suffix == ".mcap":
            for rec in _mcap_records(f, info, topic=topic):
                if rec[0] == "message":
                    yield rec[2], rec[3]
        else:
            yield from _sqlite_messages(f, topic, info)


# ---- MCAP ------------------------------------------------------------------------------

def _note(info: BagInfo, f: Path, text: str) -> None:
    info.problems.append(f"{info.path}: {f.name}: {text}")


def _mcap_topics(f: Path, info: BagInfo) -> dict[str, TopicInfo]:
    """Topics from the file's summary (schemas, channels, statistics); a bounded scan of
    the whole file when it has no readable summary (cut short)."""
    from mcap.reader import SeekingReader

    try:
        with f.open("rb") as fh:
            summary = SeekingReader(fh, record_size_limit=info.limits.max_record_bytes
                                    ).get_summary()
        if summary is None or summary.statistics is None:
            raise ValueError("no summary section")
        counts = summary.statistics.channel_message_counts
        out: dict[str, TopicInfo] = {}
        for cid, ch in summary.channels.items():
            sch = summary.schemas.get(ch.schema_id)
            _add_topic(out, ch.topic, sch.name if sch else "", counts.get(cid, 0),
                       _schema_text(sch), ch.metadata.get("topic_type_hash", ""))
        return out
    except Exception as exc:  # no summary: scan (what it loses is noted as it goes)
        info.salvage = True
        _note(info, f, f"no readable summary ({type(exc).__name__}: {exc}); read record by "
                       "record")
    schemas: dict[int, tuple[str, str]] = {}
    channels: dict[int, tuple[str, int, str]] = {}
    counts: dict[int, int] = {}
    for rec in _mcap_records(f, info):
        if rec[0] == "message":
            counts[rec[1]] = counts.get(rec[1], 0) + 1
        elif rec[0] == "schema":
            schemas[rec[1]] = (rec[2], rec[3])
        else:
            channels[rec[1]] = (rec[2], rec[3], rec[4])
    out = {}
    for cid, (topic, sid, digest) in channels.items():
        name, text = schemas.get(sid, ("", ""))
        _add_topic(out, topic, name, counts.get(cid, 0), text, digest)
    return out


def _add_topic(out: dict[str, TopicInfo], topic: str, msgtype: str, count: int, text: str,
               digest: str) -> None:
    if topic in out:  # several channels (e.g. different QoS): one topic
        out[topic].count = (out[topic].count or 0) + count
    else:
        out[topic] = TopicInfo(topic, msgtype, count, text, digest)


def _schema_text(schema) -> str:
    if schema is None:
        return ""
    try:
        return bytes(schema.data).decode()
    except UnicodeDecodeError:
        return ""


def _mcap_records(f: Path, info: BagInfo, topic: str | None = None) -> Iterator[tuple]:
    """('schema', id, name, text), ('channel', id, topic, schema_id, type_hash) and
    ('message', channel_id, log_time, data) in file order; bad records and chunks skipped
    and noted, a cut file read up to the cut. With ``topic``, only the messages of that
    topic's channels (all of them, whatever their QoS) are yielded; the others are not
    copied."""
    keep: set[int] | None = None if topic is None else set()

    limits = info.limits
    size = f.stat().st_size
    with f.open("rb") as fh:
        if fh.read(8) != _MAGIC:
            _note(info, f, "not an MCAP file (bad magic)")
            return
        pos = 8
        while pos < size:
            head = fh.read(_HEAD.size)
            if len(head) < _HEAD.size:
                _note(info, f, f"ends inside a record header at byte {pos} (cut short)")
                return
            op, length = _HEAD.unpack(head)
            start = pos + _HEAD.size
            if start + length > size:
                _note(info, f, f"cut short at byte {pos}: record 0x{op:02x} announces "
                               f"{length} bytes, {size - start} present")
                if op == _OP_CHUNK and length <= limits.max_record_bytes:
                    yield from _cut_chunk(fh.read(size - start), f, info, topic, keep)
                return
            if op in (_OP_FOOTER, _OP_DATA_END):
                return  # the summary follows: everything was read
            if length > limits.max_record_bytes:
                _note(info, f, f"record 0x{op:02x} of {length} bytes at byte {pos} skipped "
                               f"(above {limits.max_record_bytes})")
                fh.seek(start + length)
                pos = start + length
                continue
            if op in (_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK):
                body = fh.read(length)
                try:
                    stream = _stream(body)
                    if op == _OP_CHUNK:
                        yield from _chunk(_read_record(op, stream, length), f, pos, info,
                                          topic, keep)
                    else:
                        rec = _as_tuple(_read_record(op, stream, length))
                        if _wanted(rec, topic, keep):
                            yield rec
                except _Skip as exc:
                    info.skipped_chunks += 1
                    _note(info, f, f"chunk at byte {pos} skipped: {exc}")
                except Exception as exc:  # a malformed record: that record only
                    _note(info, f, f"record 0x{op:02x} at byte {pos} skipped: "
                                   f"{type(exc).__name__}: {exc}")
            else:
                fh.seek(start + length)
            pos = start + length


class _Skip(Exception):
    pass


class _View:
    """A file-like ``read`` over a buffer that returns views, not copies: the ``mcap``
    records read from it (a chunk's megabyte of data above all) alias the buffer."""

    def __init__(self, data: bytes | memoryview):
        self._data, self._pos = memoryview(data), 0

    def read(self, n: int) -> memoryview:
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out


def _stream(data: bytes | memoryview):
    from mcap.data_stream import ReadDataStream

    return ReadDataStream(_View(data))


def _read_record(op: int, stream, length: int):
    """The mcap record (Schema, Channel, Message or Chunk) of opcode ``op``."""
    from mcap.records import Channel, Chunk, Message, Schema

    if op == _OP_MESSAGE:
        return Message.read(stream, length)
    return {_OP_SCHEMA: Schema, _OP_CHANNEL: Channel, _OP_CHUNK: Chunk}[op].read(stream)


def _inflate(compression: str, data: bytes, limit: int) -> bytes:
    """Decompress at most ``limit + 1`` bytes (so "more than declared" is detectable)."""
    if compression == "":
        return data
    if compression == "zstd":
        import zstandard

        out = bytearray()
        try:
            with zstandard.ZstdDecompressor().stream_reader(
                    io.BytesIO(data), read_across_frames=True) as r:
                while len(out) <= limit:
                    b = r.read(min(1 << 20, limit + 1 - len(out)))
                    if not b:
                        break
                    out += b
        except zstandard.ZstdError as exc:
            raise _Skip(f"corrupt zstd data ({exc})") from None
        return bytes(out)
    if compression == "lz4":
        import lz4.frame

        try:
            return lz4.frame.LZ4FrameDecompressor().decompress(data, max_length=limit + 1)
        except RuntimeError as exc:
            raise _Skip(f"corrupt lz4 data ({exc})") from None
    raise _Skip(f"unsupported compression {compression!r}")


def _wanted(rec: tuple | None, topic: str | None, keep: set[int] | None) -> bool:
    """Whether to yield ``rec``; a channel of ``topic`` joins ``keep`` as it is seen."""
    if rec is None or keep is None:
        return rec is not None
    if rec[0] == "channel" and rec[2] == topic:
        keep.add(rec[1])
    return rec[0] != "message" or rec[1] in keep


def _chunk(chunk, f: Path, pos: int, info: BagInfo, topic: str | None = None,
           keep: set[int] | None = None) -> list[tuple]:
    """The records of a chunk, inflated at a bounded cost (see the module docstring)."""
    limit = info.limits.max_chunk_bytes
    if chunk.uncompressed_size > limit:
        raise _Skip(f"declares {chunk.uncompressed_size} bytes uncompressed, above the "
                    f"ceiling of {limit}")
    raw = _inflate(chunk.compression, chunk.data, chunk.uncompressed_size)
    if len(raw) != chunk.uncompressed_size:
        raise _Skip(f"inflates to {'more' if len(raw) > chunk.uncompressed_size else 'less'} "
                    f"than its declared {chunk.uncompressed_size} bytes")
    if chunk.uncompressed_crc and crc32(raw) != chunk.uncompressed_crc:
        raise _Skip("fails its CRC")
    try:
        return list(_chunk_records(raw, topic, keep))
    except Exception as exc:
        raise _Skip(f"malformed records inside ({type(exc).__name__}: {exc})") from None


def _chunk_records(raw: bytes, topic: str | None, keep: set[int] | None, *,
                   cut: bool = False) -> Iterator[tuple]:
    """The records of an inflated chunk (a chunk holds schema, channel and message records
    only). Messages are framed here from their fixed fields, without a record object each:
    a chunk of a camera bag holds thousands, and the ones of other channels are skipped
    without a copy. Schemas and channels are read with the ``mcap`` library's records.
    A malformed record raises (the chunk is skipped), except with ``cut`` (the data of a
    chunk the file's end cuts): then the records before the cut are given and a malformed
    one is passed over."""
    pos, end, view = 0, len(raw), memoryview(raw)
    head, fields = _HEAD.unpack_from, _MESSAGE_FIELDS.unpack_from
    while pos < end:
        if pos + _HEAD.size > end:
            if cut:
                return
            raise ValueError(f"a record header overruns the chunk at byte {pos}")
        op, length = head(raw, pos)
        body = pos + _HEAD.size
        pos = body + length
        if pos > end:
            if cut:
                return
            raise ValueError(f"record 0x{op:02x} at byte {body - _HEAD.size} overruns the "
                             f"chunk ({length} bytes announced, {end - body} left)")
        if op == _OP_MESSAGE:
            if length < _MESSAGE_FIELDS.size:
                if cut:
                    continue
                raise ValueError(f"message record of {length} bytes")
            channel, _seq, log_time, _pub = fields(raw, body)
            if keep is None or channel in keep:
                yield ("message", channel, log_time, view[body + _MESSAGE_FIELDS.size:pos])
        elif op in (_OP_SCHEMA, _OP_CHANNEL):
            try:
                rec = _as_tuple(_read_record(op, _stream(view[body:pos]), length))
            except Exception:
                if not cut:
                    raise
                continue
            if _wanted(rec, topic, keep):
                yield rec


def _as_tuple(r) -> tuple | None:
    from mcap.records import Channel, Message, Schema

    if isinstance(r, Message):
        return ("message", r.channel_id, r.log_time, bytes(r.data))
    if isinstance(r, Channel):
        return ("channel", r.id, r.topic, r.schema_id, r.metadata.get("topic_type_hash", ""))
    if isinstance(r, Schema):
        return ("schema", r.id, r.name, _schema_text(r))
    return None


def _cut_chunk(body: bytes, f: Path, info: BagInfo, topic: str | None,
               keep: set[int] | None) -> Iterator[tuple]:
    """The whole records of an uncompressed chunk that the file's end cuts."""
    try:
        stream = _stream(body)
        for _ in range(3):
            stream.read8()
        stream.read4()
        compression = stream.read_prefixed_string()
        stream.read8()
        data = body[stream.count:]
    except Exception:
        return
    if compression != "":
        _note(info, f, f"the cut chunk is {compression}-compressed: its messages are lost")
        return
    yield from _chunk_records(data, topic, keep, cut=True)


# ---- SQLite ----------------------------------------------------------------------------

def _sqlite(f: Path, info: BagInfo) -> sqlite3.Connection | None:
    try:
        return sqlite3.connect(f"file:{f}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        _note(info, f, f"sqlite: {exc}")
        return None


def _sqlite_topics(f: Path, info: BagInfo) -> dict[str, TopicInfo]:
    con = _sqlite(f, info)
    if con is None:
        return {}
    out: dict[str, TopicInfo] = {}
    try:
        defs: dict[str, tuple[str, str]] = {}
        try:  # Jazzy and later keep the message definitions in the file
            for typ, text, digest in con.execute(
                    "SELECT topic_type, encoded_message_definition, type_description_hash "
                    "FROM message_definitions"):
                defs[typ] = (text or "", digest or "")
        except sqlite3.Error:
            pass
        for tid, name, msgtype in con.execute("SELECT id, name, type FROM topics"):
            try:
                (n,) = con.execute("SELECT COUNT(*) FROM messages WHERE topic_id = ?",
                                   (tid,)).fetchone()
            except sqlite3.Error:
                n = None
            text, digest = defs.get(msgtype, ("", ""))
            _add_topic(out, name, msgtype, n, text, digest)
    except sqlite3.Error as exc:
        _note(info, f, f"sqlite: {exc}")
    finally:
        con.close()
    return out


#: rosbag2's sqlite3 schema: the column types every row must hold (SQLite stores any type
#: in any column; a row of another type is refused by name, before its value is used)
_SQLITE_MESSAGE_QUERY = (
    "SELECT rowid, typeof(timestamp), timestamp, typeof(data), length(data), "
    "CASE WHEN typeof(data) = 'blob' AND length(data) <= ? THEN data END "
    "FROM messages WHERE topic_id = ? ORDER BY timestamp")


def _sqlite_messages(f: Path, topic: str, info: BagInfo) -> Iterator[tuple[int, bytes]]:
    """The topic's rows as (timestamp, bytes). Raises :class:`BagError` naming the bag, the
    storage, the row and the reason for a row whose timestamp is not an INTEGER or whose
    data is not a BLOB (NULL, TEXT, REAL, INTEGER): checked by SQLite before any value is
    read, so a hostile row costs nothing (an INTEGER 700000000 is never turned into 700 MB).
    A BLOB above ``max_record_bytes`` is skipped as lost, as in an MCAP bag."""
    con = _sqlite(f, info)
    if con is None:
        return
    cap = int(info.limits.max_record_bytes)
    try:
        ids = []
        for tid, typ in con.execute("SELECT id, typeof(id) FROM topics WHERE name = ?",
                                    (topic,)):
            if typ != "integer":
                raise BagError(f"{info.path} (sqlite3): {f.name}: topic {topic!r} has an id "
                               f"of type {typ}, not INTEGER")
            ids.append(tid)
        for tid in ids:
            for rowid, ts_type, ts, data_type, size, data in con.execute(
                    _SQLITE_MESSAGE_QUERY, (cap, tid)):
                where = f"{info.path} (sqlite3): {f.name}: message row {rowid} of {topic}"
                if ts_type != "integer":
                    raise BagError(f"{where}: timestamp is {ts_type.upper()}, not INTEGER")
                if data_type != "blob":
                    raise BagError(f"{where}: data is {data_type.upper()}, not a BLOB")
                if data is None:
                    _note(info, f, f"message row {rowid}: {size} bytes, above the "
                                   f"{cap}-byte record limit: skipped")
                    continue
                yield ts, bytes(data)
    except sqlite3.Error as exc:
        _note(info, f, f"sqlite: {exc}")
    finally:
        con.close()
