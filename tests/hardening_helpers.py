"""Helpers shared by the hardening tests (issue 2, items 1-9); not a test module.

Import the fixtures into a test module to use them::

    from hardening_helpers import clean, stdlib_helpers  # noqa: F401  (pytest fixtures)
"""
import logging
import os
import sys
import textwrap
import threading

import pytest
from conftest import gone, leftover_children, no_leftovers  # noqa: F401

# conftest.py's checks see forkserver workers and start the stdlib's helpers once per session;
# these names remain for the modules that import them.
stray_processes = leftover_children
no_strays = no_leftovers


@pytest.fixture(scope="module")
def stdlib_helpers():
    """Kept for the modules that import it: conftest.py starts the helpers once per session."""


@pytest.fixture
def clean(clean_process):
    """No child process, zombie or extra fd left behind (``conftest.clean_process``)."""
    yield


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
