"""Reading checkpoint files at a bounded cost, whatever a hostile file declares.

Every file a checkpoint load touches goes through here first:

* only regular files are opened (a named pipe, socket or device is refused from ``stat``, and
  the opened descriptor is checked again, non-blocking, so a file swapped for a pipe between
  the check and the open cannot hang the reader);
* sizes are checked against :class:`LoadLimits` before anything is read: the whole file, a
  ``config.json``, a torch zip's pickle; a torch zip may only hold uncompressed (stored)
  records, as ``torch.save`` writes them, so no record can expand beyond the file's bytes;
* a ``model.safetensors`` header is parsed on its own (its length, every tensor's dtype,
  shape and byte range checked against the file) so that names and shapes can be compared
  with what the config implies before a single tensor is allocated.

The limits bound what a refused load can allocate: a torch zip's tensors cannot exceed the
file's bytes, tensor views in its pickle are capped in :mod:`drqv2_ros.convert.safe_pickle`,
and a config's implied model is sized on the meta device before it is built.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class CheckpointError(RuntimeError):
    """A checkpoint (folder, snapshot or weights) is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class LoadLimits:
    """Ceilings for one checkpoint load (bytes)."""

    max_file_bytes: int = 1 << 30        # any weights/snapshot file (the pick-101 .pt: 41 MB)
    max_config_bytes: int = 1 << 20      # config.json
    max_pickle_bytes: int = 64 << 20     # the pickle inside a torch zip
    max_zip_entries: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_config_bytes", "max_pickle_bytes",
                     "max_zip_entries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


DEFAULT_LIMITS = LoadLimits()

_KINDS = [(stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISDIR, "a directory")]


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike, max_bytes: int, what: str = "file") -> BinaryIO:
    """Open ``path`` for reading if it is a regular file of at most ``max_bytes``."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot stat ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: is {_kind(st.st_mode)}, expected a regular {what}")
    if st.st_size > max_bytes:
        raise CheckpointError(f"{path}: {what} of {st.st_size} bytes is above the limit of "
                              f"{max_bytes} bytes")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot open ({exc.strerror or exc})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        os.close(fd)
        raise CheckpointError(f"{path}: changed while being opened (now {_kind(st.st_mode)}, "
                              f"{st.st_size} bytes)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_text(path: str | os.PathLike, max_bytes: int, what: str = "file") -> str:
    """The whole of a small regular text file, refused above ``max_bytes`` (read bounded)."""
    with open_regular(path, max_bytes, what) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CheckpointError(f"{path}: {what} grew above the limit of {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: {what} is not UTF-8 text ({exc})") from None


def check_torch_zip(f: BinaryIO, path: str | os.PathLike,
                    limits: LoadLimits = DEFAULT_LIMITS) -> None:
    """Refuse a torch zip whose records could expand beyond the file: compressed records,
    records larger than the file, a pickle above ``max_pickle_bytes``, too many entries."""
    size = os.fstat(f.fileno()).st_size
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt torch file ({exc})") from None
    finally:
        f.seek(0)
    if len(infos) > limits.max_zip_entries:
        raise CheckpointError(f"{path}: {len(infos)} zip entries (at most "
                              f"{limits.max_zip_entries})")
    total = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path}: zip record {info.filename} is compressed; torch "
                                  "writes stored records only (refused: it could expand "
                                  "beyond the file)")
        if info.file_size > size:
            raise CheckpointError(f"{path}: zip record {info.filename} declares "
                                  f"{info.file_size} bytes, more than the file's {size}")
        if info.filename.endswith("data.pkl") and info.file_size > limits.max_pickle_bytes:
            raise CheckpointError(f"{path}: pickle of {info.file_size} bytes is above the "
                                  f"limit of {limits.max_pickle_bytes}")
        total += info.file_size
    if total > size:
        raise CheckpointError(f"{path}: zip records declare {total} bytes, more than the "
                              f"file's {size}")


_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
              "I8": 1, "U8": 1, "BOOL": 1}


def safetensors_header(path: str | os.PathLike,
                       limits: LoadLimits = DEFAULT_LIMITS) -> dict[str, tuple[str, tuple]]:
    """``name -> (dtype, shape)`` of a safetensors file, every entry checked against the
    file's bytes (nothing but the header is read)."""
    with open_regular(path, limits.max_file_bytes, "weights file") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, limits.max_config_bytes * 16):
            raise CheckpointError(f"{path}: safetensors header declares {n} bytes (file "
                                  f"{size} bytes); truncated or corrupt")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not an object")
    data_bytes = size - 8 - n
    out: dict[str, tuple[str, tuple]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(s) for s in shape)
            ok = (dtype in _ST_DTYPES and all(s >= 0 for s in shape)
                  and 0 <= begin <= end <= data_bytes
                  and end - begin == math.prod(shape) * _ST_DTYPES[dtype])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path}: safetensors entry {name!r} is inconsistent with "
                                  f"the file ({entry!r:.200}); truncated or corrupt")
        out[name] = (dtype, shape)
    return out
