import os

import numpy as np
import pytest

from lit3d.files import atomic_output, atomic_save_npz, atomic_write_bytes


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("writer died")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.bin"]


def test_a_finished_write_replaces_the_file(tmp_path):
    path = tmp_path / "out.npz"
    atomic_save_npz(path, a=np.arange(3))
    atomic_save_npz(path, a=np.arange(5.0), b=np.eye(2))
    with np.load(path) as f:
        np.testing.assert_array_equal(f["a"], np.arange(5.0))
        np.testing.assert_array_equal(f["b"], np.eye(2))
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]


def test_a_written_file_gets_the_permissions_open_gives(tmp_path):
    atomic_write_bytes(tmp_path / "atomic.bin", b"x")
    (tmp_path / "plain.bin").write_bytes(b"x")  # open() applies the process's umask
    assert os.stat(tmp_path / "atomic.bin").st_mode == os.stat(tmp_path / "plain.bin").st_mode
