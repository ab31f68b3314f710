"""Shared fixtures: every test checks with psutil that it left no process, zombie or fd behind."""
import os
import sys
import time

import psutil
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # so `tasks` is importable here and in workers
os.environ["PYTHONPATH"] = os.pathsep.join(
    [os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__)),
     os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

# The stdlib's helpers live as long as the interpreter; they are not leaks.
HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker", "resource_tracker")


def leftover_children():
    """Our descendants other than the stdlib's interpreter-lifetime helpers.

    Only our *direct* children can be helpers: a forkserver worker has exactly its fork
    server's command line, so matching command lines at every depth would hide every leaked
    forkserver worker.
    """
    me = psutil.Process()
    helpers = set()
    for child in me.children():
        try:
            if any(h in " ".join(child.cmdline()) for h in HELPERS):
                helpers.add(child.pid)
        except psutil.Error:
            pass
    out = []
    for proc in me.children(recursive=True):
        if proc.pid in helpers:
            continue
        try:
            out.append((proc.pid, proc.status(), " ".join(proc.cmdline())[:80]))
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="session", autouse=True)
def _start_stdlib_helpers():
    """Start the interpreter-lifetime helpers before any test counts file descriptors: the
    fork server and the resource tracker each keep a descriptor open for good."""
    from multiprocessing import forkserver, resource_tracker

    forkserver.ensure_running()
    resource_tracker.ensure_running()


def gone(pid):
    """The process no longer runs. An orphan may stay a zombie under an init that never
    reaps (as in some containers); that is no longer a running process, and not ours."""
    try:
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE:
            return False
        return proc.ppid() != os.getpid()  # a zombie *we* should have reaped is a leak
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout=20.0, interval=0.02, message="condition"):
    """Poll ``predicate`` until true or the deadline: the only way tests wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def wait_for_pid_file(path, timeout=30.0):
    def read():
        if os.path.exists(path):
            with open(path) as f:
                return f.read()
        return None
    return wait_until(read, timeout, message=f"pid file {path}")


def no_leftovers(timeout=15.0):
    """Wait until no child process (nor zombie) of ours is left; return what is left."""
    deadline = time.monotonic() + timeout
    left = leftover_children()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = leftover_children()
    return left


@pytest.fixture
def clean_process():
    """Asserts the test left no child process and no extra file descriptor."""
    import gc

    gc.collect()
    fds_before = psutil.Process().num_fds()
    yield
    gc.collect()
    left = no_leftovers()
    assert not left, f"processes left behind: {left}"
    deadline = time.monotonic() + 10
    while psutil.Process().num_fds() > fds_before and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert psutil.Process().num_fds() <= fds_before, (
        f"file descriptors leaked: {psutil.Process().num_fds() - fds_before}")


@pytest.fixture(params=["forkserver", "spawn"])
def start_method(request):
    return request.param


@pytest.fixture
def ctx(start_method):
    import multiprocessing

    return multiprocessing.get_context(start_method)


def starts(log_path):
    """How many times each task started, from the lines ``tasks.record_start`` appended."""
    import collections

    if not os.path.exists(log_path):
        return collections.Counter()
    with open(log_path) as f:
        return collections.Counter(line.strip() for line in f if line.strip())



def assert_started_once(log_path, names):
    """Each task in ``names`` started exactly once (``tasks.record_start``), and no other did."""
    counts = starts(log_path)
    names = [str(name) for name in names]
    wrong = {name: counts[name] for name in names if counts[name] != 1}
    unknown = sorted(set(counts) - set(names))
    assert not wrong and not unknown, (
        f"tasks not started exactly once (task: times started): {wrong}; unknown: {unknown}")

def assert_runs_at_once(ex, n, directory, not_on=(), timeout=30.0):
    """``ex`` runs ``n`` tasks at the same time, on ``n`` distinct live processes, none of them
    in ``not_on``; return their pids.

    The tasks wait for each other (``tasks.rendezvous``), so a pool short of a worker cannot
    pass by running them one after another; ``timeout`` bounds how long they may take to meet.
    """
    import tasks

    os.makedirs(directory, exist_ok=True)
    futures = [ex.submit(tasks.rendezvous, directory, n) for _ in range(n)]
    try:
        pids = wait_until(lambda: len(tasks.rendezvous_pids(directory)) >= n and
                          tasks.rendezvous_pids(directory), timeout,
                          message=f"{n} tasks running at once on {n} processes")
        ours = {p.pid for p in psutil.Process().children(recursive=True)}
        for pid in pids:  # each one is a live process of ours while they wait for each other
            assert pid in ours, f"{pid} is not a process of this pool"
            assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE, f"{pid} is a zombie"
    finally:
        # Lets them go however it went, so a failure does not leave them waiting.
        open(os.path.join(directory, "release"), "w").close()
    results = [f.result(timeout=timeout) for f in futures]
    assert sorted(pid for pid, _ in results) == pids, (results, pids)
    assert all(seen >= n for _, seen in results), results
    assert not set(pids) & set(not_on), f"a task ran on a lost worker: {pids} {not_on}"
    return pids
