"""Never less safe than the stdlib: each test is a way the swap once made a program less safe.

Each was seen failing on the core before the STARTED/REVOKE rework (commit c51d279).
"""
import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time

import core_tasks
import psutil
import pytest
from conftest import gone, wait_until
from hardening_helpers import script_env, write_script

import safepool._manager
from safepool import BrokenProcessPool, SafeProcessPoolExecutor, TaskTimeoutError
from safepool.errors import TaskFaultError


def _warm_up(ex, n=300):
    """Many short tasks: the manager then batches and pipelines (tasks wait behind others)."""
    assert list(ex.map(core_tasks.noop, range(n))) == list(range(n))


@pytest.mark.timeout(90)
def test_a_task_behind_a_timed_out_one_never_runs_twice_when_the_manager_is_late(
        clean_process, tmp_path):
    """Item 1: the task with a timeout finishes just after its deadline, the next one (sent
    behind it) has started, and only then does the (late) manager stop the worker. The next
    task must not be resent as 'never started'."""
    log = str(tmp_path / "starts")
    with SafeProcessPoolExecutor(1) as ex:
        _warm_up(ex)
        slow = ex.schedule(core_tasks.record_start, (log, "slow", 0.4), timeout=0.25)
        behind = [ex.submit(core_tasks.record_start, log, f"t{i}") for i in range(5)]
        wait_until(lambda: "slow" in core_tasks.starts(log), 20, message="the slow task")
        # From before its deadline (0.25 s after it started; 0.1 s from now) until after it
        # ended (0.4 s): the deadline passes while the manager cannot run.
        time.sleep(0.1)
        core_tasks.hog_gil(0.6)
        with pytest.raises(TaskTimeoutError):
            slow.result(timeout=30)
        for f in behind:
            try:
                f.result(timeout=30)
            except BrokenProcessPool:
                pass  # it started on the worker that was stopped: lost, never resent
    runs = core_tasks.starts(log)
    for i in range(5):
        assert runs.count(f"t{i}") <= 1, f"t{i} started twice: {runs}"
    assert all(f.done() for f in behind)


@pytest.mark.timeout(90)
def test_nothing_waits_behind_a_busy_worker_while_another_is_idle(clean_process, tmp_path):
    """Item 2: after short tasks, tasks are pipelined to busy workers. A long task that waits
    for a task queued behind it must not deadlock while another worker is idle."""
    files = [str(tmp_path / f"q{i}") for i in range(4)]
    with SafeProcessPoolExecutor(2) as ex:
        _warm_up(ex)
        short = ex.submit(time.sleep, 0.3)
        waiter = ex.submit(core_tasks.wait_for_files, files, 30)
        makers = [ex.submit(core_tasks.create, p) for p in files]
        assert waiter.result(timeout=60) is True, "a task waited behind a busy worker"
        assert [f.result(timeout=30) for f in makers] == files
        short.result(timeout=30)


@pytest.mark.timeout(90)
def test_a_task_about_to_start_is_not_taken_back_for_an_idle_worker(clean_process):
    """Taking back waiting tasks is for tasks queued *behind* a running one. The next task of
    a worker that runs nothing is about to start: taking it back for another idle worker
    bounced one-at-a-time submits between the two (a revoke round trip each)."""
    with SafeProcessPoolExecutor(2) as ex:
        # Both workers busy once, then idle: the state that made every later task bounce.
        assert len({f.result(timeout=30) for f in [ex.submit(core_tasks.sleep_pid, 0.3)
                                                   for _ in range(2)]}) == 2
        before = ex._manager.counts["revoked"]  # a real steal may happen while they start
        for i in range(200):
            assert ex.submit(core_tasks.noop, i).result(timeout=30) == i
        assert ex._manager.counts["revoked"] == before


def _place_behind(ex, task_future, worker_pid, deadline):
    """True once the manager has queued the task of ``task_future`` behind ``worker_pid``'s
    running task (a read-only look at the manager's records, for test set-up)."""
    task = task_future._task_ref()
    while time.monotonic() < deadline:
        w = ex._manager.workers.get(worker_pid)
        if w is not None and task in list(w.sent):
            return True
        if task.state.value == "started":
            return False
        time.sleep(0.005)
    return False


