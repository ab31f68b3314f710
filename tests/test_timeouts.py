"""Per-task timeouts (issue 3, item 1): ``task_timeout=`` and ``schedule(..., timeout=)``.

A task that passes its deadline fails with TaskTimeoutError; its worker's whole process tree is
stopped (even a task that ignores SIGTERM) and replaced; other tasks are untouched; the clock
starts when the task starts running. Real processes and signals only.
"""
import asyncio
import concurrent.futures
import inspect
import statistics
import time
from concurrent.futures import wait

import psutil
import pytest
import tasks
from conftest import (
    assert_runs_at_once,
    assert_started_once,
    gone,
    wait_for_pid_file,
    wait_until,
)

from safepool import SafeProcessPoolExecutor, TaskTimeoutError


def alive(pid):
    return not gone(pid)


def test_task_timeout_error_is_both_timeout_errors():
    assert issubclass(TaskTimeoutError, concurrent.futures.TimeoutError)
    assert issubclass(TaskTimeoutError, TimeoutError)


@pytest.mark.timeout(60)
def test_schedule_timeout_fails_future_stops_and_replaces_worker(clean_process, tmp_path):
    stuck_pid_file = str(tmp_path / "stuck")
    other_pid_file, release = str(tmp_path / "other"), str(tmp_path / "release")
    with SafeProcessPoolExecutor(2) as ex:
        stuck = ex.schedule(tasks.park, (stuck_pid_file,), timeout=1.0)
        other = ex.submit(tasks.park_until_file, other_pid_file, release, "other")
        stuck_pid = int(wait_for_pid_file(stuck_pid_file))
        other_pid = int(wait_for_pid_file(other_pid_file))
        assert stuck_pid != other_pid

        exc = stuck.exception(timeout=20)
        assert isinstance(exc, TaskTimeoutError), repr(exc)
        assert isinstance(exc, concurrent.futures.TimeoutError)
        assert isinstance(exc, TimeoutError)
        assert "park" in str(exc) and "1s" in str(exc), str(exc)
        with pytest.raises(TaskTimeoutError):
            stuck.result()
        wait_until(lambda: gone(stuck_pid), 15, message="the timed-out worker to be reaped")

        # The other worker and its task are untouched.
        assert alive(other_pid) and not other.done()
        open(release, "w").close()
        assert other.result(timeout=20) == "other"

        # The pool still has two workers' worth of service: two tasks really run at the same
        # time, on two live processes, neither of them the stopped one.
        assert_runs_at_once(ex, 2, str(tmp_path / "meet"), not_on={stuck_pid})
        stats = ex.stats()
        assert stats.workers_replaced["timeout"] == 1
        assert stats.tasks_failed == 1


@pytest.mark.timeout(60)
def test_executor_task_timeout_applies_to_submit_and_schedule_overrides_it(
        clean_process, tmp_path):
    with SafeProcessPoolExecutor(1, task_timeout=0.5) as ex:
        stuck = ex.submit(tasks.park, str(tmp_path / "pid"))
        assert isinstance(stuck.exception(timeout=20), TaskTimeoutError)
        # A longer per-task timeout wins over the executor's 0.5 s.
        assert ex.schedule(tasks.sleep_and_return, (1.0, "ok"), timeout=20).result(20) == "ok"
        # A shorter one too.
        short = ex.schedule(tasks.park, (str(tmp_path / "pid2"),), timeout=0.2)
        assert isinstance(short.exception(timeout=20), TaskTimeoutError)
        assert "0.2s" in str(short.exception())
        # Counted once the stopped worker has been reaped.
        wait_until(lambda: ex.stats().workers_replaced["timeout"] == 2, 20,
                   message="two workers replaced for a timeout")


@pytest.mark.timeout(60)
def test_timeout_stops_a_task_that_ignores_sigterm_and_spins(clean_process, tmp_path):
    pid_file = str(tmp_path / "pid")
    with SafeProcessPoolExecutor(1) as ex:
        f = ex.schedule(tasks.spin_ignoring_sigterm, (pid_file,), timeout=0.5)
        pid = int(wait_for_pid_file(pid_file))
        assert isinstance(f.exception(timeout=20), TaskTimeoutError)
        # SIGTERM is ignored: the stop ladder must go on to SIGKILL.
        wait_until(lambda: gone(pid), 20, message="the SIGTERM-ignoring worker to be killed")
        assert ex.submit(tasks.getpid).result(timeout=20) != pid


