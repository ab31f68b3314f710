"""Tasks for the big-payload tests (importable by name in workers)."""
import os
import signal
import threading
import time


def ident(x):
    return x


def memfd_backed(obj):
    """How the worker holds a received buffer: 'memfd' if it is a mapping of a memfd."""
    return backing(obj)


def backing(obj):
    import mmap

    base = obj
    for _ in range(10):  # numpy .base, memoryview .obj, ... down to the owner
        nxt = getattr(base, "base", None)
        if nxt is None:
            nxt = getattr(base, "obj", None) if isinstance(base, memoryview) else None
        if nxt is None:
            break
        base = nxt
    return "memfd" if isinstance(base, mmap.mmap) else type(base).__name__


def describe(a):
    """What the worker received: type, and for arrays dtype, shape, flags and a checksum."""
    out = {"type": type(a).__name__, "backing": backing(a)}
    if type(a).__module__ == "numpy":
        out.update(dtype=str(a.dtype), shape=a.shape, writeable=bool(a.flags.writeable),
                   c=bool(a.flags.c_contiguous), f=bool(a.flags.f_contiguous))
        if a.dtype != object:
            out["sum"] = float(a.sum()) if a.size else 0.0
    else:
        out["len"] = len(a)
    return out


def write_to(a, value):
    """Write into a received array: it must be ours (the parent's copy is unchanged)."""
    a[...] = value
    return float(a.sum())


def ones(n):
    import numpy as np

    return np.ones(n)


def make_bytes(n, fill=b"z"):
    return fill * n


def raise_with(data):
    raise ValueError("carries data", data)


def both(a, b):
    return a is b


def die_while_returning(n, delay, pid_path):
    """Return a big array while a thread SIGKILLs this worker after ``delay`` seconds: at
    some point of the transfer (building it, writing the memfd, sending it)."""
    import numpy as np

    with open(pid_path, "a") as f:
        f.write(f"{os.getpid()}\n")
    threading.Thread(target=lambda: (time.sleep(delay), os.kill(os.getpid(), signal.SIGKILL)),
                     daemon=True).start()
    return np.ones(n)


def die_first_time(path, a):
    """Die the first time (the marker file does not exist yet), then return the sum."""
    if not os.path.exists(path):
        open(path, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return float(a.sum())


def wait_for_file(path, limit=60.0):
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def mark_and_wait(directory, path, limit=60.0):
    """Say this worker started a task (a file named by its pid), wait for ``path``; the pid."""
    open(os.path.join(directory, str(os.getpid())), "a").close()
    wait_for_file(path, limit)
    return os.getpid()
