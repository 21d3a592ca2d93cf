"""DrQ-v2 (Yarats et al. 2021) as used by RoboBase, in one readable file.

Networks (written for this project, with RoboBase's parameter names so that a RoboBase
``DrQV2`` state dict loads without renaming):

- encoder ``encoder.convs_per_cam.<v>``: per view a ``Sequential`` of [Conv2d, Identity, ReLU]
  blocks (convs at indices 0, 3, 6, 9), 3x3, padding 0, first conv stride 2, then stride 1.
  Input uint8 (or float in 0..255) ``(B, V, T*C, H, W)``, frames oldest first, scaled
  ``x / 255 - 0.5``. 84x84 -> 41 -> 39 -> 37 -> 35: 32*35*35 = 39200 features per view.
- view fusion: parameter-free flatten of ``(B, V, F)`` into ``(B, V*F)``, views in order.
- actor ``actor.actor_model``: ``input_preprocess_modules.<key>`` = Sequential(Linear(in, 50),
  LayerNorm(50), Tanh) for ``fused_view_feats`` then ``low_dim_obs`` (that order, concatenated),
  ``main_mlp`` = [Linear, Identity, ReLU] per hidden layer, ``out_mlp.0`` = Linear(.., A);
  mean = tanh(out). The actor never sees ``time_obs``.
- critic ``critic.qs.<i>`` (``num_critics`` independent copies) with the same structure,
  bottlenecks for ``fused_view_feats``, ``low_dim_obs`` (and ``time_obs`` when present),
  followed by the raw ``action``; ``out_mlp.0`` = Linear(.., 1); output ``(B, num_critics)``.
- ``critic_target``: same structure as ``critic``, updated by Polyak averaging.

State-dict mapping from a RoboBase ``DrQV2`` agent (``snapshot['agent']``):

==========================================  ================================================
RoboBase key                                this module
==========================================  ================================================
``encoder.convs_per_cam.*``                 same
``actor.actor_model.*``                     same
``actor_model.*``                           dropped: same tensors as ``actor.actor_model.*``
``critic.qs.<i>.*`` / ``critic_target.*``   same
``*.hidden_state`` (RNN buffers, unused)    dropped
==========================================  ================================================

``model.safetensors`` holds exactly :meth:`DrQV2Model.state_dict` (flat, float32, actor once).

:class:`DrQV2Policy` adds LeRobot's policy conventions (``config_class``, ``name``,
``select_action``, ``reset``, ``save_pretrained`` / ``from_pretrained``) without importing
lerobot.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributions as pyd
from torch import nn

from drqv2_ros.atomic_write import atomic_write_bytes
from drqv2_ros.policy.configuration_drqv2 import CONFIG_NAME, ConfigError, DrQV2Config
from drqv2_ros.policy.file_limits import (
    DEFAULT_LIMITS,
    CheckpointError,
    LoadLimits,
    read_text,
    safetensors_header,
)
from drqv2_ros.policy.lerobot_format import write_processor_files
from drqv2_ros.policy.training_counters import COUNTERS_NAME, TrainingCounters

WEIGHTS_NAME = "model.safetensors"

__all__ = [
    "WEIGHTS_NAME",
    "CheckpointError",
    "weight_init",
    "TruncatedNormal",
    "RandomShiftsAug",
    "MultiViewConvEncoder",
    "flatten_views",
    "BottleneckMLP",
    "Actor",
    "Critic",
    "DrQV2Model",
    "DrQV2Policy",
    "check_shapes",
    "check_state_dict",
    "model_shapes",
]


# ----------------------------------------------------------------------------- utilities
def weight_init(m: nn.Module) -> None:
    """DrQ-v2 init: orthogonal Linear, orthogonal Conv with ReLU gain, zero biases, LN = 1/0."""
    if isinstance(m, nn.Linear):
        nn.init.orthogonal_(m.weight.data)
        if m.bias is not None:
            m.bias.data.fill_(0.0)
    elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.orthogonal_(m.weight.data, nn.init.calculate_gain("relu"))
        if m.bias is not None:
            m.bias.data.fill_(0.0)
    elif isinstance(m, nn.LayerNorm):
        if m.weight is not None:
            m.weight.data.fill_(1.0)
        if m.bias is not None:
            m.bias.data.fill_(0.0)


class TruncatedNormal(pyd.Normal):
    """Normal whose samples are clamped to [low + eps, high - eps] (straight-through grad).

    ``sample(clip)`` first clips the noise to +-clip (target smoothing), then clamps.
    """

    def __init__(self, loc, scale, low: float = -1.0, high: float = 1.0, eps: float = 1e-6):
        super().__init__(loc, scale, validate_args=False)
        self.low, self.high, self.eps = low, high, eps

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        clamped = torch.clamp(x, self.low + self.eps, self.high - self.eps)
        # Forward value is the clamped one, gradient flows as if unclamped.
        return x - x.detach() + clamped.detach()

    def sample(self, clip: float | None = None, sample_shape=(), generator=None, noise=None):
        """``noise``: the standard-normal draw to use (drawn from ``generator`` if None)."""
        if noise is None:
            shape = self._extended_shape(torch.Size(sample_shape))
            noise = torch.randn(
                shape, dtype=self.loc.dtype, device=self.loc.device, generator=generator
            )
        noise = noise * self.scale
        if clip is not None:
            noise = torch.clamp(noise, -clip, clip)
        return self._clamp(self.loc + noise)


class RandomShiftsAug(nn.Module):
    """DrQ random shift: replicate-pad by ``pad``, shift by an integer in [0, 2*pad] per image.

    Implemented with ``grid_sample`` over a base grid of pixel centres
    (``linspace(-1+eps, 1-eps, h+2*pad)[:h]``, ``eps = 1/(h+2*pad)``) plus a shift of
    ``s * 2/(h+2*pad)``, zeros padding, ``align_corners=False``: output pixel (i, j) equals
    padded pixel (i + s_y, j + s_x). Square images only. ``shifts`` (N, 2) integer
    [s_x, s_y] may be given explicitly (tests, reproducibility).
    """

    def __init__(self, pad: int = 4):
        super().__init__()
        self.pad = int(pad)

    def forward(
        self,
        x: torch.Tensor,
        shifts: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        n, _c, h, w = x.shape
        if h != w:
            raise ValueError(f"RandomShiftsAug needs square images, got {h}x{w}")
        if not x.is_floating_point():
            x = x.float()
        p = self.pad
        if p == 0:
            return x
        x = F.pad(x, (p, p, p, p), mode="replicate")
        eps = 1.0 / (h + 2 * p)
        arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * p, device=x.device, dtype=x.dtype)
        arange = arange[:h].unsqueeze(0).repeat(h, 1).unsqueeze(2)
        base_grid = torch.cat([arange, arange.transpose(1, 0)], dim=2)
        base_grid = base_grid.unsqueeze(0).repeat(n, 1, 1, 1)
        if shifts is None:
            shift = torch.randint(
                0, 2 * p + 1, size=(n, 1, 1, 2), device=x.device, generator=generator
            ).to(x.dtype)
        else:
            shift = shifts.to(device=x.device, dtype=x.dtype).reshape(n, 1, 1, 2)
        grid = base_grid + shift * (2.0 / (h + 2 * p))
        return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


# ------------------------------------------------------------------------------ networks
class MultiViewConvEncoder(nn.Module):
    """RoboBase ``EncoderCNNMultiViewDownsampleWithStrides``: one conv stack per view.

    forward: (B, V, C, H, W) uint8/float 0..255 -> (B, V, F) features.
    """

    def __init__(
        self,
        num_views: int,
        in_channels: int,
        channels: int = 32,
        num_downsample_convs: int = 1,
        num_post_downsample_convs: int = 3,
        kernel_size: int = 3,
    ):
        super().__init__()
        self.num_views = num_views
        self.in_channels = in_channels
        self.convs_per_cam = nn.ModuleList()
        for _ in range(num_views):
            layers: list[nn.Module] = []
            c_in = in_channels
            strides = [2] * num_downsample_convs + [1] * num_post_downsample_convs
            for stride in strides:
                layers += [
                    nn.Conv2d(c_in, channels, kernel_size, stride=stride, padding=0),
                    nn.Identity(),
                    nn.ReLU(),
                ]
                c_in = channels
            self.convs_per_cam.append(nn.Sequential(*layers))

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        """uint8 / float 0..255 -> float32 in [-0.5, 0.5]."""
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        return x / 255.0 - 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise(x)
        return torch.stack([net(x[:, i]).flatten(1) for i, net in enumerate(self.convs_per_cam)], 1)

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder + flatten view fusion in one go: (B, V, C, H, W) -> (B, V*F)."""
        x = self.normalise(x)
        if self.num_views == 1:
            return self.convs_per_cam[0](x[:, 0]).flatten(1)
        return torch.cat([net(x[:, i]).flatten(1) for i, net in enumerate(self.convs_per_cam)], 1)


