"""Recycling workers (issue 3, item 3): by task count, age and resident memory.

A worker over a limit finishes its current task, exits cleanly and is replaced; no task fails
or is lost because of recycling.
"""
import collections
from concurrent.futures import wait

import pytest
import tasks
from conftest import gone, wait_until

from safepool import SafeProcessPoolExecutor, TaskTimeoutError

MB = 1024 * 1024




@pytest.mark.timeout(60)
def test_max_worker_lifetime_replaces_a_worker_after_its_current_task(clean_process):
    with SafeProcessPoolExecutor(1, max_worker_lifetime=0.5) as ex:
        # The task outlives the worker's 0.5 s lifetime: it is not interrupted...
        first = ex.submit(tasks.sleep_then_getpid, 1.2).result(timeout=20)
        # ...and the worker is replaced right after it.
        wait_until(lambda: gone(first), 20, message="the old worker to exit")
        wait_until(lambda: ex.stats().workers_replaced["recycle"] == 1, 20,
                   message="the old worker counted as recycled")
        second = ex.submit(tasks.getpid).result(timeout=20)
        assert second != first
        stats = ex.stats()
        assert stats.tasks_failed == 0 and stats.tasks_completed == 2
        assert stats.workers_replaced["crash"] == 0


@pytest.mark.timeout(60)
def test_max_worker_lifetime_loses_no_task(clean_process):
    # 24 short tasks across several 0.4 s lifetimes on two workers: every one succeeds.
    with SafeProcessPoolExecutor(2, max_worker_lifetime=0.4) as ex:
        fs = [ex.submit(tasks.sleep_then_getpid, 0.1) for _ in range(24)]
        pids = [f.result(timeout=30) for f in fs]
        assert len(set(pids)) >= 3, "no worker was replaced"
        stats = ex.stats()
        assert stats.tasks_failed == 0 and stats.tasks_completed == 24
        assert stats.workers_replaced["recycle"] >= 1
        assert stats.workers_replaced["crash"] == 0


@pytest.mark.timeout(60)
def test_max_worker_memory_replaces_a_worker_after_a_big_task(clean_process):
    with SafeProcessPoolExecutor(1, max_worker_memory=150 * MB) as ex:
        small = [ex.submit(tasks.getpid).result(timeout=20) for _ in range(3)]
        assert len(set(small)) == 1, "a worker under the memory limit was recycled"
        assert ex.stats().workers_replaced["recycle"] == 0
        # One task leaves 200 MB resident in its worker; the tasks queued behind it are fine.
        big = ex.submit(tasks.allocate_mb, 200)
        after = [ex.submit(tasks.getpid) for _ in range(5)]
        big_pid = big.result(timeout=30)
        assert big_pid == small[0]
        pids = [f.result(timeout=30) for f in after]
        wait_until(lambda: gone(big_pid), 20, message="the worker over the limit to exit")
        wait_until(lambda: ex.stats().workers_replaced["recycle"] == 1, 20,
                   message="the worker over the limit counted as recycled")
        assert ex.submit(tasks.getpid).result(timeout=20) != big_pid
        # Tasks already sent to it when it went over may have run there (it finishes those),
        # then only its replacement serves: never all five on the worker over the limit, and
        # never the old worker again once the new one has served.
        kept = pids.count(big_pid)
        assert pids[:kept] == [big_pid] * kept and kept < len(pids), pids
        assert len(set(pids[kept:])) == 1, pids
        stats = ex.stats()
        assert stats.workers_replaced["recycle"] == 1
        assert stats.workers_replaced["crash"] == 0
        assert stats.tasks_failed == 0 and stats.tasks_completed == 10


@pytest.mark.timeout(60)
def test_max_tasks_per_child_recycles_and_counts(clean_process):
    with SafeProcessPoolExecutor(1, max_tasks_per_child=2) as ex:
        fs = [ex.submit(tasks.getpid) for _ in range(6)]
        pids = [f.result(timeout=30) for f in fs]
        assert sorted(collections.Counter(pids).values()) == [2, 2, 2]
        # The third worker retires after its second task, with nothing left to do.
        wait_until(lambda: ex.stats().workers_replaced["recycle"] == 3, 20,
                   message="three recycled workers")
        stats = ex.stats()
        assert stats.tasks_failed == 0 and stats.tasks_completed == 6
        assert stats.workers_replaced["crash"] == 0
        # The third worker's replacement started at once, with no task waiting for it.
        wait_until(lambda: ex.stats().workers_started == 4, 20, message="the replacement")
        assert ex.submit(tasks.getpid).result(timeout=20) not in pids
        assert ex.stats().workers_started == 4


@pytest.mark.timeout(60)
def test_task_timeout_still_applies_on_a_worker_past_its_lifetime(clean_process, tmp_path):
    """The worker's lifetime ends while a task runs: the task may finish, but its own timeout
    must still stop it."""
    ex = SafeProcessPoolExecutor(1, max_worker_lifetime=0.3)
    try:
        f = ex.schedule(tasks.park, (str(tmp_path / "pid"),), timeout=1.5)
        done, _ = wait([f], timeout=8)
        assert done, "the task outlived its 1.5 s timeout by 8 s"
        assert isinstance(f.exception(), TaskTimeoutError)
    finally:
        ex.kill_workers()
        ex.shutdown(wait=True)