@pytest.mark.timeout(60)
def test_timeout_stops_the_workers_whole_process_tree(clean_process, tmp_path, ctx):
    pid_file = str(tmp_path / "pids")
    with SafeProcessPoolExecutor(1, mp_context=ctx) as ex:
        f = ex.schedule(tasks.park_with_child, (pid_file,), timeout=1.5)
        worker_pid, child_pid = map(int, wait_for_pid_file(pid_file).split())
        assert psutil.Process(child_pid).name() == "sleep"
        assert isinstance(f.exception(timeout=20), TaskTimeoutError)
        wait_until(lambda: gone(worker_pid) and gone(child_pid), 20,
                   message="the worker and its `sleep 600` child to be gone")
        assert ex.submit(tasks.getpid).result(timeout=20) not in (worker_pid, child_pid)


@pytest.mark.timeout(60)
def test_other_queued_tasks_survive_a_timeout(clean_process, tmp_path):
    """Tasks queued behind (or sent along with) the stuck one are re-run, not failed."""
    with SafeProcessPoolExecutor(1) as ex:
        stuck = ex.schedule(tasks.park, (str(tmp_path / "pid"),), timeout=0.5)
        rest = [ex.submit(tasks.getpid) for _ in range(4)]
        stuck_pid = int(wait_for_pid_file(str(tmp_path / "pid")))
        assert isinstance(stuck.exception(timeout=20), TaskTimeoutError)
        pids = [f.result(timeout=20) for f in rest]
        assert stuck_pid not in pids
        stats = ex.stats()
        assert stats.tasks_failed == 1 and stats.tasks_completed == 4


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stuck", [
    "park",  # dies of the SIGTERM that stops it
    # Catches SIGTERM and returns: its worker lives on until SIGKILL, a second later.
    "return_on_sigterm",
])
def test_tasks_queued_behind_a_timed_out_task_run_exactly_once(clean_process, tmp_path, stuck):
    """The pool warm and busy, tasks queued behind one that times out: each of them starts
    exactly once, and the timed-out task is never started again."""
    log, pid_path = str(tmp_path / "starts"), str(tmp_path / "pid")
    with SafeProcessPoolExecutor(1) as ex:
        assert list(ex.map(tasks.square, range(300))) == [i * i for i in range(300)]  # warm
        stuck_future = ex.schedule(tasks.record_then, (log, "stuck", stuck, pid_path),
                                   timeout=1.0)
        queued = [ex.submit(tasks.record_start, log, str(i)) for i in range(30)]
        wait_for_pid_file(pid_path)
        assert isinstance(stuck_future.exception(timeout=30), TaskTimeoutError)
        assert [f.result(timeout=30) for f in queued] == [str(i) for i in range(30)]
        assert_started_once(log, ["stuck", *range(30)])


@pytest.mark.timeout(60)
def test_timeout_clock_starts_when_the_task_starts_not_when_queued(clean_process):
    # One worker (cold: its start-up is not charged to the task either), three tasks of 0.6 s
    # with a 1.0 s timeout: the third waits 1.2 s in the queue and must still succeed.
    with SafeProcessPoolExecutor(1) as ex:
        fs = [ex.schedule(tasks.sleep_and_return, (0.6, i), timeout=1.0) for i in range(3)]
        assert [f.result(timeout=30) for f in fs] == [0, 1, 2]
        assert ex.stats().workers_replaced["timeout"] == 0


@pytest.mark.timeout(60)
def test_schedule_passes_fn_keyword_arguments_through(clean_process):
    with SafeProcessPoolExecutor(1) as ex:
        # fn's own `timeout` keyword goes to fn, with or without a task timeout.
        assert ex.schedule(tasks.takes_timeout_kwarg, (1,), {"timeout": 5}).result(20) == (1, 5)
        assert ex.schedule(tasks.takes_timeout_kwarg, [2], {"timeout": 6},
                           timeout=30).result(20) == (2, 6)
        assert ex.schedule(tasks.takes_timeout_kwarg, (3,)).result(20) == (3, None)
        # submit() is the stdlib's: a `timeout` keyword belongs to fn.
        assert ex.submit(tasks.takes_timeout_kwarg, 4, timeout=7).result(20) == (4, 7)
        with pytest.raises(ValueError):
            ex.schedule(tasks.square, (1,), timeout=0)
        with pytest.raises(ValueError):
            ex.schedule(tasks.square, (1,), timeout=-1)


