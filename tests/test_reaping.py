"""Hardening items 5 and 6: every child is reaped, on every path; workers die with their parent.

No child process, zombie or file descriptor is left after: a normal shutdown, a crash,
``del executor`` without shutdown, interpreter exit, KeyboardInterrupt in the parent, a task
that started ``sleep 600`` (after shutdown and after a crash), and a pool rotation soak. When
the parent is SIGKILLed while its workers are busy, every worker exits within 5 seconds.

The interpreter-exit, KeyboardInterrupt and parent-death cases run in a subprocess; the test
records that subprocess's worker pids through a file and checks from outside that they are gone.
"""
import gc
import json
import os
import signal
import subprocess
import threading
import time

import psutil
import pytest
import tasks
from conftest import wait_for_pid_file, wait_until
from hardening_helpers import (  # noqa: F401
    PYTHON,
    clean,
    gone,
    no_strays,
    returns_within,
    script_env,
    stdlib_helpers,
    stray_processes,
    write_script,
)

from safepool import SafeProcessPoolExecutor, WorkerLostError

# Every test checks that it left no process (forkserver workers included) and no fd.
pytestmark = pytest.mark.usefixtures("clean")


def strays():
    return [pid for pid, _, _ in stray_processes()]


def all_gone(pids, timeout, what="processes"):
    wait_until(lambda: all(gone(p) for p in pids), timeout,
               message=f"{what} {sorted(pids)} to exit")


# ---- in this process -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_normal_shutdown_reaps_everything(ctx):
    ex = SafeProcessPoolExecutor(max_workers=2, mp_context=ctx)
    assert list(ex.map(tasks.square, range(20))) == [i * i for i in range(20)]
    workers = strays()
    assert workers, "the pool's workers are visible as our descendants"
    thread = ex._manager.thread
    ex.shutdown()
    assert not thread.is_alive()
    assert not stray_processes(), "shutdown() returned before every worker was reaped"
    assert all(gone(p) for p in workers)


@pytest.mark.timeout(60)
def test_crashes_leave_nothing_behind(tmp_path):
    path = str(tmp_path / "pid")
    ex = SafeProcessPoolExecutor(max_workers=2)
    victim = ex.submit(tasks.park, path)
    pid = int(wait_for_pid_file(path))
    os.kill(pid, signal.SIGKILL)
    assert isinstance(victim.exception(timeout=30), WorkerLostError)
    assert isinstance(ex.submit(tasks.exit_now, 3).exception(timeout=30), WorkerLostError)
    assert isinstance(ex.submit(tasks.segfault).exception(timeout=30), WorkerLostError)
    # The dead workers are reaped at once, not only at shutdown.
    wait_until(lambda: pid not in strays(), 10, message="the killed worker reaped")
    assert ex.submit(tasks.square, 4).result(timeout=30) == 16
    ex.shutdown()
    assert not stray_processes()


@pytest.mark.timeout(60)
def test_del_executor_without_shutdown_reaps_workers():
    ex = SafeProcessPoolExecutor(max_workers=2)
    assert list(ex.map(tasks.square, range(10))) == [i * i for i in range(10)]
    workers = strays()
    thread = ex._manager.thread
    del ex
    gc.collect()
    wait_until(lambda: not thread.is_alive(), 20, message="manager thread to end")
    all_gone(workers, 10, "workers of a dropped executor")


@pytest.mark.timeout(60)
def test_del_executor_with_work_running_finishes_it_then_reaps(tmp_path):
    pid_path, release = str(tmp_path / "pid"), str(tmp_path / "release")
    ex = SafeProcessPoolExecutor(max_workers=1)
    future = ex.submit(tasks.block_until, pid_path, release)
    pid = int(wait_for_pid_file(pid_path))
    thread = ex._manager.thread
    del ex
    gc.collect()
    open(release, "w").close()
    # As with the stdlib, dropping the executor does not abandon work already submitted.
    assert future.result(timeout=30) == pid
    wait_until(lambda: not thread.is_alive(), 20, message="manager thread to end")
    all_gone([pid], 10, "the worker")


@pytest.mark.timeout(60)
def test_task_child_process_is_killed_at_shutdown(tmp_path, start_method):
    import multiprocessing

    path = str(tmp_path / "sleep")
    ex = SafeProcessPoolExecutor(max_workers=1,
                                 mp_context=multiprocessing.get_context(start_method))
    sleep_pid = ex.submit(tasks.spawn_sleep, path).result(timeout=30)
    sleep = psutil.Process(sleep_pid)
    assert sleep.name() == "sleep" and not gone(sleep_pid)
    ex.shutdown()
    all_gone([sleep_pid], 10, "the task's `sleep 600`")


