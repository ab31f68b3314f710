"""Hardening item 7: bad input gets a clear error, and the pool keeps serving.

An unpicklable callable or argument, an argument that cannot be unpickled in the worker, an
unpicklable result, an exception that cannot be pickled or cannot be unpickled, a result too
large for memory on the way back: each fails its own future (never a hang) with an error that
says what could not be pickled, and the next task runs normally, on the same worker.
"""
import pickle
import threading
from concurrent.futures.process import BrokenProcessPool

import pytest
import tasks
from hardening_helpers import clean, stdlib_helpers  # noqa: F401

from safepool import SafeProcessPoolExecutor, TaskPicklingError, TaskUnpicklingError

# Every test checks that it left no process (forkserver workers included) and no fd.
pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture
def pool():
    """One worker, so 'the same worker keeps serving' is checkable by pid. Plain pickle only,
    as the stdlib: what cloudpickle sends instead is tested in test_by_value.py."""
    ex = SafeProcessPoolExecutor(max_workers=1, cloudpickle_fallback=False)
    ex.worker_pid = ex.submit(tasks.getpid).result(timeout=30)
    yield ex
    ex.shutdown()


def assert_serves_on(ex):
    """The next task runs normally, on the same worker: bad input cost no process."""
    assert ex.submit(tasks.square, 7).result(timeout=30) == 49
    assert ex.submit(tasks.getpid).result(timeout=30) == ex.worker_pid
    stats = ex.stats()
    assert stats.workers_started == 1
    assert sum(stats.workers_replaced.values()) == 0


def failure(future):
    exc = future.exception(timeout=30)  # never a hang
    assert exc is not None, "the task should have failed"
    return exc


def nested_function():
    def inner():
        return 1

    return inner


# ---- on the way to the worker --------------------------------------------------------------


@pytest.mark.timeout(60)
def test_lambda_callable_fails_its_future_naming_it(pool):
    exc = failure(pool.submit(lambda: 1))
    assert isinstance(exc, TaskPicklingError)
    assert isinstance(exc, pickle.PicklingError)
    assert "<lambda>" in str(exc)
    assert "pickle" in str(exc)
    assert exc.__cause__ is not None, "the original pickling error is chained"
    assert_serves_on(pool)


@pytest.mark.timeout(60)
def test_nested_function_callable_fails_its_future(pool):
    exc = failure(pool.submit(nested_function()))
    assert isinstance(exc, TaskPicklingError)
    assert "inner" in str(exc)
    assert_serves_on(pool)


@pytest.mark.timeout(60)
def test_unpicklable_argument_fails_its_future_naming_it(pool):
    exc = failure(pool.submit(tasks.identity, threading.Lock()))
    assert isinstance(exc, TaskPicklingError) and isinstance(exc, pickle.PicklingError)
    message = str(exc)
    assert "identity" in message, "names the task"
    assert "lock" in message, "names what could not be pickled"
    assert_serves_on(pool)


@pytest.mark.timeout(60)
def test_unpicklable_argument_in_map(pool):
    results = pool.map(tasks.identity, [1, threading.Lock(), 3])
    assert next(results) == 1
    with pytest.raises(TaskPicklingError, match="lock"):
        next(results)
    assert_serves_on(pool)


@pytest.mark.timeout(60)
def test_lambda_in_map(pool):
    with pytest.raises(TaskPicklingError, match="<lambda>"):
        list(pool.map(lambda x: x, [1, 2]))
    assert_serves_on(pool)


@pytest.mark.timeout(60)
def test_argument_that_cannot_be_unpickled_in_the_worker(pool):
    # Pickles fine in the parent; unpickling it in the worker raises.
    exc = failure(pool.submit(tasks.identity, tasks.ArgRefusingUnpickle()))
    assert isinstance(exc, TaskUnpicklingError)
    assert isinstance(exc, BrokenProcessPool), "still caught by `except BrokenProcessPool`"
    message = str(exc)
    assert "identity" in message and "unpickl" in message
    assert "ArgRefusingUnpickle refuses to be unpickled" in message
    assert_serves_on(pool)


