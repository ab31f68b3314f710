"""Run CPython 3.13's own ``concurrent.futures`` tests against SafeProcessPoolExecutor.

Usage (Python 3.13, with the ``test`` package of the standard library installed)::

    python tests/cpython_suite/run_cpython_suite.py [-v] [-k PATTERN ...] [--list]
                                                    [--watchdog SECONDS]

It runs the process-pool tests of the suite on forkserver and spawn, about 108 tests in one
to two minutes on 2 cores.

Nothing of CPython's test code is copied here: at run time this script imports the suite
(``test.test_concurrent_futures``) from the interpreter's own standard library and

* points the process-pool mixins (``ProcessPoolForkserverMixin``, ``ProcessPoolSpawnMixin``)
  at ``SafeProcessPoolExecutor``; every generated test class inherits ``executor_type`` from
  them, so every ``self.executor`` and every ``self.executor_type(...)`` is ours;
* for the duration of the run, binds ``concurrent.futures.ProcessPoolExecutor`` to
  ``SafeProcessPoolExecutor``, so the tests that construct ``futures.ProcessPoolExecutor(...)``
  directly build ours too (and ``executor_type == futures.ProcessPoolExecutor`` is true, as it
  is for the stdlib pool);
* makes ``from concurrent.futures import SafeProcessPoolExecutor`` work in the child
  interpreters the shutdown tests start (``assert_python_ok('-c', ...)``), by putting a
  one-line prelude before their code that imports safepool and binds the name;
* drops the ``fork`` variants (safepool refuses ``fork`` by design) and the thread-pool
  variants (not ours), and the tests listed in ``EXCLUDED`` below, each with its reason;
* runs the tests in ``RUN_DESPITE_STDLIB_SKIP``, which the suite skips only because the
  stdlib's own pool hangs in them;
* runs the rest with unittest and prints: run, passed, skipped, excluded, failed. A test that
  hangs ends the run after ``--watchdog`` seconds with every thread's traceback.

Exit status: 0 when nothing failed, 1 otherwise (2 for a usage or set-up error).
"""
import argparse
import faulthandler
import fnmatch
import os
import sys
import threading
import time
import unittest

# ---------------------------------------------------------------------------------------------
# The one place where tests are left out. Patterns are fnmatch patterns matched against the
# test id without its "test.test_concurrent_futures." prefix, e.g.
# "test_process_pool.ProcessPoolSpawnProcessPoolExecutorTest.test_killed_child".
# Allowed reasons: the test reads or patches stdlib private internals that safepool does not
# have, or it asserts stdlib behaviour that safepool changes on purpose (docs/design.rst).
# ---------------------------------------------------------------------------------------------
_PRIVATE = "stdlib private internals: "
_BY_DESIGN = "by design: "

