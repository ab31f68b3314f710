"""``python -m safepool demo``: production failures, ProcessPoolExecutor vs SafeProcessPoolExecutor.

This module has two halves.

* The **scenario side** runs ONE scenario with ONE executor inside a throwaway subprocess
  (``scenario_main``) and prints one JSON line of measurements, all taken with psutil during
  that run. A scenario is allowed to hang, leak or get killed: it is only a subprocess.
* The **demo side** (``run_demo``) starts those subprocesses in their own sessions with a time
  limit, collects the JSON lines, kills whatever they left behind, and prints one table (or
  the same data as JSON).

The task functions are module-level so that both executors' workers can unpickle them as
``safepool._cli_demo.<name>``. Nothing here imports the safepool core at module level: the
stdlib half of the demo must work even if the core does not.
"""
import argparse
import concurrent.futures
import inspect
import json
import multiprocessing
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from collections import OrderedDict, namedtuple
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, List, Optional

import psutil

WORKERS = 2                # every scenario uses two workers, like a small production pool
EXIT_GRACE = 3.0           # seconds a scenario process gets to exit after its JSON line
PARENT_KILLED_WAIT = 5.0   # seconds workers get to notice that their parent was SIGKILLed
DEFAULT_TIMEOUT = 30.0     # seconds one scenario process may run before its group is killed
EXECUTORS = ("stdlib", "safepool")
EXECUTOR_NAMES = {"stdlib": "ProcessPoolExecutor", "safepool": "SafeProcessPoolExecutor"}


# --------------------------------------------------------------------------------------------
# Tasks. They run in the workers of either executor, so they must be importable and picklable.
# --------------------------------------------------------------------------------------------

def square(x: int) -> int:
    """A trivial task: proves that the pool still runs work."""
    return x * x


def getpid() -> int:
    """Return the pid of the worker that ran this task."""
    return os.getpid()


def sleep_and_mark(markdir: str, seconds: float, tag: Any) -> Any:
    """Leave a marker file ``<pid>-<tag>`` in ``markdir``, then sleep.

    The marker tells the scenario which worker is busy *right now*, without relying on any
    executor's private attributes, so it can kill exactly a worker that is mid-task.
    """
    path = os.path.join(markdir, "%d-%s" % (os.getpid(), tag))
    with open(path, "w"):
        pass
    time.sleep(seconds)
    return tag


# --------------------------------------------------------------------------------------------
# Measuring a scenario from the inside.
# --------------------------------------------------------------------------------------------

def _is_helper(proc: "psutil.Process", me_pid: int) -> bool:
    """True for multiprocessing's per-interpreter helpers (forkserver, resource tracker).

    They live as long as the interpreter and are shared by every pool, so they are not leaks.
    Only a *direct* child with that command line counts: processes forked by the forkserver
    inherit its command line but are workers, and their parent is the forkserver, not us.
    """
    try:
        if proc.ppid() != me_pid:
            return False
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "forkserver import main" in cmdline or "resource_tracker import main" in cmdline


def _helper_fd_count() -> int:
    """How many fds this process holds open for multiprocessing's global helpers."""
    count = 0
    try:
        from multiprocessing import forkserver, resource_tracker
        if getattr(forkserver._forkserver, "_forkserver_alive_fd", None) is not None:
            count += 1
        if getattr(resource_tracker._resource_tracker, "_fd", None) is not None:
            count += 1
    except Exception:  # private attributes: if they moved, count nothing rather than crash
        pass
    return count


