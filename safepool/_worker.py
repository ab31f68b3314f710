"""The worker process's main: signals reset, lifeline, initializer, then the task loop.

Runs in a child started by forkserver or spawn. Keep imports light: every worker pays for them.
"""
import os
import pickle
import signal
import sys
import threading
from typing import Any, Callable, Optional, Sequence

from . import _protocol as P
from ._fd_hygiene import close_on_exec_all


def reset_signals() -> None:
    """Make the worker killable and quiet, whatever it inherited.

    A web framework's SIGTERM handler, or SIGTERM set to SIG_IGN or blocked in the thread that
    started us, survives exec (dispositions set to SIG_IGN and the signal mask are inherited),
    and then ``terminate()`` no longer stops the worker: processes leak until the container is
    OOM-killed. So: SIGTERM back to its default action and unblocked. SIGINT is ignored: Ctrl-C
    reaches the whole foreground process group, and the parent decides what happens to workers.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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


def _rss() -> int:
    import psutil  # only workers that recycle by memory pay for the import

    return psutil.Process().memory_info().rss


class _Channel:
    """The worker's ends of its two pipes. Only the main thread uses them."""

    def __init__(self, task_fd: int, result_fd: int):
        self.reader = os.fdopen(task_fd, "rb", buffering=1 << 16)
        self.result_fd = result_fd

    def recv(self) -> Optional[memoryview]:
        head = self.reader.read(P.TO_WORKER.size)
        if len(head) < P.TO_WORKER.size:
            return None  # the parent closed the pipe: nothing more will come
        length, kind = P.TO_WORKER.unpack(head)
        if kind == P.STOP:
            return None
        body = bytearray(length)
        if self.reader.readinto(body) != length:
            return None
        return memoryview(body)

    def send(self, kind: int, task_id: int = 0, payload: bytes = b"", rss: int = 0) -> None:
        header = P.FROM_WORKER.pack(len(payload), kind, task_id, rss)
        if len(payload) < 65536:
            P.write_all(self.result_fd, [header + payload])
        else:
            P.write_all(self.result_fd, [header, payload])


def _run_one(channel: _Channel, task_id: int, payload: memoryview, measure_rss: bool) -> None:
    try:
        fn, args, kwargs = pickle.loads(payload)
    except BaseException as exc:  # noqa: B036 - a task that cannot be unpickled fails alone
        channel.send(P.BAD_TASK, task_id, P.dump_exception(exc, "unpickling the task raised"))
        return
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: B036 - SystemExit too, as the stdlib does
        kind, data = P.ERROR, P.dump_exception(exc, f"{_name(fn)} raised")
    else:
        kind, data = _dump_result(fn, value)
        del value  # before the (maybe slow) send: memory is measured after it
    del fn, args, kwargs
    channel.send(kind, task_id, data, _rss() if measure_rss else 0)


def _dump_result(fn: Any, value: Any):
    try:
        return P.RESULT, pickle.dumps(value, P.PROTOCOL)
    except BaseException as exc:  # noqa: B036 - the stdlib reports even SystemExit here
        from .errors import TaskPicklingError

        if not isinstance(exc, Exception):
            return P.ERROR, P.dump_exception(exc, "pickling the result raised")
        err = TaskPicklingError(
            f"the result of {_name(fn)} ({type(value).__qualname__}) could not be pickled to "
            f"send it back: {type(exc).__name__}: {exc}. Return something picklable."
        )
        err.__cause__ = exc
        return P.ERROR, P.dump_exception(err, "pickling the result raised")


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _run_initializer(channel: _Channel, initializer: Callable, initargs: Sequence) -> bool:
    try:
        initializer(*initargs)
        return True
    except BaseException as exc:  # noqa: B036 - report it, then exit
        # The stdlib logs this on 'concurrent.futures'; keep doing so for drop-in users.
        import logging

        logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
        channel.send(P.INIT_FAILED, 0, P.dump_exception(exc, "the initializer raised"))
        return False


def worker_main(task_conn, result_conn, lifeline_conn, initializer, initargs, measure_rss) -> None:
    """Entry point of a worker process (the target of ``multiprocessing.Process``)."""
    reset_signals()
    own_process_group()
    # Take the raw descriptors out of the Connection wrappers, which then forget them.
    task_fd, result_fd, lifeline_fd = (c.fileno() for c in (task_conn, result_conn, lifeline_conn))
    for conn in (task_conn, result_conn, lifeline_conn):
        conn._handle = None  # the descriptor now belongs to us, not to the wrapper
    for fd in (task_fd, result_fd, lifeline_fd):
        # A program a task starts must not hold our pipes open after we are gone.
        os.set_inheritable(fd, False)
    start_lifeline(lifeline_fd)
    close_on_exec_all()  # what a task exec's holds no pipe of ours (issue 13)
    channel = _Channel(task_fd, result_fd)
    if initializer is not None and not _run_initializer(channel, initializer, initargs):
        sys.exit(1)
    channel.send(P.READY, os.getpid())
    while True:
        body = channel.recv()
        if body is None:
            break
        for task_id, payload in P.iter_task_frames(body):
            _run_one(channel, task_id, payload, measure_rss)
        body = payload = None  # free the message before blocking for the next one
