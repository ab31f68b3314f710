"""The worker process's main: signals reset, lifeline, initializer, then the task loop.

Runs in a child started by forkserver or spawn. Keep imports light: every worker pays for them.
"""
from __future__ import annotations

import collections
import os
import signal
import sys
import threading
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
    cast,
)

from . import _protocol as P
from ._fd_hygiene import close_on_exec_all
from ._out_of_band import Buffers, Packed, Received, declared_buffers, is_packed, recv_fds, send_fds

if TYPE_CHECKING:
    import socket
    from multiprocessing.connection import Connection

    #: A message to the parent: (kind, task id, payload, rss).
    _Message = Tuple[int, int, bytes, int]


class WorkerInfo(NamedTuple):
    """Which worker runs the current task (see :func:`current_worker`)."""

    slot: int       #: in ``range(max_workers)``; a replacement takes its predecessor's slot
    pid: int        #: this worker's process id
    tasks_run: int  #: tasks this worker started so far, the current one included


_slot: Optional[int] = None  # set in a worker process only
_tasks_run = 0
#: The process that imported this module: the fork server's pid when it preloaded it for
#: every worker to inherit (safepool._preload), else the worker's own.
IMPORTED_IN = os.getpid()

#: The task whose user code runs now (None between tasks, and while safepool's own code runs),
#: and the one a SOFT_TIMEOUT asked to interrupt. Both are read by the signal handler, which
#: runs in the main thread between two bytecodes of whatever runs there.
_in_user_code: Optional[int] = None
_soft_target: Optional[int] = None
#: The signal that carries a soft timeout to the main thread (celery and billiard use it too).
SOFT_SIGNAL = signal.SIGUSR1


def _on_soft_signal(signum: int, frame: Any) -> None:
    """Raise SoftTimeoutError in the task, only if it is the task the parent meant and its
    own code is running: never in safepool's code between tasks, never in the next task."""
    global _soft_target
    target = _soft_target
    if target is not None and target == _in_user_code:
        _soft_target = None
        from .errors import SoftTimeoutError

        raise SoftTimeoutError(f"the task ran past its soft_timeout (task {target})")


def current_worker() -> Optional[WorkerInfo]:
    """Inside a task (or an initializer): which worker this is. None outside a worker.

    The slot is stable across replacements: a worker that replaces a dead or recycled one
    gets its slot, so an initializer may open one resource per slot (a GPU, a port, a
    scratch directory) and tasks may find it through a module global::

        def init():
            global device
            device = f"cuda:{safepool.current_worker().slot}"
    """
    if _slot is None:
        return None
    return WorkerInfo(_slot, os.getpid(), _tasks_run)


