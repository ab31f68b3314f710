"""safepool on a Dask cluster: a hardened pool inside each Dask worker, and an Executor on top.

Needs the optional extra: ``pip install 'safepool[dask]'`` (dask and distributed). Nothing else
in safepool imports this module, so ``import safepool`` never imports Dask.

Two layers:

* :class:`SafepoolPlugin` (or :func:`install`) puts a :class:`WorkerPool` -- a
  :class:`~safepool.SafeProcessPoolExecutor` behind a thin adapter -- into every Dask worker's
  ``executors`` under a name. Tasks annotated with ``dask.annotate(executor=name)`` then run in
  a safepool worker process instead of a thread of the Dask worker: a task that segfaults or is
  OOM-killed fails alone with :class:`~safepool.WorkerLostError` and the Dask worker, its other
  tasks and its data survive; a task past its timeout is stopped with its process.
* :class:`DaskExecutor` is a ``concurrent.futures.Executor`` on a Dask cluster with
  ``SafeProcessPoolExecutor``'s surface (``submit``, ``schedule``, ``map``, ``map_unordered``,
  ``shutdown(wait, cancel_futures, timeout)``, ``stats()``). Each executor installs its own
  pools on the cluster and runs every task in them.

Why an adapter and not the pool itself: Dask sends functions with cloudpickle, by value when
they live in ``__main__`` or are lambdas. The pool pickles what it sends to its workers with
the standard pickler, by reference, and a function that exists only in the client's
``__main__`` cannot be found by name on a Dask worker. The adapter cloudpickles each call into
bytes, which the safepool worker loads again (:func:`_call_pickled`).
"""
from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import itertools
import multiprocessing
import queue
import threading
import time
import traceback
import uuid
import weakref
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError
from concurrent.futures import TimeoutError as FuturesTimeoutError
from types import TracebackType
from typing import (
    Any,
    Callable,
    Counter,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Optional,
    Tuple,
    Type,
    TypeVar,
    cast,
)

import cloudpickle
import dask
import distributed
from distributed.diagnostics.plugin import WorkerPlugin

from ._executor import SafeProcessPoolExecutor
from ._future import CancelNowFuture, _FutureBase
from ._map import _Progress
from ._stats import CAUSES, PoolStats
from .errors import RemoteTraceback, TaskPicklingError, TaskUnpicklingError

__all__ = ["DaskExecutor", "SafepoolPlugin", "WorkerPool", "install", "uninstall"]

#: What a task returns: ``submit(fn)`` gives a ``Future[_T]`` for an ``fn`` returning ``_T``.
_T = TypeVar("_T")

#: The executor name tasks select with ``dask.annotate(executor=...)`` by default.
DEFAULT_NAME = "safepool"

#: Keyword arguments of SafeProcessPoolExecutor that a remote pool accepts (a multiprocessing
#: context cannot travel to another machine: give ``start_method`` instead).
POOL_OPTIONS = ("max_workers", "initializer", "initargs", "max_tasks_per_child", "task_timeout",
                "cancel_running", "max_worker_lifetime", "max_worker_memory", "start_method")


# ---- in the safepool worker process -----------------------------------------------------------

def _call_pickled(payload: bytes) -> bytes:
    """Runs in a safepool worker: load ``(fn, args, kwargs)``, call it, pickle the outcome.

    The outcome is ``(True, result)`` or ``(False, exception, traceback text)``, pickled with
    cloudpickle so that a result or exception whose class lives in the client's ``__main__``
    survives the way back. A crash or a timeout never gets here: the pool reports those.
    """
    try:
        fn, args, kwargs = cloudpickle.loads(payload)
    except BaseException as exc:  # noqa: B036 - even SystemExit: the task never started
        # As the local pool reports it: this task fails, with an error that is still a
        # BrokenProcessPool, and the pool keeps serving.
        raise TaskUnpicklingError(f"could not unpickle the task in the worker: "
                                  f"{type(exc).__name__}: {exc}") from exc
    outcome: Tuple[Any, ...]
    try:
        outcome = (True, fn(*args, **kwargs))
    except BaseException as exc:  # noqa: B036 - the stdlib reports SystemExit here too
        outcome = (False, exc, traceback.format_exc())
    del fn, args, kwargs
    try:
        data: bytes = cloudpickle.dumps(outcome)
        return data
    except BaseException as exc:  # noqa: B036 - a __reduce__ that calls sys.exit(), too
        err: BaseException
        if isinstance(exc, Exception):
            what = "result" if outcome[0] else f"exception {type(outcome[1]).__name__}"
            err = TaskPicklingError(f"could not pickle the task's {what} to send it back: "
                                    f"{type(exc).__name__}: {exc}")
        else:  # SystemExit while pickling: the task's error, as the stdlib reports it
            err = exc
        data = cloudpickle.dumps((False, err, traceback.format_exc()))
        return data


