"""The learning benchmark: does HIL fine-tuning raise the policy's OWN success under a
sim-to-real shift?

    python bench/bench_learning.py --scale smoke|cpu|gpu [--seeds 3] [--variants drqv2,bc]
                                   [--shift real_proxy|FILE.yaml] [--start CKPT] [--out DIR]

Per seed:
1. Start policy: ``--start CKPT``, or scripted demonstrations in the nominal scene from the
   ``wrist_view`` start pose (``sim-train --demos-only``) and ``pretrain`` on them
   (behaviour cloning into actor and encoder, then the critic with the actor fixed, the
   exploration schedule placed at std 0.2).
2. Its policy-only success in the nominal scene and under the shift.
3. For each variant: HIL fine-tuning under the shift (``sim-train``: the ``assist`` scripted
   operator takes over when the policy stalls or heads away; interventions stored as
   executed and sent to the offline buffer; 50/50 online/offline batches; RoboBase's DrQ-v2
   update, ``bc`` adds its BC term), with policy-only evaluations (fixed placements, mean
   action, no operator) before training and every ``eval_every`` episodes.
4. ``learning.json`` (every run's curve and intervention rate per training window, the mean
   and spread over seeds per variant, wall-clock, seeds, render, scale) and ``learning.png``
   (policy-only success per variant, seed range shaded; intervention rate).

Baseline: the start policy's own success under the shift, measured in the same run; the
benchmark prints the change in points. ``smoke`` checks the pipeline (CI), ``cpu`` is sized
for 2 cores (~6 min per start policy, ~12-15 min per fine-tuning run), ``gpu`` for one CUDA
GPU (no ROS needed)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from drqv2_ros.bringup.graph import rendering_environment

os.environ.update(rendering_environment(os.environ))

from drqv2_ros.demo.sim_train import SimTrainConfig, evaluate_policy, run
from drqv2_ros.demo.start_policy import StartPolicyRecipe, build_start_policy


@dataclass(frozen=True)
class Scale:
    demo_episodes: int
    pretrain_updates: int           # TD updates of the critic after behaviour cloning
    pretrain_batch: int
    finetune_episodes: int
    episode_steps: int
    eval_every: int
    eval_episodes: int
    batch_size: int
    utd_ratio: float
    warmup: int
    bc_updates: int = 2000          # pretrain's behaviour-cloning steps
    render: str = "fast"
    render_size: tuple[int, int] = (160, 120)
    freeze_encoder: bool = False
    device: str = "auto"
    operator: str = "assist"
    envs: int = 1


SCALES = {
    "smoke": Scale(demo_episodes=2, pretrain_updates=4, pretrain_batch=16, finetune_episodes=2,
                   episode_steps=10, eval_every=1, eval_episodes=1, batch_size=16,
                   utd_ratio=0.5, warmup=10, bc_updates=4, render="wrist_only"),
    # ~7 min start policy + ~20 min per fine-tuning variant on 2 cores
    "cpu": Scale(demo_episodes=30, pretrain_updates=300, pretrain_batch=64,
                 finetune_episodes=120, episode_steps=60, eval_every=20, eval_episodes=20,
                 batch_size=64, utd_ratio=0.5, warmup=300, freeze_encoder=True),
    # bench/gpu_learning.sh: ~8 min on one H100/H200 (one env: 2 threads step no faster
    # than 1 under the GIL; env processes are not implemented yet)
    "gpu": Scale(demo_episodes=40, pretrain_updates=1000, pretrain_batch=256,
                 finetune_episodes=200, episode_steps=60, eval_every=40, eval_episodes=20,
                 batch_size=256, utd_ratio=1.0, warmup=500, bc_updates=4000),
}
SHIFT = "real_proxy"
#: fine-tuning variants (the ablation): RoboBase's DrQ-v2 update is the default; "bc" adds
#: RoboBase's BC term on demonstration and intervention samples
VARIANTS = {"drqv2": {"bc_weight": 0.0}, "bc": {"bc_weight": 1.0}}


def _sim(s: Scale, out: Path, **kw) -> SimTrainConfig:
    return SimTrainConfig(out=str(out), episode_steps=s.episode_steps, render=s.render,
                          render_width=s.render_size[0], render_height=s.render_size[1],
                          batch_size=s.batch_size, utd_ratio=s.utd_ratio, warmup=s.warmup,
                          freeze_encoder=s.freeze_encoder, device=s.device,
                          eval_every=s.eval_every, eval_episodes=s.eval_episodes,
                          operator=s.operator, **{"envs": s.envs, **kw})


def start_policy(s: Scale, out: Path, seed: int) -> tuple[str, dict]:
    recipe = StartPolicyRecipe(demo_episodes=s.demo_episodes, episode_steps=s.episode_steps,
                               render=s.render, render_size=s.render_size,
                               bc_updates=s.bc_updates, updates=s.pretrain_updates,
                               batch_size=s.pretrain_batch, eval_episodes=0, device=s.device,
                               seed=seed)
    checkpoint, info = build_start_policy(recipe, out)
    return str(checkpoint), {"demo_episodes": info["demo_episodes"],
                             "demo_success_rate": info["demo_success_rate"],
                             "pretrain_updates": info["pretrain"]["td"]["updates"],
                             "bc_updates": info["pretrain"]["bc"]["updates"],
                             "pretrain_seconds": info["seconds"]["pretrain"],
                             "commands": info["commands"]}


def nominal_success(s: Scale, start: str, out: Path, seed: int) -> float:
    return evaluate_policy(start, str(out), episodes=s.eval_episodes, render=s.render,
                           render_size=s.render_size, episode_steps=s.episode_steps,
                           seed=seed).success_rate


def finetune(s: Scale, start: str, out: Path, seed: int, shift: str, variant: str) -> dict:
    """One HIL fine-tuning run under the shift; its policy-only curve and intervention rate
    per training window."""
    t0 = time.perf_counter()
    report = run(_sim(s, out, seed=seed, checkpoint=start, shift=shift,
                      episodes=s.finetune_episodes, **VARIANTS[variant]), progress=True)
    ev, train = report["evaluations"], report["train_episodes"]
    windows, k = [], 0
    for e in ev[1:]:  # intervention rate of the training episodes before each evaluation
        n = e["after_episodes"]
        eps = train[k:n]
        k = n
        steps = sum(x["steps"] for x in eps)
        windows.append({"env_steps": e["env_steps"], "episodes": len(eps),
                        "intervention_rate": sum(x["intervention_steps"] for x in eps)
                        / max(1, steps)})
    first, last = ev[0]["policy_only_success_rate"], ev[-1]["policy_only_success_rate"]
    return {
        "variant": variant, "seed": seed, **VARIANTS[variant],
        "start_success_shifted": first, "final_success_shifted": last,
        "change_points": 100 * (last - first),
        "evaluations": [{k2: e[k2] for k2 in ("after_episodes", "env_steps", "updates",
                                              "policy_only_success_rate")} for e in ev],
        "intervention_windows": windows, "env_steps": report["env_steps"],
        "updates": report["updates"],
        "intervention_steps": sum(x["intervention_steps"] for x in train),
        "render": report["render"], "seconds": time.perf_counter() - t0,
        "finetune_report": str(out / "sim_train.json"),
    }


def summarise(runs: list[dict]) -> dict:
    """Mean and spread (sample std, min, max) of each variant's figures over the seeds."""
    import numpy as np

    out = {}
    for v in dict.fromkeys(r["variant"] for r in runs):
        rs = [r for r in runs if r["variant"] == v]
        stats = {}
        for key in ("start_success_nominal", "start_success_shifted", "final_success_shifted",
                    "change_points"):
            x = np.array([r[key] for r in rs], dtype=float)
            stats[key] = {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1
                          else 0.0, "min": float(x.min()), "max": float(x.max())}
        wins = [r["intervention_windows"] for r in rs if r["intervention_windows"]]
        stats["intervention_rate_first_last"] = [
            float(np.mean([w[0]["intervention_rate"] for w in wins])) if wins else 0.0,
            float(np.mean([w[-1]["intervention_rate"] for w in wins])) if wins else 0.0]
        stats["seeds"] = [r["seed"] for r in rs]
        out[v] = stats
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, v in enumerate(dict.fromkeys(r["variant"] for r in data["runs"])):
        rs = [r for r in data["runs"] if r["variant"] == v]
        n = min(len(r["evaluations"]) for r in rs)
        x = np.mean([[e["env_steps"] for e in r["evaluations"][:n]] for r in rs], 0)
        y = 100 * np.array([[e["policy_only_success_rate"] for e in r["evaluations"][:n]]
                            for r in rs])
        c = colors[i % len(colors)]
        ax.plot(x, y.mean(0), "-o", color=c, label=f"{v} (mean of {len(rs)} seed(s))")
        if len(rs) > 1:
            ax.fill_between(x, y.min(0), y.max(0), color=c, alpha=0.2)
        m = min(len(r["intervention_windows"]) for r in rs)
        if m:
            wx = np.mean([[w["env_steps"] for w in r["intervention_windows"][:m]] for r in rs], 0)
            wy = 100 * np.mean([[w["intervention_rate"] for w in r["intervention_windows"][:m]]
                                for r in rs], 0)
            ax2.plot(wx, wy, "-s", color=c, label=v)
    ax.set_xlabel("env steps (fine-tuning)")
    ax.set_ylabel(f"policy-only success under {data['shift']} (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(f"bench_learning --scale {data['scale']}: {data['change_points']:+.0f} points "
                 f"(first variant, mean)")
    ax.legend(loc="best", fontsize=8)
    ax2.set_xlabel("env steps (fine-tuning)")
    ax2.set_ylabel("intervention rate (%)")
    ax2.set_ylim(-5, 105)
    ax2.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _seed(text: str) -> int:
    v = int(text)
    if not 0 <= v < 2**31:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**31), got {v}")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    ap.add_argument("--start", default="", help="start checkpoint (default: pretrain one "
                    "from scripted demos, per seed)")
    ap.add_argument("--out", default="", help="output folder (default runs/bench_learning/"
                    "<scale>-<time>)")
    ap.add_argument("--device", default="", help="learner device (default: the scale's)")
    ap.add_argument("--seed", type=_seed, default=0, help="first seed")
    ap.add_argument("--seeds", type=_positive, default=1,
                    help="seeds --seed .. --seed+N-1, each its own start policy and runs")
    ap.add_argument("--shift", default=SHIFT, help="a preset or a YAML file (sim-train "
                    "--shift)")
    ap.add_argument("--variants", default="drqv2",
                    help=f"comma-separated fine-tuning variants of {sorted(VARIANTS)}; "
                    "the first is the headline")
    ap.add_argument("--envs", type=_positive, default=0, help="envs per fine-tuning run "
                    "(default: the scale's)")
    a = ap.parse_args(argv)
    s = SCALES[a.scale]
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        ap.error(f"--variants: unknown {bad} (known: {sorted(VARIANTS)})")
    from drqv2_ros.robot.sim_shift import shift_named

    try:
        shift_named(a.shift)
    except ValueError as exc:
        ap.error(f"--shift: {exc}")
    if a.device:
        s = replace(s, device=a.device)
    if a.envs:
        s = replace(s, envs=a.envs)
    out = Path(a.out or f"runs/bench_learning/{a.scale}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (out / "learning.json").exists():
        ap.error(f"--out: {out} already holds a learning.json: choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs, starts = [], []
    for seed in range(a.seed, a.seed + a.seeds):
        sd = out / f"seed{seed}" if a.seeds > 1 else out
        start_info = {"start": a.start, "seed": seed}
        start = a.start
        if not start:
            start, info = start_policy(s, sd, seed)
            start_info.update(info, start=start)
        nominal = nominal_success(s, start, sd / "nominal_eval", seed)
        start_info["success_nominal"] = nominal
        starts.append(start_info)
        for v in variants:
            r = finetune(s, start, sd / ("finetune" if v == variants[0] else f"finetune_{v}"),
                         seed, a.shift, v)
            r["start_success_nominal"] = nominal
            runs.append(r)
            print(f"seed {seed} {v}: start {100 * nominal:.0f}% nominal, "
                  f"{100 * r['start_success_shifted']:.0f}% under {a.shift} -> "
                  f"{100 * r['final_success_shifted']:.0f}% after {r['env_steps']} env steps "
                  f"({r['change_points']:+.0f} points, {r['seconds']:.0f} s)", flush=True)
    summary = summarise(runs)
    head = runs[0]
    data = {
        "scale": a.scale, "scale_settings": asdict(s), "shift": a.shift,
        "shift_parameters": asdict(shift_named(a.shift)), "seed": a.seed,
        "seeds": list(range(a.seed, a.seed + a.seeds)), "variants": variants,
        "start": starts[0], "starts": starts,
        "start_success_nominal": head["start_success_nominal"],
        "start_success_shifted": head["start_success_shifted"],
        "final_success_shifted": head["final_success_shifted"],
        "change_points": summary[variants[0]]["change_points"]["mean"],
        "evaluations": head["evaluations"], "intervention_windows": head["intervention_windows"],
        "env_steps": head["env_steps"], "updates": head["updates"],
        "intervention_steps": head["intervention_steps"], "render": head["render"],
        "summary": summary, "runs": runs, "wall_s": time.perf_counter() - t0,
        "finetune_report": head["finetune_report"],
    }
    tmp = out / "learning.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    plot(data, out / "learning.png")
    os.replace(tmp, out / "learning.json")
    for v, st in summary.items():
        f = {k: st[k] for k in ("start_success_nominal", "start_success_shifted",
                                "final_success_shifted", "change_points")}
        nominal = f["start_success_nominal"]["mean"]
        print(f"{v} over seeds {st['seeds']}: start {100 * nominal:.0f}% "
              f"nominal, {100 * f['start_success_shifted']['mean']:.0f}% under {a.shift} -> "
              f"{100 * f['final_success_shifted']['mean']:.0f}% "
              f"({f['change_points']['mean']:+.0f} +- {f['change_points']['std']:.0f} points "
              f"vs the start policy, measured in this run); intervention rate "
              f"{100 * st['intervention_rate_first_last'][0]:.0f}% -> "
              f"{100 * st['intervention_rate_first_last'][1]:.0f}%")
    print(f"wall-clock {data['wall_s']:.0f} s; {out / 'learning.json'}, {out / 'learning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
