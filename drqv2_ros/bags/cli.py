"""``drqv2-ros record | ingest | export``: the bag commands (dispatched by drqv2_ros/cli.py).

Each ``*_main(argv)`` returns a process exit code: 0 done, 1 refused input (bag, shapes),
2 usage error, 3 export unavailable here (LeRobot cannot be imported)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from drqv2_ros.atomic_write import publish_dir
from drqv2_ros.cli_checks import float_in, int_in


def _config_file(name: str) -> Path | None:
    """config/<name> of the package's data files (``drqv2_ros.package_files``), or None."""
    from drqv2_ros.package_files import config_file

    try:
        p = config_file(name)
    except FileNotFoundError:
        return None
    return p if p.is_file() else None


def _err(cmd: str, msg: str) -> None:
    print(f"drqv2-ros {cmd}: error: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- record

# ------------------------------------------------------------------------------- ingest

def ingest_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="drqv2-ros ingest",
        description="Rebuild transitions from the `step` messages of demo bags into a replay "
                    "buffer (created if DIR holds none). Shapes come from the existing buffer, "
                    "--checkpoint, the size options, or else the first bag's steps.")
    ap.add_argument("bags", nargs="+", help="bag directories or .mcap/.db3 files, in order")
    ap.add_argument("--buffer", required=True, help="replay buffer directory")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="converted checkpoint dir (its config.json)")
    src.add_argument("--image-size", type=int_in(1, 4096), nargs=2, metavar=("H", "W"),
                     help="policy image size (with --low-dim and --action-size)")
    ap.add_argument("--views", type=int_in(1, 16), default=1,
                    help="camera views (with --image-size)")
    ap.add_argument("--low-dim", type=int_in(0, 1 << 16), help="single-frame low-dim size")
    ap.add_argument("--action-size", type=int_in(1, 64), help="action size")
    ap.add_argument("--capacity", type=int_in(1, 1 << 31),
                    help="steps (new buffer; default: the bags' steps)")
    ap.add_argument("--frame-stack", type=int_in(1, 64),
                    help="new buffer (default checkpoint's or 3)")
    ap.add_argument("--nstep", type=int_in(1, 1000), help="new buffer (default checkpoint's or 3)")
    ap.add_argument("--discount", type=float_in(0, 1),
                    help="new buffer (default checkpoint's or 0.99)")
    ap.add_argument("--step-topic", help="Step topic name (default: the bag's only one, /step)")
    ap.add_argument("--demo-flags", choices=["auto", "keep", "all"], default="auto",
                    help="auto: flag episodes is_demo unless their steps carry demo flags; "
                         "keep: as recorded; all: every transition")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--summary-json", help="also write the summary as JSON here")
    args = ap.parse_args(argv)
    if args.summary_json and Path(args.summary_json).exists():
        ap.error(f"--summary-json: {args.summary_json} exists: choose a new path")

    from drqv2_ros.bags.episodes import (
        TargetShapes,
        check_bags,
        count_step_messages,
        infer_target,
    )
    from drqv2_ros.bags.ingest import ingest_bags
    from drqv2_ros.bags.reader import BagError
    from drqv2_ros.learning.replay_buffer import ReplayBuffer

    try:
        target = None
        if args.checkpoint:
            target = TargetShapes.from_checkpoint(args.checkpoint)
        elif args.image_size:
            if args.low_dim is None or args.action_size is None:
                _err("ingest", "--image-size needs --low-dim and --action-size")
                return 2
            h, w = args.image_size
            target = TargetShapes((args.views, 3, h, w), args.low_dim, args.action_size,
                                  "the given sizes")
        buffer_dir = Path(args.buffer)
        staging = None  # a new buffer is built beside its place, renamed in when complete
        if (buffer_dir / "spec.json").is_file():
            buffer = ReplayBuffer.open(buffer_dir)
        else:
            if buffer_dir.exists() and (not buffer_dir.is_dir() or any(buffer_dir.iterdir())):
                _err("ingest", f"--buffer: {buffer_dir} exists and holds no replay buffer")
                return 2
            if target is None:
                target = infer_target(args.bags, args.step_topic)
                print(f"shapes from the bag steps: {target.describe()}", flush=True)
            checked = check_bags(args.bags, target, step_topic=args.step_topic)
            fs = args.frame_stack or target.frame_stack
            ns = args.nstep or target.nstep
            capacity = args.capacity or count_step_messages(checked)
            capacity = max(int(capacity), fs + ns + 1)
            buffer_dir.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{buffer_dir.name}.ingest-",
                                            dir=buffer_dir.parent))
            buffer = ReplayBuffer(staging, capacity=capacity, image_shape=target.image_shape,
                                  low_dim_size=target.low_dim_size,
                                  action_size=target.action_size, frame_stack=fs, nstep=ns,
                                  discount=args.discount if args.discount is not None
                                  else target.discount)
        try:
            summary = ingest_bags(args.bags, buffer, step_topic=args.step_topic,
                                  demo_flags=args.demo_flags, target=target,
                                  progress=not args.no_progress)
            buffer.close()
            if staging is not None:
                publish_dir(staging, buffer_dir)  # into the empty folder it was asked to fill
                staging = None
                summary.buffer = str(buffer_dir)
        finally:
            buffer.abandon()  # a no-op after close; after a failure nothing is flushed
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
    except (BagError, ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        from drqv2_ros.bags.ingest import IngestError

        note = "" if isinstance(exc, IngestError) else " (nothing stored)"
        _err("ingest", f"{exc}{note}")
        return 1
    print(summary.format(), flush=True)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary.to_dict(), indent=1) + "\n")
    return 0


# ------------------------------------------------------------------------------- export

def export_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="drqv2-ros export",
        description="Export the complete episodes of bags to a LeRobot dataset directory "
                    "(written whole or not at all). Needs a working lerobot LeRobotDataset.")
    ap.add_argument("paths", nargs="+", metavar="BAG... OUT_DIR")
    ap.add_argument("--fps", type=int_in(1, 1000),
                    help="dataset fps (default: from the step stamps)")
    ap.add_argument("--task", default=None, help="task string of every episode")
    ap.add_argument("--repo-id", default=None, help="dataset repo id (default local/<OUT_DIR>)")
    ap.add_argument("--step-topic", help="Step topic name")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if len(args.paths) < 2:
        _err("export", "give at least one BAG and the OUT_DIR")
        return 2
    *bags, out = args.paths

    from drqv2_ros.bags.export import DEFAULT_TASK, ExportUnavailable, export_bags
    from drqv2_ros.bags.reader import BagError

    if Path(out).exists():
        _err("export", f"{out} exists; export writes a new dataset directory")
        return 2
    try:
        summary = export_bags(bags, out, repo_id=args.repo_id, fps=args.fps,
                              task=args.task or DEFAULT_TASK, step_topic=args.step_topic,
                              progress=not args.no_progress)
    except ExportUnavailable as exc:
        _err("export", f"cannot export here: {exc}")
        return 3
    except (BagError, ValueError, FileExistsError) as exc:
        _err("export", str(exc))
        return 1
    print(summary.format(), flush=True)
    return 0
