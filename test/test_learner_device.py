"""The learner on any device: device choice, the opt-in precisions and compile (their deviation
from fp32), the device replay gather, resuming across devices, and (where CUDA exists) the
GPU update against the CPU one. The CUDA tests are skipped, saying so, on machines without a
GPU; they ran on an NVIDIA H200 (README, learner section)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_learner import make_batch, make_policy, perturb_target

from drqv2_ros.acting.weights import load_actor_bytes
from drqv2_ros.learning import device as device_mod
from drqv2_ros.learning.device import configure_precision, resolve_device
from drqv2_ros.learning.device_replay import DeviceReplay, mirror_bytes
from drqv2_ros.learning.learner import DrQV2Learner, LearnerStateError
from drqv2_ros.learning.replay_buffer import MixedReplay, ReplayBuffer
from drqv2_ros.learning.training_loop import TrainingConfig, TrainingLoop

CUDA = torch.cuda.is_available()
_REAL_RANDN, _REAL_RANDINT = torch.randn, torch.randint
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def params_rel(p1, p2) -> float:
    s1, s2 = p1.state_dict(), p2.state_dict()
    a = torch.cat([s1[k].detach().double().cpu().reshape(-1) for k in sorted(s1)])
    b = torch.cat([s2[k].detach().double().cpu().reshape(-1) for k in sorted(s2)])
    return rel(a, b)


def run_updates(learner, n=3, seed=0, b=16):
    rng = np.random.default_rng(seed)
    return [dict(learner.update(make_batch(learner.config, rng, b=b, demo_every=3)))
            for _ in range(n)]


# ------------------------------------------------------------------------- device choice
def test_resolve_device_names_and_refusals(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("") == resolve_device("auto")
    with pytest.raises(ValueError, match="only auto, cpu, cuda"):
        resolve_device("meta")
    with pytest.raises(ValueError, match="expected auto, cpu, cuda"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available here"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"has 2 CUDA device\(s\)"):
        resolve_device("cuda:5")


def test_precision_choices():
    with pytest.raises(ValueError, match="precision must be one of"):
        configure_precision(torch.device("cpu"), "fp16")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        configure_precision(torch.device("cpu"), "tf32")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        DrQV2Learner(make_policy(), precision="tf32", device="cpu")


def test_fp32_on_cuda_turns_tf32_off_and_tf32_turns_it_on(monkeypatch):
    """The default must not let cuDNN use TF32 (PyTorch's default for convolutions)."""
    calls = []
    monkeypatch.setattr(device_mod, "_set_tf32", calls.append)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_precision(torch.device("cuda"), "fp32")
    configure_precision(torch.device("cuda"), "tf32")
    configure_precision(torch.device("cuda"), "bf16")
    assert calls == [False, True, False]


# ------------------------------------------------------------- opt-in speed: deviation
@pytest.mark.parametrize("device", DEVICES)
def test_bf16_deviation_from_fp32_is_small_but_real(device):
    """bf16 autocast over three updates: weights within 1e-2 relative of the fp32 run (and
    not identical: the mode is really on). Same seeds, same batches."""
    ref = make_policy(seed=3)
    perturb_target(ref)
    low = copy.deepcopy(ref)
    m32 = run_updates(DrQV2Learner(ref, seed=5, device=device))
    m16 = run_updates(DrQV2Learner(low, seed=5, device=device, precision="bf16"))
    d = params_rel(low, ref)
    assert 1e-7 < d < 1e-2, d
    for a, b in zip(m32, m16):
        assert b["critic_loss"] == pytest.approx(a["critic_loss"], rel=5e-2, abs=1e-3)
        assert np.isfinite(b["actor_loss"])


@needs_cuda
def test_tf32_deviation_from_fp32_on_cuda():
    ref = make_policy(seed=3)
    perturb_target(ref)
    fast = copy.deepcopy(ref)
    run_updates(DrQV2Learner(ref, seed=5, device="cuda"))
    run_updates(DrQV2Learner(fast, seed=5, device="cuda", precision="tf32"))
    assert params_rel(fast, ref) < 1e-2


def test_compile_deviation_from_eager():
    """torch.compile (inductor; ~1 min of compilation on 2 CPU cores) over three updates
    stays within 1e-4 relative of eager fp32, and keeps RoboBase's parameter names."""
    ref = make_policy(seed=3)
    comp = copy.deepcopy(ref)
    run_updates(DrQV2Learner(ref, seed=5))
    learner = DrQV2Learner(comp, seed=5, compile=True)
    run_updates(learner)
    assert comp.state_dict().keys() == ref.state_dict().keys()
    assert params_rel(comp, ref) < 1e-4
    load_actor_bytes(make_policy(seed=9), learner.actor_state_bytes())  # names unchanged


# ------------------------------------------------------------------ no wait for the device
def test_update_metrics_are_read_lazily_and_in_one_transfer(monkeypatch):
    learner = DrQV2Learner(make_policy(), seed=0)
    m = learner.update(make_batch(learner.config, np.random.default_rng(0)))
    calls = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: calls.append(1) or real(t))
    assert isinstance(m["critic_loss"], float) and np.isfinite(m["actor_q"])
    assert set(m) >= {"critic_loss", "actor_loss", "critic_q1", "std"}
    dict(m)
    assert len(calls) == 1  # every tensor metric in one copy, once