EXCLUDED = {
    # -- safepool changes this on purpose ------------------------------------------------------
    "test_process_pool.*.test_killed_child":
        _BY_DESIGN + "the test expects the stdlib's permanently broken pool: after a worker "
        "is killed it asserts that a later submit() raises BrokenProcessPool, while safepool "
        "fails only the killed task (WorkerLostError, a BrokenProcessPool) and replaces the "
        "worker. Run here, it fails earlier (verified on 3.13): it takes a process with "
        "next(iter(executor._processes.values())) right after submit(), and safepool's manager "
        "thread starts workers asynchronously, so _processes is still empty: StopIteration. "
        "Given a process a moment later, terminate() usually lands before the task started, "
        "so the task is resent to the replacement and succeeds (no BrokenProcessPool either).",
    "test_process_pool.*.test_max_tasks_per_child_defaults_to_spawn_context":
        _BY_DESIGN + "with mp_context=None safepool always starts workers with forkserver "
        "(where available), which is already safe with max_tasks_per_child; the stdlib switches "
        "to 'spawn' only because its default there is 'fork', which safepool never uses.",

    "test_process_pool.*.test_saturation":
        _BY_DESIGN + "asserts len(executor._processes) == max_workers right after submit(): "
        "the stdlib starts workers synchronously inside submit(), safepool starts them from its "
        "manager thread (docs/design.rst), so right after submit() there may "
        "be none yet. (Its tasks, bound methods of a multiprocessing Semaphore, cannot be "
        "pickled and fail in both pools; safepool reports that at submit() and needs no "
        "worker at all.)",
    "test_shutdown.*.test_processes_terminate":
        _BY_DESIGN + "its task, acquire_lock, is a function local to the test, which cannot "
        "be pickled: safepool fails each future at submit() (TaskPicklingError; the stdlib "
        "fails them too on forkserver and spawn, later, in its feeder thread) and so needs, "
        "and starts, no worker at all. The test then asserts len(executor._processes) == 3 and "
        "gets 0 (verified on 3.13, both start methods); even with a picklable task, safepool "
        "starts workers from its manager thread, not inside submit(), so the count right after "
        "submit() could not be relied on. Shutting down a pool whose workers have not "
        "started yet is covered by our own tests/test_shutdown.py::"
        "test_shutdown_cancel_futures_before_the_workers_started.",
    "test_shutdown.*.test_cancel_futures":
        _BY_DESIGN + "submits 50 tasks and at once calls shutdown(cancel_futures=True), then "
        "asserts that some were not cancelled. The stdlib marks up to max_workers+1 tasks "
        "RUNNING as its manager thread moves them to the call queue, while submit() is still "
        "busy starting processes; safepool marks a task RUNNING only when it is written to a "
        "started worker, and starts workers from its manager thread, so when shutdown() comes "
        "first every task is still pending and all 50 are cancelled, as documented ('cancel "
        "all pending futures that the executor has not started running').",

    # -- reads or patches the stdlib's private machinery ----------------------------------------
    "test_shutdown.*.test_del_shutdown":
        _PRIVATE + "joins executor._executor_manager_thread and executor._call_queue "
        "(safepool has one manager thread of its own and per-worker pipes, no call queue).",
    "test_shutdown.*.test_shutdown_no_wait":
        _PRIVATE + "joins executor._executor_manager_thread and executor._call_queue.",
    "test_deadlock.*.test_shutdown_deadlock_pickle":
        _PRIVATE + "reads executor._executor_manager_thread to join it.",
    "test_deadlock.*.test_gh105829_should_not_deadlock_if_wakeup_pipe_full":
        _PRIVATE + "replaces concurrent.futures.process._ExecutorManagerThread.run and "
        "_ThreadWakeup to provoke a stdlib-specific deadlock; safepool uses neither, so the "
        "mocks would be inert and the test would pass without testing anything.",
    "test_process_pool.*.test_python_finalization_error":
        _PRIVATE + "mocks threading._start_joinable_thread to fail at the stdlib pool's "
        "*second* internal thread (its call-queue feeder thread); safepool starts exactly one "
        "thread (the manager), so the injected failure never fires. Our own version fails "
        "the first thread start: tests/test_spawn_failure.py::"
        "test_manager_thread_that_cannot_start.",
}

#: Tests the suite skips for a process pool because the *stdlib's* pool fails them; they are run
#: against safepool anyway (with ``concurrent.futures.ProcessPoolExecutor`` left to the stdlib
#: class while they run, which is all their skip condition looks at).
RUN_DESPITE_STDLIB_SKIP = {
    "test_shutdown.*.test_hang_gh83386":
        "skipped by the suite when executor_type == futures.ProcessPoolExecutor ('Hangs, see "
        "gh-83386'); safepool's shutdown(wait=False) must not hang at exit, so it is run.",
}

SUITE_PACKAGE = "test.test_concurrent_futures"
#: Modules of the suite that test process pools. test_future (Future objects alone) and
#: test_thread_pool (ThreadPoolExecutor alone) never touch a process pool and are not run.
MODULES = (
    "test_process_pool",
    "test_shutdown",
    "test_deadlock",
    "test_init",
    "test_wait",
    "test_as_completed",
)
#: Generated class-name prefixes: the variants we run, and those left out with why.
KEEP_PREFIXES = ("ProcessPoolForkserver", "ProcessPoolSpawn")
DROP_PREFIXES = {
    "ProcessPoolFork": "fork start method: refused by safepool by design (ValueError)",
    "ThreadPool": "ThreadPoolExecutor: not safepool's",
}
#: Test classes of the suite that are not generated from a mixin but exercise process pools.
KEEP_CLASSES = ("FailingInitializerResourcesTest",)