def flatten_views(feats: torch.Tensor) -> torch.Tensor:
    """Parameter-free view fusion (RoboBase ``FusionMultiCamFeature(mode='flatten')``)."""
    return feats.flatten(-2)


class BottleneckMLP(nn.Module):
    """RoboBase ``MLPWithBottleneckFeatures`` without the (unused) RNN parts.

    ``bottleneck_inputs`` (ordered name -> size) each go through Linear+LayerNorm+Tanh to
    ``bottleneck_size``; the results are concatenated in that order, followed by the
    non-bottlenecked ``extra`` input (critic: the action), then ``main_mlp`` and ``out_mlp``.
    """

    def __init__(
        self,
        bottleneck_inputs: dict[str, int],
        extra_input_size: int,
        bottleneck_size: int,
        mlp_nodes: list[int],
        output_size: int,
    ):
        super().__init__()
        self.input_preprocess_modules = nn.ModuleDict(
            {
                k: nn.Sequential(
                    nn.Linear(n, bottleneck_size), nn.LayerNorm(bottleneck_size), nn.Tanh()
                )
                for k, n in bottleneck_inputs.items()
            }
        )
        in_size = bottleneck_size * len(bottleneck_inputs) + extra_input_size
        layers: list[nn.Module] = []
        for nodes in mlp_nodes:
            layers += [nn.Linear(in_size, nodes), nn.Identity(), nn.ReLU()]
            in_size = nodes
        self.main_mlp = nn.Sequential(*layers)
        self.out_mlp = nn.Sequential(nn.Linear(in_size, output_size))

    def forward(self, inputs: Mapping[str, torch.Tensor], extra: torch.Tensor | None = None):
        feats = [m(inputs[k]) for k, m in self.input_preprocess_modules.items()]
        if extra is not None:
            feats.append(extra)
        return self.out_mlp(self.main_mlp(torch.cat(feats, -1)))


