"""Run CPython 3.13's own ``concurrent.futures`` process-pool tests against ``DaskExecutor``.

Usage (Python 3.13 with its ``test`` package, and ``pip install 'safepool[dask]'``)::

    python tests/cpython_suite/run_cpython_suite_dask.py [-v] [-k PATTERN ...] [--list]

A parity report, like ``run_cpython_suite.py`` for the local executor (whose selection,
result reporting and watchdog this runner reuses; that file is not changed). Nothing of
CPython's test code is copied: the suite is imported from the interpreter's standard library.

* One ``distributed.LocalCluster`` (2 worker processes, 1 thread each) serves the whole run.
  Every executor a test builds is a ``SuiteDaskExecutor``: a ``DaskExecutor`` on that cluster
  that takes the stdlib constructor's arguments (``mp_context`` is checked and otherwise
  ignored: the pools on the cluster choose their own start method).
* Only the forkserver variant runs: ``mp_context`` does not reach the cluster, so the spawn
  variant would repeat the same tests.
* Child interpreters the shutdown tests start get a prelude that makes the executor
  importable by the name the tests format into their scripts, on the same cluster.
* ``EXCLUDED`` below names every test left out and why. The reasons are of three kinds:
  the test reads the stdlib's private internals (as for the local executor), it asserts
  behaviour safepool changes on purpose, or it needs what a cluster cannot give (objects that
  only work between a parent and the children it forked or spawned, such as a
  ``multiprocessing.Event``, or a task that reaches into the client process).

Exit status: 0 when nothing failed, 1 otherwise (2 for a usage or set-up error).
"""
import argparse
import fnmatch
import os
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run_cpython_suite as base  # noqa: E402  (helpers only: selection, result, watchdog)

ADDRESS_ENV = "SAFEPOOL_SUITE_DASK_ADDRESS"

_PRIVATE = base._PRIVATE
_BY_DESIGN = base._BY_DESIGN
_CLUSTER = "a cluster cannot: "

EXCLUDED = {
    # -- reads or patches the stdlib's private machinery (as for the local executor) --------
    "test_process_pool.*.test_idle_process_reuse_*":
        _PRIVATE + "counts executor._processes (the local pool's workers); a DaskExecutor's "
        "processes are on the Dask workers.",
    "test_process_pool.*.test_killed_child":
        _PRIVATE + "kills a process of executor._processes (and expects the stdlib's broken "
        "pool: safepool fails only that task, on a cluster as locally).",
    "test_process_pool.*.test_max_tasks_per_child_defaults_to_spawn_context":
        _PRIVATE + "reads executor._mp_context; the pools on the cluster choose their own.",
    "test_process_pool.*.test_python_finalization_error":
        _PRIVATE + "makes every thread start after the first fail, to hit the stdlib pool's "
        "second internal thread; a Dask client needs threads of its own to reach the cluster, "
        "so the outcome would test Dask, not the executor.",
    "test_shutdown.*.test_context_manager_shutdown":
        _PRIVATE + "joins the processes of executor._processes after the with block.",
    "test_shutdown.*.test_processes_terminate":
        _PRIVATE + "counts and joins executor._processes.",
    "test_shutdown.*.test_shutdown_no_wait":
        _PRIVATE + "joins executor._executor_manager_thread and executor._processes.",
    "test_shutdown.*.test_del_shutdown":
        _PRIVATE + "joins executor._executor_manager_thread and executor._call_queue.",
    "test_deadlock.*.test_shutdown_deadlock_pickle":
        _PRIVATE + "reads executor._executor_manager_thread to join it.",
    # -- safepool changes this on purpose (as for the local executor) ---------------------
    "test_shutdown.*.test_cancel_futures":
        _BY_DESIGN + "submits 50 tasks and at once calls shutdown(cancel_futures=True), then "
        "asserts that some were not cancelled. A task is RUNNING only once the executor's "
        "dispatcher thread has handed it to the cluster; when shutdown() comes first every "
        "task is still pending and all 50 are cancelled, as documented ('cancel all pending "
        "futures that the executor has not started running'). test_dask.py's "
        "test_shutdown_cancel_futures_cancels_what_had_not_started tests the same with tasks "
        "known to be running.",
    # -- what a cluster cannot give --------------------------------------------------------
    "test_process_pool.*.test_ressources_gced_in_workers":
        _CLUSTER + "passes a multiprocessing.Manager() Event proxy to the task; a proxy "
        "connects back with the client's authkey, which processes on the cluster (started by "
        "the Dask scheduler's side, not forked or spawned by the client) do not have.",
    "test_init.*FailingInitializerTest.test_initializer":
        _CLUSTER + "passes a multiprocessing Queue (of the client's context) to the "
        "initializer in initargs; such a queue can only be inherited by processes the client "
        "starts itself, never sent to a cluster ('Queue objects should only be shared between "
        "processes through inheritance'). test_init's other initializer tests, with picklable "
        "initargs, pass.",
    "test_init.FailingInitializerResourcesTest.*":
        _CLUSTER + "runs FailingInitializerTest.test_initializer (above: its Queue cannot "
        "reach a cluster), then checks that the client's resource tracker has nothing left; "
        "the Queue that test could not send is what is left.",
    "test_shutdown.*.test_interpreter_shutdown":
        _CLUSTER + "asserts that what a task prints appears on the client's stdout; a task on "
        "a cluster prints to its Dask worker's stdout. (The test's other assertion, nothing "
        "on stderr at interpreter exit with a task still running, held.)",
    "test_process_pool.*.test_saturation":
        _PRIVATE + "counts executor._processes right after submit().",
    "test_process_pool.*.test_traceback":
        _CLUSTER + "asserts that the remote traceback shows the source line of the failing "
        "function. The function is a method of a class the suite generates at run time, which "
        "cloudpickle (Dask's and DaskExecutor's way to send functions) ships by value; its code "
        "then has no source file on the worker, so the traceback names the frame and line "
        "number but cannot quote the line. (The exception, its type and the RemoteTraceback "
        "cause are there.)",
    "test_process_pool.*.test_max_tasks_per_child":
        _CLUSTER + "asserts that two consecutive tasks ran in the same process; on a cluster "
        "the scheduler may send them to different Dask workers, each with its own pool "
        "(max_tasks_per_child holds per pool process).",
}