def test_bc_count_taken_from_host_flags_without_reading_the_device():
    learner = DrQV2Learner(make_policy(), seed=0, bc_weight=2.0)
    batch = make_batch(learner.config, np.random.default_rng(0), demo_every=2)
    b = learner._to_tensors(batch)
    assert b["bc_count"] == int(batch["is_demo"].sum()) > 0
    m = learner.update(batch)
    assert m["actor_bc_loss"] > 0


# ------------------------------------------------------------------------- device replay
def fill(replay: MixedReplay, rng, episodes=14):
    shape = replay.online.image_shape
    for _ in range(episodes):
        n = int(rng.integers(3, 12))
        for k in range(n):
            replay.add_step_routed(
                rng.integers(0, 256, shape, dtype=np.uint8),
                rng.normal(size=replay.online.low_dim_size),
                None if k == 0 else rng.uniform(-1, 1, replay.online.action_size),
                float(rng.normal()), is_first=k == 0, is_last=k == n - 1,
                terminated=bool(k == n - 1 and rng.random() < 0.5),
                is_intervention=bool(rng.random() < 0.3))


@pytest.mark.parametrize("device", DEVICES)
def test_device_replay_equals_host_sampling(tmp_path, device):
    """Same rng -> the same batch, element for element, through ring wrap-around, eviction
    and steps added between batches (they are uploaded before the next gather)."""
    spec = dict(image_shape=(2, 3, 8, 8), low_dim_size=3, action_size=2, frame_stack=3,
                nstep=3, discount=0.9)
    replay = MixedReplay(ReplayBuffer(tmp_path / "on", capacity=60, **spec),
                         ReplayBuffer(tmp_path / "off", capacity=45, **spec))
    dr = DeviceReplay(replay, device)
    assert mirror_bytes(replay) == (60 + 45) * (2 * 3 * 8 * 8 + 3 * 4)
    rng = np.random.default_rng(0)
    checked = 0
    for round_ in range(8):
        fill(replay, rng, episodes=4)
        want = replay.sample(24, np.random.default_rng(round_))
        got = dr.sample(24, np.random.default_rng(round_))
        assert got.keys() == want.keys()
        for k in want:
            g = got[k]
            if isinstance(g, torch.Tensor):
                assert g.device.type == torch.device(device).type, k
                g = g.cpu().numpy()
            assert g.dtype == want[k].dtype and g.shape == want[k].shape, k
            np.testing.assert_array_equal(g, want[k], err_msg=k)
        checked += 1
    assert replay.online.total_steps_added > 60  # the ring wrapped
    assert checked == 8
    replay.close()