class _PickledCall:
    """What the pool runs: a cloudpickled call, named after the user's function.

    The pool names a task by its callable's ``__module__`` and ``__qualname__`` in errors and
    logs ("the worker running tasks.work() was killed by SIGKILL"); this carries the user's,
    not those of the adapter.
    """

    def __init__(self, payload: bytes, module: Optional[str], qualname: str):
        self.payload = payload
        self.__module__ = module  # type: ignore[assignment]  # None as on the user's callable
        self.__qualname__ = qualname

    def __call__(self) -> bytes:
        return _call_pickled(self.payload)


def _names(fn: Any) -> Tuple[Optional[str], str]:
    """``(module, qualname)`` of a callable, for the names of its tasks."""
    qualname = cast(str, getattr(fn, "__qualname__", None)
                    or getattr(type(fn), "__qualname__", "task"))
    module: Optional[str] = getattr(fn, "__module__", None)
    return module, qualname


def _call_chunk(fn: Callable[..., Any],
                chunk: List[Tuple[Any, ...]]) -> Tuple[List[Any], Optional[BaseException]]:
    """Runs in a safepool worker: ``fn(*item)`` for each item, stopping at the first error.

    Returns the results before the failing item and that item's exception (or None), so that
    ``map`` yields every good result before it raises at the failed item's own place.
    """
    results: List[Any] = []
    for args in chunk:
        try:
            results.append(fn(*args))
        except Exception as exc:
            # typeshed says TracebackType; the stdlib's class takes (and keeps) the text
            cause = RemoteTraceback(traceback.format_exc())  # type: ignore[arg-type]
            exc.__cause__ = cause
            _add_note(exc, cause.tb)
            return results, exc
    return results, None


def _add_note(exc: BaseException, text: str) -> None:
    """Keep the remote traceback on an exception that Dask will pickle: ``__cause__`` does not
    survive pickling, ``__notes__`` (shown by Python 3.11 and later) does."""
    notes = getattr(exc, "__notes__", None)
    try:
        if notes is None:
            exc.__notes__ = [text]
        elif isinstance(notes, list) and text not in notes:
            notes.append(text)
    except Exception:  # an exception type that refuses attributes: keep it as it is
        pass


def _unpack(outcome_bytes: bytes) -> Any:
    """The result of :func:`_call_pickled`, or raise its exception with the remote traceback
    as ``__cause__``, as the local pool does."""
    try:
        outcome = cloudpickle.loads(outcome_bytes)
    except BaseException as exc:  # noqa: B036 - a __reduce__ that calls sys.exit(), too
        raise TaskUnpicklingError(f"could not unpickle the task's result: "
                                  f"{type(exc).__name__}: {exc}") from exc
    if outcome[0]:
        return outcome[1]
    _, error, tb_text = outcome
    error.__cause__ = RemoteTraceback(tb_text)
    try:
        raise error
    finally:
        del error, outcome


# ---- in the Dask worker -----------------------------------------------------------------------

class _PoolFuture(_FutureBase):
    """The future :class:`WorkerPool` returns: it follows one of the pool's futures."""

    def __init__(self, inner: Future[Any], unpack: bool):
        super().__init__()
        self._inner = inner
        self._unpack = unpack
        inner.add_done_callback(self._follow)  # at once if it is already done

    def _follow(self, inner: Future[Any]) -> None:
        if inner.cancelled():
            super().cancel()
            super().set_running_or_notify_cancel()
            return
        exc = inner.exception()
        if exc is not None:
            cause = exc.__cause__
            if isinstance(cause, RemoteTraceback):
                _add_note(exc, cause.tb)
            self.set_exception(exc)
            return
        if not self._unpack:
            self.set_result(inner.result())
            return
        try:
            value = _unpack(inner.result())
        except Exception as err:  # the task's own exception, passed on
            self.set_exception(err)
        except BaseException as err:  # noqa: B036
            # SystemExit or KeyboardInterrupt from a task must not reach the Dask worker:
            # raised from an executor there, they shut the whole worker down.
            wrapped = RuntimeError(f"the task raised {err!r}")
            wrapped.__cause__ = err
            self.set_exception(wrapped)
        else:
            self.set_result(value)

    def cancel(self) -> bool:
        # asyncio.wrap_future() cancels us when the awaiting task is cancelled: pass it on.
        return self._inner.cancel() and super().cancel()

    def running(self) -> bool:
        return self._inner.running() and not self.done()


