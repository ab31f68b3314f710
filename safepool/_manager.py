"""The manager thread: the one owner of every worker, every pipe and the task ledger.

Other threads never touch a worker, a pipe or a task's state: ``submit()`` appends a Task to
``incoming``, every other request appends to ``commands``, and both call ``wakeup()``. The
manager thread does everything else around one ``selectors`` wait on: each worker's result pipe
and exit sentinel, the task pipes that have output waiting, the wake-up pipe, and the nearest
deadline. Every descriptor to a worker is non-blocking, so no worker, however stuck, can stall
the manager; workers are started on the starter thread, so no start can stall it either.

One task's way::

    submit() --incoming--> queue --TASKS--> worker's inbox --STARTED--> running --RESULT--> future
                             ^                   |
                             +------REVOKED------+  (taken back unstarted: another worker,
                                                     cancel_futures, an abandoned map)

"Started" is the worker's own word (``STARTED``, sent before it even unpickles the task), never
inferred: a task without it ran none of its code and may be sent again; a task with it is never
sent again. See ``_ledger.py`` and ``_lifecycle.py`` for the states and their invariants, and
``docs/design.rst`` for the whole picture and the production failure behind each rule.
"""
from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import selectors
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from types import MappingProxyType
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)

from . import _hints
from . import _protocol as P
from ._channel import Message, ProtocolError
from ._ledger import Ledger, Task, TaskState
from ._lifecycle import CAUSES, Worker, WorkerState
from ._out_of_band import Packed
from ._process import Starter, WorkerProcess, kill_tree
from .errors import (
    PoisonTaskError,
    TaskFaultError,
    TaskPicklingError,
    TaskTimeoutError,
    TaskUnpicklingError,
    WorkerLostError,
    describe_exit,
)

if TYPE_CHECKING:
    from ._stats import PoolStats

log = logging.getLogger("safepool")
#: A message's payload, as the channel reads it.
_Payload = Union[bytearray, memoryview]
# Silent by default: the application decides where safepool's warnings go.
log.addHandler(logging.NullHandler())

#: Workers that die before taking a task (a failing initializer, a broken environment), this
#: many times in a row, break the pool instead of being respawned forever.
STARTUP_FAILURE_LIMIT = 3
#: The most tasks sent in one message, the task length below which batching pays, and the
#: estimated work one message may carry. Sent tasks that have not started can be taken back,
#: so a batch costs no cancellability; it is kept small so that taking back is rarely needed.
MAX_BATCH = 16
FAST_TASK = 0.002
BATCH_WORK = 0.005
#: A busy worker gets its next batch once no more than this many tasks wait in its inbox
#: (so it never waits for a round trip), only while tasks take less than PIPELINE_BELOW.
PIPELINE_REFILL = 1
PIPELINE_BELOW = 0.005
LIVENESS_INTERVAL = 1.0
SPAWN_RETRY = 0.2
#: A worker that dies before starting any task, again and again (something kills workers
#: right after start-up: an initializer's thread, a watchdog, a cgroup at its limit), is
#: replaced at once the first time, then after SPAWN_RETRY doubled per further loss in a row,
#: at most this many seconds: replacing it at once every time spun a core on process starts.
IDLE_LOSS_BACKOFF_MAX = 5.0
#: How long the end of the pool waits for a worker start still under way.
START_BOUND = 60.0

_COUNT_KEYS = ("started", "completed", "failed", "cancelled", "late", "submitted", "revoked",
               "retried", "poison", "soft_timeouts", "logs_forwarded", "logs_dropped",
               "spares_used",
               *("replaced_" + c for c in CAUSES))