def test_device_replay_prefetch_keeps_the_draw_order(tmp_path):
    """take/prefetch (the learner's overlap) gives the batches sample would, in order."""
    spec = dict(image_shape=(1, 3, 6, 6), low_dim_size=2, action_size=2, frame_stack=2,
                nstep=2, discount=0.9)
    replay = MixedReplay(ReplayBuffer(tmp_path / "on", capacity=80, **spec),
                         ReplayBuffer(tmp_path / "off", capacity=80, **spec))
    fill(replay, np.random.default_rng(3), episodes=8)
    dr = DeviceReplay(replay, "cpu")
    r1, r2 = np.random.default_rng(4), np.random.default_rng(4)
    want = [replay.sample(8, r1) for _ in range(3)]
    got = [dr.take(8, r2)]
    dr.prefetch(8, r2)
    got.append(dr.take(8, r2))
    dr.prefetch(8, r2)
    got.append(dr.take(8, r2))
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g["rgb"].numpy(), w["rgb"])
        np.testing.assert_array_equal(g["reward"].numpy(), w["reward"])
    assert dr.take(4, r2)["rgb"].shape[0] == 4  # nothing prefetched: a fresh sample
    replay.close()


def test_device_replay_reopened_buffer_is_uploaded_whole(tmp_path):
    spec = dict(image_shape=(1, 3, 6, 6), low_dim_size=2, action_size=2, frame_stack=2,
                nstep=2, discount=0.9)
    mk = lambda: MixedReplay(ReplayBuffer(tmp_path / "on", capacity=40, **spec),  # noqa: E731
                             ReplayBuffer(tmp_path / "off", capacity=40, **spec))
    replay = mk()
    fill(replay, np.random.default_rng(1), episodes=6)
    replay.close()
    replay = mk()
    dr = DeviceReplay(replay, "cpu")
    want = replay.sample(16, np.random.default_rng(2))
    got = dr.sample(16, np.random.default_rng(2))
    np.testing.assert_array_equal(got["rgb"].numpy(), want["rgb"])
    np.testing.assert_array_equal(got["next_low_dim"].numpy(), want["next_low_dim"])
    replay.close()


# ------------------------------------------------------------------- resume across devices
def _foreign_rng_state(path, device_type: str, nbytes: int) -> None:
    """Rewrite a saved state as if its torch generator had lived on ``device_type``."""
    import hashlib
    import io

    from drqv2_ros.learning import learner_state as lmod

    state = DrQV2Learner.read_state(path)
    state["rng"]["torch"] = torch.zeros(nbytes, dtype=torch.uint8)
    state["rng"]["torch_device"] = device_type
    for opt in state["optim"].values():  # a CUDA-graph learner's optimisers
        for group in opt["param_groups"]:
            group["capturable"] = device_type == "cuda"
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    path.write_bytes(lmod._MAGIC + hashlib.sha256(payload).digest() + payload)


def test_state_saved_on_another_device_resumes_here(tmp_path):
    """A state whose torch RNG lived on a GPU resumes on this CPU: weights, optimiser
    moments and counters exact, the numpy stream exact, the torch stream reseeded (said)."""
    policy = make_policy(seed=1)
    learner = DrQV2Learner(policy, seed=4)
    run_updates(learner, n=2)
    path = learner.save_state(tmp_path / "state.pt")
    _foreign_rng_state(path, "cuda", 16)
    other = DrQV2Learner.resume(make_policy(seed=2), path)
    assert "saved on cuda, resumed on cpu" in other.rng_note
    assert other.num_updates == 2 and other.iteration == learner.iteration
    for k, v in policy.state_dict().items():
        assert torch.equal(other.policy.state_dict()[k], v), k
    assert other.rng.bit_generator.state == learner.rng.bit_generator.state
    run_updates(other, n=1)  # trains on
    # a same-device state that is garbage is still refused, with the file named
    _foreign_rng_state(path, "cpu", 16)
    with pytest.raises(LearnerStateError, match="bad torch RNG state"):
        DrQV2Learner.resume(make_policy(seed=2), path)


