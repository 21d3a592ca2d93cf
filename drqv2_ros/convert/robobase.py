"""Convert a RoboBase DrQ-v2 snapshot (``latest_snapshot.pt``) into a policy folder.

A RoboBase snapshot is ``torch.save({'_pretrain_step', '_main_loop_iterations',
'_global_env_episode', 'cfg': omegaconf DictConfig, 'agent': DrQV2.state_dict()})``. The
converter

1. loads it with the restricted unpickler of :mod:`drqv2_ros.convert.safe_pickle`
   (a pickle naming any other global is refused, nothing executed);
2. infers every dimension from the weights (views, channels, frame stack, image size,
   low-dim size, action dim, encoder channels, MLP widths, bottleneck, number of critics),
   using the cfg only to split channels into frames and to pick the image size;
3. drops the unused ``*hidden_state`` RNN buffers and the duplicate ``actor_model.*`` copy of
   the actor (after checking it is identical to ``actor.actor_model.*``);
4. carries the DrQ-v2 hyper-parameters over from the cfg and lists those it had to default;
5. validates every tensor (names, shapes, finite values) against a freshly built
   :class:`~drqv2_ros.policy.modeling_drqv2.DrQV2Policy`;
6. writes ``config.json`` + ``model.safetensors`` (+ ``conversion_report.json``) into a temp
   folder next to ``out_dir`` and renames it into place, so a failure leaves nothing behind.

Every failure raises :class:`CheckpointError` with a one-line reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from drqv2_ros.atomic_write import publish_dir
from drqv2_ros.convert.safe_pickle import UnsafePickleError, safe_torch_load, to_plain
from drqv2_ros.policy.configuration_drqv2 import (
    CONFIG_NAME,
    ConfigError,
    DrQV2Config,
    default_low_dim_layout,
)
from drqv2_ros.policy.file_limits import DEFAULT_LIMITS, LoadLimits
from drqv2_ros.policy.modeling_drqv2 import (
    WEIGHTS_NAME,
    CheckpointError,
    DrQV2Policy,
    check_shapes,
    check_state_dict,
    model_shapes,
)
from drqv2_ros.policy.training_counters import TrainingCounters

__all__ = [
    "CheckpointError",
    "UnsafePickleError",
    "ConversionReport",
    "REPORT_NAME",
    "convert_snapshot",
    "policy_from_snapshot",
    "load_checkpoint_any",
]

REPORT_NAME = "conversion_report.json"
SNAPSHOT_KEYS = ("agent", "cfg")
COUNTER_KEYS = {
    "main_loop_iterations": "_main_loop_iterations",
    "pretrain_step": "_pretrain_step",
    "global_env_episode": "_global_env_episode",
}
# Keys whose presence identifies a RoboBase DrQ-v2 agent state dict.
REQUIRED_AGENT_KEYS = (
    "encoder.convs_per_cam.0.0.weight",
    "actor.actor_model.input_preprocess_modules.fused_view_feats.0.weight",
    "actor.actor_model.main_mlp.0.weight",
    "actor.actor_model.out_mlp.0.weight",
    "critic.qs.0.input_preprocess_modules.fused_view_feats.0.weight",
    "critic.qs.0.main_mlp.0.weight",
    "critic.qs.0.out_mlp.0.weight",
    "critic_target.qs.0.main_mlp.0.weight",
)
# DrQV2Config field -> path in the RoboBase cfg (after interpolation).
HYPERPARAM_PATHS = {
    "stddev_schedule": "method.stddev_schedule",
    "stddev_clip": "method.stddev_clip",
    "critic_target_tau": "method.critic_target_tau",
    "discount": "replay.gamma",
    "nstep": "replay.nstep",
    "actor_lr": "method.actor_lr",
    "critic_lr": "method.critic_lr",
    "encoder_lr": "method.encoder_lr",
    "view_fusion_lr": "method.view_fusion_lr",
    "weight_decay": "method.weight_decay",
    "use_augmentation": "method.use_augmentation",
    "batch_size": "batch_size",
    "num_train_envs": "num_train_envs",
    "action_repeat": "action_repeat",
}
_MISSING = object()


@dataclass
class ConversionReport:
    """What the converter found, carried over, defaulted and dropped."""

    snapshot_path: str
    out_dir: str | None
    sha256: str
    config: DrQV2Config
    # The snapshot's training counters (written as counters.json beside config.json).
    counters: TrainingCounters = field(default_factory=TrainingCounters)
    # Shape facts read from the weights, e.g. {"num_views": 1, "in_channels": 9, ...}.
    inferred: dict[str, Any] = field(default_factory=dict)
    # Hyper-parameters taken from the snapshot cfg: field -> {"from": cfg path, "value": v}.
    carried: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Config fields not found in the snapshot, set to defaults (same as config.defaulted).
    defaulted: list[str] = field(default_factory=list)
    # Snapshot keys not stored (hidden_state buffers, duplicate actor copy).
    dropped_keys: list[str] = field(default_factory=list)
    num_tensors: int = 0
    num_parameters: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d

    def summary(self) -> str:
        """Human-readable multi-line summary (printed by ``drqv2-ros convert``)."""
        c = self.config
        lines = [
            f"snapshot      {self.snapshot_path}",
            f"  sha256      {self.sha256}",
        ]
        if self.out_dir:
            lines.append(f"written to    {self.out_dir}")
        lines += [
            "inferred from the weights:",
            f"  cameras     {c.num_views} {c.camera_names}, {c.frame_stack} frame(s) x "
            f"{c.channels_per_frame} ch, {c.image_height}x{c.image_width} "
            f"-> {c.feat_per_view} feats/view (fused {c.fused_dim})",
            f"  low_dim     {c.low_dim_size} = {c.frame_stack} x {c.low_dim_per_frame} "
            f"{[tuple(e) for e in c.low_dim_layout]}",
            f"  action_dim  {c.action_dim} (sequence {c.action_sequence})",
            f"  encoder     {c.encoder_num_downsample_convs + c.encoder_num_post_downsample_convs}"
            f" convs x {c.encoder_channels} ch, kernel {c.encoder_kernel_size}",
            f"  actor mlp   {c.actor_mlp_nodes}, critic mlp {c.critic_mlp_nodes}, "
            f"bottleneck {c.bottleneck_size}, num_critics {c.num_critics}"
            + (f", time_obs {c.time_obs_size}" if c.time_obs_size else ""),
            f"  tensors     {self.num_tensors} stored, {self.num_parameters} parameters, "
            f"{len(self.dropped_keys)} dropped (hidden_state buffers, duplicate actor)",
            "hyper-parameters carried over from the snapshot cfg:",
        ]
        for name, info in self.carried.items():
            lines.append(f"  {name:<20} = {info['value']!r:<28} ({info['from']})")
        k = self.counters
        lines.append(
            f"counters      main_loop_iterations {k.main_loop_iterations}, pretrain_step "
            f"{k.pretrain_step}, global_env_episode {k.global_env_episode} (counters.json)"
        )
        if self.defaulted:
            lines.append("defaulted (not in the snapshot):")
            for name in self.defaulted:
                value = getattr(c, name, getattr(self.counters, name, None))
                lines.append(f"  {name:<20} = {value!r}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- helpers
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cfg_get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    if node is None or (isinstance(node, str) and (node == "???" or "${" in node)):
        return _MISSING
    return node


def _layer_indices(sd: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.weight$")
    return sorted(int(m.group(1)) for k in sd if (m := pat.match(k)))


def _count_indexed(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    if idx and idx != set(range(len(idx))):
        raise CheckpointError(f"inconsistent shapes: {prefix}<i> indices {sorted(idx)} have gaps")
    return len(idx)


def _mlp_widths(sd: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    idx = _layer_indices(sd, prefix + "main_mlp.")
    if idx != [3 * i for i in range(len(idx))] or not idx:
        raise CheckpointError(
            f"inconsistent shapes: {prefix}main_mlp Linear layers at {idx}, expected 0, 3, 6..."
        )
    return [int(sd[f"{prefix}main_mlp.{i}.weight"].shape[0]) for i in idx]


def _infer(agent: Mapping[str, torch.Tensor], cfg: dict) -> tuple[dict[str, Any], list[str]]:
    """Architecture fields of DrQV2Config from the weights (+ cfg for frames/image size)."""
    warnings: list[str] = []
    num_views = _count_indexed(agent, "encoder.convs_per_cam.")
    conv_idx = _layer_indices(agent, "encoder.convs_per_cam.0.")
    if conv_idx != [3 * i for i in range(len(conv_idx))]:
        raise CheckpointError(
            f"inconsistent shapes: encoder convs at indices {conv_idx}, expected 0, 3, 6..."
        )
    w0 = agent["encoder.convs_per_cam.0.0.weight"]
    if w0.dim() != 4 or w0.shape[2] != w0.shape[3]:
        raise CheckpointError(f"inconsistent shapes: first conv weight {tuple(w0.shape)}")
    channels, in_channels, kernel = int(w0.shape[0]), int(w0.shape[1]), int(w0.shape[2])
    for i in conv_idx[1:]:
        w = agent[f"encoder.convs_per_cam.0.{i}.weight"]
        if tuple(w.shape) != (channels, channels, kernel, kernel):
            raise CheckpointError(
                f"inconsistent shapes: encoder.convs_per_cam.0.{i}.weight {tuple(w.shape)}, "
                f"expected {(channels, channels, kernel, kernel)}"
            )
    n_convs = len(conv_idx)

    # Frame stack: RoboBase stacks frames on the channel axis (frame_stack_on_channel).
    frame_stack = _cfg_get(cfg, "frame_stack")
    if _cfg_get(cfg, "frame_stack_on_channel") is False:
        raise CheckpointError(
            "snapshot uses frame_stack_on_channel=false (RNN over time); not supported"
        )
    if isinstance(frame_stack, int) and frame_stack > 0 and in_channels % frame_stack == 0:
        channels_per_frame = in_channels // frame_stack
    else:
        channels_per_frame = 3
        if in_channels % 3:
            raise CheckpointError(
                f"inconsistent shapes: encoder in-channels {in_channels} not a multiple of 3 "
                "and no usable cfg.frame_stack"
            )
        if frame_stack is not _MISSING:
            warnings.append(f"cfg.frame_stack={frame_stack!r} does not divide {in_channels}")
        frame_stack = in_channels // 3

    # Image size and downsample count from the fused feature size.
    fused_key = "actor.actor_model.input_preprocess_modules.fused_view_feats.0.weight"
    fused_in = int(agent[fused_key].shape[1])
    if fused_in % num_views:
        raise CheckpointError(
            f"inconsistent shapes: fused features {fused_in} not divisible by {num_views} views"
        )
    per_view = fused_in // num_views
    n_down_cfg = _cfg_get(cfg, "method.encoder_model.num_downsample_convs")
    n_down = n_down_cfg if isinstance(n_down_cfg, int) and 0 <= n_down_cfg <= n_convs else 1

    def out_hw(s: int, down: int) -> int:
        for _ in range(down):
            s = (s - kernel) // 2 + 1
        for _ in range(n_convs - down):
            s = s - kernel + 1
        return s

    shape = _cfg_get(cfg, "visual_observation_shape")
    h = w = None
    if isinstance(shape, list) and len(shape) == 2 and all(isinstance(x, int) for x in shape):
        h, w = shape
        if channels * out_hw(h, n_down) * out_hw(w, n_down) != per_view:
            raise CheckpointError(
                f"inconsistent shapes: cfg image {h}x{w} gives {channels}x{out_hw(h, n_down)}x"
                f"{out_hw(w, n_down)} encoder features, but the actor bottleneck takes {per_view}"
            )
    else:
        for s in range(kernel, 1025):
            if channels * out_hw(s, n_down) ** 2 == per_view:
                h = w = s
                break
        if h is None:
            raise CheckpointError(
                f"inconsistent shapes: no square image size gives {per_view} features per view"
            )
        warnings.append(f"image size {h}x{w} inferred from the feature size (not in cfg)")

    actor_p = "actor.actor_model."
    ipm = actor_p + "input_preprocess_modules."
    bottleneck = int(agent[ipm + "fused_view_feats.0.weight"].shape[0])
    low_key = ipm + "low_dim_obs.0.weight"
    low_dim = int(agent[low_key].shape[1]) if low_key in agent else 0
    if low_dim % frame_stack:
        raise CheckpointError(
            f"inconsistent shapes: low-dim size {low_dim} not divisible by frame_stack "
            f"{frame_stack}"
        )
    seq = _cfg_get(cfg, "action_sequence")
    seq = seq if isinstance(seq, int) and seq > 0 else 1
    if seq != 1:
        raise CheckpointError(f"action_sequence {seq} snapshots are not supported (only 1)")
    action_dim = int(agent[actor_p + "out_mlp.0.weight"].shape[0])
    time_key = "critic.qs.0.input_preprocess_modules.time_obs.0.weight"
    time_obs = int(agent[time_key].shape[1]) if time_key in agent else 0
    num_critics = _count_indexed(agent, "critic.qs.")
    n_target = _count_indexed(agent, "critic_target.qs.")
    if n_target != num_critics:
        raise CheckpointError(
            f"inconsistent shapes: {num_critics} critics but {n_target} target critics"
        )
    cfg_nc = _cfg_get(cfg, "method.num_critics")
    if cfg_nc is not _MISSING and cfg_nc != num_critics:
        warnings.append(f"cfg.method.num_critics={cfg_nc} but the weights hold {num_critics}")
    return (
        {
            "num_views": num_views,
            "channels_per_frame": channels_per_frame,
            "image_height": h,
            "image_width": w,
            "frame_stack": frame_stack,
            "low_dim_size": low_dim,
            "low_dim_per_frame": low_dim // frame_stack,
            "time_obs_size": time_obs,
            "action_dim": action_dim,
            "action_sequence": seq,
            "encoder_channels": channels,
            "encoder_num_downsample_convs": n_down,
            "encoder_num_post_downsample_convs": n_convs - n_down,
            "encoder_kernel_size": kernel,
            "bottleneck_size": bottleneck,
            "actor_mlp_nodes": _mlp_widths(agent, actor_p),
            "critic_mlp_nodes": _mlp_widths(agent, "critic.qs.0."),
            "num_critics": num_critics,
        },
        warnings,
    )


def _hyperparams(cfg: dict) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    defaults = DrQV2Config()
    values, carried, defaulted = {}, {}, []
    for name, path in HYPERPARAM_PATHS.items():
        v = _cfg_get(cfg, path)
        ref = getattr(defaults, name)
        if v is _MISSING:
            defaulted.append(name)
            continue
        ok = (
            isinstance(v, bool)
            if isinstance(ref, bool)
            else isinstance(v, int) and not isinstance(v, bool)
            if isinstance(ref, int)
            else isinstance(v, (int, float)) and not isinstance(v, bool)
            if isinstance(ref, float)
            else isinstance(v, (str, int, float)) and not isinstance(v, bool)
        )
        if not ok:
            raise CheckpointError(f"snapshot cfg.{path} = {v!r} has the wrong type for {name}")
        values[name] = str(v) if name == "stddev_schedule" else v
        carried[name] = {"from": f"cfg.{path}", "value": values[name]}
    return values, carried, defaulted


def _camera_names(cfg: dict, num_views: int) -> list[str] | None:
    for path in ("env.cameras", "env.camera_names", "env.views"):
        v = _cfg_get(cfg, path)
        if isinstance(v, list) and len(v) == num_views and all(isinstance(x, str) for x in v):
            return list(v)
    return None


# ------------------------------------------------------------------------------ the API
def policy_from_snapshot(
    snapshot_path: str | os.PathLike,
    *,
    progress: bool = False,
    camera_names: list[str] | None = None,
    limits: LoadLimits = DEFAULT_LIMITS,
) -> tuple[DrQV2Policy, ConversionReport]:
    """Load, check and convert a RoboBase DrQ-v2 snapshot in memory (nothing written).

    Every failure is a :class:`CheckpointError` with the reason: a malformed snapshot that
    trips an unforeseen error in the inference (0-d weights, zero channels...) is reported as
    such, never as a traceback."""
    path = Path(snapshot_path)
    try:
        return _policy_from_snapshot(path, progress, camera_names, limits)
    except (CheckpointError, KeyboardInterrupt):
        raise
    except MemoryError:
        raise CheckpointError(f"{path}: out of memory while converting") from None
    except Exception as exc:
        msg = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a usable RoboBase DrQ-v2 snapshot "
                              f"({type(exc).__name__}: {msg})") from None


def _policy_from_snapshot(path: Path, progress: bool, camera_names: list[str] | None,
                          limits: LoadLimits) -> tuple[DrQV2Policy, ConversionReport]:
    with tqdm(total=4, desc="convert", unit="step", disable=not progress, leave=False) as bar:
        bar.set_postfix_str("loading (restricted unpickler)")
        snap = safe_torch_load(path, limits=limits)
        bar.update()
        if not isinstance(snap, Mapping):
            raise CheckpointError(
                f"{path}: not a RoboBase snapshot (a {type(snap).__name__}, expected a dict with "
                f"keys {list(SNAPSHOT_KEYS)})"
            )
        missing = [k for k in SNAPSHOT_KEYS if k not in snap]
        if missing:
            raise CheckpointError(
                f"{path}: not a RoboBase DrQ-v2 snapshot: missing keys {missing} "
                f"(has {sorted(map(str, snap))[:8]})"
            )
        agent = snap["agent"]
        if not isinstance(agent, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in agent.items()
        ):
            raise CheckpointError(f"{path}: 'agent' is not a state dict of tensors")
        miss_agent = [k for k in REQUIRED_AGENT_KEYS if k not in agent]
        if miss_agent:
            raise CheckpointError(
                f"{path}: not a RoboBase DrQ-v2 snapshot: agent state dict lacks {miss_agent}"
            )
        cfg = to_plain(snap["cfg"])
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{path}: snapshot cfg is a {type(cfg).__name__}, not a config")
        target = _cfg_get(cfg, "method._target_")
        if isinstance(target, str) and "drqv2" not in target.lower():
            raise CheckpointError(f"{path}: not a DrQ-v2 snapshot (cfg.method._target_ {target})")

        # Split off what is not stored.
        bar.set_postfix_str("checking tensors")
        dropped = [k for k in agent if k.endswith("hidden_state")]
        kept: dict[str, torch.Tensor] = {}
        dup_actor = {k: v for k, v in agent.items() if k.startswith("actor_model.")}
        for k, v in agent.items():
            if k.endswith("hidden_state") or k.startswith("actor_model."):
                continue
            kept[k] = v
        for k, v in dup_actor.items():
            if k.endswith("hidden_state"):
                continue
            twin = "actor." + k
            if twin not in kept:
                raise CheckpointError(f"{path}: actor copy {k} has no twin {twin}")
            same = v.shape == kept[twin].shape and torch.allclose(
                v, kept[twin], rtol=0.0, atol=0.0, equal_nan=True
            )
            if not same:
                raise CheckpointError(
                    f"{path}: the two actor copies differ ({k} != {twin}); refusing to guess "
                    "which one is the trained actor"
                )
            dropped.append(k)
        bar.update()

        arch, warnings = _infer(kept, cfg)
        values, carried, defaulted = _hyperparams(cfg)
        if "frame_stack" in cfg:
            carried["frame_stack"] = {"from": "cfg.frame_stack", "value": arch["frame_stack"]}
        counters = {}
        missing_counters = []
        for name, key in COUNTER_KEYS.items():
            v = snap.get(key, _MISSING)
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                counters[name] = v
                carried[name] = {"from": key, "value": v}
            else:
                missing_counters.append(name)
        names = camera_names or _camera_names(cfg, arch["num_views"])
        if names is None:
            names = ["rgb"] if arch["num_views"] == 1 else [
                f"rgb_{i}" for i in range(arch["num_views"])
            ]
            defaulted.append("camera_names")
        per_frame = arch["low_dim_per_frame"]
        defaulted += ["low_dim_layout", "action_scale_m"]
        try:
            config = DrQV2Config(
                camera_names=names,
                low_dim_layout=default_low_dim_layout(per_frame),
                source=path.name,
                defaulted=defaulted,
                **arch,
                **values,
            )
        except ConfigError as exc:
            raise CheckpointError(f"{path}: {exc}") from None

        bar.set_postfix_str("building policy")
        shapes = model_shapes(config, limits, str(path))  # sized before anything is built
        unexpected = sorted(set(kept) - set(shapes))
        if not unexpected:
            check_shapes(shapes, {k: tuple(v.shape) for k, v in kept.items()},
                         f"{path}: inconsistent snapshot")
        policy = DrQV2Policy(config, init_weights=False)
        expected = policy.state_dict()
        if unexpected:
            raise CheckpointError(
                f"{path}: unsupported RoboBase DrQ-v2 variant: unexpected tensors "
                f"{unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
            )
        try:
            check_state_dict(expected, kept, f"{path}: inconsistent snapshot")
        except CheckpointError as exc:
            msg = str(exc)
            raise CheckpointError(msg) from None
        policy.load_state_dict({k: v.to(torch.float32) for k, v in kept.items()}, strict=True)
        policy.training_counters = TrainingCounters(**counters)
        policy.eval()
        bar.update()
        report = ConversionReport(
            snapshot_path=str(path),
            out_dir=None,
            sha256=_sha256(path),
            config=config,
            counters=policy.training_counters,
            inferred=dict(arch, camera_names=names, fused_dim=config.fused_dim),
            carried=carried,
            defaulted=list(config.defaulted) + missing_counters,
            dropped_keys=sorted(dropped),
            num_tensors=len(kept),
            num_parameters=sum(v.numel() for v in kept.values()),
            warnings=warnings,
        )
        bar.update()
    return policy, report


def convert_snapshot(
    snapshot_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    force: bool = False,
    camera_names: list[str] | None = None,
) -> ConversionReport:
    """Convert ``snapshot_path`` into ``out_dir`` (config.json + model.safetensors).

    ``out_dir`` must not exist (or be empty) unless ``force``. On any error a
    :class:`CheckpointError` is raised and ``out_dir`` is left untouched.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise CheckpointError(f"{out_dir}: exists and is not empty (use --force to replace it)")
    policy, report = policy_from_snapshot(
        snapshot_path, progress=progress, camera_names=camera_names
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)
        with tqdm(total=2, desc="write", unit="step", disable=not progress, leave=False) as bar:
            policy.save_pretrained(tmp)
            report.out_dir = str(out_dir)
            (tmp / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
            bar.update()
            # Read back what was written and compare bit for bit before publishing it.
            again = DrQV2Policy.from_pretrained(tmp)
            ref = policy.state_dict()
            for k, v in again.state_dict().items():
                if not torch.equal(v, ref[k]):
                    raise CheckpointError(f"{tmp}: read-back mismatch in {k}")
            bar.update()
        publish_dir(tmp, out_dir)
    except BaseException:
        report.out_dir = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def load_checkpoint_any(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu", progress: bool = False,
    limits: LoadLimits = DEFAULT_LIMITS,
) -> DrQV2Policy:
    """A validated :class:`DrQV2Policy` from a converted folder or a RoboBase ``.pt`` snapshot.

    Folders are loaded strictly with ``from_pretrained``; snapshots are converted in memory
    (same checks as :func:`convert_snapshot`, nothing written). Raises :class:`CheckpointError`.
    """
    path = Path(path)
    if path.is_dir():
        return DrQV2Policy.from_pretrained(path, map_location=map_location, limits=limits)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    policy, _report = policy_from_snapshot(path, progress=progress, limits=limits)
    return policy.to(map_location)


# Re-exported for callers that only import this module.
CONFIG_FILE, WEIGHTS_FILE = CONFIG_NAME, WEIGHTS_NAME