#: A single test running longer than this dumps every thread's traceback and ends the run
#: (the slowest test takes about 7 s; a deadlock must not stall CI for the suite's 5 minutes).
PER_TEST_WATCHDOG = 120.0


def _import_safepool():
    """Import safepool: the installed one (tox), else the source tree this file belongs to."""
    try:
        import safepool
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        sys.path.insert(0, root)
        import safepool
    return safepool


def _prelude(safepool) -> str:
    """Code put before a child interpreter's ``-c`` script so it can import our executor.

    The children run in isolated mode (-I: no PYTHONPATH, no cwd on sys.path), hence the
    explicit path. ``import multiprocessing`` binds only a module name in the child's
    ``__main__``; it changes nothing the tests check.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(safepool.__file__)))
    return ("import sys; sys.path.insert(0, %r); import multiprocessing, concurrent.futures, "
            "safepool; concurrent.futures.SafeProcessPoolExecutor = "
            "safepool.SafeProcessPoolExecutor\n" % root)


def _patch_child_interpreters(module, prelude: str) -> None:
    """Wrap the module's ``assert_python_ok`` so ``-c`` scripts start with ``prelude``."""
    original = module.assert_python_ok

    def assert_python_ok(*args, **env_vars):
        args = list(args)
        if "-c" in args:
            i = args.index("-c") + 1
            args[i] = prelude + args[i]
        return original(*args, **env_vars)

    module.assert_python_ok = assert_python_ok


def _run_with_stdlib_name(test, stdlib_class) -> None:
    """Let ``test`` run with ``concurrent.futures.ProcessPoolExecutor`` bound to the stdlib's
    class, so that its ``executor_type == futures.ProcessPoolExecutor`` skip does not fire."""
    from concurrent import futures

    method = getattr(test, test._testMethodName)

    def run_unskipped(*args, **kwargs):
        ours = futures.ProcessPoolExecutor
        futures.ProcessPoolExecutor = stdlib_class
        try:
            return method(*args, **kwargs)
        finally:
            futures.ProcessPoolExecutor = ours

    setattr(test, test._testMethodName, run_unskipped)


def _iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _iter_tests(item)
        else:
            yield item


def _short_id(test) -> str:
    tid = test.id()
    prefix = SUITE_PACKAGE + "."
    return tid[len(prefix):] if tid.startswith(prefix) else tid


def _excluded_reason(short_id: str):
    for pattern, reason in EXCLUDED.items():
        if fnmatch.fnmatchcase(short_id, pattern):
            return pattern, reason
    return None, None


def _class_verdict(cls_name: str):
    """('keep', None) or ('drop', reason) for a test class of the suite."""
    if cls_name in KEEP_CLASSES or cls_name.startswith(KEEP_PREFIXES):
        return "keep", None
    for prefix, reason in DROP_PREFIXES.items():
        if cls_name.startswith(prefix):
            return "drop", reason
    return "unknown", None


class _Watchdog:
    """Ends the run if one test hangs: names it, dumps every thread, reports what ran so far.

    One daemon thread for the whole run, started before the first test, so the suite's
    per-test thread accounting sees it in both its "before" and "after" counts.
    """

    def __init__(self, limit: float):
        self.limit = limit
        self.test_id = None
        self.deadline = None
        self.result = None
        threading.Thread(target=self._watch, name="cpython-suite-watchdog", daemon=True).start()

    def arm(self, test_id: str) -> None:
        self.test_id, self.deadline = test_id, time.monotonic() + self.limit

    def disarm(self) -> None:
        self.deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            deadline = self.deadline
            if deadline is None or time.monotonic() < deadline:
                continue
            err = sys.__stderr__
            print(f"\n\nWATCHDOG: {self.test_id} still running after {self.limit:.0f}s "
                  "(a hang); every thread's traceback:", file=err, flush=True)
            faulthandler.dump_traceback(file=err, all_threads=True)
            r = self.result
            if r is not None:
                failed = [_short_id(t) for t, _ in r.failures + r.errors]
                print(f"\nbefore the hang: run {r.testsRun}, passed {len(r.passed)}, "
                      f"skipped {len(r.skipped)}, failed {len(failed)}: {failed}\n"
                      f"HUNG: {self.test_id}", file=err, flush=True)
            os._exit(1)  # the workers die with us: safepool's lifeline pipes


