"""Hardening items 8 and 9: no crash loop; recycling (max_tasks_per_child) is safepool's own.

An initializer that raises, or workers that die before finishing one task, break the pool after
a bounded number of attempts with BrokenProcessPool saying why (the initializer's exception
chained); every pending future fails with it and submit() raises it afterwards.

max_tasks_per_child works on forkserver and spawn, including map over many more items than
max_tasks_per_child * max_workers (the stdlib deadlocked there until 2025: gh-115634,
gh-111498), and the worker pids change.
"""
import collections
from concurrent.futures.process import BrokenProcessPool

import pytest
import tasks
from conftest import wait_until
from hardening_helpers import clean, returns_within, stdlib_helpers  # noqa: F401

from safepool import SafeProcessPoolExecutor

# Every test checks that it left no process (forkserver workers included) and no fd.
pytestmark = pytest.mark.usefixtures("clean")

MAX_WORKERS = 2


def startup_attempt_bound():
    """Workers a broken pool may start: the limit of failures in a row, plus those already
    starting in parallel when the limit is reached."""
    from safepool import _manager

    return getattr(_manager, "STARTUP_FAILURE_LIMIT", 3) + MAX_WORKERS


def assert_broken(ex, futures, *needles):
    errors = [f.exception(timeout=60) for f in futures]  # every pending future fails
    for exc in errors:
        assert isinstance(exc, BrokenProcessPool), repr(exc)
    message = str(errors[0])
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    with pytest.raises(BrokenProcessPool) as info:
        ex.submit(tasks.square, 1)
    for needle in needles:
        assert needle in str(info.value)
    # Bounded: it stopped trying, and nothing keeps running.
    wait_until(lambda: ex.stats().workers_alive == 0, 20, message="no worker left")
    started = ex.stats().workers_started
    assert 1 <= started <= startup_attempt_bound(), f"{started} workers started"
    returns_within(ex.shutdown, 30, "shutdown() of a broken pool")
    assert ex.stats().workers_started == started, "still respawning after the pool broke"
    return errors


@pytest.mark.timeout(90)
def test_initializer_that_raises_breaks_the_pool_with_its_exception_chained(ctx):
    ex = SafeProcessPoolExecutor(max_workers=MAX_WORKERS, mp_context=ctx,
                                 initializer=tasks.failing_initializer)
    futures = [ex.submit(tasks.square, i) for i in range(20)]
    errors = assert_broken(ex, futures, "initializer", "initializer exploded")
    cause = errors[0].__cause__
    assert isinstance(cause, ValueError) and str(cause) == "initializer exploded"
    assert "failing_initializer" in str(cause.__cause__), "the worker's traceback is kept"


@pytest.mark.timeout(90)
def test_workers_dying_before_their_first_task_break_the_pool():
    # A broken environment: the worker dies (exit code 3) before it can take any task.
    ex = SafeProcessPoolExecutor(max_workers=MAX_WORKERS,
                                 initializer=tasks.exit_in_initializer, initargs=(3,))
    futures = [ex.submit(tasks.square, i) for i in range(20)]
    assert_broken(ex, futures, "exited with code 3")


@pytest.mark.timeout(90)
def test_workers_killed_before_their_first_task_break_the_pool():
    ex = SafeProcessPoolExecutor(max_workers=MAX_WORKERS, initializer=tasks.kill_self)
    futures = [ex.submit(tasks.square, i) for i in range(20)]
    assert_broken(ex, futures, "SIGKILL")


@pytest.mark.timeout(90)
def test_submit_after_break_raises_even_before_looking_at_the_future():
    ex = SafeProcessPoolExecutor(max_workers=1, initializer=tasks.failing_initializer)
    first = ex.submit(tasks.square, 1)
    assert isinstance(first.exception(timeout=60), BrokenProcessPool)
    for _ in range(3):
        with pytest.raises(BrokenProcessPool, match="initializer"):
            ex.submit(tasks.square, 2)
        with pytest.raises(BrokenProcessPool):
            list(ex.map(tasks.square, [1, 2]))
    returns_within(ex.shutdown, 30, "shutdown()")


# ---- recycling: max_tasks_per_child ----------------------------------------------------------


@pytest.mark.timeout(120)
def test_max_tasks_per_child_map_over_many_more_items(ctx):
    per_child, items = 3, 30  # 30 items >> 3 tasks * 2 workers
    with SafeProcessPoolExecutor(max_workers=MAX_WORKERS, mp_context=ctx,
                                 max_tasks_per_child=per_child) as ex:
        pids = returns_within(lambda: list(ex.map(tasks.getpid, range(items))), 90, "map()")
        stats = ex.stats()
    assert len(pids) == items
    counts = collections.Counter(pids)
    assert max(counts.values()) <= per_child, counts
    assert len(counts) >= items // per_child, "the worker pids change"
    assert stats.workers_replaced["recycle"] >= items // per_child - MAX_WORKERS
    assert stats.workers_replaced["crash"] == 0


@pytest.mark.timeout(120)
def test_max_tasks_per_child_one_with_submit_and_initializer(ctx):
    # The extreme case of gh-115634: every task gets a fresh worker, which runs the
    # initializer again.
    with SafeProcessPoolExecutor(max_workers=MAX_WORKERS, mp_context=ctx,
                                 max_tasks_per_child=1, initializer=tasks.set_initialized,
                                 initargs=("fresh",)) as ex:
        futures = [ex.submit(tasks.getpid) for _ in range(8)]
        pids = [f.result(timeout=60) for f in futures]
        assert list(ex.map(tasks.get_initialized, range(4))) == ["fresh"] * 4
    assert len(set(pids)) == 8, "max_tasks_per_child=1: one task per worker"


@pytest.mark.timeout(120)
def test_max_tasks_per_child_counts_chunks_in_map():
    # With chunksize, a chunk is one task (as in the stdlib).
    with SafeProcessPoolExecutor(max_workers=MAX_WORKERS, max_tasks_per_child=2) as ex:
        pids = returns_within(lambda: list(ex.map(tasks.getpid, range(60), chunksize=5)), 90,
                              "map()")
    counts = collections.Counter(pids)
    assert max(counts.values()) <= 2 * 5, counts
    assert len(counts) >= 60 // 10


@pytest.mark.timeout(120)
def test_recycling_survives_a_crash_in_between(tmp_path):
    # A worker lost mid-cycle and recycling together: every other task still completes.
    with SafeProcessPoolExecutor(max_workers=MAX_WORKERS, max_tasks_per_child=2) as ex:
        futures = [ex.submit(tasks.square, i) for i in range(10)]
        crash = ex.submit(tasks.exit_now, 3)
        futures += [ex.submit(tasks.square, i) for i in range(10, 20)]
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(20)]
        assert isinstance(crash.exception(timeout=60), BrokenProcessPool)
        stats = ex.stats()
    assert stats.workers_replaced["crash"] == 1
    assert stats.workers_replaced["recycle"] >= 5
