"""Run ONE benchmark measurement in this (fresh) process and print it as one JSON line.

    python benchmarks/_one.py --executor safepool --case latency [--quick] [--size N]

``run.py`` starts one of these per measurement so that no executor inherits another's warm
caches, leftover threads, forkserver or leaked memory. The last line of stdout is a JSON object:

    {"executor": ..., "case": ..., "status": "ok" | "never" | "error" | "unavailable",
     "value": float or null, "unit": ..., "note": str, "extra": {...}, "wall": seconds}

Every executor is driven through a tiny adapter (``submit``/``map``/``shutdown``), because pebble's
API differs from ``concurrent.futures``.
"""

import argparse
import gc
import inspect
import json
import os
import signal
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _tasks  # noqa: E402  (needs the sys.path set-up above)
from _cases import CASES, MAX_WORKERS, MB, case_size  # noqa: E402

perf = time.perf_counter


class Unavailable(Exception):
    """The executor's package cannot be imported here."""


# --------------------------------------------------------------------------------------------
# Executor adapters
# --------------------------------------------------------------------------------------------


class FuturesAdapter:
    """Anything with the ``concurrent.futures.Executor`` interface (stdlib, safepool, loky)."""

    def __init__(self, executor):
        self.executor = executor

    def submit(self, fn, *args):
        return self.executor.submit(fn, *args)

    def map(self, fn, iterable, chunksize=1, buffersize=None):
        if buffersize is None:
            return self.executor.map(fn, iterable, chunksize=chunksize)
        return self.executor.map(fn, iterable, chunksize=chunksize, buffersize=buffersize)

    def supports_buffersize(self):
        try:
            return "buffersize" in inspect.signature(self.executor.map).parameters
        except (TypeError, ValueError):
            return False

    def shutdown(self, wait=True):
        self.executor.shutdown(wait=wait)


class PebbleAdapter:
    """``pebble.ProcessPool``: ``schedule(fn, args=...)``; ``map`` returns a future of results."""

    def __init__(self, pool):
        self.pool = pool

    def submit(self, fn, *args):
        return self.pool.schedule(fn, args=args)

    def map(self, fn, iterable, chunksize=1, buffersize=None):
        assert buffersize is None
        return self.pool.map(fn, iterable, chunksize=chunksize).result()

    def supports_buffersize(self):
        return False

    def shutdown(self, wait=True):
        # close() = accept no more work and let the pending tasks finish; join() waits for it.
        self.pool.close()
        if wait:
            self.pool.join()


def executor_factory(name):
    """Import what ``name`` needs now and return a zero-argument constructor.

    Imports happen here, outside any timed region, so ``startup`` times only the pool itself.
    """
    if name.startswith("stdlib"):
        import concurrent.futures
        import multiprocessing

        method = {"stdlib": None, "stdlib-forkserver": "forkserver", "stdlib-spawn": "spawn"}[name]
        ctx = multiprocessing.get_context(method)

        def make():
            return FuturesAdapter(
                concurrent.futures.ProcessPoolExecutor(max_workers=MAX_WORKERS, mp_context=ctx)
            )

        return make
    if name.startswith("safepool"):
        try:
            import safepool
        except ImportError as exc:
            raise Unavailable("cannot import safepool: %s" % exc)
        if name == "safepool-spawn":
            import multiprocessing

            kwargs = {"mp_context": multiprocessing.get_context("spawn")}
        else:
            kwargs = {}

        executor_class = safepool.SafeProcessPoolExecutor  # loads the package's modules now

        def make():
            return FuturesAdapter(executor_class(max_workers=MAX_WORKERS, **kwargs))

        return make
    if name.startswith("loky"):
        try:
            import loky
        except ImportError as exc:
            raise Unavailable("cannot import loky: %s" % exc)
        if name == "loky-reusable":

            def make():
                return FuturesAdapter(loky.get_reusable_executor(max_workers=MAX_WORKERS))

            return make

        def make():
            return FuturesAdapter(loky.ProcessPoolExecutor(max_workers=MAX_WORKERS))

        return make
    if name == "pebble":
        try:
            import pebble
        except ImportError as exc:
            raise Unavailable("cannot import pebble: %s" % exc)

        def make():
            return PebbleAdapter(pebble.ProcessPool(max_workers=MAX_WORKERS))

        return make
    raise SystemExit("unknown executor %r" % name)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def warm_up(ex):
    """Make sure every worker has started and run a task (some pools spawn on demand)."""
    futures = [ex.submit(_tasks.sleep, 0.2) for _ in range(MAX_WORKERS)]
    pids = {f.result(timeout=60) for f in futures}
    ex.submit(_tasks.noop).result(timeout=60)
    return pids


def rss():
    import psutil

    return psutil.Process().memory_info().rss


# Direct children of the benchmark process that are helpers, not workers. Workers forked by a
# forkserver have the forkserver's command line too, but they are its children, not ours.
HELPER_MARKERS = ("forkserver", "resource_tracker", "semaphore_tracker")


