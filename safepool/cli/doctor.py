"""``python -m safepool doctor``: what in this environment will hurt a process pool.

Every check returns one ``Check``: OK, WARN (works, but worth knowing) or FAIL (something
here will hurt: safepool cannot work as promised). ``run_doctor`` exits 1 if any check
FAILs. The live self-test runs in its own subprocess with a time limit, so a hang or a leak
there is measured rather than suffered.
"""
import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections import namedtuple
from typing import Any, Dict, List, Optional, Set, Tuple

import psutil

from safepool.cli import _harness as harness
from safepool.cli._text import terminal_width, wrap

OK, WARN, FAIL = "OK", "WARN", "FAIL"
SELF_TEST_TIMEOUT = 60.0   # seconds before the self-test subprocess is killed
UNLIMITED_BYTES = 1 << 60  # cgroup v1 writes "no limit" as a huge page-aligned number
KNOWN_INITS = {"tini", "docker-init", "dumb-init", "init", "systemd", "catatonit",
               "s6-svscan", "runit", "openrc-init", "supervisord", "pause"}

Check = namedtuple("Check", "id title status detail advice")


def check(key: str, title: str, status: str, detail: str, advice: str = "") -> Check:
    """One result: ``key`` is stable for scripts (JSON ``id``), ``title`` is for people."""
    return Check(key, title, status, detail, advice)


def _mib(n: float) -> str:
    return "%.0f MiB" % (n / 2 ** 20) if n < 2 ** 30 else "%.1f GiB" % (n / 2 ** 30)


def _worker_count() -> int:
    """The number of workers a default SafeProcessPoolExecutor starts here."""
    try:
        from safepool import default_max_workers
        return default_max_workers()
    except Exception:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# Environment checks.
# --------------------------------------------------------------------------------------------

def check_python() -> Check:
    version = "%s %s on %s" % (platform.python_implementation(), platform.python_version(),
                               platform.platform(terse=True))
    if sys.version_info < (3, 8):
        return check("python", "Python", FAIL, version, "safepool needs Python 3.8 or newer.")
    if os.name != "posix":
        return check("python", "Python", FAIL, version, "safepool supports POSIX systems only.")
    return check("python", "Python", OK, version)


def check_install() -> Check:
    """Does ``import safepool`` here give this copy? A checkout folder can shadow it."""
    from safepool.cli import _install

    version = _install.installed_version()
    shadow = _install.find_shadow(_install.imported_safepool())
    if shadow is not None:
        return check("install", "Install", FAIL, shadow.explanation, shadow.advice)
    return check("install", "Install", OK, "safepool %s from %s" % (version,
                                                                  _install.PACKAGE_DIR))


def check_start_method() -> Check:
    """Which start methods exist, and which one safepool's workers use."""
    available = multiprocessing.get_all_start_methods()
    try:
        from safepool._process import resolve_context
        used = resolve_context(None).get_start_method()
    except Exception:  # the core is missing or broken: state the documented policy
        used = "forkserver" if "forkserver" in available else "spawn"
    detail = "safepool uses %s (available: %s; the stdlib default here is %s)" % (
        used, ", ".join(available), available[0])
    if used not in available or used not in ("forkserver", "spawn"):
        return check("start_method", "Start method", FAIL, detail,
                     "Neither forkserver nor spawn is available; safepool refuses fork.")
    if used == "spawn":
        return check("start_method", "Start method", OK, detail + "; workers start slower "
                     "than with forkserver, so prefer long-lived pools")
    return check("start_method", "Start method", OK, detail)


def check_cpu_count() -> Check:
    """os.cpu_count() counts the host; a container may be allowed far fewer CPUs."""
    host = os.cpu_count() or 1
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else host
    try:
        from loky import cpu_count
        usable = cpu_count()
    except Exception as exc:
        return check("cpu_count", "CPU count", WARN,
                     "os.cpu_count()=%d; loky not importable (%s)" % (host, exc),
                     "Install loky so safepool can size pools by the CPUs you may use.")
    detail = "os.cpu_count()=%d, affinity=%d, usable (cgroup-aware, loky.cpu_count())=%d" % (
        host, affinity, usable)
    if usable < host:
        return check("cpu_count", "CPU count", WARN, detail,
                     "Only %d of %d CPUs are usable here. ProcessPoolExecutor() would start "
                     "%d workers and oversubscribe; safepool's default starts %d. Size pools "
                     "with loky.cpu_count(), never os.cpu_count()." % (usable, host, host,
                                                                       _worker_count()))
    return check("cpu_count", "CPU count", OK, detail)


