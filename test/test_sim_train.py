"""`drqv2-ros sim-train`: the in-process loop (actor, driver core, scripted operator through
the Joy mapping, learner) and its policy-only evaluation: fixed seeded placements, the
policy alone with its mean action, never stored for training."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mujoco")

from drqv2_ros.demo.sim_train import SimTrainConfig, SimTrainer, run, sim_train_main

pytestmark = pytest.mark.slow  # the sim runs: ~10-40 s each

SMALL = dict(episode_steps=8, warmup=10, batch_size=8, utd_ratio=0.5, render="fast",
             render_width=160, render_height=120, eval_episodes=2,
             weights_every_updates=2)


def test_evaluation_is_policy_alone_on_fixed_placements_and_never_stored(tmp_path):
    # The operator takes over every training episode from its start: evaluation episodes
    # must still have no intervention, their steps must not reach the learner, and the
    # evaluation placements must not shift the training episodes' placements.
    cfg = SimTrainConfig(out=str(tmp_path / "a"), intervene_probability=1.0,
                         intervene_start_s=0.0, intervene_duration_s=0.0, **SMALL)
    t = SimTrainer(cfg)
    try:
        ev1 = t.evaluate()
        # the stepping rate counts the evaluation steps it timed (it read 0 steps/s, or a
        # few for a short run after long evaluations, when only training steps counted)
        assert t.env_steps == 0 and t.stepped == sum(e.steps + 1 for e in ev1.episodes)
        assert t.env_steps_per_s > 0
        train = [t.run_episode() for _ in range(3)]
        ev2 = t.evaluate()
        train.append(t.run_episode())
        assert all(e.intervention_steps > 0 for e in train)
        assert all(e.intervention_steps == 0 and e.evaluation for e in ev1.episodes + ev2.episodes)
        assert [e.cube_xy for e in ev1.episodes] == [e.cube_xy for e in ev2.episodes]
        # every training step reached the learner, no evaluation step did
        t.loop.drain()
        assert t.loop.counters.received == t.env_steps == sum(e.steps + 1 for e in train)
        assert t.loop.intake.totals.lost_episodes == 0  # evaluations leave no gap
        assert len(t.loop.replay.offline) > 0  # interventions are routed offline
        assert 0 < ev2.updates <= t.loop.counters.updates
        assert t.actor.runner.weights_version >= 1  # the actor acts with learner weights
    finally:
        t.close()
    # the training placements are those of a run without evaluations
    t2 = SimTrainer(SimTrainConfig(out=str(tmp_path / "b"), train=False, **SMALL))
    try:
        assert [t2.run_episode().cube_xy for _ in range(4)] == [e.cube_xy for e in train]
    finally:
        t2.close()


def test_run_writes_an_honest_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert sim_train_main(["--out", str(out), "--episodes", "2", "--episode-steps", "6",
                           "--warmup", "8", "--batch-size", "8", "--eval-episodes", "1",
                           "--eval-every", "1", "--render", "wrist_only",
                           "--render-size", "160", "120"]) == 0
    text = capsys.readouterr().out
    assert "policy-only success (evaluation, mean action, no operator)" in text
    assert "render wrist_only 160x120" in text
    report = json.loads((out / "sim_train.json").read_text())
    # before training, after episode 1, after the last
    assert [e["after_episodes"] for e in report["evaluations"]] == [0, 1, 2]
    for key in ("assisted_success_rate", "policy_alone_train_success_rate",
                "env_steps_per_s", "updates_per_s", "real_time_factor", "intervention_rate"):
        assert key in report
    assert report["render"] == {"mode": "wrist_only", "width": 160, "height": 120}
    assert (out / "learner" / "checkpoints" / "last" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="render must be one of"):
        run(SimTrainConfig(out=str(tmp_path / "bad"), render="cartoon"), progress=False)


def test_wrist_only_render_leaves_the_policy_image_unchanged_at_home():
    # The opt-in render hides only what the wrist camera cannot see; the front camera
    # still draws every link.
    import numpy as np

    from drqv2_ros.observation.preprocessing import CropResize
    from drqv2_ros.robot.sim_world import FRONT_CAMERA, SimConfig, SimWorld

    crop = CropResize(84, None)
    full, fast = SimWorld(SimConfig()), SimWorld(SimConfig(render="wrist_only"))
    try:
        np.testing.assert_array_equal(crop(full.render()), crop(fast.render()))
        np.testing.assert_array_equal(full.render(FRONT_CAMERA), fast.render(FRONT_CAMERA))
    finally:
        full.close()
        fast.close()


def test_fast_render_same_physics_and_a_close_policy_image():
    # 'fast' (opt-in) draws reduced jaw meshes and a coarser floor lighting grid: physics
    # must be bit for bit that of pick-101's scene, the 84x84 policy image close to it in
    # the poses of a pick (home, reaching, above the cube, grasped), and the wrist
    # camera's meshes must really be lighter.
    import mujoco
    import numpy as np

    from drqv2_ros.observation.preprocessing import CropResize
    from drqv2_ros.robot.sim_world import SimConfig, SimWorld

    full, fast = SimWorld(SimConfig(seed=3)), SimWorld(SimConfig(render="fast", seed=3))
    try:
        for attr in ("body_mass", "body_inertia", "body_ipos", "body_iquat"):
            np.testing.assert_array_equal(getattr(full.model, attr),
                                          getattr(fast.model, attr), err_msg=attr)
        coll = (full.model.geom_contype != 0) | (full.model.geom_conaffinity != 0)
        for attr in ("geom_pos", "geom_quat", "geom_dataid"):
            np.testing.assert_array_equal(getattr(full.model, attr)[coll],
                                          getattr(fast.model, attr)[coll], err_msg=attr)
        # a plane's third size is its rendering grid spacing only
        np.testing.assert_array_equal(full.model.geom_size[coll, :2],
                                      fast.model.geom_size[coll, :2])
        rng = np.random.default_rng(0)
        for _ in range(30):
            t = rng.uniform(-0.4, 0.4, 6)
            for w in (full, fast):
                w.set_targets(t)
                w.step(10)
        np.testing.assert_array_equal(full.data.qpos, fast.data.qpos)

        crop = CropResize(84, None)
        cube = full._block_qadr
        for q, xyz in (((0.0,) * 6, (0.4, -0.1, 0.015)),
                       ((0.357, 1.075, -1.019, 0.538, 0.462, 1.725), (0.419, -0.124, 0.015)),
                       ((0.269, 1.216, -1.292, 0.894, 0.692, 1.437), (0.41, -0.081, 0.014)),
                       ((0.358, 1.097, -1.292, 1.262, 1.607, 0.153), (0.365, -0.111, 0.035))):
            for w in (full, fast):
                w.data.qpos[w._qadr] = q
                w.data.qpos[cube:cube + 3] = xyz
                mujoco.mj_forward(w.model, w.data)
            d = np.abs(crop(full.render()).astype(int) - crop(fast.render()).astype(int))
            # measured on the states of scripted picks: mean 0.5 levels, 1.7 % of the
            # pixels off by more than 16 (the jaws' shading)
            assert d.mean() < 1.5 and (d.max(-1) > 16).mean() < 0.04, (q, d.mean())

        def jaw_triangles(w):
            m = w.model
            return sum(int(m.mesh_facenum[m.geom_dataid[g]]) for g in range(m.ngeom)
                       if m.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH
                       and m.geom_contype[g] == 0 and m.geom_conaffinity[g] == 0
                       and m.body(m.geom_bodyid[g]).name in ("gripper", "moving_jaw_so101_v1"))
        assert jaw_triangles(fast) < 0.6 * jaw_triangles(full)
    finally:
        full.close()
        fast.close()


def test_scripted_demos_to_a_pretrained_start_policy(tmp_path, capsys):
    # sim-train --demos-only records the operator's episodes as a bag (is_demo, the
    # operator's executed actions); pretrain trains on them and writes a checkpoint the
    # actor takes as it is.
    from drqv2_ros.acting.loader import load_isolated
    from drqv2_ros.bags.reader import open_bag
    from drqv2_ros.demo.pretrain import pretrain_main

    demos = tmp_path / "demos"
    assert sim_train_main(["--demos-only", "--out", str(demos), "--episodes", "2",
                           "--episode-steps", "8", "--render", "wrist_only",
                           "--render-size", "160", "120"]) == 0
    report = json.loads((demos / "sim_train.json").read_text())
    assert all(e["intervention_steps"] == e["steps"] for e in report["train_episodes"])
    assert report["evaluations"] == [] and report["updates"] == 0
    assert open_bag(demos / "demos").topics["/step"].count == 18  # 2 x (8 + 1)
    out = tmp_path / "pre"
    assert pretrain_main([str(out), "--demos", str(demos / "demos"), "--updates", "3",
                          "--batch-size", "8"]) == 0
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["updates"] == 3 and summary["demos"]["demo_transitions"] == 16
    assert summary["last_metrics"]["actor_bc_loss"] >= 0
    assert summary["last_metrics"]["ratio_bc_samples"] == 1.0  # every sample is a demo
    runner = load_isolated(out / "checkpoint")
    assert runner.summary()["action_dim"] == 4 and runner.schedule_step > 0  # trained
    capsys.readouterr()
    # refused with the reason, nothing overwritten: an existing output, a bag without steps
    assert pretrain_main([str(out), "--demos", str(demos / "demos"), "--updates", "1"]) == 1
    assert "exists" in capsys.readouterr().err
    assert pretrain_main([str(tmp_path / "p2"), "--demos", str(tmp_path / "nothing"),
                          "--updates", "1"]) == 1
    assert "drqv2-ros pretrain:" in capsys.readouterr().err


def test_real_proxy_shift_changes_what_the_policy_sees_and_the_physics():
    import numpy as np

    from drqv2_ros.observation.preprocessing import CropResize
    from drqv2_ros.robot.sim_shift import SHIFTS, SimShift, shift_named
    from drqv2_ros.robot.sim_world import SimConfig, SimWorld

    crop = CropResize(84, None)
    nominal, explicit, shifted = (SimWorld(SimConfig()), SimWorld(SimConfig(shift="none")),
                                  SimWorld(SimConfig(shift="real_proxy")))
    try:
        np.testing.assert_array_equal(crop(nominal.render()), crop(explicit.render()))
        diff = np.abs(crop(nominal.render()).astype(int) - crop(shifted.render()).astype(int))
        assert diff.mean() > 10  # light, colours, camera: a different image
        s, a, b = SHIFTS["real_proxy"], nominal.model, shifted.model
        np.testing.assert_allclose(b.actuator_gainprm[shifted._act, 0],
                                   a.actuator_gainprm[nominal._act, 0] * s.actuator_kp_scale)
        cube = a.geom("block").bodyid[0]
        assert b.body_mass[cube] == a.body_mass[cube] * s.cube_mass_scale
        assert b.geom("block").friction[0] == a.geom("block").friction[0] * 0.7
        assert b.camera("wrist_cam").fovy[0] == a.camera("wrist_cam").fovy[0] - 7.0
    finally:
        for w in (nominal, explicit, shifted):
            w.close()
    with pytest.raises(ValueError, match="unknown shift"):
        shift_named("mars")
    with pytest.raises(ValueError, match="actuator_kp_scale"):
        SimShift(actuator_kp_scale=0.0)


def test_several_envs_in_lock_step_feed_one_learner(tmp_path):
    # Two envs, one thread each: every training step of both reaches the learner under its
    # own actor id; the evaluation set gives exactly what one env gives.
    one = SimTrainer(SimTrainConfig(out=str(tmp_path / "one"), train=False, **SMALL))
    try:
        ev_one = one.evaluate()
    finally:
        one.close()
    cfg = SimTrainConfig(out=str(tmp_path / "two"), envs=2, intervene_probability=1.0,
                         intervene_start_s=0.0, intervene_duration_s=0.0, **SMALL)
    t = SimTrainer(cfg)
    try:
        ev_two = t.evaluate()
        eps = t.run_episodes(4)
        t.loop.drain()
        assert len(eps) == 4 and t.train_episodes == 4
        assert t.loop.counters.received == t.env_steps == sum(e.steps + 1 for e in eps)
        counts = t.loop.intake.counts()
        assert set(counts) == {"sim_train", "sim_train_1"}
        assert all(c.received > 0 and not c.dropped for c in counts.values())
    finally:
        t.close()
    key = [(e.cube_xy, e.success, e.steps, e.intervention_steps) for e in ev_one.episodes]
    assert [(e.cube_xy, e.success, e.steps, e.intervention_steps)
            for e in ev_two.episodes] == key
    with pytest.raises(ValueError, match="use --envs 1"):
        SimTrainer(SimTrainConfig(out=str(tmp_path / "bag"), envs=2,
                                  record_bag=str(tmp_path / "b"), **SMALL))


def test_replay_is_sized_to_the_run(tmp_path):
    # The buffers are preallocated on disk: a short run must not claim the learner node's
    # 100k + 50k steps (3 GB at 84x84).
    t = SimTrainer(SimTrainConfig(out=str(tmp_path), episodes=30, **SMALL))
    try:
        assert t.loop.replay.online.capacity == t.loop.replay.offline.capacity == 1000
        big = sum(f.stat().st_size for f in (tmp_path / "learner").rglob("*") if f.is_file())
        assert big < 100e6, big
    finally:
        t.close()
    t = SimTrainer(SimTrainConfig(out=str(tmp_path / "b"), episodes=200, **SMALL))
    try:
        assert t.loop.replay.online.capacity == 200 * 9
    finally:
        t.close()