KEEP_PREFIXES = ("ProcessPoolForkserver",)
DROP_PREFIXES = {
    "ProcessPoolSpawn": "spawn: mp_context does not reach the cluster; the same tests as the "
                        "forkserver variant",
    "ProcessPoolFork": "fork start method: refused by safepool by design",
    "ThreadPool": "ThreadPoolExecutor: not safepool's",
}
KEEP_CLASSES = base.KEEP_CLASSES


def _suite_executor_class():
    from safepool.dask import DaskExecutor

    class SuiteDaskExecutor(DaskExecutor):
        """A DaskExecutor on the run's cluster, built with the stdlib's arguments."""

        def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=(),
                     *, max_tasks_per_child=None):
            if mp_context is not None:
                from safepool._process import resolve_context

                resolve_context(mp_context)  # the same errors as the local executor
            super().__init__(os.environ[ADDRESS_ENV], max_workers=max_workers,
                             initializer=initializer, initargs=initargs,
                             max_tasks_per_child=max_tasks_per_child)

    SuiteDaskExecutor.__module__ = __name__
    return SuiteDaskExecutor


def _prelude() -> str:
    root = os.path.dirname(os.path.dirname(HERE))
    return ("import sys; sys.path[:0] = [%r, %r]; import concurrent.futures; "
            "import run_cpython_suite_dask as r; "
            "concurrent.futures.SuiteDaskExecutor = r._suite_executor_class()\n" % (root, HERE))


#: Runs in its own interpreter: a LocalCluster that lives until its stdin closes.
_CLUSTER_SCRIPT = """
import sys, distributed
with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                              dashboard_address=":0") as cluster:
    print(cluster.scheduler_address, flush=True)
    sys.stdin.read()
"""


