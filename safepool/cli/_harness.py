"""What the demo and the doctor share: tasks, measuring a process from inside, child processes.

* **Tasks** (``square``, ``getpid``, ``sleep_and_mark``) run in the workers of either executor,
  so they live at module level and pickle as ``safepool.cli._harness.<name>``.
* **Measuring from inside** (``Probe`` and friends): what a pool left behind in *this*
  process, counted with psutil.
* **Child processes** (``run_child`` and friends): run a measurement in a throwaway
  subprocess in its own session, with a time limit, and kill whatever it leaves behind.

Nothing here imports the safepool core at module level: the stdlib half of the demo must
work even if the core does not.
"""
import concurrent.futures
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from typing import Any, Dict, List, Optional

import psutil

EXIT_GRACE = 3.0  # seconds a child gets to exit after printing its JSON line

#: The directory holding the ``safepool`` package this module belongs to.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
        alive, zombies = [], []  # type: List[int], List[int]
        for proc in self.descendants():
            try:
                status = proc.status()
            except psutil.NoSuchProcess:
                continue
            (zombies if status == psutil.STATUS_ZOMBIE else alive).append(proc.pid)
        return {"alive": alive, "zombies": zombies}

    def leftovers(self, settle: float = 1.0) -> Dict[str, int]:
        """What is left now, after giving exiting processes, and the pool threads that reap
        them (a shutdown(wait=False) does not wait for them), up to ``settle`` s to go away."""
        deadline = time.monotonic() + settle
        state = self.split()
        while (state["alive"] or state["zombies"] or _our_threads() > self.threads_before) \
                and time.monotonic() < deadline:
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
    """``TypeName: first line of the message``, cut at a word (with "...") past 160 chars."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 160:
        text = text[:160].rsplit(" ", 1)[0].rstrip(" ,;:(") + " ..."
    return "%s: %s" % (type(exc).__name__, text)


def tally(futures: List["concurrent.futures.Future[Any]"], timeout: float) -> Dict[str, Any]:
    """Wait up to ``timeout`` s, then count futures by outcome; keep one message per error type.

    ``pending`` counts futures that never resolved: the worst outcome, since a caller
    waiting on one of them waits forever.
    """
    concurrent.futures.wait(futures, timeout=timeout)
    counts = {"ok": 0, "failed": 0, "cancelled": 0, "pending": 0}  # type: Dict[str, Any]
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
            assert exc is not None  # done, not cancelled, and not a success
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




def emit(data: Dict[str, Any]) -> None:
    """Print the one JSON line the demo process collects."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()



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
    root = PACKAGE_ROOT
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
    from safepool._process import kill_tree as kill_processes  # late: see the module docstring

    kill_processes(family)
    killpg(proc.pid)


def killpg(pgid: int) -> None:
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