@pytest.mark.timeout(120)
def test_a_task_taken_back_during_shutdown_is_not_stranded_behind_its_waiter(
        clean_process, tmp_path):
    """R waits for A, queued behind R. B's worker goes idle as shutdown(wait=False) begins:
    it took A back, was retired in the same pass, and A went back behind R: R waited forever.
    Now an idle worker is not retired while tasks wait behind a busy one, and a task taken
    back never goes behind the task it was taken from."""
    for attempt in range(10):
        d = tmp_path / str(attempt)
        d.mkdir()
        b_started, b_go, r_started, a_made = (str(d / n) for n in ("b", "go", "r", "a"))
        ex = SafeProcessPoolExecutor(2)
        try:
            _warm_up(ex)
            b = ex.submit(core_tasks.announce_and_wait, b_started, b_go, 30)
            wait_until(lambda p=b_started: os.path.exists(p), 30, message="B to start")
            r = ex.submit(core_tasks.announce_and_wait, r_started, a_made, 30)
            wait_until(lambda p=r_started: os.path.exists(p), 30, message="R to start")
            r_pid = next(w.pid for w in list(ex._manager.workers.values())
                         if w.running is not None and w.running.future is r)
            a = ex.submit(core_tasks.create, a_made)
            if not _place_behind(ex, a, r_pid, time.monotonic() + 10):
                open(b_go, "w").close()  # A went behind B: set up again
                continue
            ex.shutdown(wait=False)
            open(b_go, "w").close()
            assert r.result(timeout=60) is True, "A stayed stuck behind R"
            assert a.result(timeout=30) == a_made and b.result(timeout=30) is True
            return
        finally:
            open(b_go, "w").close()
            ex.shutdown(wait=True)
    pytest.fail("could not queue A behind R in 10 tries")


@pytest.mark.timeout(90)
def test_cancel_futures_runs_only_what_had_started(clean_process, tmp_path):
    """Item 3: after short tasks, shutdown(cancel_futures=True) ran 18 of 40 queued 0.2 s
    tasks (sent ahead to workers); the stdlib runs 3. Now only those already started run."""
    log = str(tmp_path / "starts")
    ex = SafeProcessPoolExecutor(2)
    _warm_up(ex)
    futures = [ex.submit(core_tasks.record_start, log, i, 0.2) for i in range(40)]
    wait_until(lambda: len(core_tasks.starts(log)) >= 2, 20, message="two tasks to start")
    ex.shutdown(wait=True, cancel_futures=True)
    ran = core_tasks.starts(log)
    assert len(ran) <= 4, f"{len(ran)} of 40 ran after cancel_futures: {ran}"
    assert sum(f.cancelled() for f in futures) >= 36
    assert all(f.done() for f in futures)
    for f in futures:
        if not f.cancelled():
            assert f.result() in [int(t) for t in ran]


@pytest.mark.timeout(90)
def test_an_abandoned_map_runs_only_what_had_started(clean_process, tmp_path):
    """Item 3: an abandoned map() takes back what workers hold and have not started."""
    log = str(tmp_path / "starts")
    with SafeProcessPoolExecutor(2) as ex:
        _warm_up(ex)
        results = ex.map(core_tasks.record_start, [log] * 40, range(40), [0.2] * 40)
        assert next(results) == 0
        results.close()
        marker = ex.submit(core_tasks.noop, "after")
        assert marker.result(timeout=30) == "after"
    ran = core_tasks.starts(log)
    assert len(ran) <= 5, f"{len(ran)} of 40 ran after the map was abandoned: {ran}"


_CALLBACK_SHUTDOWN = """
import sys, threading, time
sys.path.insert(0, {tests!r})
import core_tasks
from safepool import SafeProcessPoolExecutor
if __name__ == "__main__":
    ex = SafeProcessPoolExecutor(1)
    ex.submit(core_tasks.noop).result()
    blocker = ex.submit(time.sleep, 0.5)
    queued = [ex.submit(core_tasks.noop, i) for i in range(5)]
    seen = []
    for f in queued:
        f.add_done_callback(lambda f: (seen.append(f.cancelled()), ex.shutdown(wait=False),
                                       ex.stats()))
    ex.shutdown(wait=True, cancel_futures=True)
    print("OK", len(seen), all(seen))
"""