def _cgroup_dirs() -> Dict[str, str]:
    """This process's cgroup path per hierarchy: {"v2": path} and/or {"memory": path}."""
    found = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    found["v2"] = path
                elif "memory" in controllers.split(","):
                    found["memory"] = path
    except OSError:
        pass
    return found


def _read_limit(path: str) -> Optional[int]:
    """A cgroup limit file as bytes; None when missing or unlimited ("max" or a huge value)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit() or int(text) >= UNLIMITED_BYTES:
        return None
    return int(text)


def _ancestors(root: str, path: str) -> List[str]:
    """``root/path`` and each parent directory up to ``root`` (a limit may sit higher up)."""
    dirs = []
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts), -1, -1):
        dirs.append(os.path.join(root, *parts[:i]))
    return dirs


def memory_limit() -> "tuple[Optional[int], str]":
    """The tightest cgroup memory limit on this process, and the file it came from."""
    dirs = _cgroup_dirs()
    candidates = []
    if "v2" in dirs:
        candidates += [os.path.join(d, "memory.max")
                       for d in _ancestors("/sys/fs/cgroup", dirs["v2"])]
    if "memory" in dirs:
        candidates += [os.path.join(d, "memory.limit_in_bytes")
                       for d in _ancestors("/sys/fs/cgroup/memory", dirs["memory"])]
    best = (None, "")  # type: Tuple[Optional[int], str]
    for path in candidates:
        limit = _read_limit(path)
        if limit is not None and (best[0] is None or limit < best[0]):
            best = (limit, path)
    return best


def check_memory_limit() -> Check:
    """A container memory limit means workers get OOM-killed before the host runs out."""
    total = psutil.virtual_memory().total
    limit, source = memory_limit()
    if limit is None:
        return check("memory_limit", "Memory limit", OK,
                     "no cgroup memory limit (host memory %s)" % _mib(total))
    workers = _worker_count()
    share = limit / max(1, workers)
    detail = "cgroup limit %s (%s; host memory %s): about %s per worker with %d workers" % (
        _mib(limit), source, _mib(total), _mib(share), workers)
    advice = ("Workers over the limit are killed by the OOM killer with SIGKILL. safepool "
              "fails only that task and replaces the worker; to recycle workers before that, "
              "pass max_worker_memory=%d (about 80%% of each worker's share)." % int(share * 0.8))
    status = WARN if share < 256 * 2 ** 20 else OK
    return check("memory_limit", "Memory limit", status, detail, advice)


def _user_tasks(uid: int) -> int:
    """Processes and threads owned by ``uid``: what RLIMIT_NPROC counts on Linux."""
    total = 0
    for proc in psutil.process_iter(["uids", "num_threads"]):
        info = proc.info
        if info.get("uids") and info["uids"].real == uid:
            total += info.get("num_threads") or 1
    return total


def check_nproc() -> Check:
    """Too few processes allowed and workers fail to start (fork: EAGAIN)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft == resource.RLIM_INFINITY:
        return check("rlimit_nproc", "RLIMIT_NPROC", OK, "unlimited")
    used = _user_tasks(os.getuid())
    need = 2 * _worker_count() + 4  # each worker, the forkserver, the resource tracker, slack
    detail = "soft limit %d (hard %s), %d already used by this user" % (
        soft, "unlimited" if hard == resource.RLIM_INFINITY else hard, used)
    if os.getuid() == 0:
        return check("rlimit_nproc", "RLIMIT_NPROC", OK, detail + "; not enforced for root")
    if soft - used < need:
        return check("rlimit_nproc", "RLIMIT_NPROC", FAIL, detail,
                     "A pool of %d workers needs about %d more processes. Raise it "
                     "(ulimit -u, or --pids-limit / pids cgroup in containers)." % (
                         _worker_count(), need))
    if soft - used < 256:
        return check("rlimit_nproc", "RLIMIT_NPROC", WARN, detail,
                     "Little headroom: replacing crashed workers may fail. Raise ulimit -u.")
    return check("rlimit_nproc", "RLIMIT_NPROC", OK, detail)