@pytest.mark.timeout(60)
def test_task_child_process_is_killed_when_its_worker_crashes(tmp_path):
    path = str(tmp_path / "pids")
    ex = SafeProcessPoolExecutor(max_workers=1)
    victim = ex.submit(tasks.park_with_child, path)
    worker, child = (int(x) for x in wait_for_pid_file(path).split())
    assert psutil.Process(child).name() == "sleep"
    os.kill(worker, signal.SIGKILL)
    assert isinstance(victim.exception(timeout=30), WorkerLostError)
    # Without waiting for shutdown: the crash handling itself stops what the task started.
    all_gone([child], 10, "the crashed task's `sleep 600`")
    assert ex.submit(tasks.square, 5).result(timeout=30) == 25
    ex.shutdown()


# ---- the pool-rotation soak ----------------------------------------------------------------


def rotate(cycles, tmp_path):
    """Create, map, shut down, again and again; every 10th cycle SIGKILLs a busy worker."""
    me = psutil.Process()
    fds_before = me.num_fds()
    threads_before = threading.active_count()
    expected = [i * i for i in range(20)]
    for cycle in range(cycles):
        ex = SafeProcessPoolExecutor(max_workers=2)
        if cycle % 10 == 9:
            path = str(tmp_path / f"pid{cycle}")
            victim = ex.submit(tasks.park, path)
            results = ex.map(tasks.square, range(20))
            os.kill(int(wait_for_pid_file(path)), signal.SIGKILL)
            assert list(results) == expected
            assert isinstance(victim.exception(timeout=30), WorkerLostError)
        else:
            assert list(ex.map(tasks.square, range(20))) == expected
        returns_within(ex.shutdown, 60, f"shutdown() in cycle {cycle}")
        del ex
        if cycle % 10 == 9:
            assert stray_processes() == [], f"processes left after cycle {cycle}"
            wait_until(lambda: me.num_fds() <= fds_before, 10,
                       message=f"fds back to {fds_before} after cycle {cycle}")
            assert threading.active_count() <= threads_before, "a thread outlived its pool"