@needs_cuda
def test_state_round_trip_cuda_cpu_cuda(tmp_path):
    policy = make_policy(seed=1)
    gpu = DrQV2Learner(policy, seed=4, device="cuda")
    run_updates(gpu, n=2)
    p1 = gpu.save_state(tmp_path / "gpu.pt")
    cpu = DrQV2Learner.resume(make_policy(seed=2), p1, device="cpu")
    assert "saved on cuda, resumed on cpu" in cpu.rng_note
    for k, v in gpu.policy.state_dict().items():
        assert torch.equal(cpu.policy.state_dict()[k], v.cpu()), k
    run_updates(cpu, n=1)
    p2 = cpu.save_state(tmp_path / "cpu.pt")
    back = DrQV2Learner.resume(make_policy(seed=3), p2, device="cuda")
    assert back.num_updates == 3 and "saved on cpu, resumed on cuda" in back.rng_note
    run_updates(back, n=1)
    p3 = back.save_state(tmp_path / "gpu2.pt")
    again = DrQV2Learner.resume(make_policy(seed=3), p3, device="cuda")
    assert again.rng_note == "" and torch.equal(again.generator.get_state(),
                                                back.generator.get_state())


# ---------------------------------------------------------------------- GPU against CPU
def _shared_randomness(monkeypatch, seed: int):
    """Route the update's random draws (shifts, noise) through one CPU generator, so that a
    CPU and a CUDA learner see the same numbers; the math is what is compared."""
    real_randn, real_randint = _REAL_RANDN, _REAL_RANDINT
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, dtype=None, device=None, generator=None, **kw):
        return real_randn(*shape, dtype=dtype, generator=g).to(device)

    def randint(low, high, size, device=None, generator=None, **kw):
        return real_randint(low, high, size, generator=g).to(device)

    monkeypatch.setattr(torch, "randn", randn)
    monkeypatch.setattr(torch, "randint", randint)


