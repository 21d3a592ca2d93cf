"""``drqv2-ros convert SNAPSHOT.pt OUT_DIR [--force] [--quiet]``.

Converts a RoboBase DrQ-v2 snapshot into a policy folder and prints what was inferred,
carried over and defaulted. Bad input: exit code 2 and a one-line ``error:`` message.
"""

from __future__ import annotations

import argparse
import sys

from drqv2_ros.convert.robobase import CheckpointError, convert_snapshot


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="drqv2-ros convert",
        description=(
            "Convert a RoboBase DrQ-v2 snapshot (latest_snapshot.pt) into a policy folder "
            "(config.json + model.safetensors). The snapshot is read with a restricted "
            "unpickler: files referencing code outside RoboBase's snapshot contents are refused."
        ),
    )
    p.add_argument("snapshot", help="RoboBase snapshot file (.pt)")
    p.add_argument("out_dir", help="output folder (must not exist or be empty, see --force)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no summary")
    p.add_argument(
        "--camera-names",
        default=None,
        help="comma-separated view names in encoder order (default: from cfg, else 'rgb')",
    )
    return p


def convert_main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.camera_names.split(",")] if args.camera_names else None
    try:
        report = convert_snapshot(
            args.snapshot,
            args.out_dir,
            progress=not args.quiet,
            force=args.force,
            camera_names=names,
        )
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing written", file=sys.stderr)
        return 130
    except (OSError, MemoryError) as exc:  # disk full, permissions: nothing was published
        print(f"error: {type(exc).__name__}: {exc}; nothing written", file=sys.stderr)
        return 2
    if not args.quiet:
        print(report.summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(convert_main(sys.argv[1:]))