def reset_signals() -> None:
    """Make the worker killable and quiet, whatever it inherited.

    A web framework's SIGTERM handler, or SIGTERM set to SIG_IGN or blocked in the thread that
    started us, survives exec (dispositions set to SIG_IGN and the signal mask are inherited),
    and then ``terminate()`` no longer stops the worker: processes leak until the container is
    OOM-killed. So: SIGTERM back to its default action and unblocked. SIGINT is ignored: Ctrl-C
    reaches the whole foreground process group, and the parent decides what happens to workers.
    SIGUSR1 carries soft timeouts (``_on_soft_signal``).
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(SOFT_SIGNAL, _on_soft_signal)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def own_process_group() -> None:
    """Lead a process group of our own, so that everything a task starts can be stopped with us.

    The parent kills this group when the worker ends (crash, timeout, recycling, shutdown), so a
    task that ran ``subprocess.Popen(["sleep", "600"])`` leaves no ``sleep`` behind.
    """
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:  # already a session or group leader: keep going without it
            pass


def _die_with_parent(lifeline_fd: int) -> None:
    # The parent holds the only write end of this pipe and never writes to it. When the parent
    # dies, for any reason including SIGKILL, the kernel closes it and read() returns b"".
    try:
        while os.read(lifeline_fd, 1):
            pass
    except OSError:
        pass
    if hasattr(os, "killpg") and os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)  # us and whatever our tasks started
    os._exit(1)


def start_lifeline(lifeline_fd: int) -> None:
    """Die with the parent, even in the middle of a long task.

    On Linux the kernel itself does it: the lifeline pipe is armed (O_ASYNC, F_SETOWN to our
    process group, F_SETSIG to SIGKILL) so that its end-of-file, when the parent dies, sends
    SIGKILL to this worker and everything its tasks started, even while a task holds the GIL
    in a long C call. Everywhere, a thread also watches the pipe, as a second line.
    """
    _arm_lifeline_in_kernel(lifeline_fd)
    t = threading.Thread(target=_die_with_parent, args=(lifeline_fd,),
                         name="safepool-lifeline", daemon=True)
    t.start()


def _arm_lifeline_in_kernel(lifeline_fd: int) -> None:
    if not sys.platform.startswith("linux") or os.getpgrp() != os.getpid():
        return
    import fcntl

    try:
        fcntl.fcntl(lifeline_fd, fcntl.F_SETOWN, -os.getpid())  # our whole process group
        fcntl.fcntl(lifeline_fd, getattr(fcntl, "F_SETSIG", 10), signal.SIGKILL)
        flags = fcntl.fcntl(lifeline_fd, fcntl.F_GETFL)
        fcntl.fcntl(lifeline_fd, fcntl.F_SETFL, flags | os.O_ASYNC)
    except OSError:
        pass  # the watching thread still works


_prctl: Any = None


def load_prctl() -> Any:
    """libc's prctl, loaded once: the fork server calls this (``_forkserver_preload``) so that
    its workers fork with it loaded; importing ctypes and loading libc cost each new worker
    about 2 ms before it could run a task."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        import ctypes

        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    return _prctl


def become_subreaper() -> None:
    """Linux: adopt our orphaned descendants, so that nothing a task started can escape us.

    A task's daemon that double-forks, or a child started with ``start_new_session=True``,
    leaves our process group; without this it is re-parented to init and outlives the pool.
    As a child subreaper we inherit such orphans, and kill them all when we exit.
    """
    try:
        prctl = load_prctl()
        if prctl is not None:
            prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:  # no prctl: process-group kill still covers the common case
        pass


def kill_descendants() -> None:
    """SIGKILL every child (as a subreaper, adopted orphans too) and reap it, level by level:
    nothing a task started outlives its worker, even after a clean STOP."""
    # Killing a child re-parents its own children to us before waitpid() returns: go again.
    for _ in range(10):  # orphans may be re-parented to us while we kill their parents
        pids = _child_pids()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass


