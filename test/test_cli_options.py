"""Every benchmark's options refuse nonsense before any work: exit 2, the option named with
its allowed range (drqv2_ros/cli_checks.py); the commands' own option tests sit beside
their commands (test_sim_train, test_bags, test_sim_finetune)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from drqv2_ros.cli_checks import float_in, int_in

ROOT = Path(__file__).resolve().parents[1]


def test_int_in_and_float_in():
    assert int_in(1, 5)("3") == 3
    assert float_in(0, 1, open_low=True)("0.5") == 0.5
    for bad in ("0", "6", "x", "2.5", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=r"integer in \[1, 5\]"):
            int_in(1, 5)(bad)
    for bad in ("0", "nan", "inf", "-inf", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"\(0, 1\]"):
            float_in(0, 1, open_low=True)(bad)


@pytest.mark.parametrize("bench,args,option", [
    ("bench_actor_loop.py", ["--batch", "0"], "--batch"),
    ("bench_actor_loop.py", ["--push-period", "nan"], "--push-period"),
    ("bench_ingest.py", ["--episodes", "-5"], "--episodes"),
    ("bench_intake.py", ["--rate", "inf"], "--rate"),
    ("bench_replay_buffer.py", ["--repeats", "0"], "--repeats"),
    ("bench_sim_train.py", ["--seed", "-1"], "--seed"),
    ("bench_update.py", ["--batch", "64", "0"], "--batch"),
    ("bench_learning.py", ["--seeds", "0"], "--seeds"),
    ("bench_learning.py", ["--variants", "nope"], "--variants")])
def test_benchmark_options_refuse_nonsense(bench, args, option):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / bench), *args],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and option in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("args,option", [
    (["--minutes", "0"], "--minutes"), (["--seed", "-1"], "--seed"),
    (["--weights-period", "0"], "--weights-period"), (["--hot-swap-at", "2"], "--hot-swap-at"),
    (["--bc-weight", "nan"], "--bc-weight"), (["--shift", "mars"], "--shift"),
    (["--scratch", "--snapshot", "x.pt"], "--scratch")])
def test_sim_finetune_options_refuse_nonsense_before_any_work(tmp_path, capsys, args, option):
    from drqv2_ros.demo.sim_finetune import sim_finetune_main

    with pytest.raises(SystemExit) as exc:
        sim_finetune_main(["--out", str(tmp_path / "run"), *args])
    assert exc.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
