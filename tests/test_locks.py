"""``file_lock``: a second holder waits for the first (another process), logging whom it waits for."""
import logging
import os
import subprocess
import sys
import time

import pytest

import lit3d.locks
from lit3d.locks import LockBusy, file_lock

HOLD = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lock", sys.argv[3])  # by path: no torch to import
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
with lock.file_lock(sys.argv[1], "test resource"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_second_holder_waits_for_the_first_and_names_it(tmp_path, caplog):
    path = tmp_path / "sub" / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "1.5", lit3d.locks.__file__], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with caplog.at_level(logging.INFO, logger="lit3d.locks"):
            with file_lock(path, "test resource"):
                waited = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert waited > 0.5
    assert f"test resource is in use by pid {holder.pid}" in caplog.text and "-c" in caplog.text


def test_lock_of_a_killed_holder_is_free(tmp_path):
    path = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "60", lit3d.locks.__file__], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # SIGKILL: no cleanup, the file stays
    holder.wait()
    t0 = time.monotonic()
    with file_lock(path, "test resource"):
        assert time.monotonic() - t0 < 1.0


def test_without_waiting_a_held_lock_is_lock_busy_naming_the_holder(tmp_path):
    path = tmp_path / ".lock"
    with file_lock(path, "resource A"):
        with pytest.raises(LockBusy, match=f"resource B is in use by pid {os.getpid()}"):
            with file_lock(path, "resource B", wait=False):
                pass
    with file_lock(path, "resource B", wait=False):  # free again once released
        pass
