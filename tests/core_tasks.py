"""Task functions for the core-promise tests (importable by workers: conftest puts tests/ on
PYTHONPATH). Each one that matters records its start in a file, so tests can count runs."""
import os
import sys
import time


def record_start(path, tag, seconds=0.0):
    """Append ``tag`` to ``path`` (one atomic O_APPEND write), then sleep ``seconds``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{tag}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return tag


def starts(path):
    """The tags recorded in ``path``, in order."""
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def noop(x=None):
    return x


def sleep_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def wait_for_files(paths, limit):
    """True once every path exists, False after ``limit`` seconds."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if all(os.path.exists(p) for p in paths):
            return True
        time.sleep(0.01)
    return False


def create(path):
    open(path, "w").close()
    return path


def write_corrupt_frame(kind, length):
    """Write a frame header the parent must reject into this worker's own result pipe."""
    import gc
    import struct

    inbox = next(o for o in gc.get_objects() if type(o).__name__ == "_Inbox")
    with inbox.send_lock:
        os.write(inbox.result_fd, struct.pack("!QBQQ", length, kind, 0, 0))
    time.sleep(30)


def send_through(conn, value):
    """Send ``value`` through a multiprocessing Connection passed as an argument."""
    conn.send(value)
    return True


def write_to_socket(sock, data):
    sock.sendall(data)
    return True


def leave_daemon(path, new_session):
    """Start a ``sleep`` that outlives this task (its own session, or a double fork); write
    its pid to ``path``."""
    import subprocess

    if new_session:
        proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
        pid = proc.pid
    else:
        r, w = os.pipe()
        if os.fork() == 0:  # the double fork of a daemon
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                os.write(w, str(os.getpid()).encode())
                os.close(w)
                os.execvp("sleep", ["sleep", "600"])
            os._exit(0)
        os.close(w)
        os.wait()
        with os.fdopen(r) as f:
            pid = int(f.read())
    with open(path, "w") as f:
        f.write(str(pid))
    return pid



def hog_gil(seconds):
    """In the parent: hold the GIL in this thread for ``seconds``, so that the manager thread
    cannot run (as when the application computes, or a GC pass runs)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(max(10.0, seconds * 10))
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
    finally:
        sys.setswitchinterval(old)


def loaded_modules(prefix):
    """The modules of ``prefix`` this worker has imported."""
    return sorted(m for m in sys.modules if m.startswith(prefix))


def die_until(path, deaths):
    """Count this run in ``path``; kill this worker (SIGKILL) on the first ``deaths`` runs,
    then return how many runs there were."""
    import signal

    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        runs = len(f.read())
    if runs <= deaths:
        os.kill(os.getpid(), signal.SIGKILL)
    return runs


def count_and_raise(path):
    with open(path, "a") as f:
        f.write("x")
    raise ValueError("a task's own error")


def count_and_sleep(path, seconds):
    with open(path, "a") as f:
        f.write("x")
    time.sleep(seconds)


def whoami(seconds=0.0):
    """This worker's safepool.current_worker(), as a plain tuple, after ``seconds``."""
    import safepool

    time.sleep(seconds)
    info = safepool.current_worker()
    return None if info is None else tuple(info)


def die():
    os._exit(3)


def sleep_then_clean_up(seconds, path):
    """Sleep; on SoftTimeoutError write 'cleaned' to ``path`` and say so."""
    import safepool

    try:
        time.sleep(seconds)
        return "finished"
    except safepool.SoftTimeoutError:
        with open(path, "w") as f:
            f.write("cleaned")
        return "cleaned up"


def ignore_soft_timeouts(seconds):
    import safepool

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(end - time.monotonic())
        except safepool.SoftTimeoutError:
            pass
    return "ignored"


def sleep_and_return(seconds, value):
    time.sleep(seconds)
    return value


def announce_and_wait(started, wanted, limit):
    """Create ``started``, then wait up to ``limit`` s for ``wanted``: True if it appeared."""
    with open(started, "w"):
        pass
    return wait_for_files([wanted], limit)


def log_things(n, size=10, done_path=None):
    """Log ``n`` INFO records of ``size`` bytes and one DEBUG; then create ``done_path``."""
    import logging

    log = logging.getLogger("safepool_tests.tasks")
    log.debug("a debug record")
    for i in range(n):
        log.info("record %d %s", i, "x" * size)
    if done_path:
        with open(done_path, "w"):
            pass
    return n
