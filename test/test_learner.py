"""DrQ-v2 learner: the update against an independent RoboBase-style reference, the TD target,
augmentation count, parameter groups, resumable state, export and actor weight transfer."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drqv2_ros.acting.weights import actor_state_bytes, load_actor_bytes
from drqv2_ros.learning.learner import DrQV2Learner, LearnerStateError, exploration_std
from drqv2_ros.learning.pixel_task import make_config
from drqv2_ros.policy.modeling_drqv2 import CheckpointError, DrQV2Policy
from drqv2_ros.policy.schedule import schedule
from drqv2_ros.policy.training_counters import TrainingCounters


def small_config(**kw):
    base = dict(size=16, frame_stack=2, encoder_channels=4, mlp=(16, 16), lr=1e-3)
    base.update(kw)
    return make_config(**base)


def make_policy(seed=0, main_loop_iterations=0, **kw):
    torch.manual_seed(seed)
    policy = DrQV2Policy(small_config(**kw))
    policy.training_counters = TrainingCounters(main_loop_iterations=main_loop_iterations)
    return policy


def make_batch(cfg, rng, b=8, *, demo_every=0):
    v, c, h, w = cfg.num_views, cfg.in_channels, cfg.image_height, cfg.image_width
    out = {
        "rgb": rng.integers(0, 256, (b, v, c, h, w), dtype=np.uint8),
        "next_rgb": rng.integers(0, 256, (b, v, c, h, w), dtype=np.uint8),
        "low_dim": rng.normal(size=(b, cfg.low_dim_size)).astype(np.float32),
        "next_low_dim": rng.normal(size=(b, cfg.low_dim_size)).astype(np.float32),
        "action": rng.uniform(-1, 1, (b, cfg.action_dim)).astype(np.float32),
        "reward": rng.normal(size=b).astype(np.float32),
        "discount": np.where(rng.random(b) < 0.2, 0.0, 0.99**3).astype(np.float32),
        "is_intervention": np.zeros(b, bool),
        "is_demo": np.zeros(b, bool),
    }
    if demo_every:
        out["is_demo"][::demo_every] = True
    return out


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def perturb_target(policy, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.critic_target.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------- independent reference
def reference_update(policy, opts, batch, gen, *, step, bc_weight=0.0):
    """RoboBase DrQV2.update written out plainly (critic not frozen in the actor loss,
    soft update as ``tau * p + (1 - tau) * t``, loss_coeff = 1)."""
    cfg = policy.config
    std = schedule(cfg.stddev_schedule, step)
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    b, v, c, h, w = t["rgb"].shape
    aug = policy.aug
    rgb = aug(t["rgb"].float().view(b * v, c, h, w), generator=gen).view(b, v, c, h, w)
    nrgb = aug(t["next_rgb"].float().view(b * v, c, h, w), generator=gen).view(b, v, c, h, w)
    fused = policy.encode(rgb)
    with torch.no_grad():
        nfused = policy.encode(nrgb)
    reward, discount = t["reward"].unsqueeze(1), t["discount"].unsqueeze(1)
    with torch.no_grad():
        dist = policy.actor_dist(t["next_low_dim"], nfused, std)
        na = dist.sample(clip=cfg.stddev_clip, generator=gen)
        tq = policy.critic_target(t["next_low_dim"], nfused, na)
        target = reward + discount * tq.min(-1, keepdim=True)[0]
    qs = policy.critic(t["low_dim"], fused, t["action"])
    n = qs.shape[1]
    q_loss = F.mse_loss(qs, target.repeat(1, n), reduction="none").mean(-1, keepdim=True)
    critic_loss = torch.mean(q_loss * torch.ones(b).unsqueeze(1))
    enc_opt, crit_opt, act_opt = opts
    enc_opt.zero_grad(set_to_none=True)
    crit_opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    crit_opt.step()
    enc_opt.step()
    feats = fused.detach()
    dist = policy.actor_dist(t["low_dim"], feats, std)
    a = dist.sample(clip=cfg.stddev_clip, generator=gen)
    q = policy.critic(t["low_dim"], feats, a)
    actor_loss = (-q.min(-1, keepdim=True)[0] * torch.ones(b).unsqueeze(1)).mean()
    demos = (t["is_demo"] | t["is_intervention"]).float().unsqueeze(1)
    if bc_weight > 0 and demos.sum() > 0:
        bc = F.mse_loss(dist.mean.view(b, -1), t["action"].view(b, -1), reduction="none")
        actor_loss = actor_loss + bc_weight * (bc * demos).sum() / demos.sum()
    act_opt.zero_grad(set_to_none=True)
    actor_loss.backward()
    act_opt.step()
    tau = cfg.critic_target_tau
    with torch.no_grad():
        for p, tp in zip(policy.critic.parameters(), policy.critic_target.parameters()):
            tp.data.copy_(tau * p.data + (1 - tau) * tp.data)
    return critic_loss.item(), actor_loss.item()


def make_opts(policy):
    cfg = policy.config
    return (
        torch.optim.AdamW(policy.encoder.parameters(), lr=cfg.encoder_lr,
                          weight_decay=cfg.weight_decay),
        torch.optim.AdamW(policy.critic.parameters(), lr=cfg.critic_lr,
                          weight_decay=cfg.weight_decay),
        torch.optim.AdamW(policy.actor.parameters(), lr=cfg.actor_lr,
                          weight_decay=cfg.weight_decay),
    )


@pytest.mark.parametrize("bc_weight", [0.0, 2.5])
def test_update_matches_robobase_reference(bc_weight):
    policy = make_policy(stddev_schedule="linear(1.0,0.1,1000)", main_loop_iterations=300)
    perturb_target(policy)
    ref = copy.deepcopy(policy)
    learner = DrQV2Learner(policy, seed=7, bc_weight=bc_weight)
    gen = torch.Generator().manual_seed(7)
    opts = make_opts(ref)
    rng = np.random.default_rng(0)
    for i in range(3):
        batch = make_batch(policy.config, rng, demo_every=3)
        m = learner.update(batch)
        closs, aloss = reference_update(ref, opts, batch, gen, step=300 + 2 * i,
                                        bc_weight=bc_weight)
        assert m["critic_loss"] == pytest.approx(closs, rel=1e-5, abs=1e-6)
        assert m["actor_loss"] == pytest.approx(aloss, rel=1e-5, abs=1e-6)
        assert m["std"] == schedule("linear(1.0,0.1,1000)", 300 + 2 * i)
        if bc_weight:
            assert "actor_bc_loss" in m
    got, want = policy.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_one_update_changes_all_groups_and_target_moves_by_tau():
    policy = make_policy()
    perturb_target(policy)
    before = params(policy)
    learner = DrQV2Learner(policy, seed=0)
    learner.update(make_batch(policy.config, np.random.default_rng(1)))
    after = params(policy)
    for prefix in ("encoder.", "actor.", "critic.qs."):
        keys = [k for k in before if k.startswith(prefix)]
        assert keys
        assert any(not torch.equal(before[k], after[k]) for k in keys), prefix
    tau = policy.config.critic_target_tau
    for k in before:
        if k.startswith("critic_target."):
            src = "critic." + k[len("critic_target."):]
            expect = (1 - tau) * before[k] + tau * after[src]
            torch.testing.assert_close(after[k], expect, rtol=0, atol=1e-6)
            assert not torch.equal(after[k], before[k]) or torch.equal(after[src], before[k])


def test_optimiser_param_groups_follow_robobase():
    policy = make_policy(weight_decay=0.0)
    cfg = dataclasses.replace(policy.config, actor_lr=1e-3, critic_lr=2e-3, encoder_lr=3e-3)
    learner = DrQV2Learner(policy, cfg)

    def ids(ps):
        return {id(p) for p in ps}

    assert ids(learner.encoder_opt.param_groups[0]["params"]) == ids(policy.encoder.parameters())
    assert ids(learner.critic_opt.param_groups[0]["params"]) == ids(policy.critic.parameters())
    assert ids(learner.actor_opt.param_groups[0]["params"]) == ids(policy.actor.parameters())
    assert [o.param_groups[0]["lr"] for o in
            (learner.actor_opt, learner.critic_opt, learner.encoder_opt)] == [1e-3, 2e-3, 3e-3]
    assert all(isinstance(o, torch.optim.AdamW) and o.param_groups[0]["weight_decay"] == 0.0
               for o in (learner.actor_opt, learner.critic_opt, learner.encoder_opt))
    # critic_target is never optimised
    all_opt = set().union(*(ids(o.param_groups[0]["params"]) for o in
                            (learner.actor_opt, learner.critic_opt, learner.encoder_opt)))
    assert not all_opt & ids(policy.critic_target.parameters())


def test_encoder_learns_only_through_critic_loss():
    # Critic and actor frozen by lr 0: only the encoder moves, so its gradient came from the
    # critic loss; the actor backward (features detached) adds nothing to the encoder grads.
    policy = make_policy()
    cfg = dataclasses.replace(policy.config, actor_lr=0.0, critic_lr=0.0)
    learner = DrQV2Learner(policy, cfg)
    before = params(policy)
    grads = {}

    def spy(name, opt):
        orig = opt.step

        def step(*a, **k):
            grads[name] = [p.grad.clone() for p in policy.encoder.parameters()]
            return orig(*a, **k)

        opt.step = step

    spy("after_critic_backward", learner.critic_opt)
    spy("after_actor_backward", learner.actor_opt)
    learner.update(make_batch(policy.config, np.random.default_rng(2)))
    after = params(policy)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert "encoder" in changed and "actor" not in changed
    assert not any(k.startswith("critic.") for k in before if not torch.equal(before[k], after[k]))
    for g1, g2 in zip(grads["after_critic_backward"], grads["after_actor_backward"]):
        assert g1.abs().sum() > 0
        assert torch.equal(g1, g2)


class StubActor(nn.Module):
    def __init__(self, mu):
        super().__init__()
        self.mu = torch.tensor(mu)
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, low, fused):
        return self.mu.expand(fused.shape[0], -1) + 0 * self.w


class StubCritic(nn.Module):
    """Q1 = 10 + sum(a) + low[0], Q2 = 12 - 2 sum(a); records the actions it sees."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, low, fused, action, time_obs=None):
        self.seen.append(action.detach().clone())
        s = action.sum(-1, keepdim=True)
        return torch.cat([10 + s + low[:, :1], 12 - 2 * s], -1) + 0 * self.w


