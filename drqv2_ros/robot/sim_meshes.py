"""Reduced visual meshes for the opt-in ``fast`` sim render. ROS-free.

On a CPU (Mesa llvmpipe) the wrist camera's render is bound by the triangles it draws: the
three meshes it sees (fixed-jaw servo, wrist-roll follower, moving jaw) hold ~76k
triangles, far more than an 84x84 policy image can show. :func:`decimated_mesh` reads a
shipped binary STL and reduces it with quadric edge collapse (``fast-simplification``);
the result replaces the mesh of a *visual* geom only (its collision twin keeps the original
asset, and the SO-101 bodies carry explicit inertials), so physics is unchanged.

Reductions are computed once per (file, target) in a process and kept; a file that is not a
well-formed binary STL is refused with the reason before anything is allocated from it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

_STL_HEADER = 84
_STL_RECORD = np.dtype([("normal", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
#: Refuse meshes beyond this (a malformed count must not allocate gigabytes).
MAX_TRIANGLES = 2_000_000


def read_binary_stl(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (n, 3) float64, faces (m, 3) int64) of a binary STL, shared vertices
    merged (STL stores three copies per triangle)."""
    path = Path(path)
    size = path.stat().st_size
    if size < _STL_HEADER:
        raise ValueError(f"{path}: {size} bytes, too short for a binary STL")
    with path.open("rb") as f:
        head = f.read(_STL_HEADER)
        n = int(np.frombuffer(head, "<u4", 1, 80)[0])
        if n > MAX_TRIANGLES:
            raise ValueError(f"{path}: {n} triangles (more than {MAX_TRIANGLES})")
        if size != _STL_HEADER + n * _STL_RECORD.itemsize:
            raise ValueError(f"{path}: {size} bytes do not hold the {n} triangles its header "
                             "names (an ASCII or truncated STL?)")
        rec = np.frombuffer(f.read(), _STL_RECORD, n)
    tri = rec["v"].reshape(-1, 3).astype(np.float64)
    if not np.all(np.isfinite(tri)):
        raise ValueError(f"{path}: non-finite vertex coordinates")
    verts, index = np.unique(tri, axis=0, return_inverse=True)
    return verts, index.reshape(-1, 3).astype(np.int64)


@functools.lru_cache(maxsize=32)
def decimated_mesh(path: str, keep_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (n, 3) float64, faces (m, 3) int32) of the STL at ``path`` reduced towards
    ``keep_fraction`` of its triangles (quadric decimation stops earlier where the shape
    would break: the SO-101 parts keep 35-50 %). Returned arrays are read-only (cached)."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    verts, faces = read_binary_stl(path)
    if keep_fraction < 1.0:
        try:
            import fast_simplification
        except ImportError as exc:
            raise ImportError("the 'fast' render needs fast-simplification: "
                              "pip install 'drqv2_ros[sim]'") from exc
        verts, faces = fast_simplification.simplify(verts, faces,
                                                    target_reduction=1.0 - keep_fraction,
                                                    agg=9)
    verts = np.ascontiguousarray(verts, dtype=np.float64)
    faces = np.ascontiguousarray(faces, dtype=np.int32)
    verts.flags.writeable = faces.flags.writeable = False
    return verts, faces
