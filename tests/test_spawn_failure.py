"""Starting a worker can fail (EAGAIN from fork under a pids cgroup limit, EMFILE): the pool
retries, and only a run of failures breaks it, with an error that says why."""
import errno

import pytest
import tasks

import safepool._manager
import safepool._process
from safepool import BrokenProcessPool, SafeProcessPoolExecutor


@pytest.fixture
def failing_spawns(monkeypatch):
    """Make the next N worker starts fail with EAGAIN, as fork() does at a pids limit."""
    real = safepool._process.WorkerProcess
    left = {"n": 0}

    def start(*args, **kwargs):
        if left["n"]:
            left["n"] -= 1
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(safepool._process, "WorkerProcess", start)
    return left


@pytest.mark.timeout(60)
def test_a_failed_worker_start_is_retried(failing_spawns, clean_process):
    failing_spawns["n"] = safepool._manager.STARTUP_FAILURE_LIMIT - 1
    with SafeProcessPoolExecutor(1) as ex:
        assert ex.submit(tasks.square, 3).result(timeout=30) == 9
        assert failing_spawns["n"] == 0


@pytest.mark.timeout(60)
def test_worker_starts_that_keep_failing_break_the_pool(failing_spawns, clean_process):
    failing_spawns["n"] = 100
    with SafeProcessPoolExecutor(1) as ex:
        future = ex.submit(tasks.square, 3)
        with pytest.raises(BrokenProcessPool, match="Resource temporarily unavailable"):
            future.result(timeout=30)
        with pytest.raises(BrokenProcessPool):
            ex.submit(tasks.square, 4)
    assert failing_spawns["n"] == 100 - safepool._manager.STARTUP_FAILURE_LIMIT
