"""Starting a worker can fail (EAGAIN from fork under a pids cgroup limit, EMFILE): the pool
retries, and only a run of failures breaks it, with an error that says why. Starting the
manager thread can fail too (the same limits: "can't start new thread"): submit() says so,
and the pool neither hangs nor leaves a future pending."""
import errno

import pytest
import tasks

import safepool._manager
import safepool._process
from safepool import BrokenProcessPool, SafeProcessPoolExecutor


@pytest.fixture
def failing_spawns(monkeypatch):
    """Make the next N worker starts fail with EAGAIN, as fork() does at a pids limit."""
    real = safepool._process.WorkerProcess
    left = {"n": 0}

    def start(*args, **kwargs):
        if left["n"]:
            left["n"] -= 1
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(safepool._process, "WorkerProcess", start)
    return left


@pytest.mark.timeout(60)
def test_a_failed_worker_start_is_retried(failing_spawns, clean_process):
    failing_spawns["n"] = safepool._manager.STARTUP_FAILURE_LIMIT - 1
    with SafeProcessPoolExecutor(1) as ex:
        assert ex.submit(tasks.square, 3).result(timeout=30) == 9
        assert failing_spawns["n"] == 0


@pytest.mark.timeout(60)
def test_worker_starts_that_keep_failing_break_the_pool(failing_spawns, clean_process):
    failing_spawns["n"] = 100
    with SafeProcessPoolExecutor(1) as ex:
        future = ex.submit(tasks.square, 3)
        with pytest.raises(BrokenProcessPool, match="Resource temporarily unavailable"):
            future.result(timeout=30)
        with pytest.raises(BrokenProcessPool):
            ex.submit(tasks.square, 4)
    assert failing_spawns["n"] == 100 - safepool._manager.STARTUP_FAILURE_LIMIT


# ---- the manager thread cannot start (a pids or nproc limit: "can't start new thread") -------
#
# Run in a subprocess: a pool left with a manager that never ran could hang the interpreter's
# exit, and that must not be pytest's. The first Thread.start() of the process after the pool
# was created fails as a pids limit makes it fail; every later one works (the limit lifted).

NO_MANAGER_THREAD = r'''
import concurrent.futures
import json
import os
import sys
import threading
import time

import psutil
import tasks
from safepool import SafeProcessPoolExecutor

real_start = threading.Thread.start
refused = []


def start(self, *args, **kwargs):
    if not refused:
        refused.append(self.name)
        raise RuntimeError("can't start new thread")
    return real_start(self, *args, **kwargs)


def bounded(fn, limit):
    """fn() in a thread of its own: ["returned", value], ["raised", text] or ["hung", limit]."""
    box = {}

    def run():
        try:
            box["returned"] = fn()
        except BaseException as exc:
            box["raised"] = f"{type(exc).__name__}: {exc}"

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    return next(([k, v] for k, v in box.items()), ["hung", limit])


def describe(exc):
    cause = exc.__cause__ or exc.__context__
    return {"type": type(exc).__name__, "runtime_error": isinstance(exc, RuntimeError),
            "message": str(exc), "cause": f"{type(cause).__name__}: {cause}" if cause else None}


if __name__ == "__main__":
    mode, out_dir = sys.argv[1:]
    report = {}
    ex = SafeProcessPoolExecutor(max_workers=1)
    threading.Thread.start = start
    try:
        ex.submit(tasks.square, 2)
        report["first"] = "returned a future"
    except Exception as exc:
        report["first"] = describe(exc)
    report["refused_thread"] = refused
    # The limit is lifted: the pool either serves again or says it is broken, at once.
    try:
        later = ex.submit(tasks.touch, os.path.join(out_dir, "later-task-ran"), 9)
    except Exception as exc:
        report["later"] = describe(exc)
        later = None
    if mode == "exit":  # leave without shutdown(): the interpreter's exit must not hang
        report["later_accepted"] = later is not None
    else:
        if later is not None:
            try:
                report["later"] = ["returned", later.result(timeout=10)]
            except concurrent.futures.TimeoutError:
                report["later"] = ["never resolved", 10]
            except Exception as exc:
                report["later"] = ["failed", f"{type(exc).__name__}: {exc}"]
        report["shutdown"] = bounded(ex.shutdown, 10)
        helpers = {c.pid for c in psutil.Process().children()
                   if "forkserver" in " ".join(c.cmdline())
                   or "resource_tracker" in " ".join(c.cmdline())}
        report["left"] = [p.pid for p in psutil.Process().children(recursive=True)
                          if p.pid not in helpers]
    with open(os.path.join(out_dir, "report.json.tmp"), "w") as f:
        json.dump(report, f)
    os.rename(os.path.join(out_dir, "report.json.tmp"), os.path.join(out_dir, "report.json"))
    if mode != "exit":
        sys.stdout.flush()
        os._exit(0)  # whatever hangs at exit is the other test's business
'''


def run_no_manager_thread(tmp_path, mode, timeout):
    """Run the script; (exit code or None if it hung and was killed, report, stderr)."""
    import json
    import subprocess

    from hardening_helpers import PYTHON, script_env, write_script

    script = write_script(tmp_path, NO_MANAGER_THREAD)
    with open(str(tmp_path / "stderr"), "w") as err:
        proc = subprocess.Popen([PYTHON, script, mode, str(tmp_path)], env=script_env(),
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        code = None
    report_path = tmp_path / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return code, report, (tmp_path / "stderr").read_text()


def assert_clear_thread_error(outcome):
    assert isinstance(outcome, dict), f"submit() did not raise: {outcome}"
    assert outcome["runtime_error"], outcome
    assert "can't start new thread" in f"{outcome['message']} {outcome['cause']}", outcome


@pytest.mark.timeout(90)
def test_manager_thread_that_cannot_start(tmp_path):
    code, report, stderr = run_no_manager_thread(tmp_path, "calls", 60)
    assert code == 0 and report is not None, stderr[-3000:]
    # The thread that could not start was safepool's, and submit() said so.
    assert len(report["refused_thread"]) == 1, report
    assert_clear_thread_error(report["first"])
    # Later: served, or refused at once with a clear error, never a future left pending.
    later = report["later"]
    if isinstance(later, dict):
        assert later["runtime_error"], later
    else:
        assert later == ["returned", 9], f"a later submit()'s future: {later}"
        assert (tmp_path / "later-task-ran").exists()
    assert report["shutdown"][0] == "returned", f"shutdown(): {report['shutdown']}"
    assert report["left"] == [], "processes left behind"


@pytest.mark.timeout(90)
def test_interpreter_exit_after_the_manager_thread_could_not_start(tmp_path):
    code, report, stderr = run_no_manager_thread(tmp_path, "exit", 20)
    assert report is not None, stderr[-3000:]
    assert_clear_thread_error(report["first"])
    assert code is not None, "the interpreter's exit hung (killed after 20 s)"
    assert code == 0, stderr[-3000:]
    if report["later_accepted"]:  # work accepted before exit is done, as the stdlib does
        assert (tmp_path / "later-task-ran").exists(), "a task accepted before exit never ran"
