"""Big buffers out of band: through memory the kernel frees with its last descriptor.

Through a pipe, a 100 MB argument is copied four times (pickled into a stream, into the pipe,
out of it, unpickled out of the stream) in 1 MiB pieces, with a wake-up per piece. Here a
buffer of at least ``THRESHOLD`` bytes is written once into a memfd (anonymous memory with a
descriptor, Linux), the descriptor travels beside its frame over a Unix socket
(``SCM_RIGHTS``), and the receiver maps it: a numpy array arrives with no copy at all; a
``bytes`` (which must own its memory) with one.

Nothing can leak, whoever dies: a memfd has no name. Its memory is freed when its last
descriptor is closed and its last mapping unmapped, by the kernel, also after a SIGKILL. A
descriptor in flight on a socket whose ends are closed is freed with it. There is no
``/dev/shm`` entry and no tracker process to clean up after. (macOS has no memfd: there
everything travels in band, as with the stdlib.)

What goes out of band: any buffer pickle protocol 5 offers (``PickleBuffer``: numpy arrays,
pandas and pyarrow data, ``bytearray`` and ``bytes`` via ``PickleBuffer``), and ``bytes`` and
``bytearray`` objects found near the top of a payload (``lift_big_bytes``): pickle never offers
those itself.

A payload with buffers starts with ``MAGIC`` (a pickle stream starts with ``0x80``) and says
how many descriptors go with it and each one's size: the receiver is told, it does not guess.
"""
from __future__ import annotations

import errno
import os
import pickle
import struct
import sys
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:
    import socket

# Workers import this module at start-up: socket (2-3 ms with selectors), mmap and array are
# imported by the functions that need them, when the first big buffer comes or goes.

#: A buffer at least this big goes through a memfd. Below it, the pipe is as fast: a memfd
#: costs a few system calls and a mapping of its own. Measured round trips, pipe/memfd
#: (benchmarks/oob_threshold.py, 2 shared cores): 0.96x at 256 KiB, 1.4x at 512 KiB, 2.1x at
#: 1 MiB, 4.6x at 16 MiB.
THRESHOLD = 1 << 19

AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "memfd_create")

MAGIC = b"\x00SPB"
HEADER = struct.Struct("!4sI")  # MAGIC, number of buffers
ENTRY = struct.Struct("!QB")     # each buffer's size and form, in order
#: The form a buffer is delivered in: a private mapping (numpy and the like build on it with
#: no copy), or what pickle makes of a PickleBuffer of bytes or a bytearray in band (bytes,
#: bytearray: objects that must own their memory, so one copy).
AS_MAPPING, AS_BYTES, AS_BYTEARRAY = 0, 1, 2
#: The most descriptors one payload may bring (a worker's frame saying more is corrupt).
MAX_BUFFERS = 1 << 16
#: Linux passes at most 253 descriptors (SCM_MAX_FD) in one message.
FDS_PER_MESSAGE = 253
_COUNT = struct.Struct("!I")

_SEALS = 0
if AVAILABLE:
    import fcntl

    _SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


#: A payload's buffers are written into memfds at once (by the submitting thread) while fewer
#: than this many memfds are open in this process; beyond, they are written when the task is
#: sent (``Buffers.materialize``, by the manager thread). 1,000 queued tasks of 1 MiB held
#: 1,000 descriptors (a common limit is 1,024 per process) and 1 GB of memfds.
EAGER_MEMFDS = 64

_live_lock = threading.Lock()
_live = 0  # memfds open in this process (made here or received)


def live_memfds() -> int:
    return _live


def _count(n: int) -> None:
    global _live
    with _live_lock:
        _live += n


