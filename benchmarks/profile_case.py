#!/usr/bin/env python3
"""Profile the PARENT side of one benchmark case, all of its threads, with cProfile.

    python benchmarks/profile_case.py [--executor safepool] [--case submit_noop] [--size N]
                                      [--top 30] [--sort tottime] [--out FILE.pstats]

A pool's parent-side cost is split between the thread that calls ``submit()`` and the pool's
own thread(s) (safepool's manager, the stdlib's executor manager thread). Plain cProfile sees only
the thread that enabled it, so this script installs a ``threading.setprofile`` hook that starts a
separate profiler in every thread created during the case, then merges them all. Per-call counts
are divided by the number of tasks, which shows e.g. how many system calls each task costs.

Works on Python <= 3.11. From 3.12 cProfile is built on ``sys.monitoring`` and only one profiler
can be active at a time; there the script profiles the calling thread only (and says so). For a
sampling view of every thread and of the workers, use py-spy instead:

    PYTHONPATH=benchmarks:. py-spy record --threads --format raw -o out.txt -- \\
        python benchmarks/_one.py --executor safepool --case submit_noop --size 200000

Profiling slows Python code several-fold, so absolute times here mean little: compare
proportions and call counts, and time things with run.py.
"""

import argparse
import cProfile
import os
import pstats
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)
# Workers started by forkserver/spawn need to import _tasks too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [HERE, ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
)

import _one  # noqa: E402
from _cases import CASES, case_size  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--executor", default="safepool")
    p.add_argument("--case", default="submit_noop", choices=list(CASES))
    p.add_argument("--size", type=int, default=None, help="default: the case's full size")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative...)")
    p.add_argument("--out", default=None, help="also save the merged stats to this file")
    p.add_argument(
        "--timer",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu (default): each thread's own CPU time, so time spent waiting for the GIL or "
        "blocked in a system call is not charged to whatever frame was on top; wall: clock time",
    )
    args = p.parse_args(argv)
    size = args.size if args.size is not None else case_size(args.case, False)

    make = _one.executor_factory(args.executor)
    timer = time.thread_time if args.timer == "cpu" else time.perf_counter
    thread_profilers = []
    lock = threading.Lock()

    def start_thread_profiler(frame, event, arg):
        # Called at the first profile event of each new thread: replace ourselves with a real
        # profiler for that thread.
        prof = cProfile.Profile(timer)
        with lock:
            thread_profilers.append((threading.current_thread().name, prof))
        try:
            prof.enable()
        except ValueError:  # 3.12+: another profiler is already active
            pass

    per_thread = sys.version_info < (3, 12)
    if per_thread:
        threading.setprofile(start_thread_profiler)
    else:
        print("note: Python >= 3.12: profiling the calling thread only", file=sys.stderr)
    main_prof = cProfile.Profile(timer)
    main_prof.enable()
    try:
        status, value, note, extra = _one.CASE_FUNCS[args.case](make, size)
    finally:
        main_prof.disable()
        threading.setprofile(None)

    print(
        "%s / %s, size %s: %s %s (under the profiler) %s; timer: %s"
        % (args.executor, args.case, size, value, CASES[args.case]["unit"], note, args.timer)
    )
    stats = pstats.Stats(main_prof)
    names = ["MainThread"]
    for name, prof in thread_profilers:
        try:
            stats.add(prof)
            names.append(name)
        except (TypeError, ValueError):
            pass
    print("threads merged: %s" % ", ".join(names))
    if args.out:
        stats.dump_stats(args.out)
    tasks = size if CASES[args.case]["unit"] in ("tasks/s", "items/s", "s") else None
    if args.case == "latency":
        tasks = size + max(50, size // 10)
    stats.sort_stats(args.sort)
    width = 70
    print()
    print("%10s %10s %10s %10s  %s" % ("ncalls", "per task", "tottime", "cumtime", "function"))
    for func in stats.fcn_list[: args.top]:
        cc, nc, tt, ct, callers = stats.stats[func]
        filename, line, fname = func
        where = "%s:%d(%s)" % (os.path.basename(filename), line, fname)
        if filename.startswith("~"):
            where = fname
        per = "%.2f" % (nc / float(tasks)) if tasks else "-"
        print("%10d %10s %10.3f %10.3f  %s" % (nc, per, tt, ct, where[:width]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
