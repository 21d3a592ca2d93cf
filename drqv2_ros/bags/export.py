"""Demonstration bags -> a LeRobot dataset on disk (``drqv2-ros export BAG... OUT_DIR``).

Needs ``lerobot`` (0.4.x) with a working ``LeRobotDataset`` (its imports: ``datasets``,
``torch``, ``torchvision``...). Where it cannot be imported, export says exactly why and
exits non-zero before writing anything. The dataset is built in a hidden sibling directory
and renamed into place only when complete: ``OUT_DIR`` is either absent or a whole dataset.

Frames follow LeRobot's convention (the action is the one taken AT the frame): frame k of an
episode holds o_k (step k) with a_k, r_{k+1} and done_{k+1} (from step k+1); the final
observation of an episode has no action and is not a frame. Episodes are the complete ones
that ingest would use (same reader, same skips).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drqv2_ros.atomic_write import publish_dir
from drqv2_ros.bags.episodes import EpisodeData, ReadReport, check_bags, read_episodes

__all__ = ["ExportUnavailable", "ExportSummary", "episode_frames", "export_bags",
           "lerobot_dataset_class", "lerobot_features"]

DEFAULT_TASK = "pick up the cube"


class ExportUnavailable(RuntimeError):
    """LeRobot's dataset writer cannot be used here; the message says why."""


def lerobot_dataset_class() -> type:
    """``lerobot.datasets.lerobot_dataset.LeRobotDataset``, or :class:`ExportUnavailable`."""
    try:
        import lerobot  # noqa: F401
    except Exception as exc:
        raise ExportUnavailable(
            f"lerobot is not importable ({type(exc).__name__}: {exc}); install lerobot 0.4.x "
            "to export LeRobot datasets") from None
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except Exception as exc:
        version = "unknown version"
        try:
            from importlib.metadata import version as _v

            version = _v("lerobot")
        except Exception:
            pass
        raise ExportUnavailable(
            f"lerobot {version} is installed but LeRobotDataset cannot be imported: "
            f"{type(exc).__name__}: {exc}. Its dataset writer needs that module (LeRobot's "
            "datasets/torchvision dependencies); install it in this environment, or ingest "
            "the bags into a replay buffer instead (drqv2-ros ingest)") from None
    return LeRobotDataset


def camera_names_for(first_frame_ids: Sequence[str], views: int) -> list[str]:
    ids = [i for i in first_frame_ids if i]
    if len(ids) == views and len(set(ids)) == views and all(
            i.replace("_", "").isalnum() for i in ids):
        return ids
    return ["rgb"] if views == 1 else [f"rgb{i}" for i in range(views)]


def lerobot_features(image_shape: tuple[int, ...], low_dim: int, action: int,
                     camera_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    _v, _c, h, w = image_shape
    feats: dict[str, dict[str, Any]] = {
        f"observation.images.{name}": {"dtype": "image", "shape": (h, w, 3),
                                       "names": ["height", "width", "channels"]}
        for name in camera_names
    }
    feats["observation.state"] = {"dtype": "float32", "shape": (low_dim,), "names": None}
    feats["action"] = {"dtype": "float32", "shape": (action,), "names": None}
    feats["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    feats["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    feats["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    feats["is_intervention"] = {"dtype": "bool", "shape": (1,), "names": None}
    return feats


def episode_frames(episode: EpisodeData, camera_names: Sequence[str], task: str
                   ) -> list[dict[str, Any]]:
    """LeRobot frames of one complete episode (len(steps) - 1 frames)."""
    frames = []
    steps = episode.steps
    for cur, nxt in zip(steps[:-1], steps[1:]):
        frame: dict[str, Any] = {
            f"observation.images.{name}": np.ascontiguousarray(view.transpose(1, 2, 0))
            for name, view in zip(camera_names, cur.images)
        }
        frame["observation.state"] = cur.low_dim.astype(np.float32)
        frame["action"] = nxt.action.astype(np.float32)
        frame["next.reward"] = np.array([nxt.reward], np.float32)
        frame["next.done"] = np.array([nxt.is_last], bool)
        frame["next.success"] = np.array([nxt.is_last and nxt.terminated and nxt.reward > 0],
                                         bool)
        frame["is_intervention"] = np.array([nxt.is_intervention], bool)
        frame["task"] = task
        frames.append(frame)
    return frames


@dataclass
class ExportSummary:
    out_dir: str
    episodes: int = 0
    frames: int = 0
    fps: int = 0
    skipped: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"exported {self.episodes} episodes ({self.frames} frames, {self.fps} fps) "
                 f"to {self.out_dir}"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} episode(s):")
            lines += [f"  {s}" for s in self.skipped]
        if self.lost:
            lines.append("lost (bag damage):")
            lines += [f"  {s}" for s in self.lost]
        return "\n".join(lines)


def _estimate_fps(episodes: list[EpisodeData]) -> int:
    dts = [b.stamp_ns - a.stamp_ns for ep in episodes for a, b in zip(ep.steps, ep.steps[1:])
           if b.stamp_ns > a.stamp_ns]
    if not dts:
        return 10
    return max(1, int(round(1e9 / float(np.median(dts)))))


def export_bags(bags: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                repo_id: str | None = None, fps: int | None = None, task: str = DEFAULT_TASK,
                robot_type: str = "so101_follower", step_topic: str | None = None,
                progress: bool = False, dataset_cls: type | None = None) -> ExportSummary:
    """Write the complete episodes of ``bags`` as a LeRobot dataset at ``out_dir``.

    Raises :class:`ExportUnavailable` (LeRobot unusable) or ``FileExistsError`` before
    anything is written; on any later failure the partial dataset is removed."""
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; export writes a new dataset directory")
    cls = dataset_cls or lerobot_dataset_class()
    checked = check_bags(bags, step_topic=step_topic)
    report = ReadReport()
    episodes = [ep for ep in read_episodes(bags, report=report, progress=progress,
                                           checked=checked) if len(ep.steps) > 1]
    if not episodes:
        raise ValueError("no complete episode in the bags: nothing to export\n"
                         + "\n".join(report.skipped + report.lost))
    first = episodes[0].steps[1]
    shape = tuple(first.images.shape)
    names = camera_names_for(episodes[0].steps[0].frame_ids, shape[0])
    bad = [f"{ep.bag} episode {ep.episode}" for ep in episodes
           if tuple(ep.steps[0].images.shape) != shape
           or ep.steps[0].low_dim.size != first.low_dim.size
           or ep.steps[1].action.size != first.action.size]
    if bad:
        raise ValueError(f"episodes differ in shape from the first one: {bad[:5]}")
    fps = int(fps) if fps else _estimate_fps(episodes)
    features = lerobot_features(shape, int(first.low_dim.size), int(first.action.size), names)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    summary = ExportSummary(str(out), fps=fps, skipped=report.skipped, lost=report.lost)
    try:
        ds = cls.create(repo_id=repo_id or f"local/{out.name}", fps=fps, features=features,
                        root=tmp, robot_type=robot_type, use_videos=False)
        for ep in episodes:
            frames = episode_frames(ep, names, task)
            for frame in frames:
                ds.add_frame(frame)
            ds.save_episode()
            summary.episodes += 1
            summary.frames += len(frames)
        finalize = getattr(ds, "finalize", None)
        if finalize is not None:
            finalize()
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
