"""Drop-in API: SafeProcessPoolExecutor behaves as concurrent.futures.ProcessPoolExecutor.

submit / map / shutdown / the with block / initializer / mp_context / max_tasks_per_child, the
stdlib's errors for misuse (same type, same message), a cgroup-aware default worker count, and
asyncio's run_in_executor, including cancellation of work that has not started.
"""
import asyncio
import concurrent.futures
import multiprocessing
import os
import re
import sys
import threading

import psutil
import pytest
import tasks
from conftest import wait_until
from hardening_helpers import clean, gone, stdlib_helpers, stray_processes  # noqa: F401

import safepool
from safepool import SafeProcessPoolExecutor

# Every test checks that it left no process (forkserver workers included) and no fd.
pytestmark = pytest.mark.usefixtures("clean")


def stdlib_error(make):
    """What the stdlib's ProcessPoolExecutor raises for the same misuse (no process is started)."""
    with pytest.raises(Exception) as info:
        make(concurrent.futures.ProcessPoolExecutor)
    return type(info.value), str(info.value)


# ---- submit, map, futures -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_submit_returns_a_future_with_result_and_kwargs():
    with SafeProcessPoolExecutor(max_workers=2) as ex:
        future = ex.submit(tasks.add, 1, b=2)
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(timeout=30) == 3
        futures = [ex.submit(tasks.square, i) for i in range(20)]
        done, not_done = concurrent.futures.wait(futures, timeout=30)
        assert not not_done
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == \
            [i * i for i in range(20)]
        # The work really ran elsewhere.
        assert ex.submit(tasks.getpid).result(timeout=30) != os.getpid()


@pytest.mark.timeout(60)
def test_submit_fn_is_positional_only_as_in_the_stdlib():
    with SafeProcessPoolExecutor(max_workers=1) as ex:
        # ``fn`` may be passed on to the task as a keyword argument named fn.
        assert ex.submit(dict, fn=1).result(timeout=30) == {"fn": 1}
        with pytest.raises(TypeError):
            ex.submit(fn=tasks.square)


@pytest.mark.timeout(60)
def test_task_exception_is_raised_with_the_remote_traceback():
    with SafeProcessPoolExecutor(max_workers=1) as ex:
        future = ex.submit(tasks.raise_value_error, "boom")
        exc = future.exception(timeout=30)
        assert type(exc) is ValueError and str(exc) == "boom"
        assert "raise_value_error" in str(exc.__cause__), "the worker's traceback is attached"
        with pytest.raises(ValueError, match="boom"):
            future.result()
        # A task's exception costs nothing: the same worker keeps serving.
        assert ex.submit(tasks.square, 3).result(timeout=30) == 9
        assert ex.stats().workers_started == 1


@pytest.mark.timeout(60)
def test_map_keeps_order_zips_iterables_and_chunks():
    with SafeProcessPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(tasks.square, range(50))) == [i * i for i in range(50)]
        assert list(ex.map(tasks.add, range(30), range(100), chunksize=7)) == \
            [2 * i for i in range(30)]
        assert list(ex.map(tasks.square, [])) == []
        with pytest.raises(ValueError):
            ex.map(tasks.square, range(3), chunksize=0)


@pytest.mark.timeout(60)
def test_map_raises_at_the_failing_item_after_earlier_results():
    with SafeProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(tasks.reciprocal, [1, 2, 0, 4])
        assert next(results) == 1.0
        assert next(results) == 0.5
        with pytest.raises(ZeroDivisionError):
            next(results)


@pytest.mark.timeout(60)
def test_map_timeout_raises_futures_timeout_error(tmp_path):
    pid_path, release = str(tmp_path / "pid"), str(tmp_path / "release")
    with SafeProcessPoolExecutor(max_workers=1) as ex:
        results = ex.map(tasks.block_until, [pid_path], [release], timeout=0.3)
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)
        open(release, "w").close()


