"""The actor's settings and how they become an :class:`~drqv2_ros.acting.actor.Actor`
(ROS-free): ``PolicyParams`` are the ``policy`` node's parameters (``config/policy.yaml``);
:func:`make_actor` is the one construction used by the node and by ``drqv2-ros sim-train``.
"""

from __future__ import annotations

from dataclasses import dataclass

from drqv2_ros.acting.actor import Actor
from drqv2_ros.acting.control_loop import LoopConfig
from drqv2_ros.acting.input_checks import InputLimits
from drqv2_ros.acting.policy_runner import PolicyRunner
from drqv2_ros.robot.kinematics import Kinematics
from drqv2_ros.settings import param


@dataclass
class PolicyParams:
    checkpoint: str = param("", "converted checkpoint folder or RoboBase .pt (required)")
    checkpoint_root: str = param("", "if set, /load_checkpoint only accepts paths under it")
    control_rate_hz: float = param(10.0, "control rate, Hz")
    max_obs_age_s: float = param(0.25, "image and joint state must be younger than this, s")
    intervention_timeout_s: float = param(0.45, "a human action is used only while the input "
                                          "it reflects (its stamp) is younger than this, s: "
                                          "50 ms inside the teleop's 0.5 s joy_timeout")
    max_episode_steps: int = param(100, "episode length before truncation (0 = unlimited)")
    policy_enabled: bool = param(True, "false = demo mode: only the operator moves the arm")
    explore: bool = param(True, "sample with the scheduled std (false: mean action)")
    demo: bool = param(False, "flag recorded steps as demonstrations")
    reward_success_threshold: float = param(1.0, "a `reward` message >= this ends the episode")
    success_reward: float = param(1.0, "reward of the step a success event lands on")
    privileged_low_dim: str = param(
        "", "'' refuses checkpoints that need cube_pos; 'sim_state' fills it from sim/state")
    reset_timeout_s: float = param(10.0, "how long to wait for the driver's reset_episode, s")
    weights_timeout_s: float = param(30.0, "warn when no learner weights arrived for this long, s")
    seed: int = param(0, "exploration noise seed")
    follow_learner: bool = param(True, "apply learner weight pushes (false: keep the loaded "
                                       "checkpoint, e.g. for evaluation)")
    load_timeout_s: float = param(60.0, "a checkpoint load (in its own process) is stopped "
                                        "after this long, s")
    max_checkpoint_mb: float = param(1024.0, "checkpoint files above this size are refused, MB")
    joint_limit_margin_rad: float = param(0.2, "joint states beyond the joint limits by more "
                                               "than this are dropped, rad")
    max_joint_velocity: float = param(50.0, "joint states with a faster joint are dropped, rad/s")
    max_future_stamp_s: float = param(0.05, "messages stamped later than now + this are "
                                            "dropped, s")


def make_actor(p: PolicyParams, runner: PolicyRunner, kin: Kinematics) -> Actor:
    """The actor of ``p`` around its first policy (exploration noise seeded by ``p.seed``)."""
    runner._gen.manual_seed(p.seed)
    return Actor(
        runner,
        LoopConfig(max_obs_age_s=p.max_obs_age_s,
                   intervention_timeout_s=p.intervention_timeout_s,
                   max_episode_steps=p.max_episode_steps, success_reward=p.success_reward,
                   reward_success_threshold=p.reward_success_threshold,
                   policy_enabled=p.policy_enabled, explore=p.explore, demo=p.demo),
        kinematics=kin, control_rate_hz=p.control_rate_hz,
        input_limits=InputLimits(kin.lower, kin.upper,
                                 joint_margin_rad=p.joint_limit_margin_rad,
                                 max_joint_velocity=p.max_joint_velocity,
                                 max_future_s=p.max_future_stamp_s),
        privileged_low_dim=p.privileged_low_dim)
