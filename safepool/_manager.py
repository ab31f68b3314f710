"""The manager thread: the one owner of every worker, every pipe and the task table.

Public methods of the executor never touch a process or a pipe: they append to ``pending`` or
``commands`` and call ``wakeup()``. Everything else happens here, in one thread, around one
``selectors`` wait on: each worker's result pipe, each worker's exit sentinel, the task pipes
that have output waiting, the wake-up pipe, and the nearest deadline. Every descriptor to a
worker is non-blocking, so no worker, however stuck, can stall the manager.

One task's way: submit -> ``pending`` -> dispatch to a worker's task pipe (several tasks in one
message when the queue is deep; one message ahead of the running one) -> the worker runs them
in order and sends one result message per task -> the future is resolved here.

Because a worker runs its tasks in order, when it dies the first task still charged to it is
the one it was running (that one fails with ``WorkerLostError``) and the rest never started
(they go back to the front of the queue): a crash costs one task, never a lost one.
"""
import collections
import fcntl
import logging
import os
import pickle
import selectors
import signal
import struct
import termios
import threading
import time
from concurrent.futures import Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from types import MappingProxyType
from typing import Deque, Dict, List, Optional

from . import _protocol as P
from ._process import WorkerProcess, kill_tree
from ._stats import CAUSES, PoolStats
from .errors import (
    TaskTimeoutError,
    TaskUnpicklingError,
    WorkerLostError,
    describe_exit,
)

log = logging.getLogger("safepool")
# Silent by default: the application decides where safepool's warnings go.
log.addHandler(logging.NullHandler())

#: Workers that die before taking a task (a failing initializer, a broken environment), this
#: many times in a row, break the pool instead of being respawned forever.
STARTUP_FAILURE_LIMIT = 3
#: After a STOP message, how long an idle worker gets to exit before SIGTERM.
STOP_GRACE = 3.0
#: After SIGTERM, how long before SIGKILL of the worker's whole process tree.
TERM_GRACE = 1.0
#: The most tasks sent in one message, the task length below which batching pays, and the
#: estimated work one message may carry. Tasks sent to a worker are RUNNING (not cancellable,
#: as in the stdlib's call queue), so batches stay small: at most about 10 ms of short tasks
#: per worker run after a cancel or an abandoned map.
MAX_BATCH = 16
FAST_TASK = 0.002
BATCH_WORK = 0.005
#: Per worker, how many task messages may wait in its pipe behind the one it is running, and
#: below which average task length that pipelining pays.
PIPELINE_DEPTH = 1
PIPELINE_BELOW = 0.005
READ_CHUNK = 1 << 18
LIVENESS_INTERVAL = 1.0
SPAWN_RETRY = 0.2
BIG_MESSAGE = 1 << 20
#: Largest task submit() may write itself (send_now): an idle worker's empty pipe takes it whole.
DIRECT_SEND_MAX = 1 << 15


class Task:
    """One submitted call: its future and its pickled (fn, args, kwargs), kept for a resend."""

    __slots__ = ("id", "future", "payload", "name", "timeout", "claimed", "__weakref__")

    def __init__(self, task_id: int, future: Future, payload: bytes, name: str,
                 timeout: Optional[float]):
        self.id = task_id
        self.future = future
        self.payload = payload
        self.name = name
        self.timeout = timeout
        self.claimed = False  # its future is RUNNING: ours to resolve, no longer cancellable

    def claim(self) -> bool:
        """Mark the future RUNNING, once; False if its future has ended (cancelled while
        queued, or cancelled while running and then put back in the queue)."""
        if not self.claimed:
            self.claimed = self.future.set_running_or_notify_cancel()
            return self.claimed
        return not self.future.done()