@pytest.mark.timeout(60)
def test_cancel_of_a_queued_future_means_it_never_runs(tmp_path):
    pid_path, release = str(tmp_path / "pid"), str(tmp_path / "release")
    marker = str(tmp_path / "ran")
    with SafeProcessPoolExecutor(max_workers=1) as ex:
        blocker = ex.submit(tasks.block_until, pid_path, release)
        # Two fillers: a worker may have one message waiting behind its running task, and a
        # task already sent to a worker is RUNNING (not cancellable), as in the stdlib.
        fillers = [ex.submit(tasks.identity, i) for i in range(2)]
        target = ex.submit(tasks.touch, marker)
        assert target.cancel()
        assert target.cancelled() and target.done()
        open(release, "w").close()
        assert blocker.result(timeout=30) > 0
        assert [f.result(timeout=30) for f in fillers] == [0, 1]
        # FIFO on one worker: the cancelled task would have run before this one finished.
        assert ex.submit(tasks.identity, "after").result(timeout=30) == "after"
    assert not os.path.exists(marker), "a cancelled task ran"


# ---- shutdown and the with block ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_with_block_returns_the_executor_and_shuts_down():
    with SafeProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(tasks.square, i) for i in range(10)]
        pids = set(ex.map(tasks.getpid, range(4)))
    # Leaving the block waited for every task, then stopped and reaped every worker.
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [i * i for i in range(10)]
    for pid in pids:
        assert gone(pid)
    exc_type, message = stdlib_error(
        lambda cls: _shut(cls(max_workers=1)).submit(tasks.square, 1))
    with pytest.raises(exc_type, match=re.escape(message)):
        ex.submit(tasks.square, 1)


def _shut(executor):
    executor.shutdown()
    return executor


@pytest.mark.timeout(60)
def test_submit_after_shutdown_raises_runtime_error_as_the_stdlib():
    exc_type, message = stdlib_error(
        lambda cls: _shut(cls(max_workers=1)).submit(tasks.square, 1))
    assert exc_type is RuntimeError
    # Shut down before any worker existed, and after.
    never_used = SafeProcessPoolExecutor(max_workers=1)
    never_used.shutdown()
    with pytest.raises(RuntimeError, match=re.escape(message)) as info:
        never_used.submit(tasks.square, 1)
    assert type(info.value) is RuntimeError
    used = SafeProcessPoolExecutor(max_workers=1)
    assert used.submit(tasks.square, 2).result(timeout=30) == 4
    used.shutdown()
    with pytest.raises(RuntimeError, match=re.escape(message)) as info:
        used.submit(tasks.square, 1)
    assert type(info.value) is RuntimeError, "not BrokenProcessPool: the pool was not broken"
    with pytest.raises(RuntimeError):
        used.map(tasks.square, [1])
    # shutdown() is idempotent.
    used.shutdown()
    used.shutdown(wait=False)


@pytest.mark.timeout(60)
def test_shutdown_waits_for_queued_work_unless_cancel_futures(tmp_path):
    pid_path, release = str(tmp_path / "pid"), str(tmp_path / "release")
    ex = SafeProcessPoolExecutor(max_workers=1)
    blocker = ex.submit(tasks.block_until, pid_path, release)
    queued = [ex.submit(tasks.square, i) for i in range(6)]
    from conftest import wait_for_pid_file

    wait_for_pid_file(pid_path)
    ex.shutdown(wait=False, cancel_futures=True)
    open(release, "w").close()
    assert ex.shutdown(wait=True) is True  # everything finished
    assert blocker.result() > 0
    cancelled = [f for f in queued if f.cancelled()]
    # At most one message may already sit in the busy worker's pipe (RUNNING, like the
    # stdlib's call queue); everything else is cancelled, and nothing is left pending.
    assert len(cancelled) >= 4
    for f in queued:
        assert f.done()
        if not f.cancelled():
            assert f.result() == queued.index(f) ** 2


@pytest.mark.timeout(60)
def test_shutdown_without_cancel_runs_everything_queued():
    ex = SafeProcessPoolExecutor(max_workers=2)
    futures = [ex.submit(tasks.sleep_and_return, 0.01, i) for i in range(20)]
    ex.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == list(range(20))


