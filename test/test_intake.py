"""Several actors into one replay: no transition, frame stack or n-step return ever mixes
actors or episodes, every step is stored or counted as dropped with its reason."""

from __future__ import annotations

import numpy as np
import pytest

from drqv2_ros.learning.intake import StepIntake
from drqv2_ros.learning.replay_buffer import MixedReplay, ReplayBuffer
from drqv2_ros.observation.step_record import StepRecord

T, N = 3, 3  # frame stack, n-step


def make_replay(tmp_path, capacity=4000):
    spec = dict(image_shape=(1, 3, 4, 4), low_dim_size=3, action_size=4, frame_stack=T,
                nstep=N, discount=0.9)
    return MixedReplay(ReplayBuffer(tmp_path / "on", capacity=capacity, **spec),
                       ReplayBuffer(tmp_path / "off", capacity=capacity, **spec))


def step(actor: int, ep: int, k: int, last: bool, intervention=False) -> StepRecord:
    """Frames and actions that name their actor, episode and step."""
    img = np.zeros((1, 3, 4, 4), np.uint8)
    img[0, 0], img[0, 1], img[0, 2] = actor, ep % 256, k
    low = np.array([actor, ep, k], np.float32)
    act = np.array([actor * 0.5, (ep % 100) / 100, k / 1000, 0], np.float32)
    return StepRecord(episode=ep, index=k, stamp_ns=1000 * ep + k, is_first=k == 0,
                      is_last=last,
                      terminated=last and ep % 2 == 0, images=img, low_dim=low,
                      action=act if k else np.zeros(4, np.float32),
                      reward=float(k), is_intervention=intervention and k > 0)


def streams(rng, n_actors=2, episodes=6):
    """Per actor, its steps in order (random episode lengths, some interventions)."""
    out = []
    for a in range(n_actors):
        s = []
        for ep in range(episodes):
            length = int(rng.integers(2, 25))
            for k in range(length + 1):
                s.append(step(a, ep, k, k == length, intervention=rng.random() < 0.3))
        out.append(s)
    return out


def interleave(rng, per_actor):
    idx = [0] * len(per_actor)
    while any(i < len(s) for i, s in zip(idx, per_actor)):
        a = int(rng.choice([j for j, s in enumerate(per_actor) if idx[j] < len(s)]))
        yield a, per_actor[a][idx[a]]
        idx[a] += 1


def check_transitions(batch):
    """Every sampled transition lies inside one episode of one actor, in order."""
    b = batch["rgb"].shape[0]
    for i in range(b):
        cur = batch["rgb"][i, 0].reshape(T, 3, 4, 4)[:, :, 0, 0]  # (T, [actor, ep, k])
        nxt = batch["next_rgb"][i, 0].reshape(T, 3, 4, 4)[:, :, 0, 0]
        ids = {tuple(x) for x in np.concatenate([cur, nxt])[:, :2].tolist()}
        assert len(ids) == 1, f"transition {i} mixes episodes/actors: {cur.tolist()} {nxt.tolist()}"
        ks = cur[:, 2].astype(int)
        assert all(d in (0, 1) for d in np.diff(ks)) and (np.diff(ks) == 1).all() or ks[0] == 0
        k_next = int(nxt[-1, 2])
        assert 1 <= k_next - int(ks[-1]) <= N
        act = batch["action"][i]
        assert act[0] == cur[0, 0] * 0.5 and round(act[2] * 1000) == ks[-1] + 1
        lows = batch["low_dim"][i].reshape(T, 3)
        assert (lows[:, :2] == cur[:, :2]).all()


