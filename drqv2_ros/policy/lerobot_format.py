"""The processor files a LeRobot 0.4.x policy folder carries, written beside every
checkpoint (``policy_preprocessor.json``, ``policy_postprocessor.json``) so that LeRobot's
``make_pre_post_processors(config, pretrained_path=folder)`` loads a drqv2_ros checkpoint as
it loads its own. Plain JSON in LeRobot's pipeline format (no lerobot import here); the
steps are LeRobot's registered ones plus ``drqv2_images_processor`` of the
lerobot_policy_drqv2 plugin (float [0, 1] images to RoboBase's uint8 0..255, stacked frames
to stacked channels). A test compares these with what LeRobot's own pipeline writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from drqv2_ros.atomic_write import atomic_write_text

PREPROCESSOR_NAME = "policy_preprocessor.json"
POSTPROCESSOR_NAME = "policy_postprocessor.json"


def _device(device: str) -> dict:
    return {"registry_name": "device_processor", "config": {"device": device,
                                                            "float_dtype": None}}


def preprocessor(config, device: str = "cpu") -> dict:
    images = {"frame_stack": config.frame_stack, "channels_per_frame": config.channels_per_frame,
              "low_dim_per_frame": config.low_dim_per_frame}
    return {"name": "policy_preprocessor", "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "drqv2_images_processor", "config": images},
        {"registry_name": "to_batch_processor", "config": {}},
        _device(device)]}


def postprocessor() -> dict:
    return {"name": "policy_postprocessor", "steps": [_device("cpu")]}


def write_processor_files(directory: str | os.PathLike, config) -> None:
    """The two files for a policy of ``config`` (a drqv2_ros ``DrQV2Config``)."""
    d = Path(directory)
    atomic_write_text(d / PREPROCESSOR_NAME, json.dumps(preprocessor(config), indent=2))
    atomic_write_text(d / POSTPROCESSOR_NAME, json.dumps(postprocessor(), indent=2))
