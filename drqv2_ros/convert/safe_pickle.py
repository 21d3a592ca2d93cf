"""Load a torch snapshot without executing arbitrary pickled code.

``torch.save`` files are zip archives holding a pickle (``data.pkl``) plus raw tensor
storages. Unpickling can call any importable function, so a hostile ``.pt`` can run
``os.system`` on load. RoboBase snapshots also pickle an omegaconf ``DictConfig``, which
``torch.load(weights_only=True)`` refuses (its unpickler cannot rebuild the ``defaultdict``
inside omegaconf's metadata), and a plain ``torch.load(weights_only=False)`` trusts the file.

Here torch's zip reader is used with a restricted unpickler: every global the pickle refers
to is checked against :data:`ALLOWED_GLOBALS` (tensor rebuild helpers, a few builtins and
containers, omegaconf's config/node/metadata classes) BEFORE it is imported or called. Any
other global (``posix.system``, ``builtins.eval``, ``subprocess.Popen`` ...) raises
:class:`UnsafePickleError` naming it, and loading stops with nothing executed.

The omegaconf config is then turned into plain dicts/lists by :func:`to_plain`, which
resolves only plain ``${a.b}`` references itself and never runs an omegaconf resolver.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import os
import pickle
import re
import types
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from drqv2_ros.policy.file_limits import (
    DEFAULT_LIMITS,
    CheckpointError,
    LoadLimits,
    check_torch_zip,
    open_regular,
)

__all__ = [
    "ALLOWED_GLOBALS",
    "UnsafePickleError",
    "safe_torch_load",
    "to_plain",
    "resolve_interpolations",
]

# (module, name) pairs the unpickler may import. Everything else is refused.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        # tensors
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "Size"),
        # plain containers / scalars
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "bool"),
        ("builtins", "str"),
        ("builtins", "bytes"),
        ("builtins", "complex"),
        ("typing", "Any"),
        # omegaconf config tree (as pickled by RoboBase's Workspace.save_snapshot)
        ("omegaconf.dictconfig", "DictConfig"),
        ("omegaconf.listconfig", "ListConfig"),
        ("omegaconf.base", "Metadata"),
        ("omegaconf.base", "ContainerMetadata"),
        ("omegaconf.nodes", "AnyNode"),
        ("omegaconf.nodes", "StringNode"),
        ("omegaconf.nodes", "IntegerNode"),
        ("omegaconf.nodes", "FloatNode"),
        ("omegaconf.nodes", "BooleanNode"),
        ("omegaconf.nodes", "BytesNode"),
    }
)


class UnsafePickleError(CheckpointError):
    """The pickle references a global outside the allow-list (nothing was executed)."""

    def __init__(self, path: str, global_name: str):
        self.global_name = global_name
        super().__init__(
            f"{path}: refusing to load: the pickle references '{global_name}', which is not "
            "on the allow-list of a RoboBase snapshot (tensors, builtins containers, "
            "omegaconf). Nothing was executed. Do not load this file with torch.load."
        )


class _ViewBudget:
    """Caps what the pickle's tensor views may describe: no view may hold more elements
    than its storage (a stride-0 or overlapping expansion of a small storage would be
    materialised in full by the first copy), and all views together at most twice the file's
    bytes (many views of one storage)."""

    def __init__(self, path: str, file_bytes: int):
        self.path, self.left = path, 2 * file_bytes

    def rebuild_tensor(self, storage, storage_offset, size, stride, *rest):
        numel = 1
        for n in size:
            numel *= int(n)
        with warnings.catch_warnings():  # TypedStorage's deprecation notice
            warnings.simplefilter("ignore")
            held, item = storage.size(), storage.element_size()
        if numel > held:
            raise CheckpointError(
                f"{self.path}: a tensor view declares {numel} elements over a storage of "
                f"{held} (stride-0 or overlapping expansion); refused")
        self.left -= numel * item
        if self.left < 0:
            raise CheckpointError(f"{self.path}: tensor views declare more than twice the "
                                  "file's bytes; refused")
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, *rest)


def _bytes(*args):
    """``bytes`` without its ``bytes(n)`` form (n zero bytes from a 5-byte pickle)."""
    if args and isinstance(args[0], int):
        raise CheckpointError("the pickle calls bytes(<int>) (allocation from a count); refused")
    return bytes(*args)


def _make_pickle_module(path: str, allowed: frozenset[tuple[str, str]],
                        budget: _ViewBudget) -> types.ModuleType:
    replaced = {("torch._utils", "_rebuild_tensor_v2"): budget.rebuild_tensor,
                ("builtins", "bytes"): _bytes}

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            # Python-2 era names (protocol 2 pickles say __builtin__.long).
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
            if (module, name) not in allowed:
                raise UnsafePickleError(path, f"{module}.{name}")
            if (module, name) in replaced:
                return replaced[(module, name)]
            return getattr(importlib.import_module(module), name)

    def _refuse_load(*_a, **_k):
        raise CheckpointError(f"{path}: legacy (non-zip) torch files are not supported")

    mod = types.ModuleType("drqv2_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    mod.load = _refuse_load  # type: ignore[attr-defined]
    mod.__name__ = "drqv2_restricted_pickle"
    return mod


def _check_head(path: Path, f, size: int) -> None:
    head = f.read(8)
    f.seek(0)
    if size == 0:
        raise CheckpointError(f"{path}: empty file, not a torch snapshot")
    if zipfile.is_zipfile(f):
        f.seek(0)
        return
    if head.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            f"{path}: truncated or corrupt torch file (zip archive without its end record; "
            f"{size} bytes)"
        )
    if head[:1] == b"\x80":
        raise CheckpointError(
            f"{path}: legacy (non-zip) torch format or raw pickle; not supported"
        )
    raise CheckpointError(f"{path}: not a torch file (no zip archive signature)")


def safe_torch_load(
    path: str | os.PathLike, *, extra_allowed: frozenset[tuple[str, str]] = frozenset(),
    limits: LoadLimits = DEFAULT_LIMITS,
) -> Any:
    """``torch.load`` onto the CPU with the global allow-list; never executes other code,
    never reads a non-regular file, never allocates more than twice the file's bytes.

    Raises :class:`UnsafePickleError` for a forbidden global and :class:`CheckpointError`
    for a missing, non-regular, oversized, empty, truncated or non-torch file.
    """
    path = Path(path)
    if os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise CheckpointError(
            "TORCH_FORCE_WEIGHTS_ONLY_LOAD is set: torch then refuses the restricted "
            "unpickler this loader uses (RoboBase's omegaconf cfg needs it); unset it"
        )
    with open_regular(path, limits.max_file_bytes, "snapshot file") as f:
        size = os.fstat(f.fileno()).st_size
        _check_head(path, f, size)
        check_torch_zip(f, path, limits)
        module = _make_pickle_module(str(path), ALLOWED_GLOBALS | extra_allowed,
                                     _ViewBudget(str(path), size))
        try:
            return torch.load(f, map_location="cpu", weights_only=False, pickle_module=module)
        except CheckpointError:
            raise
        except Exception as exc:  # zip/pickle/storage errors of a damaged file
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{path}: corrupt or truncated torch file ({type(exc).__name__}: {msg[:200]})"
            ) from None


# ---------------------------------------------------------------- omegaconf -> plain dicts
_INTERP = re.compile(r"\$\{([^${}]+)\}")
_FULL_INTERP = re.compile(r"^\$\{([A-Za-z0-9_.\-]+)\}$")


#: Most nodes (dict entries, list items, scalars) a snapshot cfg may expand to, and its
#: deepest nesting: RoboBase's cfg has ~300 nodes, 5 levels. A self-referencing container
#: or a "billion laughs" of shared lists would otherwise recurse or expand without end.
MAX_CFG_NODES = 100_000
MAX_CFG_DEPTH = 64


class _Budget:
    def __init__(self) -> None:
        self.left = MAX_CFG_NODES

    def take(self, depth: int) -> None:
        self.left -= 1
        if self.left < 0:
            raise CheckpointError(f"snapshot cfg expands to more than {MAX_CFG_NODES} values "
                                  "(shared or self-referencing containers?); refused")
        if depth > MAX_CFG_DEPTH:
            raise CheckpointError(f"snapshot cfg nested deeper than {MAX_CFG_DEPTH} levels "
                                  "(self-referencing?); refused")


def to_plain(cfg: Any) -> Any:
    """omegaconf DictConfig/ListConfig (or dicts) -> plain dict/list, interpolations resolved.

    Only plain ``${path.to.key}`` references are resolved (here, without omegaconf
    resolvers); anything else (``${oc.env:...}``, custom resolvers) is left as the literal
    string. ``???`` (missing) values are kept as the string ``"???"``. Bounded: at most
    :data:`MAX_CFG_NODES` values, :data:`MAX_CFG_DEPTH` levels (else CheckpointError).
    """
    try:
        plain = _container(cfg, _Budget(), 0)
        return resolve_interpolations(plain) if isinstance(plain, dict) else plain
    except RecursionError:
        raise CheckpointError("snapshot cfg is self-referencing; refused") from None


def _container(obj: Any, budget: _Budget, depth: int) -> Any:
    budget.take(depth)
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        DictConfig = ListConfig = ()  # type: ignore[assignment]
    if DictConfig and isinstance(obj, (DictConfig, ListConfig)):
        try:
            obj = OmegaConf.to_container(obj, resolve=False, throw_on_missing=False)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"snapshot cfg is not a readable omegaconf config ({type(exc).__name__})"
            ) from None
    if isinstance(obj, Mapping):
        return {str(k)[:1000]: _container(v, budget, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_container(v, budget, depth + 1) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return f"<{type(obj).__name__}>"


def _lookup(root: dict, dotted: str) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(dotted)
    return node


def resolve_interpolations(root: dict, max_depth: int = 16) -> dict:
    """Resolve ``${a.b}`` references inside a plain config dict (no resolvers, no env);
    bounded like :func:`to_plain` (references that expand without end are refused)."""
    budget = _Budget()

    def resolve(value: Any, depth: int, nest: int) -> Any:
        budget.take(nest)
        if isinstance(value, dict):
            return {k: resolve(v, depth, nest + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, depth, nest + 1) for v in value]
        if not isinstance(value, str) or "${" not in value or depth > max_depth:
            return value
        m = _FULL_INTERP.match(value)
        if m:
            try:
                return resolve(_lookup(root, m.group(1)), depth + 1, nest + 1)
            except KeyError:
                return value

        def sub(mm: re.Match) -> str:
            key = mm.group(1)
            if ":" in key:  # a resolver call: never run it
                return mm.group(0)
            try:
                target = resolve(_lookup(root, key), depth + 1, nest + 1)
            except KeyError:
                return mm.group(0)
            return str(target)[:10_000] if not isinstance(target, (dict, list)) else mm.group(0)

        return _INTERP.sub(sub, value)

    return resolve(root, 0, 0)
