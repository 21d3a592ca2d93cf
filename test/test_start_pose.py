"""The task's start pose: the cube is in the policy's 84x84 wrist image from step 0, over the
whole placement range, in the nominal and the shifted scene (a policy cannot steer towards
what it cannot see); pick-101's all-zero home is kept as a preset where it is not."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")

from drqv2_ros.bringup.graph import rendering_environment


@pytest.fixture(scope="module", autouse=True)
def _egl():
    import os

    saved = dict(os.environ)
    os.environ.update(rendering_environment(os.environ))
    yield
    os.environ.clear()
    os.environ.update(saved)


def cube_pixels(world, crop, xy) -> int:
    """Pixels of the 84x84 policy image that the cube changes (rendered with the cube at
    ``xy``, then again with it in the geom group the wrist camera hides under the
    wrist_only render): colour-independent, so it also holds under the shift."""
    import mujoco

    from drqv2_ros.robot.sim_world import _HIDDEN_GROUP

    m, d, a, g = world.model, world.data, world._block_qadr, world._block_geom
    world.reset()
    d.qpos[a:a + 3] = (xy[0], xy[1], world.cfg.cube_half_size_m)
    mujoco.mj_forward(m, d)
    group = int(m.geom_group[g])
    shown = crop(world.render()).astype(int)
    m.geom_group[g] = _HIDDEN_GROUP
    try:
        hidden = crop(world.render()).astype(int)
    finally:
        m.geom_group[g] = group
    return int((np.abs(shown - hidden).max(-1) > 25).sum())


def placements(cfg, n=4):
    (x0, y0), (x1, y1) = cfg.cube_xy_min, cfg.cube_xy_max
    return [(x, y) for x in np.linspace(x0, x1, n) for y in np.linspace(y0, y1, n)]


@pytest.mark.parametrize("shift", ["none", "real_proxy"])
@pytest.mark.parametrize("size", [(160, 120), (640, 480)])
def test_cube_in_view_at_step_0_over_the_placement_range(shift, size):
    from drqv2_ros.robot.driver_setup import DriverParams, make_crop, sim_config
    from drqv2_ros.robot.sim_world import SimWorld

    p = DriverParams(render_width=size[0], render_height=size[1])
    world = SimWorld(sim_config(p, render="wrist_only", shift=shift))
    try:
        counts = [cube_pixels(world, make_crop(p), xy) for xy in placements(world.cfg)]
    finally:
        world.close()
    # a 3 cm cube ~20 cm from a 75 deg camera covers ~8x8 of 84x84 pixels; the jaws may hide
    # a part of it at the nearest placements
    assert min(counts) >= 20, counts


def test_pick101_home_sees_no_cube():
    from drqv2_ros.robot.driver_setup import DriverParams, make_crop, sim_config
    from drqv2_ros.robot.sim_world import START_POSES, SimWorld

    p = DriverParams(render_width=160, render_height=120, home_position=list(
        START_POSES["pick101"]))
    world = SimWorld(sim_config(p, render="wrist_only"))
    try:
        assert max(cube_pixels(world, make_crop(p), xy) for xy in placements(world.cfg)) == 0
    finally:
        world.close()


def test_start_pose_is_the_default_everywhere_and_the_ik_keeps_it():
    from drqv2_ros.robot.driver_setup import DriverParams
    from drqv2_ros.robot.kinematics import Kinematics, TopDown
    from drqv2_ros.robot.sim_world import START_POSES, SimConfig

    q = np.array(START_POSES["wrist_view"])
    assert tuple(DriverParams().home_position) == START_POSES["wrist_view"] \
        == SimConfig().home_position
    import yaml

    from drqv2_ros.package_files import config_file

    yml = yaml.safe_load(config_file("so101_driver.yaml").read_text())
    assert tuple(yml["/**"]["ros__parameters"]["home_position"]) == START_POSES["wrist_view"]
    kin = Kinematics()
    # a zero command from the start pose: the top-down IK leaves the arm where it is
    # (to the 4-decimal rounding of the stored pose)
    np.testing.assert_allclose(kin.ik(q, kin.fk(q), top_down=TopDown()), q, atol=2e-3)
    assert np.all(q >= kin.lower) and np.all(q <= kin.upper)
    site = kin.fk(q)
    assert 0.2 < site[0] < 0.37 and 0.1 < site[2] < 0.25  # behind and above the box
