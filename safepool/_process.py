"""Worker processes: the start-method policy, starting one, and stopping one for good.

``WorkerProcess`` objects are created on the starter thread (``Starter``) and then belong to
the manager thread alone.
"""
from __future__ import annotations

import fcntl
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

from . import _out_of_band as _oob
from ._forkserver_guard import ensure_safe_forkserver
from ._worker import worker_main

SAFE_METHODS = ("forkserver", "spawn")


def resolve_context(mp_context: Optional[BaseContext]) -> BaseContext:
    """The multiprocessing context workers are started with: forkserver or spawn, never fork.

    Forking a process that holds threads and locks (logging, queues, the manager thread itself)
    deadlocks children at random, and forked children inherit the parent's signal handlers.
    """
    if mp_context is None:
        # An application that chose spawn or forkserver for the whole process keeps it, as
        # with the stdlib; a global 'fork' (or none chosen) gets forkserver where available.
        chosen = multiprocessing.get_start_method(allow_none=True)
        if chosen in SAFE_METHODS:
            return multiprocessing.get_context(chosen)
        methods = multiprocessing.get_all_start_methods()
        return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    get_method = getattr(mp_context, "get_start_method", None)
    if get_method is None:
        raise TypeError(
            f"mp_context must be a multiprocessing context, such as "
            f"multiprocessing.get_context('spawn'), not {type(mp_context).__name__}"
        )
    method = get_method()
    if method not in SAFE_METHODS:
        raise ValueError(
            f"safepool does not start workers with the {method!r} start method: a forked worker "
            "inherits the parent's threads, locks and signal handlers, and deadlocks or ignores "
            "SIGTERM at random. Pass mp_context=multiprocessing.get_context('forkserver') "
            "(or 'spawn'), or leave mp_context=None to get forkserver where available."
        )
    return mp_context


def _skip_a_main_that_is_not_a_file(
        get_preparation_data: Callable[[str], Dict[str, Any]]) -> Callable[[str], Dict[str, Any]]:
    """multiprocessing tells each new worker to run the main program's file again, so that
    what ``__main__`` defines exists there. After ``python -`` that "file" is ``'<stdin>'``:
    every worker died trying to run it, and the pool broke. A worker gets no such order now;
    what such a ``__main__`` defines reaches workers by value (``_by_value``). Other programs
    are untouched: the wrapper changes nothing when the file exists."""

    def get_preparation_data_without_missing_main(name: str) -> Dict[str, Any]:
        data = get_preparation_data(name)
        path = data.get("init_main_from_path")
        if path is not None and not os.path.isfile(path):
            del data["init_main_from_path"]
        return data

    setattr(get_preparation_data_without_missing_main,  # noqa: B010 - a mark on a function
            "safepool_wrapped", get_preparation_data)
    return get_preparation_data_without_missing_main


def _install_main_guard() -> None:
    from multiprocessing import spawn

    if not hasattr(spawn.get_preparation_data, "safepool_wrapped"):
        # Patching the stdlib on purpose (see above).
        spawn.get_preparation_data = _skip_a_main_that_is_not_a_file(  # type: ignore[assignment]
            spawn.get_preparation_data)