def check_nofile() -> Check:
    """Every worker costs the parent a few fds (pipes, sentinels); too few and starts fail."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return check("rlimit_nofile", "RLIMIT_NOFILE", OK, "unlimited")
    used = psutil.Process().num_fds()
    need = 8 * _worker_count() + 16
    detail = "soft limit %d (hard %s), %d open now" % (
        soft, "unlimited" if hard == resource.RLIM_INFINITY else hard, used)
    if soft - used < need:
        return check("rlimit_nofile", "RLIMIT_NOFILE", FAIL, detail,
                     "A pool of %d workers needs about %d fds. Raise it with ulimit -n "
                     "(up to the hard limit) or resource.setrlimit." % (_worker_count(), need))
    if soft - used < 256:
        return check("rlimit_nofile", "RLIMIT_NOFILE", WARN, detail,
                     "Little headroom for sockets and files next to the pool; raise ulimit -n.")
    return check("rlimit_nofile", "RLIMIT_NOFILE", OK, detail)


def _orphan_zombies(patience: float = 1.0) -> int:
    """Zombies whose parent is PID 1 and that stay unreaped for ``patience`` seconds.

    Evidence that PID 1 does not reap orphans. A zombie seen once may just not have been
    reaped *yet*, so only those still there after the pause count.
    """
    def snapshot() -> Set[Tuple[int, Any]]:
        found = set()
        for proc in psutil.process_iter(["ppid", "status", "create_time"]):
            if proc.info.get("ppid") == 1 and proc.info.get("status") == psutil.STATUS_ZOMBIE:
                found.add((proc.pid, proc.info.get("create_time")))
        return found

    first = snapshot()
    if not first:
        return 0
    time.sleep(patience)
    return len(first & snapshot())


def check_pid1() -> Check:
    """PID 1 must reap orphans and handle signals; a plain application there does neither."""
    advice = ("Run the container with an init: `docker run --init`, `tini` as ENTRYPOINT, or "
              "`shareProcessNamespace`/an init container in Kubernetes. Without one, orphaned "
              "processes stay zombies forever and SIGTERM without a handler does nothing at "
              "PID 1, so `docker stop` waits and then SIGKILLs.")
    if os.getpid() == 1:
        return check("pid1", "PID 1", WARN, "this process is PID 1 and there is no init",
                     advice)
    try:
        name = psutil.Process(1).name()
    except psutil.Error:
        return check("pid1", "PID 1", OK, "PID 1 is not visible from here")
    zombies = _orphan_zombies()
    if zombies:
        return check("pid1", "PID 1", WARN,
                     "PID 1 is %r and %d orphaned zombies stayed unreaped for 1 s"
                     % (name, zombies), advice)
    known = name in KNOWN_INITS
    return check("pid1", "PID 1", OK, "PID 1 is %r%s; no unreaped orphans" % (
        name, "" if known else " (not a known init)"))


# --------------------------------------------------------------------------------------------
# The live self-test: runs in a subprocess (self_test_main), judged here (self_test_checks).
# --------------------------------------------------------------------------------------------

def _step(ok: bool, detail: str) -> Dict[str, Any]:
    return {"ok": ok, "detail": detail}


def self_test_main() -> int:
    """In a subprocess: start a pool, SIGKILL a busy worker, check recovery and cleanup.

    Prints one JSON line {step: {"ok": bool, "detail": str}}.
    """
    from concurrent.futures import TimeoutError as FutureTimeout
    from concurrent.futures.process import BrokenProcessPool

    steps = {}  # type: Dict[str, Dict[str, Any]]
    probe = harness.Probe()
    markdir = tempfile.mkdtemp(prefix="safepool-doctor-")
    try:
        from safepool import SafeProcessPoolExecutor
        start = time.monotonic()
        executor = SafeProcessPoolExecutor(max_workers=2)
        pid = executor.submit(harness.getpid).result(timeout=30)
        steps["start"] = _step(True, "2 workers, first result after %.2f s (workers started "
                               "by %s)" % (time.monotonic() - start, harness.started_by(pid)))
        victim_future = executor.submit(harness.sleep_and_mark, markdir, 30, "victim")
        victim = harness.wait_for_busy(markdir, 1)[0]
        probe.descendants()
        os.kill(victim, signal.SIGKILL)  # as the OOM killer would
        try:
            victim_future.result(timeout=20)
            steps["crash"] = _step(False, "the task returned although its worker was killed")
        except BrokenProcessPool as exc:
            steps["crash"] = _step(True, "killed worker %d: its task failed with %s"
                                   % (victim, harness.describe_error(exc)))
        except FutureTimeout:
            steps["crash"] = _step(False, "the task of the killed worker never resolved (20 s)")
        except Exception as exc:
            steps["crash"] = _step(False, "expected BrokenProcessPool, got %s"
                                   % harness.describe_error(exc))
        try:
            value = executor.submit(harness.square, 7).result(timeout=30)
            steps["recovery"] = _step(value == 49, "a new task after the crash returned %r"
                                      % (value,))
        except Exception as exc:
            steps["recovery"] = _step(False, "a new task after the crash failed: %s"
                                      % harness.describe_error(exc))
        shutdown = harness.bounded_shutdown(executor, 20, wait=True)
        steps["cleanup"] = _cleanup_step(shutdown, probe.leftovers())
    except Exception as exc:
        steps["error"] = _step(False, harness.describe_error(exc))
    finally:
        shutil.rmtree(markdir, ignore_errors=True)
    steps["pids"] = probe.pids()
    harness.emit(steps)
    return 0


def _cleanup_step(shutdown: Dict[str, Any], left: Dict[str, int]) -> Dict[str, Any]:
    """Judge shutdown: it must return, raise nothing, and leave no process, zombie or fd."""
    if shutdown["hung"]:
        return _step(False, "shutdown(wait=True) did not return within 20 s")
    if shutdown["raised"]:
        return _step(False, "shutdown raised %s" % shutdown["raised"])
    detail = "after shutdown: %d processes, %d zombies, %+d fds, %+d threads" % (
        left["processes"], left["zombies"], left["fds"], left["threads"])
    return _step(left["processes"] == 0 and left["zombies"] == 0 and left["fds"] <= 0
                 and left["threads"] <= 0, detail)


SELF_TEST_STEPS = [
    ("start", "Self-test: start", "a pool of 2 workers starts and runs a task"),
    ("crash", "Self-test: crash", "SIGKILL of a busy worker fails its task with "
                                  "BrokenProcessPool"),
    ("recovery", "Self-test: recovery", "the pool keeps serving after the crash"),
    ("cleanup", "Self-test: cleanup", "shutdown leaves nothing behind"),
]


def self_test_checks() -> List[Check]:
    """Run ``self_test_main`` in a subprocess with a time limit and turn its steps into checks."""
    try:
        import safepool  # noqa: F401
        from safepool import SafeProcessPoolExecutor  # noqa: F401
    except Exception as exc:
        return [check("self_test", "Self-test", FAIL,
                      "safepool is not importable: %s" % harness.describe_error(exc),
                      "See the Install check above; if it is OK, reinstall safepool and run "
                      "`python3 -c 'from safepool import SafeProcessPoolExecutor'` to see "
                      "the full error.")]
    code = "import sys; from safepool.cli.doctor import self_test_main; sys.exit(self_test_main())"
    run = harness.run_child([sys.executable, "-c", code], SELF_TEST_TIMEOUT)
    steps = json.loads(run.line) if run.line else {}
    harness.kill_listed(steps.pop("pids", None))
    harness.killpg(run.pid)  # anything the self-test left in its process group
    advice = "This is a bug or an environment problem; please report it with this output."
    if not run.line:
        why = ("timed out after %.0f s" % SELF_TEST_TIMEOUT if run.timed_out
               else "exited with status %s" % run.returncode)
        return [check("self_test", "Self-test", FAIL, "the self-test %s; stderr: %s"
                      % (why, run.stderr.strip()[-300:] or "(empty)"), advice)]
    checks = []
    if "error" in steps:
        checks.append(check("self_test", "Self-test", FAIL, steps["error"]["detail"], advice))
    for key, title, what in SELF_TEST_STEPS:
        if key in steps:
            ok = steps[key]["ok"]
            checks.append(check("self_test_" + key, title, OK if ok else FAIL,
                                "%s: %s" % (what, steps[key]["detail"]),
                                "" if ok else advice))
    if run.exit_hung:
        checks.append(check("self_test_exit", "Self-test: exit", FAIL,
                            "the interpreter did not exit within %.0f s after shutdown"
                            % harness.EXIT_GRACE, advice))
    return checks


# --------------------------------------------------------------------------------------------
# The doctor command.
# --------------------------------------------------------------------------------------------

ENVIRONMENT_CHECKS = [check_python, check_install, check_start_method, check_cpu_count,
                      check_memory_limit, check_nproc, check_nofile, check_pid1]


def collect(self_test: bool = True) -> List[Check]:
    """Run every check; a check that crashes is itself reported as a FAIL."""
    checks = []
    for fn in ENVIRONMENT_CHECKS:
        try:
            checks.append(fn())
        except Exception as exc:
            checks.append(check(fn.__name__[len("check_"):], fn.__name__, FAIL,
                                "the check itself failed: %s" % harness.describe_error(exc)))
    if self_test:
        checks.extend(self_test_checks())
    checks.extend(security_checks(start=self_test))
    return checks


def security_checks(start: bool = True) -> List[Check]:
    """The forkserver's socket (CVE-2022-42919) and what a task's exec'd program inherits."""
    from .._security_checks import security_report

    try:
        parts = security_report(start=start)
    except Exception as exc:
        return [check("security", "Security", FAIL,
                      "the check itself failed: %s" % harness.describe_error(exc))]
    return [check(p["id"], p["title"], p["status"], p["detail"], p.get("advice", ""))
            for p in parts.values()]