def test_td_target_hand_computed():
    policy = make_policy(stddev_schedule="0.0")
    learner = DrQV2Learner(policy)
    policy.actor = StubActor([0.5, -0.2])
    policy.critic_target = StubCritic()
    reward = torch.tensor([[1.0], [0.5], [-2.0]])
    discount = torch.tensor([[0.99**3], [0.0], [0.97]])
    low = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-5.0, 0.0]])
    fused = torch.zeros(3, policy.config.fused_dim)
    y = learner.target_q(reward, discount, low, fused, std=learner.std())
    # a' = mu (std 0): sum = 0.3 -> Q1 = 10.3 + low0, Q2 = 11.4
    q1 = np.array([10.3, 11.3, 5.3])
    q2 = np.array([11.4, 11.4, 11.4])
    want = np.array([1.0, 0.5, -2.0]) + np.array([0.99**3, 0.0, 0.97]) * np.minimum(q1, q2)
    np.testing.assert_allclose(y.squeeze(1).numpy(), want, rtol=1e-6)
    assert not y.requires_grad


def test_target_action_noise_is_clipped():
    policy = make_policy(stddev_schedule="5.0", stddev_clip=0.3)
    learner = DrQV2Learner(policy, seed=3)
    policy.actor = StubActor([0.1, -0.4])
    stub = StubCritic()
    policy.critic_target = stub
    n = 512
    learner.target_q(torch.zeros(n, 1), torch.ones(n, 1), torch.zeros(n, 2),
                     torch.zeros(n, policy.config.fused_dim), std=learner.std())
    a = stub.seen[0]
    dev = a - torch.tensor([0.1, -0.4])
    assert dev.abs().max() <= 0.3 + 1e-6
    assert dev.abs().max() > 0.29  # std 5 saturates the clip
    assert a.abs().max() < 1.0