def _fc_inputs(config: DrQV2Config, with_time: bool) -> dict[str, int]:
    inputs = {"fused_view_feats": config.fused_dim}
    if config.low_dim_size > 0:
        inputs["low_dim_obs"] = config.low_dim_size
    if with_time and config.time_obs_size > 0:
        inputs["time_obs"] = config.time_obs_size
    return inputs


class Actor(nn.Module):
    """Deterministic head of the DrQ-v2 actor: tanh mean of (low_dim, fused) -> (B, A)."""

    def __init__(self, config: DrQV2Config):
        super().__init__()
        self.actor_model = BottleneckMLP(
            _fc_inputs(config, with_time=False),
            0,
            config.bottleneck_size,
            config.actor_mlp_nodes,
            config.action_sequence * config.action_dim,
        )

    def forward(self, low_dim: torch.Tensor | None, fused: torch.Tensor) -> torch.Tensor:
        ins = {"fused_view_feats": fused}
        if low_dim is not None:
            ins["low_dim_obs"] = low_dim
        return torch.tanh(self.actor_model(ins))


class Critic(nn.Module):
    """Ensemble of ``num_critics`` Q networks: (low_dim, fused, action[, time]) -> (B, N)."""

    def __init__(self, config: DrQV2Config):
        super().__init__()
        self.qs = nn.ModuleList(
            [
                BottleneckMLP(
                    _fc_inputs(config, with_time=True),
                    config.action_sequence * config.action_dim,
                    config.bottleneck_size,
                    config.critic_mlp_nodes,
                    1,
                )
                for _ in range(config.num_critics)
            ]
        )

    def forward(
        self,
        low_dim: torch.Tensor | None,
        fused: torch.Tensor,
        action: torch.Tensor,
        time_obs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ins = {"fused_view_feats": fused}
        if low_dim is not None:
            ins["low_dim_obs"] = low_dim
        if time_obs is not None:
            ins["time_obs"] = time_obs
        action = action.reshape(action.shape[0], -1)
        return torch.cat([q(ins, action) for q in self.qs], -1)


# ------------------------------------------------------------------------------ the model
class DrQV2Model(nn.Module):
    """Encoder + actor + critic ensemble + target critic, with RoboBase parameter names.

    Learner-facing API::

        fused = model.encode(rgb)                      # (B, V, T*C, H, W) -> (B, fused_dim)
        mu = model.actor_mean(low_dim, fused)          # (B, A), tanh mean
        dist = model.actor_dist(low_dim, fused, std)   # TruncatedNormal
        q = model.critic(low_dim, fused, action)       # (B, num_critics)
        qt = model.critic_target(low_dim, fused, action)
        model.soft_update_target()                     # Polyak with critic_target_tau
    """

    def __init__(self, config: DrQV2Config, *, init_weights: bool = True,
                 critics: bool = True):
        super().__init__()
        self.config = config
        self.encoder = MultiViewConvEncoder(
            config.num_views,
            config.in_channels,
            config.encoder_channels,
            config.encoder_num_downsample_convs,
            config.encoder_num_post_downsample_convs,
            config.encoder_kernel_size,
        )
        self.actor = Actor(config)
        # critics=False: acting only (the actor process): parameter-free placeholders, as
        # drop_critics() leaves them
        self.critic = Critic(config) if critics else nn.Module()
        if init_weights:  # skipped when weights are loaded right after (saves ~0.1-1 s)
            self.apply(weight_init)
        self.critic_target = copy.deepcopy(self.critic)
        self.critic_target.requires_grad_(False)
        self.critic_target.eval()
        # Parameter-free; used by the learner when config.use_augmentation.
        self.aug = RandomShiftsAug(config.aug_pad)

    def drop_critics(self) -> None:
        """Acting only: the critics (and target) become the parameter-free placeholders that
        ``critics=False`` builds (less memory; weight pushes carry encoder + actor only)."""
        self.critic, self.critic_target = nn.Module(), nn.Module()

    # -- forward pieces
    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, V, T*C, H, W) uint8 or float 0..255 -> fused features (B, V*F)."""
        c = self.config
        expected = (c.num_views, c.in_channels, c.image_height, c.image_width)
        if rgb.dim() != 5 or tuple(rgb.shape[1:]) != expected:
            raise ValueError(f"rgb must be (B, *{expected}), got {tuple(rgb.shape)}")
        return self.encoder.forward_fused(rgb)

    def actor_mean(self, low_dim: torch.Tensor | None, fused: torch.Tensor) -> torch.Tensor:
        """Deterministic action: tanh mean, (B, A)."""
        return self.actor(low_dim, fused)

    def actor_dist(
        self, low_dim: torch.Tensor | None, fused: torch.Tensor, std: float | torch.Tensor
    ) -> TruncatedNormal:
        """TruncatedNormal(tanh mean, std) over (B, A) in [-1, 1], in float32 (also when the
        actor ran under reduced-precision autocast)."""
        mu = self.actor(low_dim, fused).float()
        return TruncatedNormal(mu, torch.ones_like(mu) * std)

    def std_at(self, step: int) -> float:
        """Scheduled exploration std at main-loop iteration ``step``."""
        return self.config.std_at(step)

    @torch.no_grad()
    def soft_update_target(self, tau: float | None = None) -> None:
        """critic_target <- tau * critic + (1 - tau) * critic_target."""
        tau = self.config.critic_target_tau if tau is None else tau
        for dst, src in zip(self.critic_target.parameters(), self.critic.parameters()):
            dst.lerp_(src, tau)

    def train(self, mode: bool = True):
        super().train(mode)
        self.critic_target.eval()  # RoboBase keeps the target in eval mode
        return self

    def get_optim_params(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups by optimiser (the view fusion has no parameters)."""
        return {
            "actor": list(self.actor.parameters()),
            "critic": list(self.critic.parameters()),
            "encoder": list(self.encoder.parameters()),
        }


