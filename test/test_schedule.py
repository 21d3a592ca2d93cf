"""The one std schedule: RoboBase's values, and every spec that could stop the robot refused."""

from __future__ import annotations

import re

import numpy as np
import pytest
from small_models import small_config

from drqv2_ros.policy import ConfigError, DrQV2Config
from drqv2_ros.policy.schedule import MAX_STD, ScheduleError, StdSchedule, schedule


def robobase_schedule(schdl, step):
    """RoboBase / facebookresearch drqv2 ``utils.schedule``, written out for comparison."""
    try:
        return float(schdl)
    except ValueError:
        match = re.match(r"linear\((.+),(.+),(.+)\)", schdl)
        if match:
            init, final, duration = [float(g) for g in match.groups()]
            mix = np.clip(step / duration, 0.0, 1.0)
            return (1.0 - mix) * init + mix * final
        match = re.match(r"step_linear\((.+),(.+),(.+),(.+),(.+)\)", schdl)
        if match:
            init, final1, duration1, final2, duration2 = [float(g) for g in match.groups()]
            if step <= duration1:
                mix = np.clip(step / duration1, 0.0, 1.0)
                return (1.0 - mix) * init + mix * final1
            mix = np.clip((step - duration1) / duration2, 0.0, 1.0)
            return (1.0 - mix) * final1 + mix * final2
    raise NotImplementedError(schdl)


@pytest.mark.parametrize("spec", ["0.2", "linear(1.0,0.1,500000)", "linear(1.0, 0.1, 4000)",
                                  "step_linear(1.0,0.5,1000,0.1,3000)", "linear(0.1,1.0,7)"])
def test_values_equal_robobase_bit_for_bit(spec):
    s = StdSchedule.parse(spec)
    for step in [0, 1, 3, 6, 7, 8, 999, 1000, 1001, 2500, 4000, 10**6, 10**9]:
        assert s(step) == float(robobase_schedule(spec, step)), (spec, step)


@pytest.mark.parametrize("spec,why", [
    ("nan", "non-finite"), ("inf", "non-finite"), ("linear(1.0,nan,100)", "non-finite"),
    ("linear(1.0,0.1,inf)", "non-finite"), ("linear(1.0,0.1,1e999)", "non-finite"),
    ("linear(1.0,0.1,0)", "durations"), ("linear(1.0,0.1,-5)", "durations"),
    ("step_linear(1.0,0.5,100,0.1,0)", "durations"), ("-0.5", r"\[0, "),
    ("linear(1.0,-0.1,100)", r"\[0, "), ("linear(1e300,0.1,100)", r"\[0, "),
    ("step_linear(1,0.5,10,1e30,10)", r"\[0, "), ("linear(1,2)", "not understood"),
    ("exp(1)", "not understood"), ("0.1" + " " * 300, "characters"),
])
def test_unsafe_schedules_are_refused(spec, why):
    with pytest.raises(ScheduleError, match=why):
        StdSchedule.parse(spec)
    with pytest.raises(ConfigError, match="stddev_schedule"):
        DrQV2Config(**{**small_config().to_dict(), "stddev_schedule": spec})


def test_a_parsed_schedule_is_finite_and_in_range_at_every_step():
    rng = np.random.default_rng(0)
    for spec in ["linear(10.0,0.0,3)", "step_linear(0,10,1e-300,0,1e300)", "0"]:
        s = StdSchedule.parse(spec)
        for step in np.concatenate([rng.integers(0, 2**62, 200), [0, 1, 2**63 - 1]]):
            v = s(int(step))
            assert np.isfinite(v) and 0.0 <= v <= MAX_STD, (spec, step, v)
    assert schedule("linear(1.0,0.1,100)", 50) == pytest.approx(0.55)


@pytest.mark.parametrize("spec", ["linear(1.0,0.1,500000)", "step_linear(1.0,0.5,1000,0.1,3000)",
                                  "linear(1.0, 0.1, 7)", "0.2", "linear(0.1,1.0,7)"])
def test_first_step_at_is_the_first_step_at_or_below(spec):
    # where a start checkpoint sits so that fine-tuning explores with a chosen std
    s = StdSchedule.parse(spec)
    for std in [1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.1000001]:
        if min(s(0), s(10**9)) > std:
            with pytest.raises(ScheduleError, match="never reaches"):
                s.first_step_at(std)
            continue
        k = s.first_step_at(std)
        assert s(k) <= std and (k == 0 or s(k - 1) > std), (spec, std, k)
    with pytest.raises(ScheduleError, match="finite"):
        s.first_step_at(float("nan"))