@pytest.mark.parametrize("n_actors", [1, 2, 3])
def test_interleaved_actors_never_cross(tmp_path, n_actors):
    rng = np.random.default_rng(n_actors)
    replay = make_replay(tmp_path)
    intake = StepIntake(replay)
    per_actor = streams(rng, n_actors)
    for a, r in interleave(rng, per_actor):
        intake.add(r, f"robot{a}")
    counts = intake.counts()
    for a, s in enumerate(per_actor):
        c = counts[f"robot{a}"]
        assert c.received == c.stored == len(s) and not c.dropped and c.staged == 0
        assert c.episodes == 6
    assert replay.online.num_episodes == 6 * n_actors
    for _ in range(5):
        check_transitions(replay.online.sample(256, rng))
        check_transitions(replay.offline.sample(64, rng))


def test_a_single_actor_is_stored_as_it_arrives(tmp_path):
    replay = make_replay(tmp_path)
    intake = StepIntake(replay)
    for i, r in enumerate(streams(np.random.default_rng(0), 1, 2)[0]):
        intake.add(r)
        # written at once: nothing staged for a lone actor
        assert intake.stored == replay.online.total_steps_added == i + 1
        np.testing.assert_array_equal(replay.online.read_step(i)["images"], r.images)


def test_staging_is_bounded_and_a_cut_is_never_stitched(tmp_path):
    replay = make_replay(tmp_path)
    intake = StepIntake(replay, max_staged_steps=5)
    intake.add(step(0, 0, 0, False), "a")  # a holds the ring (long episode)
    for k in range(0, 9):  # b's episode stages 5 steps, then overflows
        intake.add(step(1, 0, k, False), "b")
    for k in range(1, 4):
        intake.add(step(0, 0, k, k == 3), "a")  # a ends: b's 5 steps are written, cut
    b = intake.counts()["b"]
    assert b.stored == 5 and b.dropped == {
        "staging full (another actor held the replay ring too long)": 1,
        "after a cut episode (waiting for the next episode start)": 3}
    assert b.received == b.stored + sum(b.dropped.values())
    for k in range(0, 4):  # b's next episode is whole again
        intake.add(step(1, 1, k, k == 3), "b")
    assert intake.counts()["b"].stored == 9
    check_transitions(replay.online.sample(200, np.random.default_rng(1)))
    # the cut episode ends where b's 5 staged steps end: a truncation (bootstrapped)
    ids = [replay.online.read_step(i) for i in range(replay.online.total_steps_added)]
    cut_last = [s for s in ids if s["low_dim"][0] == 1 and s["low_dim"][1] == 0][-1]
    assert cut_last["is_last"] and not cut_last["terminated"]
    assert cut_last["low_dim"][2] == 4


def test_new_first_step_cuts_the_open_episode_of_that_actor_only(tmp_path):
    replay = make_replay(tmp_path)
    intake = StepIntake(replay)
    for k in range(3):
        intake.add(step(0, 0, k, False), "a")  # a live
    for k in range(4):
        intake.add(step(1, 0, k, False), "b")  # b staged
    intake.add(step(1, 1, 0, False), "b")  # b restarts: its staged episode is cut
    intake.add(step(0, 1, 0, False), "a")  # a restarts: its live episode is cut
    for k in range(1, 3):
        intake.add(step(0, 1, k, k == 2), "a")
        intake.add(step(1, 1, k, k == 2), "b")
    c = intake.counts()
    assert c["a"].stored == 6 and c["b"].stored == 7 and c["a"].episodes == 2
    assert c["b"].episodes == 2 and not c["a"].dropped and not c["b"].dropped
    check_transitions(replay.online.sample(300, np.random.default_rng(2)))


def test_mid_episode_steps_of_a_new_actor_are_counted_and_dropped(tmp_path):
    intake = StepIntake(make_replay(tmp_path))
    intake.add(step(0, 3, 5, False), "late")
    assert intake.counts()["late"].dropped == {
        "mid-episode step (waiting for the next episode start)": 1}
    assert intake.totals.dropped == intake.counts()["late"].dropped


