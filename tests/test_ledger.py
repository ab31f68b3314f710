"""The task ledger without processes: one state per task, one way to settle its future, and
counts that say how each task ended."""
import pytest

from safepool._executor import SafeFuture
from safepool._ledger import Ledger, Task, TaskState, task_name
from safepool._manager import _COUNT_KEYS


def make(task_id=1):
    return Task(task_id, SafeFuture(), b"payload", make, None)


@pytest.fixture
def ledger():
    return Ledger(dict.fromkeys(_COUNT_KEYS, 0))


def test_claim_marks_the_future_running_once():
    task = make()
    assert task.claim() and task.future.running() and task.claimed
    assert task.claim()  # again (a resend after a revoke): still ours
    assert not task.future.cancel()  # claimed: cancel() refuses, as with the stdlib


def test_a_future_cancelled_while_queued_is_never_claimed():
    task = make()
    assert task.future.cancel()
    assert not task.claim()
    assert task.state is TaskState.DONE


def test_a_result_settles_once_and_frees_the_payload(ledger):
    task = make()
    task.claim()
    ledger.result(task, 42)
    assert task.future.result(timeout=0) == 42
    assert task.state is TaskState.DONE and task.payload is None
    ledger.result(task, 43)  # a second outcome (cannot happen) is counted late, not raised
    assert task.future.result(timeout=0) == 42
    assert ledger.counts["completed"] == 1 and ledger.counts["late"] == 1


def test_a_failure_of_an_unclaimed_task_claims_it_first(ledger):
    task = make()
    ledger.fail(task, ValueError("boom"))
    assert isinstance(task.future.exception(timeout=0), ValueError)
    assert ledger.counts["failed"] == 1


def test_a_failure_of_a_task_cancelled_while_queued_leaves_it_cancelled(ledger):
    task = make()
    task.future.cancel()
    ledger.fail(task, ValueError("boom"))
    assert task.future.cancelled() and ledger.counts["failed"] == 0


def test_cancel_ends_a_claimed_task_that_never_started_as_cancelled(ledger):
    task = make()
    task.claim()
    ledger.cancel(task)
    assert task.future.cancelled() and task.state is TaskState.DONE
    assert ledger.counts["cancelled"] == 1


def test_a_result_after_cancel_running_is_dropped_as_late(ledger):
    task = make()
    task.future._cancel_running = True
    task.claim()
    assert task.future.cancel()  # cancel_running: a RUNNING future can be cancelled
    ledger.result(task, 1)
    assert task.future.cancelled() and ledger.counts["late"] == 1


def test_task_names_say_module_and_function():
    assert task_name(make) == f"{__name__}.make()"
    assert task_name(print) == "builtins.print()"