def worker_pids():
    """Pids of the pool's worker processes: our descendants minus forkserver/tracker helpers."""
    import psutil

    me = psutil.Process()
    helpers = set()
    for child in me.children(recursive=False):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if any(marker in cmdline for marker in HELPER_MARKERS):
            helpers.add(child.pid)
    workers = []
    for proc in me.children(recursive=True):
        if proc.pid in helpers:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        workers.append(proc.pid)
    return sorted(workers)


# --------------------------------------------------------------------------------------------
# Cases: each returns (status, value, note, extra); status "ok" or "never"
# --------------------------------------------------------------------------------------------


def cpu():
    """CPU time (user + system) of this process, all threads: the parent's cost."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)  # microsecond resolution, unlike os.times()
    return r.ru_utime + r.ru_stime


def case_submit_noop(make, n):
    ex = make()
    try:
        warm_up(ex)
        c0 = cpu()
        t0 = perf()
        futures = [ex.submit(_tasks.noop) for _ in range(n)]
        t_submitted = perf()
        for f in futures:
            f.result()
        elapsed = perf() - t0
        parent_cpu = cpu() - c0
    finally:
        ex.shutdown(wait=True)
    extra = {
        "elapsed": elapsed,
        "submit_phase": t_submitted - t0,
        "n": n,
        "parent_cpu_us_per_task": 1e6 * parent_cpu / n,
    }
    return "ok", n / elapsed, "", extra


def _map_case(make, n, chunksize):
    ex = make()
    try:
        warm_up(ex)
        c0 = cpu()
        t0 = perf()
        results = list(ex.map(_tasks.square, range(n), chunksize=chunksize))
        elapsed = perf() - t0
        parent_cpu = cpu() - c0
    finally:
        ex.shutdown(wait=True)
    if len(results) != n or results[-1] != (n - 1) ** 2:
        raise AssertionError("map returned wrong results")
    extra = {
        "elapsed": elapsed,
        "n": n,
        "chunksize": chunksize,
        "parent_cpu_us_per_item": 1e6 * parent_cpu / n,
    }
    return "ok", n / elapsed, "", extra


def case_map_chunked(make, n):
    return _map_case(make, n, 1000)


def case_map_chunk1(make, n):
    return _map_case(make, n, 1)


def case_latency(make, n):
    ex = make()
    try:
        warm_up(ex)
        for _ in range(max(50, n // 10)):
            ex.submit(_tasks.noop).result()
        samples = []
        c0 = cpu()
        for _ in range(n):
            t0 = perf()
            ex.submit(_tasks.noop).result()
            samples.append(perf() - t0)
        parent_cpu = cpu() - c0
    finally:
        ex.shutdown(wait=True)
    samples.sort()
    extra = {
        "n": n,
        "p10": samples[len(samples) // 10],
        "p90": samples[len(samples) * 9 // 10],
        "p99": samples[len(samples) * 99 // 100],
        "max": samples[-1],
        "parent_cpu_us_per_call": 1e6 * parent_cpu / n,
    }
    return "ok", statistics.median(samples), "", extra


def case_startup(make, n):
    t0 = perf()
    ex = make()
    try:
        ex.submit(_tasks.noop).result(timeout=60)
        elapsed = perf() - t0
    finally:
        ex.shutdown(wait=True)
    return "ok", elapsed, "", {}


def case_shutdown(make, n):
    ex = make()
    try:
        warm_up(ex)
    except BaseException:
        ex.shutdown(wait=True)
        raise
    t0 = perf()
    ex.shutdown(wait=True)
    elapsed = perf() - t0
    return "ok", elapsed, "", {}


def _wait_dead(pid, timeout=10.0):
    """Wait until ``pid`` has exited (gone, or a zombie waiting for its parent to reap it)."""
    import psutil

    end = perf() + timeout
    while perf() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.0005)
    raise AssertionError("worker %d still alive %gs after SIGKILL" % (pid, timeout))


def case_recovery(make, n, deadline=30.0):
    """Kill one idle worker; time until a newly submitted task returns a result.

    The clock starts at the kill. We first wait until the victim is really dead, so that a pool
    which is about to declare itself broken cannot "win" by answering from the surviving worker
    before it notices. Tasks lost with the worker are retried; a pool whose submit() refuses
    work (BrokenProcessPool) will never recover. After the first result we check the pool is
    healthy (a burst of tasks on all workers succeeds) and record, as extra information, how
    long until a *replacement* worker answered (full capacity restored).
    """
    ex = make()
    try:
        task_pids = warm_up(ex)
        pids = worker_pids()
        if not pids:
            raise AssertionError("found no worker processes to kill")
        # Prefer a pid that we know ran a task; fall back to any worker found by psutil.
        known = [p for p in pids if p in task_pids]
        victim = (known or pids)[0]
        os.kill(victim, signal.SIGKILL)
        t0 = perf()
        _wait_dead(victim)
        extra = {"victim": victim, "workers_found": pids, "dead_after": perf() - t0}
        failures = extra["failures"] = []

        def never(reason):
            return "never", None, "never (%s)" % reason, extra

        elapsed = None
        while elapsed is None:
            remaining = deadline - (perf() - t0)
            if remaining <= 0:
                return never("no result in %gs" % deadline)
            try:
                future = ex.submit(_tasks.getpid)
            except Exception as exc:  # the pool refuses new work: it will never recover
                return never(type(exc).__name__)
            try:
                future.result(timeout=remaining)
            except Exception as exc:  # this task was lost with the worker; try the next one
                failures.append(type(exc).__name__)
                if len(failures) > 100:
                    return never(failures[-1])
                continue
            elapsed = perf() - t0

        # Is the pool really healthy, and when did a replacement worker start answering?
        while True:
            if perf() - t0 > deadline:
                return never("no replacement worker in %gs" % deadline)
            try:
                futures = [ex.submit(_tasks.sleep, 0.02) for _ in range(MAX_WORKERS)]
                answered = {f.result(timeout=deadline) for f in futures}
            except Exception as exc:
                return never(type(exc).__name__)
            if answered - set(pids):
                extra["replacement_answered_after"] = perf() - t0
                break
        return "ok", elapsed, "", extra
    finally:
        ex.shutdown(wait=True)


def case_bigdata(make, n):
    payload = b"\xab" * n
    ex = make()
    try:
        warm_up(ex)
        ex.submit(_tasks.echo, b"x" * 1024).result()
        t0 = perf()
        result = ex.submit(_tasks.echo, payload).result(timeout=600)
        elapsed = perf() - t0
    finally:
        ex.shutdown(wait=True)
    if len(result) != n:
        raise AssertionError("payload came back with the wrong size")
    return "ok", elapsed, "", {"bytes": n, "MB/s round trip": 2 * n / MB / elapsed}


def _run_many(ex, n, start, batch, use_map):
    """Run tasks ``start..start+n`` without keeping their futures alive."""
    if use_map:
        total = 0
        for _ in ex.map(_tasks.identity, range(start, start + n), chunksize=1, buffersize=batch):
            total += 1
        assert total == n
        return
    end = start + n
    for lo in range(start, end, batch):
        futures = [ex.submit(_tasks.identity, i) for i in range(lo, min(end, lo + batch))]
        for f in futures:
            f.result()
        del futures


def case_memory(make, n, batch=10000):
    import resource

    ex = make()
    try:
        use_map = ex.supports_buffersize()
        warm_up(ex)
        _run_many(ex, min(n, 5 * batch), 0, batch, use_map)
        gc.collect()
        rss0 = rss()
        # Sample RSS ten times along the way: steady growth (a leak) looks different from a
        # one-off step (allocator arenas, caches) even when the end-to-end numbers agree.
        samples = []
        step = max(1, n // 10)
        t0 = perf()
        for lo in range(0, n, step):
            _run_many(ex, min(step, n - lo), lo, batch, use_map)
            gc.collect()
            samples.append(round((rss() - rss0) / MB, 2))
        elapsed = perf() - t0
        rss1 = rss()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    finally:
        ex.shutdown(wait=True)
    extra = {
        "n": n,
        "method": "map(chunksize=1, buffersize=%d)" % batch
        if use_map
        else "submit batches of %d" % batch,
        "rss_start_MB": rss0 / MB,
        "rss_end_MB": rss1 / MB,
        "peak_over_start_MB": (peak - rss0) / MB if sys.platform.startswith("linux") else None,
        "tasks/s": n / elapsed,
        "growth_MB_at_each_10pct": samples,
        "second_half_growth_MB": samples[-1] - samples[len(samples) // 2 - 1]
        if len(samples) > 1
        else None,
    }
    return "ok", (rss1 - rss0) / MB, "", extra


CASE_FUNCS = {
    "submit_noop": case_submit_noop,
    "map_chunked": case_map_chunked,
    "map_chunk1": case_map_chunk1,
    "latency": case_latency,
    "startup": case_startup,
    "shutdown": case_shutdown,
    "recovery": case_recovery,
    "bigdata": case_bigdata,
    "memory": case_memory,
}
assert set(CASE_FUNCS) == set(CASES)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", required=True)
    parser.add_argument("--case", required=True, choices=list(CASES))
    parser.add_argument("--quick", action="store_true", help="use the case's smaller size")
    parser.add_argument("--size", type=int, default=None, help="override the case's size")
    args = parser.parse_args(argv)

    size = args.size if args.size is not None else case_size(args.case, args.quick)
    record = {
        "executor": args.executor,
        "case": args.case,
        "unit": CASES[args.case]["unit"],
        "size": size,
        "status": "error",
        "value": None,
        "note": "",
        "extra": {},
    }
    t_start = perf()
    try:
        make = executor_factory(args.executor)
        status, value, note, extra = CASE_FUNCS[args.case](make, size)
        record.update(status=status, value=value, note=note, extra=extra)
    except Unavailable as exc:
        record.update(status="unavailable", note=str(exc))
    except BaseException as exc:
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        record.update(status="error", note="%s: %s" % (type(exc).__name__, exc))
        record["extra"] = {"traceback": tb[-2000:]}
    record["wall"] = perf() - t_start
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
