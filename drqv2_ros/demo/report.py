"""The end-of-run report of ``drqv2-ros sim-finetune``: a short text summary, a JSON file
with every figure, and PNG plots (success and intervention rate per episode, critic loss,
Q, control-loop latency). ROS-free: it reads what the run monitor collected."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class EpisodeSummary:
    episode: int
    steps: int
    success: bool
    intervention_rate: float
    ret: float

    @property
    def policy_alone(self) -> bool:
        """Succeeded without a single operator step (still with exploration noise: the
        policy-only evaluation of ``drqv2-ros sim-train`` uses the mean action)."""
        return self.success and self.intervention_rate == 0.0


@dataclass
class RunRecord:
    """What the monitor saw during a run."""

    duration_s: float = 0.0
    nodes_up: dict[str, bool] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    episodes: list[EpisodeSummary] = field(default_factory=list)
    steps_received: int = 0
    commands_per_s: float = 0.0
    control_rate_hz: float = 10.0
    metrics: list[dict] = field(default_factory=list)     # learner/metrics over time
    latency: list[dict] = field(default_factory=list)     # (t, p50, p99) from policy/status
    weights_applied: int = 0                              # last weights version the actor ran
    hot_swap: dict = field(default_factory=dict)
    bag: dict = field(default_factory=dict)
    leftover_shm: list[str] = field(default_factory=list)
    cleaned_shm: list[str] = field(default_factory=list)  # stale port segments removed
    skipped_ticks: dict = field(default_factory=dict)
    shift: str = "none"                                   # the sim-to-real proxy of the run
    start: str = ""                                       # the start checkpoint
    policy_only_before: dict = field(default_factory=dict)  # evaluation of the start
    policy_only_after: dict = field(default_factory=dict)   # ... of the learner's last

    def successes(self) -> dict[str, int]:
        """Successful episodes: by the policy alone, and with the operator's help."""
        alone = sum(e.policy_alone for e in self.episodes)
        return {"policy_alone": alone,
                "operator_assisted": sum(e.success for e in self.episodes) - alone}


