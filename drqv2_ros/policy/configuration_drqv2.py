"""Configuration of a DrQ-v2 image policy (LeRobot style: a dataclass with ``type = "drqv2"``).

One :class:`DrQV2Config` fully describes a checkpoint folder: the observation layout the
network expects (views, image size, frame stack, low-dimensional state layout and units), the
architecture (so the weights can be rebuilt without guessing), the DrQ-v2 hyper-parameters
carried over from the RoboBase snapshot, and the training counters at the time of the
snapshot. It is stored as ``config.json`` next to ``model.safetensors``.

JSON (de)serialisation is strict: unknown fields, missing fields, wrong types and inconsistent
values raise :class:`ConfigError` with a message naming the field. No lerobot import needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drqv2_ros.atomic_write import atomic_write_text
from drqv2_ros.policy.schedule import ScheduleError, parse_schedule, schedule

CONFIG_NAME = "config.json"
#: Fields of older config.json files that were training counters (now ``counters.json``).
LEGACY_COUNTERS = ("main_loop_iterations", "pretrain_step", "global_env_episode")
#: Fields a LeRobot ``save_pretrained`` adds to config.json (LeRobot 0.4's PreTrainedConfig,
#: and the lerobot_policy_drqv2 plugin's own): not this network's description, so they are
#: read past, and nothing else unknown is.
LEROBOT_FIELDS = (
    "n_obs_steps", "normalization_mapping", "input_features", "output_features", "device",
    "use_amp", "use_peft", "push_to_hub", "repo_id", "private", "tags", "license",
    "pretrained_path", "shared_encoder", "num_discrete_actions", "vision_encoder_name",
    "freeze_vision_encoder", "augment_in_policy", "update_seed")

# The per-frame low-dim layouts of the pick-101 SO-101 checkpoints (see docs/convert.md).
# Each entry is (name, size, unit). Angles are radians and positions metres, exactly as the
# simulator produced them during training: a real-robot driver reporting degrees must convert.
PICK101_LOW_DIM_LAYOUT_18: list[tuple[str, int, str]] = [
    ("joint_pos", 6, "rad"),
    ("joint_vel", 6, "rad/s"),
    ("gripper_xyz", 3, "m"),
    ("gripper_euler", 3, "rad"),
]
PICK101_LOW_DIM_LAYOUT_21: list[tuple[str, int, str]] = PICK101_LOW_DIM_LAYOUT_18 + [
    ("cube_pos", 3, "m"),
]


# Schema ceilings: far above any DrQ-v2 network, low enough that a small hostile config cannot
# make a loader build (or even describe) a giant model. Sizes are also checked against the
# weights file before anything is allocated (``modeling_drqv2.model_shapes``).
_MAX_WIDTH = 1 << 16
_UPPER_BOUNDS = {
    "num_views": 16, "camera_names": 16, "channels_per_frame": 16, "image_height": 4096,
    "image_width": 4096, "frame_stack": 64, "low_dim_size": 1 << 16, "low_dim_per_frame": 4096,
    "low_dim_layout": 64, "time_obs_size": 1 << 16, "action_dim": 64, "encoder_channels": 4096,
    "encoder_num_downsample_convs": 16, "encoder_num_post_downsample_convs": 64,
    "encoder_kernel_size": 64, "bottleneck_size": _MAX_WIDTH, "actor_mlp_nodes": 32,
    "critic_mlp_nodes": 32, "num_critics": 64, "nstep": 1000, "aug_pad": 1024,
    "batch_size": 1 << 20, "defaulted": 256,
}


class ConfigError(ValueError):
    """A configuration is malformed: unknown/missing field, wrong type or inconsistent value."""


def default_low_dim_layout(low_dim_per_frame: int) -> list[tuple[str, int, str]]:
    """Best-known per-frame layout for a low-dim size: pick-101's 18 or 21, else one block."""
    if low_dim_per_frame == 18:
        return [tuple(x) for x in PICK101_LOW_DIM_LAYOUT_18]
    if low_dim_per_frame == 21:
        return [tuple(x) for x in PICK101_LOW_DIM_LAYOUT_21]
    if low_dim_per_frame <= 0:
        return []
    return [("low_dim", low_dim_per_frame, "unknown")]


