"""The DrQ-v2 update replayed as one CUDA graph: the same float32 kernels, without paying
Python and launch overhead for each of them.

ROS-free. On a current GPU the eager update is bound by the host: about 800 small kernels,
each launched from Python (measured on an NVIDIA H200: 11.8 ms per update at batch 256 and
10.0 ms at batch 64, against 7.8 ms for the raw forward and backward passes alone; TF32 and
bf16 were no faster). :class:`GraphedUpdate` captures :meth:`DrQV2Learner.update_math`
once (batch, random draws and the scheduled std are static input buffers that each update
refills) and replays it.

What stays exactly as in the eager update:

- the math: the graph holds the kernels the eager update launches, in float32, with the
  random numbers drawn outside the graph from the learner's generator in RoboBase's order
  (:meth:`DrQV2Learner.draw`); the optimisers run with ``capturable=True`` (their step
  counters on the device), whose bias correction is computed on the device: tested within
  1e-4 relative of the CPU update, as the eager CUDA update is;
- the guard: inside the graph every parameter and optimiser moment is copied before the
  first step, and the two losses' finiteness is recorded; after each replay one small copy
  to the host (the flags with the metrics) tells whether a loss was NaN/Inf. Then the
  snapshot is copied back exactly as the eager update would have left things (bad critic
  loss: nothing changed; bad actor loss: critic and encoder stepped, actor and target not)
  and ``FloatingPointError`` is raised.

Capture needs warm-up iterations that really step the optimisers; the state from before
them is restored bit for bit afterwards (fresh optimiser moments are zeroed, step counters
reset), so the first real update starts from exactly the weights it was given. A capture
that fails for any reason restores the same way and the learner goes on eagerly (logged).
Loading a learner state replaces optimiser tensors, so the learner drops its graph then and
captures again at the next update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

log = logging.getLogger("drqv2_ros.learner")

__all__ = ["GraphedUpdate"]

_WARMUP = 3


class GraphableLearner(Protocol):
    """What a graphed update needs of its learner (``DrQV2Learner`` is one): where it runs,
    the policy and the three optimisers whose tensors the graph updates in place, the update
    math to capture, the host-side loss check of the eager path, and the update count."""

    device: torch.device
    policy: Any
    critic_opt: torch.optim.Optimizer
    encoder_opt: torch.optim.Optimizer
    actor_opt: torch.optim.Optimizer
    num_updates: int

    def update_math(self, b: Mapping[str, Any], rnd: Mapping[str, Any], std: Any,
                    check: Callable[[str, torch.Tensor], None]) -> dict[str, Any]: ...

    def check_host(self, name: str, loss: torch.Tensor) -> None: ...


class GraphedUpdate:
    """Captures and replays one learner's update (one batch shape at a time)."""

    def __init__(self, learner: GraphableLearner) -> None:
        if learner.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.learner = learner
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = ""  # why capture failed (then the learner runs eagerly)
        self.captures = 0
        self._key: tuple | None = None

    # ------------------------------------------------------------------ what is captured
    def _state_tensors(self) -> dict[str, list[torch.Tensor]]:
        """Live tensors an update changes, by the group the guard restores together."""
        lr = self.learner
        p = lr.policy

        def opt_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
            out = []
            for group in opt.param_groups:
                for param in group["params"]:
                    st = opt.state.get(param, {})
                    out += [st[k] for k in ("step", "exp_avg", "exp_avg_sq") if k in st]
            return out

        return {
            "critic": list(p.critic.parameters()) + list(p.encoder.parameters())
            + opt_state(lr.critic_opt) + opt_state(lr.encoder_opt),
            "actor": list(p.actor.parameters()) + list(p.critic_target.parameters())
            + opt_state(lr.actor_opt),
        }

    @staticmethod
    def _key_of(b: Mapping[str, Any]) -> tuple:
        return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(b.items())
                     if isinstance(v, torch.Tensor))

    def usable(self, b: Mapping[str, Any]) -> bool:
        """Whether updates run on the graph (False once a capture failed: eager then)."""
        return not self.failed

    def invalidate(self) -> None:
        """Forget the graph (optimiser tensors were replaced, e.g. by a state load)."""
        self.graph = None
        self._key = None

    # ------------------------------------------------------------------ capture
    def _capture(self, b: Mapping[str, Any], rnd: Mapping[str, Any], std: float) -> None:
        lr = self.learner
        dev = lr.device
        self._in = {k: v.clone() for k, v in b.items() if isinstance(v, torch.Tensor)}
        self._host_in = {k: v for k, v in b.items() if not isinstance(v, torch.Tensor)}
        self._host_in["bc_count"] = None  # counted on the device inside the graph
        self._rnd = {k: (None if v is None else v.clone()) for k, v in rnd.items()}
        self._std = torch.tensor(float(std), dtype=torch.float32, device=dev)

        groups_before = self._state_tensors()
        had_state = {id(o): bool(o.state) for o in (lr.critic_opt, lr.encoder_opt,
                                                    lr.actor_opt)}
        before = [t.detach().clone() for ts in groups_before.values() for t in ts]
        params_before = [t for ts in groups_before.values() for t in ts]

        def body() -> dict[str, torch.Tensor]:
            torch._foreach_copy_(self._snap_flat, self._live_flat)
            flags: dict[str, torch.Tensor] = {}
            inputs = dict(self._in, **self._host_in)
            values = lr.update_math(inputs, self._rnd, self._std,
                                    lambda name, loss: flags.__setitem__(name,
                                                                         torch.isfinite(loss)))
            out = [flags["critic"].float(), flags["actor"].float()]
            out += [v.float().reshape(()) for v in values.values()]
            self._names = list(values)
            return {"packed": torch.stack(out)}

        try:
            # Optimiser states exist only after a first step: warm up, then know them all.
            stream = torch.cuda.Stream(device=dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream):
                self._live_flat, self._snap_flat = [], []
                for i in range(_WARMUP):
                    if i == 1:
                        groups = self._state_tensors()
                        self._groups = groups
                        self._live_flat = [t for ts in groups.values() for t in ts]
                        self._snap_flat = [t.detach().clone() for t in self._live_flat]
                    if i == 0:
                        inputs = dict(self._in, **self._host_in)
                        lr.update_math(inputs, self._rnd, self._std, lambda n, loss: None)
                    else:
                        body()
            torch.cuda.current_stream(dev).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._out = body()
        except Exception as exc:  # any capture failure: fall back eagerly, and say why
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed, the learner runs eagerly: %s", self.failed)
            self.graph = None
        else:
            self.graph = graph
            self._key = self._key_of(b)
            self.captures += 1
        finally:
            torch.cuda.synchronize(dev)
            self._restore_after_warmup(params_before, before, had_state)

    def _restore_after_warmup(self, params_before, before, had_state) -> None:
        """Undo the warm-up steps: the state from before them, bit for bit."""
        lr = self.learner
        with torch.no_grad():
            for live, saved in zip(params_before, before):
                live.copy_(saved)
            for opt in (lr.critic_opt, lr.encoder_opt, lr.actor_opt):
                if had_state[id(opt)]:
                    continue
                for st in opt.state.values():  # created by the warm-up: back to fresh
                    for v in st.values():
                        if isinstance(v, torch.Tensor):
                            v.zero_()
        torch.cuda.synchronize(lr.device)

    # ------------------------------------------------------------------ replay
    def run(self, b: Mapping[str, Any], rnd: Mapping[str, Any], std: float,
            after_launch: Callable[[], None] | None = None) -> dict[str, Any]:
        """One update on the graph; returns host metrics. Raises like the eager update.
        ``after_launch`` runs between the replay's launch and the wait for its flags."""
        if self.graph is None or self._key != self._key_of(b):
            if self.graph is not None:
                log.info("batch shape changed: capturing the update again")
            self._capture(b, rnd, std)
            if self.graph is None:
                values = self.learner.update_math(b, rnd, std, self.learner.check_host)
                if after_launch is not None:
                    after_launch()
                return values
        for k, v in self._in.items():
            v.copy_(b[k], non_blocking=True)
        for k, v in self._rnd.items():
            if v is not None:
                v.copy_(rnd[k], non_blocking=True)
        self._std.fill_(float(std))
        self.graph.replay()
        if after_launch is not None:
            after_launch()  # host work overlapping the GPU's
        packed = self._out["packed"].cpu().tolist()  # the one wait: flags + metrics
        critic_ok, actor_ok = packed[0] > 0.5, packed[1] > 0.5
        values = dict(zip(self._names, packed[2:]))
        if not critic_ok or not actor_ok:
            self._roll_back(critic_ok)
            lr = self.learner
            if not critic_ok:
                raise FloatingPointError(f"critic loss is {values['critic_loss']} at update "
                                         f"{lr.num_updates}: weights left unchanged")
            raise FloatingPointError(f"actor loss is {values['actor_loss']} at update "
                                     f"{lr.num_updates}")
        return values

    def _roll_back(self, critic_ok: bool) -> None:
        """Put back what the eager update would not have changed."""
        n_critic = len(self._groups["critic"])
        with torch.no_grad():
            if not critic_ok:
                torch._foreach_copy_(self._live_flat, self._snap_flat)
            else:
                torch._foreach_copy_(self._live_flat[n_critic:], self._snap_flat[n_critic:])
        torch.cuda.synchronize(self.learner.device)
