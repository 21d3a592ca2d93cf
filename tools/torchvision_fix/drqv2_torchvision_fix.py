"""Set-up workaround for a wheel mismatch, installed by tools/setup.sh into the set-up
venv only (``drqv2_torchvision_fix.pth`` imports this module at interpreter start). It is
not part of drqv2_ros and mocks nothing.

The only torchvision wheel for torch 2.13 on PyPI (0.28.0) is a CUDA build: its compiled
``_C.so`` needs ``libtorch_cuda.so`` / ``libc10_cuda.so``, which a CPU torch lacks, so
torchvision runs without its C++ operators, and ``torchvision/_meta_registrations.py`` then
calls ``torch.library.register_fake("torchvision::nms")`` (and ``qnms``) unguarded, which
raises ``operator torchvision::nms does not exist``: ``import torchvision`` fails, and with
it most of LeRobot.

The fix: before torchvision is first imported, define the schemas of those two operators
(no kernel: ``torchvision.ops.nms`` still fails loudly, as it should). It acts lazily, on the
first ``import torchvision`` of a process and only there (a meta-path finder that removes
itself at once, so a process that never imports torchvision pays ~nothing), and only where
the mismatch exists: when torchvision's extension provably cannot be loaded against the
installed torch (``torch.ops.load_library`` on it fails). With a torchvision built for your
torch (e.g. from the PyTorch CPU index), it does nothing.
"""

from __future__ import annotations

import sys

_kept: list = []  # the Library object must stay alive for its definitions to stay


def _fix() -> str:
    import glob
    import importlib.util
    import os

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.origin:
        return "no torchvision"
    ext = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))
    if not ext:
        return "no compiled extension"
    import torch

    try:
        torch.ops.load_library(ext[0])
        return "extension loads: nothing to fix"
    except (OSError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _kept.append(lib)
    return "defined torchvision::nms and torchvision::qnms schemas (no kernels)"


class _FirstTorchvisionImport:
    """Meta-path finder: on the first ``import torchvision``, remove itself, apply the fix,
    and let the normal import go on (it never serves a module itself)."""

    outcome = ""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        try:
            _FirstTorchvisionImport.outcome = _fix()
        except Exception as exc:  # never break an import that would otherwise run
            _FirstTorchvisionImport.outcome = f"not applied: {type(exc).__name__}: {exc}"
        return None


if os_environ_off := __import__("os").environ.get("DRQV2_TORCHVISION_FIX") == "0":
    pass
elif "torchvision" not in sys.modules and not any(
        isinstance(f, _FirstTorchvisionImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _FirstTorchvisionImport())
