"""Cancelling a running task (issue 3, item 2): ``cancel_running=True``.

``future.cancel()`` on a running task returns True, the future ends cancelled, the worker is
stopped and replaced, and other tasks are untouched; ``asyncio.wait_for`` around
``run_in_executor`` really stops the work. The default keeps the stdlib's semantics.
"""
import asyncio
import os
from concurrent.futures import CancelledError

import pytest
import tasks
from conftest import (
    assert_runs_at_once,
    assert_started_once,
    gone,
    wait_for_pid_file,
    wait_until,
)

from safepool import SafeProcessPoolExecutor


def force_shutdown(ex):
    """Cleanup that cannot hang on a task left running by a bug under test."""
    ex.kill_workers()
    ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_cancel_running_task_stops_and_replaces_its_worker(clean_process, tmp_path):
    pid_file = str(tmp_path / "pid")
    other_pid_file, release = str(tmp_path / "other"), str(tmp_path / "release")
    ex = SafeProcessPoolExecutor(2, cancel_running=True)
    try:
        f = ex.submit(tasks.park, pid_file)
        other = ex.submit(tasks.park_until_file, other_pid_file, release, "other")
        pid = int(wait_for_pid_file(pid_file))
        other_pid = int(wait_for_pid_file(other_pid_file))
        assert f.running()

        assert f.cancel() is True
        assert f.cancelled() and f.done()
        with pytest.raises(CancelledError):
            f.result(timeout=0)
        wait_until(lambda: gone(pid), 20, message="the cancelled task's worker to be reaped")

        # The other worker and its task are untouched.
        assert not gone(other_pid) and not other.done()
        open(release, "w").close()
        assert other.result(timeout=20) == "other"
        # The stopped worker was replaced: two tasks really run at the same time again, on two
        # live processes, neither of them the stopped one.
        assert_runs_at_once(ex, 2, str(tmp_path / "meet"), not_on={pid})
        wait_until(lambda: ex.stats().workers_replaced["cancel"] == 1, 20,
                   message="one worker replaced for a cancel")
        assert ex.stats().tasks_failed == 0
    finally:
        force_shutdown(ex)


@pytest.mark.timeout(60)
def test_cancel_running_stops_a_task_that_ignores_sigterm(clean_process, tmp_path):
    pid_file = str(tmp_path / "pid")
    ex = SafeProcessPoolExecutor(1, cancel_running=True)
    try:
        f = ex.submit(tasks.spin_ignoring_sigterm, pid_file)
        pid = int(wait_for_pid_file(pid_file))
        assert f.cancel() is True and f.cancelled()
        wait_until(lambda: gone(pid), 20, message="the SIGTERM-ignoring worker to be killed")
        assert ex.submit(tasks.getpid).result(timeout=20) != pid
    finally:
        force_shutdown(ex)


@pytest.mark.timeout(60)
def test_cancel_running_queued_tasks_behind_it_still_run(clean_process, tmp_path):
    """Tasks sent to the same worker behind the cancelled one are re-run elsewhere."""
    pid_file = str(tmp_path / "pid")
    ex = SafeProcessPoolExecutor(1, cancel_running=True)
    try:
        f = ex.submit(tasks.park, pid_file)
        rest = [ex.submit(tasks.square, i) for i in range(5)]
        pid = int(wait_for_pid_file(pid_file))
        assert f.cancel() is True
        assert [r.result(timeout=20) for r in rest] == [0, 1, 4, 9, 16]
        wait_until(lambda: gone(pid), 20, message="the cancelled task's worker to be reaped")
    finally:
        force_shutdown(ex)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("victim", [
    "park",  # dies of the SIGTERM that stops it
    "return_on_sigterm",  # catches SIGTERM and returns: its worker lives on until SIGKILL
])
def test_cancel_running_tasks_queued_behind_it_run_exactly_once(clean_process, tmp_path,
                                                                  victim):
    """The pool warm and busy, tasks queued behind the running task that is cancelled: each of
    them starts exactly once, and the cancelled task is never started again."""
    log, pid_path = str(tmp_path / "starts"), str(tmp_path / "pid")
    ex = SafeProcessPoolExecutor(1, cancel_running=True)
    try:
        assert list(ex.map(tasks.square, range(300))) == [i * i for i in range(300)]  # warm
        f = ex.submit(tasks.record_then, log, "victim", victim, pid_path)
        queued = [ex.submit(tasks.record_start, log, str(i)) for i in range(30)]
        pid = int(wait_for_pid_file(pid_path))
        assert f.cancel() is True
        assert [q.result(timeout=30) for q in queued] == [str(i) for i in range(30)]
        wait_until(lambda: gone(pid), 20, message="the cancelled task's worker to be reaped")
        assert_started_once(log, ["victim", *range(30)])
    finally:
        force_shutdown(ex)


