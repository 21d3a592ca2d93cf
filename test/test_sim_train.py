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
                          "--batch-size", "8", "--bc-updates", "2", "--actor-updates"]) == 0
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["updates"] == 3 and summary["demos"]["demo_transitions"] == 16
    assert summary["last_metrics"]["actor_bc_loss"] >= 0
    assert summary["last_metrics"]["ratio_bc_samples"] == 1.0  # every sample is a demo
    runner = load_isolated(out / "checkpoint")
    assert runner.summary()["action_dim"] == 4 and runner.schedule_step > 0  # trained

    # the default recipe: behaviour cloning, then the critic alone (the cloned actor
    # fixed), the checkpoint placed where its schedule explores with --start-std
    from drqv2_ros.policy.modeling_drqv2 import DrQV2Policy
    from drqv2_ros.policy.schedule import schedule

    out2 = tmp_path / "pre_default"
    assert pretrain_main([str(out2), "--demos", str(demos / "demos"), "--updates", "2",
                          "--batch-size", "8", "--bc-updates", "3", "--start-std", "0.3"]) == 0
    s2 = json.loads((out2 / "pretrain.json").read_text())
    assert s2["stages"]["bc"]["updates"] == 3 and s2["stages"]["td"]["actor_updates"] is False
    assert s2["last_metrics"]["bc_loss"] >= 0 and "actor_loss" not in s2["last_metrics"]
    policy = DrQV2Policy.from_pretrained(out2 / "checkpoint")
    step = policy.training_counters.main_loop_iterations
    assert schedule(policy.config.stddev_schedule, step) <= 0.3 < schedule(
        policy.config.stddev_schedule, step - 1)
    assert policy.training_counters.pretrain_step == 5 and s2["start_std"] <= 0.3
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


@pytest.mark.parametrize("args,option", [
    (["--batch-size", "0"], "--batch-size"), (["--bc-lr", "nan"], "--bc-lr"),
    (["--bc-lr", "-1"], "--bc-lr"), (["--updates", "-1"], "--updates"),
    (["--bc-updates", "-3"], "--bc-updates"), (["--updates", "0", "--bc-updates", "0"],
                                               "nothing to train"),
    (["--bc-weight", "inf"], "--bc-weight"), (["--start-std", "nan"], "--start-std"),
    (["--seed", "-1"], "--seed")])
def test_pretrain_options_refuse_nonsense_before_any_work(tmp_path, capsys, args, option):
    from drqv2_ros.demo.pretrain import pretrain_main

    with pytest.raises(SystemExit) as exc:
        pretrain_main([str(tmp_path / "out"), "--demos", str(tmp_path / "none"), *args])
    assert exc.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shift_from_a_yaml_file(tmp_path):
    # a user models their own lab: any subset of the preset's fields, from a preset base
    from drqv2_ros.robot.sim_shift import SHIFTS, SimShift, shift_named

    f = tmp_path / "lab.yaml"
    f.write_text("base: real_proxy\nlight_scale: 0.4\ncamera_offset_m: [0.0, -0.01, 0.002]\n")
    s = shift_named(str(f))
    assert s.light_scale == 0.4 and s.camera_offset_m == (0.0, -0.01, 0.002)
    assert s.actuator_kp_scale == SHIFTS["real_proxy"].actuator_kp_scale
    f.write_text("cube_rgba: [0.2, 0.9, 0.2, 1]\n")
    assert shift_named(str(f)) == SimShift(cube_rgba=(0.2, 0.9, 0.2, 1.0))
    for text, why in [("light_scale: -1\n", "light_scale"), ("[1, 2]\n", "mapping"),
                      ("lite_scale: 1\n", "unknown fields"), ("light_tint: [1, 1]\n", "3 "),
                      ("actuator_kp_scale: .nan\n", "non-finite"), ("base: mars\n", "base"),
                      ("camera_offset_m: [1, 0, 0]\n", "0.1 m"), ("light_scale: true\n", "bool"),
                      ("camera_fovy_delta_deg: 80\n", r"\(-60, 60\)"),
                      ("a: [\n", "YAML")]:
        f.write_text(text)
        with pytest.raises(ValueError, match=why):
            shift_named(str(f))
    f.write_text("x" * 70_000)
    with pytest.raises(ValueError, match="bytes"):
        shift_named(str(f))
    with pytest.raises(ValueError, match="shift file"):
        shift_named(str(tmp_path / "missing.yaml"))
    with pytest.raises(SystemExit) as exc:
        sim_train_main(["--shift", "mars", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,option", [
    (["--eval-every", "-1"], "--eval-every"), (["--render-size", "0", "0"], "--render-size"),
    (["--render-size", "100000", "100000"], "--render-size"), (["--batch-size", "0"],
                                                               "--batch-size"),
    (["--utd-ratio", "inf"], "--utd-ratio"), (["--utd-ratio", "nan"], "--utd-ratio"),
    (["--utd-ratio", "-1"], "--utd-ratio"), (["--episodes", "-5"], "--episodes"),
    (["--seed", "-1"], "--seed"), (["--episode-steps", "1000000000"], "--episode-steps"),
    (["--envs", "0"], "--envs"), (["--intervene-probability", "2"], "--intervene-probability"),
    (["--bc-weight", "nan"], "--bc-weight"), (["--eval-episodes", "-2"], "--eval-episodes")])
