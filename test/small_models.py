"""Small DrQ-v2 configurations for fast unit tests (the architecture code is size-generic)."""

from drqv2_ros.policy import DrQV2Config


def small_config(**kw) -> DrQV2Config:
    base = dict(image_height=24, image_width=24, encoder_channels=8, bottleneck_size=16,
                actor_mlp_nodes=[32], critic_mlp_nodes=[32])
    base.update(kw)
    return DrQV2Config(**base)
