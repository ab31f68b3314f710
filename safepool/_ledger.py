"""The task ledger: every submitted task, the one state it is in, and the one way it ends.

Only the manager thread changes a Task's state or settles its future (the executor's threads
create Tasks and hand them over; ``SafeFuture.cancel`` may cancel a future that is still
PENDING, which ``claim()`` then sees).

States and who moves a task between them::

    QUEUED --send--> SENT --STARTED from the worker--> STARTED --result--> DONE
      ^                |                                   |
      +--REVOKED-------+  (the worker gave it back:        +--crash, timeout, cancel--> DONE
                           it never ran any of its code)

Invariants (asserted by tests/test_ledger.py and the stateful test):

* A task is on at most one worker, and only in SENT or STARTED.
* A task becomes STARTED only on its worker's own word (STARTED), at most once: a task that
  was STARTED is never sent again, whatever happens to its worker, with one exception the
  user asks for: with ``retries=N``, a task whose worker *died* under it (not a timeout, a
  cancel, an exception it raised, or a stop we ordered) goes back to QUEUED, at most N times.
* A task that was not STARTED ran none of its code, so it may go back to QUEUED (a revoke, or
  its worker died before starting it) and be sent to another worker.
* Its future is settled exactly once, through ``settle_*`` below, by the manager thread, while
  no safepool lock is held (done-callbacks are user code).
* Its future is claimed (RUNNING, no longer cancellable by ``cancel()``) from its first send,
  as the stdlib's call queue does; a claimed task that never started can still be withdrawn
  (``cancel_futures``, an abandoned ``map()``): it ends CANCELLED when its worker gives it back.
"""
from __future__ import annotations

import enum
import logging
from concurrent.futures import InvalidStateError
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from ._executor import SafeFuture

log = logging.getLogger("safepool")


def task_name(fn: Any) -> str:
    """How errors and logs name a task's function: ``module.qualname()``."""
    qualname = getattr(fn, "__qualname__", None)
    if qualname is None:
        return repr(fn)[:100]
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}()" if module else f"{qualname}()"


class TaskState(enum.Enum):
    QUEUED = "queued"    # in the manager's queue (or not yet taken in from submit())
    SENT = "sent"        # written to a worker, which has not said STARTED
    STARTED = "started"  # the worker said STARTED: it is running (or has run) its code
    DONE = "done"        # its future is settled


class Task:
    """One submitted call: its future and its pickled (fn, args, kwargs), kept for a resend."""

    __slots__ = ("id", "future", "payload", "fn", "timeout", "state", "claimed", "withdraw",
                 "started_at", "revoking", "number", "retries", "deaths", "soft_timeout",
                 "soft_sent", "taken_from", "__weakref__")

    def __init__(self, task_id: int, future: SafeFuture, payload: Optional[bytes], fn: Any,
                 timeout: Optional[float], retries: int = 0,
                 soft_timeout: Optional[float] = None):
        self.id = task_id
        self.future = future
        self.payload = payload
        self.fn = fn  # for its name in messages, worked out only when one is needed
        self.timeout = timeout
        self.state = TaskState.QUEUED
        self.claimed = False       # its future is RUNNING: ours to settle, no longer cancellable
        self.withdraw = False      # cancel it if it comes back unstarted
        self.started_at = 0.0      # monotonic time its STARTED arrived
        self.revoking = False      # a REVOKE for it is on its way to its worker
        self.number = -1           # its number on the task pipe of the worker it was sent to
        self.retries = retries     # runs again it may have if a worker dies under it
        # (pid, exitcode) of each worker that died running it
        self.deaths: List[Tuple[int, Optional[int]]] = []
        self.soft_timeout = soft_timeout  # seconds from its start to SoftTimeoutError in it
        self.soft_sent = False     # the worker was told (once per run)
        self.taken_from: Optional[int] = None  # pid of the worker that last gave it back

    def claim(self) -> bool:
        """Mark the future RUNNING, once; False if it has ended (cancelled while queued)."""
        if not self.claimed:
            self.claimed = self.future._claim()
            if not self.claimed:
                self.state = TaskState.DONE
            return self.claimed
        if self.future.done():
            self.state = TaskState.DONE
            return False
        return True

    @property
    def name(self) -> str:
        return task_name(self.fn)

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.name} {self.state.value}>"


class Ledger:
    """Settles futures and counts how they ended. Used by the manager thread only."""

    def __init__(self, counts: Dict[str, int]):
        self.counts = counts

    def result(self, task: Task, value: Any) -> None:
        task.state = TaskState.DONE
        task.payload = None
        try:
            task.future.set_result(value)
            self.counts["completed"] += 1
        except InvalidStateError:
            self.counts["late"] += 1  # cancelled while running (cancel_running=True)

    def fail(self, task: Task, exc: BaseException) -> None:
        task.state = TaskState.DONE
        task.payload = None
        if not task.claimed and not task.claim():
            return  # cancelled while queued: it never ran, and its future has ended
        try:
            task.future.set_exception(exc)
            self.counts["failed"] += 1
        except InvalidStateError:
            self.counts["late"] += 1

    def cancel(self, task: Task) -> None:
        """End a task that never started as CANCELLED, claimed or not."""
        task.state = TaskState.DONE
        task.payload = None
        future = task.future
        if task.claimed:
            if future._cancel_claimed():
                self.counts["cancelled"] += 1
        elif future.cancel():
            pass  # counted by SafeFuture.cancel
