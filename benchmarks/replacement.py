#!/usr/bin/env python3
"""From a lost worker to the next result: the stdlib's ProcessPoolExecutor, loky, pebble and
safepool (without and with a warm spare), side by side in one run.

    python benchmarks/replacement.py [--samples N] [--cases A,B] [--executors A,B]
                                     [--json FILE]
    python benchmarks/replacement.py --one EXECUTOR CASE [--samples N]   # internal

A pool of one worker loses it, and the clock runs from the loss until the next task's result
is in hand: that is what a caller waits when a worker is replaced on the critical path.

* ``crash``: a task calls ``os._exit(1)``. The clock starts when its future has failed (the
  pool has seen the loss). The stdlib and loky break the whole pool on a crash: for them the
  time includes creating a new pool, which is what their users must do.
* ``recycle``: ``max_tasks_per_child=1`` (pebble: ``max_tasks=1``), so every task's worker is
  replaced; the clock runs from one result to the next. loky has no such option.
* ``cancel``: a running task (it sleeps 60 s) is cancelled, which stops its worker
  (safepool ``cancel_running=True``; pebble stops the worker of a cancelled running task).
  The clock starts just before ``cancel()``. The stdlib and loky cannot stop a running task.
* ``numpy``: as ``recycle``, but the task uses numpy, so each new worker needs it: imported
  by the worker itself, or (``safepool-preload``, ``preload=["numpy"]``) once, in the fork
  server. pebble forks the parent, which has not imported numpy either.

Between samples the pool gets 0.3 s to settle (and safepool-spare waits for its spare to be
ready again), so every sample starts from a pool at full strength: the number shown is the
cost of one loss, not of a crash loop.

The executors, each with ``max_workers=1``: ``stdlib`` (forkserver, as safepool), ``loky``
(a fresh executor), ``pebble`` (its default context: fork on Linux, which a hardened pool
refuses but which is the fastest start), ``safepool``, ``safepool-spare``
(``spare_workers=1``) and ``safepool-preload`` (``preload=["numpy"]``). Each (executor,
case) runs in a fresh process. Figures, never assertions: shared machines are noisy.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p in sys.path:
        sys.path.remove(_p)
    sys.path.insert(0, _p)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [HERE, ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))

if __name__ == "__main__":
    import replacement as T  # workers find the task functions as "replacement.<name>"
else:
    T = sys.modules[__name__]

EXECUTORS = ["stdlib", "loky", "pebble", "safepool", "safepool-spare", "safepool-preload"]
CASES = ["crash", "recycle", "cancel", "numpy"]
SUPPORTED = {"crash": set(EXECUTORS) - {"safepool-preload"},
             "recycle": {"stdlib", "pebble", "safepool", "safepool-spare"},
             "cancel": {"pebble", "safepool", "safepool-spare"},
             "numpy": {"stdlib", "pebble", "safepool", "safepool-preload"}}
SETTLE = 0.3


def noop():
    return os.getpid()


def die():
    os._exit(1)


def numpy_sum():
    import numpy

    return int(numpy.arange(10).sum())


def mark_and_sleep(path):
    open(path, "w").close()
    time.sleep(60)


def make(name, case):
    """A one-worker pool for ``case``; submit(fn, *args) returns a future."""
    if name == "stdlib":
        import concurrent.futures
        import multiprocessing

        kw = {"max_tasks_per_child": 1} if case in ("recycle", "numpy") else {}
        return concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("forkserver"), **kw)
    if name == "loky":
        import loky

        return loky.ProcessPoolExecutor(1)
    if name == "pebble":
        import pebble

        pool = pebble.ProcessPool(1, max_tasks=1 if case in ("recycle", "numpy") else 0)
        pool.submit = lambda fn, *args: pool.schedule(fn, args=args)
        pool.shutdown = lambda wait=True: (pool.stop(), pool.join())
        return pool
    import safepool

    kw = {"max_tasks_per_child": 1} if case in ("recycle", "numpy") else {}
    if name == "safepool-preload":
        kw["preload"] = ["numpy"]
    if case == "cancel":
        kw["cancel_running"] = True
    if name == "safepool-spare":
        kw["spare_workers"] = 1
    return safepool.SafeProcessPoolExecutor(1, **kw)


def settle(name, pool):
    time.sleep(SETTLE)
    if name == "safepool-spare":
        deadline = time.monotonic() + 30
        while pool.stats().spare_workers_ready < 1 and time.monotonic() < deadline:
            time.sleep(0.01)


def sample_crash(name, pool):
    f = pool.submit(T.die)
    try:
        f.result(timeout=60)
    except Exception:
        pass
    t0 = time.perf_counter()
    if name in ("stdlib", "loky"):  # the pool is broken: a new one is the only way on
        pool.shutdown(wait=False)
        pool = make(name, "crash")
    pool.submit(T.noop).result(timeout=60)
    return time.perf_counter() - t0, pool


def sample_recycle(name, pool):
    t0 = time.perf_counter()
    pool.submit(T.noop).result(timeout=60)
    return time.perf_counter() - t0, pool


def sample_numpy(name, pool):
    t0 = time.perf_counter()
    pool.submit(T.numpy_sum).result(timeout=60)
    return time.perf_counter() - t0, pool


def sample_cancel(name, pool):
    marker = os.path.join("/tmp", "safepool-bench-%d-%d" % (os.getpid(), time.monotonic_ns()))
    f = pool.submit(T.mark_and_sleep, marker)
    deadline = time.monotonic() + 60
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            raise RuntimeError("the task never started")
        time.sleep(0.002)
    os.unlink(marker)
    t0 = time.perf_counter()
    if not f.cancel():
        raise RuntimeError("%s did not cancel a running task" % name)
    pool.submit(T.noop).result(timeout=60)
    return time.perf_counter() - t0, pool


def measure_one(name, case, samples):
    sample = {"crash": sample_crash, "recycle": sample_recycle, "cancel": sample_cancel,
              "numpy": sample_numpy}[case]
    pool = make(name, case)
    try:
        pool.submit(T.noop).result(timeout=120)  # started, warm
        times = []
        for _ in range(samples):
            settle(name, pool)
            elapsed, pool = sample(name, pool)
            times.append(elapsed)
    finally:
        pool.shutdown(wait=True)
    print(json.dumps({"executor": name, "case": case, "seconds": times}))


def run_one(name, case, samples, timeout=600):
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name, case,
           "--samples", str(samples)]
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"executor": name, "case": case, "error": "timed out"}
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"executor": name, "case": case,
            "error": (out.stderr.strip().splitlines() or ["no output"])[-1]}


def main(argv=None):
    from _bytecode import compile_safepool_and_benchmarks

    compile_safepool_and_benchmarks()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=15, help="losses per measurement "
                   "(default 15); the median is reported")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--executors", default=",".join(EXECUTORS))
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--one", nargs=2, metavar=("EXECUTOR", "CASE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        measure_one(args.one[0], args.one[1], args.samples)
        return
    cases = args.cases.split(",")
    executors = args.executors.split(",")
    records = []
    for case in cases:
        for name in executors:
            if name not in SUPPORTED[case]:
                continue
            rec = run_one(name, case, args.samples)
            records.append(rec)
            shown = ("%.1f ms" % (1e3 * statistics.median(rec["seconds"]))
                     if "seconds" in rec else "failed: %s" % rec["error"])
            sys.stderr.write("%-8s %-15s %s\n" % (case, name, shown))
    print("\nFrom a lost worker to the next result (median of %d; 1 worker)\n" % args.samples)
    print("| case | " + " | ".join(executors) + " |")
    print("|---|" + "---|" * len(executors))
    for case in cases:
        cells = []
        for name in executors:
            rec = next((r for r in records if r["executor"] == name and r["case"] == case),
                       None)
            if rec is None:
                cells.append("n/a")
            elif "seconds" not in rec:
                cells.append("failed")
            else:
                cells.append("%.1f ms" % (1e3 * statistics.median(rec["seconds"])))
        print("| %s | %s |" % (case, " | ".join(cells)))
    if args.json:
        from big_data import machine_info

        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "samples": args.samples,
                       "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
