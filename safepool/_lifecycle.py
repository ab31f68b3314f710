"""The manager's record of one worker: its state, its tasks, its channel and its stop ladder.

Worker states, and what moves a worker between them (manager thread only)::

    STARTING --READY--> SERVING --STOP sent (recycle, shutdown)--> RETIRING
        |                  |                                          |
        +------------------+--SIGTERM (timeout, cancel, abort, grace over)--> TERMINATING
                                                                               |
                                              grace over, or kill_workers() --> KILLED
    any state --its process ended (sentinel, or waitpid)--> reaped and forgotten

Invariants:

* Only SERVING workers are sent tasks. A STARTING worker has none: its first task waits for
  its READY, one round trip, so that nothing is ever queued behind a slow initializer.
* ``running`` is the one task the worker said STARTED for and has not finished; ``sent`` are
  the tasks written to it that it has not started, in the order it will start them.
* A worker in TERMINATING or KILLED holds no slot: its replacement starts at once.
"""
import collections
import enum
import signal
import time
from typing import Any, Deque, List, Optional

from ._channel import Channel
from ._ledger import Task
from ._logs import LogReader
from ._process import WorkerProcess, kill_tree

#: Why a worker was replaced (the keys of ``PoolStats.workers_replaced``). Here, not in
#: ``_stats``, so that starting a pool does not import ``dataclasses`` (4-5 ms, most of it
#: ``inspect``) in the parent and, through the user's ``__main__``, in the fork server,
#: where it delayed the first worker.
CAUSES = ("crash", "timeout", "cancel", "recycle", "terminated")

#: After a STOP message, how long an idle worker gets to exit before SIGTERM.
STOP_GRACE = 3.0
#: After SIGTERM, how long before SIGKILL of the worker's whole process tree.
TERM_GRACE = 1.0


class WorkerState(enum.IntEnum):
    STARTING = 0
    SERVING = 1
    RETIRING = 2     # STOP sent behind its tasks: it finishes them, then exits
    TERMINATING = 3  # SIGTERM sent
    KILLED = 4       # SIGKILL sent to it and its process tree


class Worker:
    """One worker process, as the manager sees it."""

    def __init__(self, proc: WorkerProcess, now: float):
        self.proc = proc
        self.pid = proc.pid
        self.slot: int = getattr(proc, "slot", 0)
        self.channel = Channel(proc.task_fd, proc.result_fd, proc.control_fd,
                               getattr(proc, "fd_sock", None))
        self.state = WorkerState.STARTING
        self.started_at = now
        self.running: Optional[Task] = None
        self.sent: Deque[Task] = collections.deque()
        self.assigned = 0                 # tasks sent and not taken back (max_tasks_per_child)
        self.tasks_started = 0            # tasks it said STARTED for
        self.stop_cause: Optional[str] = None  # why we are stopping it (None: we are not)
        self.stop_deadline: Optional[float] = None
        self.descendants: List[Any] = []  # psutil.Process handles
        self.init_error: Optional[BaseException] = None
        self.fault: Optional[BaseException] = None  # its channel broke: acks cannot be trusted
        self.lost_reason: Optional[str] = None  # what to tell a task stopped with it
        self.abandoned = False  # the pool broke and failed its tasks; its messages are moot
        self.logs: Optional[LogReader] = None  # its log pipe's reader (forward_logs)
        # A warm spare (spare_workers=): started and initialized, sent no task, outside
        # max_workers, until a lost worker's place is given to it (promoted: spare = False).
        self.spare = False

    @property
    def serving(self) -> bool:
        return self.state == WorkerState.SERVING and not self.spare

    @property
    def idle(self) -> bool:
        return (self.state == WorkerState.SERVING and self.running is None and not self.sent
                and not self.spare)

    @property
    def serving_spare(self) -> bool:
        """A spare ready to take a lost worker's place."""
        return self.spare and self.state == WorkerState.SERVING

    @property
    def holds_slot(self) -> bool:
        """Counts against max_workers (a spare does not, until promoted)."""
        return self.state < WorkerState.TERMINATING and not self.spare

    def backlog(self) -> List[Task]:
        """What waits here behind another task: sent, not started, not already being taken
        back. The next task of a worker running nothing is not waiting behind anything: it
        is about to start, and taking it back would only bounce it between idle workers (a
        revoke round trip per task, which tripled the latency of one-at-a-time submits)."""
        waiting = list(self.sent) if self.running is not None else list(self.sent)[1:]
        return [t for t in waiting if not t.revoking]

    # ---- the stop ladder: STOP -> SIGTERM -> SIGKILL of the tree --------------------------

    def retire(self, cause: str) -> bool:
        """Queue STOP behind its tasks. False if it is already on its way out."""
        if self.state >= WorkerState.RETIRING:
            return False
        self.state = WorkerState.RETIRING
        self.stop_cause = cause
        self.channel.write_stop()
        self.arm_stop_grace()
        return True

    def arm_stop_grace(self) -> None:
        """A retiring worker with nothing left to run gets STOP_GRACE to exit."""
        if (self.state == WorkerState.RETIRING and self.running is None and not self.sent
                and self.stop_deadline is None):
            self.stop_deadline = time.monotonic() + STOP_GRACE

    def terminate(self, cause: str) -> None:
        if self.state >= WorkerState.TERMINATING:
            return
        self.state = WorkerState.TERMINATING
        self.stop_cause = self.stop_cause if cause == "escalate" else cause
        self._collect_descendants()
        self.proc.signal(signal.SIGTERM)
        self.stop_deadline = time.monotonic() + TERM_GRACE

    def kill(self, cause: Optional[str] = None) -> None:
        if self.state < WorkerState.TERMINATING and cause is not None:
            self.stop_cause = cause
        self.state = WorkerState.KILLED
        self.stop_deadline = None
        self._collect_descendants()
        self.proc.signal(signal.SIGKILL)
        self.proc.kill_group()
        kill_tree(self.descendants)

    def _collect_descendants(self) -> None:
        # Found before the kill: once the worker is dead, its children are re-parented.
        if not self.descendants:
            self.descendants = self.proc.descendants()