def check_shapes(
    expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], what: str
) -> None:
    """Names and shapes of a state dict against the model's (no tensor data needed)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors {_short(unexpected)}")
        raise CheckpointError(f"{what}: " + "; ".join(parts))
    for k, ref in expected.items():
        if tuple(got[k]) != tuple(ref):
            raise CheckpointError(f"{what}: {k} has shape {tuple(got[k])}, expected {tuple(ref)}")


def check_state_dict(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], what: str
) -> None:
    """Strictly compare a state dict against a model's: names, shapes, dtype, finiteness."""
    for k, t in got.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{what}: {k} is a {type(t).__name__}, not a tensor")
    check_shapes({k: tuple(v.shape) for k, v in expected.items()},
                 {k: tuple(v.shape) for k, v in got.items()}, what)
    for k in expected:
        t = got[k]
        if not t.is_floating_point():
            raise CheckpointError(f"{what}: {k} has dtype {t.dtype}, expected floating point")
        if not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{what}: {k} contains {n_bad} NaN/Inf values")


def model_shapes(config: DrQV2Config, limits: LoadLimits = DEFAULT_LIMITS,
                 what: str = "config") -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the config implies, sized on the meta device (nothing
    allocated); refused when the model would exceed ``limits.max_file_bytes`` in float32."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape)
                  for k, v in DrQV2Model(config, init_weights=False).state_dict().items()}
    nbytes = 4 * sum(int(np.prod(s)) for s in shapes.values())
    if nbytes > limits.max_file_bytes:
        raise CheckpointError(f"{what}: declares a model of {nbytes} bytes, above the limit of "
                              f"{limits.max_file_bytes} bytes")
    return shapes


