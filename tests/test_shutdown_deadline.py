"""Shutdown with a deadline (issue 3, item 4), and the 3.14 terminate_workers()/kill_workers().

``shutdown(wait=True, timeout=T)`` returns True when everything finished in time; otherwise it
stops what remains through the stop ladder, the unfinished futures fail with a clear error,
nothing is left behind, and it returns False.
"""
import time
from concurrent.futures.process import BrokenProcessPool

import pytest
import tasks
from conftest import gone, leftover_children, wait_for_pid_file, wait_until

from safepool import SafeProcessPoolExecutor, TaskTimeoutError


def settled(future):
    """Done, and either cancelled or failed: never a result, never pending."""
    return future.done() and (future.cancelled() or future.exception() is not None)


@pytest.mark.timeout(60)
def test_shutdown_with_timeout_returns_true_when_all_finished(clean_process):
    ex = SafeProcessPoolExecutor(2)
    fs = [ex.submit(tasks.sleep_and_return, 0.2, i) for i in range(6)]
    assert ex.shutdown(wait=True, timeout=30) is True
    assert [f.result(timeout=0) for f in fs] == list(range(6))
    assert not leftover_children()


@pytest.mark.timeout(60)
def test_shutdown_without_timeout_returns_true(clean_process):
    ex = SafeProcessPoolExecutor(1)
    assert ex.submit(tasks.square, 3).result(timeout=20) == 9
    assert ex.shutdown() is True
    # Never started: nothing to wait for.
    assert SafeProcessPoolExecutor(1).shutdown(wait=True, timeout=1) is True


@pytest.mark.timeout(60)
def test_shutdown_timeout_stops_a_stuck_task_and_returns_false(clean_process, tmp_path):
    pid_file = str(tmp_path / "pid")
    ex = SafeProcessPoolExecutor(2)
    stuck = ex.submit(tasks.spin_ignoring_sigterm, pid_file)  # SIGTERM will not do
    quick = ex.submit(tasks.sleep_and_return, 0.1, "quick")
    pid = int(wait_for_pid_file(pid_file))
    assert quick.result(timeout=20) == "quick"
    t0 = time.monotonic()
    assert ex.shutdown(wait=True, timeout=1.0) is False
    elapsed = time.monotonic() - t0
    assert elapsed >= 1.0, f"shutdown gave up after {elapsed:.2f}s, before its timeout"
    assert elapsed < 20, f"shutdown(timeout=1.0) took {elapsed:.1f}s"
    # The stuck future failed with an error that says why; nothing is left behind, at once.
    exc = stuck.exception(timeout=0)
    assert isinstance(exc, BrokenProcessPool), repr(exc)
    assert "shutdown" in str(exc) and "spin_ignoring_sigterm" in str(exc), str(exc)
    assert gone(pid), "shutdown returned before the stuck worker was reaped"
    assert not leftover_children()
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)


@pytest.mark.timeout(60)
def test_shutdown_timeout_settles_queued_tasks_too(clean_process, tmp_path):
    pid_file = str(tmp_path / "pid")
    ex = SafeProcessPoolExecutor(1)
    stuck = ex.submit(tasks.park, pid_file)
    queued = [ex.submit(tasks.square, i) for i in range(5)]
    pid = int(wait_for_pid_file(pid_file))
    assert ex.shutdown(wait=True, timeout=0.5) is False
    assert isinstance(stuck.exception(timeout=0), BrokenProcessPool)
    # None ran (one worker, stuck); each ended cancelled or failed, none is left pending.
    assert all(settled(f) for f in queued), [f._state for f in queued]
    assert gone(pid)


@pytest.mark.timeout(60)
def test_shutdown_returns_when_no_worker_is_alive(clean_process):
    """After the last worker was recycled (or stopped for a timeout or a cancel) with no work
    left, the pool has no worker but its replacement, which may still be starting:
    shutdown() must still return at once."""
    ex = SafeProcessPoolExecutor(1, max_tasks_per_child=1)
    try:
        ex.submit(tasks.getpid).result(timeout=20)
        wait_until(lambda: ex.stats().workers_replaced["recycle"] == 1, 20,
                   message="the worker to retire")
        t0 = time.monotonic()
        finished = ex.shutdown(wait=True, timeout=5)
        assert finished is True, f"shutdown() hung for {time.monotonic() - t0:.1f}s"
    finally:
        ex.kill_workers()
        ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_shutdown_returns_after_a_timeout_left_no_worker(clean_process, tmp_path):
    ex = SafeProcessPoolExecutor(1)
    try:
        f = ex.schedule(tasks.park, (str(tmp_path / "pid"),), timeout=0.3)
        assert isinstance(f.exception(timeout=20), TaskTimeoutError)
        wait_until(lambda: ex.stats().workers_replaced["timeout"] == 1, 20,
                   message="the worker to be reaped")
        t0 = time.monotonic()
        finished = ex.shutdown(wait=True, timeout=5)
        assert finished is True, f"shutdown() hung for {time.monotonic() - t0:.1f}s"
    finally:
        ex.kill_workers()
        ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_terminate_workers_stops_running_and_queued_work(clean_process, tmp_path):
    files = [str(tmp_path / f"pid{i}") for i in range(2)]
    ex = SafeProcessPoolExecutor(2)
    running = [ex.submit(tasks.park, path) for path in files]
    queued = [ex.submit(tasks.square, i) for i in range(4)]
    pids = [int(wait_for_pid_file(path)) for path in files]
    ex.terminate_workers()
    # (Not concurrent.futures.wait(): like the stdlib's, a future cancelled without being
    # "notified" never counts as done there.)
    wait_until(lambda: all(f.done() for f in running + queued), 20, message="futures settled")
    for f in running:
        assert isinstance(f.exception(), BrokenProcessPool), repr(f.exception())
    assert all(settled(f) for f in queued)
    wait_until(lambda: all(gone(pid) for pid in pids), 20, message="workers reaped")
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)
    ex.shutdown(wait=True)
    assert not leftover_children()


@pytest.mark.timeout(60)
def test_terminate_workers_escalates_for_a_task_ignoring_sigterm(clean_process, tmp_path):
    pid_file = str(tmp_path / "pid")
    ex = SafeProcessPoolExecutor(1)
    f = ex.submit(tasks.spin_ignoring_sigterm, pid_file)
    pid = int(wait_for_pid_file(pid_file))
    ex.terminate_workers()
    assert isinstance(f.exception(timeout=20), BrokenProcessPool)
    wait_until(lambda: gone(pid), 20, message="the SIGTERM-ignoring worker to be killed")
    ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_kill_workers_kills_at_once(clean_process, tmp_path):
    pid_file, child_file = str(tmp_path / "pid"), str(tmp_path / "child")
    ex = SafeProcessPoolExecutor(2)
    spinning = ex.submit(tasks.spin_ignoring_sigterm, pid_file)
    with_child = ex.submit(tasks.park_with_child, child_file)
    pid = int(wait_for_pid_file(pid_file))
    worker_pid, child_pid = map(int, wait_for_pid_file(child_file).split())
    ex.kill_workers()
    for f in (spinning, with_child):
        assert isinstance(f.exception(timeout=20), BrokenProcessPool)
    wait_until(lambda: gone(pid) and gone(worker_pid) and gone(child_pid), 20,
               message="both workers and the task's `sleep` child to be killed")
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)
    ex.shutdown(wait=True)
