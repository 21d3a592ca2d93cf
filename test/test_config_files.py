"""config/*.yaml against the nodes' parameter dataclasses: every declared parameter is in its
file, nothing else is, and the file's value is the dataclass default (the README's tables
and `--help` show those defaults; a file that silently differs would run another robot)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from drqv2_ros.package_files import config_file


def _pairs():
    from drqv2_ros.acting.actor_setup import PolicyParams
    from drqv2_ros.nodes.camera_node import CameraParams
    from drqv2_ros.nodes.learner_node import LearnerParams
    from drqv2_ros.nodes.recorder_node import RecorderParams
    from drqv2_ros.nodes.scripted_operator_node import ScriptedOperatorParams
    from drqv2_ros.nodes.teleop_node import TeleopParams
    from drqv2_ros.robot.driver_setup import DriverParams

    return {"so101_driver.yaml": DriverParams, "policy.yaml": PolicyParams,
            "learner.yaml": LearnerParams, "camera.yaml": CameraParams,
            "teleop.yaml": TeleopParams, "recorder.yaml": RecorderParams,
            "scripted_operator.yaml": ScriptedOperatorParams}


@pytest.mark.parametrize("name", sorted(_pairs()))
def test_config_file_holds_every_parameter_with_its_default(name):
    cls = _pairs()[name]
    data = yaml.safe_load(config_file(name).read_text())
    (_node, body), = data.items()
    values = body["ros__parameters"]
    fields = {f.name for f in dataclasses.fields(cls)}
    assert sorted(fields - set(values)) == [], "declared but not in the file"
    assert sorted(set(values) - fields) == [], "in the file but not declared"
    defaults = cls()
    for k, v in values.items():
        d = getattr(defaults, k)
        same = (float(v) == float(d)) if isinstance(d, float) and not isinstance(v, bool) \
            else (list(v) == list(d) if isinstance(d, (list, tuple)) else v == d)
        assert same, f"{k}: file {v!r}, default {d!r}"
