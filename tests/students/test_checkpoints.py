"""Student checkpoints: written whole with a SHA-256 sidecar, verified on load, one-line errors naming the file."""
import errno
import hashlib
import os
from pathlib import Path

import pytest

from lit3d.students.checkpoints import CheckpointFileError, read_verified, sidecar, write_checkpoint
from lit3d.students.module import StudentModule


def test_sidecar_is_sha256sum_of_the_file(tmp_path):
    path = tmp_path / "best.ckpt"
    write_checkpoint(path, b"weights v1")
    assert path.read_bytes() == b"weights v1"
    assert sidecar(path).read_text() == f"{hashlib.sha256(b'weights v1').hexdigest()}  best.ckpt\n"
    assert read_verified(path) == b"weights v1"


@pytest.mark.parametrize("damage", ["bit flip", "truncation"])
def test_damaged_checkpoint_is_a_one_line_error_naming_it(tmp_path, damage):
    path = tmp_path / "last.ckpt"
    write_checkpoint(path, bytes(range(256)) * 4)
    data = bytearray(path.read_bytes())
    if damage == "bit flip":
        data[100] ^= 0x04
    else:
        data = data[:-10]
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointFileError, match=f"checkpoint {path} is corrupt") as e:
        read_verified(path)
    assert "\n" not in str(e.value)


def test_kill_between_sidecar_and_rename_keeps_the_old_checkpoint_valid(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    write_checkpoint(path, b"epoch 1")

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies after the sidecar was replaced, before the checkpoint

    monkeypatch.setattr(os, "replace", lambda src, dst, real=os.replace: (killed if str(dst) == str(path) else real)(src, dst))
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(path, b"epoch 2")
    monkeypatch.undo()
    assert sidecar(path).read_text().splitlines()[0].split()[0] == hashlib.sha256(b"epoch 2").hexdigest()
    assert read_verified(path) == b"epoch 1"  # the previous hash is still accepted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best.ckpt"
    write_checkpoint(path, b"good weights")
    real = Path.write_bytes

    def half_then_full(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(CheckpointFileError, match=f"cannot write checkpoint {path}: no space left on device; the "
                                                  f"previous checkpoint is kept"):
        write_checkpoint(path, b"new weights, longer than the old ones")
    monkeypatch.undo()
    assert read_verified(path) == b"good weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "best.ckpt.sha256"]  # no temporary left


def test_random_bytes_without_sidecar_are_unreadable_naming_the_file(tmp_path):
    path = tmp_path / "x.ckpt"
    path.write_bytes(os.urandom(2000))
    with pytest.raises(CheckpointFileError, match=f"checkpoint {path} is unreadable") as e:
        StudentModule.load(path)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        StudentModule.load(tmp_path / "missing.ckpt")