class WorkerPool(Executor):
    """A :class:`~safepool.SafeProcessPoolExecutor` as a Dask worker's named executor.

    ``submit`` cloudpickles the call so that anything Dask can send (lambdas, functions of the
    client's ``__main__``) runs in the pool. The pool itself is :attr:`pool`.
    """

    def __init__(self, pool: SafeProcessPoolExecutor):
        self.pool = pool
        #: The futures of DaskExecutor tasks running here, by Dask key (for cancel()).
        self.by_key: Dict[str, Future[Any]] = {}

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        return self.schedule(fn, args, kwargs)

    def schedule(self, fn: Callable[..., _T], args: Iterable[Any] = (),
                 kwargs: Optional[Dict[str, Any]] = None, *,
                 timeout: Optional[float] = None) -> Future[_T]:
        args = tuple(args)
        payload = cloudpickle.dumps((fn, args, dict(kwargs or {})))
        # A task of a Dask graph arrives as distributed's runner and the task: name the task's
        # own function in errors, not the runner.
        named = getattr(args[0], "func", fn) if args and getattr(args[0], "key", None) else fn
        return self.schedule_pickled(payload, timeout, _names(named), unpack=True)

    def schedule_pickled(self, payload: bytes, timeout: Optional[float] = None,
                         names: Tuple[Optional[str], str] = (None, "task"),
                         unpack: bool = True) -> Future[Any]:
        """Run a cloudpickled ``(fn, args, kwargs)``; the future gives the result, or with
        ``unpack=False`` the pickled outcome for :func:`_unpack` (as :class:`DaskExecutor`
        wants it, to unpickle it in the client). ``names`` is ``fn``'s module and qualname,
        for error messages."""
        inner = self.pool.schedule(_PickledCall(payload, *names), timeout=timeout)
        return _PoolFuture(inner, unpack)

    def shutdown(  # type: ignore[override]  # returns a bool where the stdlib's returns None
            self, wait: bool = True, *, cancel_futures: bool = False,
            timeout: Optional[float] = None) -> bool:
        return self.pool.shutdown(wait, cancel_futures=cancel_futures, timeout=timeout)

    def stats(self) -> PoolStats:
        return self.pool.stats()

    def __repr__(self) -> str:
        return f"<WorkerPool {self.pool!r}>"


class SafepoolPlugin(WorkerPlugin):
    """A Dask worker plugin that installs a :class:`WorkerPool` as the executor ``name``.

    Register it with ``client.register_plugin(SafepoolPlugin(...))`` (or :func:`install`);
    workers that join later get it too. Then::

        with dask.annotate(executor="safepool"):
            result = delayed(risky)(x)

    runs ``risky`` in a safepool worker process of whichever Dask worker the scheduler picks.
    ``max_workers`` defaults to the Dask worker's ``nthreads`` (Dask runs at most that many of
    its tasks at once anyway). The other options are those of ``SafeProcessPoolExecutor``;
    ``start_method`` ("forkserver" or "spawn") stands for ``mp_context``. Removing the plugin
    (``client.unregister_worker_plugin(name)``) or closing the worker shuts the pool down.
    """

    idempotent = False

    def __init__(self, name: str = DEFAULT_NAME, **options: Any):
        unknown = set(options) - set(POOL_OPTIONS)
        if unknown:
            raise TypeError(f"unknown pool options: {sorted(unknown)}; "
                            f"expected some of {list(POOL_OPTIONS)}")
        self.name = name
        self.options = options

    def setup(self, worker: distributed.Worker) -> None:
        options = dict(self.options)
        if options.get("max_workers") is None:
            options["max_workers"] = max(1, int(worker.state.nthreads))
        method = options.pop("start_method", None)
        if method is not None:
            options["mp_context"] = multiprocessing.get_context(method)
        # Dask starts its worker processes as multiprocessing daemons, and a daemon may not
        # start processes of its own. That rule exists because a daemon is terminated without
        # cleanup and would orphan its children; the pool's workers cannot be orphaned (each
        # has a lifeline to this process and exits when it dies, and the pool reaps them), so
        # the Dask worker is allowed children. Its nanny still treats it as a daemon.
        process = multiprocessing.current_process()
        if process.daemon:
            process.daemon = False
        old = worker.executors.pop(self.name, None)
        if isinstance(old, WorkerPool):
            old.shutdown(wait=False, cancel_futures=True)
        worker.executors[self.name] = WorkerPool(SafeProcessPoolExecutor(**options))

    async def teardown(self, worker: distributed.Worker) -> None:
        pool = worker.executors.pop(self.name, None)
        if isinstance(pool, WorkerPool):
            # In a thread: the worker's event loop (heartbeats, other tasks) must not wait.
            # Bounded: what still runs after the grace period is stopped (stop ladder).
            await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(pool.shutdown, wait=True, cancel_futures=True,
                                        timeout=_TEARDOWN_GRACE))


#: Seconds a pool's running tasks get to finish when its plugin is removed.
_TEARDOWN_GRACE = 10.0