def test_gaps_duplicates_and_foreign_episodes_are_never_stitched(tmp_path):
    """The stream check: a lost run of steps is counted as lost and closes the episode at
    its last good step; a duplicate is dropped; a step of a later episode while one is open
    (its end and the next start were lost) closes the open one; nothing is fabricated."""
    replay = make_replay(tmp_path)
    intake = StepIntake(replay)
    for k in range(5):
        intake.add(step(0, 0, k, False))
    intake.add(step(0, 0, 4, False))  # duplicate
    intake.add(step(0, 0, 8, False))  # 5, 6, 7 lost
    intake.add(step(0, 0, 9, True))  # rest of the cut episode: dropped
    for k in range(4):
        intake.add(step(0, 1, k, False))
    intake.add(step(0, 3, 6, False))  # episode 1's end and episode 2 entirely lost
    for k in range(3):
        intake.add(step(0, 4, k, k == 2))
    c = intake.counts()[""]
    assert c.lost == 3 and c.lost_episodes == 1  # episode 2: not one step of it came
    assert c.dropped == {
        "duplicate or reordered step": 1,
        "after a gap in the stream (episode closed at its last step)": 2,
        "after a cut episode (waiting for the next episode start)": 1}
    assert c.stored == 5 + 4 + 3 and c.episodes == 3
    assert c.received == c.stored + sum(c.dropped.values())
    steps = [replay.online.read_step(i) for i in range(replay.online.total_steps_added)]
    ends = [(int(s["low_dim"][1]), int(s["low_dim"][2])) for s in steps if s["is_last"]]
    assert ends == [(0, 4), (1, 3), (4, 2)]  # each closed at its last good step
    assert [s["terminated"] for s in steps if s["is_last"]] == [False, False, True]
    check_transitions(replay.online.sample(200, np.random.default_rng(3)))


def test_a_restarted_learner_keeps_what_it_had_and_drops_the_resent_rest(tmp_path):
    """The learner dies with steps stored but not flushed; the actor's transient-local history
    re-sends everything. The new learner (same directory) stores every step once: the
    flushed ones are not stored again, the cut episode's tail is counted as dropped, new
    episodes go in."""
    import shutil

    replay = make_replay(tmp_path / "first")
    intake = StepIntake(replay)
    sent = [step(0, ep, k, k == 6) for ep in range(2) for k in range(7)]
    sent += [step(0, 2, k, False) for k in range(6)]
    for r in sent:
        intake.add(r, "robot1")
    replay.flush()  # durable: episodes 0, 1 and 2 up to index 5
    for k in range(6, 9):
        r = step(0, 2, k, False)
        sent.append(r)
        intake.add(r, "robot1")  # stored, never flushed: lost with the crash
    # The crash: the disk holds the ring as of the last flush (state.json says so).
    shutil.copytree(tmp_path / "first", tmp_path / "second",
                    ignore=shutil.ignore_patterns("lock"))
    replay.close()
    replay2 = make_replay(tmp_path / "second")
    intake2 = StepIntake(replay2)
    assert intake2.restore() == 1
    for k in range(9, 12):
        sent.append(step(0, 2, k, k == 11))
    sent += [step(0, 3, k, k == 4) for k in range(5)]
    for r in sent:  # the history again, then what is new
        intake2.add(r, "robot1")
    c = intake2.counts()["robot1"]
    assert c.dropped == {"stored before the learner restarted": 20,
                         "after a cut episode (waiting for the next episode start)": 6}
    assert c.stored == 5
    online = replay2.online
    keys = [tuple(online.read_step(i)["low_dim"][1:].astype(int))
            for i in range(online.total_steps_added)]
    assert len(keys) == len(set(keys)) == 20 + 5  # every stored step once
    assert keys[-5:] == [(3, k) for k in range(5)]
    check_transitions(online.sample(200, np.random.default_rng(4)))
    # a restarted actor (episodes from 0 again, newer stamps) is not mistaken for history
    fresh = StepRecord(**{**step(0, 0, 0, False).__dict__, "stamp_ns": 10**9})
    intake2.add(fresh, "robot1")
    assert intake2.counts()["robot1"].stored == 6
    replay2.close()
