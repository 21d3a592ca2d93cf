"""Tests of the persistent replay buffer (drqv2_ros/learning/replay_buffer.py): no ROS."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drqv2_ros.learning.replay_buffer import MixedReplay, ReplayBuffer

HERE = Path(__file__).resolve().parent
SHAPE = (2, 3, 4, 4)  # two views, tiny frames
D, A = 3, 2


def make_rb(path, capacity=1000, T=3, n=3, gamma=0.9, shape=SHAPE):
    return ReplayBuffer(path, capacity=capacity, image_shape=shape, low_dim_size=D,
                        action_size=A, frame_stack=T, nstep=n, discount=gamma)


class Ref:
    """Brute-force model of what a buffer must hold and return; steps carry their id in
    low_dim[0] (``tag``), so sampled rows can be traced back to the reference step."""

    def __init__(self, T, n, gamma):
        self.T, self.n, self.gamma = T, n, gamma
        self.steps: list[dict] = []
        self.ep_start = None

    def add(self, rb, tag, *, k, last=False, term=False, inter=False, demo=False,
            reward=None, sampleable=True, rng=None):
        rng = rng or np.random.default_rng(tag)
        st = dict(
            images=rng.integers(0, 256, SHAPE, dtype=np.uint8),
            low_dim=np.array([tag, k, rng.normal()], np.float32),
            action=None if k == 0 else rng.uniform(-1, 1, A).astype(np.float32),
            reward=float(rng.normal()) if reward is None else reward,
            is_first=k == 0, is_last=last, terminated=term,
            is_intervention=inter, is_demo=demo)
        if rb is not None:
            rb.add_step(**st, sampleable=sampleable)
        self.record(st, sampleable)
        return st

    def record(self, st, sampleable=True):
        g = len(self.steps)
        if st["is_first"]:
            self.ep_start = g
        self.steps.append(dict(st, ep=self.ep_start, sampleable=sampleable and not st["is_first"],
                               reward=0.0 if st["is_first"] else st["reward"]))
        if st["is_last"]:
            self.ep_start = None

    def end_episode(self):
        if self.ep_start is not None:
            self.steps[-1]["is_last"] = True
            self.ep_start = None

    def valid(self, t, lo):
        S, total = self.steps, len(self.steps)
        if t < lo or t + 1 >= total:
            return False
        if S[t + 1]["is_first"] or not S[t + 1]["sampleable"]:
            return False
        ep = S[t]["ep"]
        if max(t - self.T + 1, ep) < lo:
            return False
        closed = any(S[s]["is_last"] for s in range(max(ep, lo), total))
        return closed or t + self.n <= total - 1

    def valid_set(self, lo):
        return [t for t in range(lo, len(self.steps)) if self.valid(t, lo)]

    def expected(self, t):
        S, T = self.steps, self.T
        ep = S[t]["ep"]
        ret, nprime, term = 0.0, 0, False
        for i in range(1, self.n + 1):
            s = S[t + i]
            ret += self.gamma ** (i - 1) * s["reward"]
            nprime = i
            term = s["terminated"]
            if s["is_last"]:
                break
        frames = [max(t - j, ep) for j in range(T - 1, -1, -1)]
        nframes = [max(t + nprime - j, ep) for j in range(T - 1, -1, -1)]

        def stack(ids):
            rgb = np.concatenate([S[i]["images"] for i in ids], axis=1)  # (V, T*3, H, W)
            return rgb, np.concatenate([S[i]["low_dim"] for i in ids])

        rgb, low = stack(frames)
        nrgb, nlow = stack(nframes)
        return dict(rgb=rgb, low_dim=low, next_rgb=nrgb, next_low_dim=nlow,
                    action=S[t + 1]["action"], reward=ret,
                    discount=0.0 if term else self.gamma ** nprime,
                    is_intervention=S[t + 1]["is_intervention"], is_demo=S[t + 1]["is_demo"])

    def index_of_tag(self):
        return {int(s["low_dim"][0]): g for g, s in enumerate(self.steps)}


def check_batch(ref, batch, lo, tag_to_t=None):
    """Every sampled row equals the reference transition of the step it names."""
    B = batch["rgb"].shape[0]
    tag_to_t = tag_to_t or ref.index_of_tag()
    seen = set()
    for b in range(B):
        t = tag_to_t[int(batch["low_dim"][b, (ref.T - 1) * D])]
        assert ref.valid(t, lo), f"sampled invalid transition {t}"
        exp = ref.expected(t)
        for key in ("rgb", "low_dim", "next_rgb", "next_low_dim", "action"):
            np.testing.assert_array_equal(batch[key][b], exp[key], err_msg=f"{key} of t={t}")
        assert batch["reward"][b] == pytest.approx(exp["reward"], rel=1e-5, abs=1e-6)
        assert batch["discount"][b] == pytest.approx(exp["discount"], rel=1e-6)
        assert bool(batch["is_intervention"][b]) == exp["is_intervention"]
        assert bool(batch["is_demo"][b]) == exp["is_demo"]
        seen.add(t)
    return seen


def lo_of(rb):
    return rb.total_steps_added - rb.num_steps


# ----------------------------------------------------------------------------- n-step


@pytest.mark.parametrize("terminated", [True, False])
def test_nstep_hand_computed(tmp_path, terminated):
    rb = make_rb(tmp_path / "b", T=2, n=3, gamma=0.5)
    ref = Ref(2, 3, 0.5)
    rewards = [0.0, 1.0, 2.0, 3.0, 4.0]  # r_1..r_4 = 1, 2, 3, 4
    for k in range(5):
        ref.add(rb, tag=k, k=k, reward=rewards[k], last=k == 4, term=terminated and k == 4)
        # open episode: a transition t needs o_{t+3}
        assert len(rb) == (max(0, k - 2) if k < 4 else 4)
    batch = rb.sample(400, np.random.default_rng(0))
    got = {}
    for b in range(400):
        t = int(batch["low_dim"][b, D])  # tag of the newest frame
        got[t] = (float(batch["reward"][b]), float(batch["discount"][b]),
                  int(batch["next_low_dim"][b, D]))
    exp = {0: (2.75, 0.125, 3)}  # 1 + .5*2 + .25*3, gamma^3, bootstrap from o_3
    if terminated:
        exp.update({1: (4.5, 0.0, 4), 2: (5.0, 0.0, 4), 3: (4.0, 0.0, 4)})
    else:  # truncation: use the steps available, bootstrap from the last observation
        exp.update({1: (4.5, 0.125, 4), 2: (5.0, 0.25, 4), 3: (4.0, 0.5, 4)})
    assert got == exp
    check_batch(ref, batch, 0)


# ----------------------------------------------------------------------------- stacks


def test_stacks_and_next_obs_across_episode_boundaries(tmp_path):
    T, n = 4, 2
    rb = make_rb(tmp_path / "b", T=T, n=n)
    ref = Ref(T, n, 0.9)
    rng = np.random.default_rng(1)
    tag = 0
    for e, length in enumerate([1, 2, 3, 6, 2, 9]):  # 1-step episode: no transition at all
        for k in range(length):
            ref.add(rb, tag, k=k, last=k == length - 1, term=(e % 2 == 0) and k == length - 1,
                    inter=bool(rng.random() < 0.3), demo=e == 3)
            tag += 1
    assert rb.num_episodes == 6 and rb.num_steps == 23
    valid = ref.valid_set(0)
    assert len(rb) == len(valid) == 23 - 6
    batch = rb.sample(2000, np.random.default_rng(2))
    assert batch["rgb"].shape == (2000, 2, T * 3, 4, 4) and batch["rgb"].dtype == np.uint8
    assert batch["low_dim"].shape == (2000, T * D) and batch["low_dim"].dtype == np.float32
    assert batch["next_rgb"].shape == batch["rgb"].shape
    assert batch["action"].shape == (2000, A)
    seen = check_batch(ref, batch, 0)
    assert seen == set(valid)  # uniform over all valid transitions: every one shows up
    # never mixing episodes: all frames of a stack come from the same episode
    ep_of = {int(s["low_dim"][0]): s["ep"] for s in ref.steps}
    for row in np.concatenate([batch["low_dim"], batch["next_low_dim"]]):
        assert len({ep_of[int(row[j * D])] for j in range(T)}) == 1
    assert rb.num_intervention_transitions == sum(
        ref.steps[t + 1]["is_intervention"] for t in valid)
    assert rb.num_demo_transitions == sum(ref.steps[t + 1]["is_demo"] for t in valid)


def test_first_frame_repeated_at_episode_start(tmp_path):
    rb = make_rb(tmp_path / "b", T=3, n=1)
    ref = Ref(3, 1, 0.9)
    for k in range(3):
        ref.add(rb, 10 + k, k=k, last=k == 2)
    b = rb.sample(64, np.random.default_rng(0))
    for row, nrow in zip(b["low_dim"], b["next_low_dim"], strict=True):
        tags = [int(row[j * D]) for j in range(3)]
        ntags = [int(nrow[j * D]) for j in range(3)]
        assert tags in ([10, 10, 10], [10, 10, 11])
        assert ntags == ([10, 10, 11] if tags[-1] == 10 else [10, 11, 12])


# ----------------------------------------------------------------------------- eviction


def test_fifo_eviction_keeps_valid_samples_only(tmp_path):
    T, n, cap = 3, 3, 40
    rb = make_rb(tmp_path / "b", capacity=cap, T=T, n=n)
    ref = Ref(T, n, 0.9)
    rng = np.random.default_rng(3)
    tag = 0
    for _ in range(18):
        length = int(rng.integers(1, 15))
        for k in range(length):
            last = k == length - 1
            ref.add(rb, tag, k=k, last=last, term=last and bool(rng.random() < 0.5),
                    inter=bool(rng.random() < 0.2))
            tag += 1
            lo = lo_of(rb)
            assert rb.num_steps <= cap and lo >= len(ref.steps) - cap
            valid = ref.valid_set(lo)
            assert len(rb) == len(valid)
            if tag % 7 == 0 and valid:
                batch = rb.sample(64, rng)
                check_batch(ref, batch, lo)
                # nothing evicted is ever referenced
                assert batch["low_dim"][:, ::D].min() >= lo
                assert batch["next_low_dim"][:, ::D].min() >= lo
    assert rb.total_steps_added == tag > cap
    with pytest.raises(IndexError):
        rb.read_step(lo_of(rb) - 1)


# ----------------------------------------------------------------------------- refusal


def test_refuses_bad_input(tmp_path):
    rb = make_rb(tmp_path / "b")
    img = np.zeros(SHAPE, np.uint8)
    low = np.zeros(D, np.float32)
    act = np.zeros(A, np.float32)
    with pytest.raises(ValueError, match="non-first step without an open episode"):
        rb.add_step(img, low, act, 0.0, is_first=False, is_last=False, terminated=False)
    with pytest.raises(ValueError, match=r"images: shape \(1, 3, 4, 4\) != expected"):
        rb.add_step(np.zeros((1, 3, 4, 4), np.uint8), low, None, 0.0, is_first=True,
                    is_last=False, terminated=False)
    with pytest.raises(ValueError, match="images: dtype must be uint8"):
        rb.add_step(img.astype(np.float32), low, None, 0.0, is_first=True, is_last=False,
                    terminated=False)
    with pytest.raises(ValueError, match=r"low_dim: shape \(4,\) != expected \(3,\)"):
        rb.add_step(img, np.zeros(4, np.float32), None, 0.0, is_first=True, is_last=False,
                    terminated=False)
    with pytest.raises(ValueError, match="low_dim: contains NaN"):
        rb.add_step(img, np.array([0, np.nan, 0], np.float32), None, 0.0, is_first=True,
                    is_last=False, terminated=False)
    assert rb.num_steps == 0  # nothing half-written
    rb.add_step(img, low, None, 0.0, is_first=True, is_last=False, terminated=False)
    with pytest.raises(ValueError, match="action: shape"):
        rb.add_step(img, low, np.zeros(A + 1, np.float32), 0.0, is_first=False, is_last=False,
                    terminated=False)
    with pytest.raises(ValueError, match="action: dtype must be floating"):
        rb.add_step(img, low, np.zeros(A, np.int64), 0.0, is_first=False, is_last=False,
                    terminated=False)
    with pytest.raises(ValueError, match="action: expected an array"):
        rb.add_step(img, low, None, 0.0, is_first=False, is_last=False, terminated=False)
    with pytest.raises(ValueError, match="action: contains NaN or Inf"):
        rb.add_step(img, low, np.array([0, np.inf], np.float32), 0.0, is_first=False,
                    is_last=False, terminated=False)
    with pytest.raises(ValueError, match="reward: must be finite"):
        rb.add_step(img, low, act, float("nan"), is_first=False, is_last=False,
                    terminated=False)
    with pytest.raises(ValueError, match="terminated=True requires is_last"):
        rb.add_step(img, low, act, 0.0, is_first=False, is_last=False, terminated=True)
    with pytest.raises(ValueError, match="still open"):
        rb.add_step(img, low, None, 0.0, is_first=True, is_last=False, terminated=False)
    assert rb.num_steps == 1
    with pytest.raises(ValueError, match="no sampleable transition"):
        rb.sample(4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="capacity"):
        make_rb(tmp_path / "c", capacity=5)


# ----------------------------------------------------------------------------- reopen


def test_reopen_validates_spec_and_keeps_data(tmp_path):
    path = tmp_path / "b"
    rb = make_rb(path, capacity=100)
    ref = Ref(3, 3, 0.9)
    for k in range(6):
        ref.add(rb, k, k=k, last=k == 5, inter=k == 2)
    with pytest.raises(RuntimeError, match="already open"):
        make_rb(path, capacity=100)  # one writer per directory
    rb.close()
    with pytest.raises(ValueError, match="capacity: stored 100 != requested 99"):
        make_rb(path, capacity=99)
    with pytest.raises(ValueError, match=r"image_shape: stored \[2, 3, 4, 4\]"):
        make_rb(path, capacity=100, shape=(1, 3, 4, 4))
    with pytest.raises(ValueError, match="nstep: stored 3 != requested 2"):
        make_rb(path, capacity=100, n=2)
    rb2 = ReplayBuffer.open(path)
    assert (rb2.num_steps, rb2.num_episodes, len(rb2)) == (6, 1, 5)
    assert rb2.num_intervention_transitions == 1
    check_batch(ref, rb2.sample(50, np.random.default_rng(0)), 0)
    rb2.close()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        make_rb(other)


# ----------------------------------------------------------------------------- SIGKILL


def _writer_module():
    spec = importlib.util.spec_from_file_location("_buffer_writer", HERE / "_buffer_writer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("capacity,n_flushed,n_unflushed", [(500, 40, 25), (30, 75, 4)])
def test_survives_sigkill(tmp_path, capacity, n_flushed, n_unflushed):
    w = _writer_module()
    path = tmp_path / "b"
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_buffer_writer.py"), str(path), str(capacity),
         str(n_flushed), str(n_unflushed)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == f"flushed {n_flushed}"
        assert proc.stdout.readline().strip() == f"unflushed {n_unflushed}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    rb = ReplayBuffer(path, capacity=capacity, image_shape=w.IMAGE_SHAPE,
                      low_dim_size=w.LOW_DIM, action_size=w.ACTION, frame_stack=3, nstep=3,
                      discount=0.9)
    total = rb.total_steps_added
    if capacity > n_flushed + n_unflushed:  # no eviction: exactly the flushed steps
        assert total == n_flushed and rb.num_steps == n_flushed
    else:  # full ring: evictions flush, so at least everything flushed by hand is there
        assert n_flushed <= total <= n_flushed + n_unflushed
        assert rb.num_steps >= capacity - rb.evict_chunk
    lo = lo_of(rb)
    ref = Ref(3, 3, 0.9)
    for g in range(total):
        ref.record(w.make_step(g))
    ref.end_episode()  # the open episode is closed as a truncation on reopen
    for g in range(lo, total):  # every durable step is exact
        got, exp = rb.read_step(g), w.make_step(g)
        np.testing.assert_array_equal(got["images"], exp["images"])
        np.testing.assert_array_equal(got["low_dim"], exp["low_dim"])
        if not exp["is_first"]:
            np.testing.assert_array_equal(got["action"], exp["action"])
            assert got["reward"] == np.float32(exp["reward"])
    assert not rb.episode_open
    valid = ref.valid_set(lo)
    assert len(rb) == len(valid) > 0
    seen = check_batch(ref, rb.sample(3000, np.random.default_rng(0)), lo)
    assert seen == set(valid)
    # still usable: a new episode goes in, survives a close/reopen
    k0 = len(ref.steps)
    for k in range(5):
        ref.add(rb, 10_000 + k, k=k, last=k == 4)
    rb.close()
    rb = ReplayBuffer.open(path)
    assert rb.total_steps_added == k0 + 5
    lo = lo_of(rb)
    assert len(rb) == len(ref.valid_set(lo))
    check_batch(ref, rb.sample(500, np.random.default_rng(1)), lo)
    rb.close()


# ----------------------------------------------------------------------------- mixing


def _fill(rb, ref, episodes, start_tag, inter=False, demo=False):
    tag = start_tag
    for _ in range(episodes):
        for k in range(6):
            ref.add(rb, tag, k=k, last=k == 5, inter=inter, demo=demo)
            tag += 1
    return tag


def test_mixing_ratio_exact(tmp_path):
    on, off = make_rb(tmp_path / "on"), make_rb(tmp_path / "off")
    ref_on, ref_off = Ref(3, 3, 0.9), Ref(3, 3, 0.9)
    mixed = MixedReplay(on, off, offline_fraction=0.5)
    _fill(on, ref_on, 3, 0)
    rng = np.random.default_rng(0)
    b = mixed.sample(256, rng)  # offline empty: all online
    assert b["rgb"].shape[0] == 256 and not b["is_offline"].any()
    _fill(off, ref_off, 2, 1000, demo=True)
    for bs, frac in [(256, 0.5), (10, 0.25), (7, 0.5), (33, 0.3), (5, 1.0), (5, 0.0)]:
        mixed.offline_fraction = frac
        b = mixed.sample(bs, rng)
        n_off = int(np.floor(bs * frac + 0.5))
        assert int(b["is_offline"].sum()) == n_off and b["rgb"].shape[0] == bs
        assert b["is_demo"].sum() == n_off  # the offline rows really come from offline
        on_rows = {k: v[~b["is_offline"]] for k, v in b.items()}
        off_rows = {k: v[b["is_offline"]] for k, v in b.items()}
        if bs - n_off:
            check_batch(ref_on, on_rows, 0)
        if n_off:
            check_batch(ref_off, off_rows, 0)
    with pytest.raises(ValueError, match="differ"):
        MixedReplay(on, make_rb(tmp_path / "x", n=2))


def test_add_step_routed_offline_matches_online(tmp_path):
    T, n = 3, 3
    on, off = make_rb(tmp_path / "on", T=T, n=n), make_rb(tmp_path / "off", T=T, n=n)
    mixed = MixedReplay(on, off)
    ref = Ref(T, n, 0.9)
    rng = np.random.default_rng(5)
    tag = 0
    # intervention patterns per episode (indices k of the steps flagged), incl. one at k=1,
    # one at the very end, two segments with a long gap, a short gap, and a demo episode
    plans = [(12, {1, 2}), (15, {7, 8, 9}), (30, {3, 4, 20, 21}), (14, {5, 8}),
             (10, {9}), (8, set()), (6, "demo")]
    for e, (length, flagged) in enumerate(plans):
        for k in range(length):
            st = ref.add(None, tag, k=k, last=k == length - 1, term=e % 2 == 0 and
                         k == length - 1, inter=flagged != "demo" and k in flagged,
                         demo=flagged == "demo", rng=rng)
            mixed.add_step_routed(**st)
            tag += 1
    valid_on = ref.valid_set(0)
    assert len(on) == len(valid_on)
    flagged_t = [t for t in valid_on
                 if ref.steps[t + 1]["is_intervention"] or ref.steps[t + 1]["is_demo"]]
    assert len(off) == len(flagged_t) == 2 + 3 + 4 + 2 + 1 + 5
    assert off.num_intervention_transitions == 12 and off.num_demo_transitions == 5
    assert on.num_intervention_transitions == 12
    assert off.num_steps < on.num_steps  # only segments with their context
    b = off.sample(3000, np.random.default_rng(0))
    seen = check_batch(ref, b, 0)  # identical to the online transition of the same step
    assert seen == set(flagged_t)
    mb = mixed.sample(64, np.random.default_rng(1))
    assert mb["is_offline"].sum() == 32
    assert (mb["is_intervention"] | mb["is_demo"])[mb["is_offline"]].all()
    mixed.flush()
    mixed.close()


# ----------------------------------------------------------------------------- bulk adds

def random_steps(rng, n_episodes):
    """Steps of random episodes (lengths 1..12, some left open at the end) as dicts."""
    out = []
    for e in range(n_episodes):
        length = int(rng.integers(1, 13))
        for k in range(length):
            last = k == length - 1 and e < n_episodes - 1
            out.append(dict(
                images=rng.integers(0, 256, SHAPE, dtype=np.uint8),
                low_dim=rng.standard_normal(D).astype(np.float32),
                action=rng.uniform(-1, 1, A).astype(np.float32), reward=float(rng.random()),
                is_first=k == 0, is_last=last, terminated=last and bool(rng.random() < .5),
                is_intervention=bool(rng.random() < .3), is_demo=bool(rng.random() < .3),
                sampleable=bool(rng.random() < .9)))
    return out


def ring_snapshot(rb):
    return ({k: np.array(v) for k, v in rb._a.items()},
            (rb.total_steps_added, rb.num_steps, rb.num_episodes, rb.episodes_added, len(rb),
             rb.num_intervention_transitions, rb.num_demo_transitions, rb.episode_open))


@pytest.mark.parametrize("capacity", [1000, 37])  # 37: the ring wraps and evicts mid-batch
def test_add_steps_equals_add_step_one_by_one(tmp_path, capacity):
    rng = np.random.default_rng(11)
    steps = random_steps(rng, 30)
    one, bulk = make_rb(tmp_path / "one", capacity), make_rb(tmp_path / "bulk", capacity)
    for st in steps:
        one.add_step(**st)
    k = 0
    while k < len(steps):  # runs of random length, across episode and ring boundaries
        run = steps[k:k + int(rng.integers(1, 25))]
        cols = {f: np.array([st[f] for st in run]) for f in run[0]}
        bulk.add_steps(cols.pop("images"), cols.pop("low_dim"), cols.pop("action"),
                       cols.pop("reward"), **cols)
        k += len(run)
    a, b = ring_snapshot(one), ring_snapshot(bulk)
    assert a[1] == b[1]
    assert all(np.array_equal(a[0][f], b[0][f]) for f in a[0]), [
        f for f in a[0] if not np.array_equal(a[0][f], b[0][f])]
    one.close(), bulk.close()
    reopened = ReplayBuffer.open(tmp_path / "bulk")
    assert reopened.total_steps_added == len(steps)
    reopened.close()


def test_a_refused_batch_leaves_the_buffer_as_it_was(tmp_path):
    rng = np.random.default_rng(12)
    rb = make_rb(tmp_path / "b", capacity=50)
    steps = random_steps(rng, 6)
    for st in steps[:10]:
        rb.add_step(**st)
    before = ring_snapshot(rb)
    run = steps[10:30]
    cols = {f: np.array([st[f] for st in run]) for f in run[0]}
    bad_low = cols["low_dim"].copy()
    bad_low[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"low_dim: contains NaN or Inf .*step 7 of 20"):
        rb.add_steps(cols["images"], bad_low, cols["action"], cols["reward"],
                     is_first=cols["is_first"], is_last=cols["is_last"],
                     terminated=cols["terminated"])
    first = cols["is_first"].copy()
    first[np.flatnonzero(~first)[-1]] = True  # an episode "starts" inside an open one
    with pytest.raises(ValueError, match="still open"):
        rb.add_steps(cols["images"], cols["low_dim"], cols["action"], cols["reward"],
                     is_first=first, is_last=cols["is_last"], terminated=cols["terminated"])
    after = ring_snapshot(rb)
    assert before[1] == after[1] and all(np.array_equal(before[0][f], after[0][f])
                                         for f in before[0])


def test_write_back_is_not_durable_before_flush_and_its_error_surfaces(tmp_path, monkeypatch):
    import json

    rng = np.random.default_rng(13)
    rb = make_rb(tmp_path / "b")
    steps = random_steps(rng, 4)
    for st in steps[:5]:
        rb.add_step(**st)
    rb.flush()
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    for st in steps[5:]:
        rb.add_step(**st)
    rb.write_back()
    rb._write_back.settle()
    assert json.loads((tmp_path / "b" / "state.json").read_text()) == state  # not durable yet
    real = os.fdatasync

    def failing(fd):
        if fd == rb._fds["images"]:
            raise OSError(5, "Input/output error")
        return real(fd)

    monkeypatch.setattr(os, "fdatasync", failing)
    rb.write_back()  # fails in the background ...
    with pytest.raises(OSError, match="Input/output error"):
        rb.flush()  # ... and says so at the next flush, which claims nothing
    assert json.loads((tmp_path / "b" / "state.json").read_text()) == state
    monkeypatch.setattr(os, "fdatasync", real)
    rb.flush()
    assert json.loads((tmp_path / "b" / "state.json").read_text())["total"] == len(steps)
    rb.close()


def test_write_back_never_hangs_a_closed_buffer(tmp_path):
    import threading

    rb = make_rb(tmp_path / "b")
    rb.write_back()
    rb.close()
    done = threading.Event()

    def late_calls():
        rb.write_back()  # after close: ignored, not queued for a thread that has stopped
        rb._write_back.settle()
        done.set()

    threading.Thread(target=late_calls, daemon=True).start()
    assert done.wait(10), "settle() waited for a write-back nobody will run"
