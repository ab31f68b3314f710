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
    mask = set()
    if hasattr(signal, "pthread_sigmask"):
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
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


# ---- added for the hardening suite (test_core_api, test_crash, test_signals, test_shutdown,
# ---- test_reaping, test_bad_input, test_crash_loop) ------------------------------------------

def _write_atomic(path, text):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def touch(path, value=None):
    """Create ``path`` (proof that the task ran), return ``value``."""
    _write_atomic(path, str(os.getpid()))
    return value


def block_until(pid_path, release_path, timeout=120.0):
    """Announce our pid in ``pid_path``, then wait until ``release_path`` exists; return the pid.

    A task that holds its worker busy until the test lets it go (no sleep-based guessing).
    """
    _write_atomic(pid_path, str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not os.path.exists(release_path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release_path} never appeared")
        time.sleep(0.005)
    return os.getpid()


def spawn_sleep(path):
    """Start ``sleep 600`` (not waited for), announce its pid in ``path``, return it."""
    child = subprocess.Popen(["sleep", "600"])
    _write_atomic(path, str(child.pid))
    return child.pid


def park_ignoring_sigterm(path, seconds=600):
    """Ignore SIGTERM, start a ``sleep 600`` child, announce 'worker_pid child_pid', sleep.

    A stuck task that only the SIGKILL rung of the stop ladder can stop.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "600"])
    _write_atomic(path, f"{os.getpid()} {child.pid}")
    time.sleep(seconds)


def reciprocal(x):
    return 1 / x


_signal_state_at_init = None


def record_signal_state():
    """An initializer: remember what the worker's signal state was when it ran."""
    global _signal_state_at_init
    _signal_state_at_init = sigterm_state()


def get_signal_state_at_init(_=None):
    return _signal_state_at_init


def _raise_memory_error(*_args):
    raise MemoryError("the result is too large to rebuild here")


def _raise_on_unpickle(what):
    raise ValueError(f"{what} refuses to be unpickled")


class HugeResult:
    """A result whose pickling runs out of memory (as a too-large result would)."""

    def __reduce__(self):
        raise MemoryError("the result is too large to pickle")


class ResultTooLargeToLoad:
    """A result that pickles in the worker but runs out of memory when the parent unpickles it."""

    def __reduce__(self):
        return (_raise_memory_error, ())


class ArgRefusingUnpickle:
    """An argument that pickles in the parent but cannot be unpickled in the worker."""

    def __reduce__(self):
        return (_raise_on_unpickle, ("ArgRefusingUnpickle",))


def return_huge_result():
    return HugeResult()


def return_result_too_large_to_load():
    return ResultTooLargeToLoad()


def exit_in_initializer(code=3):
    """An initializer that kills its worker before it can take a task (a broken environment)."""
    os._exit(code)


# ---- for the issue-3 tests: timeouts, cancelling running tasks, recycling, map, stats ----


def _announce(path, text):
    """Write ``text`` to ``path`` atomically, so a test never reads half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def _wait_for_path(path, limit):
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.005)


def park_until_file(pid_path, release_path, value=None, limit=120):
    """Announce our pid in ``pid_path`` (if given), wait for ``release_path``, return value."""
    if pid_path:
        _announce(pid_path, str(os.getpid()))
    _wait_for_path(release_path, limit)
    return value


def value_after_file(value, release_path=None):
    """Return ``value``, after ``release_path`` exists if one is given (a test releases it)."""
    if release_path is not None:
        _wait_for_path(release_path, 120)
    return value


def spin_ignoring_sigterm(path):
    """Ignore SIGTERM, announce our pid, then spin on the CPU forever."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _announce(path, str(os.getpid()))
    while True:
        pass


def return_on_sigterm(path, value="late"):
    """Announce our pid, wait until SIGTERM arrives (caught), then return ``value``.

    The result is produced only after the parent decided to stop us (timeout or cancel), so it
    arrives late, deterministically, well before the parent escalates to SIGKILL.
    """
    got = []
    signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    _announce(path, str(os.getpid()))
    deadline = time.monotonic() + 120
    while not got and time.monotonic() < deadline:
        time.sleep(0.002)
    return value


def sleep_then_getpid(seconds):
    time.sleep(seconds)
    return os.getpid()


def takes_timeout_kwarg(x, timeout=None):
    """A task with its own ``timeout`` keyword: schedule() must not swallow it."""
    return x, timeout


def fail_if_equal(x, bad):
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x * 10


class BrokenStrError(Exception):
    """An exception that cannot be pickled and whose str() raises too (a lazy, broken message)."""

    def __reduce__(self):
        raise TypeError("BrokenStrError cannot be pickled")

    def __str__(self):
        raise RuntimeError("str() of BrokenStrError failed")


def raise_broken_str_error():
    raise BrokenStrError()


def hold_gil(path):
    """Announce our pid, then run one long C call that never releases the GIL.

    Catastrophic regex backtracking: no other thread of this worker runs until it returns.
    """
    import re

    _write_atomic(path, str(os.getpid()))
    return bool(re.match(r"(a+)+$", "a" * 40 + "b"))


# ---- for the issue-14 tests: proofs a broken promise cannot pass -------------------------


def record_start(log_path, value):
    """Append ``value`` to ``log_path`` as the task starts, then return it.

    One ``write`` on an ``O_APPEND`` descriptor: lines from concurrent workers never mix, so a
    test can count how many times each task started (``conftest.starts``).
    """
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)
    return value


def record_then(log_path, value, task_name, *args):
    """``record_start(log_path, value)``, then run the task ``task_name`` of this module."""
    record_start(log_path, value)
    return globals()[task_name](*args)


def rendezvous(directory, n, limit=60.0):
    """Announce our pid in ``directory``, then wait until ``n`` distinct processes have (or
    ``directory/release`` appears, or ``limit`` s pass); return ``(pid, processes seen)``.

    ``n`` such tasks meet only if ``n`` workers run them at the same time: a pool that is one
    worker short cannot pass, however long it is given.
    """
    pid = os.getpid()
    _write_atomic(os.path.join(directory, f"pid-{pid}"), str(pid))
    release = os.path.join(directory, "release")
    deadline = time.monotonic() + limit
    while True:
        seen = rendezvous_pids(directory)
        if len(seen) >= n or os.path.exists(release) or time.monotonic() > deadline:
            return pid, len(seen)
        time.sleep(0.005)


def rendezvous_pids(directory):
    """The pids announced in ``directory`` by ``rendezvous`` tasks."""
    names = os.listdir(directory)
    return sorted(int(name[4:]) for name in names
                  if name.startswith("pid-") and name[4:].isdigit())