def _our_threads() -> int:
    """Threads alive in this process, not counting the demo's own helper threads."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith("safepool-demo"))


class Probe:
    """Measures what one scenario leaves behind in this process.

    Created before the pool; ``leftovers()`` after it reports live descendant processes,
    zombies, and the growth in fds and threads. Every descendant ever seen is remembered
    (pid and create time) so the demo can kill survivors without risking a reused pid.
    """

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.fds_before = self.me.num_fds()
        self.helper_fds_before = _helper_fd_count()
        self.threads_before = _our_threads()
        self.seen = {}  # type: Dict[int, float]

    def descendants(self) -> List["psutil.Process"]:
        """All processes below us except the multiprocessing helpers; remembers them."""
        found = []
        for proc in self.me.children(recursive=True):
            if _is_helper(proc, self.me.pid):
                self._remember(proc)  # helpers still need killing if the scenario dies
                continue
            self._remember(proc)
            found.append(proc)
        return found

    def _remember(self, proc: "psutil.Process") -> None:
        try:
            self.seen.setdefault(proc.pid, proc.create_time())
        except psutil.NoSuchProcess:
            pass

    def split(self) -> Dict[str, List[int]]:
        """Current descendants, split into live processes and zombies (dead, not reaped)."""
        alive, zombies = [], []
        for proc in self.descendants():
            try:
                status = proc.status()
            except psutil.NoSuchProcess:
                continue
            (zombies if status == psutil.STATUS_ZOMBIE else alive).append(proc.pid)
        return {"alive": alive, "zombies": zombies}

    def leftovers(self, settle: float = 1.0) -> Dict[str, int]:
        """What is left now, after giving exiting processes up to ``settle`` s to go away."""
        deadline = time.monotonic() + settle
        state = self.split()
        while (state["alive"] or state["zombies"]) and time.monotonic() < deadline:
            time.sleep(0.05)
            state = self.split()
        fds = self.me.num_fds() - self.fds_before - (_helper_fd_count() - self.helper_fds_before)
        return {
            "processes": len(state["alive"]),
            "zombies": len(state["zombies"]),
            "fds": fds,
            "threads": _our_threads() - self.threads_before,
        }

    def pids(self) -> Dict[str, float]:
        """Every descendant seen so far, as JSON-friendly {pid: create_time}."""
        self.descendants()
        return {str(pid): created for pid, created in self.seen.items()}


def wait_for_busy(markdir: str, count: int, timeout: float = 30.0) -> List[int]:
    """Wait until ``count`` distinct workers are running ``sleep_and_mark``; return their pids."""
    deadline = time.monotonic() + timeout
    while True:
        pids = []  # type: List[int]
        for name in sorted(os.listdir(markdir),
                           key=lambda n: os.stat(os.path.join(markdir, n)).st_mtime_ns):
            pid = int(name.split("-", 1)[0])
            if pid not in pids:
                pids.append(pid)
        if len(pids) >= count:
            return pids
        if time.monotonic() > deadline:
            raise RuntimeError("only %d of %d workers started a task within %.0f s"
                               % (len(pids), count, timeout))
        time.sleep(0.02)


def wait_until_gone(pid: int, timeout: float) -> Optional[float]:
    """Seconds until ``pid`` exited (a zombie counts as exited), or None if it outlived timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return time.monotonic() - start
        except psutil.NoSuchProcess:
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def started_by(pid: int) -> str:
    """Who started worker ``pid``: this process directly (fork/spawn) or the forkserver."""
    try:
        parent = psutil.Process(pid).ppid()
    except psutil.NoSuchProcess:
        return "unknown"
    if parent == os.getpid():
        return "this process"
    try:
        if "forkserver" in " ".join(psutil.Process(parent).cmdline()):
            return "forkserver"
    except psutil.Error:
        pass
    return "pid %d" % parent


def describe_error(exc: BaseException) -> str:
    """``TypeName: first line of the message``, short enough for a table cell."""
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, text[0][:160] if text else "")


def tally(futures: List[concurrent.futures.Future], timeout: float) -> Dict[str, Any]:
    """Wait up to ``timeout`` s, then count futures by outcome; keep one message per error type.

    ``pending`` counts futures that never resolved: the worst outcome, since a caller
    waiting on one of them waits forever.
    """
    concurrent.futures.wait(futures, timeout=timeout)
    counts = {"ok": 0, "failed": 0, "cancelled": 0, "pending": 0}
    errors = {}  # type: Dict[str, str]
    for fut in futures:
        if not fut.done():
            counts["pending"] += 1
        elif fut.cancelled():
            counts["cancelled"] += 1
        elif fut.exception() is None:
            counts["ok"] += 1
        else:
            counts["failed"] += 1
            exc = fut.exception()
            errors.setdefault(type(exc).__name__, describe_error(exc))
    counts["errors"] = errors
    return counts


def bounded_shutdown(executor: Any, timeout: float, **kwargs: Any) -> Dict[str, Any]:
    """Call ``executor.shutdown(**kwargs)`` but give up waiting after ``timeout`` s.

    It runs in a daemon thread so that a hanging shutdown is *measured* (``hung: true``)
    instead of hanging the scenario. The thread is left behind if it hangs; the scenario
    process is thrown away anyway.
    """
    outcome = {"raised": None, "hung": False, "seconds": None}  # type: Dict[str, Any]

    def target() -> None:
        start = time.monotonic()
        try:
            executor.shutdown(**kwargs)
        except BaseException as exc:  # the point is to report whatever it raises
            outcome["raised"] = describe_error(exc)
        outcome["seconds"] = round(time.monotonic() - start, 3)

    thread = threading.Thread(target=target, name="safepool-demo-shutdown", daemon=True)
    thread.start()
    thread.join(timeout)
    outcome["hung"] = thread.is_alive()
    return outcome


def record_thread_errors() -> List[str]:
    """Collect exceptions raised in background threads (e.g. an executor's manager thread).

    The stdlib prints those to stderr and carries on, so a caller never sees them; we count
    them. The original hook still runs, so the traceback is still printed.
    """
    errors = []  # type: List[str]
    previous = threading.excepthook

    def hook(args: Any) -> None:
        errors.append("%s in thread %s" % (describe_error(args.exc_value),
                                          getattr(args.thread, "name", "?")))
        previous(args)

    threading.excepthook = hook
    return errors


def make_executor(kind: str, max_workers: int = WORKERS) -> Any:
    """The executor under test: the stdlib's with its platform default, or safepool's."""
    if kind == "stdlib":
        return concurrent.futures.ProcessPoolExecutor(max_workers=max_workers)
    from safepool import SafeProcessPoolExecutor  # imported late: the stdlib half needs no core
    return SafeProcessPoolExecutor(max_workers=max_workers)