def _child_pids() -> List[int]:
    pids: List[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
    except OSError:
        return pids
    return pids


def _rss() -> int:
    import psutil  # only workers that recycle by memory pay for the import

    rss: int = psutil.Process().memory_info().rss
    return rss


class _Inbox:
    """Tasks this worker has and has not started, shared by the main and control threads.

    The main thread alone reads the task pipe (when it wants its next task: no thread hands
    tasks over, so an idle worker starts a task on the first wake-up) and alone runs tasks. The
    control thread alone reads the control pipe, where REVOKE arrives even while a task runs.
    Under ``cond``, a task either leaves the inbox to start (the main thread says STARTED) or
    is taken back (the control thread says REVOKED), never both: "started" is the worker's own
    word, and a task the parent hears no STARTED for never ran any of its code.

    Tasks are known by their number on the task pipe, which both ends count in whole frames.
    A REVOKE for a number not read yet is remembered in ``drop``: that task is taken back now
    and discarded when it arrives, so a revoke never waits for the main thread.
    """

    def __init__(self, task_fd: int, result_fd: int, control_fd: int,
                 fds_fd: Optional[int] = None):
        self.task_fd = task_fd
        # The socket for descriptors of big buffers (``_out_of_band``), both ways, in the
        # order of the frames that name them; a socket object only once one is needed.
        self.fds_fd = fds_fd
        self._fd_sock: Optional[socket.socket] = None
        self.result_fd = result_fd
        self.control_fd = control_fd
        self.cond = threading.Condition(threading.Lock())
        self.send_lock = threading.Lock()  # whole messages on the result pipe; after cond
        self.queue: Deque[Tuple[int, memoryview]] = collections.deque()
        self.received = 0  # task frames read from the task pipe (the next one's number)
        self.drop: Set[int] = set()  # numbers taken back before they were read
        self.closed = False  # STOP or end of file: run what is queued, then exit
        self.running: Optional[int] = None  # the id of the task started last (under cond)
        self.reader = os.fdopen(task_fd, "rb", buffering=1 << 16, closefd=False)

    # -- the result pipe (any thread) --

    def send(self, *messages: Tuple[int, int, bytes, int]) -> None:
        """Write messages of (kind, task id, payload, rss) in one go."""
        buffers: List[bytes] = []
        fds: List[int] = []
        for kind, task_id, payload, rss in messages:
            buffers.append(P.FROM_WORKER.pack(len(payload), kind, task_id, rss))
            if len(payload):
                buffers.append(payload)
            if type(payload) is Packed:
                fds.extend(payload.buffers.fds)
        if sum(len(b) for b in buffers) < 65536:
            buffers = [b"".join(buffers)]
        with self.send_lock:
            if fds:
                # Before the frame that names them: when the parent reads the frame, its
                # descriptors are already in its socket.
                send_fds(self.fd_sock, fds)
            P.write_all(self.result_fd, buffers)

    # -- the control thread --

    def control(self) -> None:
        reader = os.fdopen(self.control_fd, "rb", buffering=1 << 12, closefd=False)
        try:
            while True:
                head = reader.read(P.TO_WORKER.size)
                if len(head) < P.TO_WORKER.size:
                    return  # the parent closed the pipe (or died: the lifeline handles that)
                length, kind = P.TO_WORKER.unpack(head)
                body = reader.read(length) if length else b""
                if len(body) != length:
                    return
                if kind == P.REVOKE:
                    self._revoke(P.unpack_revoke(body))
                elif kind == P.SOFT_TIMEOUT:
                    self._soft_timeout(P.unpack_ids(body)[0])
        except Exception:  # a broken pipe: the parent will see our exit
            pass
        finally:
            reader.close()

    def _revoke(self, wanted: List[Tuple[int, int]]) -> None:
        with self.cond:
            taken: List[int] = []
            ids = {task_id for number, task_id in wanted if number < self.received}
            if ids:
                kept = [t for t in self.queue if t[0] not in ids]
                taken = [t[0] for t in self.queue if t[0] in ids]
                self.queue = collections.deque(kept)
                # (Any other one read already has started: its STARTED went out first.)
            for number, task_id in wanted:
                # Not read yet: dropped when it arrives (and given back once, if asked twice).
                if number >= self.received and number not in self.drop:
                    self.drop.add(number)
                    taken.append(task_id)
            # Under cond: no STARTED for these can follow, and none preceded this answer.
            self.send((P.REVOKED, 0, P.pack_ids(taken), 0))

    def _soft_timeout(self, task_id: int) -> None:
        global _soft_target
        with self.cond:
            if self.running != task_id:
                return  # it finished meanwhile: nothing to interrupt
            _soft_target = task_id
        signal.pthread_kill(cast(int, threading.main_thread().ident), SOFT_SIGNAL)

    # -- the main thread --

    def _read_message(self) -> None:
        """Block for the next message on the task pipe and take it in."""
        reader = self.reader
        head = reader.read(P.TO_WORKER.size)
        frames: List[Tuple[int, memoryview]] = []
        stop = len(head) < P.TO_WORKER.size  # the parent closed the pipe
        if not stop:
            length, kind = P.TO_WORKER.unpack(head)
            body = memoryview(reader.read(length)) if length else memoryview(b"")
            if len(body) != length or kind == P.STOP:
                stop = True
            elif kind == P.TASKS:
                frames = list(P.iter_task_frames(body))
        if self.fds_fd is not None:
            frames = [self._with_buffers(frame) for frame in frames]
        with self.cond:
            for frame in frames:
                number = self.received
                self.received += 1
                if number in self.drop:
                    self.drop.discard(number)
                else:
                    self.queue.append(frame)
            if stop:
                self.closed = True

    def _with_buffers(self, frame: Tuple[int, Any]) -> Tuple[int, Any]:
        """A task frame, with the descriptors its payload names (sent before the frame).
        Taken for every frame, also one about to be dropped: they come in frame order."""
        task_id, payload = frame
        if not is_packed(payload):
            return frame
        count = declared_buffers(payload)
        return task_id, Received(payload, Buffers(recv_fds(self.fd_sock, count)))

    @property
    def fd_sock(self) -> socket.socket:
        if self._fd_sock is None:
            import socket

            # Blocking: a result's descriptors go out before its frame (see send()).
            self._fd_sock = socket.socket(fileno=cast(int, self.fds_fd))
        return self._fd_sock

    def next_task(self, done: Optional[_Message]) -> Optional[Tuple[int, memoryview]]:
        """Report ``done`` (a finished task's message, or None) and take the next task: say
        STARTED for it in the same write when one is ready. None: stop."""
        if done is not None and len(done[2]) >= 65536:
            self.send(done)  # a big result goes out without holding up a revoke
            done = None
        while True:
            with self.cond:
                if self.queue:
                    task = self.queue.popleft()
                    self.running = task[0]
                    started = (P.STARTED, task[0], b"", 0)
                    self.send(*((done, started) if done is not None else (started,)))
                    return task
                self.running = None
                if done is not None:
                    self.send(done)  # before waiting for more: the parent hears it now
                    done = None
                if self.closed:
                    return None
            self._read_message()


def run_chunk(fn: Callable[..., Any],
              chunk: List[Tuple[Any, ...]]) -> Tuple[List[Any], Optional[bytes]]:
    """map()'s task for a chunk of items. It lives here, in a module every worker has
    imported, not in ``_map``: a worker started from a program that imports safepool lazily
    would import ``_map`` (and concurrent.futures) on its first chunk, 5 ms of every map().

    Runs in the worker: call ``fn`` on each item of a chunk, stopping at the first error.

    Returns ``(results, error)``: the results up to the failing item, and that item's pickled
    exception (or None), so that the parent yields every good result before raising at the
    failed item's own place in the output.
    """
    results: List[Any] = []
    for args in chunk:
        try:
            results.append(fn(*args))
        except BaseException as exc:  # noqa: B036 - the stdlib reports SystemExit here too
            return results, P.dump_exception(exc, f"{getattr(fn, '__qualname__', fn)} raised")
    return results, None


def _run_one(task_id: int, payload: memoryview, measure_rss: bool, by_value: bool,
             names_tasks: bool = False) -> _Message:
    """Run one task; return the message that reports it."""
    global _in_user_code
    try:
        fn, args, kwargs = P.loads(payload)
    except BaseException as exc:  # noqa: B036 - a task that cannot be unpickled fails alone
        return (P.BAD_TASK, task_id, P.dump_exception(exc, "unpickling the task raised"), 0)
    del payload
    if names_tasks:  # forward_logs: records emitted by the task say which task
        _logs_module().current_task = fn
    try:
        _in_user_code = task_id
        try:
            value = fn(*args, **kwargs)
        finally:
            _in_user_code = None
    except BaseException as exc:  # noqa: B036 - SystemExit too, as the stdlib does
        kind, data = P.ERROR, P.dump_exception(exc, f"{_name(fn)} raised", out_of_band=True)
    else:
        kind, data = _dump_result(fn, value, by_value)
        del value  # before the (maybe slow) send: memory is measured after it
    del fn, args, kwargs
    return (kind, task_id, data, _rss() if measure_rss else 0)


def _logs_module() -> Any:
    from . import _logs  # loaded once, by the worker's start when forward_logs is on

    return _logs


def _dump_result(fn: Any, value: Any, by_value: bool) -> Tuple[int, bytes]:
    try:
        return P.RESULT, P.dumps(value, out_of_band=True)
    except BaseException as exc:  # noqa: B036 - the stdlib reports even SystemExit here
        if by_value and isinstance(exc, Exception):
            # A lambda, or an instance of a class the parent sent by value: cloudpickle.
            from . import _by_value

            try:
                return P.RESULT, _by_value._cloudpickle_dumps(value)
            except Exception:
                pass
        from .errors import pickling_error

        if not isinstance(exc, Exception):
            return P.ERROR, P.dump_exception(exc, "pickling the result raised")
        err = pickling_error(
            f"the result of {_name(fn)} ({type(value).__qualname__}) could not be pickled to "
            f"send it back: {type(exc).__name__}: {exc}. Return something picklable.", exc)
        return P.ERROR, P.dump_exception(err, "pickling the result raised")


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _run_initializer(inbox: _Inbox, initializer: Callable[..., Any],
                     initargs: Sequence[Any]) -> bool:
    try:
        initializer(*initargs)
        return True
    except BaseException as exc:  # noqa: B036 - report it, then exit
        # The stdlib logs this on 'concurrent.futures'; keep doing so for drop-in users.
        import logging

        logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
        inbox.send((P.INIT_FAILED, 0, P.dump_exception(exc, "the initializer raised"), 0))
        return False


def worker_main(task_conn: Connection, result_conn: Connection, lifeline_conn: Connection,
                control_conn: Connection, initializer: Optional[Callable[..., Any]],
                initargs: Sequence[Any], measure_rss: bool, by_value: bool = True,
                slot: int = 0, log_conn: Optional[Connection] = None,
                log_level: Optional[int] = None, fd_conn: Optional[Connection] = None) -> None:
    """Entry point of a worker process (the target of ``multiprocessing.Process``)."""
    global _slot, _tasks_run
    reset_signals()
    own_process_group()
    become_subreaper()
    # Take the raw descriptors out of the Connection wrappers, which then forget them.
    conns = [task_conn, result_conn, lifeline_conn, control_conn]
    task_fd, result_fd, lifeline_fd, control_fd = (c.fileno() for c in conns)
    log_fd = log_conn.fileno() if log_conn is not None else None
    if log_conn is not None:
        conns.append(log_conn)
    fds_fd = fd_conn.fileno() if fd_conn is not None else None
    if fd_conn is not None:
        conns.append(fd_conn)
    for conn in conns:
        # The descriptor now belongs to us, not to the wrapper (the stdlib's private field).
        conn._handle = None  # type: ignore[attr-defined]
    for conn_fd in (task_fd, result_fd, lifeline_fd, control_fd, log_fd, fds_fd):
        # A program a task starts must not hold our pipes open after we are gone.
        if conn_fd is not None:
            os.set_inheritable(conn_fd, False)
    log_handler = None
    if log_fd is not None and log_level is not None:
        # Before the initializer, so that its records reach the parent too.
        from . import _logs

        log_handler = _logs.install_in_worker(log_fd, log_level)
    start_lifeline(lifeline_fd)
    # After start-up, every descriptor above 2 is close-on-exec: a program a task runs
    # holds no pipe to the parent (nor the stdlib's forkserver and tracker pipes).
    close_on_exec_all()
    inbox = _Inbox(task_fd, result_fd, control_fd, fds_fd)
    _slot = slot
    try:
        if initializer is not None and not _run_initializer(inbox, initializer, initargs):
            sys.exit(1)
        inbox.send((P.READY, os.getpid(), b"", 0))
        threading.Thread(target=inbox.control, name="safepool-control", daemon=True).start()
        done = None
        while True:
            task = inbox.next_task(done)
            if task is None:
                break
            _tasks_run += 1
            done = _run_one(task[0], task[1], measure_rss, by_value, log_handler is not None)
            task = None  # free the arguments before blocking for the next one
    finally:
        if log_handler is not None:
            log_handler.drain(1.0)  # its last records, unless the parent is too slow for them
        kill_descendants()
