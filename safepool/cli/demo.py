"""``python -m safepool demo``: production failures, ProcessPoolExecutor vs SafeProcessPoolExecutor.

This module has two halves.

* The **scenario side** runs ONE scenario with ONE executor inside a throwaway subprocess
  (``scenario_main``) and prints one JSON line of measurements, all taken with psutil during
  that run. A scenario is allowed to hang, leak or get killed: it is only a subprocess.
* The **demo side** (``run_demo``) starts those subprocesses in their own sessions with a time
  limit (``_harness.run_child``), collects the JSON lines, kills whatever they left behind,
  and prints a report that fits the terminal (or the same data as JSON).

Nothing here imports the safepool core at module level: the stdlib half of the demo must
work even if the core does not.
"""
import argparse
import concurrent.futures
import inspect
import json
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict, namedtuple
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, List, Optional

import psutil

from safepool.cli._harness import (
    EXIT_GRACE,
    Probe,
    bounded_shutdown,
    count_alive,
    describe_error,
    emit,
    getpid,
    kill_listed,
    killpg,
    record_thread_errors,
    run_child,
    sleep_and_mark,
    square,
    started_by,
    tally,
    wait_for_busy,
    wait_until_gone,
)
from safepool.cli._text import help_text, paragraph, terminal_width, wrap

WORKERS = 2                # every scenario uses two workers, like a small production pool
PARENT_KILLED_WAIT = 5.0   # seconds workers get to notice that their parent was SIGKILLed
DEFAULT_TIMEOUT = 30.0     # seconds one scenario process may run before its group is killed
EXECUTORS = ("stdlib", "safepool")
EXECUTOR_NAMES = {"stdlib": "ProcessPoolExecutor", "safepool": "SafeProcessPoolExecutor"}


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
              "started_by": started_by(pid) if died_after is None else None
              }  # type: Dict[str, Any]
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


def _future_state(fut: "concurrent.futures.Future[Any]") -> str:
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
    emit(line)
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



def scenario_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of a scenario subprocess: run one scenario, print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m safepool.cli.demo")
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
    emit(result)
    return 1 if "error" in result else 0


# --------------------------------------------------------------------------------------------
# The demo side: run every scenario with both executors, then report.
# --------------------------------------------------------------------------------------------

def scenario_command(name: str, kind: str, cycles: int) -> List[str]:
    """The command line of one scenario subprocess.

    ``-c`` rather than ``-m safepool.cli.demo``, so that nothing the scenario pickles is
    named ``__main__.*``.
    """
    code = ("import sys; from safepool.cli.demo import scenario_main; "
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
    killpg(run.pid)  # whatever is left in the scenario's own process group (stdlib workers)
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
    # Expected of both executors: shutdown() never stops a running task (the stdlib's
    # contract), so the hung task's worker is still there; terminate_workers() is the tool.
    parts.append("%d worker(s) still running 1 s later, as expected: shutdown() lets a "
                 "running task run" % running)
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


VERDICTS = {True: "ok", False: "BAD", None: "?"}
SHORT_NAMES = {"stdlib": "stdlib", "safepool": "safepool"}


def format_scenarios(report: Dict[str, Any], width: int) -> str:
    """One block per scenario, one entry per executor, wrapped to ``width`` columns::

        1. Worker OOM-killed mid-task
           stdlib    BAD  killed task failed with ...; pool BROKEN: ...
                          left behind: 0 proc, 0 zombie, +0 fd
           safepool  ok   ...
    """
    label = max(len(name) for name in SHORT_NAMES.values())
    indent = " " * (3 + label + 2 + 3 + 2)
    lines = []  # type: List[str]
    for number, scenario in enumerate(report["scenarios"], 1):
        lines.append("%d. %s" % (number, scenario["title"]))
        for kind in EXECUTORS:
            r = scenario["results"][kind]
            first = "   %s  %s" % (SHORT_NAMES[kind].ljust(label), VERDICTS[r.get("ok")].ljust(3))
            lines += wrap(r["summary"], width, indent, first)
            lines += wrap("left behind: " + r["left_behind"], width, indent)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def format_report(report: Dict[str, Any], width: Optional[int] = None) -> str:
    """Header, one block per scenario, and a footer that explains the verdicts.

    ``width`` defaults to the terminal's (``_text.terminal_width``); ``--json`` has the same
    data without any layout.
    """
    width = width or terminal_width()
    head = ("safepool demo: Python %s on %s, %s CPUs.\n"
            "stdlib = concurrent.futures.ProcessPoolExecutor with this platform's default "
            "start method (%s); safepool = SafeProcessPoolExecutor, safepool %s. "
            "Every number below was measured in this run with psutil.\n" % (
                report["python"], report["platform"], report["cpu_count"],
                report["stdlib_start_method"], report["safepool_version"]))
    foot = ("ok = no collateral task loss, no broken pool, no hang, nothing left behind; "
            "BAD = at least one of those; ? = could not be measured.\n"
            "proc = processes still running after shutdown, zombie = exited but never "
            "reaped, fd = file descriptors not closed.\n"
            "Finished in %.1f s. --json prints every measurement.\n" % report["elapsed_s"])
    return (paragraph(head, width) + "\n" + format_scenarios(report, width) + "\n"
            + paragraph(foot, width))


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
    results = {}  # type: Dict[tuple[str, str], Dict[str, Any]]

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


DESCRIPTION = [
    "Each scenario runs twice, once with concurrent.futures.ProcessPoolExecutor (the "
    "stdlib's default start method) and once with safepool.SafeProcessPoolExecutor, each "
    "time in a fresh subprocess with a time limit. What each executor did and left behind "
    "is measured in that run.",
    [("oom", "SIGKILL a busy worker (as the OOM killer does), then submit more work"),
     ("sigterm", "the parent installed a SIGTERM handler (as frameworks do); SIGTERM a "
                 "worker"),
     ("full_queue", "2 workers, 50 queued tasks, SIGKILL a worker, then shutdown()"),
     ("hung_task", "a task sleeps forever; shutdown(wait=False, cancel_futures=True), then "
                   "terminate_workers() where it exists; does the interpreter exit?"),
     ("parent_killed", "SIGKILL the process that owns the pool; do its busy workers live "
                       "on?"),
     ("rotation", "create, map and shut down a pool many times; what accumulates?")],
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's options (shared with ``python -m safepool demo``)."""
    parser.description = help_text(*DESCRIPTION)
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
    # Re-import under the package name so nothing pickles as __main__.*.
    from safepool.cli.demo import scenario_main as _scenario_main
    sys.exit(_scenario_main())