def test_update_regresses_critic_on_that_target():
    policy = make_policy(stddev_schedule="0.0")
    learner = DrQV2Learner(policy)
    policy.actor = StubActor([0.5, -0.2])
    policy.critic_target = StubCritic()
    policy.soft_update_target = lambda tau=None: None  # the stub has no matching params
    batch = make_batch(policy.config, np.random.default_rng(4))
    m = learner.update(batch)
    q = np.minimum(10.3 + batch["next_low_dim"][:, 0], 11.4)
    want = batch["reward"] + batch["discount"] * q
    assert m["critic_target_q"] == pytest.approx(float(want.mean()), rel=1e-5)


def test_augmentation_applied_exactly_once_per_image():
    policy = make_policy()
    learner = DrQV2Learner(policy)
    calls, outs = [], []
    real = learner.aug

    class Counting(nn.Module):
        def forward(self, x, shifts=None, generator=None):
            calls.append(x.detach().clone())
            y = real(x, shifts=shifts, generator=generator)
            outs.append(y)
            return y

    learner.aug = Counting()
    encoded = []
    orig_encode = policy.encode

    def spy_encode(rgb):
        encoded.append(rgb)
        return orig_encode(rgb)

    policy.encode = spy_encode
    batch = make_batch(policy.config, np.random.default_rng(5), b=6)
    learner.update(batch)
    assert len(calls) == 2  # rgb once, next_rgb once
    b, v, c, h, w = batch["rgb"].shape
    assert [tuple(x.shape) for x in calls] == [(b * v, c, h, w)] * 2
    # inputs are the raw frames (nothing augmented before), outputs go straight to the encoder
    torch.testing.assert_close(calls[0], torch.from_numpy(batch["rgb"]).float().view(-1, c, h, w))
    torch.testing.assert_close(calls[1],
                               torch.from_numpy(batch["next_rgb"]).float().view(-1, c, h, w))
    assert len(encoded) == 2
    for enc, out in zip(encoded, outs):
        assert torch.equal(enc, out.view(b, v, c, h, w))
    # the shift really is a random shift: some image differs from its input
    assert not torch.equal(outs[0], calls[0])