class PoolManager:
    """State and loop of the manager thread. Methods in the first section are the only ones
    other threads may call; they take no lock that user code could be waiting on."""

    def __init__(self, ctx: BaseContext, max_workers: int,
                 initializer: Optional[Callable[..., Any]], initargs: Tuple[Any, ...], *,
                 max_tasks_per_child: Optional[int], task_timeout: Optional[float],
                 max_worker_lifetime: Optional[float], max_worker_memory: Optional[int],
                 cancel_running: bool = False, cloudpickle_fallback: bool = True,
                 forward_logs: bool = True, spare_workers: int = 0):
        self.ctx = ctx
        self.spare_workers = spare_workers
        self.max_workers = max_workers
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks_per_child = max_tasks_per_child
        self.task_timeout = task_timeout
        self.max_worker_lifetime = max_worker_lifetime
        self.max_worker_memory = max_worker_memory
        self.cancel_running = cancel_running
        self.cloudpickle_fallback = cloudpickle_fallback
        self.forward_logs = forward_logs
        self.owner_pid = os.getpid()

        # Shared with other threads: deque appends and pops are atomic.
        self.incoming: Deque[Task] = collections.deque()
        self.commands: Deque[Tuple[Any, ...]] = collections.deque()
        self.caller_events: Deque[str] = collections.deque()  # counts from other threads
        # Held only to append to ``incoming`` or to close it: no user code runs under it.
        self.intake_lock = threading.Lock()
        self.closed = False  # no more tasks are taken in (set under intake_lock)
        self.broken: Optional[BrokenProcessPool] = None
        self.faulted = False  # the manager itself failed
        self.accepted = 0

        # Owned by the manager thread.
        self.queue: Deque[Task] = collections.deque()
        self.workers: Dict[int, Worker] = {}
        self.starting = 0
        self.starting_slots: Set[int] = set()
        self.spare_slots: Set[int] = set()  # slots of spares being started
        self.last_spawn_at = 0.0
        self.shutting_down = False
        self.aborting: Optional[str] = None
        self.startup_failures = 0
        self.next_spawn_at = 0.0
        self.idle_losses = 0  # workers lost in a row before starting any task
        self.replace_wanted = False  # a lost worker's place is to be filled (_replace_lost)
        self.avg_task_time: Optional[float] = None
        self.counts = dict.fromkeys(_COUNT_KEYS, 0)
        self.ledger = Ledger(self.counts)
        # workers alive, workers busy, tasks on workers: published
        self.gauges: Tuple[int, int, Tuple[Task, ...], int] = (0, 0, (), 0)
        # Even while the loop waits in select() (nothing above changes), odd while it works:
        # stats() reads the queue and the gauges in one even epoch, or a task moving from the
        # queue to a worker between its reads is counted nowhere (CI saw queued + running one
        # short). Only the manager thread changes it.
        self.epoch = 0
        self._next_liveness_check = 0.0
        self._nearest: Optional[float] = None

        self._woken = False
        self._wake_lock = threading.Lock()  # so no wakeup() writes to a closed, reused fd
        self._wake_closed = True
        self.thread: Optional[threading.Thread] = None
        self.starter: Optional[Starter] = None
        self.finished = threading.Event()  # set once every worker is reaped and fd closed

    # ---- called from other threads -------------------------------------------------------

    def start(self) -> None:
        """Start the manager thread. Raises (and may be called again) if it cannot."""
        r, w = os.pipe()
        try:
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            selector = selectors.DefaultSelector()
            selector.register(r, selectors.EVENT_READ, None)
            thread = threading.Thread(target=self._run, name="safepool-manager", daemon=True)
            self.selector, self._wake_r, self._wake_w = selector, r, w
            self._wake_closed = False
            self._woken = False
            thread.start()
        except BaseException:
            self._wake_closed = True
            try:
                selector.close()
            except Exception:
                pass
            os.close(r)
            os.close(w)
            raise
        self.thread = thread

    def count(self, key: str) -> None:
        """Count an event seen by a caller's thread. Lock-free: a GC finalizer (an abandoned
        map() cancelling its futures) may call it from inside any safepool code."""
        self.caller_events.append(key)

    def wakeup(self) -> None:
        """Wake the manager. Never blocks: a full wake-up pipe already means "wake up"."""
        if not self._woken:
            self._woken = True
            with self._wake_lock:
                if self._wake_closed:
                    return
                try:
                    os.write(self._wake_w, b"\0")
                except OSError:  # full: the manager will wake anyway
                    pass

    def request(self, *command: Any) -> None:
        self.commands.append(command)
        self.wakeup()

    def take(self, task: Task) -> bool:
        """Hand a new task to the manager. False: the manager has ended (the pool is broken
        or shut down) and will never settle it."""
        with self.intake_lock:
            if self.closed:
                return False
            self.incoming.append(task)
            self.accepted += 1
        self.wakeup()
        return True

    def stats(self) -> PoolStats:
        # Copies of what the manager owns, each one C-level copy under the GIL; nothing here
        # allocates under a lock. The manager may run between two of them (CI saw
        # tasks_queued + tasks_running one short: the gauges were read, the manager sent the
        # queued task to its busy worker, then the queue was read). So take a set read while
        # it stayed parked (one even epoch), and count each task seen once, by the state it
        # is in now. An attempt does only C-level copies, so that it fits between two of the
        # manager's turns even with a queue of 200,000 tasks (a Python loop over it did not,
        # and every attempt failed).
        from ._stats import PoolStats  # on first use: see CAUSES in _lifecycle

        on_manager = threading.current_thread() is self.thread
        attempts = _STATS_ATTEMPTS
        if on_manager or self.finished.is_set() or self.owner_pid != os.getpid():
            # A done-callback on the manager thread (waiting for it to park would wait for
            # ourselves), a manager that has ended (even if its end failed), or a forked
            # child (no manager thread at all): nothing moves while we read.
            attempts = 1
        actives: List[Tuple[Task, ...]] = []
        first: List[List[Task]] = []
        for attempt in range(attempts):
            if attempt:
                time.sleep(_STATS_RETRY_PAUSE)  # lets the manager finish its turn and park
            epoch = self.epoch
            c = dict(self.counts)
            events = list(self.caller_events)
            incoming = list(self.incoming)
            queue = list(self.queue)
            alive, busy, active, spares_ready = self.gauges
            actives.append(active)
            parked = epoch % 2 == 0 and self.epoch == epoch
            if parked:
                break
            if attempt == 0 and attempts > 1:
                first = [incoming, queue]
        if on_manager:
            # Mid-turn: a lost worker's tasks may be out of its record and not back in the
            # queue yet. The last published tasks still name them; what the manager holds
            # now names the rest.
            alive, busy, active, spares_ready = self._gauges()
            actives.append(active)
        if parked and not on_manager:
            # One consistent picture: no task is in two of these lists.
            pending: Iterable[Task] = itertools.chain(incoming, queue, active)
        else:
            # Every task on a worker in any read (a handful each): if the manager never
            # parked, one given back to the queue after the queue was read is still found;
            # and the first read of the queue too. A task seen twice counts once.
            seen: Dict[int, Task] = {id(t): t for active in actives for t in active}
            for tasks in (*first, incoming, queue):
                seen.update((id(t), t) for t in tasks)
            pending = seen.values()
        for key in events:
            c[key] += 1
        queued = running = 0
        for t in pending:
            if t.future.done():
                continue
            if t.state == TaskState.QUEUED:
                queued += 1
            elif t.state in _ACTIVE:
                running += 1
        return PoolStats(
            workers_alive=alive,
            workers_busy=busy,
            workers_started=c["started"],
            workers_replaced=MappingProxyType({cause: c["replaced_" + cause] for cause in CAUSES}),
            tasks_submitted=self.accepted + c["submitted"],
            tasks_queued=queued,
            tasks_running=running,
            tasks_completed=c["completed"],
            tasks_failed=c["failed"],
            tasks_cancelled=c["cancelled"],
            late_results_dropped=c["late"],
            tasks_retried=c["retried"],
            poison_tasks=c["poison"],
            soft_timeouts=c["soft_timeouts"],
            log_records_forwarded=c["logs_forwarded"],
            log_records_dropped=c["logs_dropped"],
            spare_workers_ready=spares_ready,
            spares_used=c["spares_used"],
        )

    def after_fork_in_child(self) -> None:
        """In a process forked from the owner: let go of every pipe, touch nothing else.

        The child must not write into the parent's workers, read their results, or hold
        their lifelines open (workers must still die with the parent)."""
        self._wake_closed = True
        self.closed = True
        fds = [getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)]
        for w in list(self.workers.values()):
            fds += w.proc.parent_fds
            w.proc.forget_in_forked_child()
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    # ---- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        self.epoch += 1
        try:
            self.starter = Starter(self.ctx, self.initializer, self.initargs,
                                   self.max_worker_memory is not None, self._on_started,
                                   self.cloudpickle_fallback, self.forward_logs)
            while True:
                # Tasks first: a command (cancel_futures) concerns every task submitted before it.
                self._take_incoming()
                self._drain_commands()
                self._take_incoming()
                if self._finished():
                    break
                self._replace_lost()
                self._dispatch()
                self._stop_idle_workers()
                self._publish_gauges()
                timeout = self._next_timeout()
                # Re-arm wakeup() before looking for work one last time: a request appended
                # before this line is seen below, one appended after it writes a byte. (A
                # wakeup() interrupted between its flag and its write cannot silence us.)
                self._woken = False
                if self.commands or self.incoming or self.caller_events:
                    timeout = 0
                self.epoch += 1  # even: parked, the published picture holds still
                events = self.selector.select(timeout)
                self.epoch += 1
                for key, _ in events:
                    self._on_event(key)
                if self._nearest is not None and time.monotonic() >= self._nearest:
                    self._check_deadlines()
                    self._check_liveness()
        except BaseException as exc:  # noqa: B036 - never leave a future pending or a child behind
            self.epoch |= 1  # working again (select() itself may have raised, parked)
            log.critical("safepool manager thread failed; the pool is broken", exc_info=True)
            err = BrokenProcessPool(f"safepool's manager thread failed: {exc!r}; the pool is "
                                    "broken and every unfinished task failed with this error. "
                                    "Please report this as a bug.")
            err.__cause__ = exc
            self.faulted = True
            self.broken = self.broken or err
            self._fail_everything(err)
        finally:
            self._final_cleanup()

    def _finished(self) -> bool:
        if self.aborting is not None:
            # Nothing queued will ever run now (no worker is started or sent a task): what
            # got here after the abort (a late requeue, a late submit) ends cancelled, so that
            # shutdown() cannot wait for it forever.
            while self.queue:
                self.ledger.cancel(self.queue.popleft())
        if not self.shutting_down or self.queue or self.workers:
            return False
        if self.starting and self.broken is None:
            # A start under way: its worker is stopped once it arrives. Not forever: a start
            # stuck past START_BOUND is left to _final_cleanup (which kills what arrives late).
            return time.monotonic() >= self.last_spawn_at + START_BOUND
        return True

    def _on_event(self, key: selectors.SelectorKey) -> None:
        data = key.data
        if data is None:
            self._drain_wakeup()
            return
        self._on_worker_event(*data)

    def _on_worker_event(self, kind: str, w: Worker) -> None:
        if self.workers.get(w.pid) is not w:
            return
        try:
            if kind == "exit":
                self._on_exit(w)
            elif kind == "read":
                self._read(w)
            elif kind == "logs":
                self._read_logs(w)
            elif kind == "write":
                for outbox in w.channel.outboxes:
                    outbox.flush()
                self._watch_writes(w)
        except Exception as exc:
            # A fault in one worker's channel (a corrupt frame, a failure handling it) costs
            # that worker and what it had started, never the pool.
            self._channel_fault(w, exc)

    def _drain_wakeup(self) -> None:
        try:
            os.read(self._wake_r, 4096)  # holds a byte or two: _woken limits the writes
        except OSError:
            pass
        # Cleared only after draining: a wakeup() racing with us then writes a fresh byte.
        self._woken = False

    def _drain_commands(self) -> None:
        while self.caller_events:
            self.counts[self.caller_events.popleft()] += 1
        while self.commands:
            command = self.commands.popleft()
            name = command[0]
            if name == "started":
                self._on_started_here(command[1], command[2], command[3])
            elif name == "shutdown":
                self.shutting_down = True
            elif name == "cancel_futures":
                self.shutting_down = True
                self._cancel_futures()
            elif name == "cancel":
                self._cancel_running(command[1])
            elif name == "withdraw":
                self._withdraw(command[1])
            elif name == "abort":
                self._abort(command[1], command[2])

    def _take_incoming(self) -> None:
        while self.incoming:
            self.queue.append(self.incoming.popleft())

    def _publish_gauges(self) -> None:
        self.gauges = self._gauges()

    def _gauges(self) -> Tuple[int, int, Tuple[Task, ...], int]:
        workers = list(self.workers.values())
        active = []
        for w in workers:
            if w.running is not None:
                active.append(w.running)
            active.extend(w.sent)
        spares = sum(1 for w in workers if w.spare)
        return (len(workers) - spares,
                sum(1 for w in workers if w.running is not None or w.sent),
                tuple(active), sum(1 for w in workers if w.spare and w.serving_spare))

    # ---- starting workers ------------------------------------------------------------------

    def _on_started(self, proc: Optional[WorkerProcess], error: Optional[BaseException],
                    slot: int) -> None:
        """On the starter thread: hand the result to the manager."""
        self.request("started", proc, error, slot)

    def _on_started_here(self, proc: Optional[WorkerProcess],
                         error: Optional[BaseException], slot: int) -> None:
        self.starting -= 1
        self.starting_slots.discard(slot)
        spare = slot in self.spare_slots
        self.spare_slots.discard(slot)
        if proc is None:
            log.warning("safepool could not start a worker: %r", error)
            self.next_spawn_at = time.monotonic() + SPAWN_RETRY
            self._startup_failed(error, f"starting a worker failed: {error!r}")
            return
        w = Worker(proc, time.monotonic())
        w.spare = spare
        self.workers[w.pid] = w
        self.selector.register(proc.result_fd, selectors.EVENT_READ, ("read", w))
        self.selector.register(proc.sentinel, selectors.EVENT_READ, ("exit", w))
        if proc.log_fd is not None:
            from ._logs import LogReader

            w.logs = LogReader(proc.log_fd, proc.pid)
            self.selector.register(proc.log_fd, selectors.EVENT_READ, ("logs", w))
        self.counts["started"] += 1
        log.debug("started worker pid %d", w.pid)
        if self.aborting is not None or self.broken is not None:
            w.kill("terminated")

    def _can_spawn(self) -> bool:
        live = sum(1 for w in self.workers.values() if w.holds_slot)
        return (self.broken is None and self.aborting is None
                and live + self.starting - len(self.spare_slots) < self.max_workers
                and time.monotonic() >= self.next_spawn_at)

    def _spawn(self, spare: bool = False) -> bool:
        """Start a worker (a spare: outside max_workers). False if no slot is free."""
        # The lowest slot no live process holds: a replacement takes the slot of the worker
        # it replaces (safepool.current_worker().slot), so per-slot resources stay in range
        # (range(max_workers + spare_workers): a spare holds a slot of its own).
        held = {w.slot for w in self.workers.values() if w.state < WorkerState.TERMINATING}
        held |= self.starting_slots
        free = set(range(self.max_workers + self.spare_workers)) - held
        if not free:
            # Every slot is held, by a retiring process among others: its exit frees one and
            # brings us back here. (min() of nothing once killed the manager: a broken pool.)
            log.debug("no free worker slot: the start waits for a retiring worker's exit")
            return False
        slot = min(free)
        self.starting += 1
        self.last_spawn_at = time.monotonic()
        self.starting_slots.add(slot)
        if spare:
            self.spare_slots.add(slot)
        assert self.starter is not None  # set before the loop starts
        self.starter.start_one(slot)
        return True

    def _promote_spare(self) -> bool:
        """Give a lost worker's place to a ready spare: it takes tasks now, with no start on
        the critical path (issue 15); a new spare is started in the background."""
        live = sum(1 for w in self.workers.values() if w.holds_slot)
        if live + self.starting - len(self.spare_slots) >= self.max_workers:
            return False
        for w in self.workers.values():
            if w.spare and w.state == WorkerState.SERVING:
                w.spare = False
                self.counts["spares_used"] += 1
                log.debug("spare worker pid %d takes a worker's place", w.pid)
                return True
        return False

    def _top_up_spares(self) -> None:
        """Keep spare_workers spares started, once the pool has started a worker, while it
        serves (not while it shuts down, aborts or is broken, nor faster than failed starts
        are retried: a failing initializer counts towards the crash-loop limit either way)."""
        if (not self.spare_workers or self.shutting_down or self.broken is not None
                or self.aborting is not None or self.counts["started"] == 0
                or time.monotonic() < self.next_spawn_at):
            return
        # A retiring spare still holds its slot: counted until it has gone, or the new spare
        # would find no slot free.
        spares = sum(1 for w in self.workers.values()
                     if w.spare and w.state < WorkerState.TERMINATING)
        for _ in range(self.spare_workers - spares - len(self.spare_slots)):
            if not self._spawn(spare=True):
                break

    # ---- dispatching -----------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.broken is not None:
            self._fail_queue(self.broken)
            return
        idle = [w for w in self.workers.values() if w.idle]
        while self.queue and idle:
            self._send_batch(idle.pop())
        if self._can_spawn():
            # Start workers for the work that waits: the queue, and tasks queued behind a busy
            # worker (a new worker takes those back). Counting only the queue left a task
            # stuck behind a long one after its idle taker retired or died, forever if the
            # long one waited for it.
            waiting = len(self.queue) + sum(len(w.backlog()) for w in self.workers.values()
                                            if w.running is not None)
            waiting -= self.starting - len(self.spare_slots) + len(idle) + sum(
                1 for w in self.workers.values()
                if w.state == WorkerState.STARTING and not w.spare)
            while waiting > 0 and self._promote_spare():
                waiting -= 1
                idle = [w for w in self.workers.values() if w.idle]
                while self.queue and idle:
                    self._send_batch(idle.pop())
            while waiting > 0 and self._can_spawn() and self._spawn():
                waiting -= 1
        if self.queue:
            # Keep short tasks flowing to busy workers; never back behind the task a task was
            # just taken back from (it would wait there again, with no idle worker to free it).
            while self.queue:
                w = self._pipeline_worker()
                if w is None or self.queue[0].taken_from == w.pid:
                    break
                self._send_batch(w)
        elif idle:
            self._steal(idle)
        self._top_up_spares()

    def _pipeline_worker(self) -> Optional[Worker]:
        """A busy worker that may take a task behind its running one, so that it starts the
        next without waiting for a round trip (as the stdlib's shared call queue lets its
        workers do). One task deep, or a refill at PIPELINE_REFILL for short tasks. What waits
        there is taken back as soon as another worker is idle (``_steal``), so nothing is
        stuck behind a long task. Never with cancel_running, so that a cancelled task is
        always one that runs. Never while a worker is starting: it will be idle in a moment,
        and a task queued behind a busy worker then would start after newer ones."""
        if self.cancel_running or self.starting > len(self.spare_slots):
            return None
        short = self.avg_task_time is not None and self.avg_task_time <= PIPELINE_BELOW
        refill = PIPELINE_REFILL if short else 0
        best = None
        for w in self.workers.values():
            if w.state == WorkerState.STARTING and not w.spare:
                return None
            if w.serving and len(w.sent) <= refill:
                if best is None or len(w.sent) < len(best.sent):
                    best = w
        return best

    def _steal(self, idle: List[Worker]) -> None:
        """Nothing queued, a worker idle: take back the unstarted tail of the longest backlog,
        so that nothing waits behind a busy worker while another is free (a task that waits
        for the one queued behind it would otherwise deadlock)."""
        for _ in idle:
            victim: Optional[Worker] = None
            tail: List[Task] = []
            for w in self.workers.values():
                backlog = w.backlog()
                if len(backlog) > len(tail):
                    victim, tail = w, backlog
            if victim is None:
                return
            tail = tail[len(tail) // 2:]  # the newer half, at least one
            self._revoke(victim, tail)

    def _revoke(self, w: Worker, tasks: List[Task]) -> None:
        tasks = [t for t in tasks if not t.revoking]
        if not tasks:
            return
        for t in tasks:
            t.revoking = True
        self.counts["revoked"] += len(tasks)  # asked back (internal: tests, profiling)
        w.channel.write_revoke(tasks)
        self._watch_writes(w)

    def _batch_size(self, w: Worker) -> int:
        if self.cancel_running:
            return 1  # a cancelled task must be the one running, never one queued behind it
        n = 1
        if self.avg_task_time is not None and self.avg_task_time < FAST_TASK:
            # Short tasks: share the queue out in a few messages per worker, to save system
            # calls and wake-ups, but never so much that one worker hoards the queue.
            n = max(1, min(MAX_BATCH, len(self.queue) // (2 * self.max_workers),
                           int(BATCH_WORK / max(self.avg_task_time, 1e-6))))
        if self.max_tasks_per_child is not None:
            n = min(n, self.max_tasks_per_child - w.assigned)
        return n

    def _send_batch(self, w: Worker) -> None:
        limit = self._batch_size(w)
        batch: List[Task] = []
        while self.queue and len(batch) < limit:
            task = self.queue.popleft()
            # Marks the future RUNNING (so cancel() returns False, as in the stdlib's call
            # queue), unless the caller cancelled it while it was queued.
            if task.claim() and self._buffers_ready(task):
                batch.append(task)  # (a cancelled one was counted by SafeFuture.cancel)
        if not batch:
            return
        for task in batch:
            task.state = TaskState.SENT
            task.revoking = False
            task.taken_from = None
        w.sent.extend(batch)
        w.assigned += len(batch)
        w.channel.write_tasks(batch)
        self._watch_writes(w)
        if w.fault is not None:
            return  # faulted (its descriptors could not be passed): it is being killed
        if self.max_tasks_per_child is not None and w.assigned >= self.max_tasks_per_child:
            self._retire(w, "max_tasks_per_child reached", "recycle")

    def _buffers_ready(self, task: Task) -> bool:
        """A task whose big buffers were left for sending time (many memfds were open when
        it was submitted) gets them written now; if that fails (no descriptor or memory
        left), the task fails alone, with the reason."""
        payload = task.payload
        if type(payload) is not Packed or not payload.buffers.views:
            return True
        try:
            payload.buffers.materialize()
            return True
        except OSError as exc:
            err = TaskPicklingError(
                f"could not put the big buffers of {task.name} into shared memory to send "
                f"them: {exc}. Raise the open-file limit (ulimit -n) or the memory available, "
                "or submit fewer big tasks at a time.")
            err.__cause__ = exc
            self.ledger.fail(task, err)
            return False

    def _watch_writes(self, w: Worker) -> None:
        """Wait for a worker's pipe to be writable while bytes wait for it, and only then."""
        fds = w.channel.fds
        if fds is not None and fds.failed is not None and w.fault is None:
            # Descriptors the worker waits for could not be sent (ETOOMANYREFS, say): it
            # would wait forever for them. Like a corrupt frame, this costs that worker.
            self._channel_fault(w, ProtocolError(
                f"the descriptors of a big buffer could not be passed: {fds.failed!r}"))
            return
        for outbox in w.channel.outboxes:
            key = self.selector.get_map().get(outbox.fd)
            if outbox.wants_write and key is None:
                self.selector.register(outbox.fd, selectors.EVENT_WRITE, ("write", w))
            elif not outbox.wants_write and key is not None:
                self.selector.unregister(outbox.fd)

    # ---- what workers say ------------------------------------------------------------------

    def _read(self, w: Worker) -> bool:
        """Read and act on what the result pipe has now; True if there may be more."""
        messages: List[Message] = []
        try:
            more = w.channel.read(messages)
        finally:
            if w.abandoned:
                messages = []  # its tasks were failed with the pool (_fail_everything)
            for message in messages:  # those that arrived before a corrupt one still count
                self._on_message(w, *message)
        if w.channel.eof and w.proc.result_fd in self.selector.get_map():
            self.selector.unregister(w.proc.result_fd)
        return more

    def _read_logs(self, w: Worker) -> None:
        """Re-emit a worker's log records in our logging (forward_logs). The handlers are the
        application's: they run here, on the manager thread, under no safepool lock."""
        logs = w.logs
        if logs is None:
            return
        before = logs.forwarded, logs.dropped
        try:
            logs.read()
        finally:
            self.counts["logs_forwarded"] += logs.forwarded - before[0]
            self.counts["logs_dropped"] += logs.dropped - before[1]
            if logs.eof and logs.fd in self.selector.get_map():
                self.selector.unregister(logs.fd)

    def _on_message(self, w: Worker, kind: int, task_id: int, rss: int,
                    payload: _Payload) -> None:
        if kind == _STARTED:
            self._on_task_started(w, task_id)
        elif kind in _OUTCOMES:
            self._on_task_done(w, task_id, kind, payload, rss)
        elif kind == P.REVOKED:
            self._on_revoked(w, P.unpack_ids(payload))
        elif kind == P.READY:
            if w.state == WorkerState.STARTING:
                w.state = WorkerState.SERVING
            self.startup_failures = 0
        elif kind == P.INIT_FAILED:
            w.init_error = _load_exception(payload, "the initializer's exception")

    def _on_task_started(self, w: Worker, task_id: int) -> None:
        if w.running is not None or not w.sent or w.sent[0].id != task_id:
            # A worker starts its tasks in the order it got them, one at a time.
            raise ProtocolError(f"STARTED for task {task_id} out of order")
        task = w.sent.popleft()
        w.tasks_started += 1
        if w.tasks_started == 1:
            # A new worker ran its first task: starts work again. (Any task ending the
            # streak let spares die and restart for ever in a busy pool.)
            self.idle_losses = 0
        task.state = TaskState.STARTED
        task.revoking = False
        task.started_at = time.monotonic()
        task.soft_sent = False
        w.running = task
        if self.cancel_running and task.future.cancelled():
            # cancel_running: cancelled while it was on its way. It started all the same, so
            # stop it the way a running task is cancelled.
            self._stop_running_cancelled(w, task)

    def _on_task_done(self, w: Worker, task_id: int, kind: int, payload: _Payload,
                      rss: int) -> None:
        task = w.running
        if task is None or task.id != task_id:
            raise ProtocolError(f"a result for task {task_id}, which is not running there")
        w.running = None
        now = time.monotonic()
        elapsed = now - task.started_at
        self.avg_task_time = elapsed if self.avg_task_time is None else (
            0.8 * self.avg_task_time + 0.2 * elapsed)
        if task.state == TaskState.DONE:  # timed out or cancelled: already settled
            self.counts["late"] += 1
            log.debug("dropped a late result for task %d from worker %d", task_id, w.pid)
        else:
            self._settle(task, kind, payload)
        if self.max_worker_memory is not None and rss > self.max_worker_memory:
            self._retire(w, f"its memory ({rss} bytes) is over max_worker_memory", "recycle")
        if w.state == WorkerState.RETIRING:
            w.arm_stop_grace()

    def _on_revoked(self, w: Worker, ids: List[int]) -> None:
        taken = set(ids)
        back = [t for t in w.sent if t.id in taken]
        if len(back) != len(taken):
            raise ProtocolError("REVOKED names a task that was not waiting there")
        w.sent = collections.deque(t for t in w.sent if t.id not in taken)
        w.assigned -= len(back)
        for t in back:
            t.taken_from = w.pid
        # A task asked for and not given back has started: its STARTED came first and cleared
        # its ``revoking``. Tasks still in ``sent`` keep theirs: another REVOKE may be on its
        # way for them, and asking twice would have the worker give one back twice.
        self._requeue(back)
        w.arm_stop_grace()

    def _requeue(self, tasks: List[Task]) -> None:
        """Tasks that never started go back to the front of the queue, in order, unless they
        were withdrawn (then they end cancelled: they never ran)."""
        for task in reversed(tasks):
            task.revoking = False
            task.state = TaskState.QUEUED
            if task.withdraw or task.future.done() or self.aborting is not None:
                self.ledger.cancel(task)
            else:
                self.queue.appendleft(task)

    def _settle(self, task: Task, kind: int, payload: _Payload) -> None:
        if kind == P.RESULT:
            try:
                value = P.loads(payload)
            except BaseException as exc:  # noqa: B036 - SystemExit from __reduce__ too
                err = TaskUnpicklingError(
                    f"the result of {task.name} could not be unpickled in the parent: "
                    f"{type(exc).__name__}: {exc}")
                err.__cause__ = exc
                self.ledger.fail(task, err)
                return
            self.ledger.result(task, value)
        elif kind == P.ERROR:
            self.ledger.fail(task, _load_exception(payload, f"the exception raised by {task.name}"))
        else:  # BAD_TASK
            cause = _load_exception(payload, "the unpickling error")
            message = (f"the worker could not unpickle the task {task.name}: "
                       f"{type(cause).__name__}: {cause}")
            hint = _hints.unpickling_hint(message)
            err = TaskUnpicklingError(message + ("\n" + hint if hint else ""))
            err.__cause__ = cause
            self.ledger.fail(task, err)

    # ---- a worker's end ------------------------------------------------------------------

    def _on_exit(self, w: Worker) -> None:
        """A worker's process ended: read its last words, settle its tasks, reap it."""
        if w.fault is None:
            # It is dead, so all it wrote is in the pipe now. Read until the pipe is empty, not
            # until EOF: a process the task forked may hold the write end open forever.
            try:
                while not w.channel.eof and self._read(w):
                    pass
            except Exception as exc:
                w.fault = exc
        if w.logs is not None and not w.logs.eof:
            self._read_logs(w)  # its last records, before its pipes close
        for fd in (w.proc.result_fd, w.proc.sentinel, w.proc.task_fd, w.proc.control_fd,
                   w.proc.log_fd, w.channel.fds_fd):
            if fd is not None and fd in self.selector.get_map():
                self.selector.unregister(fd)
        kill_tree(w.descendants)
        exitcode = w.proc.reap()
        del self.workers[w.pid]
        cause = w.stop_cause
        if cause is None or (cause == "recycle" and w.state < WorkerState.TERMINATING
                             and (w.running is not None or w.sent)):
            cause = "crash"  # it died by itself (a recycling worker too, if it had work left)
            self._on_crash(w, exitcode)
        else:
            self._settle_stopped(w, exitcode, crashed=False)
        if cause != "shutdown":
            self.counts["replaced_" + cause] += 1
        if cause not in ("shutdown", "terminated") and not w.spare and w.tasks_started:
            # Filled from the loop (_replace_lost), not here, inside one worker's event: a
            # fault while starting the next one is not this dead worker's channel fault.
            # Only a worker that ran a task: one lost before any (a failed start, one killed
            # idle again and again) is replaced when work arrives, so nothing spins.
            self.replace_wanted = True

    def _replace_lost(self) -> None:
        """Fill a lost worker's place now, not when the next task arrives: a ready spare
        takes it, or a new worker starts. Waiting for work put a whole process start (about
        25 ms) between the caller and the next result after every recycle, crash, timeout or
        cancel; the stdlib (3.11+) restarts a recycled worker at once too."""
        if not self.replace_wanted:
            return
        self.replace_wanted = False
        if self.shutting_down or self.broken is not None or self.aborting is not None:
            return
        if not self._promote_spare() and self._can_spawn():
            self._spawn()

    def _settle_stopped(self, w: Worker, exitcode: Optional[int], crashed: bool) -> None:
        """Settle what a worker we stopped still had: what it started fails, the rest never
        started and goes back to the queue (or ends cancelled when the pool is aborting)."""
        if w.running is not None:
            task, w.running = w.running, None
            if task.state != TaskState.DONE:
                if crashed:
                    self._on_task_lost(w, task, exitcode)
                else:
                    reason = w.lost_reason or f"its worker was stopped ({w.stop_cause})"
                    self.ledger.fail(task, self._lost_error(w, task, exitcode, reason))
        self._settle_unstarted(w)

    def _on_task_lost(self, w: Worker, task: Task, exitcode: Optional[int]) -> None:
        """Its worker died under it: run it again if it has retries left, else fail it."""
        if task.withdraw or (not task.retries and not task.deaths):
            # (withdrawn: an abandoned map() no longer wants it, so it is not run again)
            self.ledger.fail(task, self._lost_error(w, task, exitcode))
            return
        task.deaths.append((w.pid, exitcode))
        if task.retries and self.aborting is None and self.broken is None:
            task.retries -= 1
            task.state = TaskState.QUEUED
            task.revoking = False
            self.queue.appendleft(task)  # next, on whichever worker is free first
            self.counts["retried"] += 1
            log.warning("running %s again (%d retries left): its worker pid %d died: %s",
                        task.name, task.retries, w.pid, describe_exit(exitcode))
            return
        self.counts["poison"] += 1
        deaths = "; ".join(f"pid {pid}: {describe_exit(code)}" for pid, code in task.deaths)
        self.ledger.fail(task, PoisonTaskError(
            f"{task.name} killed every worker it ran on, {len(task.deaths)} of them ({deaths}). "
            "It is a poison task: it was not run again. The pool keeps serving.",
            deaths=task.deaths, pid=w.pid, exitcode=exitcode, task=task.name))

    def _settle_unstarted(self, w: Worker) -> None:
        tasks, w.sent = list(w.sent), collections.deque()
        if w.fault is not None:
            # Its channel broke: STARTED messages may have been lost, so whether these started
            # is unknown. Failing them is the only way to never run one twice.
            for task in tasks:
                err = TaskFaultError(
                    f"{task.name} was sent to worker pid {w.pid}, whose channel to the parent "
                    f"failed ({w.fault!r}); whether it started is unknown, so it was not resent.")
                err.__cause__ = w.fault
                self.ledger.fail(task, err)
            return
        self._requeue(tasks)

    def _on_crash(self, w: Worker, exitcode: Optional[int]) -> None:
        if w.running is not None:
            log.warning("worker pid %d lost while running %s: %s", w.pid, w.running.name,
                        describe_exit(exitcode))
            self._settle_stopped(w, exitcode, crashed=True)
            return
        self._settle_unstarted(w)  # nothing had started: every task goes back to the queue
        if w.state != WorkerState.STARTING:  # an idle worker died: replace it, nothing lost
            log.warning("idle worker pid %d lost: %s", w.pid, describe_exit(exitcode))
            if not w.tasks_started:
                self._back_off_idle_loss()
            return
        if w.init_error is not None:
            error = w.init_error
            why = f"the initializer raised {type(error).__name__}: {error}"
        else:
            error = None
            why = f"a worker (pid {w.pid}) died while starting: {describe_exit(exitcode)}"
        log.warning("worker pid %d lost: %s", w.pid, why)
        self._startup_failed(error, why)

    def _back_off_idle_loss(self) -> None:
        """A worker died before starting any task: the first time in a row, its next start
        (a spare's top-up, or a worker for queued work) is not delayed; after that, it waits
        (IDLE_LOSS_BACKOFF_MAX: starting at once spun forever when something keeps killing
        new workers). A new worker starting its first task ends the streak."""
        self.idle_losses += 1
        if self.idle_losses < 2:
            return
        delay = min(SPAWN_RETRY * 2 ** (self.idle_losses - 2), IDLE_LOSS_BACKOFF_MAX)
        self.next_spawn_at = max(self.next_spawn_at, time.monotonic() + delay)
        log.warning("%d workers in a row died before starting a task; the next start waits "
                    "%.1fs", self.idle_losses, delay)

    def _lost_error(self, w: Worker, task: Task, exitcode: Optional[int],
                    reason: Optional[str] = None) -> WorkerLostError:
        if reason is None:
            text = (f"The worker process (pid {w.pid}) running {task.name} ended before sending "
                    f"its result: {describe_exit(exitcode)}. Only this task was lost: the "
                    "worker has been replaced and the pool keeps serving.")
        else:
            text = f"{task.name} was stopped on worker pid {w.pid}: {reason}"
        return WorkerLostError(text, pid=w.pid, exitcode=exitcode, task=task.name)

    def _channel_fault(self, w: Worker, exc: BaseException) -> None:
        log.error("worker pid %d: its channel failed (%r); killing it", w.pid, exc)
        w.fault = exc
        if w.running is not None and w.running.state != TaskState.DONE:
            err = TaskFaultError(
                f"{w.running.name} was running on worker pid {w.pid} when its channel to the "
                f"parent failed: {exc!r}. The worker was killed and replaced.")
            err.__cause__ = exc
            self.ledger.fail(w.running, err)
        for fd in (w.proc.result_fd, w.proc.task_fd, w.proc.control_fd, w.proc.log_fd,
                   w.channel.fds_fd):
            if fd is not None and fd in self.selector.get_map():
                self.selector.unregister(fd)
        w.kill("crash")

    def _startup_failed(self, error: Optional[BaseException], why: str) -> None:
        self.startup_failures += 1
        if self.startup_failures < STARTUP_FAILURE_LIMIT:
            return
        broken = BrokenProcessPool(
            f"A child process terminated abruptly, the process pool is not usable anymore: "
            f"{STARTUP_FAILURE_LIMIT} workers in a row failed before taking a task; the last "
            f"time {why}. Fix the cause (the initializer, the environment) and create a new "
            "executor.")
        broken.__cause__ = error
        self._break(broken)

    # ---- stopping workers ------------------------------------------------------------------

    def _retire(self, w: Worker, why: str, cause: str) -> None:
        if w.retire(cause):
            log.info("recycling worker pid %d: %s", w.pid, why)
            self._watch_writes(w)

    def _stop_idle_workers(self) -> None:
        if not self.shutting_down or self.queue:
            return
        if any(w.sent for w in self.workers.values() if w.running is not None):
            return  # tasks wait behind a busy worker: an idle one takes them back first
        for w in list(self.workers.values()):
            if w.running is None and not w.sent and w.state <= WorkerState.SERVING:
                if w.state == WorkerState.STARTING:
                    # Still starting (a replacement, a spare) with nothing to do: it would
                    # read STOP only after its initializer, and shutdown() would wait for it.
                    w.terminate("shutdown")
                    continue
                w.retire("shutdown")
                self._watch_writes(w)

    def _stop_running_cancelled(self, w: Worker, task: Task) -> None:
        log.info("cancelling %s: stopping worker pid %d", task.name, w.pid)
        task.state = TaskState.DONE
        w.terminate("cancel")
        if self.queue and not self._promote_spare() and self._can_spawn():
            self._spawn()

    # ---- cancelling, withdrawing, aborting, breaking ---------------------------------------

    def _cancel_running(self, task: Task) -> None:
        """SafeFuture.cancel() of a claimed task (cancel_running=True): take it back if it
        has not started, else stop the worker that runs it."""
        self.counts["cancelled"] += 1
        if task.state == TaskState.QUEUED:
            if task in self.queue:
                self.queue.remove(task)
            task.state = TaskState.DONE
            return
        for w in self.workers.values():
            if w.running is task:
                self._stop_running_cancelled(w, task)
                return
            if task in w.sent:
                task.withdraw = True
                self._revoke(w, [task])
                return

    def _withdraw(self, tasks: List[Task]) -> None:
        """Cancel these claimed tasks unless they have started (an abandoned map())."""
        by_worker: Dict[int, List[Task]] = {}
        for task in tasks:
            task.withdraw = True
            if task.state == TaskState.QUEUED and task in self.queue:
                self.queue.remove(task)
                self.ledger.cancel(task)
        for w in self.workers.values():
            for task in w.sent:
                if task.withdraw:
                    by_worker.setdefault(w.pid, []).append(task)
        for pid, mine in by_worker.items():
            self._revoke(self.workers[pid], mine)

    def _cancel_futures(self) -> None:
        """shutdown(cancel_futures=True): cancel what is queued, take back what was sent and
        has not started, and cancel that too. Only what already runs goes on."""
        self._take_incoming()
        while self.queue:
            self.ledger.cancel(self.queue.popleft())
        for w in self.workers.values():
            for task in w.sent:
                task.withdraw = True
            self._revoke(w, list(w.sent))

    def _abort(self, reason: str, sig: int) -> None:
        """terminate_workers(), kill_workers(), an expired shutdown timeout, Ctrl-C."""
        self.shutting_down = True
        self.aborting = reason
        while self.queue:
            self.ledger.cancel(self.queue.popleft())
        for w in list(self.workers.values()):
            w.lost_reason = reason
            if sig == signal.SIGKILL:
                w.kill("terminated")
            else:
                w.terminate("terminated")

    def _break(self, err: BrokenProcessPool) -> None:
        log.error("%s", err)
        self.broken = err
        self._fail_everything(err)

    def _fail_everything(self, err: BaseException) -> None:
        self._close_intake()
        self._fail_queue(err)
        for w in list(self.workers.values()):
            for task in [w.running, *w.sent]:
                if task is not None and task.state != TaskState.DONE:
                    self.ledger.fail(task, err)
            w.running, w.sent = None, collections.deque()
            w.abandoned = True  # what it still says about its tasks is moot: ignore it
            if w.state < WorkerState.TERMINATING:
                w.terminate(w.stop_cause or "terminated")

    def _fail_queue(self, err: BaseException) -> None:
        self._take_incoming()
        while self.queue:
            self.ledger.fail(self.queue.popleft(), err)

    def _close_intake(self) -> None:
        with self.intake_lock:
            self.closed = True

    # ---- deadlines -------------------------------------------------------------------------

    def _task_deadline(self, w: Worker) -> Optional[float]:
        task = w.running
        if task is None or task.timeout is None or w.state >= WorkerState.TERMINATING:
            return None
        if task.state == TaskState.DONE:
            return None
        return task.started_at + task.timeout

    def _soft_deadline(self, w: Worker) -> Optional[float]:
        task = w.running
        if task is None or task.soft_timeout is None or task.soft_sent:
            return None
        if task.state == TaskState.DONE or w.state >= WorkerState.TERMINATING:
            return None
        return task.started_at + task.soft_timeout

    def _lifetime_end(self, w: Worker) -> Optional[float]:
        # A worker that has run no task has nothing to shed: aged out while idle (a spare
        # always is), it spun through starts for ever when the lifetime was shorter than a
        # start. It is recycled after its first task once past its lifetime.
        if (self.max_worker_lifetime is None or w.state != WorkerState.SERVING
                or not w.tasks_started):
            return None
        return w.started_at + self.max_worker_lifetime

    def _next_timeout(self) -> Optional[float]:
        """Seconds until the nearest deadline (None: none), remembered in ``_nearest``."""
        nearest = self._next_liveness_check if self.workers else None
        if self.shutting_down and self.starting:  # see _finished: a start is waited for, boundedly
            nearest = min(nearest or math.inf, self.last_spawn_at + START_BOUND)
        if ((self.queue or self.spare_workers) and self.broken is None
                and self.next_spawn_at > time.monotonic()):
            # Starting a worker just failed (EAGAIN, EMFILE): try again soon;
            # STARTUP_FAILURE_LIMIT failures in a row break the pool. (Or new workers keep
            # dying idle: _back_off_idle_loss. A missing spare is started then, too.)
            nearest = min(nearest or self.next_spawn_at, self.next_spawn_at)
        for w in self.workers.values():
            for deadline in (w.stop_deadline, self._task_deadline(w), self._soft_deadline(w),
                             self._lifetime_end(w)):
                if deadline is not None and (nearest is None or deadline < nearest):
                    nearest = deadline
        self._nearest = nearest
        if nearest is None:
            return None
        return max(0.0, nearest - time.monotonic())

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.stop_deadline is not None and now >= w.stop_deadline:
                if w.state == WorkerState.TERMINATING:
                    log.warning("worker pid %d survived SIGTERM; killing its process tree",
                                w.pid)
                    w.kill()
                else:
                    log.warning("worker pid %d did not exit after STOP; sending SIGTERM", w.pid)
                    w.terminate("escalate")
            deadline = self._task_deadline(w)
            if deadline is not None and now >= deadline:
                task = w.running
                assert task is not None  # a task deadline is a running task's
                log.warning("%s timed out after %.3gs on worker pid %d; stopping the worker",
                            task.name, task.timeout, w.pid)
                self.ledger.fail(task, TaskTimeoutError(
                    f"{task.name} ran longer than its timeout of {task.timeout:g}s; its worker "
                    f"(pid {w.pid}) was stopped and replaced"))
                w.lost_reason = f"the task before it on that worker ({task.name}) timed out"
                w.terminate("timeout")
            soft = self._soft_deadline(w)
            if soft is not None and now >= soft:
                task = w.running
                assert task is not None  # a soft deadline belongs to a running task
                task.soft_sent = True
                self.counts["soft_timeouts"] += 1
                log.info("%s passed its soft timeout of %.3gs on worker pid %d",
                         task.name, task.soft_timeout, w.pid)
                w.channel.write_soft_timeout(task)
                self._watch_writes(w)
            end = self._lifetime_end(w)
            if end is not None and now >= end:
                self._retire(w, "max_worker_lifetime reached", "recycle")

    def _check_liveness(self) -> None:
        """Once a second, ask each worker's process whether it has ended.

        The sentinel normally says so, but under spawn a process the task forked can hold the
        sentinel's pipe open after the worker died; ``exitcode`` asks the OS (waitpid).
        """
        now = time.monotonic()
        if now < self._next_liveness_check:
            return
        self._next_liveness_check = now + LIVENESS_INTERVAL
        for w in list(self.workers.values()):
            if w.proc.process.exitcode is not None:
                self._on_worker_event("exit", w)

    # ---- the end ---------------------------------------------------------------------------

    def _final_cleanup(self) -> None:
        """Last resort, also on a failure of the loop itself: kill and reap every worker."""
        self._close_intake()
        for w in list(self.workers.values()):
            try:
                w.kill()
                w.proc.reap()
            except Exception:
                log.exception("while reaping worker pid %d", w.pid)
        self.workers.clear()
        if self.starter is not None:
            self.starter.close(START_BOUND if self.starting else 1.0)
            # A start that finished meanwhile reported a process: stop and reap it too.
            while self.commands:
                command = self.commands.popleft()
                if command[0] == "started" and command[1] is not None:
                    command[1].signal(signal.SIGKILL)
                    command[1].reap()
            # The starter refers back to us: break the cycle, so that the pool (and its
            # initargs: a Queue's semaphores, say) is freed by reference counting, as the
            # stdlib's is, not at some later GC pass.
            self.starter = None
        # Anything still queued can never run now.
        err = self.broken or BrokenProcessPool("the executor has shut down")
        try:
            self._fail_queue(err)
        except Exception:
            log.exception("while failing the queue")
        self._publish_gauges()
        self.epoch = (self.epoch | 1) + 1  # even for good: nothing changes any more
        self.selector.close()
        with self._wake_lock:
            self._wake_closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)
        self.finished.set()


_ACTIVE = (TaskState.SENT, TaskState.STARTED)
# stats() waits at most this long for the manager to park (a busy loop parks every few
# milliseconds at most; the GIL's switch interval is 5 ms).
_STATS_ATTEMPTS = 20
_STATS_RETRY_PAUSE = 0.0005
_STARTED = P.STARTED
_OUTCOMES = frozenset((P.RESULT, P.ERROR, P.BAD_TASK))


def _load_exception(payload: _Payload, what: str) -> BaseException:
    exc: object
    try:
        exc = P.loads(payload)
    except BaseException as error:  # noqa: B036
        exc = TaskUnpicklingError(f"{what} could not be unpickled in the parent: "
                                  f"{type(error).__name__}: {error}")
        exc.__cause__ = error
    if not isinstance(exc, BaseException):
        exc = TaskUnpicklingError(f"{what} arrived as {type(exc).__name__}, not an exception")
    return exc