class Buffers:
    """The memfds of one payload, or the buffers still to be written into them (``views``).

    Closed when the last holder lets go (the task until it settles, an outbox until they are
    sent): an explicit close could free a descriptor number that a pending send still names.
    """

    __slots__ = ("fds", "views")

    def __init__(self, fds: List[int], views: Optional[List[memoryview]] = None):
        self.fds = fds
        self.views = views or []  # not written yet: see materialize()
        if fds:
            _count(len(fds))

    def materialize(self) -> None:
        """Write the buffers not written yet into memfds (raises OSError: EMFILE, ENOMEM)."""
        views, self.views = self.views, []
        try:
            while views:
                self.fds.append(_memfd_with(views[0]))
                _count(1)
                views.pop(0)
        finally:
            self.views = views  # what is left, if one failed

    def close(self) -> None:
        fds, self.fds = self.fds, []
        self.views = []
        if fds:
            _count(-len(fds))
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        self.close()


class Packed(bytes):
    """A payload (header and pickle stream) whose buffers travel as descriptors beside it.

    A bytes subclass, so that whatever sends or keeps a payload treats it as the bytes it
    is; the channel also sends ``buffers.fds`` over the worker's socket.
    """

    buffers: Buffers


class Received:
    """A payload that arrived with its descriptors; ``load()`` maps them and unpickles."""

    __slots__ = ("data", "buffers")

    def __init__(self, data: Union[bytes, bytearray, memoryview], buffers: Buffers):
        self.data = data
        self.buffers = buffers

    def __len__(self) -> int:
        return len(self.data)

    def load(self) -> Any:
        data = memoryview(self.data)
        count = HEADER.unpack_from(data)[1]
        pos = HEADER.size
        entries = list(ENTRY.iter_unpack(data[pos:pos + ENTRY.size * count]))
        pos += ENTRY.size * count
        try:
            buffers = [_deliver(fd, size, form)
                       for fd, (size, form) in zip(self.buffers.fds, entries)]
        finally:
            self.buffers.close()  # the mappings keep what they map
        return pickle.loads(data[pos:], buffers=buffers)


def loads(payload: Any) -> Any:
    """Unpickle a payload, with its buffers if it brought any."""
    if type(payload) is Received:
        return payload.load()
    return pickle.loads(payload)


def is_packed(payload: Union[bytes, bytearray, memoryview]) -> bool:
    return payload[:4] == MAGIC


def declared_buffers(payload: Union[bytes, bytearray, memoryview]) -> int:
    """How many descriptors a payload (which starts with MAGIC) says go with it."""
    if len(payload) < HEADER.size:
        raise ValueError("a payload header cut short")
    count: int = HEADER.unpack_from(payload)[1]
    if count > MAX_BUFFERS or len(payload) < HEADER.size + ENTRY.size * count:
        raise ValueError(f"a payload header that names {count} buffers")
    return count


# ---- the sender's side ------------------------------------------------------------------------

class Collector:
    """pickle's ``buffer_callback``: keep buffers of at least THRESHOLD bytes out of band."""

    __slots__ = ("views", "forms")

    def __init__(self) -> None:
        self.views: List[memoryview] = []
        self.forms: List[int] = []

    def __call__(self, buf: pickle.PickleBuffer) -> bool:
        try:
            view = buf.raw()
        except BufferError:
            return True  # not contiguous: in band, where pickle says what it says today
        if view.nbytes < THRESHOLD:
            return True
        self.views.append(view)
        owner = type(view.obj)
        self.forms.append(AS_BYTES if owner is bytes else
                          AS_BYTEARRAY if owner is bytearray else AS_MAPPING)
        return False


def pack(stream: bytes, views: Sequence[memoryview], forms: Sequence[int]) -> Packed:
    """The payload that names these buffers; each is written into a sealed memfd now, or, if
    many memfds are open already, when the task is sent (``Buffers.materialize``)."""
    buffers = Buffers([], list(views))  # closes what it made if anything below fails
    if _live + len(views) <= EAGER_MEMFDS:
        buffers.materialize()
    header = HEADER.pack(MAGIC, len(views)) + b"".join(
        ENTRY.pack(v.nbytes, form) for v, form in zip(views, forms))
    packed = Packed(header + stream)
    packed.buffers = buffers
    return packed