def test_submit_signature_is_the_stdlibs():
    # submit(self, fn, /, *args, **kwargs): nothing of ours in front, so run_in_executor and
    # every other caller written for the stdlib keep working.
    P = inspect.Parameter
    ours = inspect.signature(SafeProcessPoolExecutor.submit).parameters
    assert [(p.name, p.kind) for p in ours.values()] == [
        ("self", P.POSITIONAL_ONLY), ("fn", P.POSITIONAL_ONLY),
        ("args", P.VAR_POSITIONAL), ("kwargs", P.VAR_KEYWORD)]
    schedule = inspect.signature(SafeProcessPoolExecutor.schedule).parameters
    assert schedule["timeout"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.timeout(60)
def test_run_in_executor_works_and_task_timeout_applies(clean_process, tmp_path):
    async def main(ex):
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(ex, tasks.add, 1, 2) == 3
        with pytest.raises(TaskTimeoutError):
            await loop.run_in_executor(ex, tasks.park, str(tmp_path / "pid"))

    with SafeProcessPoolExecutor(1, task_timeout=0.5) as ex:
        asyncio.run(main(ex))
        wait_until(lambda: ex.stats().workers_replaced["timeout"] == 1, 20,
                   message="one worker replaced for a timeout")


@pytest.mark.timeout(60)
def test_timeout_still_applies_on_a_worker_that_will_be_recycled(clean_process, tmp_path):
    """max_tasks_per_child=1 retires the worker when its task is sent: the task's timeout must
    still apply (the most common combination of the two options)."""
    ex = SafeProcessPoolExecutor(1, max_tasks_per_child=1)
    try:
        f = ex.schedule(tasks.park, (str(tmp_path / "pid"),), timeout=0.5)
        done, _ = wait([f], timeout=8)
        assert done, "the task outlived its 0.5 s timeout by 8 s"
        assert isinstance(f.exception(), TaskTimeoutError)
    finally:
        ex.kill_workers()
        ex.shutdown(wait=True)


@pytest.mark.timeout(90)
def test_measure_timeout_lateness(clean_process, tmp_path):
    """How late after its deadline a timed-out future fails. Printed (run with -s); asserted
    only loosely: never early, and a median far below the manager's 1 s liveness tick (a
    deadline the manager did not know about would be noticed only at that tick, e.g. for a
    task that submit() handed straight to an idle worker)."""
    timeout = 0.3
    late, reaped = [], []
    with SafeProcessPoolExecutor(1) as ex:
        for i in range(10):
            ex.submit(tasks.getpid).result(timeout=20)  # a ready, idle worker: no start-up cost
            failed_at = []
            pid_file = str(tmp_path / f"pid{i}")
            t0 = time.monotonic()
            f = ex.schedule(tasks.park, (pid_file,), timeout=timeout)
            f.add_done_callback(lambda _f, out=failed_at: out.append(time.monotonic()))
            assert isinstance(f.exception(timeout=20), TaskTimeoutError)
            pid = int(wait_for_pid_file(pid_file))
            wait_until(lambda pid=pid: gone(pid), 20, interval=0.002, message="worker reaped")
            t_reaped = time.monotonic()
            # The clock starts at or after submit(), so this is an upper bound on lateness.
            late.append(failed_at[0] - t0 - timeout)
            reaped.append(t_reaped - t0 - timeout)
    assert min(late) >= 0, f"a future failed before its deadline: {late}"
    assert statistics.median(late) < 0.25, f"timeouts noticed late: {late}"
    print(f"\n[timeout lateness] timeout={timeout}s, 10 runs, from submit() to the future failing, "
          f"minus the timeout: median {statistics.median(late) * 1000:.1f} ms, "
          f"min {min(late) * 1000:.1f} ms, max {max(late) * 1000:.1f} ms; "
          f"worker gone (polled every 2 ms): median {statistics.median(reaped) * 1000:.1f} ms")
