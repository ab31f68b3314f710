"""Task functions the tests send to workers: importable by name, as forkserver/spawn need."""
import os
import signal
import subprocess
import sys
import time


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def identity(x):
    return x


def getpid(_=None):
    return os.getpid()


def sleep_and_return(seconds, value=None):
    time.sleep(seconds)
    return value


def park(path, seconds=600):
    """Announce our pid in ``path`` (atomically), then sleep: a task a test can find and kill."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.rename(tmp, path)
    time.sleep(seconds)
    return "woke up"


def park_with_child(path, seconds=600):
    """Start a long ``sleep`` child, announce 'worker_pid child_pid', then sleep."""
    child = subprocess.Popen(["sleep", "600"])
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.rename(tmp, path)
    time.sleep(seconds)


def exit_now(code=3):
    os._exit(code)


def kill_self(sig=signal.SIGKILL):
    os.kill(os.getpid(), sig)
    time.sleep(10)


def segfault():
    import ctypes

    ctypes.string_at(0)


def raise_value_error(msg="bad"):
    raise ValueError(msg)


def return_lambda():
    return lambda: None


class UnpicklableError(Exception):
    """An exception that pickles but cannot be unpickled (a required argument is lost)."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


def raise_unpicklable_error():
    raise UnpicklableError(1, 2)


class LockError(Exception):
    def __init__(self):
        import threading

        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_lock_error():
    raise LockError()


def sigterm_state():
    """What a task sees of SIGTERM and SIGINT in its worker."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, []) if hasattr(signal, "pthread_sigmask") else set()
    return {
        "sigterm": signal.getsignal(signal.SIGTERM),
        "sigint": signal.getsignal(signal.SIGINT),
        "sigterm_blocked": signal.SIGTERM in mask,
    }


def big_bytes(n):
    return b"x" * n


def echo_len(data):
    return len(data), data[:10]


def failing_initializer():
    raise ValueError("initializer exploded")


_initialized = None


def set_initialized(value):
    global _initialized
    _initialized = value


def get_initialized(_=None):
    return _initialized


def spin_forever_ignoring_sigterm():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        pass


def allocate_mb(mb):
    global _hoard
    _hoard = bytearray(mb * 1024 * 1024)
    for i in range(0, len(_hoard), 4096):
        _hoard[i] = 1
    return os.getpid()


def stderr_print(msg):
    print(msg, file=sys.stderr)
