"""forward_logs: what tasks log reaches the parent's logging, with the worker's pid and the
task, at the levels the parent lets through; a slow parent never blocks a worker."""
import logging
import os
import threading

import core_tasks
import pytest
from conftest import wait_until

from safepool import SafeProcessPoolExecutor


class Collect(logging.Handler):
    def __init__(self, gate=None):
        super().__init__()
        self.records = []
        self.gate = gate

    def emit(self, record):
        if self.gate is not None:
            self.gate.wait(60)
        self.records.append(record)


@pytest.fixture
def task_log():
    logger = logging.getLogger("safepool_tests.tasks")
    handler = Collect()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield logger, handler
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.mark.timeout(60)
def test_task_records_reach_the_parent_with_pid_and_task(clean_process, task_log):
    logger, handler = task_log
    with SafeProcessPoolExecutor(1) as ex:
        pid = ex.submit(os.getpid).result(timeout=30)
        assert ex.submit(core_tasks.log_things, 3).result(timeout=30) == 3
        wait_until(lambda: len(handler.records) >= 3, 10, message="the records")
        # Counted once the manager has handed the whole read to logging: a moment later.
        wait_until(lambda: ex.stats().log_records_forwarded >= 3, 10, message="the count")
        stats = ex.stats()
    messages = [r.getMessage() for r in handler.records]
    assert messages == [f"record {i} xxxxxxxxxx" for i in range(3)]  # no DEBUG: INFO here
    assert all(r.process == pid and r.safepool_task.endswith("log_things")
               for r in handler.records)
    assert stats.log_records_forwarded == 3


@pytest.mark.timeout(60)
def test_a_lower_level_in_the_parent_lets_more_through(clean_process, task_log):
    logger, handler = task_log
    logger.setLevel(logging.DEBUG)
    with SafeProcessPoolExecutor(1) as ex:
        ex.submit(core_tasks.log_things, 1).result(timeout=30)
        wait_until(lambda: len(handler.records) >= 2, 10, message="the records")
    assert [r.levelno for r in handler.records] == [logging.DEBUG, logging.INFO]


@pytest.mark.timeout(60)
def test_forward_logs_false_forwards_nothing(clean_process, task_log):
    logger, handler = task_log
    with SafeProcessPoolExecutor(1, forward_logs=False) as ex:
        ex.submit(core_tasks.log_things, 3).result(timeout=30)
        assert ex.stats().log_records_forwarded == 0
    assert handler.records == []


def _counts(stats):
    return stats.log_records_forwarded, stats.log_records_dropped


@pytest.mark.timeout(120)
def test_a_slow_parent_never_blocks_a_worker(clean_process, tmp_path):
    """The parent's handler is stuck; a task logs 20 MB: it still runs to its end (records
    that do not fit are dropped and counted), and everything resumes once the handler does."""
    gate = threading.Event()
    logger = logging.getLogger("safepool_tests.tasks")
    handler = Collect(gate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    done = str(tmp_path / "done")
    try:
        with SafeProcessPoolExecutor(1) as ex:
            future = ex.submit(core_tasks.log_things, 20000, 1000, done)
            wait_until(lambda: os.path.exists(done), 60,
                       message="the task to finish while the parent's handler is stuck")
            gate.set()
            assert future.result(timeout=60) == 20000
            wait_until(lambda: sum(_counts(ex.stats())) == 20000, 60,
                       message="every record forwarded or counted as dropped")
            forwarded, dropped = _counts(ex.stats())
        assert dropped > 0 and forwarded > 0
    finally:
        gate.set()
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