# --------------------------------------------------------------------------------------------
# The scenarios. Each runs in its own subprocess and returns a dict of measurements.
# --------------------------------------------------------------------------------------------

def scenario_oom(kind: str, probe: Probe, options: argparse.Namespace) -> Dict[str, Any]:
    """SIGKILL a busy worker (what the OOM killer does), then submit more work."""
    markdir = tempfile.mkdtemp(prefix="safepool-demo-")
    try:
        executor = make_executor(kind)
        batch = [executor.submit(sleep_and_mark, markdir, 0.5, i) for i in range(6)]
        victim = wait_for_busy(markdir, 1)[0]
        probe.descendants()
        result = {"victim_started_by": started_by(victim)}  # type: Dict[str, Any]
        os.kill(victim, signal.SIGKILL)
        first = tally(batch, timeout=20)
        result["first_batch"] = first
        # One task was on the killed worker; every other failure is collateral damage.
        result["lost_beyond_killed"] = max(0, first["failed"] + first["pending"] - 1)
        result.update(_submit_after_crash(executor))
        result["shutdown"] = bounded_shutdown(executor, 15, wait=True)
        return result
    finally:
        shutil.rmtree(markdir, ignore_errors=True)


def _submit_after_crash(executor: Any) -> Dict[str, Any]:
    """Submit four fresh tasks after a crash: does the pool still serve them?

    The pool is *broken* when it refuses them or none succeeds; ``lost_after`` counts the
    new tasks that failed even so (work submitted after the crash should never be lost).
    """
    try:
        later = [executor.submit(square, i) for i in range(4)]
    except BrokenProcessPool as exc:
        return {"pool_broken": True, "after": None, "lost_after": 4,
                "submit_error": describe_error(exc)}
    after = tally(later, timeout=20)
    return {"pool_broken": after["ok"] == 0, "after": after,
            "lost_after": len(later) - after["ok"], "submit_error": None}


def _ignore_sigterm(signum: int, frame: Any) -> None:
    """What a web framework's graceful-shutdown handler amounts to in a worker: nothing."""


def scenario_sigterm(kind: str, probe: Probe, options: argparse.Namespace) -> Dict[str, Any]:
    """The parent has a SIGTERM handler (a framework's); SIGTERM a worker: does it die?"""
    executor = make_executor(kind)
    pid = executor.submit(getpid).result(timeout=30)
    probe.descendants()
    os.kill(pid, signal.SIGTERM)
    died_after = wait_until_gone(pid, timeout=3.0)
    result = {"worker_died": died_after is not None,
              "died_after_s": None if died_after is None else round(died_after, 3),
              "started_by": started_by(pid) if died_after is None else None}
    result.update(_submit_after_crash(executor))
    result["shutdown"] = bounded_shutdown(executor, 15, wait=True)
    return result


def scenario_full_queue(kind: str, probe: Probe, options: argparse.Namespace) -> Dict[str, Any]:
    """Two workers, 50 queued tasks, SIGKILL one worker, then shutdown(wait=True)."""
    thread_errors = record_thread_errors()
    markdir = tempfile.mkdtemp(prefix="safepool-demo-")
    try:
        executor = make_executor(kind)
        futures = [executor.submit(sleep_and_mark, markdir, 0.1, i) for i in range(50)]
        victim = wait_for_busy(markdir, 1)[0]
        probe.descendants()
        os.kill(victim, signal.SIGKILL)
        shutdown = bounded_shutdown(executor, 10, wait=True)
        outcome = tally(futures, timeout=0 if shutdown["hung"] else 5)
        return {"shutdown": shutdown, "futures": outcome, "thread_errors": thread_errors,
                "lost_beyond_killed": max(0, outcome["failed"] + outcome["pending"] - 1)}
    finally:
        shutil.rmtree(markdir, ignore_errors=True)


def scenario_hung_task(kind: str, probe: Probe, options: argparse.Namespace) -> Dict[str, Any]:
    """A task sleeps forever; shutdown(wait=False, cancel_futures=True); then terminate_workers().

    The scenario process then exits normally: the demo measures whether interpreter exit
    hangs waiting for the stuck worker.
    """
    markdir = tempfile.mkdtemp(prefix="safepool-demo-")
    try:
        executor = make_executor(kind)
        stuck = executor.submit(sleep_and_mark, markdir, 3600, "stuck")
        wait_for_busy(markdir, 1)
        queued = [executor.submit(square, i) for i in range(20)]
        probe.descendants()
        # cancel_futures arrived in Python 3.9; without it, queued tasks still run.
        cancel = "cancel_futures" in inspect.signature(executor.shutdown).parameters
        kwargs = {"cancel_futures": True} if cancel else {}
        result = {"shutdown": bounded_shutdown(executor, 10, wait=False, **kwargs),
                  "cancel_futures": cancel}
        time.sleep(1.0)  # give the pool a moment to stop what it will stop by itself
        result["running_after_shutdown"] = len(probe.split()["alive"])
        result["terminate_workers"] = _terminate_workers(executor, probe)
        result["stuck_future"] = _future_state(stuck)
        result["queued"] = tally(queued, timeout=0)
        return result
    finally:
        shutil.rmtree(markdir, ignore_errors=True)