def _memfd_with(view: memoryview) -> int:
    # Named after its creator, so that a leak check can tell whose it was.
    fd = os.memfd_create(f"safepool:{os.getpid()}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        done, total = 0, view.nbytes
        with view.cast("B") as flat:
            while done < total:  # one write() moves at most about 2 GiB
                done += os.write(fd, flat[done:done + (1 << 30)])
        try:
            # Sealed: the receiver maps it, and a file that shrank under a mapping would
            # kill the receiver with SIGBUS at its next read.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        except OSError:
            pass  # no sealing here: the receiver then copies instead of mapping
    except BaseException:
        os.close(fd)
        raise
    return fd


class _BigBytes:
    """Stands for a big ``bytes``/``bytearray`` in a payload, so that it goes out of band:
    pickle never offers those to ``buffer_callback`` by itself. It unpickles as the original
    type (``bytes(buffer)``: one copy, since bytes must own its memory)."""

    __slots__ = ("data",)

    def __init__(self, data: Union[bytes, bytearray]):
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Tuple[Any, ...]:
        # Delivered as bytes or bytearray already (AS_BYTES, AS_BYTEARRAY): taken as it is.
        return _as_is, (pickle.PickleBuffer(self.data),)


def _as_is(data: Any) -> Any:
    return data


#: How deep and how wide ``lift_big_bytes`` looks (a task's (fn, args, kwargs) is one level).
LIFT_DEPTH = 3
LIFT_WIDTH = 32


def lift_big_bytes(obj: Any, depth: int = LIFT_DEPTH,
                   memo: Optional[Dict[int, Any]] = None) -> Any:
    """``obj`` with every big bytes/bytearray near its top wrapped in ``_BigBytes``.

    Looks into tuples, lists and dicts (exact types), ``depth`` levels deep and at most
    ``LIFT_WIDTH`` items of each, so that a small task pays a few type checks, never a walk of
    a big list. What it does not reach travels in band, as before. Containers are copied only
    when something in them was wrapped, once each (an object twice in the payload is still
    one object when it arrives).
    """
    kind = type(obj)
    if kind is bytes or kind is bytearray:
        if len(obj) < THRESHOLD:
            return obj
    elif depth == 0 or not (kind is tuple or kind is list or kind is dict) or not obj:
        return obj
    if memo is None:
        memo = {}
    elif id(obj) in memo:
        return memo[id(obj)]
    result: Any = obj
    if kind is bytes or kind is bytearray:
        result = memo[id(obj)] = _BigBytes(obj)
        return result
    if kind is dict:
        changed = None
        for n, (key, value) in enumerate(obj.items()):
            if n == LIFT_WIDTH:
                break
            lifted = lift_big_bytes(value, depth - 1, memo)
            if lifted is not value:
                if changed is None:
                    changed = dict(obj)
                changed[key] = lifted
        if changed is not None:
            result = changed
    else:
        items = None
        for n, item in enumerate(obj[:LIFT_WIDTH]):
            lifted = lift_big_bytes(item, depth - 1, memo)
            if lifted is not item:
                if items is None:
                    items = list(obj)
                items[n] = lifted
        if items is not None:
            result = tuple(items) if kind is tuple else items
    memo[id(obj)] = result
    return result


# ---- the receiver's side ----------------------------------------------------------------------

#: The most one read() returns on Linux.
_MAX_READ = 0x7FFFF000


def _deliver(fd: int, size: int, form: int) -> Any:
    if form == AS_BYTES and size <= _MAX_READ:
        # bytes must own its memory, so it is a copy either way: pread() makes it in one
        # kernel copy into the new object, with no mapping of the whole file beside it
        # (measured, 100 MiB round trip: parent peak 334 -> 234 MiB; time within noise, the
        # copy alone ~44 against ~51 ms). pread, at offset 0: the file offset is shared with
        # the sender, who left it at the end. Sizes checked first: a lying announcement must
        # not make us allocate it.
        _check_size(fd, size)
        data = os.pread(fd, size, 0)
        if len(data) == size:
            return data
    view = _map(fd, size)
    if form == AS_BYTES:
        return bytes(view)
    if form == AS_BYTEARRAY:
        return bytearray(view)
    return view


def _check_size(fd: int, size: int) -> None:
    st = os.fstat(fd)
    if st.st_size < size:
        raise ValueError(f"a buffer of {st.st_size} bytes, announced as {size}")


def _map(fd: int, size: int) -> memoryview:
    """A private, writable view of a received buffer: a numpy array built on it behaves as one
    unpickled from the stdlib's pipe (writable; writes stay in this process)."""
    import mmap

    _check_size(fd, size)
    if AVAILABLE and fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK:
        return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                                    prot=mmap.PROT_READ | mmap.PROT_WRITE))
    # Unsealed: the sender could still shrink it under our mapping (SIGBUS). Copy it.
    # (pread: the file offset is shared with the sender, who left it at the end.)
    copy = memoryview(bytearray(size))
    done = 0
    while done < size:
        n = os.preadv(fd, [copy[done:done + (1 << 30)]], done)
        if n <= 0:
            raise ValueError("a buffer shorter than announced")
        done += n
    return copy