@dataclass
class DrQV2Config:
    """Everything needed to rebuild and run a DrQ-v2 policy checkpoint.

    Field groups: observation layout, action, architecture, DrQ-v2 hyper-parameters,
    snapshot counters, provenance. Derived sizes are properties (``in_channels``,
    ``feat_per_view``, ``fused_dim``...).
    """

    # Policy type tag, as in LeRobot's ``PreTrainedConfig`` registry. Always "drqv2".
    type: str = "drqv2"

    # ---------------------------------------------------------------- observation layout
    # Names of the camera views, in the encoder's view order (``convs_per_cam.<i>``).
    # Batches carry them as ``observation.images.<name>``. RoboBase's pick-101 uses "rgb".
    camera_names: list[str] = field(default_factory=lambda: ["rgb"])
    # Number of camera views; must equal len(camera_names).
    num_views: int = 1
    # Channels of ONE frame of one view (3 = RGB, uint8 0..255).
    channels_per_frame: int = 3
    # Image height and width in pixels fed to the encoder (RoboBase: square, 84x84).
    image_height: int = 84
    image_width: int = 84
    # Frames stacked on the channel axis, oldest first: encoder in-channels =
    # frame_stack * channels_per_frame; low_dim_size = frame_stack * low_dim_per_frame.
    frame_stack: int = 3
    # Total low-dim input size (all stacked frames concatenated, oldest first), e.g. 54 / 63.
    low_dim_size: int = 54
    # Low-dim size of one frame, e.g. 18 (pick-101) or 21 (older pick-101 with cube_pos).
    low_dim_per_frame: int = 18
    # Per-frame layout of the low-dim vector: list of (name, size, unit); sizes sum to
    # low_dim_per_frame. Units are those of training (radians, rad/s, metres).
    low_dim_layout: list[tuple[str, int, str]] = field(
        default_factory=lambda: [tuple(x) for x in PICK101_LOW_DIM_LAYOUT_18]
    )
    # Size of the optional one-hot time observation (critic only in RoboBase); 0 = absent.
    time_obs_size: int = 0

    # -------------------------------------------------------------------------- action
    # Action dimension (pick-101: dx, dy, dz, gripper), each in [-1, 1].
    action_dim: int = 4
    # Actions predicted per step (RoboBase action_sequence). Only 1 is supported.
    action_sequence: int = 1
    # Metres of end-effector motion per unit of the xyz action components (pick-101: 0.02).
    action_scale_m: float = 0.02

    # -------------------------------------------------------------------- architecture
    # Output channels of every encoder conv (RoboBase encoder_model.channels).
    encoder_channels: int = 32
    # Encoder convs with stride 2 (first) and stride 1 (after); kernel size; padding 0.
    encoder_num_downsample_convs: int = 1
    encoder_num_post_downsample_convs: int = 3
    encoder_kernel_size: int = 3
    # Width of the Linear+LayerNorm+Tanh bottleneck applied to each bottlenecked input.
    bottleneck_size: int = 50
    # Hidden layer widths of the actor's and critics' main MLPs.
    actor_mlp_nodes: list[int] = field(default_factory=lambda: [256, 256])
    critic_mlp_nodes: list[int] = field(default_factory=lambda: [256, 256])
    # Number of Q networks in the critic ensemble (target = min over them).
    num_critics: int = 2

    # ------------------------------------------------------------ DrQ-v2 hyper-parameters
    # Exploration std schedule, RoboBase syntax: a constant, "linear(init,final,N)" or
    # "step_linear(init,final1,N1,final2,N2)"; indexed by main-loop iterations.
    stddev_schedule: str = "linear(1.0,0.1,500000)"
    # Clip of the exploration noise when sampling target / actor-loss actions.
    stddev_clip: float = 0.3
    # Polyak rate of the target critic update.
    critic_target_tau: float = 0.01
    # Per-step discount gamma (RoboBase replay.gamma).
    discount: float = 0.99
    # N of the n-step return (RoboBase replay.nstep).
    nstep: int = 3
    # AdamW learning rates of actor, critic, encoder and (parameter-free) view fusion.
    actor_lr: float = 1e-4
    critic_lr: float = 1e-4
    encoder_lr: float = 1e-4
    view_fusion_lr: float = 1e-4
    # AdamW weight decay for all optimisers.
    weight_decay: float = 0.0
    # Random-shift augmentation of images in the update; pad in pixels (replicate).
    use_augmentation: bool = True
    aug_pad: int = 4
    # The batch size of the run that made these weights (RoboBase's, carried over by the
    # converter). Informational: the batch of an update is the learner's ``batch_size``
    # parameter (TrainingConfig), whatever this says.
    batch_size: int = 256

    # --------------------------------------------------------------- RoboBase run shape
    # (The snapshot's training counters are not configuration: ``counters.json``,
    # ``policy.training_counters``.)
    # RoboBase's num_train_envs and action_repeat (to convert iterations to frames).
    num_train_envs: int = 1
    action_repeat: int = 1

    # ---------------------------------------------------------------------- provenance
    # Where the weights came from (snapshot file name, "random-init", ...). Informational.
    source: str = ""
    # Names of the hyper-parameter fields that were NOT found in the source and defaulted.
    defaulted: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in [
            "camera_names", "low_dim_layout", "actor_mlp_nodes", "critic_mlp_nodes", "defaulted"
        ]:
            if not isinstance(getattr(self, name), (list, tuple)):
                raise ConfigError(f"{name} must be a list, got {getattr(self, name)!r}")
        if not all(isinstance(e, (list, tuple)) for e in self.low_dim_layout):
            raise ConfigError(
                f"low_dim_layout entries must be [name, size, unit], got {self.low_dim_layout!r}"
            )
        self.camera_names = list(self.camera_names)
        self.low_dim_layout = [tuple(x) for x in self.low_dim_layout]
        self.actor_mlp_nodes = list(self.actor_mlp_nodes)
        self.critic_mlp_nodes = list(self.critic_mlp_nodes)
        self.defaulted = list(self.defaulted)
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def in_channels(self) -> int:
        """Encoder input channels per view: frame_stack * channels_per_frame."""
        return self.frame_stack * self.channels_per_frame

    @property
    def encoder_out_hw(self) -> tuple[int, int]:
        """Spatial size after the conv stack (84 -> 41 -> 39 -> 37 -> 35)."""
        h, w = self.image_height, self.image_width
        k = self.encoder_kernel_size
        for _ in range(self.encoder_num_downsample_convs):
            h, w = (h - k) // 2 + 1, (w - k) // 2 + 1
        for _ in range(self.encoder_num_post_downsample_convs):
            h, w = h - k + 1, w - k + 1
        return h, w

    @property
    def feat_per_view(self) -> int:
        """Encoder features per view: channels * out_h * out_w (32*35*35 = 39200)."""
        h, w = self.encoder_out_hw
        return self.encoder_channels * h * w

    @property
    def fused_dim(self) -> int:
        """Size of the flattened multi-view features (num_views * feat_per_view)."""
        return self.num_views * self.feat_per_view

    def low_dim_slices(self) -> dict[str, slice]:
        """Name -> slice into ONE frame of the low-dim vector, from ``low_dim_layout``."""
        out, start = {}, 0
        for name, size, _unit in self.low_dim_layout:
            out[name] = slice(start, start + size)
            start += size
        return out

    def std_at(self, step: int) -> float:
        """Exploration std of the schedule at a main-loop iteration."""
        return schedule(self.stddev_schedule, step)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` on wrong types or inconsistent values."""
        _check_types(self)
        if self.type != "drqv2":
            raise ConfigError(f"config 'type' must be 'drqv2', got {self.type!r}")
        if self.num_views < 1 or len(self.camera_names) != self.num_views:
            raise ConfigError(
                f"num_views={self.num_views} but camera_names has {len(self.camera_names)} "
                f"entries {self.camera_names}"
            )
        if len(set(self.camera_names)) != len(self.camera_names) or not all(
            self.camera_names
        ):
            raise ConfigError(f"camera_names must be distinct non-empty: {self.camera_names}")
        positive = [
            "channels_per_frame", "image_height", "image_width", "frame_stack", "action_dim",
            "action_sequence", "encoder_channels", "encoder_kernel_size", "bottleneck_size",
            "num_critics", "nstep", "batch_size", "num_train_envs", "action_repeat",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, most in _UPPER_BOUNDS.items():
            v = getattr(self, name)
            if (len(v) if isinstance(v, list) else v) > most:
                raise ConfigError(f"{name} {'has more than' if isinstance(v, list) else 'is above'}"
                                  f" {most}{' entries' if isinstance(v, list) else ''} "
                                  "(schema limit)")
        for name in ("actor_mlp_nodes", "critic_mlp_nodes"):
            if any(n > _MAX_WIDTH for n in getattr(self, name)):
                raise ConfigError(f"{name} entries must be <= {_MAX_WIDTH} (schema limit)")
        for name in [
            "low_dim_size", "low_dim_per_frame", "time_obs_size", "aug_pad",
            "encoder_num_downsample_convs", "encoder_num_post_downsample_convs",
        ]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.action_sequence != 1:
            raise ConfigError(f"only action_sequence 1 is supported, got {self.action_sequence}")
        if self.low_dim_size != self.frame_stack * self.low_dim_per_frame:
            raise ConfigError(
                f"low_dim_size {self.low_dim_size} != frame_stack {self.frame_stack} x "
                f"low_dim_per_frame {self.low_dim_per_frame}"
            )
        for entry in self.low_dim_layout:
            if (
                len(entry) != 3
                or not isinstance(entry[0], str)
                or isinstance(entry[1], bool)
                or not isinstance(entry[1], int)
                or entry[1] < 1
                or not isinstance(entry[2], str)
            ):
                raise ConfigError(
                    f"low_dim_layout entries must be [name, size>=1, unit], got {list(entry)}"
                )
        layout_total = sum(e[1] for e in self.low_dim_layout)
        if layout_total != self.low_dim_per_frame:
            raise ConfigError(
                f"low_dim_layout sizes sum to {layout_total}, expected low_dim_per_frame "
                f"{self.low_dim_per_frame}"
            )
        h, w = self.encoder_out_hw
        if h < 1 or w < 1:
            raise ConfigError(
                f"image {self.image_height}x{self.image_width} too small for the encoder"
            )
        if not self.actor_mlp_nodes or not self.critic_mlp_nodes:
            raise ConfigError("actor_mlp_nodes and critic_mlp_nodes must be non-empty")
        for name in ["actor_mlp_nodes", "critic_mlp_nodes"]:
            if any(n < 1 for n in getattr(self, name)):
                raise ConfigError(f"{name} entries must be >= 1: {getattr(self, name)}")
        try:
            parse_schedule(self.stddev_schedule)
        except ScheduleError as exc:
            raise ConfigError(f"stddev_schedule: {exc}") from None
        for name in [
            "stddev_clip", "critic_target_tau", "discount", "actor_lr", "critic_lr",
            "encoder_lr", "view_fusion_lr", "weight_decay", "action_scale_m",
        ]:
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be finite and >= 0, got {v}")
        if not 0.0 <= self.critic_target_tau <= 1.0 or not 0.0 <= self.discount <= 1.0:
            raise ConfigError("critic_target_tau and discount must lie in [0, 1]")
        names = {f.name for f in dataclasses.fields(self)}
        unknown = [d for d in self.defaulted if d not in names]
        if unknown:
            raise ConfigError(f"'defaulted' names unknown fields: {unknown}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["low_dim_layout"] = [list(e) for e in self.low_dim_layout]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrQV2Config:
        """Build from a dict; unknown or missing fields raise :class:`ConfigError`. The
        training counters older versions kept here are dropped (see
        :meth:`legacy_counters`)."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        data = {k: v for k, v in data.items()
                if k not in LEGACY_COUNTERS and k not in LEROBOT_FIELDS}
        data.setdefault("type", "drqv2")  # LeRobot's draccus dump writes it first, or not
        if isinstance(data.get("defaulted"), list):
            data["defaulted"] = [d for d in data["defaulted"] if d not in LEGACY_COUNTERS]
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = [n for n in names if n not in data]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown fields {unknown}")
            if missing:
                parts.append(f"missing fields {missing}")
            raise ConfigError("invalid drqv2 config: " + "; ".join(parts))
        return cls(**data)

    @staticmethod
    def legacy_counters(data: Any) -> dict[str, int]:
        """The training counters a config dict of an older version carried (else {})."""
        if not isinstance(data, dict):
            return {}
        return {k: data[k] for k in LEGACY_COUNTERS if isinstance(data.get(k), int)
                and not isinstance(data.get(k), bool) and data[k] >= 0}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DrQV2Config:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``<directory>/config.json`` atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(directory / CONFIG_NAME, self.to_json())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> DrQV2Config:
        """Read a folder's ``config.json`` (or a json file path directly)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"no {CONFIG_NAME} at {path}")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        return cls.from_json(text)


def _check_types(cfg: DrQV2Config) -> None:
    ints = {
        "num_views", "channels_per_frame", "image_height", "image_width", "frame_stack",
        "low_dim_size", "low_dim_per_frame", "time_obs_size", "action_dim", "action_sequence",
        "encoder_channels", "encoder_num_downsample_convs", "encoder_num_post_downsample_convs",
        "encoder_kernel_size", "bottleneck_size", "num_critics", "nstep", "aug_pad",
        "batch_size", "num_train_envs", "action_repeat",
    }
    floats = {
        "action_scale_m", "stddev_clip", "critic_target_tau", "discount", "actor_lr",
        "critic_lr", "encoder_lr", "view_fusion_lr", "weight_decay",
    }
    strs = {"type", "stddev_schedule", "source"}
    for name in ints:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name} must be an int, got {v!r}")
    for name in floats:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{name} must be a number, got {v!r}")
        setattr(cfg, name, float(v))
    for name in strs:
        if not isinstance(getattr(cfg, name), str):
            raise ConfigError(f"{name} must be a string, got {getattr(cfg, name)!r}")
    if not isinstance(cfg.use_augmentation, bool):
        raise ConfigError(f"use_augmentation must be a bool, got {cfg.use_augmentation!r}")
    for name in ["camera_names", "defaulted"]:
        v = getattr(cfg, name)
        if not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{name} must be a list of strings, got {v!r}")
    for name in ["actor_mlp_nodes", "critic_mlp_nodes"]:
        v = getattr(cfg, name)
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise ConfigError(f"{name} must be a list of ints, got {v!r}")