def _terminate_workers(executor: Any, probe: Probe) -> Optional[Dict[str, Any]]:
    """Call ``terminate_workers()`` if this executor has it (safepool; stdlib 3.14+)."""
    if not hasattr(executor, "terminate_workers"):
        return None
    start = time.monotonic()
    try:
        executor.terminate_workers()
        error = None
    except Exception as exc:
        error = describe_error(exc)
    deadline = time.monotonic() + 3.0
    while probe.split()["alive"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"error": error, "seconds": round(time.monotonic() - start, 3),
            "running_after": len(probe.split()["alive"])}


def _future_state(fut: concurrent.futures.Future) -> str:
    """One word (or an error) for where a future stands."""
    if not fut.done():
        return "running"
    if fut.cancelled():
        return "cancelled"
    exc = fut.exception()
    return "done" if exc is None else describe_error(exc)


def scenario_parent_killed(kind: str, probe: Probe, options: argparse.Namespace) -> None:
    """Start busy workers, report their pids, then SIGKILL ourselves.

    Survivors are counted by the demo process, ``PARENT_KILLED_WAIT`` s later. This function
    never returns.
    """
    markdir = tempfile.mkdtemp(prefix="safepool-demo-")
    executor = make_executor(kind)
    futures = [executor.submit(sleep_and_mark, markdir, 60, i) for i in range(4)]
    workers = wait_for_busy(markdir, WORKERS)
    line = {"workers": {str(p): psutil.Process(p).create_time() for p in workers},
            "pids": probe.pids(), "tasks": len(futures)}
    shutil.rmtree(markdir, ignore_errors=True)
    _emit(line)
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: like the OOM killer would


def scenario_rotation(kind: str, probe: Probe, options: argparse.Namespace) -> Dict[str, Any]:
    """Create, use and shut down a pool ``options.cycles`` times; what accumulates?"""
    start = time.monotonic()
    after_first = None
    for cycle in range(options.cycles):
        with make_executor(kind) as executor:
            assert list(executor.map(square, range(8))) == [x * x for x in range(8)]
        if cycle == 0:
            after_first = probe.leftovers(settle=0.5)
        probe.descendants()
    elapsed = time.monotonic() - start
    return {"cycles": options.cycles, "seconds_per_cycle": round(elapsed / options.cycles, 3),
            "after_first_cycle": after_first}


# name -> (title, function run in the scenario subprocess)
Scenario = namedtuple("Scenario", "name title run")
SCENARIOS = OrderedDict((s.name, s) for s in [
    Scenario("oom", "Worker OOM-killed mid-task", scenario_oom),
    Scenario("sigterm", "Framework SIGTERM handler in parent", scenario_sigterm),
    Scenario("full_queue", "Shutdown after a crash, full queue", scenario_full_queue),
    Scenario("hung_task", "Hung task at shutdown", scenario_hung_task),
    Scenario("parent_killed", "Parent process SIGKILLed", scenario_parent_killed),
    Scenario("rotation", "Pool rotation (create/map/shutdown)", scenario_rotation),
])
# Longest first, so that running two at a time finishes soonest.
RUN_ORDER = ["parent_killed", "hung_task", "full_queue", "sigterm", "oom", "rotation"]