@pytest.mark.timeout(120)
def test_pool_rotation_50_cycles(tmp_path):
    rotate(50, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pool_rotation_500_cycles(tmp_path):
    rotate(500, tmp_path)


# ---- in a subprocess: interpreter exit, KeyboardInterrupt, parent death --------------------

PRELUDE = r'''
import json
import multiprocessing
import os
import sys
import time

import psutil
import tasks
from safepool import SafeProcessPoolExecutor



def wait_for(path, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.01)
    with open(path) as f:
        return f.read()


def record(path, **extra):
    """Every descendant of ours, by pid, written atomically for the test to check."""
    pids = [p.pid for p in psutil.Process().children(recursive=True)]
    with open(path + ".tmp", "w") as f:
        json.dump(dict(extra, pids=pids), f)
    os.rename(path + ".tmp", path)
'''


def run_script(tmp_path, body, *args, **popen):
    """Start the script; its output goes to files, so that no process it leaves behind can
    hold a pipe of ours open."""
    script = write_script(tmp_path, PRELUDE + body)
    out = open(str(tmp_path / "stdout"), "w")
    err = open(str(tmp_path / "stderr"), "w")
    try:
        proc = subprocess.Popen([PYTHON, script, *map(str, args)], env=script_env(),
                                stdout=out, stderr=err, text=True, **popen)
    finally:
        out.close()
        err.close()
    proc.out_dir = tmp_path
    return proc


def finish(proc, timeout=60):
    """Wait for the script (kill it if it hangs); its exit code, stdout and stderr."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError("the script hung; stderr:\n"
                             + (proc.out_dir / "stderr").read_text())
    return (proc.returncode, (proc.out_dir / "stdout").read_text(),
            (proc.out_dir / "stderr").read_text())


EXIT_WITHOUT_SHUTDOWN = r'''
if __name__ == "__main__":
    method, out_dir = sys.argv[1:]
    ex = SafeProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context(method))
    assert list(ex.map(tasks.square, range(10))) == [i * i for i in range(10)]
    record(os.path.join(out_dir, "pids.json"))
    # Queued at exit, never waited for: the stdlib finishes such work at interpreter exit.
    ex.submit(tasks.sleep_and_return, 0.2)
    ex.submit(tasks.touch, os.path.join(out_dir, "late-task-ran"))
    print("exiting without shutdown")
'''


@pytest.mark.timeout(90)
def test_interpreter_exit_without_shutdown_reaps_workers(tmp_path, start_method):
    proc = run_script(tmp_path, EXIT_WITHOUT_SHUTDOWN, start_method, tmp_path)
    code, out, err = finish(proc)
    assert code == 0, err
    assert "exiting without shutdown" in out
    assert (tmp_path / "late-task-ran").exists(), "work queued at exit was dropped"
    pids = json.loads((tmp_path / "pids.json").read_text())["pids"]
    assert pids
    # Workers, and the stdlib's helpers too once their interpreter is gone.
    all_gone(pids, 10, "the exited interpreter's children")


KEYBOARD_INTERRUPT = r'''
if __name__ == "__main__":
    # Python raises KeyboardInterrupt only if SIGINT was not ignored when it started, and a
    # test run started in the background by sh (`cmd &`) ignores it: ask for Ctrl-C here.
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    method, out_dir, how = sys.argv[1:]
    ctx = multiprocessing.get_context(method)
    futures = []
    start = None
    try:
        with SafeProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
            paths = [os.path.join(out_dir, f"pid{i}") for i in range(2)]
            futures = [ex.submit(tasks.park_with_child, p) for p in paths]
            futures += [ex.submit(tasks.square, i) for i in range(20)]
            for p in paths:
                wait_for(p)
            record(os.path.join(out_dir, "pids.json"))
            start = time.monotonic()
            if how == "raise":
                raise KeyboardInterrupt
            # Otherwise the test sends SIGINT to our process group, as Ctrl-C does: while we
            # wait in the block ("signal"), or in __exit__'s shutdown() ("in_shutdown").
            with open(os.path.join(out_dir, "waiting"), "w") as f:
                f.write("waiting")
            while how == "signal":
                time.sleep(0.05)
    except KeyboardInterrupt:
        elapsed = time.monotonic() - start
        states = ["pending" if not f.done() else "cancelled" if f.cancelled()
                  else type(f.exception()).__name__ if f.exception() else "ok"
                  for f in futures]
        # What is left, running or a zombie not yet reaped, once the with block has let the
        # exception through: nothing may be (the stdlib's helpers aside).
        me = psutil.Process()

        def helper(child):
            try:
                line = " ".join(child.cmdline())
            except psutil.Error:  # a zombie has no command line: it is no helper
                return False
            return "multiprocessing" in line and ("forkserver" in line
                                                  or "resource_tracker" in line)

        helpers = {c.pid for c in me.children() if helper(c)}
        left = [(p.pid, p.status()) for p in me.children(recursive=True)
                if p.pid not in helpers]
        print(json.dumps({"elapsed": elapsed, "states": states, "left": left}))
'''


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", [
    "raise",
    "signal",
    # Ctrl-C while __exit__ waits in shutdown(): on Python 3.9-3.12 an interrupted
    # Thread.join() marks the still-running thread stopped (CPython gh-90882).
    "in_shutdown",
])
def test_keyboard_interrupt_in_the_parent_stops_and_reaps_everything(tmp_path, start_method,
                                                                     how):
    proc = run_script(tmp_path, KEYBOARD_INTERRUPT, start_method, tmp_path, how,
                      start_new_session=True)
    try:
        if how != "raise":
            wait_for_pid_file(str(tmp_path / "waiting"), timeout=60)
            os.killpg(proc.pid, signal.SIGINT)
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            finish(proc)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["elapsed"] < 15, "leaving the with block waited for the running tasks"
    assert "pending" not in result["states"], result["states"]
    assert result["left"] == [], "the with block returned before its processes were reaped"
    assert result["states"][:2] != ["ok", "ok"], "the parked tasks cannot have finished"
    pids = json.loads((tmp_path / "pids.json").read_text())["pids"]
    # The workers and the `sleep` children their tasks started.
    all_gone(pids, 10, "the interrupted pool's processes")


PARENT_KILLED = r'''
if __name__ == "__main__":
    method, out_dir, busy = sys.argv[1:]
    ex = SafeProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context(method))
    paths = [os.path.join(out_dir, f"pid{i}") for i in range(2)]
    futures = [ex.submit(tasks.park_with_child, paths[0]),
               ex.submit(tasks.hold_gil if busy == "gil" else tasks.park_with_child, paths[1])]
    announced = [[int(x) for x in wait_for(p).split()] for p in paths]
    workers = [pids[0] for pids in announced]
    children = [pid for pids in announced for pid in pids[1:]]
    record(os.path.join(out_dir, "pids.json"), workers=workers, children=children)
    time.sleep(600)  # busy until killed
'''


@pytest.mark.timeout(90)
@pytest.mark.parametrize("busy", [
    "sleep",
    # A task holding the GIL in one long C call: a watching thread alone cannot run then.
    "gil",
])
def test_workers_die_within_5s_when_the_parent_is_sigkilled(tmp_path, start_method, busy):
    proc = run_script(tmp_path, PARENT_KILLED, start_method, tmp_path, busy)
    workers = children = []
    try:
        info = json.loads(wait_for_pid_file(str(tmp_path / "pids.json"), timeout=60))
        workers, children = info["workers"], info["children"]
        assert all(not gone(p) for p in workers + children)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed_at = time.monotonic()
        all_gone(workers, 5, "workers of the killed parent")
        assert time.monotonic() - killed_at < 5
        # What their tasks started goes with them.
        all_gone(children, 5, "the tasks' `sleep 600`")
    finally:
        for pid in workers + children:  # orphans of a failed run: do not leave them spinning
            if not gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