def install(client: "distributed.Client", name: str = DEFAULT_NAME, **options: Any) -> str:
    """Install a safepool pool as the executor ``name`` on every worker of ``client``'s
    cluster (and on workers that join later). Returns ``name``.

    ``options`` are :class:`SafepoolPlugin`'s. Tasks select the pool with
    ``dask.annotate(executor=name)``; :func:`uninstall` removes it.
    """
    client.register_plugin(SafepoolPlugin(name, **options), name=name)
    return name


def uninstall(client: "distributed.Client", name: str = DEFAULT_NAME) -> None:
    """Remove the pool ``name`` from every worker: its running tasks get a grace period to
    finish, then are stopped; every process of the pool is reaped."""
    client.unregister_worker_plugin(name)


def _pool_here(name: str, worker: Optional[distributed.Worker] = None) -> WorkerPool:
    if worker is None:
        worker = distributed.get_worker()
    pool = worker.executors.get(name)
    if not isinstance(pool, WorkerPool):
        raise RuntimeError(f"no safepool pool named {name!r} on Dask worker {worker.address} "
                           "(was the executor shut down, or the plugin removed?)")
    return pool


async def _run_in_pool(name: str, payload: bytes, timeout: Optional[float],
                       names: Tuple[Optional[str], str], key: str) -> bytes:
    """The Dask task :class:`DaskExecutor` submits: hand the call to this worker's pool and
    wait for it without holding a thread (a coroutine task runs on the worker's event loop).
    Returns the pickled outcome; the client unpickles it. While it runs, the pool's future is
    findable by the task's key, for :func:`_remote_cancel`."""
    pool = _pool_here(name)
    future = pool.schedule_pickled(payload, timeout, names, unpack=False)
    pool.by_key[key] = future
    try:
        return await asyncio.wrap_future(future)
    finally:
        pool.by_key.pop(key, None)


def _remote_cancel(name: str, key: str, dask_worker: Optional[distributed.Worker] = None) -> bool:
    """Run by ``client.run``: cancel the task ``key`` if it runs in this worker's pool (with
    ``cancel_running`` the pool stops its process)."""
    try:
        future = _pool_here(name, dask_worker).by_key.get(key)
    except RuntimeError:
        return False
    return future is not None and future.cancel()


def _remote_stats(name: str,
                  dask_worker: Optional[distributed.Worker] = None) -> Optional[Dict[str, Any]]:
    """Run by ``client.run`` on each worker (which passes ``dask_worker``)."""
    try:
        return _pool_here(name, dask_worker).stats().to_dict()
    except RuntimeError:
        return None


def _remote_force_stop(name: str, kill: bool,
                       dask_worker: Optional[distributed.Worker] = None) -> None:
    try:
        pool = _pool_here(name, dask_worker).pool
    except RuntimeError:
        return
    if kill:
        pool.kill_workers()
    else:
        pool.terminate_workers()


# ---- in the client ------------------------------------------------------------------------------

class _Item:
    """One task the executor has accepted: its future and its pickled call."""

    __slots__ = ("future", "payload", "timeout", "names")

    def __init__(self, future: Future[Any], payload: bytes, timeout: Optional[float],
                 names: Tuple[Optional[str], str]):
        self.future = future
        self.payload = payload
        self.timeout = timeout
        self.names = names


class _DaskFuture(CancelNowFuture):
    """A DaskExecutor's future: with ``cancel_running=True``, ``cancel()`` also works while
    the task runs on the cluster. The future ends cancelled at once; the executor then asks
    the pool running it to stop its process, and drops a result that still arrives."""

    # weakref.ref to the DaskExecutor: a future must not keep it alive
    _executor_ref: Optional[weakref.ref[DaskExecutor]] = None

    def _after_cancel(self, was_running: bool) -> None:
        executor = self._executor_ref() if self._executor_ref is not None else None
        if executor is not None:
            if not was_running:
                executor._count("cancelled")
            else:
                executor._cancel_running_task(self)