def _emit(data: Dict[str, Any]) -> None:
    """Print the one JSON line the demo process collects."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def scenario_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of a scenario subprocess: run one scenario, print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m safepool._cli_demo")
    parser.add_argument("--scenario", choices=list(SCENARIOS), required=True)
    parser.add_argument("--executor", choices=EXECUTORS, required=True)
    parser.add_argument("--cycles", type=int, default=30)
    options = parser.parse_args(argv)
    if options.scenario == "sigterm":
        # Installed before anything starts a process, as a framework would at import time.
        signal.signal(signal.SIGTERM, _ignore_sigterm)
    probe = Probe()
    try:
        result = SCENARIOS[options.scenario].run(options.executor, probe, options) or {}
        result["left"] = probe.leftovers()
    except Exception as exc:
        result = {"error": describe_error(exc), "traceback": traceback.format_exc()}
    result["pids"] = probe.pids()
    _emit(result)
    return 1 if "error" in result else 0


# --------------------------------------------------------------------------------------------
# Running a child process with a time limit, and cleaning up after it.
# --------------------------------------------------------------------------------------------

ChildRun = namedtuple("ChildRun", "pid line stderr returncode timed_out exit_hung seconds")


def child_env() -> Dict[str, str]:
    """The environment for a child: ours, plus this copy of safepool on the path if needed.

    A source checkout goes first on PYTHONPATH so the child runs the same safepool. An
    installed copy needs nothing, and putting site-packages ahead of the standard library
    could shadow stdlib modules, so it is left alone.
    """
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in _site_dirs():
        env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH")] if p)
    return env


def _site_dirs() -> List[str]:
    """The site-packages directories of this interpreter (absolute paths)."""
    import site
    dirs = list(getattr(site, "getsitepackages", lambda: [])())
    user = getattr(site, "getusersitepackages", lambda: "")()
    return [os.path.abspath(d) for d in dirs + [user] if d]


def _pump(stream: Any, sink: "queue.Queue[Optional[str]]") -> None:
    """Copy lines from a pipe into a queue; None marks end of file."""
    for raw in iter(stream.readline, b""):
        sink.put(raw.decode("utf-8", "replace"))
    sink.put(None)


def run_child(cmd: List[str], timeout: float, exit_grace: float = EXIT_GRACE) -> ChildRun:
    """Run ``cmd``, wait for its first JSON line, then up to ``exit_grace`` s for it to exit.

    The child gets its own session, hence its own process group, so that on timeout (or if
    it does not exit) the whole group can be killed with one ``killpg``. If it exits in time
    it is left to the caller to kill what it left behind (``cleanup``): the parent-killed
    scenario needs to count survivors first.
    """
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=child_env(), start_new_session=True)
    out = queue.Queue()  # type: queue.Queue[Optional[str]]
    err = queue.Queue()  # type: queue.Queue[Optional[str]]
    for stream, sink in ((proc.stdout, out), (proc.stderr, err)):
        threading.Thread(target=_pump, args=(stream, sink), daemon=True,
                         name="safepool-demo-pump").start()
    line = _first_json_line(out, start + timeout)
    timed_out = line is None and proc.poll() is None
    exit_hung = False
    if not timed_out:
        try:
            proc.wait(exit_grace)
        except subprocess.TimeoutExpired:
            exit_hung = True  # it printed its result but the interpreter would not exit
    if timed_out or exit_hung:
        kill_tree(proc)
    proc.wait()
    return ChildRun(proc.pid, line, _drain(err), proc.returncode, timed_out, exit_hung,
                    round(time.monotonic() - start, 2))


def _first_json_line(out: "queue.Queue[Optional[str]]", deadline: float) -> Optional[str]:
    """The first stdout line that looks like a JSON object, or None on EOF or deadline."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            text = out.get(timeout=remaining)
        except queue.Empty:
            return None
        if text is None:
            return None
        if text.startswith("{"):
            return text


def _drain(err: "queue.Queue[Optional[str]]", limit: int = 4000) -> str:
    """Whatever stderr has produced so far, the last ``limit`` characters."""
    chunks = []
    while True:
        try:
            text = err.get_nowait()
        except queue.Empty:
            break
        if text is not None:
            chunks.append(text)
    return "".join(chunks)[-limit:]


def kill_tree(proc: "subprocess.Popen[bytes]") -> None:
    """SIGKILL ``proc``, every descendant, and its process group.

    Descendants first, found through psutil while ``proc`` is still alive to link them:
    safepool puts each worker in its own process group, out of reach of ``killpg``.
    """
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    _killpg(proc.pid)


def _killpg(pgid: int) -> None:
    """SIGKILL a process group, if it still has members.

    The group id is the leader's pid; the kernel does not reuse a pid while a group still
    carries it as its id, so this cannot hit an unrelated group.
    """
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_listed(pids: Optional[Dict[str, float]]) -> int:
    """SIGKILL the still-running processes among ``{pid: create_time}``; return how many.

    The create time guards against killing an unrelated process that reused a pid.
    """
    killed = 0
    for pid, created in (pids or {}).items():
        try:
            proc = psutil.Process(int(pid))
            if proc.create_time() != created or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            proc.kill()
            killed += 1
        except psutil.NoSuchProcess:
            pass
    return killed


def count_alive(pids: Dict[str, float]) -> Dict[str, int]:
    """Of ``{pid: create_time}``, how many still run and how many are unreaped zombies."""
    alive = zombies = 0
    for pid, created in pids.items():
        try:
            proc = psutil.Process(int(pid))
            if proc.create_time() != created:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                zombies += 1
            else:
                alive += 1
        except psutil.NoSuchProcess:
            pass
    return {"alive": alive, "zombies": zombies}


# --------------------------------------------------------------------------------------------
# The demo side: run every scenario with both executors, then report.
# --------------------------------------------------------------------------------------------

def scenario_command(name: str, kind: str, cycles: int) -> List[str]:
    """The command line of one scenario subprocess.

    ``-c`` rather than ``-m safepool._cli_demo`` so the task functions are pickled as
    ``safepool._cli_demo.*`` and not as ``__main__.*``.
    """
    code = ("import sys; from safepool._cli_demo import scenario_main; "
            "sys.exit(scenario_main(sys.argv[1:]))")
    return [sys.executable, "-c", code, "--scenario", name, "--executor", kind,
            "--cycles", str(cycles)]