class Worker:
    """The manager's record of one worker process."""

    def __init__(self, proc: WorkerProcess, now: float):
        self.proc = proc
        self.pid = proc.pid
        self.started_at = now
        self.ready = False                  # READY received: the initializer succeeded
        self.tasks: Deque[Task] = collections.deque()  # sent, not finished; [0] is running
        self.messages: Deque[int] = collections.deque()  # tasks left in each sent message
        self.head_since = now               # when tasks[0] started running
        self.done = 0                       # tasks finished on this worker
        self.dispatched = 0                 # tasks ever sent to this worker
        self.out: List[memoryview] = []     # bytes not yet written to its task pipe
        self.queued = 0                     # bytes ever queued for its task pipe
        self.written = 0                    # bytes ever written into its task pipe
        self.starts: Deque[int] = collections.deque()  # stream offset of each task message
        self.inbuf = bytearray()            # bytes read from its result pipe, not yet parsed
        self.big: Optional[list] = None     # [header, buffer, filled] while a large message arrives
        self.result_open = True
        self.retiring = False               # finishes what it has, then exits (recycling)
        self.stopping: Optional[str] = None  # None, or the cause it is being stopped for
        self.stop_stage = 0                 # 0 none, 1 STOP sent, 2 SIGTERM sent, 3 SIGKILL sent
        self.stop_deadline: Optional[float] = None
        self.descendants: list = []
        self.init_error: Optional[BaseException] = None

    @property
    def accepting(self) -> bool:
        return not self.retiring and self.stopping is None