def _key_prefix(qualname: str) -> str:
    """A Dask key prefix (what the dashboard groups tasks by) from a function's name."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in qualname)[:60] or "task"


_live_executors: "weakref.WeakSet[DaskExecutor]" = weakref.WeakSet()
_interpreter_exiting = False


def _at_exit() -> None:
    """At interpreter exit, finish the accepted work and remove the pools, as the stdlib's
    executors finish theirs. It runs before distributed's own exit handlers, while the
    client can still reach the cluster."""
    global _interpreter_exiting
    _interpreter_exiting = True
    for executor in list(_live_executors):
        executor.shutdown(wait=True)


if hasattr(threading, "_register_atexit"):  # 3.9+: before atexit handlers, as the stdlib's
    threading._register_atexit(_at_exit)
else:  # pragma: no cover - Python 3.8
    atexit.register(_at_exit)


class DaskExecutor(Executor):
    """A ``concurrent.futures.Executor`` that runs each task in a safepool pool on a Dask
    cluster.

    Args:
        address: a ``distributed.Client``, or a scheduler address ("tcp://host:8786"). With
            neither, Dask's configured ``scheduler-address`` (``DASK_SCHEDULER_ADDRESS``) is
            used, and without one a ``LocalCluster`` of worker processes is started (and
            closed by :meth:`shutdown`), so the same script runs on a laptop.
        max_workers: how many tasks this executor has on the cluster at once; the rest wait
            in the executor, where ``cancel()`` and ``shutdown(cancel_futures=True)`` can
            still take them back. Default: twice the cluster's threads, looked up again as
            workers come and go.
        task_timeout, initializer, initargs, max_tasks_per_child, max_worker_lifetime,
        max_worker_memory: as for ``SafeProcessPoolExecutor``; they apply to the pool on
            each Dask worker (an initializer runs once per process of each remote pool).
        cancel_running: let ``future.cancel()`` stop a task already on the cluster: the
            future ends cancelled at once, the pool running the task stops its process (or
            Dask drops the task if it had not started), a late result is dropped.
        pool_size: processes of the pool on each Dask worker; default its ``nthreads``.
        start_method: "forkserver" or "spawn" for the remote pools.
        n_workers, threads_per_worker, cluster_options: for the ``LocalCluster`` started when
            no cluster is given.

    A task's function and arguments travel with cloudpickle, so lambdas and functions of
    ``__main__`` work; safepool must be installed on the workers.
    """

    def __init__(self, address: Any = None, *, max_workers: Optional[int] = None,
                 task_timeout: Optional[float] = None,
                 initializer: Optional[Callable[..., Any]] = None, initargs: Tuple[Any, ...] = (),
                 max_tasks_per_child: Optional[int] = None, cancel_running: bool = False,
                 max_worker_lifetime: Optional[float] = None,
                 max_worker_memory: Optional[int] = None, pool_size: Optional[int] = None,
                 start_method: Optional[str] = None, n_workers: Optional[int] = None,
                 threads_per_worker: Optional[int] = None,
                 cluster_options: Optional[Dict[str, Any]] = None) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        # The options are checked here, by the class that will use them on the workers, so
        # that a mistake is an error now and not a failed plugin on every worker.
        options: Dict[str, Any] = dict(
            initializer=initializer, initargs=tuple(initargs),
            max_tasks_per_child=max_tasks_per_child, task_timeout=task_timeout,
            cancel_running=cancel_running, max_worker_lifetime=max_worker_lifetime,
            max_worker_memory=max_worker_memory)
        SafeProcessPoolExecutor(max_workers=pool_size or 1, **options).shutdown()
        options["max_workers"] = pool_size
        if start_method not in (None, "forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {start_method!r}")
        options["start_method"] = start_method

        self._cluster: Optional[distributed.LocalCluster] = None
        self._own_client = False
        self._client = self._connect(address, n_workers, threads_per_worker, cluster_options)
        self._name = f"safepool-{uuid.uuid4().hex[:12]}"
        self._task_timeout = task_timeout
        self._cancel_running = cancel_running
        self._max_workers = max_workers
        try:
            install(self._client, self._name, **options)
        except BaseException:
            self._close_cluster()
            raise

        self._lock = threading.Lock()
        self._pending: "collections.deque[_Item]" = collections.deque()
        self._in_flight: Dict[Future[Any], Any] = {}  # our future -> its Dask future
        self._inbox: queue.SimpleQueue[Optional[Tuple[Any, ...]]] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._shutdown_flag = False
        self._closed = threading.Event()   # the remote pools are gone (and our cluster)
        self._capacity = 0
        self._capacity_at = 0.0
        self._counts: Counter[str] = collections.Counter()
        _live_executors.add(self)

    # ---- connecting -----------------------------------------------------------------------

    def _connect(self, address: Any, n_workers: Optional[int],
                 threads_per_worker: Optional[int],
                 cluster_options: Optional[Dict[str, Any]]) -> distributed.Client:
        if isinstance(address, distributed.Client):
            return address
        if address is None:
            address = dask.config.get("scheduler-address", None)
        self._own_client = True
        if address is not None:
            return distributed.Client(address, set_as_default=False)
        options: Dict[str, Any] = {"processes": True}
        if n_workers is not None:
            options["n_workers"] = n_workers
        if threads_per_worker is not None:
            options["threads_per_worker"] = threads_per_worker
        options.update(cluster_options or {})
        self._cluster = distributed.LocalCluster(**options)
        try:
            return distributed.Client(self._cluster, set_as_default=False)
        except BaseException:
            self._cluster.close()
            raise

    @property
    def client(self) -> "distributed.Client":
        """The ``distributed.Client`` this executor submits through."""
        return self._client

    @property
    def pool_name(self) -> str:
        """The executor name of this executor's pools on the Dask workers: tasks of a Dask
        graph can run there too, with ``dask.annotate(executor=executor.pool_name)``."""
        return self._name

    # ---- the Executor API -------------------------------------------------------------------

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Schedule ``fn(*args, **kwargs)`` on the cluster; return a
        ``concurrent.futures.Future``."""
        return self._submit(fn, args, kwargs, self._task_timeout)

    def schedule(self, fn: Callable[..., _T], args: Iterable[Any] = (),
                 kwargs: Optional[Dict[str, Any]] = None, *,
                 timeout: Optional[float] = None) -> Future[_T]:
        """Like :meth:`submit`, with a timeout for this task, counted from when it starts in
        a pool process; on expiry it fails with ``TaskTimeoutError`` and that process is
        stopped and replaced."""
        if timeout is not None and (isinstance(timeout, bool) or timeout <= 0):
            raise ValueError(f"timeout must be > 0 or None, not {timeout!r}")
        return self._submit(fn, tuple(args), dict(kwargs or {}),
                            self._task_timeout if timeout is None else timeout)

    def _submit(self, fn: Callable[..., _T], args: Tuple[Any, ...], kwargs: Dict[str, Any],
                timeout: Optional[float]) -> Future[_T]:
        self._check_open()
        future = _DaskFuture()
        future._executor_ref = weakref.ref(self)
        future._cancel_running = self._cancel_running
        names = _names(fn)
        try:
            payload = cloudpickle.dumps((fn, args, kwargs))
        except Exception as exc:
            err = TaskPicklingError(f"could not pickle the task {names[1]}() to send it to the "
                                    f"cluster: {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            future.set_exception(err)
            self._count("submitted", "failed")
            return future
        with self._lock:
            self._check_open()
            self._pending.append(_Item(future, payload, timeout, names))
            self._counts["submitted"] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"safepool-dask-{self._name}")
                self._thread.start()
        self._inbox.put(None)
        return future

    def _check_open(self) -> None:
        if self._shutdown_flag:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1,
            buffersize: Optional[int] = None, progress: Any = None) -> Iterator[_T]:
        """Like ``SafeProcessPoolExecutor.map``: ``chunksize`` items travel as one Dask task
        (the way to amortise the cluster's per-task cost), ``buffersize`` bounds the chunks
        in flight, ``progress`` is a callable ``(done, total)`` or True for a tqdm bar."""
        return self._map(fn, iterables, timeout, chunksize, buffersize, progress, True)

    def map_unordered(self, fn: Callable[..., _T], *iterables: Iterable[Any],
                      timeout: Optional[float] = None, chunksize: int = 1,
                      buffersize: Optional[int] = None, progress: Any = None) -> Iterator[_T]:
        """Like :meth:`map`, yielding results as they complete."""
        return self._map(fn, iterables, timeout, chunksize, buffersize, progress, False)

    def shutdown(  # type: ignore[override]  # returns a bool where the stdlib's returns None
            self, wait: bool = True, *, cancel_futures: bool = False,
            timeout: Optional[float] = None) -> bool:
        """Stop accepting tasks; once the accepted ones are done, remove the pools from the
        cluster (and close the cluster this executor started).

        ``cancel_futures`` cancels the tasks not yet handed to the cluster. With ``timeout``
        (needs ``wait=True``), tasks still running when it expires are stopped with their
        pool processes and fail with ``WorkerLostError``. Returns True when everything
        finished in time.
        """
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 or None, not {timeout!r}")
        with self._lock:
            self._shutdown_flag = True
            started = self._thread is not None
        if cancel_futures:
            self._cancel_pending()
        if not started:
            self._close()
            return True
        self._inbox.put(None)
        if not wait or threading.current_thread() is self._thread:
            return self._closed.is_set()
        if self._closed.wait(timeout):
            return True
        # Too late: stop what runs, then wait (boundedly) for its futures to fail.
        self._cancel_pending()
        self._force_remote(kill=False)
        self._closed.wait(_TEARDOWN_GRACE + 30)
        return False

    def terminate_workers(self) -> None:
        """Cancel the queued tasks, stop every running one with SIGTERM to its pool process
        (it fails with ``WorkerLostError``), and shut down."""
        self._force_stop(kill=False)

    def kill_workers(self) -> None:
        """Like :meth:`terminate_workers`, with SIGKILL."""
        self._force_stop(kill=True)

    def _force_stop(self, kill: bool) -> None:
        with self._lock:
            self._shutdown_flag = True
            started = self._thread is not None
        self._cancel_pending()
        if started:
            self._force_remote(kill)
        self.shutdown(wait=True)

    def _force_remote(self, kill: bool) -> None:
        try:
            self._client.run(_remote_force_stop, self._name, kill)
        except Exception:  # the cluster is gone: nothing left there to stop
            pass

    def _cancel_pending(self) -> None:
        """Cancel every task not handed to the cluster. Called without the lock: cancel()
        runs done-callbacks, and a callback may call any method of the executor."""
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
        for item in items:
            item.future.cancel()  # counted by the future

    def stats(self) -> PoolStats:
        """Tasks as this executor counts them, workers summed over the pools on the cluster
        (``workers_*`` fields: the safepool worker processes, not the Dask workers)."""
        try:
            remote = self._client.run(_remote_stats, self._name) if not self._closed.is_set() \
                else {}
        except Exception:
            remote = {}
        workers: Counter[str] = collections.Counter()
        replaced: Counter[str] = collections.Counter({cause: 0 for cause in CAUSES})
        for one in remote.values():
            if not one:
                continue
            for field in ("workers_alive", "workers_busy", "workers_started",
                          "late_results_dropped"):
                workers[field] += one[field]
            replaced.update(one["workers_replaced"])
        with self._lock:
            counts = dict(self._counts)
            queued = sum(1 for item in self._pending if not item.future.done())
            running = len(self._in_flight)
        return PoolStats(
            workers_alive=workers["workers_alive"], workers_busy=workers["workers_busy"],
            workers_started=workers["workers_started"], workers_replaced=dict(replaced),
            tasks_submitted=counts.get("submitted", 0), tasks_queued=queued,
            tasks_running=running, tasks_completed=counts.get("completed", 0),
            tasks_failed=counts.get("failed", 0), tasks_cancelled=counts.get("cancelled", 0),
            late_results_dropped=workers["late_results_dropped"])

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_val: Optional[BaseException],
                 exc_tb: Optional[TracebackType]) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.terminate_workers()
        self.shutdown(wait=True)
        return False

    def __repr__(self) -> str:
        return f"<DaskExecutor {self._name} on {self._client.scheduler.address}>"

    # ---- the dispatcher thread: the one owner of the queue and the tasks in flight ----------

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._counts[name] += 1

    def _limit(self) -> int:
        if self._max_workers is not None:
            return self._max_workers
        now = time.monotonic()
        if now - self._capacity_at > _CAPACITY_REFRESH or self._capacity == 0:
            try:
                self._capacity = 2 * sum(self._client.nthreads().values())
            except Exception:
                pass
            self._capacity_at = now
        return max(1, self._capacity)

    def _run(self) -> None:
        try:
            while True:
                message = self._inbox.get()
                if message is None:
                    pass
                elif message[0] == "cancel":
                    self._stop_remote(message[1])
                else:
                    self._deliver(*message[1:])
                    # Held until the next message, it would keep the future and so its
                    # result alive after the caller let go of them (bpo-14406).
                    message = None
                self._dispatch()
                with self._lock:
                    idle = not self._pending and not self._in_flight
                    if idle and self._shutdown_flag:
                        break
        except BaseException as exc:  # a fault of ours: no future may stay pending
            self._fail_everything(exc)
        finally:
            self._close()

    def _dispatch(self) -> None:
        limit = self._limit()
        while True:
            with self._lock:
                if not self._pending or len(self._in_flight) >= limit:
                    return
                item = self._pending.popleft()
                if not item.future.set_running_or_notify_cancel():
                    continue
                key = f"{_key_prefix(item.names[1])}-{uuid.uuid4().hex}"
                try:
                    dask_future = self._client.submit(_run_in_pool, self._name, item.payload,
                                                      item.timeout, item.names, key, key=key,
                                                      pure=False)
                except Exception as exc:  # the client is closed, say: this task fails
                    dask_future = None
                    self._counts["failed"] += 1
                    error = exc
                else:
                    self._in_flight[item.future] = dask_future
            item.payload = b""
            if dask_future is None:
                item.future.set_exception(error)  # outside the lock: callbacks run here
                del error
                continue
            self._client.loop.add_callback(self._relay, dask_future, item.future)
            del item, dask_future

    async def _relay(self, dask_future: distributed.Future, future: Future[Any]) -> None:
        """On the client's event loop: fetch one outcome and pass it to the dispatcher thread
        (done-callbacks must not run on the event loop: one that waits would stop it)."""
        try:
            value = await self._client.gather(dask_future, asynchronous=True)
            message = ("done", future, True, value)
        except BaseException as exc:  # noqa: B036 - passed on to the future
            message = ("done", future, False, exc)
        self._inbox.put(message)

    def _deliver(self, future: Future[Any], ok: bool, value: Any) -> None:
        with self._lock:
            dask_future = self._in_flight.pop(future, None)
        if dask_future is not None:
            dask_future.release()
        del dask_future
        if ok:
            try:
                value = _unpack(value)
            except BaseException as exc:  # noqa: B036 - the task's exception
                ok, value = False, exc
        if not ok and isinstance(value, (CancelledError, asyncio.CancelledError)):
            # Cancelled on the cluster (client.cancel, or the cluster went away) after it
            # was handed over: for us it was running, so it fails rather than "cancelled".
            err = CancelledError(f"the task was cancelled on the Dask cluster: {value}")
            err.__cause__ = value
            value = err
        outcome = "completed" if ok else "failed"
        self._count(outcome)  # before the future is done: whoever waits on it sees the count
        try:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        except InvalidStateError:  # cancelled while it ran (cancel_running): dropped
            with self._lock:
                self._counts[outcome] -= 1
        finally:
            del value

    def _cancel_running_task(self, future: Future[Any]) -> None:
        """Called by a running future's cancel(): the dispatcher stops it on the cluster."""
        self._count("cancelled")
        self._inbox.put(("cancel", future))

    def _stop_remote(self, future: Future[Any]) -> None:
        with self._lock:
            dask_future = self._in_flight.get(future)
        if dask_future is None:  # its outcome is in already
            return
        try:
            # Stops it in the pool that runs it; and if it has not started, Dask drops it.
            self._client.run(_remote_cancel, self._name, dask_future.key)
            dask_future.cancel()
        except Exception:  # the cluster is gone: nothing runs there any more
            pass

    def _fail_everything(self, exc: BaseException) -> None:
        with self._lock:
            self._shutdown_flag = True
            items = list(self._pending)
            self._pending.clear()
            futures = list(self._in_flight)
            self._in_flight.clear()
        for future in [item.future for item in items] + futures:
            if not future.done():
                try:
                    future.set_exception(RuntimeError(f"the DaskExecutor failed: {exc!r}"))
                except Exception:
                    pass

    def _close(self) -> None:
        """Remove our pools from the cluster; close the cluster if we started it."""
        if self._closed.is_set():
            return
        try:
            uninstall(self._client, self._name)
        except Exception:  # the cluster is already gone
            pass
        self._close_cluster()
        _live_executors.discard(self)
        self._closed.set()

    def _close_cluster(self) -> None:
        if self._own_client:
            try:
                self._client.close()
            except Exception:
                pass
        if self._cluster is not None:
            try:
                self._cluster.close()
            except Exception:
                pass

    # ---- map ------------------------------------------------------------------------------

    def _map(self, fn: Callable[..., Any], iterables: Tuple[Any, ...],
             timeout: Optional[float], chunksize: int, buffersize: Optional[int],
             progress: Any, ordered: bool) -> Iterator[Any]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError("buffersize must be None or an integer > 0")
        end = None if timeout is None else time.monotonic() + timeout
        args = zip(*iterables)
        items = args if chunksize == 1 else \
            iter(lambda: list(itertools.islice(args, chunksize)), [])
        try:
            total = min(len(it) for it in iterables)
        except (TypeError, ValueError):
            total = None
        tracker = _Progress(progress, total) if progress else None
        ref = weakref.ref(self)
        done: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()

        def submit(item: Any) -> Future[Any]:
            executor = ref()
            if executor is None:
                raise RuntimeError("the executor was garbage-collected during map()")
            future = (executor.submit(fn, *item) if chunksize == 1
                      else executor.submit(_call_chunk, fn, item))
            if not ordered:
                future.add_done_callback(done.put)
            return future

        first = items if buffersize is None else itertools.islice(items, buffersize)
        futures = collections.deque(submit(item) for item in first)
        return _map_results(futures, items, submit, buffersize, end, chunksize > 1, tracker,
                            None if ordered else done)


