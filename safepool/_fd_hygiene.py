"""Descriptor hygiene in the worker: nothing a task exec's may inherit a channel of the pool.

The parent unpickles whatever arrives from a worker, so whoever can write to the worker's
result pipe can run code in the parent. The worker also holds descriptors handed to it by the
stdlib (the forkserver's "alive" pipe, the resource tracker's pipe) that arrive inheritable.
A task that runs a program with ``os.system``, ``subprocess`` with ``close_fds=False``,
``os.posix_spawn`` or ``os.exec*`` would hand all of them to that program: a compromised helper
binary (a decoder fed untrusted input) could then forge messages to the parent or to the
stdlib's helpers, or keep the forkserver alive after the parent has gone.

:func:`close_on_exec_all` marks every descriptor above stderr close-on-exec. It closes nothing:
the worker and a task keep using every descriptor they hold; only an ``exec`` drops them. A
process the task merely *forks* (without exec) still shares them, as any forked child does.

Runs in every worker at start-up: keep it cheap and free of heavy imports.
"""
import os
from typing import Iterable, List

#: Used only where the open descriptors cannot be listed: how far to probe at most. Probing
#: costs one system call per number, and a soft limit can be a million.
FALLBACK_PROBE_LIMIT = 1 << 16


def open_descriptors() -> List[int]:
    """The numbers of this process's open descriptors, sorted.

    Read from ``/proc/self/fd`` (Linux) or ``/dev/fd`` (macOS, BSD with fdescfs). The listing
    opens one descriptor of its own, which may appear in the result although it is closed by
    the time the caller sees it. Where neither can be listed, every number below the
    descriptor limit (at most :data:`FALLBACK_PROBE_LIMIT`) is returned: callers must expect
    numbers that are not open.
    """
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        fds = sorted(int(name) for name in names if name.isdigit())
        # A static /dev/fd (FreeBSD without fdescfs) shows 0, 1 and 2 only, even though the
        # listing itself had a fourth descriptor open: it does not show the real table.
        if directory == "/dev/fd" and fds and fds[-1] <= 2:
            continue
        return fds
    return list(range(_descriptor_limit()))


def _descriptor_limit() -> int:
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        soft = -1
    if soft < 0 or soft == getattr(os, "RLIM_INFINITY", -1):
        try:
            soft = os.sysconf("SC_OPEN_MAX")
        except (AttributeError, OSError, ValueError):
            soft = -1
    if soft <= 0:
        return FALLBACK_PROBE_LIMIT
    return min(soft, FALLBACK_PROBE_LIMIT)


def close_on_exec_all(keep: Iterable[int] = (0, 1, 2)) -> List[int]:
    """Set ``FD_CLOEXEC`` on every open descriptor not in ``keep``; close nothing.

    Returns the descriptors that were inheritable and now are not. Descriptors in ``keep``
    are left exactly as they are. A descriptor that is not open (the listing's own, or a
    number probed by the fallback) is skipped.

    Call it in the worker after start-up, before the user's initializer: descriptors the
    initializer or a task opens afterwards are the user's, and Python opens them
    close-on-exec by default anyway (PEP 446).
    """
    kept = set(keep)
    changed = []
    for fd in open_descriptors():
        if fd in kept:
            continue
        try:
            if not os.get_inheritable(fd):
                continue
            os.set_inheritable(fd, False)
        except OSError:  # not open (EBADF), or not ours to change: nothing to do
            continue
        changed.append(fd)
    return changed
