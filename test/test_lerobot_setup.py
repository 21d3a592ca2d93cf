"""The set-up's LeRobot environment: LeRobot 0.4.4's policy, dataset and rl modules import
next to torch 2.13.0+cpu, through the set-up's torchvision import fix (tools/torchvision_fix),
which acts only on the first ``import torchvision`` and only where torchvision's extension
cannot load; torchvision's compiled operators still fail loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PREFIX = Path(sys.prefix)
pytestmark = pytest.mark.skipif(
    not (PREFIX / ".drqv2_stamps").is_dir(),
    reason=f"not the venv made by tools/setup.sh ({PREFIX})")


def py(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240, env={**os.environ, **env})


def test_lerobot_modules_import_and_torch_stays_cpu_2_13():
    r = py("import torch, torchvision, torchvision.transforms\n"
           "import lerobot.configs.policies, lerobot.policies.pretrained\n"
           "import lerobot.policies.factory, lerobot.datasets.lerobot_dataset\n"
           "import lerobot.rl.buffer, lerobot.rl.learner\n"
           "from lerobot.utils.import_utils import register_third_party_plugins\n"
           "import drqv2_torchvision_fix as f\n"
           "print(torch.__version__, torchvision.__version__)\n"
           "print(f._FirstTorchvisionImport.outcome)")
    assert r.returncode == 0, r.stderr[-3000:]
    versions, outcome = r.stdout.strip().splitlines()[-2:]
    assert versions.startswith("2.13.0") and "+cpu" in versions
    assert outcome  # it ran on the first torchvision import and said what it did


def test_the_fix_is_lazy_and_only_where_the_extension_cannot_load():
    # a process that never imports torchvision imports neither torch nor torchvision
    r = py("import sys\n"
           "print('torch' in sys.modules, 'torchvision' in sys.modules,\n"
           "      any(type(f).__name__ == '_FirstTorchvisionImport' for f in sys.meta_path))")
    assert r.returncode == 0 and r.stdout.split() == ["False", "False", "True"], r.stderr
    r = py("import torchvision, drqv2_torchvision_fix as f, sys\n"
           "print(f._FirstTorchvisionImport.outcome)\n"
           "print(any(type(x).__name__ == '_FirstTorchvisionImport' for x in sys.meta_path))")
    assert r.returncode == 0, r.stderr[-2000:]
    outcome, still = r.stdout.strip().splitlines()[-2:]
    assert still == "False"  # removed itself on the first import
    if outcome.startswith("extension loads"):
        pytest.skip("torchvision here is built for this torch: the fix has nothing to do")
    assert outcome.startswith("defined torchvision::nms"), outcome
    # without the fix, the mismatch is what the README's troubleshooting describes
    r = py("import torchvision", DRQV2_TORCHVISION_FIX="0")
    assert r.returncode != 0 and "torchvision::nms does not exist" in r.stderr
    # the operators have schemas, no kernels: using them fails loudly
    r = py("import torch, torchvision.ops as o\n"
           "o.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)")
    assert r.returncode != 0 and "Couldn't load custom C++ ops" in r.stderr
