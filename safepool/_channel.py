"""The parent's end of one worker's two pipes: non-blocking, framed, and distrustful.

Nothing here blocks: a worker that stops reading its task pipe, or floods its result pipe,
costs the manager nothing but that worker. Frames from a worker are checked (known kind,
a length under ``MAX_FRAME``, memory to hold it): a corrupt or hostile frame raises
``ProtocolError``, which costs that worker, never the pool.
"""
from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Sequence, Tuple, Union

from . import _out_of_band as _oob
from . import _protocol as P

if TYPE_CHECKING:
    from ._ledger import Task

READ_CHUNK = 1 << 18
#: A result at least this large is read straight into a buffer of its own size.
BIG_MESSAGE = 1 << 20

#: Kinds whose payload is a pickle, which may bring buffers.
_PICKLED = frozenset((P.RESULT, P.ERROR, P.BAD_TASK, P.INIT_FAILED))

Message = Tuple[int, int, int, Any]  # kind, task id, rss, payload (bytearray or memoryview)


class ProtocolError(Exception):
    """A worker sent something that is not a valid frame (or one we cannot hold)."""


class Outbox:
    """Bytes on their way into one pipe to a worker: written as far as the pipe takes them now,
    the rest when the pipe is writable again (``wants_write``)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.out: List[memoryview] = []
        self.closed = False  # the worker can no longer read (EPIPE)

    def write(self, buffers: Iterable[Union[bytes, bytearray, memoryview]]) -> None:
        if self.closed:
            return
        was_empty = not self.out
        self.out.extend(memoryview(b) for b in buffers if len(b))
        if was_empty:
            self.flush()

    def flush(self) -> None:
        try:
            while self.out:
                written = os.writev(self.fd, self.out[:512])
                while written:
                    head = self.out[0]
                    if written >= len(head):
                        written -= len(head)
                        self.out.pop(0)
                    else:
                        self.out[0] = head[written:]
                        written = 0
        except BlockingIOError:
            pass
        except OSError:
            # EPIPE: the worker is dead or dying and will never read this. Whether its tasks
            # started is known from its STARTED messages, read once its exit is seen.
            self.out.clear()
            self.closed = True

    @property
    def wants_write(self) -> bool:
        return bool(self.out)


class Channel:
    def __init__(self, task_fd: int, result_fd: int, control_fd: int,
                 fd_sock: Optional[socket.socket] = None):
        self.tasks = Outbox(task_fd)      # TASKS and STOP, in order
        self.control = Outbox(control_fd)  # REVOKE: read by the worker even while it is busy
        # Descriptors of big buffers (Linux), both ways, in the order of the frames naming them
        self.fd_sock = fd_sock
        self.fds: Optional[_oob.FdOutbox] = None if fd_sock is None else _oob.FdOutbox(fd_sock)
        self.sent = 0                     # task frames written: the next one's number
        self.result_fd = result_fd
        self.inbuf = bytearray()          # bytes read from the result pipe, not yet parsed
        # [header, buffer, filled] while a big frame arrives
        self.big: Optional[List[Any]] = None
        self.eof = False

    @property
    def fds_fd(self) -> Optional[int]:
        """The descriptor socket's number, which the manager may poll for writing."""
        return None if self.fds is None else self.fds.fd

    @property
    def outboxes(self) -> Tuple[Union[Outbox, _oob.FdOutbox], ...]:
        if self.fds is None:
            return (self.tasks, self.control)
        return (self.tasks, self.control, self.fds)

    # ---- parent -> worker ----------------------------------------------------------------

    def write_tasks(self, tasks: Sequence[Task]) -> None:
        """Send these tasks in one TASKS message; each gets its number on this pipe."""
        buffers: List[bytes] = [b""]
        size = 0
        for task in tasks:
            task.number = self.sent
            self.sent += 1
            payload = task.payload
            assert payload is not None  # only a settled task has let go of its payload
            buffers.append(P.task_frame_header(task.id, payload))
            buffers.append(payload)
            if type(payload) is _oob.Packed:
                # Its descriptors go first; the worker takes them when it reads the frame.
                assert self.fds is not None  # only made where descriptors can travel
                self.fds.write(payload.buffers)
            size += P.TASK_FRAME.size + len(payload)
        buffers[0] = P.TO_WORKER.pack(size, P.TASKS)
        if size < 65536:
            buffers = [b"".join(buffers)]
        self.tasks.write(buffers)

    def write_revoke(self, tasks: Sequence[Task]) -> None:
        body = P.pack_revoke((task.number, task.id) for task in tasks)
        self.control.write([P.TO_WORKER.pack(len(body), P.REVOKE) + body])

    def write_soft_timeout(self, task: Task) -> None:
        body = P.pack_ids([task.id])
        self.control.write([P.TO_WORKER.pack(len(body), P.SOFT_TIMEOUT) + body])

    def write_stop(self) -> None:
        self.tasks.write([P.TO_WORKER.pack(0, P.STOP)])

    # ---- worker -> parent ----------------------------------------------------------------

    def read(self, messages: List[Message]) -> bool:
        """Append what the result pipe has now to ``messages``; True if there may be more
        (a bound was hit, so one chatty worker cannot starve the others)."""
        fd = self.result_fd
        for _ in range(64):
            try:
                if self.big is not None:
                    header, buf, filled = self.big
                    n = os.readv(fd, [memoryview(buf)[filled:]])
                    if n == 0:
                        self.eof = True
                        return False
                    self.big[2] = filled + n
                    if self.big[2] == len(buf):
                        self.big = None
                        messages.append((header[1], header[2], header[3],
                                         self._with_buffers(header[1], memoryview(buf))))
                    continue
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return False
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
                return False
            self.inbuf += chunk
            self._parse(messages)
            if len(chunk) < READ_CHUNK and self.big is None:
                return False  # a short read emptied the pipe: skip the read that says EAGAIN
        return True

    def _parse(self, messages: List[Message]) -> None:
        buf = self.inbuf
        pos, size = 0, P.FROM_WORKER.size
        while len(buf) - pos >= size:
            header = P.FROM_WORKER.unpack_from(buf, pos)
            length, kind = header[0], header[1]
            if kind not in P.WORKER_KINDS or length > P.MAX_FRAME:
                raise ProtocolError(f"a corrupt frame header (kind {kind}, length {length})")
            if len(buf) - pos - size < length:
                if length >= BIG_MESSAGE:
                    # Read the rest straight into a buffer of the right size.
                    try:
                        big = bytearray(length)
                    except MemoryError:
                        raise ProtocolError(f"a frame of {length} bytes does not fit in memory")
                    have = len(buf) - pos - size
                    big[:have] = buf[pos + size:]
                    self.big = [header, big, have]
                    pos = len(buf)
                break
            payload = buf[pos + size:pos + size + length]  # one copy, out of the buffer
            pos += size + length
            messages.append((kind, header[2], header[3], self._with_buffers(kind, payload)))
        del buf[:pos]

    def _with_buffers(self, kind: int, payload: Union[bytearray, memoryview]) -> Any:
        """The payload, with the descriptors it names taken from the socket: the worker sent
        them before the frame, so they are there now, or the worker broke the protocol."""
        if kind not in _PICKLED or not _oob.is_packed(payload):
            return payload
        if self.fd_sock is None:
            raise ProtocolError("a payload with buffers, where none can travel")
        try:
            count = _oob.declared_buffers(payload)
            return _oob.Received(payload, _oob.Buffers(_oob.recv_fds(self.fd_sock, count)))
        except (OSError, ValueError) as exc:  # BlockingIOError: announced, never sent
            raise ProtocolError(f"the buffers of a {kind} frame did not arrive: {exc!r}")