# ---- on the way back -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_unpicklable_result_fails_its_future_naming_it(pool):
    exc = failure(pool.submit(tasks.return_lambda))
    assert isinstance(exc, TaskPicklingError) and isinstance(exc, pickle.PicklingError)
    message = str(exc)
    assert "return_lambda" in message and "result" in message
    assert "function" in message, "names the type that could not be pickled"
    assert_serves_on(pool)


@pytest.mark.timeout(60)
def test_exception_that_cannot_be_pickled(pool):
    exc = failure(pool.submit(tasks.raise_lock_error))
    assert isinstance(exc, TaskPicklingError)
    message = str(exc)
    assert "LockError" in message, "names the exception the task raised"
    assert "holds a lock" in message, "keeps the exception's message"
    assert "raise_lock_error" in str(exc.__cause__), "keeps the worker's traceback"
    assert_serves_on(pool)


@pytest.mark.timeout(60)
def test_exception_that_cannot_be_unpickled(pool):
    exc = failure(pool.submit(tasks.raise_unpicklable_error))
    assert isinstance(exc, TaskUnpicklingError)
    assert isinstance(exc, pickle.UnpicklingError) and isinstance(exc, BrokenProcessPool)
    message = str(exc)
    assert "raise_unpicklable_error" in message, "names the task"
    assert "unpickled" in message
    assert isinstance(exc.__cause__, TypeError), "chains the unpickling error"
    assert_serves_on(pool)


@pytest.mark.timeout(60)
def test_result_too_large_to_pickle(pool):
    exc = failure(pool.submit(tasks.return_huge_result))
    assert isinstance(exc, TaskPicklingError)
    message = str(exc)
    assert "return_huge_result" in message and "HugeResult" in message
    assert "MemoryError" in message
    assert_serves_on(pool)


@pytest.mark.timeout(60)
def test_result_too_large_to_unpickle_in_the_parent(pool):
    exc = failure(pool.submit(tasks.return_result_too_large_to_load))
    assert isinstance(exc, TaskUnpicklingError)
    message = str(exc)
    assert "return_result_too_large_to_load" in message and "MemoryError" in message
    assert isinstance(exc.__cause__, MemoryError)
    assert_serves_on(pool)


@pytest.mark.timeout(60)
def test_large_arguments_and_results_travel(pool):
    # Not bad input: the big-message path must not be mistaken for it (20 MiB each way).
    data = b"y" * (20 * 1024 * 1024)
    assert pool.submit(tasks.echo_len, data).result(timeout=60) == (len(data), data[:10])
    assert len(pool.submit(tasks.big_bytes, 20 * 1024 * 1024).result(timeout=60)) == \
        20 * 1024 * 1024
    assert_serves_on(pool)


@pytest.mark.timeout(90)
def test_mixed_bad_input_never_loses_a_good_task(pool):
    bad = [
        lambda: pool.submit(lambda: 1),
        lambda: pool.submit(tasks.identity, threading.Lock()),
        lambda: pool.submit(tasks.identity, tasks.ArgRefusingUnpickle()),
        lambda: pool.submit(tasks.return_lambda),
        lambda: pool.submit(tasks.raise_lock_error),
        lambda: pool.submit(tasks.raise_unpicklable_error),
        lambda: pool.submit(tasks.return_huge_result),
        lambda: pool.submit(tasks.return_result_too_large_to_load),
    ]
    good, failed = [], []
    for i, make in enumerate(bad * 3):
        failed.append(make())
        good.append(pool.submit(tasks.square, i))
    assert [f.result(timeout=30) for f in good] == [i * i for i in range(len(good))]
    for f in failed:
        assert isinstance(failure(f), (pickle.PicklingError, pickle.UnpicklingError))
    assert_serves_on(pool)


@pytest.mark.timeout(60)
def test_exception_that_cannot_be_pickled_nor_printed(pool):
    exc = failure(pool.submit(tasks.raise_broken_str_error))
    assert isinstance(exc, TaskPicklingError), repr(exc)
    assert "BrokenStrError" in str(exc)
    assert_serves_on(pool)
