"""Hardening item 4: shutdown never raises and never hangs, and leaves nothing behind.

Shutdown right after a worker was SIGKILLed with 50 tasks queued on 2 workers;
shutdown(wait=False, cancel_futures=True) with a task stuck in time.sleep(10**6), then
terminate_workers(); the stop ladder on a task that ignores SIGTERM; shutdown from a
done-callback; shutdown twice from two threads. No exception in any thread (threading.excepthook),
no failure of the manager thread (it logs CRITICAL on "safepool"), no process or fd left.
"""
import os
import signal
import threading
import time
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool

import pytest
import tasks
from conftest import assert_started_once, wait_for_pid_file, wait_until
from hardening_helpers import (  # noqa: F401  (clean, quiet, stdlib_helpers: fixtures)
    clean,
    gone,
    quiet,
    returns_within,
    stdlib_helpers,
    thread_errors,
)

from safepool import SafeProcessPoolExecutor, WorkerLostError

# Every test checks that it left no process (forkserver workers included) and no fd.
pytestmark = pytest.mark.usefixtures("clean", "quiet")


def settled(future):
    """A future that ended: its result, its exception, or 'cancelled'."""
    assert future.done(), "a future was left pending"
    if future.cancelled():
        return "cancelled"
    return future.exception() or future.result()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("cancel_futures", [False, True])
def test_shutdown_right_after_sigkill_with_50_tasks_queued(tmp_path,
                                                           cancel_futures):
    pid_a, pid_b, release = (str(tmp_path / n) for n in ("a", "b", "release"))
    ex = SafeProcessPoolExecutor(max_workers=2)
    victim = ex.submit(tasks.park, pid_a)
    other = ex.submit(tasks.block_until, pid_b, release)
    a, b = int(wait_for_pid_file(pid_a)), int(wait_for_pid_file(pid_b))
    queued = [ex.submit(tasks.square, i) for i in range(50)]
    open(release, "w").close()
    os.kill(a, signal.SIGKILL)
    # No wait for the crash to be noticed: shutdown races with it.
    returns_within(lambda: ex.shutdown(wait=True, cancel_futures=cancel_futures), 60,
                   "shutdown()")

    assert isinstance(victim.exception(timeout=0), WorkerLostError)
    assert other.result(timeout=0) == b
    for i, f in enumerate(queued):
        outcome = settled(f)
        if cancel_futures and outcome == "cancelled":
            continue
        assert outcome == i * i, f"queued task {i}: {outcome!r}"
    if not cancel_futures:
        assert not any(f.cancelled() for f in queued)
    assert gone(a) and gone(b)


@pytest.mark.timeout(90)
def test_shutdown_nowait_cancel_futures_with_stuck_task_then_terminate_workers(
        tmp_path):
    path = str(tmp_path / "pid")
    ex = SafeProcessPoolExecutor(max_workers=2)
    stuck = ex.submit(tasks.park, path, 10 ** 6)
    pid = int(wait_for_pid_file(path))
    queued = [ex.submit(tasks.square, i) for i in range(20)]

    start = time.monotonic()
    returns_within(lambda: ex.shutdown(wait=False, cancel_futures=True), 10, "shutdown()")
    assert time.monotonic() - start < 5, "shutdown(wait=False) waited"
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)
    # Queued work was cancelled or ran on the free worker; none is left pending.
    wait_until(lambda: all(f.done() for f in queued), 30, message="queued futures settle")
    for i, f in enumerate(queued):
        assert settled(f) in ("cancelled", i * i)
    assert any(f.cancelled() for f in queued)
    # wait=False does not stop running work (as in the stdlib): the stuck task still runs.
    assert not stuck.done() and not gone(pid)

    returns_within(ex.terminate_workers, 10, "terminate_workers()")
    exc = stuck.exception(timeout=30)
    assert isinstance(exc, BrokenProcessPool) and not isinstance(exc, CancelledError)
    wait_until(lambda: gone(pid), 15, message=f"stuck worker {pid} stopped")
    wait_until(lambda: not ex._manager.thread.is_alive(), 15, message="manager thread ends")
    assert ex.shutdown(wait=True) is True


@pytest.mark.timeout(90)
def test_stop_ladder_kills_a_task_ignoring_sigterm_and_its_children(tmp_path):
    path = str(tmp_path / "pid")
    ex = SafeProcessPoolExecutor(max_workers=1)
    stuck = ex.submit(tasks.park_ignoring_sigterm, path)
    worker, child = (int(x) for x in wait_for_pid_file(path).split())
    ex.shutdown(wait=False, cancel_futures=True)
    start = time.monotonic()
    ex.terminate_workers()  # SIGTERM is ignored: the ladder must go on to SIGKILL the tree
    assert isinstance(stuck.exception(timeout=30), BrokenProcessPool)
    wait_until(lambda: gone(worker) and gone(child), 15, message="worker and its child gone")
    assert time.monotonic() - start < 10
    returns_within(ex.shutdown, 15, "shutdown()")


@pytest.mark.timeout(90)
def test_shutdown_timeout_stops_a_stuck_task(tmp_path):
    path = str(tmp_path / "pid")
    ex = SafeProcessPoolExecutor(max_workers=1)
    stuck = ex.submit(tasks.park, path, 10 ** 6)
    pid = int(wait_for_pid_file(path))
    start = time.monotonic()
    finished = returns_within(lambda: ex.shutdown(wait=True, timeout=0.5), 30, "shutdown()")
    assert finished is False, "shutdown(timeout=) must say it did not finish in time"
    assert time.monotonic() - start < 15
    assert isinstance(stuck.exception(timeout=0), BrokenProcessPool)
    wait_until(lambda: gone(pid), 15, message=f"worker {pid} stopped")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("cancel_futures", [False, True])