def _rolling(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) == 0:
        return x
    n = max(1, min(n, len(x)))
    c = np.cumsum(np.insert(x.astype(float), 0, 0.0))
    out = np.empty(len(x))
    for i in range(len(x)):
        lo = max(0, i + 1 - n)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def make_plots(rec: RunRecord, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    # 1. episodes: successes by the policy alone and operator-assisted, intervention rate
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    eps = np.array([e.episode for e in rec.episodes])
    if len(eps):
        from matplotlib.ticker import MaxNLocator

        alone = np.array([e.policy_alone for e in rec.episodes], float)
        assisted = np.array([e.success and not e.policy_alone for e in rec.episodes], float)
        inter = np.array([e.intervention_rate for e in rec.episodes], float)
        w = 0.8 if len(eps) < 40 else 1.0
        ax.bar(eps, alone, width=w, color="tab:green", alpha=0.45,
               label="success by the policy alone")
        ax.bar(eps, assisted, width=w, bottom=alone, color="tab:blue", alpha=0.3,
               label="success, operator-assisted")
        n = max(3, len(eps) // 10)
        ax.plot(eps, _rolling(alone, n), "-", color="tab:green", lw=2,
                label=f"policy-alone success, {n}-episode mean")
        ax.plot(eps, _rolling(inter, n), "-", color="tab:orange", lw=2,
                label=f"intervention rate, {n}-episode mean")
        ax.plot(eps, inter, ".", color="tab:orange", alpha=0.5, ms=4)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    else:
        ax.text(0.5, 0.5, "no complete episode", ha="center", transform=ax.transAxes)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("episode")
    ax.set_ylabel("fraction")
    title = f"Success and human intervention per episode (shift: {rec.shift})"
    b, a = rec.policy_only_before, rec.policy_only_after
    if b:
        title += (f"\npolicy-only evaluation: {100 * b['success_rate']:.0f}% before"
                  + (f", {100 * a['success_rate']:.0f}% after" if a else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    paths.append(_save(fig, out_dir / "episodes.png"))

    # 2. learner: critic loss and Q
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    m = [x for x in rec.metrics if x.get("update_step", 0) > 0]
    steps = np.array([x["update_step"] for x in m])
    for ax, key, title, ylabel in ((a1, "critic_loss", "Critic loss (TD MSE)", "loss"),
                                   (a2, "q_mean", "Mean Q of the critics", "Q")):
        vals = np.array([x.get(key, np.nan) for x in m], float)
        if len(steps):
            ax.plot(steps, vals, "-o", ms=3)
        else:
            ax.text(0.5, 0.5, "no update yet", ha="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("learner update")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle("Learner")
    paths.append(_save(fig, out_dir / "learner.png"))

    # 3. control-loop latency
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    if rec.latency:
        t = np.array([x["t"] for x in rec.latency])
        ax.plot(t, [x["p50"] for x in rec.latency], label="p50")
        ax.plot(t, [x["p99"] for x in rec.latency], label="p99")
        ax.axhline(1000.0 / rec.control_rate_hz, color="grey", ls="--",
                   label=f"control period ({rec.control_rate_hz:g} Hz)")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no latency sample", ha="center", transform=ax.transAxes)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("image stamp -> command (ms)")
    ax.set_title("Control-loop latency (last 200 ticks, rolling)")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out_dir / "latency.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _eval_text(e: dict) -> str:
    if not e:
        return "not measured"
    return f"{e['successes']}/{e['episodes']} ({100 * e['success_rate']:.0f}%)"


def summary_text(rec: RunRecord, plots: list[Path], out_dir: Path) -> str:
    n = len(rec.episodes)
    succ = sum(e.success for e in rec.episodes)
    split = rec.successes()
    inter = np.mean([e.intervention_rate for e in rec.episodes]) if n else 0.0
    last = rec.metrics[-1] if rec.metrics else {}
    lat = rec.latency[-1] if rec.latency else {}
    lines = [
        f"sim fine-tuning run: {rec.duration_s:.0f} s",
        "nodes: " + ", ".join(f"{k} {'up' if v else 'NEVER SEEN'}"
                              for k, v in rec.nodes_up.items()),
        f"start: {rec.start or '-'}; shift: {rec.shift}",
        f"policy-only evaluation (fixed placements, mean action, no operator): "
        f"{_eval_text(rec.policy_only_before)} before, "
        f"{_eval_text(rec.policy_only_after)} after",
        f"episodes: {n} complete, {succ} successful: {split['policy_alone']} by the policy "
        f"alone, {split['operator_assisted']} operator-assisted; mean intervention rate "
        f"{inter:.0%}",
        f"control: {rec.steps_received} steps, {rec.commands_per_s:.1f} commands/s "
        f"(target {rec.control_rate_hz:g} Hz), latency p50 {lat.get('p50', float('nan')):.1f}"
        f" ms / p99 {lat.get('p99', float('nan')):.1f} ms",
        f"learner: {int(last.get('update_step', 0))} updates, "
        f"{last.get('updates_per_second', 0.0):.2f} updates/s, critic loss "
        f"{last.get('critic_loss', float('nan')):.4f}, weights v"
        f"{int(last.get('weights_version', 0))} pushed, v{rec.weights_applied} applied by "
        "the actor",
        f"hot-swap: {'ok' if rec.hot_swap.get('success') else 'FAILED'} "
        f"{rec.hot_swap.get('message', '')}",
        f"bag: {rec.bag.get('path', '-')} ({rec.bag.get('messages', 0)} messages, "
        f"{rec.bag.get('bytes', 0) / 1e6:.1f} MB)",
        "exit codes: " + ", ".join(f"{k}={v}" for k, v in rec.exit_codes.items()),
        f"plots: {', '.join(str(p) for p in plots)}",
        f"TensorBoard: tensorboard --logdir {out_dir / 'learner' / 'tensorboard'}",
    ]
    if rec.cleaned_shm:
        lines.append(f"removed stale Fast DDS port segments of this run: {rec.cleaned_shm}")
    if rec.leftover_shm:
        lines.append(f"WARNING leftover shared memory: {rec.leftover_shm}")
    return "\n".join(lines)


def write_report(rec: RunRecord, out_dir: Path) -> tuple[str, list[Path]]:
    plots = make_plots(rec, out_dir / "plots")
    text = summary_text(rec, plots, out_dir)
    (out_dir / "report.txt").write_text(text + "\n")
    data = asdict(rec)
    for ep, d in zip(rec.episodes, data["episodes"]):
        d["policy_alone"] = ep.policy_alone
    data["successes"] = rec.successes()
    data["plots"] = [str(p) for p in plots]
    (out_dir / "report.json").write_text(json.dumps(data, indent=2, default=float) + "\n")
    return text, plots
