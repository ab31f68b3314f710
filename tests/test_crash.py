"""Hardening item 1: a crash costs one task, not the pool.

A worker killed with SIGKILL mid-task (what the OOM killer does), a task calling os._exit(3), a
task that segfaults: only the task that was running fails, with WorkerLostError (a
BrokenProcessPool) naming the pid, the signal or exit code, the task and the likely cause; the
worker is replaced and every other submitted task completes.
"""
import os
import signal
from concurrent.futures.process import BrokenProcessPool

import pytest
import tasks
from conftest import assert_runs_at_once, assert_started_once, wait_for_pid_file, wait_until
from hardening_helpers import clean, gone, returns_within, stdlib_helpers  # noqa: F401

from safepool import SafeProcessPoolExecutor, WorkerLostError

# Every test checks that it left no process (forkserver workers included) and no fd.
pytestmark = pytest.mark.usefixtures("clean")


def assert_pool_serves(ex, lost_pid, workers, directory):
    """The pool works after the crash at full strength: ``workers`` tasks run at the same time
    on as many live processes, none of them the lost one, which was reaped.

    (Checking only that the lost pid serves no more would pass on a pool that never replaces
    a crashed worker: the survivors alone satisfy it.)
    """
    assert list(ex.map(tasks.square, range(10))) == [i * i for i in range(10)]
    wait_until(lambda: gone(lost_pid), 10, message=f"worker {lost_pid} reaped")
    assert_runs_at_once(ex, workers, str(directory), not_on={lost_pid})
    assert ex.stats().workers_replaced["crash"] == 1


@pytest.mark.timeout(60)
def test_sigkill_mid_task_fails_only_that_task(ctx, tmp_path):
    path = str(tmp_path / "pid")
    with SafeProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
        victim = ex.submit(tasks.park, path)
        others = [ex.submit(tasks.sleep_and_return, 0.01, i) for i in range(40)]
        pid = int(wait_for_pid_file(path))
        os.kill(pid, signal.SIGKILL)

        exc = victim.exception(timeout=30)
        assert isinstance(exc, WorkerLostError)
        assert isinstance(exc, BrokenProcessPool), "existing `except BrokenProcessPool` works"
        assert exc.pid == pid
        assert exc.signal == signal.SIGKILL
        assert exc.exitcode == -signal.SIGKILL
        message = str(exc)
        assert str(pid) in message
        assert "SIGKILL" in message
        assert "out-of-memory" in message
        assert "park" in message and "park" in exc.task
        # Every other task completes, including those queued behind the killed one.
        assert [f.result(timeout=30) for f in others] == list(range(40))
        assert_pool_serves(ex, pid, 2, tmp_path / "meet")


@pytest.mark.timeout(60)
def test_tasks_queued_on_the_killed_worker_are_not_lost(tmp_path):
    # One worker: whatever was sent to it behind the running task must be run by its
    # replacement, not failed with it.
    path = str(tmp_path / "pid")
    with SafeProcessPoolExecutor(max_workers=1) as ex:
        victim = ex.submit(tasks.park, path)
        queued = [ex.submit(tasks.square, i) for i in range(20)]
        pid = int(wait_for_pid_file(path))
        os.kill(pid, signal.SIGKILL)
        assert isinstance(victim.exception(timeout=30), WorkerLostError)
        assert [f.result(timeout=30) for f in queued] == [i * i for i in range(20)]
        assert_pool_serves(ex, pid, 1, tmp_path / "meet")


def warm_up(ex):
    """Many short tasks first: the pool then batches and pipelines (what it does when busy)."""
    assert list(ex.map(tasks.square, range(300))) == [i * i for i in range(300)]


@pytest.mark.timeout(90)
def test_tasks_queued_behind_a_killed_task_run_exactly_once(tmp_path):
    """The pool warm and busy, tasks queued behind the one whose worker is SIGKILLed: each of
    them starts exactly once, and the killed task is never started again."""
    log, pid_path = str(tmp_path / "starts"), str(tmp_path / "pid")
    with SafeProcessPoolExecutor(max_workers=1) as ex:
        warm_up(ex)
        victim = ex.submit(tasks.record_then, log, "victim", "park", pid_path)
        queued = [ex.submit(tasks.record_start, log, str(i)) for i in range(30)]
        pid = int(wait_for_pid_file(pid_path))
        os.kill(pid, signal.SIGKILL)
        assert isinstance(victim.exception(timeout=30), WorkerLostError)
        assert [f.result(timeout=30) for f in queued] == [str(i) for i in range(30)]
        assert_started_once(log, ["victim", *range(30)])
        assert ex.stats().workers_replaced["crash"] == 1


@pytest.mark.timeout(90)
def test_tasks_batched_with_a_crashing_task_run_exactly_once(tmp_path):
    """A task that kills its worker in the middle of a stream of short tasks (sent in batches
    and pipelined): those before it are not run again, those behind it are run once."""
    log = str(tmp_path / "starts")
    with SafeProcessPoolExecutor(max_workers=2) as ex:
        warm_up(ex)
        before = [ex.submit(tasks.record_start, log, str(i)) for i in range(60)]
        victim = ex.submit(tasks.record_then, log, "victim", "kill_self")
        after = [ex.submit(tasks.record_start, log, str(i)) for i in range(60, 120)]
        assert isinstance(victim.exception(timeout=30), WorkerLostError)
        assert [f.result(timeout=30) for f in before + after] == [str(i) for i in range(120)]
        assert_started_once(log, ["victim", *range(120)])
        assert ex.stats().workers_replaced["crash"] == 1


