"""LeRobot's ``drqv2`` policy configuration: drqv2_ros's ``DrQV2Config`` fields, unchanged
(a converted checkpoint's ``config.json`` parses as it is), on LeRobot's ``PreTrainedConfig``.

The fields are taken from drqv2_ros's dataclass at import time (one definition; a test
checks both agree), plus the few LeRobot's learner helpers read (``shared_encoder``,
``num_discrete_actions``, ``vision_encoder_name``, ``freeze_vision_encoder``) and two of
this plugin's: ``augment_in_policy`` (RoboBase's random shift inside the update; set it
False when LeRobot's ReplayBuffer already shifts, ``use_drq=True``) and ``update_seed`` (the
update's random draws). ``input_features`` / ``output_features`` default to what the
network expects: one frame per camera ``observation.images.<name>`` (C, H, W) and
``observation.state`` (low_dim_per_frame,); frame stacking is LeRobot's
``observation_delta_indices`` (the last ``frame_stack`` frames), stacked by the processor.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.optim.optimizers import AdamConfig

from drqv2_ros.policy import configuration_drqv2 as core

_HINTS = typing.get_type_hints(core.DrQV2Config)


def _core_fields() -> list[tuple[str, object, dataclasses.Field]]:
    out = []
    for f in dataclasses.fields(core.DrQV2Config):
        if f.name == "type":  # LeRobot's choice name, a property there
            continue
        if f.default is not dataclasses.MISSING:
            spec = field(default=f.default)
        else:
            spec = field(default_factory=f.default_factory)
        out.append((f.name, _HINTS[f.name], spec))
    return out


def _identity_map() -> dict[str, NormalizationMode]:
    # the network takes raw units (uint8 pixels, radians, metres): no normalisation
    return {"VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.IDENTITY,
            "ACTION": NormalizationMode.IDENTITY}


_Base = dataclasses.make_dataclass("_DrQV2Fields", _core_fields(), bases=(PreTrainedConfig,))


@PreTrainedConfig.register_subclass("drqv2")
@dataclass
class DrQV2Config(_Base):
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=_identity_map)
    # read by lerobot.rl.learner's helpers
    shared_encoder: bool = True            # the actor has no encoder of its own
    num_discrete_actions: int | None = None
    vision_encoder_name: str | None = None  # no pretrained vision backbone: no feature cache
    freeze_vision_encoder: bool = False
    # this plugin's
    augment_in_policy: bool = True         # RoboBase's random shift in the update
    update_seed: int = 0                   # the update's draws (shifts, target/actor noise)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.core_config()  # every drqv2_ros check, with its messages
        if not self.input_features:
            c, h, w = self.channels_per_frame, self.image_height, self.image_width
            self.input_features = {f"observation.images.{n}": PolicyFeature(
                FeatureType.VISUAL, (c, h, w)) for n in self.camera_names}
            if self.low_dim_per_frame:
                self.input_features["observation.state"] = PolicyFeature(
                    FeatureType.STATE, (self.low_dim_per_frame,))
        if not self.output_features:
            self.output_features = {"action": PolicyFeature(FeatureType.ACTION,
                                                            (self.action_dim,))}

    def core_config(self) -> core.DrQV2Config:
        """drqv2_ros's configuration of the same network (validated)."""
        return core.DrQV2Config(**{f.name: getattr(self, f.name)
                                   for f in dataclasses.fields(core.DrQV2Config)
                                   if f.name != "type"})

    @classmethod
    def from_core(cls, cfg: core.DrQV2Config, **kw) -> DrQV2Config:
        return cls(**{k: v for k, v in cfg.to_dict().items() if k != "type"}, **kw)

    # -- LeRobot's abstract interface
    @property
    def observation_delta_indices(self) -> list[int]:
        return list(range(1 - self.frame_stack, 1))   # the stacked frames, oldest first

    @property
    def action_delta_indices(self) -> None:
        return None

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamConfig:
        return AdamConfig(lr=self.actor_lr, weight_decay=self.weight_decay)

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        images = [k for k, f in self.input_features.items() if f.type is FeatureType.VISUAL]
        if len(images) != self.num_views:
            raise ValueError(f"drqv2 expects {self.num_views} camera(s), the features have "
                             f"{images}")
        for k in images:
            shape = tuple(self.input_features[k].shape)
            if shape[-2:] != (self.image_height, self.image_width):
                raise ValueError(f"{k} is {shape}: the network takes "
                                 f"{self.image_height}x{self.image_width} images")