# ---- constructor validation: the stdlib's errors ------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_not_positive_is_value_error_as_the_stdlib(bad):
    exc_type, message = stdlib_error(lambda cls: cls(max_workers=bad))
    assert exc_type is ValueError
    with pytest.raises(ValueError, match=re.escape(message)):
        SafeProcessPoolExecutor(max_workers=bad)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", ["not callable", 42])
def test_non_callable_initializer_is_type_error_as_the_stdlib(bad):
    exc_type, message = stdlib_error(lambda cls: cls(max_workers=1, initializer=bad))
    assert exc_type is TypeError
    with pytest.raises(TypeError, match=re.escape(message)):
        SafeProcessPoolExecutor(max_workers=1, initializer=bad)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad, exc_type, message", [
    (0, ValueError, "max_tasks_per_child must be >= 1"),
    (-3, ValueError, "max_tasks_per_child must be >= 1"),
    (1.5, TypeError, "max_tasks_per_child must be an integer"),
    ("3", TypeError, "max_tasks_per_child must be an integer"),
])
def test_max_tasks_per_child_validation_as_the_stdlib(bad, exc_type, message):
    if sys.version_info >= (3, 11):  # the stdlib has max_tasks_per_child since 3.11
        spawn = multiprocessing.get_context("spawn")
        assert stdlib_error(
            lambda cls: cls(max_workers=1, mp_context=spawn, max_tasks_per_child=bad)
        ) == (exc_type, message)
    with pytest.raises(exc_type, match=re.escape(message)):
        SafeProcessPoolExecutor(max_workers=1, max_tasks_per_child=bad)


@pytest.mark.timeout(30)
def test_fork_context_is_refused_saying_what_to_pass_instead():
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork start method on this platform")
    threads_before = threading.active_count()
    with pytest.raises(ValueError) as info:
        SafeProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
    message = str(info.value)
    assert "fork" in message
    assert "get_context('forkserver')" in message or 'get_context("forkserver")' in message
    assert "spawn" in message and "mp_context" in message
    # Refused before anything was started.
    assert threading.active_count() == threads_before
    assert not stray_processes()


@pytest.mark.timeout(60)
def test_default_context_is_forkserver_and_spawn_is_honoured(start_method):
    kwargs = {} if start_method == "forkserver" else {
        "mp_context": multiprocessing.get_context("spawn")}
    with SafeProcessPoolExecutor(max_workers=1, **kwargs) as ex:
        pid = ex.submit(tasks.getpid).result(timeout=30)
        parent = psutil.Process(pid).parent()
        if start_method == "spawn":
            assert parent.pid == os.getpid()
        else:  # forkserver: the stdlib's fork server is the worker's parent, not us
            assert parent.pid != os.getpid()
            assert "forkserver" in " ".join(parent.cmdline())


@pytest.mark.timeout(60)
def test_initializer_and_initargs_run_in_every_worker(ctx):
    with SafeProcessPoolExecutor(max_workers=2, mp_context=ctx,
                                 initializer=tasks.set_initialized,
                                 initargs=("ready",)) as ex:
        assert list(ex.map(tasks.get_initialized, range(8))) == ["ready"] * 8


# ---- the default worker count: cgroup-aware ------------------------------------------------


def _concurrency(ex, tmp_path, expected):
    """Prove the pool runs ``expected`` tasks at once and starts no more workers than that."""
    release = str(tmp_path / "release")
    paths = [str(tmp_path / f"pid{i}") for i in range(expected + 1)]
    futures = [ex.submit(tasks.block_until, p, release) for p in paths]
    try:
        wait_until(lambda: sum(os.path.exists(p) for p in paths) >= expected, 60,
                   message=f"{expected} tasks running at once")
        # The manager handled every submit long before a worker could start and run its
        # task: had it been allowed one more worker, it would have started it by now.
        stats = ex.stats()
        assert stats.workers_started == expected
        assert stats.workers_alive == expected
        assert stats.tasks_queued + stats.tasks_running == expected + 1
        assert sum(os.path.exists(p) for p in paths) == expected
    finally:
        open(release, "w").close()
    assert len({f.result(timeout=30) for f in futures}) == expected


