"""Helpers shared by the hardening tests (issue 2, items 1-9); not a test module.

Import the fixtures into a test module to use them::

    from hardening_helpers import clean, stdlib_helpers  # noqa: F401  (pytest fixtures)
"""
import gc
import logging
import os
import sys
import textwrap
import threading
import time

import psutil
import pytest

HELPER_MARKS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker",
                "resource_tracker")


@pytest.fixture(scope="module", autouse=True)
def stdlib_helpers():
    """Start the interpreter-lifetime helpers before any test counts file descriptors.

    The fork server and the resource tracker each keep one descriptor open in the parent for
    as long as the interpreter lives; started inside a test, they would look like a leak.
    """
    from multiprocessing import forkserver, resource_tracker

    forkserver.ensure_running()
    resource_tracker.ensure_running()


def stray_processes():
    """Every descendant except the stdlib's helpers themselves.

    ``conftest.leftover_children`` skips every process whose command line names the fork
    server, and a forkserver worker has exactly its fork server's command line, so it would
    miss every leaked forkserver worker. Here only our *direct* children may be helpers:
    workers (children of the fork server), and what tasks started, always count.
    """
    me = psutil.Process()
    helpers = set()
    for child in me.children():
        try:
            if any(m in " ".join(child.cmdline()) for m in HELPER_MARKS):
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


def no_strays(timeout=15.0):
    deadline = time.monotonic() + timeout
    left = stray_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = stray_processes()
    return left


@pytest.fixture
def clean(clean_process):
    """``clean_process`` (fds, processes) plus a check that also sees forkserver workers."""
    yield
    gc.collect()
    left = no_strays()
    assert not left, f"processes left behind: {left}"


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


def returns_within(fn, timeout, what="call"):
    """Run ``fn()`` in a thread; its result, or AssertionError if it does not return in time.

    So that a hang in the code under test fails the test with a message instead of hanging it.
    """
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: B036 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=run, name=f"returns_within:{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError(f"{what} did not return within {timeout}s (it hangs)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def thread_errors():
    """Exceptions raised in any thread during the test (via threading.excepthook)."""
    errors = []
    old = threading.excepthook

    def hook(args):
        errors.append((args.thread.name if args.thread else None, args.exc_type,
                       args.exc_value))
        old(args)

    threading.excepthook = hook
    try:
        yield errors
    finally:
        threading.excepthook = old


@pytest.fixture
def quiet(caplog, thread_errors):
    """After the test: no exception in any thread, no manager failure, no failed callback."""
    caplog.set_level(logging.WARNING)
    yield
    assert not thread_errors, f"exceptions in threads: {thread_errors}"
    bad = [r for r in caplog.records
           if (r.name == "safepool" and r.levelno >= logging.CRITICAL)
           or (r.name == "concurrent.futures" and "callback" in r.getMessage())]
    assert not bad, [r.getMessage() for r in bad]


def write_script(tmp_path, body, name="script.py"):
    """A script file for a subprocess (with a __main__ guard: spawn re-imports it)."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def script_env():
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([here, os.path.dirname(here),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


PYTHON = sys.executable