class PoolManager:
    """State and loop of the manager thread. Methods without a leading underscore are the only
    ones other threads may call."""

    def __init__(self, ctx, max_workers: int, initializer, initargs, *, max_tasks_per_child,
                 task_timeout, max_worker_lifetime, max_worker_memory, cancel_running=False):
        self.ctx = ctx
        self.max_workers = max_workers
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks_per_child = max_tasks_per_child
        self.task_timeout = task_timeout
        self.max_worker_lifetime = max_worker_lifetime
        self.max_worker_memory = max_worker_memory
        self.cancel_running = cancel_running

        # Shared with other threads: deque appends and pops are atomic.
        self.pending: Deque[Task] = collections.deque()
        self.commands: Deque[tuple] = collections.deque()
        self.broken: Optional[BrokenProcessPool] = None
        self.accepted = 0  # tasks queued by submit(), counted under the executor's lock
        self.shutting_down = False

        self.workers: Dict[int, Worker] = {}
        # The selector and the wake-up pipe exist only while the thread runs (see start()).
        self._woken = False
        self._wake_lock = threading.Lock()  # so no wakeup() writes to a closed, reused fd
        self._wake_closed = True
        self._next_liveness_check = 0.0
        self._nearest: Optional[float] = None  # the nearest deadline, from _next_timeout()

        self.startup_failures = 0
        self.avg_task_time: Optional[float] = None
        self.counts = collections.Counter()  # written by the manager thread only
        self.caller_counts = collections.Counter()  # written by other threads, under the lock
        self.caller_counts_lock = threading.Lock()
        # Held by the manager thread except while it waits in select(). submit() takes it
        # (without blocking) to hand a task straight to an idle worker: see send_now().
        self.dispatch_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="safepool-manager", daemon=True)
        self.finished = threading.Event()  # set once every worker is reaped and fd closed

    # ---- called from other threads -------------------------------------------------------

    def start(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._wake_closed = False
        self._woken = False
        self.thread.start()

    def count(self, key: str, n: int = 1) -> None:
        """Count an event seen by a caller's thread (the manager's own counts need no lock)."""
        with self.caller_counts_lock:
            self.caller_counts[key] += n

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

    def request(self, *command) -> None:
        self.commands.append(command)
        self.wakeup()

    def send_now(self, task: Task) -> bool:
        """Write a new task straight into an idle worker's pipe, from the submitting thread.

        One round trip through a process pool is a chain of thread and process wake-ups;
        this takes the manager thread out of the way in, which cuts a single submit().result()
        by about a fifth. Only when the manager is asleep (its lock is free), nothing is
        queued ahead of the task (order), and no per-worker task count needs the manager's
        bookkeeping. False: the caller queues the task as usual.
        """
        if not self.dispatch_lock.acquire(blocking=False):
            return False
        try:
            if (self.pending or self.commands or self.broken is not None or self.shutting_down
                    or self.max_tasks_per_child is not None
                    or len(task.payload) > DIRECT_SEND_MAX):
                return False
            w = self._idle_worker()
            if w is None or w.out:
                return False
            if task.claim():
                self._send_tasks(w, [task])
            # The manager must see a new deadline, or bytes the pipe did not take at once.
            wake = task.timeout is not None or bool(w.out)
        finally:
            self.dispatch_lock.release()
        if wake:
            self.wakeup()
        return True

    def stats(self) -> PoolStats:
        workers = list(self.workers.values())
        with self.caller_counts_lock:
            c = self.counts + self.caller_counts
        return PoolStats(
            workers_alive=len(workers),
            workers_busy=sum(1 for w in workers if w.tasks),
            workers_started=c["started"],
            workers_replaced=MappingProxyType({cause: c["replaced_" + cause] for cause in CAUSES}),
            tasks_submitted=self.accepted + c["submitted"],
            tasks_queued=sum(1 for t in list(self.pending) if not t.future.done()),
            tasks_running=sum(len(w.tasks) for w in workers),
            tasks_completed=c["completed"],
            tasks_failed=c["failed"],
            tasks_cancelled=c["cancelled"],
            late_results_dropped=c["late"],
        )

    # ---- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        lock = self.dispatch_lock
        lock.acquire()
        try:
            while True:
                self._drain_commands()
                if self.shutting_down and not self.pending and not self.workers:
                    break
                self._dispatch()
                self._stop_idle_workers()
                timeout = self._next_timeout()
                lock.release()
                try:
                    events = self.selector.select(timeout)
                finally:
                    lock.acquire()
                for key, mask in events:
                    self._on_event(key, mask)
                if self._nearest is not None and time.monotonic() >= self._nearest:
                    self._check_deadlines()
                    self._check_liveness()
        except BaseException as exc:  # noqa: B036 - never leave a future pending or a child behind
            log.critical("safepool manager thread failed; the pool is broken", exc_info=True)
            err = BrokenProcessPool(f"safepool's manager thread failed: {exc!r}; the pool is "
                                    "broken. Please report this as a bug.")
            err.__cause__ = exc
            self.broken = self.broken or err
            self._fail_everything(err)
        finally:
            try:
                self._final_cleanup()
            finally:
                lock.release()

    def _on_event(self, key, mask) -> None:
        data = key.data
        if data is None:
            self._drain_wakeup()
            return
        kind, w = data
        if w.pid not in self.workers:
            return
        if kind == "exit":
            self._on_exit(w)
        elif kind == "read":
            self._read(w)
        elif kind == "write":
            self._flush(w)

    def _drain_wakeup(self) -> None:
        try:
            os.read(self._wake_r, 4096)  # holds a byte or two: _woken limits the writes
        except OSError:
            pass
        # Cleared only after draining: a wakeup() racing with us then writes a fresh byte.
        self._woken = False

    def _drain_commands(self) -> None:
        while self.commands:
            command = self.commands.popleft()
            name = command[0]
            if name == "shutdown":
                self.shutting_down = True
            elif name == "cancel":
                self._cancel_running(command[1])
            elif name == "abort":
                self._abort(command[1], command[2])

    # ---- dispatching ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.broken is not None:
            self._fail_pending(self.broken)
            return
        while self.pending:
            w = self._idle_worker()
            if w is None and self._can_spawn():
                w = self._spawn()
                if w is None:
                    return
            if w is None:
                w = self._pipeline_worker()
                if w is None:
                    return
            self._send_batch(w)

    def _idle_worker(self) -> Optional[Worker]:
        for w in self.workers.values():
            if w.accepting and not w.tasks:
                return w
        return None

    def _pipeline_worker(self) -> Optional[Worker]:
        """A busy worker that may take one more message behind its running one.

        Only for short tasks: a few milliseconds of pipelining hide the round trip, while a
        long task would keep the next one waiting behind it although another worker is free.
        With ``cancel_running`` never, so that a cancelled task is always one that runs.
        """
        if self.cancel_running or self.avg_task_time is None or (
                self.avg_task_time > PIPELINE_BELOW):
            return None
        best = None
        for w in self.workers.values():
            if w.accepting and len(w.messages) <= PIPELINE_DEPTH:
                if best is None or len(w.tasks) < len(best.tasks):
                    best = w
        return best

    def _can_spawn(self) -> bool:
        # Workers being killed do not hold a slot: their replacement starts at once.
        live = sum(1 for w in self.workers.values() if w.stop_stage < 2)
        return live < self.max_workers

    def _spawn(self) -> Optional[Worker]:
        try:
            proc = WorkerProcess(self.ctx, self.initializer, self.initargs,
                                 self.max_worker_memory is not None)
        except Exception as exc:
            log.warning("safepool could not start a worker: %r", exc)
            self._startup_failed(exc, f"starting a worker failed: {exc!r}")
            return None
        w = Worker(proc, time.monotonic())
        self.workers[w.pid] = w
        self.selector.register(proc.result_fd, selectors.EVENT_READ, ("read", w))
        self.selector.register(proc.sentinel, selectors.EVENT_READ, ("exit", w))
        self.counts["started"] += 1
        log.debug("started worker pid %d", w.pid)
        return w

    def _batch_size(self, w: Worker) -> int:
        n = 1
        if self.cancel_running:
            return 1  # a cancelled task must be the one running, never one queued behind it
        if self.avg_task_time is not None and self.avg_task_time < FAST_TASK:
            # Short tasks: share the queue out in a few messages per worker, to save system
            # calls and wake-ups, but never so much that one worker hoards the queue.
            n = max(1, min(MAX_BATCH, len(self.pending) // (2 * self.max_workers),
                           int(BATCH_WORK / max(self.avg_task_time, 1e-6))))
        if self.max_tasks_per_child is not None:
            n = min(n, self.max_tasks_per_child - w.dispatched)
        return n

    def _send_batch(self, w: Worker) -> None:
        limit = self._batch_size(w)
        batch: List[Task] = []
        while self.pending and len(batch) < limit:
            task = self.pending.popleft()
            # Marks the future RUNNING (so cancel() returns False, as in the stdlib), unless
            # the caller cancelled it while it was queued.
            if task.claim():  # (a cancelled one was counted by SafeFuture.cancel)
                batch.append(task)
        if batch:
            self._send_tasks(w, batch)

    def _send_tasks(self, w: Worker, batch: List[Task]) -> None:
        """Write claimed tasks to ``w`` as one message."""
        if not w.tasks:
            w.head_since = time.monotonic()
        buffers: List[bytes] = [b""]
        size = 0
        for task in batch:
            buffers.append(P.task_frame_header(task.id, task.payload))
            buffers.append(task.payload)
            size += P.TASK_FRAME.size + len(task.payload)
        buffers[0] = P.TO_WORKER.pack(size, P.TASKS)
        if size < 65536:
            buffers = [b"".join(buffers)]
        w.tasks.extend(batch)
        w.messages.append(len(batch))
        w.dispatched += len(batch)
        self._write(w, buffers, tasks=True)
        if self.max_tasks_per_child is not None and w.dispatched >= self.max_tasks_per_child:
            self._retire(w, "max_tasks_per_child reached")

    def _write(self, w: Worker, buffers, tasks: bool = False) -> None:
        """Queue one message for the worker's task pipe and write what fits now."""
        was_empty = not w.out
        views = [memoryview(b) for b in buffers if len(b)]
        if tasks:
            w.starts.append(w.queued)
        w.queued += sum(len(v) for v in views)
        w.out.extend(views)
        if was_empty:
            self._flush(w)

    def _flush(self, w: Worker) -> None:
        """Write what the non-blocking task pipe takes now; wait for writability for the rest."""
        fd = w.proc.task_fd
        try:
            while w.out:
                written = os.writev(fd, w.out[:512])
                w.written += written
                while written:
                    head = w.out[0]
                    if written >= len(head):
                        written -= len(head)
                        w.out.pop(0)
                    else:
                        w.out[0] = head[written:]
                        written = 0
        except BlockingIOError:
            pass
        except OSError:
            # EPIPE: the worker is dead (or dying) and will never read this. Those tasks did
            # not start; its sentinel tells us the rest and they go back to the queue.
            w.out.clear()
        key = self.selector.get_map().get(fd)
        if w.out and key is None:
            self.selector.register(fd, selectors.EVENT_WRITE, ("write", w))
        elif not w.out and key is not None:
            self.selector.unregister(fd)

    # ---- results -------------------------------------------------------------------------

    def _read(self, w: Worker) -> bool:
        """Read what the result pipe has now; True if there may be more (the bound was hit)."""
        fd = w.proc.result_fd
        for _ in range(64):  # bounded, so one chatty worker cannot starve the others
            try:
                if w.big is not None:
                    header, buf, filled = w.big
                    n = os.readv(fd, [memoryview(buf)[filled:]])
                    if n == 0:
                        self._result_eof(w)
                        return False
                    w.big[2] = filled + n
                    if w.big[2] == len(buf):
                        w.big = None
                        self._on_message(w, header, memoryview(buf))
                    continue
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return False
            except OSError:
                chunk = b""
            if not chunk:
                self._result_eof(w)
                return False
            w.inbuf += chunk
            self._parse(w)
            if len(chunk) < READ_CHUNK and w.big is None:
                return False  # a short read emptied the pipe: skip the read that says EAGAIN
        return True

    def _parse(self, w: Worker) -> None:
        buf = w.inbuf
        view = memoryview(buf)
        pos, size = 0, P.FROM_WORKER.size
        try:
            while len(buf) - pos >= size:
                header = P.FROM_WORKER.unpack_from(buf, pos)
                length = header[0]
                if len(buf) - pos - size < length:
                    if length >= BIG_MESSAGE:
                        # Read the rest straight into a buffer of the right size.
                        big = bytearray(length)
                        have = len(buf) - pos - size
                        big[:have] = view[pos + size:]
                        w.big = [header, big, have]
                        pos = len(buf)
                    break
                payload = view[pos + size:pos + size + length]
                pos += size + length
                try:
                    self._on_message(w, header, payload)
                finally:
                    payload.release()  # so the buffer can be trimmed below
        finally:
            view.release()
            del buf[:pos]

    def _result_eof(self, w: Worker) -> None:
        if w.result_open:
            w.result_open = False
            self.selector.unregister(w.proc.result_fd)

    def _on_message(self, w: Worker, header, payload) -> None:
        _, kind, task_id, rss = header
        if kind == P.READY:
            w.ready = True
            w.head_since = time.monotonic()
            self.startup_failures = 0
            return
        if kind == P.INIT_FAILED:
            w.init_error = _load_exception(payload, "the initializer's exception")
            return
        if not (w.tasks and w.tasks[0].id == task_id):
            self.counts["late"] += 1  # its task timed out or was cancelled: drop it
            log.debug("dropped a late result for task %d from worker %d", task_id, w.pid)
            return
        task = w.tasks.popleft()
        now = time.monotonic()
        elapsed = now - w.head_since
        self.avg_task_time = elapsed if self.avg_task_time is None else (
            0.8 * self.avg_task_time + 0.2 * elapsed)
        w.head_since = now
        w.done += 1
        w.messages[0] -= 1
        if not w.messages[0]:
            w.messages.popleft()
            w.starts.popleft()
        self._resolve(task, kind, payload)
        if self.max_worker_memory is not None and rss > self.max_worker_memory:
            self._retire(w, f"its memory ({rss} bytes) is over max_worker_memory")
        if w.stopping is not None and not w.tasks and w.stop_deadline is None:
            w.stop_deadline = now + STOP_GRACE

    def _resolve(self, task: Task, kind: int, payload) -> None:
        future = task.future
        try:
            if kind == P.RESULT:
                try:
                    value = pickle.loads(payload)
                except BaseException as exc:  # noqa: B036 - SystemExit from __reduce__ too
                    err = TaskUnpicklingError(
                        f"the result of {task.name} could not be unpickled in the parent: "
                        f"{type(exc).__name__}: {exc}")
                    err.__cause__ = exc
                    self._fail(future, err)
                    return
                future.set_result(value)
                self.counts["completed"] += 1
            elif kind == P.ERROR:
                self._fail(future, _load_exception(payload, f"the exception raised by {task.name}"))
            else:  # BAD_TASK
                cause = _load_exception(payload, "the unpickling error")
                err = TaskUnpicklingError(
                    f"the worker could not unpickle the task {task.name}: "
                    f"{type(cause).__name__}: {cause}")
                err.__cause__ = cause
                self._fail(future, err)
        except InvalidStateError:
            self.counts["late"] += 1  # cancelled while running (cancel_running=True)

    def _fail(self, future: Future, exc: BaseException) -> None:
        try:
            future.set_exception(exc)
            self.counts["failed"] += 1
        except InvalidStateError:
            self.counts["late"] += 1

    # ---- stopping workers ----------------------------------------------------------------

    def _retire(self, w: Worker, why: str) -> None:
        """Recycle: the worker finishes the tasks it has, then exits and is replaced."""
        if w.retiring or w.stopping is not None:
            return
        log.info("recycling worker pid %d: %s", w.pid, why)
        w.retiring = True
        self._stop_gracefully(w, "recycle")

    def _stop_gracefully(self, w: Worker, cause: str) -> None:
        # STOP queues behind the tasks already sent; the grace period starts once they are done.
        w.stopping = cause
        w.stop_stage = 1
        w.stop_deadline = None if w.tasks else time.monotonic() + STOP_GRACE
        self._write(w, [P.TO_WORKER.pack(0, P.STOP)])

    def _stop_now(self, w: Worker, cause: str, sig: int = signal.SIGTERM) -> None:
        """Stop a worker whatever it is doing: SIGTERM, then SIGKILL of its whole tree."""
        if w.stop_stage >= 2 and sig != signal.SIGKILL:
            return
        w.stopping = cause
        if not w.descendants:
            w.descendants = w.proc.descendants()
        if sig == signal.SIGKILL:
            self._kill(w)
            return
        w.stop_stage = 2
        w.proc.signal(signal.SIGTERM)
        w.stop_deadline = time.monotonic() + TERM_GRACE

    def _kill(self, w: Worker) -> None:
        w.stop_stage = 3
        w.stop_deadline = None
        w.proc.signal(signal.SIGKILL)
        w.proc.kill_group()
        kill_tree(w.descendants)

    def _escalate(self, w: Worker) -> None:
        if w.stop_stage == 1:
            log.warning("worker pid %d did not exit %.1fs after STOP; sending SIGTERM",
                        w.pid, STOP_GRACE)
            self._stop_now(w, w.stopping or "shutdown")
        elif w.stop_stage == 2:
            log.warning("worker pid %d survived SIGTERM for %.1fs; killing its process tree",
                        w.pid, TERM_GRACE)
            self._kill(w)

    def _stop_idle_workers(self) -> None:
        if not self.shutting_down or self.pending:
            return
        for w in list(self.workers.values()):
            if w.stopping is None and not w.tasks:
                self._stop_gracefully(w, "shutdown")

    def _evict(self, w: Worker, head_error: Optional[BaseException],
               started: Optional[bool] = None) -> None:
        """Take every task off a worker that is about to die (or just died).

        The first one, if ``started``, was running: it fails with ``head_error`` (None when
        its future already ended, e.g. cancelled). The others never started and go back to
        the front of the queue.
        """
        if started is None:
            started = self._head_was_read(w)
        tasks = list(w.tasks)
        w.tasks.clear()
        w.messages.clear()
        w.starts.clear()
        if started:
            head = tasks.pop(0)
            if head_error is not None:
                self._fail(head.future, head_error)
        for task in reversed(tasks):
            self.pending.appendleft(task)

    @staticmethod
    def _head_started(w: Worker) -> bool:
        """Is the worker (believed alive) running its first task? Once it is READY and the
        message carrying that task is in its pipe: it runs its tasks in order."""
        return bool(w.tasks) and w.ready and w.written > w.starts[0]

    def _head_was_read(self, w: Worker) -> bool:
        """After a worker died: had it read the message that carried its first task?

        A worker killed while idle (the OOM killer, a stray pkill) may be sent a task in the
        instant before we see its death: the write can even succeed while its threads are
        torn down. Such a task never started, and must be resent, not failed. The bytes the
        worker never read are still in its pipe (FIONREAD): if the first task's message is
        among them, it was never read.
        """
        if not self._head_started(w):
            return False
        try:
            unread = struct.unpack("i", fcntl.ioctl(w.proc.task_fd, termios.FIONREAD,
                                                    b"\0\0\0\0"))[0]
        except OSError:
            return True  # cannot tell: assume it started, so it is never run twice
        return w.written - unread > w.starts[0]

    def _on_exit(self, w: Worker) -> None:
        """A worker's process ended: read its last words, settle its tasks, reap it."""
        # It is dead, so all it wrote is in the pipe now. Read until the pipe is empty, not
        # until EOF: a process the task forked may hold the write end open forever.
        while w.result_open and self._read(w):
            pass
        for fd in (w.proc.result_fd, w.proc.sentinel, w.proc.task_fd):
            if fd in self.selector.get_map():
                self.selector.unregister(fd)
        started = self._head_was_read(w)  # asks its task pipe: before reap() closes it
        kill_tree(w.descendants)
        exitcode = w.proc.reap()
        del self.workers[w.pid]
        cause = w.stopping
        if cause is None or (w.tasks and w.stop_stage < 2):
            # It died by itself (a recycling worker too, if it died with tasks on it).
            cause = "crash"
            self._on_crash(w, exitcode, started)
        elif w.tasks:  # stopped by us while still charged with tasks
            self._evict(w, self._lost_error(w, exitcode), started)
        if cause != "shutdown":
            self.counts["replaced_" + cause] += 1

    def _on_crash(self, w: Worker, exitcode: Optional[int], started: bool) -> None:
        if started:
            log.warning("worker pid %d lost while running %s: %s", w.pid, w.tasks[0].name,
                        describe_exit(exitcode))
            self._evict(w, self._lost_error(w, exitcode), started)
            return
        self._evict(w, None, started)  # nothing had started: every task goes back to the queue
        if w.ready:  # an idle worker died: replace it, nothing was lost
            log.warning("idle worker pid %d lost: %s", w.pid, describe_exit(exitcode))
            return
        if w.init_error is not None:
            error = w.init_error
            why = f"the initializer raised {type(error).__name__}: {error}"
        else:
            error = None
            why = f"a worker (pid {w.pid}) died while starting: {describe_exit(exitcode)}"
        log.warning("worker pid %d lost: %s", w.pid, why)
        self._startup_failed(error, why)

    def _lost_error(self, w: Worker, exitcode: Optional[int]) -> WorkerLostError:
        name = w.tasks[0].name if w.tasks else "a task"
        return WorkerLostError(
            f"The worker process (pid {w.pid}) running {name} ended before sending its "
            f"result: {describe_exit(exitcode)}. Only this task was lost: the worker has "
            "been replaced and the pool keeps serving.",
            pid=w.pid, exitcode=exitcode, task=name)

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

    # ---- breaking, aborting, cancelling --------------------------------------------------

    def _break(self, err: BrokenProcessPool) -> None:
        log.error("%s", err)
        self.broken = err
        self._fail_everything(err)

    def _fail_everything(self, err: BaseException) -> None:
        self._fail_pending(err)
        for w in list(self.workers.values()):
            tasks = list(w.tasks)
            w.tasks.clear()
            w.messages.clear()
            w.starts.clear()
            for task in tasks:
                self._fail(task.future, err)
            if w.stop_stage < 2:
                self._stop_now(w, w.stopping or "terminated")

    def _fail_pending(self, err: BaseException) -> None:
        while self.pending:
            task = self.pending.popleft()
            if task.claim():
                self._fail(task.future, err)

    def _abort(self, reason: str, sig: int) -> None:
        """terminate_workers(), kill_workers(), an expired shutdown timeout, Ctrl-C."""
        self.shutting_down = True
        for w in list(self.workers.values()):
            if w.tasks:
                self._evict(w, WorkerLostError(
                    f"{w.tasks[0].name} was stopped on worker pid {w.pid}: {reason}",
                    pid=w.pid, task=w.tasks[0].name))
            self._stop_now(w, "terminated", sig)
        while self.pending:
            task = self.pending.popleft()
            if task.claimed:
                # Sent to a worker once (its future is RUNNING, so it cannot be cancelled)
                # but never started: it fails, saying so.
                self._fail(task.future, BrokenProcessPool(f"{task.name} never started: {reason}"))
            else:
                task.future.cancel()  # counted by SafeFuture.cancel

    def _cancel_running(self, task: Task) -> None:
        """Stop the worker that has this (cancelled) task. With cancel_running, a worker has
        one task at a time, so nothing else is lost; a starting worker is stopped too."""
        self.counts["cancelled"] += 1
        for w in self.workers.values():
            if w.tasks and w.tasks[0] is task:
                log.info("cancelling %s: stopping worker pid %d", task.name, w.pid)
                self._evict(w, None)  # claim() skips the cancelled task if it is put back
                self._stop_now(w, "cancel")
                return

    # ---- deadlines -----------------------------------------------------------------------

    def _task_deadline(self, w: Worker) -> Optional[float]:
        # A recycling worker still runs its last task under that task's timeout.
        if w.stop_stage >= 2 or not self._head_started(w):
            return None
        timeout = w.tasks[0].timeout
        return None if timeout is None else w.head_since + timeout

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
                self._on_exit(w)

    def _next_timeout(self) -> Optional[float]:
        """Seconds until the nearest deadline (None: none), remembered in ``_nearest``."""
        nearest = self._next_liveness_check if self.workers else None
        if self.pending and self._can_spawn():
            # Tasks wait and a slot is free: starting a worker just failed (EAGAIN, EMFILE).
            # Try again soon; STARTUP_FAILURE_LIMIT failures in a row break the pool.
            nearest = time.monotonic() + SPAWN_RETRY
        for w in self.workers.values():
            for deadline in (w.stop_deadline, self._task_deadline(w), self._lifetime_end(w)):
                if deadline is not None and (nearest is None or deadline < nearest):
                    nearest = deadline
        self._nearest = nearest
        if nearest is None:
            return None
        return max(0.0, nearest - time.monotonic())

    def _lifetime_end(self, w: Worker) -> Optional[float]:
        if self.max_worker_lifetime is None or not w.accepting:
            return None
        return w.started_at + self.max_worker_lifetime

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.stop_deadline is not None and now >= w.stop_deadline:
                self._escalate(w)
            deadline = self._task_deadline(w)
            if deadline is not None and now >= deadline:
                task = w.tasks[0]
                log.warning("%s timed out after %.3gs on worker pid %d; stopping the worker",
                            task.name, task.timeout, w.pid)
                self._evict(w, TaskTimeoutError(
                    f"{task.name} ran longer than its timeout of {task.timeout:g}s; its worker "
                    f"(pid {w.pid}) was stopped and replaced"))
                self._stop_now(w, "timeout")
            end = self._lifetime_end(w)
            if end is not None and now >= end:
                self._retire(w, "max_worker_lifetime reached")

    # ---- the end ---------------------------------------------------------------------------

    def _final_cleanup(self) -> None:
        """Last resort, also on a failure of the loop itself: kill and reap every worker."""
        for w in list(self.workers.values()):
            try:
                w.descendants = w.descendants or w.proc.descendants()
                self._kill(w)
                w.proc.reap()
            except Exception:
                log.exception("while reaping worker pid %d", w.pid)
        self.workers.clear()
        # Anything still pending can never run now.
        err = self.broken or BrokenProcessPool("the executor has shut down")
        self._fail_pending(err)
        self.selector.close()
        with self._wake_lock:
            self._wake_closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)
        self.finished.set()


def _load_exception(payload, what: str) -> BaseException:
    try:
        exc = pickle.loads(payload)
    except BaseException as error:  # noqa: B036
        exc = TaskUnpicklingError(f"{what} could not be unpickled in the parent: "
                                  f"{type(error).__name__}: {error}")
        exc.__cause__ = error
    if not isinstance(exc, BaseException):
        exc = TaskUnpicklingError(f"{what} arrived as {type(exc).__name__}, not an exception")
    return exc