def format_checks(checks: List[Check], width: Optional[int] = None) -> str:
    """The checks as text wrapped to ``width`` (default: the terminal's), advice indented
    under the check it belongs to."""
    width = width or terminal_width()
    title = max(len(c.title) for c in checks) if checks else 0
    indent = " " * (2 + 4 + 2 + title + 2)
    lines = ["safepool doctor", ""]
    for c in checks:
        lines += wrap(c.detail, width, indent, "  %-4s  %s" % (c.status, c.title))
        if c.advice and c.status != OK:
            lines += wrap("-> " + c.advice, width, indent)
    counts = {s: sum(1 for c in checks if c.status == s) for s in (OK, WARN, FAIL)}
    lines += ["", "%d OK, %d WARN, %d FAIL" % (counts[OK], counts[WARN], counts[FAIL])]
    return "\n".join(lines) + "\n"


def run_doctor(options: argparse.Namespace) -> int:
    """Run the checks, print them (text or JSON); 1 if any FAILs, else 0."""
    checks = collect(self_test=not options.no_self_test)
    status = 1 if any(c.status == FAIL for c in checks) else 0
    if options.json:
        report = {"checks": [c._asdict() for c in checks],
                  "counts": {s: sum(1 for c in checks if c.status == s)
                             for s in (OK, WARN, FAIL)},
                  "security": {c.id: c._asdict() for c in checks
                               if c.id in ("forkserver_socket", "exec_inheritance")},
                  "exit_status": status}
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(format_checks(checks))
    return status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``doctor`` subcommand's options."""
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument("--no-self-test", action="store_true",
                        help="skip the live self-test (environment checks only)")