def run_one(name: str, kind: str, timeout: float, cycles: int) -> Dict[str, Any]:
    """Run one scenario with one executor in a subprocess; return its measurements."""
    start = time.monotonic()
    run = run_child(scenario_command(name, kind, cycles), timeout)
    try:
        result = json.loads(run.line) if run.line else {}
    except ValueError:
        result = {}
    if not run.line:
        why = "timed out after %.0f s" % timeout if run.timed_out else \
            "exited with status %s without a result" % run.returncode
        result["error"] = "%s; stderr: %s" % (why, run.stderr.strip()[-300:] or "(empty)")
    elif name == "parent_killed":
        result.update(_count_survivors(result))
    result["cleanup_killed"] = kill_listed(result.get("pids"))
    _killpg(run.pid)  # whatever is left in the scenario's own process group (stdlib workers)
    result.update({"timed_out": run.timed_out, "exit_hung": run.exit_hung,
                   "seconds": round(time.monotonic() - start, 2),
                   "child_seconds": run.seconds, "returncode": run.returncode})
    if result.get("error") and run.stderr and "stderr" not in result:
        result["stderr"] = run.stderr
    return result


def _count_survivors(result: Dict[str, Any]) -> Dict[str, Any]:
    """After the scenario process was SIGKILLed, wait, then count its workers still running."""
    time.sleep(PARENT_KILLED_WAIT)
    workers = result.get("workers", {})
    counted = count_alive(workers)
    helpers = {p: t for p, t in result.get("pids", {}).items() if p not in workers}
    return {"survivors": counted["alive"], "survivor_zombies": counted["zombies"],
            "helper_survivors": count_alive(helpers)["alive"],
            "waited_s": PARENT_KILLED_WAIT}


# --------------------------------------------------------------------------------------------
# Turning measurements into words. Each summary returns (what happened, verdict ok?).
# --------------------------------------------------------------------------------------------

def _pool_after(r: Dict[str, Any]) -> str:
    """How the pool answered the four tasks submitted after the crash."""
    if r.get("submit_error"):
        return "pool BROKEN: submit() raises %s" % r["submit_error"].split(":")[0]
    after = r.get("after") or {}
    total = sum(after.get(k, 0) for k in ("ok", "failed", "cancelled", "pending"))
    failed = total - after.get("ok", 0)
    if r.get("pool_broken"):
        return "pool BROKEN: %d/%d new tasks failed" % (failed, total)
    if failed:
        return "pool kept serving, but %d/%d tasks submitted after the crash FAILED (%s)" % (
            failed, total, ", ".join(sorted(after.get("errors", {}))) or "never resolved")
    return "pool kept serving (%d/%d new tasks ok)" % (after.get("ok", 0), total)


def summarize_oom(r: Dict[str, Any]) -> "tuple[str, bool]":
    errors = ", ".join(sorted(r["first_batch"]["errors"])) or "nothing"
    lost = r["lost_beyond_killed"]
    text = "killed task failed with %s; %s; %s" % (
        errors, "%d other tasks lost" % lost if lost else "no other task lost", _pool_after(r))
    return text, lost == 0 and not r["pool_broken"] and r["lost_after"] == 0


def summarize_sigterm(r: Dict[str, Any]) -> "tuple[str, bool]":
    if r["worker_died"]:
        text = "worker died on SIGTERM in %.2f s; %s" % (r["died_after_s"], _pool_after(r))
    else:
        text = ("worker IGNORED SIGTERM (inherited the handler; alive after 3 s), so "
                "Process.terminate() cannot stop it; %s" % _pool_after(r))
    return text, r["worker_died"] and not r["pool_broken"] and r["lost_after"] == 0


def _shutdown_words(shutdown: Dict[str, Any], limit: float) -> str:
    if shutdown["hung"]:
        return "shutdown HUNG (> %.0f s)" % limit
    if shutdown["raised"]:
        return "shutdown RAISED %s" % shutdown["raised"]
    return "shutdown returned in %.1f s" % shutdown["seconds"]


def summarize_full_queue(r: Dict[str, Any]) -> "tuple[str, bool]":
    futures = r["futures"]
    parts = [_shutdown_words(r["shutdown"], 10),
             "of 50 futures: %d ok, %d failed, %d cancelled, %d never resolved" % (
                 futures["ok"], futures["failed"], futures["cancelled"], futures["pending"])]
    if r["thread_errors"]:
        parts.append("%d error(s) in a background thread: %s"
                     % (len(r["thread_errors"]), r["thread_errors"][0]))
    ok = (not r["shutdown"]["hung"] and not r["shutdown"]["raised"] and not r["thread_errors"]
          and futures["pending"] == 0 and r["lost_beyond_killed"] == 0)
    return "; ".join(parts), ok


def summarize_hung_task(r: Dict[str, Any]) -> "tuple[str, bool]":
    call = "shutdown(wait=False%s)" % (", cancel_futures=True" if r["cancel_futures"] else "")
    parts = [call + " " + _shutdown_words(r["shutdown"], 10)[len("shutdown "):]]
    running = r["running_after_shutdown"]
    parts.append("%d worker(s) still running 1 s later" % running)
    term = r["terminate_workers"]
    if term is None:
        parts.append("no terminate_workers() on this Python")
        final = running
    else:
        final = term["running_after"]
        parts.append("terminate_workers(): %s%d left after %.1f s" % (
            "raised %s, " % term["error"] if term["error"] else "", final, term["seconds"]))
    parts.append("interpreter exit HUNG (killed after %.0f s)" % EXIT_GRACE
                 if r["exit_hung"] else "interpreter exited")
    return "; ".join(parts), final == 0 and not r["exit_hung"]