def test_no_augmentation_when_disabled():
    policy = make_policy(use_augmentation=False)
    learner = DrQV2Learner(policy)
    assert learner.aug is None
    seen = []
    orig = policy.encode
    policy.encode = lambda rgb: (seen.append(rgb), orig(rgb))[1]
    batch = make_batch(policy.config, np.random.default_rng(6))
    learner.update(batch)
    assert torch.equal(seen[0], torch.from_numpy(batch["rgb"]).float())


# ----------------------------------------------------------------------- counters / schedule
def test_std_schedule_continues_from_checkpoint_counter(tmp_path):
    policy = make_policy(stddev_schedule="linear(1.0,0.1,500000)", main_loop_iterations=1234)
    learner = DrQV2Learner(policy)
    assert learner.iteration == 1234
    assert learner.exploration_std() == schedule("linear(1.0,0.1,500000)", 1234)
    rng = np.random.default_rng(0)
    m1 = learner.update(make_batch(policy.config, rng))
    m2 = learner.update(make_batch(policy.config, rng))
    assert (m1["iteration"], m2["iteration"]) == (1234, 1236)
    assert m1["std"] == pytest.approx(1.0 - 0.9 * 1234 / 500000)
    assert m2["std"] == pytest.approx(1.0 - 0.9 * 1236 / 500000)
    assert learner.iteration == 1238 and learner.num_updates == 2
    learner.set_iteration(2000)  # sync with an external env-step count
    assert learner.update(make_batch(policy.config, rng))["iteration"] == 2000
    with pytest.raises(ValueError):
        learner.set_iteration(10)
    assert exploration_std(policy.config, 2002) == learner.exploration_std()

    out = learner.export_checkpoint(tmp_path / "ckpt")
    assert json.loads((out / "counters.json").read_text())["main_loop_iterations"] == 2002
    assert "main_loop_iterations" not in json.loads((out / "config.json").read_text())
    reloaded = DrQV2Policy.from_pretrained(out)
    for k, v in policy.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    learner2 = DrQV2Learner(reloaded)
    assert learner2.iteration == 2002
    assert learner2.update(make_batch(policy.config, rng))["std"] == pytest.approx(
        1.0 - 0.9 * 2002 / 500000)


