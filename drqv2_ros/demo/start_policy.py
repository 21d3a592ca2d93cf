"""A start policy for fine-tuning, made in simulation: scripted demonstrations from the
``wrist_view`` start pose (``sim-train --demos-only``), then ``pretrain`` on them (behaviour
cloning into actor and encoder, the critic with the actor fixed, the exploration schedule
placed at ``start_std``), then its policy-only success measured in the nominal scene.

The learning benchmark builds one per seed in its output folder; ``drqv2-ros sim-finetune``
(the main job) keeps one per recipe under ``runs/start_policy/<key>`` and reuses it, so only
its first run pays the ~6-7 minutes on 2 CPU cores. A build happens in a temporary sibling
folder that is renamed into place once complete: an interrupted build leaves nothing that a
later run would take for a start policy.

``start_policy.json`` beside the checkpoint says how it was made: the recipe, the seed, the
commands that reproduce it, wall-clock per stage and the measured success.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from drqv2_ros.atomic_write import atomic_write_text, publish_dir

INFO = "start_policy.json"


@dataclass(frozen=True)
class StartPolicyRecipe:
    demo_episodes: int = 30
    episode_steps: int = 60
    render: str = "fast"
    render_size: tuple[int, int] = (160, 120)
    bc_updates: int = 2000
    updates: int = 300
    batch_size: int = 64
    start_std: float = 0.2
    eval_episodes: int = 20           # nominal policy-only success measured after (0: none)
    device: str = "auto"
    seed: int = 0

    def key(self) -> str:
        """A folder name that changes with anything that changes the policy."""
        d = asdict(self)
        d.pop("device")
        return f"seed{self.seed}-" + hashlib.sha256(
            json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def commands(self, out: str) -> list[str]:
        w, h = self.render_size
        return [f"drqv2-ros sim-train --demos-only --episodes {self.demo_episodes} "
                f"--episode-steps {self.episode_steps} --render {self.render} --render-size "
                f"{w} {h} --seed {self.seed} --out {out}/demos --record-bag {out}/demos/bag",
                f"drqv2-ros pretrain {out}/pretrain --demos {out}/demos/bag --bc-updates "
                f"{self.bc_updates} --updates {self.updates} --batch-size {self.batch_size} "
                f"--start-std {self.start_std} --seed {self.seed}"]


def build_start_policy(r: StartPolicyRecipe, out: str | os.PathLike,
                       progress: bool = False) -> tuple[Path, dict]:
    """Demos, pretrain and the nominal evaluation into ``out`` (a new folder); returns the
    checkpoint folder and the information written to ``out/start_policy.json``."""
    from drqv2_ros.demo.pretrain import PretrainConfig, pretrain
    from drqv2_ros.demo.sim_train import SimTrainConfig, demos_config, evaluate_policy, run

    out = Path(out)
    t0 = time.perf_counter()
    sim = SimTrainConfig(out=str(out / "demos"), episodes=r.demo_episodes,
                         episode_steps=r.episode_steps, render=r.render,
                         render_width=r.render_size[0], render_height=r.render_size[1],
                         seed=r.seed, eval_episodes=r.eval_episodes)
    demo_cfg = demos_config(sim, str(out / "demos" / "bag"))
    demos = run(demo_cfg, progress=progress)
    t_demos = time.perf_counter() - t0
    pre = pretrain(PretrainConfig((demo_cfg.record_bag,), str(out / "pretrain"),
                                  updates=r.updates, bc_updates=r.bc_updates,
                                  batch_size=r.batch_size, start_std=r.start_std,
                                  device=r.device, seed=r.seed), progress=progress)
    checkpoint = Path(pre["checkpoint"])
    nominal = None
    t_eval = time.perf_counter()
    if r.eval_episodes > 0:
        ev = evaluate_policy(str(checkpoint), str(out / "nominal_eval"),
                             episodes=r.eval_episodes, render=r.render,
                             render_size=r.render_size, episode_steps=r.episode_steps,
                             seed=r.seed)
        nominal = {"success_rate": ev.success_rate, "episodes": len(ev.episodes),
                   "successes": sum(e.success for e in ev.episodes)}
    info = {
        "recipe": asdict(r), "commands": r.commands(str(out)), "checkpoint": str(checkpoint),
        "demo_episodes": len(demos["train_episodes"]),
        "demo_success_rate": demos["assisted_success_rate"],
        "demo_transitions": pre["demos"]["transitions"], "pretrain": pre["stages"],
        "exploration_std": pre["start_std"], "counters": pre["counters"],
        "nominal_policy_only": nominal,
        "seconds": {"demos": t_demos, "pretrain": pre["seconds"],
                    "evaluation": time.perf_counter() - t_eval,
                    "total": time.perf_counter() - t0},
        "made": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return checkpoint, info


def cached_start_policy(r: StartPolicyRecipe, root: str | os.PathLike = "runs/start_policy",
                        progress: bool = True) -> tuple[Path, dict, bool]:
    """The start policy of recipe ``r`` under ``root``: reused when a complete build is
    there, else built (in a temporary sibling, renamed into place when complete). Returns
    (checkpoint, info, reused)."""
    root = Path(root)
    final = root / r.key()
    info_path = final / INFO
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        ck = final / "pretrain" / "checkpoint"
        if (ck / "model.safetensors").is_file():
            return ck, info, True
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        _, info = build_start_policy(r, tmp, progress=progress)
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # the paths inside info name the temporary folder it was built in
    text = (final / INFO).read_text().replace(str(tmp), str(final))
    atomic_write_text(final / INFO, text)
    return final / "pretrain" / "checkpoint", json.loads(text), False