#: How often (seconds) the cluster's thread count is looked up again for the default limit.
_CAPACITY_REFRESH = 2.0


def _map_results(futures: Any, items: Iterator[Any], submit: Callable[[Any], Future[Any]],
                 buffersize: Optional[int], end: Optional[float], chunked: bool,
                 tracker: Optional[_Progress],
                 done: Optional[queue.SimpleQueue[Future[Any]]]) -> Iterator[Any]:
    """Yield map's results: in input order, or (with a ``done`` queue) as they complete.

    ``futures`` holds what is in flight: a deque in input order, or a set when unordered.
    A suspended generator holds no result (each is dropped before the next is yielded), and
    closing it early cancels what has not been handed to the cluster.
    """
    if done is not None:
        futures = set(futures)
    try:
        while futures:
            if buffersize is not None:
                for item in itertools.islice(items, 1):  # keep the look-ahead full
                    if done is None:
                        futures.append(submit(item))
                    else:
                        futures.add(submit(item))
            left = None if end is None else max(0.0, end - time.monotonic())
            if done is None:
                future = futures.popleft()
            else:
                try:
                    future = done.get(timeout=left)
                except queue.Empty:
                    raise FuturesTimeoutError() from None
                futures.discard(future)
            value = future.result(left)
            del future
            results, error = value if chunked else ([value], None)
            del value
            results = list(results)
            results.reverse()
            while results:
                if tracker is not None:
                    tracker.advance()
                yield results.pop()
            if error is not None:
                raise error
    finally:
        for future in futures:
            future.cancel()
        if tracker is not None:
            tracker.close()

