"""Hardening item 2: SIGTERM works on workers, whatever the parent did to SIGTERM.

The parent installs a SIGTERM handler before creating the executor (as a web framework does),
or sets SIGTERM to SIG_IGN, or has SIGTERM blocked in the thread that calls submit(). exec keeps
SIG_IGN dispositions and the signal mask, so spawn alone does not help. In every case a worker
sent SIGTERM dies; a task sees SIGTERM at SIG_DFL and unblocked and SIGINT ignored, and so does
the user's initializer.

The cases that change signal state run in a fresh interpreter (a subprocess), so that the test
process's own signal state, and its already-running fork server, are left alone.
"""
import json
import os
import signal
import subprocess

import pytest
import tasks
from conftest import wait_for_pid_file
from hardening_helpers import (  # noqa: F401
    PYTHON,
    clean,
    gone,
    script_env,
    stdlib_helpers,
    write_script,
)

from safepool import SafeProcessPoolExecutor

# Every test checks that it left no process (forkserver workers included) and no fd.
pytestmark = pytest.mark.usefixtures("clean")

SCRIPT = r'''
import json
import multiprocessing
import os
import signal
import sys
import threading
import time

import tasks
from safepool import SafeProcessPoolExecutor, WorkerLostError


def plain(value):
    if isinstance(value, bool):
        return value
    return int(value) if isinstance(value, int) else repr(value)


def wait_for(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.01)
    with open(path) as f:
        return f.read()


def exercise(ex, out_dir):
    state = ex.submit(tasks.sigterm_state).result(timeout=60)
    at_init = ex.submit(tasks.get_signal_state_at_init).result(timeout=60)
    pid_path = os.path.join(out_dir, "pid")
    victim = ex.submit(tasks.park, pid_path)
    pid = int(wait_for(pid_path))
    os.kill(pid, signal.SIGTERM)
    exc = victim.exception(timeout=30)
    after = ex.submit(tasks.square, 3).result(timeout=60)
    return {
        "worker": {k: plain(v) for k, v in state.items()},
        "at_init": {k: plain(v) for k, v in at_init.items()},
        "pid": pid,
        "error_type": type(exc).__name__,
        "error_signal": getattr(exc, "signal", None),
        "error": str(exc),
        "after": after,
    }


def main(mode, method, out_dir):
    parent_handler = None
    if mode == "handler":
        parent_handler = lambda signum, frame: None  # noqa: E731 - a framework's graceful exit
        signal.signal(signal.SIGTERM, parent_handler)
    elif mode == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif mode == "blocked":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    ex = SafeProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context(method),
                                 initializer=tasks.record_signal_state)
    box = {}
    if mode == "blocked_thread":
        # Only the thread that calls submit() (and so starts the pool) has SIGTERM blocked.
        def submitter():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            box["result"] = exercise(ex, out_dir)
        t = threading.Thread(target=submitter)
        t.start()
        t.join(120)
    else:
        box["result"] = exercise(ex, out_dir)
    ex.shutdown()
    result = box["result"]
    # safepool must not have changed the parent's own signal state.
    parent = signal.getsignal(signal.SIGTERM)
    result["parent_sigterm_kept"] = (
        parent is parent_handler if mode == "handler"
        else parent == (signal.SIG_IGN if mode == "ignore" else signal.SIG_DFL))
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
'''


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["handler", "ignore", "blocked", "blocked_thread"])
def test_sigterm_kills_the_worker_whatever_the_parent_did(tmp_path, start_method, mode):
    script = write_script(tmp_path, SCRIPT)
    proc = subprocess.run([PYTHON, script, mode, start_method, str(tmp_path)],
                          env=script_env(), capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    for where in ("worker", "at_init"):  # what the task and the initializer saw
        state = result[where]
        assert state["sigterm"] == int(signal.SIG_DFL), (where, state)
        assert state["sigterm_blocked"] is False, (where, state)
        assert state["sigint"] == int(signal.SIG_IGN), (where, state)

    assert result["error_type"] == "WorkerLostError", result["error"]
    assert result["error_signal"] == signal.SIGTERM
    assert "SIGTERM" in result["error"] and str(result["pid"]) in result["error"]
    assert result["after"] == 9, "the worker was replaced and the pool keeps serving"
    assert gone(result["pid"])
    assert result["parent_sigterm_kept"], "safepool changed the parent's SIGTERM disposition"


@pytest.mark.timeout(60)
def test_worker_signal_state_in_this_process(ctx):
    with SafeProcessPoolExecutor(max_workers=1, mp_context=ctx,
                                 initializer=tasks.record_signal_state) as ex:
        for state in (ex.submit(tasks.sigterm_state).result(timeout=30),
                      ex.submit(tasks.get_signal_state_at_init).result(timeout=30)):
            assert state["sigterm"] == signal.SIG_DFL
            assert state["sigterm_blocked"] is False
            assert state["sigint"] == signal.SIG_IGN


@pytest.mark.timeout(60)
def test_sigint_does_not_interrupt_a_task(tmp_path):
    # Ctrl-C is the parent's decision: a worker that receives SIGINT finishes its task.
    pid_path, release = str(tmp_path / "pid"), str(tmp_path / "release")
    with SafeProcessPoolExecutor(max_workers=1) as ex:
        future = ex.submit(tasks.block_until, pid_path, release)
        pid = int(wait_for_pid_file(pid_path))
        os.kill(pid, signal.SIGINT)
        open(release, "w").close()
        assert future.result(timeout=30) == pid
        assert ex.submit(tasks.getpid).result(timeout=30) == pid, "the same worker serves on"
        assert ex.stats().workers_replaced["crash"] == 0


@pytest.mark.timeout(60)
def test_sigterm_from_outside_fails_only_its_task(tmp_path):
    # The plain case in this process: `kill <worker>` (e.g. by an operator) stops the worker.
    path = str(tmp_path / "pid")
    with SafeProcessPoolExecutor(max_workers=2) as ex:
        victim = ex.submit(tasks.park, path)
        others = [ex.submit(tasks.square, i) for i in range(10)]
        pid = int(wait_for_pid_file(path))
        os.kill(pid, signal.SIGTERM)
        exc = victim.exception(timeout=30)
        assert exc.signal == signal.SIGTERM and "SIGTERM" in str(exc)
        assert [f.result(timeout=30) for f in others] == [i * i for i in range(10)]
        assert gone(pid)


SIGCHLD_IGNORED = r'''
import json
import logging
import multiprocessing
import signal
import sys

import tasks
from safepool import SafeProcessPoolExecutor


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # safepool's errors go to stderr, for the test
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps children: no exit status
    ctx = multiprocessing.get_context(sys.argv[1])
    result = {}
    ex = SafeProcessPoolExecutor(max_workers=2, mp_context=ctx)
    result["map"] = list(ex.map(tasks.square, range(5)))
    crash = ex.submit(tasks.exit_now, 3).exception(timeout=60)
    result["crash"] = type(crash).__name__
    result["after_crash"] = ex.submit(tasks.square, 6).result(timeout=60)
    result["shutdown"] = ex.shutdown(timeout=30)
    with SafeProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) as ex:
        result["recycled"] = list(ex.map(tasks.getpid, range(3)))
    print(json.dumps(result))
'''


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_parent_ignoring_sigchld(tmp_path, method):
    # Some daemons set SIGCHLD to SIG_IGN so that they never have to reap. The stdlib's pool
    # copes; ours must not break its manager thread over an exit status it cannot get.
    script = write_script(tmp_path, SIGCHLD_IGNORED)
    proc = subprocess.run([PYTHON, script, method], env=script_env(), capture_output=True,
                          text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr
    assert "safepool" not in proc.stderr, proc.stderr  # no CRITICAL/ERROR from the pool
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["map"] == [0, 1, 4, 9, 16]
    assert result["crash"] == "WorkerLostError"
    assert result["after_crash"] == 36
    assert result["shutdown"] is True
    assert len(set(result["recycled"])) == 3