# ---- descriptors over a Unix socket ------------------------------------------------------------

def socketpair() -> Tuple[socket.socket, socket.socket]:
    """The parent's and the worker's ends of the socket that carries a worker's descriptors.
    SEQPACKET: each send is one message, so descriptors never merge across payloads."""
    import socket

    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_fds(sock: socket.socket, fds: Sequence[int]) -> None:
    """Send these descriptors, in order, in as few messages as the kernel allows.

    On a non-blocking socket this raises BlockingIOError before anything is sent (a message is
    all or nothing); the caller keeps what is left (``FdOutbox``)."""
    import array
    import socket

    for start in range(0, len(fds), FDS_PER_MESSAGE):
        chunk = fds[start:start + FDS_PER_MESSAGE]
        sock.sendmsg([_COUNT.pack(len(chunk))],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", chunk))])


def recv_fds(sock: socket.socket, count: int) -> List[int]:
    """Receive exactly ``count`` descriptors (the frame that needs them said how many)."""
    import array
    import socket

    fds: List[int] = []
    try:
        while len(fds) < count:
            want = min(FDS_PER_MESSAGE, count - len(fds))
            data, ancillary, flags, _ = sock.recvmsg(
                _COUNT.size, socket.CMSG_SPACE(want * array.array("i").itemsize))
            got: List[int] = []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds_here = array.array("i")
                    fds_here.frombytes(payload[:len(payload) - len(payload) % fds_here.itemsize])
                    got.extend(fds_here)
            fds.extend(got)
            if not data:
                raise ValueError("the descriptor socket was closed")
            if flags & getattr(socket, "MSG_CTRUNC", 0) or _COUNT.unpack(data)[0] != len(got):
                raise ValueError("descriptors went missing on the way")
        if len(fds) != count:
            raise ValueError(f"{len(fds)} descriptors arrived, {count} were announced")
    except BaseException:
        Buffers(fds).close()
        raise
    return fds


class FdOutbox:
    """Descriptors on their way to one worker, in order: sent now if the socket takes them,
    else when it is writable again (the manager polls ``fd`` while ``wants_write``).

    Holds each payload's ``Buffers`` until sent, so that the descriptors stay open even if the
    task settles meanwhile. Normally empty: a worker gets a task or two ahead at most."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()
        # (the Buffers that keeps them open, one message's descriptors)
        self.out: List[Tuple[Buffers, List[int]]] = []
        self.closed = False
        self.failed: Optional[BaseException] = None  # a send failed with the worker alive

    def write(self, buffers: Buffers) -> None:
        if self.closed:
            return
        was_empty = not self.out
        fds = buffers.fds
        for start in range(0, len(fds), FDS_PER_MESSAGE):
            self.out.append((buffers, fds[start:start + FDS_PER_MESSAGE]))
        if was_empty:
            self.flush()

    def flush(self) -> None:
        try:
            while self.out:
                send_fds(self.sock, self.out[0][1])  # one message: all or nothing
                self.out.pop(0)
        except BlockingIOError:
            pass
        except OSError as exc:
            self.out.clear()
            self.closed = True
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.failed = exc  # not a dead worker's socket: the manager faults it
            # else: the worker is gone; its exit settles its tasks

    @property
    def wants_write(self) -> bool:
        return bool(self.out)
