"""What the docs promise for Ctrl-C (docs/faq.rst, docs/shutdown.rst), checked in-process.

A KeyboardInterrupt that leaves a ``with`` block stops the pool at once: tasks not started
are cancelled (or, if a worker had them already, fail without running), running tasks fail
with WorkerLostError, and the block is left only once every worker is reaped. The real
SIGINT, in a real terminal's process group, under both start methods, is in
tests/test_reaping.py::test_keyboard_interrupt_in_the_parent_stops_and_reaps_everything.
"""
import time

import psutil
import pytest
import tasks

from safepool import SafeProcessPoolExecutor, WorkerLostError


def _ran(future):
    return future.done() and not future.cancelled() and future.exception() is None


def _workers():
    return [p for p in psutil.Process().children()
            if "forkserver" not in " ".join(p.cmdline())
            and "resource_tracker" not in " ".join(p.cmdline())]


@pytest.mark.timeout(60)
def test_keyboard_interrupt_leaving_with_stops_running_tasks_at_once(tmp_path):
    marker = str(tmp_path / "started")
    start = None
    with pytest.raises(KeyboardInterrupt):
        with SafeProcessPoolExecutor(max_workers=1) as executor:
            running = executor.submit(tasks.park_with_child, marker)
            queued = [executor.submit(tasks.square, i) for i in range(5)]
            deadline = time.monotonic() + 30
            while not (tmp_path / "started").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            start = time.monotonic()
            raise KeyboardInterrupt
    left_after = time.monotonic() - start
    assert left_after < 10, "leaving the block waited for the running task"
    assert isinstance(running.exception(timeout=0), WorkerLostError)
    assert not any(_ran(f) for f in queued), "a task that had not started ran after Ctrl-C"
    assert all(f.done() for f in queued)
    # The block was left after the workers were reaped, not before.
    assert [p for p in _workers() if p.status() != psutil.STATUS_ZOMBIE] == []


@pytest.mark.timeout(60)
def test_shutdown_inside_the_block_lets_running_tasks_finish():
    # The FAQ's recipe for keeping the standard library's behaviour on Ctrl-C.
    with pytest.raises(KeyboardInterrupt):
        with SafeProcessPoolExecutor(max_workers=2) as executor:
            futures = [executor.submit(tasks.sleep_and_return, 0.3, i) for i in range(8)]
            try:
                futures[0].result(timeout=30)
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                executor.shutdown(wait=True, cancel_futures=True)
                raise
    finished = [f for f in futures if not f.cancelled()]
    assert all(f.exception() is None for f in finished)
    assert len(finished) < len(futures)
