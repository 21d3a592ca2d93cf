"""Reduced visual meshes for the 'fast' render: the STL reader refuses malformed files with
the reason at bounded cost; the reduction keeps the shape's extent."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from drqv2_ros.robot.sim_meshes import MAX_TRIANGLES, decimated_mesh, read_binary_stl

TETRA = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
FACES = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]


def _stl(path, faces=FACES, count=None, verts=TETRA):
    body = b"".join(struct.pack("<12fH", 0, 0, 0, *verts[a], *verts[b], *verts[c], 0)
                    for a, b, c in faces)
    path.write_bytes(b"\0" * 80 + struct.pack("<I", len(faces) if count is None else count)
                     + body)
    return path


def test_reads_a_binary_stl_with_shared_vertices(tmp_path):
    v, f = read_binary_stl(_stl(tmp_path / "t.stl"))
    assert v.shape == (4, 3) and f.shape == (4, 3)
    # every triangle maps back to its corners
    for (a, b, c), tri in zip(FACES, f):
        np.testing.assert_array_equal(v[tri], TETRA[[a, b, c]])


@pytest.mark.parametrize("case", ["short", "ascii", "truncated", "bomb", "nan"])
def test_refuses_malformed_files_with_the_reason(tmp_path, case):
    p = tmp_path / "bad.stl"
    if case == "short":
        p.write_bytes(b"solid x")
        match = "too short"
    elif case == "ascii":
        p.write_bytes(b"solid tetra\n" + b"facet normal 0 0 1\n" * 20 + b"endsolid\n")
        match = "do not hold|more than"  # its text read as a triangle count
    elif case == "truncated":
        _stl(p, count=4)
        p.write_bytes(p.read_bytes()[:-30])
        match = "do not hold"
    elif case == "bomb":  # a header claiming a huge mesh: refused before any allocation
        _stl(p, count=MAX_TRIANGLES + 1)
        match = "more than"
    else:
        verts = TETRA.copy()
        verts[1, 0] = np.nan
        _stl(p, verts=verts)
        match = "non-finite"
    with pytest.raises(ValueError, match=match):
        read_binary_stl(p)


def test_reduction_of_a_shipped_part_keeps_its_extent():
    pytest.importorskip("fast_simplification")
    pytest.importorskip("mujoco")
    from drqv2_ros.robot.kinematics import asset_dir

    try:
        path = str(asset_dir() / "assets" / "moving_jaw_so101_v1.stl")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    v0, f0 = read_binary_stl(path)
    v1, f1 = decimated_mesh(path, 0.1)
    assert len(f1) < 0.6 * len(f0)
    assert f1.min() >= 0 and f1.max() < len(v1)
    np.testing.assert_allclose(v1.min(0), v0.min(0), atol=2e-3)  # within 2 mm (the part is ~8 cm)
    np.testing.assert_allclose(v1.max(0), v0.max(0), atol=2e-3)
    with pytest.raises(ValueError, match="keep_fraction"):
        decimated_mesh(path, 0.0)