@pytest.mark.timeout(60)
def test_default_cancel_of_a_running_task_returns_false(clean_process, tmp_path):
    pid_file, release = str(tmp_path / "pid"), str(tmp_path / "release")
    with SafeProcessPoolExecutor(1) as ex:
        f = ex.submit(tasks.park_until_file, pid_file, release, "finished")
        pid = int(wait_for_pid_file(pid_file))
        assert f.running()
        assert f.cancel() is False
        assert not f.cancelled() and f.running()
        assert not gone(pid)
        open(release, "w").close()
        assert f.result(timeout=20) == "finished"
        assert ex.stats().workers_replaced["cancel"] == 0


@pytest.mark.timeout(60)
def test_asyncio_wait_for_run_in_executor_stops_the_worker(clean_process, tmp_path):
    pid_file = str(tmp_path / "pid")

    async def main(ex):
        loop = asyncio.get_running_loop()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.run_in_executor(ex, tasks.park, pid_file), 0.5)

    ex = SafeProcessPoolExecutor(1, cancel_running=True)
    try:
        first = ex.submit(tasks.getpid).result(timeout=20)  # a ready worker: the task starts now
        asyncio.run(main(ex))
        pid = int(wait_for_pid_file(pid_file))
        assert pid == first
        wait_until(lambda: gone(pid), 20, message="the worker running the timed-out coroutine's "
                                                  "task to be stopped")
        assert ex.submit(tasks.getpid).result(timeout=20) != pid
        wait_until(lambda: ex.stats().workers_replaced["cancel"] == 1, 20,
                   message="one worker replaced for a cancel")
    finally:
        force_shutdown(ex)


@pytest.mark.timeout(60)
def test_cancelled_task_waiting_in_a_workers_pipe_never_runs(clean_process, tmp_path):
    """A task submitted behind a running one, then cancelled, never runs. (Were it sent ahead
    to the busy worker's pipe, its future would say RUNNING: with cancel_running=True,
    cancel() still returns True, so its work must not happen either.)"""
    first_pid, release = str(tmp_path / "first"), str(tmp_path / "release")
    second_pid = str(tmp_path / "second")
    ex = SafeProcessPoolExecutor(1, cancel_running=True)
    try:
        first = ex.submit(tasks.park_until_file, first_pid, release, "first")
        wait_for_pid_file(first_pid)
        second = ex.submit(tasks.park, second_pid)
        # Queued, or already sent to the busy worker's pipe (then its future says RUNNING):
        # either way cancel() succeeds, so the work must never happen.
        assert second.cancel() is True
        assert second.cancelled()
        open(release, "w").close()
        assert first.result(timeout=20) == "first"
        # One worker: if the cancelled park() ran, this would wait 600 s.
        assert ex.submit(tasks.getpid).result(timeout=10)
        assert not os.path.exists(second_pid), "a cancelled task ran"
    finally:
        force_shutdown(ex)


@pytest.mark.timeout(60)
def test_task_cancelled_before_its_worker_is_ready_never_runs(clean_process, tmp_path):
    """A task waits in the parent until a worker is READY (its initializer returned): while
    the only worker is still in its initializer the future is PENDING, not RUNNING, so
    cancel() takes it back for sure, and neither that worker nor any other ever runs it."""
    release, pid_file = str(tmp_path / "release"), str(tmp_path / "pid")
    init_pid_file = str(tmp_path / "init")
    ex = SafeProcessPoolExecutor(1, cancel_running=True, initializer=tasks.park_until_file,
                                 initargs=(init_pid_file, release))
    try:
        f = ex.submit(tasks.park, pid_file)
        starting = int(wait_for_pid_file(init_pid_file))
        assert not f.running(), "a task was handed to a worker still in its initializer"
        assert f.cancel() is True and f.cancelled()
        open(release, "w").close()  # the initializer returns
        # One worker: if the cancelled park() ran, this would wait 600 s.
        assert ex.submit(tasks.getpid).result(timeout=10) == starting
        assert not os.path.exists(pid_file), "a cancelled task ran"
    finally:
        force_shutdown(ex)