def _start_cluster():
    """Start the run's LocalCluster in a separate interpreter, not in this one.

    Started from here, its worker processes would inherit this interpreter's multiprocessing
    resource tracker, and the suite's module clean-up (``multiprocessing.util._cleanup_tests``)
    waits for that tracker to exit, which it cannot while they live: the run would hang.
    """
    proc = subprocess.Popen([sys.executable, "-c", _CLUSTER_SCRIPT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = proc.stdout.readline().strip()
    if not address:
        proc.kill()
        proc.wait()
        raise RuntimeError("the LocalCluster did not start")
    return proc, address


def _stop_cluster(proc) -> None:
    proc.stdin.close()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _verdict(cls_name: str):
    if cls_name in KEEP_CLASSES or cls_name.startswith(KEEP_PREFIXES):
        return "keep", None
    for prefix, reason in DROP_PREFIXES.items():
        if cls_name.startswith(prefix):
            return "drop", reason
    return "unknown", None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", dest="patterns", action="append", default=[])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--watchdog", type=float, default=base.PER_TEST_WATCHDOG)
    args = parser.parse_args(argv)

    base._import_safepool()
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("needs dask and distributed: pip install 'safepool[dask]'", file=sys.stderr)
        return 2

    import importlib
    from concurrent import futures

    from test import support

    support.verbose = 0
    try:
        util = importlib.import_module(base.SUITE_PACKAGE + ".util")
        modules = [importlib.import_module(f"{base.SUITE_PACKAGE}.{name}")
                   for name in base.MODULES]
    except ImportError as exc:
        print(f"cannot import CPython's test suite ({exc})", file=sys.stderr)
        return 2

    loader = unittest.TestLoader()
    selected, excluded, dropped, unknown = [], [], {}, []
    hits = dict.fromkeys(EXCLUDED, 0)
    for module in modules:
        for test in base._iter_tests(loader.loadTestsFromModule(module)):
            sid = base._short_id(test)
            verdict, why = _verdict(type(test).__name__)
            if verdict == "drop":
                dropped[why] = dropped.get(why, 0) + 1
                continue
            if verdict == "unknown":
                unknown.append(sid)
                continue
            pattern = next((p for p in EXCLUDED if fnmatch.fnmatchcase(sid, p)), None)
            if pattern is not None:
                hits[pattern] += 1
                excluded.append(sid)
                continue
            if args.patterns and not any(p in sid or fnmatch.fnmatchcase(sid, p)
                                         for p in args.patterns):
                continue
            selected.append(test)
    if unknown:
        print("test classes neither kept nor dropped:", *unknown, sep="\n  ", file=sys.stderr)
        return 2
    stale = [p for p, n in hits.items() if not n]
    if stale:
        print("EXCLUDED patterns that match no test:", *stale, sep="\n  ", file=sys.stderr)
        return 2
    if not selected:
        print(f"no test matches {args.patterns}", file=sys.stderr)
        return 2
    if args.list:
        for test in selected:
            print(base._short_id(test))
        return 0

    cluster, address = _start_cluster()
    os.environ[ADDRESS_ENV] = address
    Suite = _suite_executor_class()
    util.ProcessPoolForkserverMixin.executor_type = Suite
    prelude = _prelude()
    for module in modules:
        if hasattr(module, "assert_python_ok"):
            base._patch_child_interpreters(module, prelude)
    futures.SuiteDaskExecutor = Suite  # as the child interpreters see it
    print(f"CPython {sys.version.split()[0]} concurrent.futures suite against DaskExecutor "
          f"on a LocalCluster at {address}", flush=True)
    original_ppe = futures.ProcessPoolExecutor
    futures.ProcessPoolExecutor = Suite
    started = time.monotonic()
    try:
        base._Result.watchdog = base._Watchdog(args.watchdog)
        runner = unittest.TextTestRunner(stream=sys.stderr,
                                         verbosity=2 if args.verbose else 1,
                                         resultclass=base._Result)
        suite = unittest.TestSuite(selected)
        selected.clear()
        result = runner.run(suite)
    finally:
        futures.ProcessPoolExecutor = original_ppe
        _stop_cluster(cluster)
    elapsed = time.monotonic() - started

    failed = result.failures + result.errors + [
        (t, "unexpected success") for t in result.unexpectedSuccesses]
    out = sys.stdout
    print("\n" + "=" * 78, file=out)
    print(f"CPython concurrent.futures suite vs DaskExecutor ({elapsed:.0f}s)", file=out)
    for why, n in sorted(dropped.items()):
        print(f"  not run: {n} tests of the variant '{why}'", file=out)
    print(f"\nexcluded: {len(excluded)}", file=out)
    for pattern, reason in EXCLUDED.items():
        n = hits[pattern]
        print(f"  {pattern}  [{n} test{'s' if n != 1 else ''}]\n      {reason}", file=out)
    if result.skipped:
        print(f"\nskipped by the suite itself: {len(result.skipped)}", file=out)
        for test, why in result.skipped:
            print(f"  {base._short_id(test)}: {why}", file=out)
    if failed:
        print(f"\nFAILED ({len(failed)}):", file=out)
        for test, _ in failed:
            print(f"  {base._short_id(test) if hasattr(test, 'id') else test}", file=out)
    print(f"\nrun: {result.testsRun}  passed: {len(result.passed)}  "
          f"skipped: {len(result.skipped)}  excluded: {len(excluded)}  "
          f"failed: {len(failed)}", file=out)
    print("=" * 78, file=out)
    return 1 if failed or not result.testsRun else 0


if __name__ == "__main__":
    sys.exit(main())