def summarize_parent_killed(r: Dict[str, Any]) -> "tuple[str, bool]":
    text = "%d of %d busy workers still running %.0f s after their parent was SIGKILLed" % (
        r["survivors"], len(r["workers"]), r["waited_s"])
    if r["survivor_zombies"]:
        text += " (+%d unreaped zombies)" % r["survivor_zombies"]
    return text, r["survivors"] == 0 and r["survivor_zombies"] == 0


def summarize_rotation(r: Dict[str, Any]) -> "tuple[str, bool]":
    text = "%d cycles, %.2f s per cycle" % (r["cycles"], r["seconds_per_cycle"])
    first, last = r["after_first_cycle"], r["left"]
    if first is not None and last["fds"] > first["fds"]:
        text += "; fds grew by %d after cycle 1" % (last["fds"] - first["fds"])
    return text, True  # the verdict comes from what was left behind


SUMMARIES = {"oom": summarize_oom, "sigterm": summarize_sigterm,
             "full_queue": summarize_full_queue, "hung_task": summarize_hung_task,
             "parent_killed": summarize_parent_killed, "rotation": summarize_rotation}


def left_behind(name: str, r: Dict[str, Any]) -> "tuple[str, bool]":
    """Words and verdict for what the run left behind in the scenario process."""
    if name == "parent_killed":
        extra = r["survivors"] + r["helper_survivors"]
        return "%d orphaned processes (killed by the demo)" % extra, extra == 0
    left = r["left"]
    text = "%d proc, %d zombie, %+d fd" % (left["processes"], left["zombies"], left["fds"])
    if left["threads"]:
        text += ", %+d thread" % left["threads"]
    clean = left["processes"] == 0 and left["zombies"] == 0 and left["fds"] <= 0
    return text, clean and left["threads"] <= 0


def annotate(name: str, r: Dict[str, Any]) -> Dict[str, Any]:
    """Add ``summary``, ``left_behind`` and ``ok`` (None if nothing could be measured)."""
    if r.get("error"):
        r.update(summary="could not measure: %s" % r["error"], left_behind="?", ok=None)
        return r
    try:
        summary, behaved = SUMMARIES[name](r)
        left, clean = left_behind(name, r)
    except (KeyError, TypeError) as exc:  # a malformed result is reported, not raised
        r.update(summary="could not summarize: %s" % describe_error(exc), left_behind="?",
                 ok=None)
        return r
    r.update(summary=summary, left_behind=left, ok=behaved and clean)
    return r


# --------------------------------------------------------------------------------------------
# Progress and output.
# --------------------------------------------------------------------------------------------

class Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per run otherwise."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total, self.done, self.quiet = total, 0, quiet
        self.tty = sys.stderr.isatty()
        self.running = []  # type: List[str]
        self.lock = threading.Lock()
        self.start = time.monotonic()

    def begin(self, label: str) -> None:
        with self.lock:
            self.running.append(label)
            if self.tty:
                self._show("running: " + ", ".join(self.running))

    def end(self, label: str, result: Dict[str, Any], seconds: float) -> None:
        with self.lock:
            self.running.remove(label)
            self.done += 1
            verdict = {True: "ok", False: "BAD", None: "ERROR"}[result.get("ok")]
            text = "%s: %s in %.1f s" % (label, verdict, seconds)
            if self.tty:
                self._show(text)
            elif not self.quiet:
                sys.stderr.write("safepool demo [%2d/%d] %s\n" % (self.done, self.total, text))
                sys.stderr.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\r" + " " * self._width() + "\r")
            sys.stderr.flush()

    def _show(self, text: str) -> None:
        if self.quiet:
            return
        line = "[%2d/%d %4.0fs] %s" % (self.done, self.total, time.monotonic() - self.start, text)
        width = self._width()
        sys.stderr.write("\r" + line[:width].ljust(width))
        sys.stderr.flush()

    @staticmethod
    def _width() -> int:
        return max(20, shutil.get_terminal_size((80, 24)).columns - 1)


def format_table(report: Dict[str, Any]) -> str:
    """The report as a plain-text table, one row per scenario and executor."""
    headers = ["Scenario", "Executor", "", "What happened", "Left behind"]
    widths = [22, 23, 5, 56, 24]
    rows = []
    for scenario in report["scenarios"]:
        for i, kind in enumerate(EXECUTORS):
            r = scenario["results"][kind]
            verdict = {True: "ok", False: "BAD", None: "?"}[r.get("ok")]
            rows.append([scenario["title"] if i == 0 else "", EXECUTOR_NAMES[kind], verdict,
                         r["summary"], r["left_behind"]])
        rows.append(None)  # a blank line between scenarios
    lines = [_table_line(headers, widths), _table_line(["-" * w for w in widths], widths)]
    for row in rows:
        if row is None:
            lines.append("")
            continue
        cells = [textwrap.wrap(cell, width) or [""] for cell, width in zip(row, widths)]
        for j in range(max(len(c) for c in cells)):
            lines.append(_table_line([c[j] if j < len(c) else "" for c in cells], widths))
    return "\n".join(lines).rstrip() + "\n"


