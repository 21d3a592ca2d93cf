"""The package's one atomic write: readers see the old or the whole new file, never a torn
one; a failure (a full disk included) leaves the old file and no temporary behind."""

from __future__ import annotations

import errno
import json
import os

import pytest

from drqv2_ros import atomic_write as aw


def leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def test_write_replaces_whole_and_syncs_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(aw.os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    target = tmp_path / "sub" / "state.json"
    aw.atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert target.read_text().startswith('{\n "a"')  # sorted keys, indent 1
    assert len(synced) >= 2  # the file, then the folder holding the rename
    aw.atomic_write_text(target, "new")
    assert target.read_text() == "new" and oct(target.stat().st_mode & 0o777) == "0o644"
    assert leftovers(target.parent) == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch, err):
    target = tmp_path / "model.safetensors"
    aw.atomic_write_bytes(target, b"old contents")

    def fail(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(aw.os, "fsync", fail)
    with pytest.raises(OSError) as info:
        aw.atomic_write_bytes(target, b"new contents that never land")
    assert info.value.errno == err
    assert target.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


def test_atomic_path_for_writers_that_need_a_file_name(tmp_path):
    target = tmp_path / "w.bin"
    with aw.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"x" * 10)
        assert not target.exists()  # nothing visible before the rename
    assert target.read_bytes() == b"x" * 10
    with pytest.raises(RuntimeError), aw.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"x" * 10 and leftovers(tmp_path) == []


def test_a_checkpoint_save_on_a_full_disk_raises_oserror(tmp_path, monkeypatch):
    """Every writer surfaces a full disk as OSError (ENOSPC), which the learner's fault
    handling catches; safetensors' own file writer would raise a SafetensorError instead."""
    from test_learner import make_policy

    policy = make_policy()
    policy.save_pretrained(tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(aw.os, "fsync", full)
    with pytest.raises(OSError) as info:
        policy.save_pretrained(tmp_path / "ckpt")
    assert info.value.errno == errno.ENOSPC
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
