"""The learning benchmark: does HIL fine-tuning raise the policy's OWN success under a
sim-to-real shift?

    python bench/bench_learning.py --scale smoke|cpu|gpu [--start CKPT] [--out DIR]

1. Start policy: ``--start CKPT``, or scripted demonstrations in the nominal scene
   (``sim-train --demos-only``) and ``pretrain`` on them.
2. Its policy-only success in the nominal scene and under the shift (``real_proxy``).
3. HIL fine-tuning under the shift (``sim-train``: scripted operator takeovers, learner
   updates), with policy-only evaluations (fixed placements, mean action, no operator) before
   training and every ``eval_every`` episodes.
4. ``learning.json`` (policy-only success per evaluation, env steps, updates, intervention
   rate per training window, wall-clock, seeds, render, scale) and ``learning.png``
   (policy-only success and intervention rate against env steps).

Baseline: the start policy's own success under the shift, measured in the same run; the
benchmark prints the change in points. ``smoke`` checks the pipeline (CI), ``cpu`` fits in
about an hour on 2 cores, ``gpu`` is sized for one CUDA GPU (no ROS needed).
"""

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

from drqv2_ros.demo.pretrain import PretrainConfig, pretrain
from drqv2_ros.demo.sim_train import SimTrainConfig, SimTrainer, demos_config, run


@dataclass(frozen=True)
class Scale:
    demo_episodes: int
    pretrain_updates: int
    pretrain_batch: int
    finetune_episodes: int
    episode_steps: int
    eval_every: int
    eval_episodes: int
    batch_size: int
    utd_ratio: float
    warmup: int
    render: str = "wrist_only"
    render_size: tuple[int, int] = (160, 120)
    freeze_encoder: bool = False
    device: str = "auto"


SCALES = {
    "smoke": Scale(demo_episodes=2, pretrain_updates=4, pretrain_batch=16, finetune_episodes=2,
                   episode_steps=10, eval_every=1, eval_episodes=1, batch_size=16,
                   utd_ratio=0.5, warmup=10),
    "cpu": Scale(demo_episodes=20, pretrain_updates=1000, pretrain_batch=64,
                 finetune_episodes=60, episode_steps=60, eval_every=10, eval_episodes=5,
                 batch_size=64, utd_ratio=0.25, warmup=300, freeze_encoder=True),
    "gpu": Scale(demo_episodes=40, pretrain_updates=5000, pretrain_batch=256,
                 finetune_episodes=150, episode_steps=60, eval_every=15, eval_episodes=10,
                 batch_size=256, utd_ratio=1.0, warmup=500),
}
SHIFT = "real_proxy"


def _sim(s: Scale, out: Path, **kw) -> SimTrainConfig:
    return SimTrainConfig(out=str(out), episode_steps=s.episode_steps, render=s.render,
                          render_width=s.render_size[0], render_height=s.render_size[1],
                          batch_size=s.batch_size, utd_ratio=s.utd_ratio, warmup=s.warmup,
                          freeze_encoder=s.freeze_encoder, device=s.device,
                          eval_every=s.eval_every, eval_episodes=s.eval_episodes, **kw)


def start_policy(s: Scale, out: Path, seed: int) -> tuple[str, dict]:
    demo_cfg = demos_config(replace(_sim(s, out / "demos", seed=seed),
                                    episodes=s.demo_episodes), str(out / "demos" / "bag"))
    demos = run(demo_cfg, progress=False)
    pre = pretrain(PretrainConfig((demo_cfg.record_bag,), str(out / "pretrain"),
                                  updates=s.pretrain_updates, batch_size=s.pretrain_batch,
                                  freeze_encoder=False, device=s.device, seed=seed),
                   progress=False)
    return pre["checkpoint"], {"demo_episodes": len(demos["train_episodes"]),
                               "demo_success_rate": demos["assisted_success_rate"],
                               "pretrain_updates": pre["updates"],
                               "pretrain_seconds": pre["seconds"]}


def nominal_success(s: Scale, start: str, out: Path, seed: int) -> float:
    t = SimTrainer(replace(_sim(s, out, seed=seed), checkpoint=start, train=False))
    try:
        return t.evaluate().success_rate
    finally:
        t.close()


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = data["evaluations"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([e["env_steps"] for e in ev], [100 * e["policy_only_success_rate"] for e in ev],
            "-o", color="tab:green", label=f"policy-only success under {data['shift']} (%)")
    win = data["intervention_windows"]
    if win:
        ax.plot([w["env_steps"] for w in win], [100 * w["intervention_rate"] for w in win],
                "-s", color="tab:orange", label="intervention rate (%)")
    ax.set_xlabel("env steps (fine-tuning)")
    ax.set_ylim(-5, 105)
    ax.set_title(f"bench_learning --scale {data['scale']}: {data['change_points']:+.0f} points")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    ap.add_argument("--start", default="", help="start checkpoint (default: pretrain one "
                    "from scripted demos)")
    ap.add_argument("--out", default="", help="output folder (default runs/bench_learning/"
                    "<scale>-<time>)")
    ap.add_argument("--device", default="", help="learner device (default: the scale's)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    s = SCALES[a.scale]
    if a.device:
        s = replace(s, device=a.device)
    out = Path(a.out or f"runs/bench_learning/{a.scale}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    start_info = {"start": a.start}
    start = a.start
    if not start:
        start, info = start_policy(s, out, a.seed)
        start_info.update(info, start=start)
    nominal = nominal_success(s, start, out / "nominal_eval", a.seed)
    report = run(_sim(s, out / "finetune", seed=a.seed, checkpoint=start, shift=SHIFT,
                      episodes=s.finetune_episodes), progress=True)
    ev = report["evaluations"]
    train = report["train_episodes"]
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
    data = {
        "scale": a.scale, "scale_settings": asdict(s), "shift": SHIFT, "seed": a.seed,
        "start": start_info, "start_success_nominal": nominal,
        "start_success_shifted": first, "final_success_shifted": last,
        "change_points": 100 * (last - first),
        "evaluations": [{k2: e[k2] for k2 in ("after_episodes", "env_steps", "updates",
                                              "policy_only_success_rate")} for e in ev],
        "intervention_windows": windows,
        "env_steps": report["env_steps"], "updates": report["updates"],
        "intervention_steps": sum(x["intervention_steps"] for x in train),
        "render": report["render"], "wall_s": time.perf_counter() - t0,
        "finetune_report": str(out / "finetune" / "sim_train.json"),
    }
    (out / "learning.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(data, out / "learning.png")
    print(f"start policy: {100 * nominal:.0f}% policy-only success in the nominal scene, "
          f"{100 * first:.0f}% under {SHIFT}")
    print(f"after {report['env_steps']} fine-tuning env steps ({report['updates']} updates, "
          f"{data['intervention_steps']} intervention steps): {100 * last:.0f}% under {SHIFT} "
          f"({data['change_points']:+.0f} points vs the start policy, measured in this run)")
    print(f"wall-clock {data['wall_s']:.0f} s; {out / 'learning.json'}, {out / 'learning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