def test_sim_train_options_refuse_nonsense_before_any_work(tmp_path, capsys, args, option):
    with pytest.raises(SystemExit) as exc:
        sim_train_main(["--out", str(tmp_path / "o"), *args])
    assert exc.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sim_train_refuses_existing_outputs(tmp_path, capsys):
    bag = tmp_path / "bag"
    bag.mkdir()
    with pytest.raises(SystemExit) as exc:
        sim_train_main(["--out", str(tmp_path / "o"), "--record-bag", str(bag)])
    assert exc.value.code == 2 and "--record-bag" in capsys.readouterr().err
    done = tmp_path / "done"
    done.mkdir()
    (done / "sim_train.json").write_text("{}")
    (done / "demos").mkdir()
    for extra in ([], ["--demos-only"]):
        with pytest.raises(SystemExit) as exc:
            sim_train_main(["--out", str(done), *extra])
        assert exc.value.code == 2 and "--out" in capsys.readouterr().err
    (done / "sim_train.json").unlink()
    with pytest.raises(SystemExit) as exc:  # a second --demos-only into the same --out
        sim_train_main(["--out", str(done), "--demos-only"])
    assert exc.value.code == 2 and "--record-bag" in capsys.readouterr().err
    assert sorted(p.name for p in done.iterdir()) == ["demos"]


def test_the_start_policy_is_made_once_and_reused(tmp_path, monkeypatch):
    # what the main job starts from: built in a temporary sibling, renamed into place when
    # complete, reused by the next run; a failed build leaves nothing a run would take
    from drqv2_ros.demo import start_policy as sp

    r = sp.StartPolicyRecipe(demo_episodes=1, episode_steps=6, render="fast",
                             render_size=(160, 120), bc_updates=2, updates=1, batch_size=8,
                             eval_episodes=1, seed=3)
    ck, info, reused = sp.cached_start_policy(r, tmp_path / "cache", progress=False)
    assert not reused and (ck / "model.safetensors").is_file()
    assert ck.parents[1] == tmp_path / "cache" / r.key()
    assert info["checkpoint"] == str(ck) and ".tmp-" not in info["checkpoint"]
    assert info["nominal_policy_only"]["episodes"] == 1 and len(info["commands"]) == 2
    ck2, _info2, reused2 = sp.cached_start_policy(r, tmp_path / "cache", progress=False)
    assert reused2 and ck2 == ck
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [r.key()]
    other = sp.StartPolicyRecipe(**{**r.__dict__, "seed": 4})
    assert other.key() != r.key()

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sp, "build_start_policy", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        sp.cached_start_policy(other, tmp_path / "cache", progress=False)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [r.key()]
