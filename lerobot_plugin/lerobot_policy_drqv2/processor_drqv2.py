"""The ``drqv2`` policy's pre- and post-processors for LeRobot 0.4.x.

Pre: rename (none), :class:`DrQV2ImageProcessorStep`, add the batch dimension, move to the
device. The image step: LeRobot hands images as float in [0, 1] (its datasets and
camera processors), RoboBase's encoder takes 0..255 and computes x/255 - 0.5, so float
images are scaled to uint8 0..255 (rounded: frames that were uint8 come back exactly); uint8
images pass as they are. Stacked frames from the config's ``observation_delta_indices``
((B, T, C, H, W) images, (B, T, D) state) are laid out as the network's channels-stacked
(B, T*C, H, W) and (B, T*D), oldest first. No normalisation: the network takes raw units.
Post: the action to the CPU.

Augmentation happens once: inside the update (``augment_in_policy``, RoboBase's random
shift of both observations); with LeRobot's ``ReplayBuffer(use_drq=True)``, which already
shifts the images it samples, set ``augment_in_policy=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from lerobot.configs.types import FeatureType, PipelineFeatureType, PolicyFeature
from lerobot.processor import (
    AddBatchDimensionProcessorStep,
    DeviceProcessorStep,
    ObservationProcessorStep,
    PolicyAction,
    PolicyProcessorPipeline,
    ProcessorStepRegistry,
    RenameObservationsProcessorStep,
)
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
from lerobot.utils.constants import (
    POLICY_POSTPROCESSOR_DEFAULT_NAME,
    POLICY_PREPROCESSOR_DEFAULT_NAME,
)

IMAGE_PREFIX = "observation.images."
STATE = "observation.state"
STEP_NAME = "drqv2_images_processor"


@ProcessorStepRegistry.register(name=STEP_NAME)
@dataclass
class DrQV2ImageProcessorStep(ObservationProcessorStep):
    """Images to RoboBase's uint8 0..255, stacked frames to stacked channels, before the
    batch dimension is added: (T, C, H, W) -> (T*C, H, W) and (T, D) -> (T*D,) for one
    sample, (B, T, C, H, W) -> (B, T*C, H, W) and (B, T, D) -> (B, T*D) for a batch."""

    frame_stack: int = 3
    channels_per_frame: int = 3
    low_dim_per_frame: int = 18

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        t, c, d = self.frame_stack, self.channels_per_frame, self.low_dim_per_frame
        out = dict(observation)
        for key, x in observation.items():
            if not isinstance(x, torch.Tensor):
                continue
            if key.startswith(IMAGE_PREFIX):
                if x.dim() == 5:
                    x = x.flatten(1, 2)
                elif x.dim() == 4 and t > 1 and x.shape[:2] == (t, c):
                    x = x.flatten(0, 1)
                if torch.is_floating_point(x):
                    x = (x * 255.0).round().clamp(0, 255).to(torch.uint8)
                elif x.dtype != torch.uint8:
                    raise ValueError(f"{key}: images must be uint8 or float in [0, 1], got "
                                     f"{x.dtype}")
                out[key] = x
            elif key == STATE:
                if x.dim() == 3:
                    out[key] = x.flatten(1)
                elif x.dim() == 2 and t > 1 and tuple(x.shape) == (t, d):
                    out[key] = x.flatten()
        return out

    def get_config(self) -> dict[str, Any]:
        return {"frame_stack": self.frame_stack, "channels_per_frame": self.channels_per_frame,
                "low_dim_per_frame": self.low_dim_per_frame}

    def transform_features(self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
                           ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        return features


def preprocessor_steps(config) -> list:
    return [RenameObservationsProcessorStep(rename_map={}),
            DrQV2ImageProcessorStep(config.frame_stack, config.channels_per_frame,
                                    config.low_dim_per_frame),
            AddBatchDimensionProcessorStep(), DeviceProcessorStep(device=config.device or "cpu")]


def make_drqv2_pre_post_processors(config, dataset_stats: dict | None = None) -> tuple[
        PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
        PolicyProcessorPipeline[PolicyAction, PolicyAction]]:
    """LeRobot's factory hook (``make_<type>_pre_post_processors``); ``dataset_stats`` are
    not used (no normalisation)."""
    pre = PolicyProcessorPipeline[dict[str, Any], dict[str, Any]](
        steps=preprocessor_steps(config), name=POLICY_PREPROCESSOR_DEFAULT_NAME)
    post = PolicyProcessorPipeline[PolicyAction, PolicyAction](
        steps=[DeviceProcessorStep(device="cpu")], name=POLICY_POSTPROCESSOR_DEFAULT_NAME,
        to_transition=policy_action_to_transition, to_output=transition_to_policy_action)
    return pre, post


__all__ = ["DrQV2ImageProcessorStep", "FeatureType", "make_drqv2_pre_post_processors"]