# ------------------------------------------------------------------------ save / load state
def _run(learner, n):
    out = []
    for _ in range(n):
        batch = make_batch(learner.config, learner.rng)  # batches drawn with the learner's rng
        out.append(learner.update(batch))
    return out


def test_save_load_bit_exact_continuation(tmp_path):
    a = DrQV2Learner(make_policy(seed=0), seed=11)
    _run(a, 2)
    path = a.save_state(tmp_path / "state" / "learner.pt")
    cont_a = _run(a, 2)

    b = DrQV2Learner(make_policy(seed=99), seed=0)  # different init and seed
    b.load_state(path)
    assert (b.iteration, b.num_updates) == (a.iteration - 4, a.num_updates - 2)
    cont_b = _run(b, 2)
    assert cont_a == cont_b  # identical metrics, float by float
    sa, sb = a.policy.state_dict(), b.policy.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for oa, ob in ((a.actor_opt, b.actor_opt), (a.critic_opt, b.critic_opt),
                   (a.encoder_opt, b.encoder_opt)):
        for pa, pb in zip(oa.param_groups[0]["params"], ob.param_groups[0]["params"]):
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(oa.state[pa][key], ob.state[pb][key])
    assert (a.iteration, a.num_updates) == (b.iteration, b.num_updates)
    assert a.rng.random() == b.rng.random()
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_resume_refuses_missing_corrupt_or_mismatched_state(tmp_path):
    a = DrQV2Learner(make_policy(seed=0), seed=1)
    _run(a, 1)
    good = a.save_state(tmp_path / "good.pt")
    data = good.read_bytes()

    victim = DrQV2Learner(make_policy(seed=5), seed=2)
    before = params(victim.policy)

    def refuses(path, match):
        with pytest.raises(LearnerStateError, match=match):
            victim.load_state(path)
        after = params(victim.policy)
        assert all(torch.equal(before[k], after[k]) for k in before)  # untouched
        assert victim.iteration == 0 and victim.num_updates == 0

    refuses(tmp_path / "missing.pt", "no such file")
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    refuses(tmp_path / "trunc.pt", "checksum")
    flipped = bytearray(data)
    flipped[len(data) - 100] ^= 0xFF
    (tmp_path / "flip.pt").write_bytes(bytes(flipped))
    refuses(tmp_path / "flip.pt", "checksum")
    (tmp_path / "junk.pt").write_bytes(b"not a state")
    refuses(tmp_path / "junk.pt", "bad magic")
    (tmp_path / "empty.pt").write_bytes(b"")
    refuses(tmp_path / "empty.pt", "bad magic")

    other_arch = DrQV2Learner(make_policy(mlp=(8, 8)))
    with pytest.raises(LearnerStateError, match="critic_mlp_nodes"):
        other_arch.load_state(good)
    other_hp = DrQV2Learner(make_policy(critic_target_tau=0.05))
    with pytest.raises(LearnerStateError, match="critic_target_tau"):
        other_hp.load_state(good)
    other_opt = DrQV2Learner(make_policy(), bc_weight=1.0)
    with pytest.raises(LearnerStateError, match="bc_weight"):
        other_opt.load_state(good)
    # and it is a CheckpointError, so one except clause covers every resume failure
    assert issubclass(LearnerStateError, CheckpointError)


