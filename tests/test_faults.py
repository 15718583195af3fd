"""Faults a run must survive or refuse cleanly: the cores it was given, two runs in one folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from yolopt.errors import YoloptError
from yolopt.fileio import FolderLock
from yolopt.machine import _cgroup_cpu_quota, usable_cpus


def test_usable_cpus_follows_the_affinity():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this platform")
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from yolopt.machine import usable_cpus, machine_info; from yolopt.runtime import default_threads; "
            "print(usable_cpus(), machine_info()['usable_cpus'], default_threads(), default_threads(2))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "1", "1", "1"]
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


def test_cgroup_quota_is_read(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    assert _cgroup_cpu_quota(tmp_path) is None


def test_folder_lock_refuses_a_second_run_and_dies_with_its_holder(tmp_path):
    with FolderLock(tmp_path / "run", "optimize"):
        with pytest.raises(YoloptError, match=r"another optimize is writing into this folder \(pid \d+"):
            with FolderLock(tmp_path / "run", "optimize"):
                pass
    with FolderLock(tmp_path / "run"):  # released on exit
        pass
    # a holder killed with SIGKILL leaves the lock file, not the lock
    code = ("import sys, time; from yolopt.fileio import FolderLock; l = FolderLock(sys.argv[1]).__enter__(); "
            "print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "k")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(YoloptError, match="another run"):
            FolderLock(tmp_path / "k").__enter__()
    finally:
        p.kill()
        p.wait()
    with FolderLock(tmp_path / "k"):
        assert (tmp_path / "k" / FolderLock.NAME).exists()


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from yolopt.data.synth import generate

    return generate(tmp_path_factory.mktemp("faults") / "d", images=12, classes=2, imgsz=64, seed=3)


def test_two_trainings_into_one_folder_the_second_is_refused(tiny_set, tmp_path):
    """Two real processes: the second `yolopt train` into the same --out stops at once, naming the first."""
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "yolopt", "train", "--data", str(tiny_set), "--cfg", "yolov5n", "--imgsz", "64",
            "--batch", "4", "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)]
    first = subprocess.Popen([*args, "--epochs", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        lock = out / FolderLock.NAME
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.stderr.read().decode()[-1000:]
        second = subprocess.run([*args, "--epochs", "1"], capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another training run is writing into this folder (pid {first.pid}" in lines[0]
    finally:
        first.kill()
        first.wait()