def test_shutdown_from_a_done_callback(tmp_path, cancel_futures):
    pid_path, release = str(tmp_path / "pid"), str(tmp_path / "release")
    ex = SafeProcessPoolExecutor(max_workers=2)
    first = ex.submit(tasks.block_until, pid_path, release)
    wait_for_pid_file(pid_path)
    later = [ex.submit(tasks.sleep_and_return, 0.01, i) for i in range(10)]
    seen = {}

    def callback(future):
        try:
            seen["returned"] = ex.shutdown(wait=True, cancel_futures=cancel_futures)
        except BaseException as exc:  # noqa: B036 - the test reports it
            seen["raised"] = exc

    first.add_done_callback(callback)
    open(release, "w").close()
    wait_until(lambda: seen, 30, message="the callback ran")
    assert "raised" not in seen, seen
    assert first.result(timeout=0) > 0
    # Nothing hangs: every future settles, and shutdown from this thread returns too.
    wait_until(lambda: all(f.done() for f in later), 30, message="later futures settle")
    for i, f in enumerate(later):
        outcome = settled(f)
        assert outcome == i or (cancel_futures and outcome == "cancelled"), outcome
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)
    returns_within(ex.shutdown, 30, "shutdown() after the callback's")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("second", ["wait", "nowait_cancel"])
def test_shutdown_twice_from_two_threads(second):
    ex = SafeProcessPoolExecutor(max_workers=2)
    futures = [ex.submit(tasks.sleep_and_return, 0.02, i) for i in range(30)]
    wait_until(lambda: ex.stats().workers_busy, 30, message="work running")
    barrier = threading.Barrier(2)
    returned = []

    def call(kwargs):
        barrier.wait(10)
        returned.append(ex.shutdown(**kwargs))

    kwargs = {"wait": True} if second == "wait" else {"wait": False, "cancel_futures": True}
    threads = [threading.Thread(target=call, args=({"wait": True},)),
               threading.Thread(target=call, args=(kwargs,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a shutdown() call hangs"
    assert len(returned) == 2
    for i, f in enumerate(futures):
        outcome = settled(f)
        assert outcome == i or (second == "nowait_cancel" and outcome == "cancelled"), outcome
    assert not ex._manager.thread.is_alive()


class _Gate:
    """An argument whose pickling (in the caller's thread, inside submit) waits for the test."""

    def __init__(self):
        self.entered = threading.Event()
        self.go = threading.Event()

    def __reduce__(self):
        self.entered.set()
        self.go.wait(30)
        return (int, (5,))


@pytest.mark.timeout(90)
def test_submit_racing_shutdown_never_leaves_a_future_pending():
    ex = SafeProcessPoolExecutor(max_workers=1)
    assert ex.submit(tasks.square, 2).result(timeout=30) == 4  # manager and worker running
    gate = _Gate()
    outcome = {}

    def submitter():
        try:
            outcome["future"] = ex.submit(tasks.identity, gate)
        except RuntimeError as exc:  # refusing is fine: "cannot schedule after shutdown"
            outcome["refused"] = exc

    t = threading.Thread(target=submitter)
    t.start()
    assert gate.entered.wait(30)
    stopper = threading.Thread(target=ex.shutdown)
    stopper.start()
    # If shutdown() waits for the submit in progress (a lock, as in the stdlib), it cannot
    # finish before the gate opens: open it after a bounded wait either way.
    stopper.join(5)
    gate.go.set()
    t.join(30)
    stopper.join(30)
    assert not stopper.is_alive() and not t.is_alive()
    if "future" in outcome:
        future = outcome["future"]
        wait_until(future.done, 10, message="the racing submit's future to settle")
        # Accepted before shutdown() (which does not cancel): it must run, like all the rest.
        assert settled(future) == 5
    else:
        refused = outcome["refused"]
        assert type(refused) is RuntimeError and "shutdown" in str(refused), repr(refused)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", ["not_started", "in_initializer"])
def test_shutdown_cancel_futures_before_the_workers_started(tmp_path, workers):
    """shutdown(cancel_futures=True) on a pool whose workers have not started: before any
    worker process exists, or while every worker is still in its initializer. What had not
    started is cancelled and never runs; at most what the stdlib cannot cancel either (its
    call queue: max_workers + 1 tasks) is not cancelled, and it runs exactly once."""
    log, release = str(tmp_path / "starts"), str(tmp_path / "release")
    init_pid = str(tmp_path / "init")
    n, max_workers = 20, 2
    kwargs = {} if workers == "not_started" else {
        "initializer": tasks.park_until_file, "initargs": (init_pid, release)}
    ex = SafeProcessPoolExecutor(max_workers, **kwargs)
    try:
        futures = [ex.submit(tasks.record_start, log, str(i)) for i in range(n)]
        if workers == "in_initializer":
            wait_for_pid_file(init_pid)  # a worker process exists, and waits in its initializer
        ex.shutdown(wait=False, cancel_futures=True)
    finally:
        open(release, "w").close()
    assert returns_within(ex.shutdown, 30, "shutdown()") is True
    assert all(f.done() for f in futures), "a future was left pending"
    ran = [str(i) for i, f in enumerate(futures) if not f.cancelled()]
    assert len(ran) <= max_workers + 1, f"not cancelled: {ran}"
    for i in ran:
        assert futures[int(i)].result() == i
    assert_started_once(log, ran)  # and no cancelled task ever started
