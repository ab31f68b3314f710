"""Log records from workers, re-emitted in the parent's ``logging`` (``forward_logs=True``).

A worker started by forkserver or spawn has no logging configuration: what a task logs at
INFO is lost, and a WARNING is printed raw to stderr by logging's last-resort handler. Under
``fork`` (the stdlib's default on Linux before 3.14) workers inherited the parent's handlers,
so code that swaps in safepool would lose its task logs. Here each worker gets one handler on
its root logger that sends every record through a pipe of its own, and the manager thread
hands each one to the parent's logger of the same name, as if it had been emitted there.

The thread that logs never waits for the parent: records queue in a bounded buffer that a
thread of the worker's own writes to the pipe, and records that do not fit there are dropped
and counted (the count reaches the parent, and shows in ``stats()``).

Frame, worker -> parent: ``!QQ`` (payload length, records dropped) + payload, a pickled dict
of the record's attributes; a frame with no payload only carries a count of dropped records.
"""
from __future__ import annotations

import logging
import os
import pickle
import struct
import threading
from typing import Any, Dict, List

FRAME = struct.Struct("!QQ")
#: What a worker keeps waiting for a slow parent before it drops records.
MAX_PENDING = 1 << 20
#: A record bigger than this (a huge message or traceback) is cut, not sent whole.
MAX_RECORD = 1 << 16

#: Set in a worker while a task runs: its function, named in the records it emits.
current_task: Any = None


class ForwardingHandler(logging.Handler):
    """In a worker: queue each record for the parent, never blocking the thread that logs.

    A thread of its own writes the queue to the log pipe (blocking there is its job). When
    the parent reads too slowly and ``MAX_PENDING`` bytes wait, new records are dropped and
    counted; the count reaches the parent in a frame of its own once the queue drains.
    """

    def __init__(self, fd: int):
        super().__init__(logging.NOTSET)
        self.fd = fd
        self.cond = threading.Condition(threading.Lock())
        self.pending: List[bytes] = []
        self.pending_bytes = 0
        self.dropped = 0
        self.writing = False
        threading.Thread(target=self._write_loop, name="safepool-logs", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            payload = pickle.dumps(_portable(record), pickle.HIGHEST_PROTOCOL)
        except Exception:
            self.handleError(record)
            return
        frame = FRAME.pack(len(payload), 0) + payload
        with self.cond:
            if self.pending_bytes + len(frame) > MAX_PENDING:
                self.dropped += 1
                return
            self.pending.append(frame)
            self.pending_bytes += len(frame)
            self.cond.notify()

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the queue to reach the pipe (at the worker's exit)."""
        with self.cond:
            self.cond.wait_for(lambda: not (self.pending or self.dropped or self.writing),
                               timeout)

    def _write_loop(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: bool(self.pending or self.dropped))
                frames, self.pending, self.pending_bytes = self.pending, [], 0
                if self.dropped:  # a frame of its own: no record, just the count
                    frames.append(FRAME.pack(0, self.dropped))
                    self.dropped = 0
                self.writing = True
            try:
                _write_all(self.fd, b"".join(frames))
            except OSError:  # the parent is gone: the lifeline ends us
                return
            finally:
                with self.cond:
                    self.writing = False
                    self.cond.notify_all()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _portable(record: logging.LogRecord) -> Dict[str, Any]:
    """The record's attributes, with its message formatted and its traceback as text: what
    the parent needs to handle it, and nothing that may not unpickle there."""
    attrs = dict(record.__dict__)
    attrs["msg"] = record.getMessage()[:MAX_RECORD]
    attrs["args"] = None
    if record.exc_info:
        attrs["exc_text"] = (record.exc_text or logging.Formatter().formatException(
            record.exc_info))[:MAX_RECORD]
    attrs["exc_info"] = None
    attrs.pop("message", None)
    fn = current_task
    attrs["safepool_task"] = None if fn is None else (
        getattr(fn, "__qualname__", None) or repr(fn))
    for key, value in list(attrs.items()):
        if not isinstance(value, (str, int, float, bool, type(None), tuple)):
            attrs[key] = repr(value)[:1000]
    return attrs


def install_in_worker(fd: int, level: int) -> ForwardingHandler:
    """Make every record at ``level`` or above (the lowest level the parent lets through
    anywhere) reach the parent, and nothing else print."""
    handler = ForwardingHandler(fd)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def lowest_enabled_level() -> int:
    """The lowest level any logger of the parent lets through: the workers' root level."""
    levels = [logging.getLogger().getEffectiveLevel()]
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels.append(logger.level)
    return min(levels)


class LogReader:
    """In the parent (manager thread): frames from one worker's log pipe, re-emitted."""

    def __init__(self, fd: int, pid: int):
        self.fd = fd
        self.pid = pid
        self.buf = bytearray()
        self.eof = False
        self.forwarded = 0
        self.dropped = 0

    def read(self) -> None:
        """Take what the pipe has now and re-emit every whole record."""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
            if len(chunk) < (1 << 16):
                break
        records: List[Dict[str, Any]] = []
        pos = 0
        while len(self.buf) - pos >= FRAME.size:
            length, dropped = FRAME.unpack_from(self.buf, pos)
            if length > MAX_PENDING:  # not a frame we wrote: stop reading this pipe
                self.eof = True
                self.buf.clear()
                return
            if len(self.buf) - pos - FRAME.size < length:
                break
            self.dropped += dropped
            start = pos + FRAME.size
            if length:
                try:
                    records.append(pickle.loads(bytes(self.buf[start:start + length])))
                except Exception:
                    self.dropped += 1
            pos = start + length
        del self.buf[:pos]
        for attrs in records:
            self._emit(attrs)

    def _emit(self, attrs: Dict[str, Any]) -> None:
        record = logging.makeLogRecord(attrs)
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            self.forwarded += 1
            logger.handle(record)
