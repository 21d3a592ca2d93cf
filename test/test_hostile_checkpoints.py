"""Hostile checkpoint files: each class is refused with one ``error:`` line and exit 2 from the
CLI (never a traceback, never a hang), at a bounded memory cost, and by the library loaders
with a :class:`CheckpointError` naming the reason.

Every case runs the CLI in a child process with a timeout (a regression hangs or explodes
there, not in the test runner); the child's peak RSS is read from ``wait4``."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from small_models import small_config

from drqv2_ros.convert.robobase import convert_snapshot, load_checkpoint_any
from drqv2_ros.convert.robobase_writer import make_robobase_snapshot
from drqv2_ros.policy import DrQV2Config, DrQV2Policy
from drqv2_ros.policy.file_limits import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
KEY = "encoder.convs_per_cam.0.0.weight"


def _snapshot_dict(tmp: Path) -> dict:
    p = make_robobase_snapshot(tmp / "base.pt", small_config(), seed=1)
    return torch.load(p, weights_only=False)  # our own file


def _save(tmp: Path, name: str, snap: dict) -> Path:
    torch.save(snap, tmp / name)
    return tmp / name


def _with_agent(tmp, name, **tensors):
    snap = _snapshot_dict(tmp)
    snap["agent"].update(tensors)
    return _save(tmp, name, snap)


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _deflated_bomb(tmp: Path) -> Path:
    """A torch zip whose one storage record is deflate-compressed zeros: 100 MB from ~100 KB."""
    n = 25_000_000
    buf = io.BytesIO()
    torch.save({"agent": {KEY: torch.zeros(2)}, "cfg": {}}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    path = tmp / "deflated.pt"
    with zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"K\x02t", b"J" + n.to_bytes(4, "little") + b"t")
            if info.filename.endswith("data/0"):
                out.writestr(info.filename, b"\0" * (4 * n), compress_type=zipfile.ZIP_DEFLATED)
            else:
                out.writestr(info, data)
    assert path.stat().st_size < 1_000_000
    return path


def _nested_lists(depth: int, width: int):
    node: list = ["x"] * width
    for _ in range(depth):
        node = [node] * width
    return node


def _folder(tmp: Path, name: str, **config_changes) -> Path:
    folder = DrQV2Policy(small_config()).save_pretrained(tmp / name)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(config_changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def hostile_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}
    os.mkfifo(tmp / "pipe.pt")
    cases["named pipe"] = (tmp / "pipe.pt", "named pipe")
    (tmp / "dir_with_pipe").mkdir()
    os.mkfifo(tmp / "dir_with_pipe" / "config.json")
    (tmp / "dir_with_pipe" / "model.safetensors").write_bytes(b"")
    cases["pipe as config.json"] = (tmp / "dir_with_pipe", "named pipe")
    cases["stride-0 tensor"] = (
        _with_agent(tmp, "stride0.pt", **{KEY: torch.zeros(1).expand(100_000, 100_000)}),
        "stride-0 or overlapping")
    cases["deflated storage"] = (_deflated_bomb(tmp), "compressed")
    snap = _snapshot_dict(tmp)
    snap["cfg"] = _Reduce(bytes, (10**10,))
    cases["bytes(n) builtin"] = (_save(tmp, "bytes.pt", snap), r"bytes\(<int>\)")
    snap = _snapshot_dict(tmp)
    cfg: dict = {}
    cfg["self"] = cfg
    snap["cfg"] = cfg
    cases["self-referencing cfg"] = (_save(tmp, "selfref.pt", snap), "self-referencing")
    snap = _snapshot_dict(tmp)
    snap["cfg"] = {"method": _nested_lists(9, 10)}
    cases["billion laughs cfg"] = (_save(tmp, "laughs.pt", snap), "more than 100000 values")
    cases["0-d weight"] = (_with_agent(tmp, "zerod.pt", **{KEY: torch.tensor(1.0)}),
                           "inconsistent shapes|not a usable RoboBase DrQ-v2 snapshot|has shape")
    cases["1-d weight"] = (_with_agent(tmp, "oned.pt", **{KEY: torch.zeros(8)}),
                           "inconsistent shapes|not a usable RoboBase DrQ-v2 snapshot|has shape")
    cases["zero input channels"] = (
        _with_agent(tmp, "zeroch.pt", **{KEY: torch.zeros(8, 0, 3, 3)}),
        "not a usable|must be >= 1|not a multiple|has shape")
    cases["enormous MLPs in a 1 KB config"] = (
        _folder(tmp, "huge_mlp", actor_mlp_nodes=[65536] * 32), "above the limit")
    big = _folder(tmp, "big_config")
    with open(big / "config.json", "r+b") as f:  # sparse: 1 GB on paper, nothing on disk
        f.truncate(1 << 30)
    cases["1 GB config.json"] = (big, "above the limit")
    deep = _folder(tmp, "deep_json")
    (deep / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    cases["deeply nested config.json"] = (deep, "not valid JSON")
    sched = _folder(tmp, "bad_schedule", stddev_schedule="linear(1.0,0.1,0)")
    cases["schedule dividing by zero"] = (sched, "durations")
    return cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return hostile_cases(tmp_path_factory.mktemp("hostile"))


#: Child process: the library loader (what the policy node's loader process runs) prints its
#: refusal on stdout, then the CLI runs on the same file (stderr, exit code).
CHILD = """
import sys
from drqv2_ros.convert.cli import convert_main
from drqv2_ros.convert.robobase import load_checkpoint_any
from drqv2_ros.policy.file_limits import CheckpointError
try:
    load_checkpoint_any(sys.argv[1])
    print("LIB loaded")
