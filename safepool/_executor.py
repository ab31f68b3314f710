"""SafeProcessPoolExecutor: the Executor face. It validates, enqueues and owns no process.

Every process, pipe and task table belongs to the manager thread (``_manager.py``); the methods
here only append to its queues and wake it up.
"""
from __future__ import annotations

import itertools
import os
import signal
import threading
import weakref
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    Literal,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from . import _by_value, _map
from ._future import CancelNowFuture
from ._ledger import Task, task_name
from ._manager import PoolManager
from ._preload import PreloadingInitializer, check_modules
from ._preload import arrange as arrange_preload
from ._process import resolve_context
from .errors import pickling_error

if TYPE_CHECKING:
    from ._stats import PoolStats

#: What a task returns: ``submit(fn)`` gives a ``Future[_T]`` for an ``fn`` returning ``_T``.
_T = TypeVar("_T")

# Managers still running, to shut down at interpreter exit (weakly held: a garbage-collected
# executor shuts its manager down by itself).
_live_managers: "weakref.WeakSet[PoolManager]" = weakref.WeakSet()
_interpreter_exiting = False


def _at_exit() -> None:
    """At interpreter exit, finish queued work and reap every worker, as the stdlib does."""
    global _interpreter_exiting
    _interpreter_exiting = True
    managers = [m for m in _live_managers if m.owner_pid == os.getpid()]
    for manager in managers:
        manager.request("shutdown")
    for manager in managers:
        manager.finished.wait()
        _join_finished(manager)


def _after_fork_in_child() -> None:
    """A process forked from ours (gunicorn --preload, celery prefork, a library's os.fork())
    holds a copy of every pool. It must never write into our workers nor hold their lifelines
    open: each pool lets go of its pipes there and refuses new work with a clear error."""
    for manager in list(_live_managers):
        manager.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


if hasattr(threading, "_register_atexit"):  # 3.9+: runs before non-daemon threads are joined
    threading._register_atexit(_at_exit)
else:  # pragma: no cover - Python 3.8
    import atexit

    atexit.register(_at_exit)


def _join_finished(manager: PoolManager) -> None:
    """After ``finished`` is set the manager thread only has to return: let it, so that
    shutdown(wait=True) leaves no safepool thread behind, as the stdlib's leaves none."""
    if manager.finished.is_set() and manager.thread is not None:
        manager.thread.join(_STOP_BOUND)


def default_max_workers() -> int:
    """CPUs this process may really use: the cgroup quota and affinity, not the host's count.

    Inside a container limited to 2 CPUs on a 64-core host, this is 2, not 64.
    """
    from loky import cpu_count

    cpus: int = cpu_count()
    return max(1, cpus)


class SafeFuture(CancelNowFuture):
    """The stdlib Future, plus what the pool must know when one is cancelled.

    A queued task that is cancelled is counted at once in ``stats()``. With
    ``cancel_running=True``, ``cancel()`` also works while the task runs: the manager stops
    its worker (which is replaced), the future ends cancelled, and a result that still
    arrives is dropped.
    """

    # weakref.ref to the PoolManager: a future must not keep a pool alive
    _manager_ref: Optional[weakref.ref[PoolManager]] = None
    # weakref.ref to its Task: no future <-> task cycle keeps arguments alive
    _task_ref: Optional[weakref.ref[Task]] = None

    def _cancel_claimed(self) -> bool:
        """Cancel a future the pool claimed (RUNNING) for a task that never started: taken
        back from its worker after shutdown(cancel_futures=True) or an abandoned map().
        Called by the manager thread, under no safepool lock."""
        return self._cancel_from_running()

    def _withdraw(self) -> None:
        """Cancel this future, or, if a worker already holds its task, have the task taken
        back and the future cancelled unless it has started. Never blocks, takes no lock
        (an abandoned map()'s finalizer calls it, maybe from inside a GC pass)."""
        if self.cancel() or self.done():
            return
        manager = self._manager_ref() if self._manager_ref is not None else None
        task = self._task_ref() if self._task_ref is not None else None
        if manager is not None and task is not None:
            manager.request("withdraw", [task])

    def _after_cancel(self, was_running: bool) -> None:
        manager = self._manager_ref() if self._manager_ref is not None else None
        if manager is None:
            return
        if not was_running:
            manager.count("cancelled")
        else:  # running: the manager stops its worker (and counts it)
            task = self._task_ref() if self._task_ref is not None else None
            if task is not None:
                manager.request("cancel", task)


