"""The Future both executors hand out: a cancel is told to wait() and as_completed() at once.

The stdlib's futures are only told of a cancel when their executor next looks at them, so
``wait()`` on a cancelled queue can sit out its whole timeout. With ``_cancel_running`` set,
``cancel()`` also ends a RUNNING future (its executor then stops the task); what the executor
must do after a cancel is its ``_after_cancel``.
"""
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, PENDING, RUNNING
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    _FutureBase = Future[Any]  # Future is not subscriptable at run time on Python 3.8
else:
    _FutureBase = Future


class CancelNowFuture(_FutureBase):
    _cancel_running = False

    def set_running_or_notify_cancel(self) -> bool:
        with self._condition:  # an RLock: the base method takes it again
            if self._state == CANCELLED_AND_NOTIFIED:
                return False  # cancel() told the waiters already
            return super().set_running_or_notify_cancel()

    def _claim(self) -> bool:
        """set_running_or_notify_cancel() for the common case in one lock: PENDING -> RUNNING."""
        with self._condition:
            if self._state == PENDING:
                self._state = RUNNING
                return True
        return self.set_running_or_notify_cancel()

    def cancel(self) -> bool:
        state: Optional[str]
        with self._condition:
            state = self._state
            if state == PENDING or (state == RUNNING and self._cancel_running):
                self._state = CANCELLED
                self._condition.notify_all()
            else:
                state = None
        if state is None:
            return super().cancel()  # FINISHED or RUNNING: False; already CANCELLED: True
        self._notify_cancelled()
        self._after_cancel(was_running=state == RUNNING)
        return True

    def _cancel_from_running(self) -> bool:
        """End a RUNNING future as CANCELLED (its task never started, or was stopped)."""
        with self._condition:
            if self._state != RUNNING:
                return False
            self._state = CANCELLED
            self._condition.notify_all()
        self._notify_cancelled()
        return True

    def _notify_cancelled(self) -> None:
        self.set_running_or_notify_cancel()  # wait() and as_completed() learn it now
        self._invoke_callbacks()  # type: ignore[attr-defined]  # the stdlib's private helper

    def _after_cancel(self, was_running: bool) -> None:
        """Called once cancel() has succeeded, under no lock."""