@pytest.mark.timeout(90)
def test_a_done_callback_may_call_shutdown_during_cancel_futures(tmp_path):
    """Item 4: done-callbacks ran under the shutdown lock; one calling shutdown() hung."""
    script = write_script(tmp_path, _CALLBACK_SHUTDOWN.format(
        tests=os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60,
                         env=script_env())
    assert out.stdout.split() == ["OK", "5", "True"], out.stderr


_GC_DURING_STATS = """
import gc, sys
sys.path.insert(0, {tests!r})
import core_tasks
from safepool import SafeProcessPoolExecutor
if __name__ == "__main__":
    ex = SafeProcessPoolExecutor(1)
    ex.submit(core_tasks.noop).result()
    blocker = ex.submit(core_tasks.wait_for_files, ["/nonexistent"], 3)
    pending = [ex.submit(core_tasks.noop, i) for i in range(2000)]
    def on_gc(phase, info):
        # What an abandoned map()'s finalizer does inside a GC pass: cancel futures.
        while pending and phase == "start":
            pending.pop().cancel()
    gc.callbacks.append(on_gc)
    gc.set_threshold(1, 1, 1)
    for _ in range(300):
        ex.stats()
    gc.callbacks.remove(on_gc)
    gc.set_threshold(700, 10, 10)
    ex.shutdown(cancel_futures=True)
    print("OK", ex.stats().tasks_cancelled >= 1)
"""


@pytest.mark.timeout(90)
def test_a_gc_pass_inside_stats_that_cancels_futures_does_not_deadlock(tmp_path):
    """Item 4: stats() allocated under a counter lock; a finalizer cancelling futures in a GC
    pass there took the same lock."""
    script = write_script(tmp_path, _GC_DURING_STATS.format(tests=os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60,
                         env=script_env())
    assert out.stdout.split() == ["OK", "True"], out.stderr


@pytest.mark.timeout(90)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_cannot_touch_the_parents_pool(clean_process):
    """Item 5: a child forked after the pool started got its results from the parent's
    workers (and the parent's future got the child's). Now it gets a clear error, and the
    parent is untouched."""
    with SafeProcessPoolExecutor(2) as ex:
        assert ex.submit(core_tasks.noop, 1).result(timeout=30) == 1
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what submit() did, then leave without cleanup
            try:
                ex.submit(core_tasks.noop, 2)
                verdict = b"submitted"
            except RuntimeError as e:
                verdict = b"refused" if b"forked" in str(e).encode() else str(e).encode()
            except BaseException as e:  # noqa: B036
                verdict = repr(e).encode()
            os.write(w, verdict)
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            verdict = f.read()
        os.waitpid(pid, 0)
        assert verdict == b"refused"
        assert [ex.submit(core_tasks.noop, i).result(timeout=30) for i in range(20)] == \
            list(range(20))


_FORK_THEN_DIE = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
import core_tasks
from safepool import SafeProcessPoolExecutor
if __name__ == "__main__":
    ex = SafeProcessPoolExecutor(2)
    list(ex.map(core_tasks.noop, range(4)))
    print(" ".join(str(p) for p in ex._processes), flush=True)
    child = os.fork()
    if child == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.timeout(90)
def test_workers_die_with_the_parent_even_if_it_forked(tmp_path):
    """Item 5: a forked child held the workers' lifelines open: they outlived the parent."""
    script = write_script(tmp_path, _FORK_THEN_DIE.format(tests=os.path.dirname(__file__)))
    # Output to a file: the forked child (and the stdlib's fork server, which it keeps alive)
    # would hold a pipe open for its whole life.
    # Stderr apart: Python 3.12+ warns there that fork() in a threaded process may deadlock.
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        subprocess.run([sys.executable, script], stdout=out, stderr=err,
                       timeout=60, env=script_env())
    lines = out_path.read_text().split("\n")
    assert len(lines) >= 2 and lines[1].strip().isdigit(), err_path.read_text()
    workers = [int(p) for p in lines[0].split()]
    child = int(lines[1])
    try:
        wait_until(lambda: all(gone(p) for p in workers), 20,
                   message="the workers to die with their parent")
    finally:
        for proc in [child, *(p.pid for p in psutil.process_iter(["cmdline"])
                              if p.info["cmdline"] and script in p.info["cmdline"])]:
            try:
                os.kill(proc, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind,length", [(99, 8), (12, 1 << 50)])
def test_a_corrupt_frame_costs_only_its_worker(clean_process, kind, length):
    """Item 6: a corrupt or huge frame header broke the whole pool (MemoryError in the
    manager). Now it fails the task whose worker sent it, and the pool keeps serving."""
    with SafeProcessPoolExecutor(2) as ex:
        assert ex.submit(core_tasks.noop, 1).result(timeout=30) == 1
        bad = ex.submit(core_tasks.write_corrupt_frame, kind, length)
        with pytest.raises(TaskFaultError, match="channel"):
            bad.result(timeout=30)
        assert [ex.submit(core_tasks.noop, i).result(timeout=30) for i in range(10)] == \
            list(range(10))
        assert ex.stats().workers_replaced["crash"] == 1


def test_frames_carry_64_bit_lengths():
    """Item 6: a task of 4 GiB or more overflowed a 32-bit frame length in the manager."""
    from safepool import _protocol as P

    header = P.task_frame_header(7, memoryview(b""))
    assert P.TASK_FRAME.unpack(header) == (7, 0)
    assert P.TASK_FRAME.unpack(P.TASK_FRAME.pack(7, 5 << 30)) == (7, 5 << 30)


@pytest.mark.timeout(60)
def test_a_manager_thread_that_cannot_start_fails_submit_and_can_be_retried(
        clean_process, monkeypatch):
    """Item 6: a manager that failed to start left later submits queued into nothing."""
    real_start = threading.Thread.start
    failures = {"n": 1}

    def start(thread):
        if thread.name == "safepool-manager" and failures["n"]:
            failures["n"] -= 1
            raise RuntimeError("can't start new thread")
        return real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    ex = SafeProcessPoolExecutor(1)
    with pytest.raises(RuntimeError, match="manager thread"):
        ex.submit(core_tasks.noop, 1)
    assert ex.submit(core_tasks.noop, 2).result(timeout=30) == 2
    assert ex.shutdown(wait=True) is True


@pytest.mark.timeout(60)
def test_a_fault_of_the_manager_fails_every_future_and_shutdown_says_so(
        clean_process, monkeypatch, caplog):
    """Item 6: an exception on the manager thread left futures pending forever, and
    shutdown() still returned True."""
    def broken(self):
        raise RuntimeError("injected manager fault")

    ex = SafeProcessPoolExecutor(1)
    assert ex.submit(core_tasks.noop, 1).result(timeout=30) == 1
    monkeypatch.setattr(safepool._manager.PoolManager, "_check_deadlines", broken)
    futures = [ex.schedule(core_tasks.record_start, ("/dev/null", i, 1.0), timeout=0.1)
               for i in range(3)]
    for f in futures:
        with pytest.raises(BrokenProcessPool, match="manager thread failed"):
            f.result(timeout=30)
    assert ex.shutdown(wait=True) is False
    with pytest.raises(BrokenProcessPool):
        ex.submit(core_tasks.noop)


_SLOW_MAIN = """
import os, sys, time
sys.path.insert(0, {tests!r})
if __name__ == "__mp_main__" and os.path.exists({marker!r}):
    time.sleep(8)  # this worker's start (importing the main module) takes long
import multiprocessing
import core_tasks
from safepool import SafeProcessPoolExecutor, TaskTimeoutError
if __name__ == "__main__":
    ex = SafeProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=core_tasks.noop, initargs=(b"x" * (2 << 20),))
    ex.submit(core_tasks.noop).result()
    open({marker!r}, "w").close()
    t0 = time.monotonic()
    hung = ex.schedule(time.sleep, (30,), timeout=1.0)
    other = ex.submit(core_tasks.noop, 1)   # starts the second, slow worker
    try:
        hung.result()
    except TaskTimeoutError:
        print("timeout after", round(time.monotonic() - t0, 1), flush=True)
    ex.shutdown(wait=True)
"""


@pytest.mark.timeout(120)
def test_a_slow_worker_start_does_not_stall_timeouts(tmp_path):
    """Item 7: starting a worker ran on the manager thread; under spawn with big initargs
    and a main module slow to import, a 1 s timeout fired after the start (8 s here)."""
    script = write_script(tmp_path, _SLOW_MAIN.format(
        tests=os.path.dirname(__file__), marker=str(tmp_path / "slow")))
    out = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=100,
                         env=script_env())
    words = out.stdout.split()
    assert words[:2] == ["timeout", "after"], out.stderr
    assert float(words[2]) < 6.0, f"the timeout fired only after the slow start: {words}"


@pytest.mark.timeout(60)
def test_connections_and_sockets_travel_as_with_the_stdlib(clean_process):
    """Item 8: arguments go through multiprocessing's ForkingPickler, as the stdlib's do."""
    with SafeProcessPoolExecutor(1) as ex:
        r, w = multiprocessing.Pipe(duplex=False)
        assert ex.submit(core_tasks.send_through, w, {"x": 1}).result(timeout=30) is True
        assert r.poll(10) and r.recv() == {"x": 1}
        a, b = socket.socketpair()
        with a, b:
            assert ex.submit(core_tasks.write_to_socket, b, b"hello").result(timeout=30)
            a.settimeout(10)
            assert a.recv(5) == b"hello"
        r.close()
        w.close()
    # The stdlib's fd-passing server (started by pickling the socket) lives until stopped.
    from multiprocessing import resource_sharer

    resource_sharer.stop()


@pytest.mark.timeout(60)
def test_a_pickling_failure_keeps_its_original_type(clean_process):
    """Item 8: ``except TypeError`` catches "cannot pickle '_thread.lock'" with the stdlib."""
    from safepool import TaskPicklingError

    with SafeProcessPoolExecutor(1) as ex:
        f = ex.submit(core_tasks.noop, threading.Lock())
        with pytest.raises(TypeError, match="pickle") as info:
            f.result(timeout=30)
        assert isinstance(info.value, TaskPicklingError)
        assert isinstance(info.value, pickle.PicklingError)
        assert ex.submit(core_tasks.noop, 3).result(timeout=30) == 3


@pytest.mark.timeout(90)
@pytest.mark.parametrize("new_session", [True, False], ids=["setsid", "double-fork"])
def test_nothing_a_task_started_outlives_a_clean_shutdown(clean_process, tmp_path,
                                                          new_session):
    """Item 9: a process a task left running survived shutdown() once it left the worker's
    process group (start_new_session=True, a daemon's double fork)."""
    path = str(tmp_path / "pid")
    with SafeProcessPoolExecutor(1) as ex:
        pid = ex.submit(core_tasks.leave_daemon, path, new_session).result(timeout=30)
    try:
        wait_until(lambda: gone(pid), 15, message="the task's daemon to be gone")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(60)
def test_dev_mode_reports_no_unclosed_file(tmp_path):
    """Item 10: ``python -X dev`` printed an unclosed-file ResourceWarning for every worker."""
    script = write_script(tmp_path, (
        "import sys\nsys.path.insert(0, %r)\nimport core_tasks\n"
        "from safepool import SafeProcessPoolExecutor\n"
        "if __name__ == '__main__':\n"
        "    with SafeProcessPoolExecutor(2) as ex:\n"
        "        print(list(ex.map(core_tasks.noop, range(6))))\n") % os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-X", "dev", script], capture_output=True, text=True,
                         timeout=50, env=script_env())
    assert out.stdout.strip() == "[0, 1, 2, 3, 4, 5]", out.stderr
    assert "ResourceWarning" not in out.stderr, out.stderr