def _short(names: list[str], n: int = 6) -> str:
    return str(names[:n])[:-1] + (f", ... +{len(names) - n} more]" if len(names) > n else "]")


# ----------------------------------------------------------------------------- the policy
class DrQV2Policy(DrQV2Model):
    """DrQ-v2 image policy with LeRobot's policy conventions (lerobot not required).

    Batches for :meth:`select_action`:
    ``observation.images.<camera>`` uint8 (B, T*C, H, W) per camera in ``config.camera_names``
    (or one stacked uint8 ``observation.images`` / ``rgb`` tensor (B, V, T*C, H, W)), plus
    ``observation.state`` float (B, low_dim_size) in training units (radians, metres).
    Unbatched tensors (no leading B) are accepted and treated as B = 1.
    """

    config_class = DrQV2Config
    name = "drqv2"

    def __init__(self, config: DrQV2Config, *, init_weights: bool = True,
                 critics: bool = True):
        if not isinstance(config, DrQV2Config):
            raise TypeError(f"config must be a DrQV2Config, got {type(config).__name__}")
        super().__init__(config, init_weights=init_weights, critics=critics)
        #: where training stood (not configuration): the std schedule's default step
        self.training_counters = TrainingCounters()
        self.eval()

    # -- LeRobot API
    def reset(self) -> None:
        """Start of an episode: the network has no recurrent state (frames are stacked
        upstream), so nothing to clear."""

    def _rgb_from_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        c = self.config
        per_view = (c.in_channels, c.image_height, c.image_width)
        stacked = batch.get("observation.images", batch.get("rgb"))
        if isinstance(stacked, torch.Tensor):
            rgb = stacked
            if rgb.dim() == 4:
                rgb = rgb.unsqueeze(0)
        else:
            views = []
            for name in c.camera_names:
                key = f"observation.images.{name}"
                if key not in batch:
                    if c.num_views == 1 and "observation.image" in batch:
                        key = "observation.image"
                    else:
                        raise ValueError(f"batch has no {key!r} (keys: {sorted(batch)})")
                v = batch[key]
                if not isinstance(v, torch.Tensor):
                    v = torch.as_tensor(np.asarray(v))
                if v.dim() == 3:
                    v = v.unsqueeze(0)
                if tuple(v.shape[1:]) != per_view:
                    raise ValueError(f"{key} must be (B, {per_view}), got {tuple(v.shape)}")
                views.append(v)
            rgb = views[0].unsqueeze(1) if len(views) == 1 else torch.stack(views, 1)
        if rgb.dtype != torch.uint8:
            raise ValueError(
                f"images must be uint8 0..255 (RoboBase convention), got {rgb.dtype}"
            )
        return rgb

    def _state_from_batch(self, batch: Mapping[str, torch.Tensor], b: int) -> torch.Tensor | None:
        n = self.config.low_dim_size
        if n == 0:
            return None
        if "observation.state" not in batch:
            raise ValueError(f"batch has no 'observation.state' (keys: {sorted(batch)})")
        s = batch["observation.state"]
        if not isinstance(s, torch.Tensor):
            s = torch.as_tensor(np.asarray(s))
        if s.dim() == 1:
            s = s.unsqueeze(0)
        if tuple(s.shape) != (b, n):
            raise ValueError(f"observation.state must be ({b}, {n}), got {tuple(s.shape)}")
        if s.dtype != torch.float32:
            s = s.to(torch.float32)
        return s

    def select_action(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        step: int | None = None,
        explore: bool = False,
        clip: float | None | str = "config",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Action (B, A) in [-1, 1].

        Eval (default): the tanh mean. ``explore=True`` samples TruncatedNormal with the
        scheduled std at main-loop iteration ``step`` (default: the checkpoint's
        ``training_counters.main_loop_iterations``) and noise clipped to ``clip`` (default
        ``config.stddev_clip``; pass None for RoboBase's unclipped acting).
        """
        device = next(self.parameters()).device
        with torch.inference_mode():
            rgb = self._rgb_from_batch(batch).to(device, non_blocking=True)
            low = self._state_from_batch(batch, rgb.shape[0])
            if low is not None:
                low = low.to(device)
            fused = self.encode(rgb)
            mu = self.actor(low, fused)
            if not explore:
                return mu
            std = self.std_at(self.training_counters.main_loop_iterations if step is None
                              else step)
            dist = TruncatedNormal(mu, torch.full_like(mu, std))
            return dist.sample(
                clip=self.config.stddev_clip if clip == "config" else clip, generator=generator
            )

    def predict_action_chunk(self, batch: Mapping[str, torch.Tensor], **kw) -> torch.Tensor:
        """(B, action_sequence=1, A) version of :meth:`select_action`."""
        return self.select_action(batch, **kw).unsqueeze(1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Deterministic action (B, A), differentiable (no inference_mode)."""
        rgb = self._rgb_from_batch(batch)
        return self.actor(self._state_from_batch(batch, rgb.shape[0]), self.encode(rgb))

    # -- checkpoints
    def flat_state_dict(self) -> dict[str, torch.Tensor]:
        """What goes into model.safetensors: contiguous CPU float32 tensors."""
        return {
            k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in self.state_dict().items()
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (atomic per file)."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Serialised in memory, then one atomic write: a full disk surfaces as an OSError
        # (ENOSPC), which safetensors' own file writer would wrap in a SafetensorError.
        data = save(self.flat_state_dict(), metadata={"format": "pt", "type": self.name})
        atomic_write_bytes(directory / WEIGHTS_NAME, data)
        self.config.save_pretrained(directory)
        self.training_counters.save(directory)
        write_processor_files(directory, self.config)  # for LeRobot's make_pre_post_processors
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu",
        limits: LoadLimits = DEFAULT_LIMITS,
    ) -> DrQV2Policy:
        """Load a folder written by :meth:`save_pretrained` (or the converter), strictly and
        at a bounded cost: the config is size-limited and schema-checked, the weights file's
        header is compared with the shapes the config implies before any tensor is read.

        Raises :class:`CheckpointError` for a missing folder/file, a non-regular or oversized
        file, a bad config, missing, unexpected or mis-shaped tensors, and NaN/Inf values.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: not a checkpoint folder")
        weights = directory / WEIGHTS_NAME
        text = read_text(directory / CONFIG_NAME, limits.max_config_bytes, CONFIG_NAME)
        try:
            config = DrQV2Config.from_json(text)
        except ConfigError as exc:
            raise CheckpointError(f"{directory / CONFIG_NAME}: {exc}") from None
        counters = _read_counters(directory, text, limits)
        expected = model_shapes(config, limits, str(directory / CONFIG_NAME))
        header = safetensors_header(weights, limits)
        check_shapes(expected, {k: s for k, (_d, s) in header.items()}, str(weights))
        try:  # memory-mapped: the header above bounds every tensor by the file's bytes
            tensors = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from None
        policy = cls(config, init_weights=False)
        policy.load_flat_state_dict(tensors, what=str(weights))
        policy.training_counters = counters
        return policy.to(map_location)

    def load_flat_state_dict(self, tensors: Mapping[str, torch.Tensor], what: str = "weights"):
        """Strict load with clear errors (see :func:`check_state_dict`)."""
        check_state_dict(self.state_dict(), tensors, what)
        self.load_state_dict(tensors, strict=True)
        return self


def _read_counters(directory: Path, config_text: str, limits: LoadLimits) -> TrainingCounters:
    """``counters.json``; without it, what an older ``config.json`` carried (else zeros)."""
    path = directory / COUNTERS_NAME
    if not path.exists():
        return TrainingCounters(**DrQV2Config.legacy_counters(json.loads(config_text)))
    try:
        return TrainingCounters.from_dict(json.loads(read_text(path, limits.max_config_bytes,
                                                               COUNTERS_NAME)))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