@pytest.mark.timeout(60)
def test_default_max_workers_is_loky_cpu_count(tmp_path):
    import loky

    assert safepool.default_max_workers() == loky.cpu_count()
    with SafeProcessPoolExecutor() as ex:
        _concurrency(ex, tmp_path, loky.cpu_count())


AFFINITY = r"""
import json, os, pathlib, sys

import safepool
from safepool import SafeProcessPoolExecutor
from test_core_api import _concurrency

if __name__ == "__main__":
    ncpus, out_dir = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:ncpus])  # as taskset would
    report = {"cpus": len(os.sched_getaffinity(0)), "default": safepool.default_max_workers()}
    with SafeProcessPoolExecutor() as ex:  # the default worker count
        _concurrency(ex, out_dir, ncpus)  # raises if more (or fewer) workers run at once
    report["concurrency"] = "ok"
    print(json.dumps(report))
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs sched_setaffinity and at least two usable CPUs")
def test_default_max_workers_follows_a_real_cpu_affinity_mask(tmp_path):
    # A process restricted to fewer CPUs than the machine has (taskset, a cpuset cgroup, a
    # container's CPU limit) gets that many workers by default, and that many tasks run at once.
    import json
    import subprocess

    from hardening_helpers import PYTHON, script_env, write_script

    ncpus = len(os.sched_getaffinity(0)) - 1
    script = write_script(tmp_path, AFFINITY)
    run = subprocess.run([PYTHON, script, str(ncpus), str(tmp_path)], env=script_env(),
                         capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"cpus": ncpus, "default": ncpus, "concurrency": "ok"}, report
    assert ncpus < (os.cpu_count() or 0), "the mask must hide CPUs the machine has"


# ---- asyncio -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_asyncio_run_in_executor():
    async def main(ex):
        loop = asyncio.get_running_loop()
        one = await loop.run_in_executor(ex, tasks.square, 7)
        many = await asyncio.gather(*(loop.run_in_executor(ex, tasks.add, i, 1)
                                      for i in range(10)))
        return one, many

    with SafeProcessPoolExecutor(max_workers=2) as ex:
        assert asyncio.run(main(ex)) == (49, list(range(1, 11)))


class _RecordingExecutor(SafeProcessPoolExecutor):
    """The real executor; it only remembers the futures it handed out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.futures = []

    def submit(self, fn, *args, **kwargs):
        future = super().submit(fn, *args, **kwargs)
        self.futures.append(future)
        return future


@pytest.mark.timeout(60)
def test_cancelling_the_asyncio_task_cancels_work_not_started(tmp_path):
    pid_path, release = str(tmp_path / "pid"), str(tmp_path / "release")
    marker = str(tmp_path / "ran")

    async def main(ex):
        loop = asyncio.get_running_loop()
        blocker = loop.run_in_executor(ex, tasks.block_until, pid_path, release)
        fillers = [loop.run_in_executor(ex, tasks.identity, i) for i in range(2)]

        async def job():
            return await loop.run_in_executor(ex, tasks.touch, marker)

        target = asyncio.ensure_future(job())
        try:
            await asyncio.sleep(0)  # the task starts and submits its work
            target_future = ex.futures[-1]
            assert not target_future.done()
            target.cancel()
            with pytest.raises(asyncio.CancelledError):
                await target
            # asyncio passes the cancellation on to the executor's future from a callback.
            deadline = loop.time() + 10
            while not target_future.done() and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert target_future.cancelled(), "the executor's future was not cancelled"
        finally:
            open(release, "w").close()
        await blocker
        assert await asyncio.gather(*fillers) == [0, 1]
        # One worker, FIFO: had the cancelled task run, it would have finished before this.
        assert await loop.run_in_executor(ex, tasks.identity, "after") == "after"

    with _RecordingExecutor(max_workers=1) as ex:
        asyncio.run(main(ex))
        assert ex.stats().tasks_cancelled >= 1
    assert not os.path.exists(marker), "a cancelled task ran"