class SafeProcessPoolExecutor(Executor):
    """A hardened, drop-in ``concurrent.futures.ProcessPoolExecutor``.

    It takes the stdlib's arguments and gives its newest semantics on Python 3.8 to 3.13, and:

    - a worker that dies (SIGKILL from the OOM killer, a segfault, ``os._exit``) fails only the
      task it was running, with :class:`~safepool.WorkerLostError`; the worker is replaced and
      the pool keeps serving;
    - workers start with ``forkserver`` (or ``spawn``), never ``fork``; they reset SIGTERM,
      ignore SIGINT and die with their parent;
    - every worker and every process a task started is reaped, on every path;
    - beyond the stdlib: per-task timeouts (``task_timeout``, :meth:`schedule`), cancelling a
      running task (``cancel_running``), recycling by task count, age and memory, a shutdown
      deadline, bounded and unordered ``map``, and :meth:`stats`.

    Args:
        max_workers: worker processes at most; default: the CPUs this process may use,
            cgroup-aware (``loky.cpu_count()``).
        mp_context: a ``forkserver`` or ``spawn`` multiprocessing context; ``fork`` is refused.
        initializer: called as ``initializer(*initargs)`` in each worker before its first
            task; if it raises in 3 workers in a row, the pool breaks with its exception.
        initargs: the arguments for ``initializer``.
        max_tasks_per_child: replace a worker after this many tasks.
        task_timeout: seconds a task may run (from when it starts); then it fails with
            :class:`~safepool.TaskTimeoutError` and its worker is stopped and replaced.
        cancel_running: let ``future.cancel()`` stop a running task (its worker is replaced).
        max_worker_lifetime: replace a worker after this many seconds (after its current task).
        max_worker_memory: replace a worker whose resident memory, measured after each task,
            is over this many bytes.
        retries: run a task again, up to this many times, when the worker running it dies
            (OOM kill, segfault, ``os._exit``); never after an exception, a timeout or a
            cancel. A task that kills ``retries + 1`` workers fails with
            :class:`~safepool.PoisonTaskError`. Default 0, as the stdlib: never run twice.
        soft_timeout: seconds a task may run (from when it starts) before
            :class:`~safepool.SoftTimeoutError` is raised *inside* it, so that it can clean
            up; combine with ``task_timeout`` (longer) to stop it for good if it does not.
        forward_logs: re-emit log records from workers (tasks, initializers) in this
            process's ``logging``, with the worker's pid (``record.process``) and the task
            (``record.safepool_task``). On by default: under ``fork`` workers inherited the
            parent's handlers, and under forkserver or spawn their records are otherwise lost.
        cloudpickle_fallback: send what plain pickle cannot (a lambda, a closure, what
            ``__main__`` defines under ``python -c``, ``python -`` or a notebook) with
            cloudpickle, by value; False: plain pickle only, as the stdlib.
        spare_workers: keep this many extra workers started and initialized, idle and
            outside ``max_workers``, so that a lost worker (crash, timeout, cancelled running
            task, recycling) is replaced at once instead of after a process start; a new
            spare is started in the background. Default 0: exactly the processes the stdlib
            would run. Each spare costs one worker's memory (see docs/recycling.rst).
        preload: module names (e.g. ``["numpy"]``) that every worker needs. Under
            forkserver they are imported once, in the fork server, when this is the first
            pool or process to start it; each worker then starts with them at no cost (as
            :func:`multiprocessing.set_forkserver_preload`). Otherwise each worker imports
            them before ``initializer``. A module that cannot be imported fails the worker's
            start as a failing initializer does. See docs/recycling.rst.

    Example::

        from safepool import SafeProcessPoolExecutor

        if __name__ == "__main__":
            with SafeProcessPoolExecutor(max_workers=2) as pool:
                print(list(pool.map(abs, [-1, -2, 3])))   # [1, 2, 3]
    """

    def __init__(self, max_workers: Optional[int] = None,
                 mp_context: Optional[BaseContext] = None,
                 initializer: Optional[Callable[..., Any]] = None,
                 initargs: Tuple[Any, ...] = (), *,
                 max_tasks_per_child: Optional[int] = None,
                 task_timeout: Optional[float] = None,
                 cancel_running: bool = False,
                 max_worker_lifetime: Optional[float] = None,
                 max_worker_memory: Optional[int] = None,
                 cloudpickle_fallback: bool = True,
                 retries: int = 0,
                 soft_timeout: Optional[float] = None,
                 forward_logs: bool = True,
                 spare_workers: int = 0,
                 preload: Sequence[str] = ()) -> None:
        if max_workers is None:
            max_workers = default_max_workers()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        _check_retries(retries)
        if not isinstance(spare_workers, int) or isinstance(spare_workers, bool) \
                or spare_workers < 0:
            raise ValueError(f"spare_workers must be an integer >= 0, not {spare_workers!r}")
        _check_positive("task_timeout", task_timeout)
        _check_positive("soft_timeout", soft_timeout)
        _check_positive("max_worker_lifetime", max_worker_lifetime)
        _check_positive("max_worker_memory", max_worker_memory)
        preload = check_modules(preload)
        ctx = resolve_context(mp_context)
        # Before any worker starts: the fork server imports these once (issue 15).
        arrange_preload(ctx, preload)
        if preload:
            initializer = PreloadingInitializer(preload, initializer)

        self._max_workers = max_workers
        self._mp_context = ctx
        self._task_timeout = task_timeout
        self._cancel_running = cancel_running
        self._cloudpickle_fallback = cloudpickle_fallback
        self._retries = retries
        self._soft_timeout = soft_timeout
        self._ids = itertools.count(1)
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        self._started = False
        self._manager = PoolManager(
            ctx, max_workers, initializer, tuple(initargs),
            max_tasks_per_child=max_tasks_per_child, task_timeout=task_timeout,
            max_worker_lifetime=max_worker_lifetime, max_worker_memory=max_worker_memory,
            cancel_running=cancel_running, cloudpickle_fallback=cloudpickle_fallback,
            forward_logs=forward_logs, spare_workers=spare_workers)
        self._manager_weakref = weakref.ref(self._manager)  # one for all its futures
        # Dropping the executor without shutdown() still stops and reaps its workers.
        weakref.finalize(self, self._manager.request, "shutdown").atexit = False

    # ---- the stdlib API ------------------------------------------------------------------

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Schedule ``fn(*args, **kwargs)`` in a worker; return its Future."""
        return self._submit(fn, args, kwargs, self._task_timeout, self._retries,
                            self._soft_timeout)

    def schedule(self, fn: Callable[..., _T], args: Iterable[Any] = (),
                 kwargs: Optional[Dict[str, Any]] = None, *,
                 timeout: Optional[float] = None,
                 retries: Optional[int] = None,
                 soft_timeout: Optional[float] = None) -> Future[_T]:
        """Like :meth:`submit`, with a timeout for this task (pebble's name and signature).

        ``timeout`` counts seconds from when the task starts running, not from when it was
        queued; it overrides the executor's ``task_timeout``. On expiry the future fails with
        :class:`~safepool.TaskTimeoutError` and the worker is stopped and replaced.
        ``retries`` and ``soft_timeout`` override the executor's for this task.
        """
        _check_positive("timeout", timeout)
        _check_positive("soft_timeout", soft_timeout)
        if retries is not None:
            _check_retries(retries)
        return self._submit(fn, tuple(args), dict(kwargs or {}),
                            self._task_timeout if timeout is None else timeout,
                            self._retries if retries is None else retries,
                            self._soft_timeout if soft_timeout is None else soft_timeout)

    def _submit(self, fn: Callable[..., _T], args: Tuple[Any, ...], kwargs: Dict[str, Any],
                timeout: Optional[float], retries: int,
                soft_timeout: Optional[float]) -> Future[_T]:
        manager = self._manager
        future = SafeFuture()
        future._manager_ref = self._manager_weakref
        if self._cancel_running:
            future._cancel_running = True
        try:
            payload = _by_value.dumps((fn, args, kwargs), self._cloudpickle_fallback)
        except Exception as exc:
            self._check_open()  # a closed pool says so first, whatever the task
            # The stdlib reports this on the future, not at submit(): so do we, with an error
            # that is still the original type (except TypeError catches "cannot pickle ...").
            future.set_exception(pickling_error(
                f"could not pickle the task {task_name(fn)} to send it to a worker: "
                f"{type(exc).__name__}: {exc}{_by_value.explain(exc)}. Every argument must "
                "be picklable" + ("" if self._cloudpickle_fallback else
                                  ", and the function importable by name (defined at module "
                                  "level, not a lambda or nested function)") + ".", exc))
            manager.count("submitted")
            manager.count("failed")
            return future
        task = Task(next(self._ids), future, payload, fn, timeout, retries, soft_timeout)
        future._task_ref = weakref.ref(task)
        with self._shutdown_lock:
            # Checked again under the lock that shutdown() takes, so no task slips in after
            # the manager has decided it is done.
            self._check_open()
            if not self._started:
                self._start_manager()
        if not manager.take(task):
            # The manager ended between the check and now (a fault broke the pool).
            self._check_open()
            raise RuntimeError("cannot schedule new futures after shutdown")
        return future

    def _start_manager(self) -> None:
        """Start the manager thread (under _shutdown_lock). If it cannot start (a thread or
        descriptor limit), submit() raises and a later submit() tries again."""
        manager = self._manager
        try:
            manager.start()
        except Exception as exc:
            raise RuntimeError(
                f"safepool could not start its manager thread: {type(exc).__name__}: {exc}. "
                "This is usually a limit on threads or open files (ulimit -u / -n, a "
                "container's pids limit); nothing was submitted, and submit() can be retried."
            ) from exc
        self._started = True
        _live_managers.add(manager)

    def _check_open(self) -> None:
        if self._manager.owner_pid != os.getpid():
            raise RuntimeError(
                f"this SafeProcessPoolExecutor belongs to process {self._manager.owner_pid}; "
                "a process forked from it cannot use it (its workers and pipes are the "
                "parent's). Create a new executor in the child.")
        broken = self._manager.broken
        if broken is not None:
            raise BrokenProcessPool(str(broken)) from broken
        if self._shutdown_thread:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1,
            buffersize: Optional[int] = None, progress: Any = None) -> Iterator[_T]:
        """Like ``ProcessPoolExecutor.map``, plus 3.14's ``buffersize`` and ``progress``.

        ``chunksize`` items travel to a worker together. ``buffersize`` bounds how many chunks
        are in flight: the input is then read lazily, so an endless generator works and memory
        stays flat. A failed item raises at its own place in the output, after every earlier
        result. ``progress=True`` shows a tqdm bar; a callable gets ``(done, total)``.
        Abandoning the iterator cancels what has not started.
        """
        return _map.map_ordered(self, fn, iterables, timeout=timeout, chunksize=chunksize,
                                buffersize=buffersize, progress=progress)

    def map_unordered(self, fn: Callable[..., _T], *iterables: Iterable[Any],
                      timeout: Optional[float] = None, chunksize: int = 1,
                      buffersize: Optional[int] = None, progress: Any = None) -> Iterator[_T]:
        """Like :meth:`map`, but yields results as they complete, in any order."""
        return _map.map_unordered(self, fn, iterables, timeout=timeout, chunksize=chunksize,
                                  buffersize=buffersize, progress=progress)

    def shutdown(  # type: ignore[override]  # returns a bool where the stdlib's returns None
            self, wait: bool = True, *, cancel_futures: bool = False,
            timeout: Optional[float] = None) -> bool:
        """Stop accepting tasks, then stop and reap the workers once their work is done.

        ``cancel_futures`` cancels every task that has not started, including those already
        sent to a worker (they are taken back). With ``timeout`` (seconds; needs
        ``wait=True``), work still running when it expires is stopped through the stop ladder
        and its futures fail. Returns True when everything finished (in time), False
        otherwise. Safe to call twice, from any thread, and from a done-callback.
        """
        _check_positive("timeout", timeout)
        manager = self._manager
        if manager.owner_pid != os.getpid():
            return False  # a forked child: the pool is the parent's (see _after_fork_in_child)
        with self._shutdown_lock:
            self._shutdown_thread = True
            started = self._started
        if not started:
            return True
        finished = manager.finished
        try:
            # Requests only: the manager cancels futures (and so runs their done-callbacks) on
            # its own thread, with no lock of ours held, so a callback may call shutdown() too.
            manager.request("cancel_futures" if cancel_futures else "shutdown")
            if not wait or threading.current_thread() is manager.thread:
                # From a done-callback we run on the manager thread: waiting would wait for us.
                return finished.is_set() and not manager.faulted
            # An Event, not thread.join(): a join interrupted by Ctrl-C marks the thread as
            # finished on Python 3.9-3.12 (CPython gh-90882) and later joins stop waiting.
            if finished.wait(timeout):
                _join_finished(manager)
                return not manager.faulted
            manager.request("abort", f"shutdown(timeout={timeout:g}) expired", signal.SIGTERM)
            finished.wait(_STOP_BOUND)
            _join_finished(manager)
            return False
        except KeyboardInterrupt:
            # Ctrl-C while waiting: stop everything now rather than hang on running tasks.
            manager.request("abort", "KeyboardInterrupt during shutdown()", signal.SIGKILL)
            finished.wait(_STOP_BOUND)
            raise

    def terminate_workers(self) -> None:
        """Stop every worker now with SIGTERM (then SIGKILL of its tree); shut down.

        Tasks that have not started are cancelled; running ones fail with WorkerLostError.
        (Python 3.14 API.)
        """
        self._force_stop("terminate_workers() was called", signal.SIGTERM)

    def kill_workers(self) -> None:
        """Like :meth:`terminate_workers`, with SIGKILL straight away. (Python 3.14 API.)"""
        self._force_stop("kill_workers() was called", signal.SIGKILL)

    def _force_stop(self, reason: str, sig: int) -> None:
        if self._manager.owner_pid != os.getpid():
            return
        with self._shutdown_lock:
            self._shutdown_thread = True
            started = self._started
        if started:
            self._manager.request("abort", reason, sig)

    def stats(self) -> PoolStats:
        """An immutable snapshot of workers and tasks: see :class:`~safepool.PoolStats`."""
        return self._manager.stats()

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_val: Optional[BaseException],
                 exc_tb: Optional[TracebackType]) -> Literal[False]:
        try:
            if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
                # Ctrl-C in the with block: the user wants out now, not after the queue
                # drains. Queued tasks are cancelled, running ones stopped, workers reaped.
                self.terminate_workers()
            self.shutdown(wait=True)
        except KeyboardInterrupt:
            # Ctrl-C anywhere in here (not only while shutdown() waits): stop everything now.
            self._force_stop("KeyboardInterrupt during shutdown()", signal.SIGKILL)
            self._manager.finished.wait(_STOP_BOUND)
            raise
        return False

    # ---- read by code written against the stdlib's private attributes --------------------

    @property
    def _processes(self) -> Dict[int, Any]:
        workers = dict(self._manager.workers)  # one C-level copy: the manager owns the dict
        return {pid: w.proc.process for pid, w in workers.items()}

    @property
    def _broken(self) -> Union[str, bool]:
        broken = self._manager.broken
        return str(broken) if broken is not None else False


#: How long shutdown waits for workers after SIGKILL before it gives up waiting.
_STOP_BOUND = 30.0


def _check_retries(retries: object) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int, not {type(retries).__name__}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries!r}")


def _check_positive(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of {'bytes' if 'memory' in name else 'seconds'}"
                        f" or None, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0 or None, not {value!r}")
