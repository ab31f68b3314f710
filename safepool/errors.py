"""The errors safepool raises, each a subclass of what the stdlib would raise in its place.

Code written for ``ProcessPoolExecutor`` keeps working: ``except BrokenProcessPool`` still
catches a lost worker and ``except TimeoutError`` still catches a task timeout.
"""
import concurrent.futures
import pickle
import signal
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.process import _RemoteTraceback as RemoteTraceback
from typing import Any, Dict, Iterable, Optional, Tuple, Type, cast

# RemoteTraceback is the stdlib's own class (the same .tb and __str__ on 3.8-3.13), so that code
# checking ``type(exc.__cause__) is concurrent.futures.process._RemoteTraceback`` keeps working.

__all__ = [
    "BrokenProcessPool",
    "WorkerLostError",
    "PoisonTaskError",
    "TaskTimeoutError",
    "SoftTimeoutError",
    "TaskPicklingError",
    "TaskUnpicklingError",
    "RemoteTraceback",
]

# Likely causes, so the message says what to look at rather than only what happened.
_SIGNAL_HINTS = {
    signal.SIGKILL: "often the out-of-memory killer; check the worker's memory use (dmesg)",
    signal.SIGSEGV: "a segmentation fault, usually in a C extension",
    signal.SIGBUS: "a bus error, usually in a C extension or a truncated mmap",
    signal.SIGABRT: "abort() was called, usually by a failed C assertion",
    signal.SIGTERM: "something sent SIGTERM to the worker",
    signal.SIGFPE: "a floating point exception in C code",
}


def describe_exit(exitcode: Optional[int]) -> str:
    """Say in words how a process ended, from multiprocessing's exitcode."""
    if exitcode is None:
        return "it is still running"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"it was killed by signal {-exitcode}"
        hint = _SIGNAL_HINTS.get(sig)
        return f"it was killed by {sig.name}" + (f" ({hint})" if hint else "")
    return f"it exited with code {exitcode}"


class WorkerLostError(BrokenProcessPool):
    """The worker running this task died before it could send a result back.

    Only the task that was running on that worker fails with this error; the worker is
    replaced and the pool keeps serving. It subclasses ``BrokenProcessPool`` so that code
    written for ``ProcessPoolExecutor`` still catches it.
    """

    def __init__(self, message: str, pid: Optional[int] = None,
                 exitcode: Optional[int] = None, task: Optional[str] = None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.task = task

    @property
    def signal(self) -> Optional[int]:
        """The signal that killed the worker, or None if it exited by itself."""
        if self.exitcode is not None and self.exitcode < 0:
            return -self.exitcode
        return None

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (str(self), self.pid, self.exitcode, self.task))


class PoisonTaskError(WorkerLostError):
    """This task killed every worker it ran on: its first run and each of its ``retries``.

    ``deaths`` lists each of them as ``(pid, exitcode)`` (a negative exit code is the signal
    that killed the worker). The pool keeps serving; only this task fails.
    """

    def __init__(self, message: str, deaths: Iterable[Tuple[int, Optional[int]]] = (),
                 pid: Optional[int] = None, exitcode: Optional[int] = None,
                 task: Optional[str] = None):
        super().__init__(message, pid, exitcode, task)
        self.deaths: Tuple[Tuple[int, Optional[int]], ...] = tuple(
            (d[0], d[1]) for d in deaths)

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        return (type(self), (str(self), self.deaths, self.pid, self.exitcode, self.task))


_TIMEOUT_BASES: Tuple[type, ...]
if concurrent.futures.TimeoutError is TimeoutError:  # Python 3.11 and later
    _TIMEOUT_BASES = (TimeoutError,)
else:
    _TIMEOUT_BASES = (concurrent.futures.TimeoutError, TimeoutError)


class TaskTimeoutError(*_TIMEOUT_BASES):  # type: ignore[misc]
    """A task ran longer than its timeout; its worker was stopped and replaced.

    A subclass of both ``concurrent.futures.TimeoutError`` and the builtin ``TimeoutError``.
    """


class SoftTimeoutError(*_TIMEOUT_BASES):  # type: ignore[misc]
    """Raised *inside* a task that ran past its ``soft_timeout``, in its main thread, so that
    it can clean up (close files, write partial results) and then raise or return.

    It is raised in Python code: a task stuck in a C call that holds the GIL sees it only when
    that call returns (the hard ``timeout`` still stops it). Uncaught, it fails the task's
    future. A subclass of ``concurrent.futures.TimeoutError`` and ``TimeoutError``.
    """


class TaskPicklingError(pickle.PicklingError):
    """A task's callable, arguments, result or exception could not be pickled.

    The message says which part failed and why; the original error is chained as
    ``__cause__``. Only that task's future fails; the pool keeps serving.
    """

    _base: type  # the exception class it also is, set by _rebuild_pickling_error()


class TaskUnpicklingError(pickle.UnpicklingError, BrokenProcessPool):
    """A task could not be unpickled in the worker, or its result in the parent.

    The stdlib reports these as ``BrokenProcessPool`` (and then the whole pool is broken);
    safepool fails only that task's future, with an error that is still a
    ``BrokenProcessPool`` so existing ``except`` clauses keep working.
    """



class TaskFaultError(BrokenProcessPool):
    """safepool itself failed while handling this task (a corrupt frame from its worker, an
    internal error): the task's outcome is unknown. The message says what happened."""


_PICKLING_CLASSES: Dict[type, Type[TaskPicklingError]] = {}


def _pickling_error_class(base: type) -> Type[TaskPicklingError]:
    """TaskPicklingError mixed with ``base``, so that ``except TypeError`` still catches
    "cannot pickle '_thread.lock' object", as it does with the stdlib."""
    if issubclass(TaskPicklingError, base) or not issubclass(base, Exception):
        return TaskPicklingError
    cls = _PICKLING_CLASSES.get(base)
    if cls is None:
        try:
            cls = cast(Type[TaskPicklingError], type(
                "TaskPicklingError", (TaskPicklingError, base),
                {"__module__": __name__, "__reduce__": _reduce_mixed}))
        except TypeError:  # an incompatible layout: the plain class, with the cause chained
            cls = TaskPicklingError
        _PICKLING_CLASSES[base] = cls
    return cls


def _reduce_mixed(self: TaskPicklingError) -> Tuple[Any, ...]:
    return _rebuild_pickling_error, (self._base, str(self))


def _rebuild_pickling_error(base: type, message: str) -> TaskPicklingError:
    err = _pickling_error_class(base)(message)
    err._base = base
    return err


def pickling_error(message: str, cause: BaseException) -> TaskPicklingError:
    """A TaskPicklingError saying ``message``, which is also an instance of ``type(cause)``,
    with ``cause`` chained."""
    try:
        err = _rebuild_pickling_error(type(cause), message)
    except Exception:  # a base whose __init__ wants other arguments
        err = TaskPicklingError(message)
    err.__cause__ = cause
    return err