@pytest.mark.timeout(60)
def test_task_killing_its_own_worker(tmp_path):
    with SafeProcessPoolExecutor(max_workers=2) as ex:
        before = [ex.submit(tasks.square, i) for i in range(5)]
        victim = ex.submit(tasks.kill_self, signal.SIGKILL)
        after = [ex.submit(tasks.square, i) for i in range(5, 10)]
        exc = victim.exception(timeout=30)
        assert isinstance(exc, WorkerLostError)
        assert exc.signal == signal.SIGKILL
        assert "kill_self" in str(exc)
        assert [f.result(timeout=30) for f in before + after] == [i * i for i in range(10)]
        assert_pool_serves(ex, exc.pid, 2, tmp_path / "meet")


@pytest.mark.timeout(60)
def test_os_exit_fails_only_that_task(ctx, tmp_path):
    with SafeProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
        others = [ex.submit(tasks.square, i) for i in range(10)]
        victim = ex.submit(tasks.exit_now, 3)
        more = [ex.submit(tasks.square, i) for i in range(10, 20)]
        exc = victim.exception(timeout=30)
        assert isinstance(exc, WorkerLostError)
        assert exc.exitcode == 3
        assert exc.signal is None
        message = str(exc)
        assert str(exc.pid) in message
        assert "exit" in message and "3" in message
        assert "exit_now" in message
        assert [f.result(timeout=30) for f in others + more] == [i * i for i in range(20)]
        assert_pool_serves(ex, exc.pid, 2, tmp_path / "meet")


@pytest.mark.timeout(60)
def test_segfault_fails_only_that_task(tmp_path):
    with SafeProcessPoolExecutor(max_workers=2) as ex:
        others = [ex.submit(tasks.square, i) for i in range(10)]
        victim = ex.submit(tasks.segfault)
        more = [ex.submit(tasks.square, i) for i in range(10, 20)]
        exc = victim.exception(timeout=30)
        assert isinstance(exc, WorkerLostError)
        assert exc.signal == signal.SIGSEGV
        message = str(exc)
        assert "SIGSEGV" in message and str(exc.pid) in message and "segfault" in message
        assert [f.result(timeout=30) for f in others + more] == [i * i for i in range(20)]
        assert_pool_serves(ex, exc.pid, 2, tmp_path / "meet")


@pytest.mark.timeout(90)
def test_a_stream_of_crashing_tasks_never_breaks_the_pool():
    # Crashes of workers that had started their task are not a crash loop: each costs one task.
    with SafeProcessPoolExecutor(max_workers=2) as ex:
        futures = []
        for i in range(8):
            futures.append(ex.submit(tasks.exit_now, 3))
            futures.append(ex.submit(tasks.square, i))
        for i in range(8):
            assert isinstance(futures[2 * i].exception(timeout=30), WorkerLostError)
            assert futures[2 * i + 1].result(timeout=30) == i * i
        assert ex.submit(tasks.square, 12).result(timeout=30) == 144
        assert ex.stats().workers_replaced["crash"] == 8


@pytest.mark.timeout(60)
def test_idle_workers_killed_do_not_break_the_pool(tmp_path):
    # The OOM killer may pick idle workers, several at once. A worker that was ready and had
    # served tasks is not a start-up failure: the pool must replace it, not break.
    release = str(tmp_path / "release")
    paths = [str(tmp_path / f"pid{i}") for i in range(3)]
    ex = SafeProcessPoolExecutor(max_workers=3)
    try:
        busy = [ex.submit(tasks.block_until, p, release) for p in paths]
        pids = [int(wait_for_pid_file(p)) for p in paths]
        open(release, "w").close()
        assert sorted(f.result(timeout=30) for f in busy) == sorted(pids)
        wait_until(lambda: ex.stats().workers_busy == 0, 10, message="workers idle")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: all(gone(pid) for pid in pids), 10, message="workers dead")
        wait_until(lambda: ex.stats().workers_replaced["crash"] == 3, 10,
                   message="deaths noticed")
        assert list(ex.map(tasks.square, range(10))) == [i * i for i in range(10)]
        assert not set(ex.map(tasks.getpid, range(6))) & set(pids)
    finally:
        returns_within(ex.shutdown, 30, "shutdown()")


@pytest.mark.timeout(60)
def test_shutdown_after_the_only_idle_worker_was_killed():
    ex = SafeProcessPoolExecutor(max_workers=1)
    pid = ex.submit(tasks.getpid).result(timeout=30)
    os.kill(pid, signal.SIGKILL)
    # (Its replacement starts at once: shutdown() meets it starting or ready.)
    wait_until(lambda: ex.stats().workers_replaced["crash"] == 1, 10, message="death noticed")
    try:
        returns_within(ex.shutdown, 10, "shutdown()")
    finally:
        ex.shutdown(wait=True, timeout=3)  # wakes a manager stuck waiting (the old bug)


@pytest.mark.timeout(120)
def test_every_future_resolves_with_concurrent_submitters_and_crashes():
    # Several threads submit at once while workers keep dying under them: each future ends
    # with its result or, for the crashing tasks only, WorkerLostError.
    import threading

    with SafeProcessPoolExecutor(max_workers=2) as ex:
        out = {}

        def submitter(n):
            futures = []
            for i in range(60):
                if i % 20 == 7:
                    futures.append(("crash", ex.submit(tasks.exit_now, 3)))
                else:
                    futures.append((n * 1000 + i, ex.submit(tasks.identity, n * 1000 + i)))
            out[n] = futures

        threads = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        crashes = 0
        for futures in out.values():
            for expected, future in futures:
                if expected == "crash":
                    assert isinstance(future.exception(timeout=60), WorkerLostError)
                    crashes += 1
                else:
                    assert future.result(timeout=60) == expected
        assert crashes == 12
        assert ex.stats().workers_replaced["crash"] == 12