class WorkerProcess:
    """One started worker: its process and the parent's ends of its pipes.

    ``task_fd`` (parent writes tasks), ``control_fd`` (parent writes revokes) and ``result_fd``
    (parent reads results) are non-blocking: the manager never waits on one worker.
    ``lifeline_fd`` is never written; closing it, or the parent's death, tells the worker to
    exit.
    """

    def __init__(self, ctx: BaseContext, initializer: Optional[Callable[..., Any]],
                 initargs: Sequence[Any], measure_rss: bool, by_value: bool = True,
                 log_level: Optional[int] = None, slot: int = 0):
        ensure_safe_forkserver(ctx)  # no forkserver other users can reach (issue 13)
        _install_main_guard()
        task_r, self.task_fd = os.pipe()
        self.result_fd, result_w = os.pipe()
        lifeline_r, self.lifeline_fd = os.pipe()
        control_r, self.control_fd = os.pipe()
        # Log records (forward_logs): a pipe of their own, so that a full one costs a record,
        # never a result, and the worker never waits on it.
        log_w: Optional[int] = None
        self.log_fd: Optional[int] = None
        if log_level is not None:
            self.log_fd, log_w = os.pipe()
        for fd in (self.task_fd, self.result_fd):
            _enlarge_pipe(fd)
        child_ends = [Connection(task_r), Connection(result_w), Connection(lifeline_r),
                      Connection(control_r)]
        log_end = Connection(log_w) if log_w is not None else None
        if log_end is not None:
            child_ends.append(log_end)
        # Descriptors of big buffers, both ways (Linux: _out_of_band). The parent keeps a
        # socket object (closed in reap()), not a bare number.
        self.fd_sock: Optional[socket.socket] = None
        fd_end = None
        if _oob.AVAILABLE:
            self.fd_sock, child_sock = _oob.socketpair()
            fd_end = Connection(child_sock.detach())
            child_ends.append(fd_end)
        # typeshed declares Process on each concrete context, not on BaseContext
        self.process: BaseProcess = ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(*child_ends[:4], initializer, initargs, measure_rss, by_value, slot,
                  log_end, log_level, fd_end),
            name="safepool-worker",
        )
        try:
            self.process.start()
        except BaseException:
            for fd in self.parent_fds:
                os.close(fd)
            if self.fd_sock is not None:
                self.fd_sock.close()
            raise
        finally:
            for conn in child_ends:  # the child has its own copies now
                conn.close()
        self.slot = slot
        self.pid: int = cast(int, self.process.pid)  # started: it has one
        self.sentinel: int = self.process.sentinel
        for parent_fd in (self.task_fd, self.result_fd, self.control_fd, self.log_fd):
            if parent_fd is not None:
                os.set_blocking(parent_fd, False)
        if self.fd_sock is not None:
            self.fd_sock.setblocking(False)

    @property
    def parent_fds(self) -> Tuple[int, ...]:
        """Every pipe end the parent holds for this worker."""
        fds = (self.task_fd, self.result_fd, self.lifeline_fd, self.control_fd)
        return fds if self.log_fd is None else fds + (self.log_fd,)

    def forget_in_forked_child(self) -> None:
        """In a child forked from the pool's process: this worker is not the child's to join
        (multiprocessing's exit handler would otherwise wait on it)."""
        multiprocessing.process._children.discard(  # type: ignore[attr-defined]  # private
            self.process)

    def descendants(self) -> List[Any]:
        """psutil handles of every process this worker started, found before it is killed.

        Once the worker is dead its children are re-parented and can no longer be found.
        """
        try:
            import psutil

            children: List[Any] = psutil.Process(self.pid).children(recursive=True)
            return children
        except Exception:  # the worker is already gone, or psutil cannot see it
            return []

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill_group(self) -> None:
        """SIGKILL whatever is left of the worker's process group (what its tasks started)."""
        if not hasattr(os, "killpg"):
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self) -> Optional[int]:
        """Collect the exit status (no zombie is left) and release every descriptor we hold."""
        self.kill_group()
        self.process.join()
        exitcode = self.process.exitcode
        # Release the sentinel, but not with Process.close(): these Process objects are what
        # the stdlib-compatible ``_processes`` hands out, and code written for
        # ProcessPoolExecutor join()s them after shutdown (join/exitcode/is_alive still work).
        self.process._popen.close()  # type: ignore[attr-defined]  # the stdlib's private
        for fd in self.parent_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if self.fd_sock is not None:
            self.fd_sock.close()  # and with it any descriptor still in flight to us
        return exitcode


class Starter:
    """Starts worker processes on a thread of its own, off the manager's path.

    ``Process.start()`` can take long: under spawn it writes the pickled initializer and
    initargs into the child, which reads them only after importing the main module; a child
    hung in that import would hang the start forever. On the manager thread that froze every
    result, timeout and shutdown of the pool. Here it delays only the new worker.
    Each start reports back through ``report(proc, error, slot)`` (proc or error is None).
    """

    def __init__(self, ctx: BaseContext, initializer: Optional[Callable[..., Any]],
                 initargs: Sequence[Any], measure_rss: bool,
                 report: Callable[[Optional[WorkerProcess], Optional[BaseException], int], None],
                 by_value: bool = True, forward_logs: bool = False):
        self._args = (ctx, initializer, initargs, measure_rss, by_value)
        self._forward_logs = forward_logs
        self._report = report
        self._requests: queue.SimpleQueue[Optional[int]] = queue.SimpleQueue()  # slots
        self.thread = threading.Thread(target=self._run, name="safepool-starter", daemon=True)

    def start_one(self, slot: int) -> None:
        if not self.thread.is_alive() and self.thread.ident is None:
            self.thread.start()
        self._requests.put(slot)

    def close(self, bound: float) -> None:
        """Let the thread end after the starts already asked for; wait up to ``bound``."""
        if self.thread.ident is None:
            return
        self._requests.put(None)
        self.thread.join(bound)

    def _run(self) -> None:
        while True:
            slot = self._requests.get()
            if slot is None:
                return
            try:
                log_level = None
                if self._forward_logs:
                    from ._logs import lowest_enabled_level

                    log_level = lowest_enabled_level()  # as configured now, at each start
                proc = WorkerProcess(*self._args, log_level=log_level, slot=slot)
            except BaseException as exc:  # noqa: B036 - reported, and counted as a failed start
                self._report(None, exc, slot)
            else:
                self._report(proc, None, slot)


#: Linux's F_SETPIPE_SZ (Python has the name only from 3.10), and the size we ask for.
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031) if sys.platform.startswith("linux") else None
PIPE_SIZE = 1 << 20


def _enlarge_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe (Linux): 16x fewer system calls and wake-ups for big arguments
    and results. Refused above /proc/sys/fs/pipe-max-size or a per-user quota: then the
    64 KiB default stays, which is only slower."""
    if _F_SETPIPE_SZ is None:
        return
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


def kill_tree(processes: List[Any]) -> None:
    """SIGKILL a list of psutil processes (a worker's descendants), ignoring those gone."""
    for proc in processes:
        try:
            proc.kill()
        except Exception:
            pass
