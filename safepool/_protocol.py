"""The messages between the parent and a worker, and how they are framed.

Each worker has pipes of its own (no lock shared with any other process), so a worker that
dies at any instruction can corrupt only its own pipes, never another worker's.

Parent -> worker, one message:  ``!QB`` (body length, kind) + body
  on the task pipe, read by the worker's main thread when it wants its next task:
    TASKS   body: one or more task frames, each ``!QQ`` (task id, payload length) + payload,
            where payload is ``ForkingPickler((fn, args, kwargs))``. Several queued tasks travel
            in one message when the queue is deep, which saves system calls per task. The
            n-th task frame on a worker's task pipe is its task number n (0, 1, ...): both
            ends count whole frames, so they agree on it without a byte count.
    STOP    body: empty. The worker exits after the tasks sent before it.
  on the control pipe, read by the worker's control thread, even while a task runs:
    REVOKE  body: ``!QQ`` (task number, task id) pairs. The worker takes back those it has not
            started (one it has not even read yet is dropped when it arrives) and answers
            REVOKED with the ones it took back.
    SOFT_TIMEOUT  body: a task id (``!Q``). If that task is still running, the worker raises
            SoftTimeoutError in it; otherwise the message is ignored.

Worker -> parent, one message per event:  ``!QBQQ`` (payload length, kind, task id, rss) + payload
    READY        the initializer succeeded; tasks that arrive from now on may start.
    INIT_FAILED  payload: the initializer's exception (see ``dump_exception``).
    STARTED      the worker is about to run this task (before it even unpickles it). A task
                 whose STARTED never arrived never ran any of its code: it may be resent.
    RESULT       payload: the task's return value.
    ERROR        payload: the task's exception.
    BAD_TASK     payload: why the task could not be unpickled in the worker.
    REVOKED      payload: the ids (``!Q`` each) of the tasks taken back, never to start here.
The task id travels outside the pickle so that a payload which cannot be unpickled still names
its task, and only that task fails. Lengths are 64-bit: a 4 GiB argument is not a corrupt frame.
"""
import copyreg
import io
import os
import pickle
import struct
from multiprocessing.reduction import ForkingPickler as _ForkingPickler
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Type, Union

from . import _out_of_band as _oob

# Workers import this module, so it imports only what every task needs. traceback and
# safepool.errors (which pulls in concurrent.futures and logging) load when a task first
# fails: that saved about 10 ms of every worker's start-up, a third of "create + first result".

PROTOCOL = pickle.HIGHEST_PROTOCOL

# Parent -> worker
TASKS = 1
STOP = 2
REVOKE = 3
SOFT_TIMEOUT = 4
TO_WORKER = struct.Struct("!QB")
TASK_FRAME = struct.Struct("!QQ")

# Worker -> parent
READY = 10
INIT_FAILED = 11
RESULT = 12
ERROR = 13
BAD_TASK = 14
STARTED = 15
REVOKED = 16
FROM_WORKER = struct.Struct("!QBQQ")
WORKER_KINDS = frozenset((READY, INIT_FAILED, RESULT, ERROR, BAD_TASK, STARTED, REVOKED))

#: A frame from a worker longer than this is corrupt (or hostile), not a result: 1 TiB.
MAX_FRAME = 1 << 40

ID = struct.Struct("!Q")


class _Pickler(pickle.Pickler):
    """ForkingPickler's reductions, without its per-call cost: ForkingPickler copies and
    merges two dispatch tables each time it is created (a third of a small task's pickling).
    Here the merged table is a class attribute, rebuilt when either source changes."""

    dispatch_table: Dict[type, Callable[[Any], Union[str, Tuple[Any, ...]]]] = {}
    # copies of the two tables the merged one was built from
    _sources: Tuple[Optional[Dict[Any, Any]], Optional[Dict[Any, Any]]] = (None, None)

    @classmethod
    def fresh(cls) -> "Type[_Pickler]":
        copyreg_table = copyreg.dispatch_table
        extra = _ForkingPickler._extra_reducers  # type: ignore[attr-defined]  # stdlib private
        # Compared by value, so that a reducer registered again for the same type counts.
        if cls._sources[0] != copyreg_table or cls._sources[1] != extra:
            table = dict(copyreg_table)
            table.update(extra)
            cls.dispatch_table = table
            cls._sources = (dict(copyreg_table), dict(extra))
        return cls


def dumps(obj: Any, out_of_band: bool = False) -> bytes:
    """Pickle as the stdlib's pool does: with multiprocessing's ForkingPickler's reductions,
    so that Connections, sockets and whatever is registered with ``ForkingPickler.register()``
    (torch.multiprocessing's tensors, say) travel as they would with ProcessPoolExecutor.

    ``out_of_band``: the payload of a frame of its own (a task, a result, an exception), whose
    big buffers may travel through memfds beside it (``_out_of_band``); never for bytes that
    end up inside another pickle.
    """
    return dumps_with(_Pickler.fresh(), obj, out_of_band)