class _Result(unittest.TextTestResult):
    """Counts passes too, times each test, and arms the watchdog per test."""

    watchdog = None  # set by main()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = []
        self.durations = {}
        self._t0 = None
        if self.watchdog is not None:
            self.watchdog.result = self

    def startTest(self, test):
        self._t0 = time.monotonic()
        if self.watchdog is not None:
            self.watchdog.arm(_short_id(test))
        super().startTest(test)

    def stopTest(self, test):
        if self.watchdog is not None:
            self.watchdog.disarm()
        self.durations[_short_id(test)] = time.monotonic() - (self._t0 or time.monotonic())
        super().stopTest(test)

    def addSuccess(self, test):
        self.passed.append(_short_id(test))  # not the test: it holds its executor, queues...
        super().addSuccess(test)

    # Tracebacks are printed as they happen, not at the end: if the watchdog ends a hung run,
    # the failures before it are not lost.
    def addError(self, test, err):
        super().addError(test, err)
        self._print_now("ERROR", test, self.errors[-1][1])

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._print_now("FAIL", test, self.failures[-1][1])

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failures = self.failures if issubclass(err[0], test.failureException) else self.errors
            self._print_now("FAIL", subtest, failures[-1][1])

    def _print_now(self, flavour, test, text):
        self.stream.writeln()
        self.stream.writeln(self.separator1)
        self.stream.writeln(f"{flavour}: {self.getDescription(test)}")
        self.stream.writeln(self.separator2)
        self.stream.writeln(text)
        self.stream.flush()

    def printErrors(self):
        pass  # already printed by _print_now


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", dest="patterns", action="append", default=[],
                        help="run only tests whose id contains this substring or matches this "
                             "fnmatch pattern (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per test")
    parser.add_argument("--list", action="store_true", help="list the selection and exit")
    parser.add_argument("--watchdog", type=float, default=PER_TEST_WATCHDOG, metavar="SECONDS",
                        help="end the run if one test takes longer (default: %(default)s)")
    args = parser.parse_args(argv)

    if sys.version_info[:2] != (3, 13):
        print(f"warning: this runner targets CPython 3.13's suite; running "
              f"{sys.version.split()[0]}", file=sys.stderr)
    safepool = _import_safepool()
    Safe = safepool.SafeProcessPoolExecutor

    import importlib
    from concurrent import futures

    from test import support

    support.verbose = 0  # the suite would print each test's duration to stdout

    try:
        util = importlib.import_module(SUITE_PACKAGE + ".util")
        modules = [importlib.import_module(f"{SUITE_PACKAGE}.{name}") for name in MODULES]
    except ImportError as exc:
        print(f"cannot import CPython's test suite ({exc}); this needs a CPython with its "
              "'test' package installed", file=sys.stderr)
        return 2

    # 1. Our executor in the process-pool mixins: the generated test classes inherit it.
    util.ProcessPoolForkserverMixin.executor_type = Safe
    util.ProcessPoolSpawnMixin.executor_type = Safe
    # 2. Child interpreters can import it by the name the tests format into their scripts.
    prelude = _prelude(safepool)
    for module in modules:
        if hasattr(module, "assert_python_ok"):
            _patch_child_interpreters(module, prelude)

    # 3. Select.
    loader = unittest.TestLoader()
    selected, excluded, dropped, unknown = [], [], {}, []
    pattern_hits = dict.fromkeys(EXCLUDED, 0)
    unskip_hits = dict.fromkeys(RUN_DESPITE_STDLIB_SKIP, 0)
    for module in modules:
        for test in _iter_tests(loader.loadTestsFromModule(module)):
            sid = _short_id(test)
            verdict, why = _class_verdict(type(test).__name__)
            if verdict == "drop":
                dropped[why] = dropped.get(why, 0) + 1
                continue
            if verdict == "unknown":
                unknown.append(sid)
                continue
            pattern, reason = _excluded_reason(sid)
            if pattern is not None:
                pattern_hits[pattern] += 1
                excluded.append((sid, reason))
                continue
            if args.patterns and not any(p in sid or fnmatch.fnmatchcase(sid, p)
                                         for p in args.patterns):
                continue
            for pattern in RUN_DESPITE_STDLIB_SKIP:
                if fnmatch.fnmatchcase(sid, pattern):
                    unskip_hits[pattern] += 1
                    _run_with_stdlib_name(test, futures.ProcessPoolExecutor)
            selected.append(test)
    if unknown:
        # A new class in a future 3.13.x suite: decide about it explicitly, never silently.
        print("test classes neither kept nor dropped (update KEEP/DROP in this runner):",
              *unknown, sep="\n  ", file=sys.stderr)
        return 2
    stale = [p for p, hits in pattern_hits.items() if not hits]
    if not args.patterns:
        stale += [p for p, hits in unskip_hits.items() if not hits]
    if stale:
        print("EXCLUDED / RUN_DESPITE_STDLIB_SKIP patterns that match no test (remove them):",
              *stale, sep="\n  ", file=sys.stderr)
        return 2

    if not selected:
        print(f"no test matches {args.patterns}", file=sys.stderr)
        return 2
    if args.list:
        for test in selected:
            print(_short_id(test))
        return 0

    # 4. Run, with concurrent.futures.ProcessPoolExecutor bound to ours for the duration.
    print(f"CPython {sys.version.split()[0]} concurrent.futures suite against "
          f"{Safe.__module__}.{Safe.__qualname__} ({os.path.dirname(safepool.__file__)})",
          flush=True)
    original_ppe = futures.ProcessPoolExecutor
    futures.ProcessPoolExecutor = Safe
    started = time.monotonic()
    try:
        _Result.watchdog = _Watchdog(args.watchdog)
        runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2 if args.verbose else 1,
                                         resultclass=_Result)
        suite = unittest.TestSuite(selected)
        # Only the suite may hold the tests: it drops each one once run, as `python -m unittest`
        # does, so the executors, queues and semaphores they hold are freed test by test.
        selected.clear()
        result = runner.run(suite)
    finally:
        futures.ProcessPoolExecutor = original_ppe
    elapsed = time.monotonic() - started

    # 5. Report.
    failed = result.failures + result.errors + [
        (t, "unexpected success") for t in result.unexpectedSuccesses]
    out = sys.stdout
    print("\n" + "=" * 78, file=out)
    print(f"CPython concurrent.futures suite vs SafeProcessPoolExecutor ({elapsed:.0f}s)",
          file=out)
    print("  start methods: forkserver, spawn", file=out)
    for why, n in sorted(dropped.items()):
        print(f"  not run: {n} tests of the variant '{why}'", file=out)
    print(f"\nexcluded: {len(excluded)}", file=out)
    for pattern, reason in EXCLUDED.items():
        n = pattern_hits[pattern]
        print(f"  {pattern}  [{n} test{'s' if n != 1 else ''}]\n      {reason}", file=out)
    for pattern, why in RUN_DESPITE_STDLIB_SKIP.items():
        print(f"\nrun although the suite skips it for process pools: {pattern}  "
              f"[{unskip_hits[pattern]} tests]\n      {why}", file=out)
    if result.skipped:
        print(f"\nskipped by the suite itself: {len(result.skipped)}", file=out)
        for test, why in result.skipped:
            print(f"  {_short_id(test)}: {why}", file=out)
    slowest = sorted(result.durations.items(), key=lambda kv: -kv[1])[:8]
    print("\nslowest:", ", ".join(f"{sid.rsplit('.', 1)[-1]} {d:.1f}s" for sid, d in slowest),
          file=out)
    if failed:
        print(f"\nFAILED ({len(failed)}):", file=out)
        for test, _ in failed:
            print(f"  {_short_id(test) if hasattr(test, 'id') else test}", file=out)
    print(f"\nrun: {result.testsRun}  passed: {len(result.passed)}  "
          f"skipped: {len(result.skipped)}  excluded: {len(excluded)}  "
          f"failed: {len(failed)}", file=out)
    print("=" * 78, file=out)
    return 1 if failed or not result.testsRun else 0


if __name__ == "__main__":
    sys.exit(main())