def test_state_with_tampered_tensor_shape_is_refused(tmp_path):
    import hashlib
    import io

    from drqv2_ros.learning import learner_state as lmod

    a = DrQV2Learner(make_policy(), seed=1)
    sd = a.state_dict()
    k = next(iter(sd["model"]))
    sd["model"][k] = torch.zeros(3, 3)
    buf = io.BytesIO()
    torch.save(sd, buf)
    payload = buf.getvalue()
    path = tmp_path / "tampered.pt"
    path.write_bytes(lmod._MAGIC + hashlib.sha256(payload).digest() + payload)
    with pytest.raises(LearnerStateError, match="shape"):
        DrQV2Learner(make_policy()).load_state(path)


def test_update_rejects_bad_batches():
    learner = DrQV2Learner(make_policy())
    batch = make_batch(learner.config, np.random.default_rng(0))
    bad = dict(batch, rgb=batch["rgb"].astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        learner.update(bad)
    with pytest.raises(KeyError, match="next_rgb"):
        learner.update({k: v for k, v in batch.items() if k != "next_rgb"})
    bad = dict(batch, reward=np.full(8, np.nan, np.float32))
    before = params(learner.policy)
    with pytest.raises(FloatingPointError):
        learner.update(bad)
    after = params(learner.policy)
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------- actor weights
def test_actor_bytes_round_trip_and_strictness():
    a = DrQV2Learner(make_policy(seed=0))
    _run(a, 1)
    data = a.actor_state_bytes()
    fresh = make_policy(seed=42)
    critic_before = params(fresh.critic)
    meta = load_actor_bytes(fresh, data)
    assert meta["main_loop_iterations"] == str(a.iteration)
    assert meta["num_updates"] == "1"
    obs = {"rgb": torch.randint(0, 256, (2, 1, 6, 16, 16), dtype=torch.uint8),
           "observation.state": torch.randn(2, 4)}
    assert torch.equal(fresh.select_action(obs), a.policy.select_action(obs))
    assert all(torch.equal(v, params(fresh.critic)[k]) for k, v in critic_before.items())

    with pytest.raises(CheckpointError):
        load_actor_bytes(fresh, b"garbage")
    with pytest.raises(CheckpointError):
        load_actor_bytes(fresh, actor_state_bytes(make_policy(mlp=(8, 8))))


def test_pick101_architecture_update_smoke():
    from drqv2_ros.policy.configuration_drqv2 import DrQV2Config

    torch.manual_seed(0)
    policy = DrQV2Policy(DrQV2Config())
    policy.training_counters = TrainingCounters(main_loop_iterations=1234)
    learner = DrQV2Learner(policy)
    m = learner.update(make_batch(policy.config, np.random.default_rng(0), b=2))
    assert np.isfinite(m["critic_loss"]) and m["iteration"] == 1234


def test_keep_freed_memory_in_a_subprocess():
    import subprocess
    import sys

    code = ("from drqv2_ros.learning.glibc import keep_freed_memory as k; "
            "import sys; sys.exit(0 if k() else 3)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_freeze_encoder_trains_only_bottlenecks_and_heads():
    rng = np.random.default_rng(0)
    policy = make_policy(seed=3)
    enc0 = {k: v.clone() for k, v in policy.encoder.state_dict().items()}
    rest0 = {k: v.clone() for k, v in policy.state_dict().items() if not k.startswith("encoder.")}
    learner = DrQV2Learner(policy, freeze_encoder=True, seed=1)
    for _ in range(3):
        m = learner.update(make_batch(policy.config, rng))
        assert np.isfinite(float(m["critic_loss"]))
    for k, v in policy.encoder.state_dict().items():
        assert torch.equal(v, enc0[k]), f"{k} changed with freeze_encoder"
    changed = [k for k, v in policy.state_dict().items()
               if not k.startswith("encoder.") and not torch.equal(v, rest0[k])]
    assert any(k.startswith("critic.") for k in changed)
    assert any(k.startswith("actor.") for k in changed)
    assert all(p.grad is None for p in policy.encoder.parameters())


def test_freeze_encoder_off_is_the_unchanged_update():
    rng = np.random.default_rng(0)
    batch = make_batch(make_policy().config, rng)
    a, b = make_policy(seed=5), make_policy(seed=5)
    DrQV2Learner(a, seed=2).update(batch)
    DrQV2Learner(b, seed=2, freeze_encoder=False).update(batch)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_freeze_encoder_channels_last_forward_deviation():
    """The frozen path encodes channels-last (faster); its features stay within 1e-5 of the
    default layout's."""
    policy = make_policy(seed=4)
    learner = DrQV2Learner(policy, freeze_encoder=True)
    rgb = torch.rand(6, *make_batch(policy.config, np.random.default_rng(0), b=1)["rgb"].shape[1:]
                     ) * 255
    with torch.no_grad():
        ref = policy.encode(rgb)
        cl = learner.encode(rgb.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3))
    assert torch.allclose(cl, ref, atol=1e-5, rtol=0), float((cl - ref).abs().max())


def test_bc_update_clones_into_actor_and_encoder_only():
    # pretraining's behaviour cloning: the actor's mean regressed on the batch actions,
    # its gradient into the actor and the encoder; critics, targets, the update's own
    # optimisers and the schedule's iteration untouched; the loss falls on a fixed batch
    policy = make_policy(seed=3)
    learner = DrQV2Learner(policy, seed=1)
    batch = make_batch(policy.config, np.random.default_rng(0), b=16)
    before = params(policy)
    it0, moments0 = learner.iteration, copy.deepcopy(learner.actor_opt.state_dict())
    losses = [learner.bc_update(batch, 3e-3)["bc_loss"] for _ in range(40)]
    after = params(policy)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"encoder", "actor"}, changed
    assert losses[-1] < 0.5 * losses[0], losses
    assert learner.iteration == it0 and learner.num_updates == 0
    assert learner.actor_opt.state_dict()["state"] == moments0["state"] == {}
    with pytest.raises(ValueError, match="lr"):
        learner.bc_update(batch, float("nan"))


def test_bc_update_with_a_frozen_encoder_leaves_it():
    policy = make_policy(seed=3)
    learner = DrQV2Learner(policy, seed=1, freeze_encoder=True)
    enc = {k: v.clone() for k, v in policy.encoder.state_dict().items()}
    act = {k: v.clone() for k, v in policy.actor.state_dict().items()}
    learner.bc_update(make_batch(policy.config, np.random.default_rng(0)), 1e-3)
    assert all(torch.equal(v, policy.encoder.state_dict()[k]) for k, v in enc.items())
    assert any(not torch.equal(v, policy.actor.state_dict()[k]) for k, v in act.items())


def test_critic_only_update_holds_the_actor_and_encoder():
    # TD with the actor fixed (critic warm-up / pretraining a critic for a cloned actor)
    policy = make_policy(seed=4)
    learner = DrQV2Learner(policy, seed=2)
    before = params(policy)
    m = learner.update(make_batch(policy.config, np.random.default_rng(1)), critic_only=True)
    after = params(policy)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"critic", "critic_target"}, changed
    assert np.isfinite(m["critic_loss"]) and learner.num_updates == 1
    assert all(p.grad is None for p in policy.actor.parameters())