def _table_line(cells: List[str], widths: List[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()


def format_report(report: Dict[str, Any]) -> str:
    """Header, table and a footer that explains the verdicts."""
    head = ("safepool demo: Python %s on %s, %s CPUs. ProcessPoolExecutor uses the stdlib "
            "default start method (%s); SafeProcessPoolExecutor is safepool %s.\n"
            "Every number below was measured in this run with psutil.\n\n" % (
                report["python"], report["platform"], report["cpu_count"],
                report["stdlib_start_method"], report["safepool_version"]))
    foot = ("\nok = no collateral task loss, no broken pool, no hang, nothing left behind; "
            "BAD = at least one of those.\nproc = processes still running after shutdown, "
            "zombie = exited but never reaped, fd = file descriptors not closed.\n"
            "Finished in %.1f s.\n" % report["elapsed_s"])
    return head + format_table(report) + foot


# --------------------------------------------------------------------------------------------
# The demo command.
# --------------------------------------------------------------------------------------------

def _safepool_status() -> "tuple[Optional[str], str]":
    """(error if the core cannot be imported, version)."""
    try:
        import safepool
        from safepool import SafeProcessPoolExecutor  # noqa: F401
    except Exception as exc:
        return describe_error(exc), "?"
    return None, str(getattr(safepool, "__version__", "?"))


def run_demo(options: argparse.Namespace) -> int:
    """Run the selected scenarios with both executors; print a table or JSON.

    Returns 0 when every run was measured (whatever the verdicts), 1 if some could not be.
    """
    names = [n for n in RUN_ORDER if not options.scenario or n in options.scenario]
    safepool_error, version = _safepool_status()
    jobs = [(name, kind) for name in names for kind in EXECUTORS]
    progress = Progress(len(jobs), quiet=options.quiet)
    start = time.monotonic()
    results = {}  # type: Dict[tuple, Dict[str, Any]]

    def work(job: "tuple[str, str]") -> None:
        name, kind = job
        label = "%s / %s" % (name, kind)
        progress.begin(label)
        began = time.monotonic()
        if kind == "safepool" and safepool_error:
            result = {"error": "safepool is not importable: " + safepool_error, "seconds": 0}
        else:
            result = run_one(name, kind, options.timeout, options.cycles)
        results[job] = annotate(name, result)
        progress.end(label, result, time.monotonic() - began)

    # Threads only wait on subprocesses; ``jobs`` of them run scenarios side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=options.jobs) as runner:
        list(runner.map(work, jobs))
    progress.close()
    report = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "cpu_count": os.cpu_count(),
        "stdlib_start_method": multiprocessing.get_all_start_methods()[0],
        "safepool_version": version,
        "safepool_error": safepool_error,
        "elapsed_s": round(time.monotonic() - start, 1),
        "scenarios": [{"name": n, "title": SCENARIOS[n].title,
                       "results": {k: results[(n, k)] for k in EXECUTORS}}
                      for n in SCENARIOS if n in names],
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if options.json
                     else format_report(report))
    measured = all(r.get("ok") is not None for r in results.values())
    return 0 if measured else 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


DESCRIPTION = """\
Each scenario runs twice, once with concurrent.futures.ProcessPoolExecutor (the stdlib's
default start method) and once with safepool.SafeProcessPoolExecutor, each time in a fresh
subprocess with a time limit. What each executor did and left behind is measured in that run.

  oom            SIGKILL a busy worker (as the OOM killer does), then submit more work
  sigterm        the parent installed a SIGTERM handler (as frameworks do); SIGTERM a worker
  full_queue     2 workers, 50 queued tasks, SIGKILL a worker, then shutdown()
  hung_task      a task sleeps forever; shutdown(wait=False, cancel_futures=True),
                 then terminate_workers() where it exists; does the interpreter exit?
  parent_killed  SIGKILL the process that owns the pool; do its busy workers live on?
  rotation       create, map and shut down a pool many times; what accumulates?
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's options (shared with ``python -m safepool demo``)."""
    parser.description = DESCRIPTION
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS), metavar="NAME",
                        help="run only this scenario (repeatable): %s" % ", ".join(SCENARIOS))
    parser.add_argument("--jobs", type=_positive_int, default=2,
                        help="scenario processes run at the same time (default: 2)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds before a scenario process is killed (default: %(default)s)")
    parser.add_argument("--cycles", type=_positive_int, default=30,
                        help="pools created by the rotation scenario (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")


if __name__ == "__main__":
    # Re-import under the package name so tasks pickle as safepool._cli_demo.*, not __main__.*.
    from safepool._cli_demo import scenario_main as _scenario_main
    sys.exit(_scenario_main())