def dumps_with(pickler: Callable[..., pickle.Pickler], obj: Any, out_of_band: bool) -> bytes:
    buf = io.BytesIO()
    if not (out_of_band and _oob.AVAILABLE):
        pickler(buf, PROTOCOL).dump(obj)
        # getvalue(), not ForkingPickler.dumps()'s getbuffer(): the bytes are the buffer
        # itself (no copy), and no memoryview export outlives the call. A payload caught in
        # a garbage cycle (a task, its future, a traceback) otherwise made the collector
        # finalize the still-exported BytesIO: "Exception ignored ... BufferError".
        return buf.getvalue()
    collector = _oob.Collector()
    pickler(buf, PROTOCOL, buffer_callback=collector).dump(_oob.lift_big_bytes(obj))
    if not collector.views:
        return buf.getvalue()
    return _oob.pack(buf.getvalue(), collector.views, collector.forms)


loads = _oob.loads


def task_frame_header(task_id: int, payload: bytes) -> bytes:
    """The header of one task frame: its id and the length of the payload that follows."""
    return TASK_FRAME.pack(task_id, len(payload))


def iter_task_frames(body: memoryview) -> Iterator[Tuple[int, memoryview]]:
    """Split a TASKS body into (task id, payload) pairs."""
    pos, end = 0, len(body)
    size = TASK_FRAME.size
    while pos < end:
        task_id, length = TASK_FRAME.unpack_from(body, pos)
        pos += size
        yield task_id, body[pos:pos + length]
        pos += length


REVOKE_ENTRY = struct.Struct("!QQ")  # task number on that worker's pipe, task id


def pack_revoke(entries: Iterable[Tuple[int, int]]) -> bytes:
    return b"".join(REVOKE_ENTRY.pack(number, task_id) for number, task_id in entries)


def unpack_revoke(body: Union[bytes, bytearray, memoryview]) -> List[Tuple[int, int]]:
    return list(REVOKE_ENTRY.iter_unpack(bytes(body)))


def pack_ids(ids: Iterable[int]) -> bytes:
    return b"".join(ID.pack(i) for i in ids)


def unpack_ids(body: Union[bytes, bytearray, memoryview]) -> List[int]:
    return [i for (i,) in ID.iter_unpack(bytes(body))]


def write_all(fd: int, buffers: List[bytes]) -> None:
    """Blocking write of every buffer, in order, with as few system calls as the pipe allows."""
    views = [memoryview(b) for b in buffers if len(b)]
    while views:
        written = os.writev(fd, views[:512])
        while written and views:
            head = views[0]
            if written >= len(head):
                written -= len(head)
                views.pop(0)
            else:
                views[0] = head[written:]
                written = 0


def _rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    from ._hints import clean_remote_traceback
    from .errors import RemoteTraceback

    # typeshed says TracebackType; the stdlib's class takes (and keeps) the formatted text
    exc.__cause__ = RemoteTraceback(clean_remote_traceback(tb))  # type: ignore[arg-type]
    return exc


class RemoteException:
    """An exception raised in a worker, carried to the parent with its formatted traceback.

    Unpickling it gives back the original exception with a ``RemoteTraceback`` as its
    ``__cause__``, so the user sees where in the worker it was raised.
    """

    __slots__ = ("exc", "tb")

    def __init__(self, exc: BaseException, tb: str):
        self.exc = exc
        self.tb = tb

    def __reduce__(self) -> Tuple[Any, ...]:
        return _rebuild_exception, (self.exc, self.tb)


def format_remote(exc: BaseException) -> str:
    import traceback

    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:  # noqa: B036 - a broken __str__ or __repr__ must not kill the worker
        tb = f"{type(exc).__qualname__} (its traceback could not be formatted)\n"
    return f'\n"""\n{tb}"""'


def dump_exception(exc: BaseException, what: str, out_of_band: bool = False) -> bytes:
    """Pickle an exception raised in the worker; if it cannot be pickled, pickle one that says so.

    ``what`` names where it came from ("fn raised", "the initializer raised") for the message.
    """
    tb = format_remote(exc)
    try:
        return dumps(RemoteException(_lift_args(exc) if out_of_band else exc, tb), out_of_band)
    except BaseException as pickle_error:  # noqa: B036 - any failure here must still report
        from .errors import TaskPicklingError

        substitute = TaskPicklingError(
            f"{what} {type(exc).__qualname__}: {_safe_str(exc)}; that exception could not be "
            f"pickled to send it back to the parent ({type(pickle_error).__name__}: "
            f"{_safe_str(pickle_error)}). Make the exception picklable (pass all its "
            "arguments to super().__init__) or raise a builtin exception."
        )
        return pickle.dumps(RemoteException(substitute, tb), PROTOCOL)


class _Reduced:
    """Pickles as the reduce value it holds (an exception with its big bytes lifted)."""

    __slots__ = ("value",)

    def __init__(self, value: Tuple[Any, ...]):
        self.value = value

    def __reduce__(self) -> Tuple[Any, ...]:
        return self.value


def _lift_args(exc: BaseException) -> Any:
    """An exception whose arguments hold big bytes pickles with them out of band. The
    exception itself is left as it is (the task's code may still hold it)."""
    if not _oob.AVAILABLE:
        return exc
    try:
        value = exc.__reduce_ex__(PROTOCOL)
        if isinstance(value, tuple) and len(value) >= 2:
            lifted = _oob.lift_big_bytes(value[1])
            if lifted is not value[1]:
                return _Reduced((value[0], lifted, *value[2:]))
    except Exception:  # an odd __reduce_ex__: pickle it as it is, and let pickle say
        pass
    return exc


def _safe_str(exc: BaseException) -> str:
    """str(exc), or a stand-in when the exception's own __str__ raises."""
    try:
        return str(exc)
    except BaseException:  # noqa: B036
        return "<its str() raised>"