except CheckpointError as exc:
    print("LIB error:", str(exc).replace(chr(10), " "))
sys.stdout.flush()
if len(sys.argv) > 2:
    sys.exit(convert_main(["--quiet", sys.argv[1], sys.argv[2]]))
"""


def _child(*args: str, timeout: float = 60.0) -> tuple[int, str, str, float]:
    """Exit code, stdout, stderr and peak RSS (MB, from wait4) of :data:`CHILD`."""
    p = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            out, err = p.stdout.read(), p.stderr.read()
            p.stdout.close()
            p.stderr.close()
            p.returncode = os.waitstatus_to_exitcode(status)
            return (p.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                    usage.ru_maxrss / 1024)
        if time.monotonic() > deadline:
            p.kill()
            p.wait()
            pytest.fail(f"{args} still running after {timeout} s (hung)")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory):
    """Peak RSS of loading a legitimate small checkpoint (torch import included)."""
    tmp = tmp_path_factory.mktemp("legit")
    good = make_robobase_snapshot(tmp / "good.pt", small_config(), seed=1)
    rc, out, err, rss = _child(str(good))
    assert rc == 0 and "LIB loaded" in out, err
    return rss


@pytest.mark.parametrize("name", [
    "named pipe", "pipe as config.json", "stride-0 tensor", "deflated storage",
    "bytes(n) builtin", "self-referencing cfg", "billion laughs cfg", "0-d weight",
    "1-d weight", "zero input channels", "enormous MLPs in a 1 KB config", "1 GB config.json",
    "deeply nested config.json", "schedule dividing by zero"])
def test_refused_with_reason_bounded_and_without_traceback(cases, baseline_rss, name, tmp_path):
    path, pattern = cases[name]
    cli = path.is_file() or path.is_fifo()  # the converter takes snapshot files
    rc, out, err, rss = _child(str(path), *([str(tmp_path / "out")] if cli else []))
    # the library loader: a CheckpointError with the reason
    assert "LIB error:" in out and re.search(pattern, out), (out, err)
    # bounded: the legitimate small checkpoint is ~0.2 MB; a refused load may not cost more
    # than a few MB beyond the interpreter + torch that the baseline run also had
    assert rss < baseline_rss + 64, f"{name}: peak {rss:.0f} MB vs legit {baseline_rss:.0f} MB"
    if cli:  # the CLI: exit 2, one `error:` line, no traceback, nothing written
        assert rc == 2, err
        lines = [ln for ln in err.strip().splitlines() if ln]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert not (tmp_path / "out").exists()


def test_library_loaders_raise_checkpoint_error(cases):
    for name in ["stride-0 tensor", "self-referencing cfg", "0-d weight", "1 GB config.json"]:
        path, pattern = cases[name]
        with pytest.raises(CheckpointError, match=pattern):
            load_checkpoint_any(path)
    path, _ = cases["zero input channels"]
    with pytest.raises(CheckpointError):
        convert_snapshot(path, path.parent / "never", progress=False)


def test_config_schema_ceilings():
    with pytest.raises(Exception, match="schema limit"):
        DrQV2Config(**{**small_config().to_dict(), "actor_mlp_nodes": [10**9]})
    with pytest.raises(Exception, match="schema limit"):
        DrQV2Config(**{**small_config().to_dict(), "frame_stack": 10**6,
                       "low_dim_size": 18 * 10**6})