@needs_cuda
@pytest.mark.parametrize("graphs", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("bc_weight", [0.0, 2.5])
def test_cuda_update_matches_cpu_within_1e4(monkeypatch, bc_weight, graphs):
    from drqv2_ros.policy import DrQV2Config
    from drqv2_ros.policy.modeling_drqv2 import DrQV2Policy

    torch.manual_seed(0)
    cpu_policy = DrQV2Policy(DrQV2Config())  # pick-101 architecture
    perturb_target(cpu_policy)
    gpu_policy = copy.deepcopy(cpu_policy)
    batch = make_batch(cpu_policy.config, np.random.default_rng(0), b=64, demo_every=3)
    cpu = DrQV2Learner(cpu_policy, seed=0, bc_weight=bc_weight)
    gpu = DrQV2Learner(gpu_policy, seed=0, bc_weight=bc_weight, device="cuda",
                       cuda_graphs=graphs)
    _shared_randomness(monkeypatch, 11)
    mc = dict(cpu.update(batch))
    _shared_randomness(monkeypatch, 11)
    mg = dict(gpu.update({k: torch.from_numpy(v).cuda() for k, v in batch.items()}))
    for k in ("critic_loss", "actor_loss", "critic_target_q", "actor_q"):
        assert mg[k] == pytest.approx(mc[k], rel=1e-4, abs=1e-6), k
    sc, sg = cpu_policy.state_dict(), gpu_policy.state_dict()
    for k in sc:
        assert rel(sg[k], sc[k]) < 1e-4 or float((sg[k].cpu() - sc[k]).abs().max()) < 1e-6, k


@needs_cuda
def test_training_loop_trains_on_cuda_by_default(tmp_path):
    """device auto -> CUDA, frames gathered on the GPU, weights pushed as CPU tensors."""
    from drqv2_ros.observation.step_record import StepRecord

    policy = make_policy(seed=0)
    cfg = TrainingConfig(output_dir=str(tmp_path), batch_size=8, warmup_transitions=10,
                         tensorboard=False, online_capacity=200, offline_capacity=200)
    loop = TrainingLoop(cfg, policy)
    assert loop.learner.device.type == "cuda" and loop.device_replay is not None
    assert "cuda" in loop.describe()
    c = loop.learner.config
    rng = np.random.default_rng(0)
    shape = (c.num_views, c.channels_per_frame, c.image_height, c.image_width)
    for k in range(30):
        loop.submit(StepRecord(
            episode=0, index=k, stamp_ns=k * 100_000_000,
            images=rng.integers(0, 256, shape, dtype=np.uint8),
            low_dim=rng.normal(size=c.low_dim_per_frame).astype(np.float32),
            action=rng.uniform(-1, 1, c.action_dim).astype(np.float32),
            reward=float(k == 29), is_first=k == 0, is_last=k == 29, terminated=k == 29,
            is_intervention=k % 3 == 0))
    loop.drain()
    for _ in range(3):
        loop.update_once()
    packet = loop.weights_packet()
    load_actor_bytes(make_policy(seed=7), packet.verified_data())
    loop.save()
    loop.close()
    cpu_cfg = TrainingConfig(**{**cfg.__dict__, "device": "cpu"})
    resumed = TrainingLoop(cpu_cfg, make_policy(seed=1))  # GPU state resumes on the CPU
    assert resumed.resumed and resumed.learner.device.type == "cpu"
    resumed.close()


def test_training_loop_on_cpu_keeps_the_host_path(tmp_path):
    cfg = TrainingConfig(output_dir=str(tmp_path), tensorboard=False, device="cpu",
                         online_capacity=100, offline_capacity=100)
    loop = TrainingLoop(cfg, make_policy())
    assert loop.device_replay is None and loop.describe().startswith("cpu")
    loop.close()
    with pytest.raises(ValueError, match="replay_on_device"):
        TrainingLoop(TrainingConfig(**{**cfg.__dict__, "replay_on_device": "maybe"}),
                     make_policy())


# --------------------------------------------------------------------------- CUDA graphs
def _all_state(learner) -> list[torch.Tensor]:
    out = [t.detach().clone() for t in learner.policy.state_dict().values()]
    for opt in (learner.critic_opt, learner.encoder_opt, learner.actor_opt):
        for st in opt.state.values():
            out += [v.detach().clone() for v in st.values() if isinstance(v, torch.Tensor)]
    return out


def test_cuda_graphs_are_off_on_the_cpu():
    learner = DrQV2Learner(make_policy(), cuda_graphs=True)
    assert learner._graphs is None
    assert not learner.critic_opt.param_groups[0]["capturable"]


@needs_cuda
def test_cuda_graph_update_equals_eager_cuda_update():
    """Same weights, batches and draws: the replayed graph tracks the eager CUDA update over
    five updates (capture's warm-up steps leave no trace), then runs on after a resume."""
    base = make_policy(seed=2)
    perturb_target(base)
    eager_p, graph_p = copy.deepcopy(base), copy.deepcopy(base)
    eager = DrQV2Learner(eager_p, seed=3, device="cuda", cuda_graphs=False, bc_weight=1.0)
    graph = DrQV2Learner(graph_p, seed=3, device="cuda", cuda_graphs=True, bc_weight=1.0)
    me = run_updates(eager, n=5)
    mg = run_updates(graph, n=5)
    assert graph._graphs.graph is not None and graph._graphs.captures == 1
    assert not graph._graphs.failed
    for a, b in zip(me, mg):
        assert b["critic_loss"] == pytest.approx(a["critic_loss"], rel=1e-4, abs=1e-6)
        assert b["actor_loss"] == pytest.approx(a["actor_loss"], rel=1e-4, abs=1e-6)
    assert params_rel(graph_p, eager_p) < 1e-4


@needs_cuda
def test_cuda_graph_guard_restores_exactly_and_goes_on(tmp_path):
    learner = DrQV2Learner(make_policy(seed=1), seed=0, device="cuda")
    run_updates(learner, n=2)
    before = _all_state(learner)
    bad = make_batch(learner.config, np.random.default_rng(9), b=16)
    bad["reward"][3] = np.nan
    with pytest.raises(FloatingPointError, match="critic loss is nan.*weights left unchanged"):
        learner.update(bad)
    after = _all_state(learner)
    assert len(after) == len(before)
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    run_updates(learner, n=2, seed=5)  # trains on
    path = learner.save_state(tmp_path / "s.pt")
    learner.load_state(path)  # optimiser tensors replaced: recaptured on the next update
    run_updates(learner, n=1, seed=6)
    assert learner._graphs.captures == 2
