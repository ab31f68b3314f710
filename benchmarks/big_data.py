#!/usr/bin/env python3
"""Big arguments and big results: time and peak memory of the stdlib's ProcessPoolExecutor,
loky, pebble and safepool, side by side in one run.

    python benchmarks/big_data.py [--quick] [--repeat N] [--cases A,B] [--executors A,B]
                                  [--timeout S] [--json FILE]
    python benchmarks/big_data.py --one EXECUTOR CASE [--quick]   # one measurement (internal)

Why: a pool that pickles a payload into one bytes object and pushes it down a pipe pays for
it several times over, in copies (time) and in transient buffers (memory). These cases show
how each executor copes when the data, not the task, is the cost:

* ``roundtrip_100mb``: a 100 MiB ``bytes`` object is sent to a worker that returns it
  unchanged; timed from submit() to the result in hand (so the payload crosses twice).
* ``sum_1gb_array``: a 1 GiB float64 numpy array is sent to a worker that returns
  ``float(arr.sum())`` (the payload goes one way only).
* ``return_1gb_array``: the worker builds ``np.ones(n)`` (1 GiB) and returns it; timed until
  the parent holds the array (the payload comes back one way only).
* ``many_1mb``: 1,000 tasks, each sent the same 1 MiB array and returning its sum, all
  submitted at once; total time until every result is in.
* ``small_tasks``: the control, 2,000 tasks that return their small int argument; big-data
  machinery must not slow the common case down.

``--quick`` shrinks the sizes (100 MiB -> 20 MiB, 1 GiB -> 128 MiB, 1,000 tasks -> 200) and
runs one repeat. Every result is checked (length and a few bytes, the sum, the shape and last
element), so a fast wrong answer cannot pass as a win.

The executors, each with 2 workers:

* ``stdlib``: ``concurrent.futures.ProcessPoolExecutor`` with the ``forkserver`` start
  method, which is what safepool uses, so that like is compared with like. The baseline.
* ``loky``: ``loky.ProcessPoolExecutor`` (a fresh executor, not the reusable singleton, so it
  can be shut down after its case like the others).
* ``pebble``: ``pebble.ProcessPool`` with its default context (``fork`` on Linux before
  Python 3.14), driven through ``schedule()``.
* ``safepool``: ``safepool.SafeProcessPoolExecutor`` with its defaults (forkserver).

How it measures:

* One fresh process per measurement: this script starts itself as
  ``big_data.py --one EXECUTOR CASE`` for every (repeat, case, executor), in its own session,
  so that no executor inherits another's warm caches or leaked memory, and peak-memory
  counters start from zero. A measurement that has not finished after ``--timeout`` seconds
  (600 by default) is killed and reported as failed, as is one that raises (MemoryError, a
  pickling limit, a broken pool...): the cell says ``failed: <error>`` and the run goes on.
* The pool is created and warmed up (each worker runs one trivial task) before the clock
  starts; the payload is built before the clock starts too; the pool is shut down after the
  case, outside the timed part.
* Repeat-major order: in each repeat every case runs once per executor, the executors rotated
  by one position per repeat and case, so slow drifts of machine load hit all of them alike.
  The table shows the median over the repeats.
* ``vs stdlib`` is stdlib_time / executor_time: above 1 means faster than the stdlib.
* ``parent MiB`` is the measurement process's ``ru_maxrss`` (``RUSAGE_SELF``): its peak over
  its whole life, including the interpreter and numpy (about 40 MiB) and the payload itself.
  That is why each measurement needs its own process.
* ``worker MiB`` is the peak RSS of the largest worker: the larger of (a) the highest
  ``VmHWM`` (peak RSS, from /proc) of the process's descendants read just before shutdown,
  and (b) ``RUSAGE_CHILDREN``'s ``ru_maxrss`` read after shutdown. (b) alone would not do:
  it only covers children that have exited *and been reaped* by this process (and, through
  them, their reaped descendants), and forkserver workers are children of the forkserver,
  which is still alive at that point. Both numbers are in the JSON. A worker that forks from
  the parent (pebble) starts with the parent's RSS at the time of the fork.
* Peak memory is shown as the largest value over the repeats (time as the median).

Figures, never assertions: they depend on the machine and on what else runs on it. With
``--json FILE`` every measurement, the summary and the machine (cores, memory, Python and
package versions, the repository's commit and number of changed files) are written out.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# --safepool-from DIR: measure the safepool package found in DIR (a snapshot, say) instead of
# the repository's working copy. Passed on to the measurement processes in the environment.
SAFEPOOL_FROM_ENV = "BIG_DATA_SAFEPOOL_FROM"
_front = [HERE, ROOT]
if os.environ.get(SAFEPOOL_FROM_ENV):
    _front.insert(0, os.path.abspath(os.environ[SAFEPOOL_FROM_ENV]))
for _p in reversed(_front):
    if _p in sys.path:
        sys.path.remove(_p)
    sys.path.insert(0, _p)
# Workers started by forkserver, spawn or loky import the task functions by module name
# ("big_data"), so this folder must be on their path too; they inherit the environment.
os.environ["PYTHONPATH"] = os.pathsep.join(
    _front + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))

import numpy as np  # noqa: E402

if __name__ == "__main__":
    # Run as a script, this file is "__main__", and a function pickled from here would be
    # looked up as "__main__.echo" in the worker, which is not this file there. Import the
    # file under its own name and submit *those* functions: every pool finds "big_data.echo".
    import big_data as T  # noqa: E402
else:
    T = sys.modules[__name__]

MiB = 1 << 20
MAX_WORKERS = 2
BASELINE = "stdlib"
EXECUTORS = ["stdlib", "loky", "pebble", "safepool"]
FLOAT64 = 8


# --------------------------------------------------------------------------------------------
# Task functions: they run in the workers, which import them from this module by name
# --------------------------------------------------------------------------------------------


def hello(seconds):
    """Warm-up: keep the worker busy a moment (so the other worker gets the next one)."""
    time.sleep(seconds)
    return os.getpid()


def echo(data):
    """Return the payload unchanged: it crosses twice."""
    return data


def array_sum(arr):
    """Sum an array: the payload crosses once, a float comes back."""
    return float(arr.sum())


def make_ones(n):
    """Build an array of n ones in the worker and return it: the payload crosses once."""
    return np.ones(n)


def identity(x):
    """Return a small argument: pure per-task overhead."""
    return x


def safepool_file():
    """Where the worker's safepool comes from (None if the worker has not imported it)."""
    module = sys.modules.get("safepool")
    return getattr(module, "__file__", None)


# --------------------------------------------------------------------------------------------
# Sizes and cases (each case: build the payload, then time it on a warm pool)
# --------------------------------------------------------------------------------------------

SIZES = {
    # case: (full size, --quick size, what the size counts)
    "roundtrip_100mb": (100 * MiB, 20 * MiB, "bytes"),
    "sum_1gb_array": (1024 * MiB // FLOAT64, 128 * MiB // FLOAT64, "float64"),
    "return_1gb_array": (1024 * MiB // FLOAT64, 128 * MiB // FLOAT64, "float64"),
    "many_1mb": (1000, 200, "tasks"),
    "small_tasks": (2000, 2000, "tasks"),
}
ONE_MIB_OF_FLOATS = MiB // FLOAT64


def case_size(case, quick):
    full, small, _ = SIZES[case]
    return small if quick else full


def size_label(case, n):
    unit = SIZES[case][2]
    if unit == "bytes":
        return "%d MiB" % (n // MiB)
    if unit == "float64":
        mib = n * FLOAT64 // MiB
        return "%d GiB" % (mib // 1024) if mib >= 1024 and mib % 1024 == 0 else "%d MiB" % mib
    return "{:,} tasks".format(n)


def case_roundtrip_100mb(pool, n):
    # Not all one byte value, so that a few sampled bytes really check the content.
    pattern = bytes(range(256))
    payload = pattern * (n // 256) + pattern[: n % 256]
    t0 = time.perf_counter()
    result = pool.submit(T.echo, payload).result()
    elapsed = time.perf_counter() - t0
    if type(result) is not bytes:
        raise AssertionError("sent bytes, got a %s back" % type(result).__name__)
    if len(result) != n:
        raise AssertionError("got %d bytes back, sent %d" % (len(result), n))
    for at in (0, n // 2, n - 64):
        if result[at:at + 64] != payload[at:at + 64]:
            raise AssertionError("the bytes at offset %d came back changed" % at)
    return elapsed, {"MiB_per_s_both_ways": 2 * n / MiB / elapsed}


def case_sum_1gb_array(pool, n):
    arr = np.ones(n)
    t0 = time.perf_counter()
    total = pool.submit(T.array_sum, arr).result()
    elapsed = time.perf_counter() - t0
    if total != float(n):
        raise AssertionError("sum is %r, expected %r" % (total, float(n)))
    return elapsed, {"MiB_per_s": n * FLOAT64 / MiB / elapsed}


def case_return_1gb_array(pool, n):
    t0 = time.perf_counter()
    arr = pool.submit(T.make_ones, n).result()
    elapsed = time.perf_counter() - t0
    if type(arr) is not np.ndarray or arr.dtype != np.float64:
        raise AssertionError("got a %s back, not a float64 array" % type(arr).__name__)
    if arr.shape != (n,) or arr[-1] != 1.0 or arr[0] != 1.0:
        raise AssertionError("got an array of shape %r ending in %r" % (arr.shape, arr[-1]))
    # Not timed: read it all once. An array that maps memory shared with the worker gets its
    # pages on first touch, which this shows (and which then counts in the parent's RSS).
    t1 = time.perf_counter()
    total = float(arr.sum())
    first_read = time.perf_counter() - t1
    if total != float(n):
        raise AssertionError("the array sums to %r, expected %r" % (total, float(n)))
    return elapsed, {"MiB_per_s": n * FLOAT64 / MiB / elapsed, "first_full_read_s": first_read,
                     "writeable": bool(arr.flags.writeable),
                     "owns_data": bool(arr.flags.owndata)}


def case_many_1mb(pool, n):
    # One array, sent n times: every submit pickles it again, as if each were new.
    arr = np.ones(ONE_MIB_OF_FLOATS)
    t0 = time.perf_counter()
    futures = [pool.submit(T.array_sum, arr) for _ in range(n)]
    results = [f.result() for f in futures]
    elapsed = time.perf_counter() - t0
    if results != [float(ONE_MIB_OF_FLOATS)] * n:
        raise AssertionError("some of the sums are wrong")
    return elapsed, {"tasks_per_s": n / elapsed, "MiB_per_s": n / elapsed}


def case_small_tasks(pool, n):
    t0 = time.perf_counter()
    futures = [pool.submit(T.identity, i) for i in range(n)]
    results = [f.result() for f in futures]
    elapsed = time.perf_counter() - t0
    if results != list(range(n)):
        raise AssertionError("results came back wrong")
    return elapsed, {"tasks_per_s": n / elapsed}


CASES = {
    "roundtrip_100mb": case_roundtrip_100mb,
    "sum_1gb_array": case_sum_1gb_array,
    "return_1gb_array": case_return_1gb_array,
    "many_1mb": case_many_1mb,
    "small_tasks": case_small_tasks,
}
assert set(CASES) == set(SIZES)


# --------------------------------------------------------------------------------------------
# One measurement, in this (fresh) process
# --------------------------------------------------------------------------------------------


class Pool:
    """The same three calls for every executor: submit(), and shutdown() with or without an
    error to clean up after. pebble's ProcessPool has schedule() instead of submit()."""

    def __init__(self, name):
        self.name = name
        if name == "stdlib":
            import concurrent.futures
            import multiprocessing

            self.ex = concurrent.futures.ProcessPoolExecutor(
                max_workers=MAX_WORKERS, mp_context=multiprocessing.get_context("forkserver"))
        elif name == "loky":
            import loky

            self.ex = loky.ProcessPoolExecutor(max_workers=MAX_WORKERS)
        elif name == "pebble":
            import pebble

            self.ex = pebble.ProcessPool(max_workers=MAX_WORKERS)
        elif name == "safepool":
            import safepool

            self.ex = safepool.SafeProcessPoolExecutor(max_workers=MAX_WORKERS)
        else:
            raise SystemExit("unknown executor %r; choose from %s" % (name, ", ".join(EXECUTORS)))

    def submit(self, fn, *args):
        if self.name == "pebble":
            return self.ex.schedule(fn, args=args)
        return self.ex.submit(fn, *args)

    def shutdown(self, failed=False):
        if self.name == "pebble":
            # close(): finish what is queued; stop(): abandon it. join() waits either way.
            self.ex.stop() if failed else self.ex.close()
            self.ex.join()
        elif failed:
            self.ex.shutdown(wait=False, cancel_futures=True)
        else:
            self.ex.shutdown(wait=True)


def warm_up(pool):
    """Start every worker and have it run one trivial task; return the workers' pids."""
    futures = [pool.submit(T.hello, 0.2) for _ in range(MAX_WORKERS)]
    return sorted({f.result(timeout=120) for f in futures})


def peak_rss_of_descendants():
    """{pid: peak RSS in bytes} of every live descendant, from VmHWM in /proc/PID/status."""
    import psutil

    peaks = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            with open("/proc/%d/status" % proc.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peaks[proc.pid] = int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return peaks


def maxrss_bytes(who):
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(who).ru_maxrss * scale


def rss_now():
    import psutil

    return psutil.Process().memory_info().rss


def emit(record):
    print(json.dumps(record), flush=True)


def measure_one(executor, case, quick):
    """Create and warm the pool, time the case, shut the pool down; print JSON lines.

    The first line (phase "case") is printed as soon as the case is over, before shutdown, so
    that a shutdown that hangs (and is killed by the driver) still leaves the result behind.
    The last line (phase "done") adds the peak-memory numbers.
    """
    n = case_size(case, quick)
    record = {"phase": "case", "executor": executor, "case": case, "size": n,
              "status": "failed", "seconds": None, "error": None, "extra": {}}
    pool = None
    failed = True
    try:
        pool = Pool(executor)
        record["worker_pids"] = warm_up(pool)
        if executor == "safepool":
            record["safepool_file_parent"] = sys.modules["safepool"].__file__
            record["safepool_file_worker"] = pool.submit(T.safepool_file).result(timeout=60)
        record["parent_rss_warm_MiB"] = rss_now() / MiB
        seconds, extra = CASES[case](pool, n)
        record.update(status="ok", seconds=seconds, extra=extra)
        failed = False
    except BaseException as exc:
        record["error"] = "%s: %s" % (type(exc).__name__, exc)
        record["traceback"] = traceback.format_exc()[-3000:]
    emit(record)
    peaks = peak_rss_of_descendants()
    if pool is not None:
        try:
            pool.shutdown(failed=failed)
        except BaseException as exc:
            record["shutdown_error"] = "%s: %s" % (type(exc).__name__, exc)
    record["phase"] = "done"
    record["parent_maxrss_MiB"] = maxrss_bytes(resource.RUSAGE_SELF) / MiB
    record["children_maxrss_MiB"] = maxrss_bytes(resource.RUSAGE_CHILDREN) / MiB
    record["descendants_vmhwm_MiB"] = {str(pid): b / MiB for pid, b in sorted(peaks.items())}
    record["worker_peak_MiB"] = max([record["children_maxrss_MiB"]]
                                    + list(record["descendants_vmhwm_MiB"].values()))
    emit(record)
    # Leave at once: a failed pool may still have threads that would keep us alive.
    sys.stdout.flush()
    os._exit(0)


# --------------------------------------------------------------------------------------------
# The driver: plan, run each measurement in a subprocess, summarise, print, save
# --------------------------------------------------------------------------------------------


def session_leftovers(sid):
    """Live processes in the session of a finished measurement (leaked workers or helpers)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(proc.info["pid"]) == sid:
                found.append(proc.info["pid"])
        except (OSError, psutil.Error):
            continue
    return found


def clean_up_session(sid, grace=3.0):
    """Give the measurement's helpers a moment to leave, then SIGKILL what is left. Only
    processes in the session this script created for the measurement are touched."""
    deadline = time.monotonic() + grace
    left = session_leftovers(sid)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = session_leftovers(sid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def run_one(executor, case, quick, timeout):
    """One measurement in a fresh process (and session); returns its record."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", executor, case]
    if quick:
        cmd.append("--quick")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = proc.communicate()
    leftovers = clean_up_session(proc.pid)
    record = None
    for line in out.splitlines():  # the last JSON line wins: "done" comes after "case"
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                pass
    if record is None:
        record = {"executor": executor, "case": case, "status": "failed", "seconds": None}
        if timed_out:
            record["error"] = "timed out after %g s" % timeout
        elif proc.returncode and proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            record["error"] = "killed by %s%s" % (
                sig, " (out of memory?)" if sig == "SIGKILL" else "")
        else:
            tail = (err.strip().splitlines() or ["no output"])[-1]
            record["error"] = "exit code %s: %s" % (proc.returncode, tail)
    elif timed_out:
        record["note"] = "killed after %g s in phase %r" % (timeout, record.get("phase"))
    record["elapsed_total"] = time.monotonic() - t0
    if leftovers:
        record["leftover_processes"] = len(leftovers)
    if record.get("status") != "ok" and err:
        record["stderr_tail"] = err[-2000:]
    return record


def plan(executors, cases, repeat):
    """(repeat, case, executor) in run order: repeat-major, executors rotated by one position
    per repeat and per case."""
    steps = []
    for r in range(repeat):
        for ci, case in enumerate(cases):
            k = (r + ci) % len(executors)
            for e in executors[k:] + executors[:k]:
                steps.append((r, case, e))
    return steps


def summarize(records, executors, cases):
    """{case: {executor: {...}}}: median seconds, ratio to the stdlib, peak memory."""
    out = {}
    for case in cases:
        out[case] = {}
        for e in executors:
            rs = [r for r in records if r["case"] == case and r["executor"] == e]
            ok = [r for r in rs if r.get("status") == "ok"]
            s = {"runs": len(rs), "ok": len(ok),
                 "seconds": [r["seconds"] for r in ok],
                 "errors": sorted({r.get("error") or "?" for r in rs if r not in ok})}
            s["median_s"] = statistics.median(s["seconds"]) if ok else None
            parents = [r["parent_maxrss_MiB"] for r in ok if "parent_maxrss_MiB" in r]
            workers = [r["worker_peak_MiB"] for r in ok if "worker_peak_MiB" in r]
            s["parent_peak_MiB"] = max(parents) if parents else None
            s["worker_peak_MiB"] = max(workers) if workers else None
            out[case][e] = s
        base = out[case].get(BASELINE, {}).get("median_s")
        for e in executors:
            med = out[case][e]["median_s"]
            out[case][e]["vs_stdlib"] = base / med if base and med else None
    return out


def fmt_seconds(s):
    if s < 1e-3:
        return "%.0f us" % (s * 1e6)
    if s < 1.0:
        return "%.1f ms" % (s * 1e3)
    return "%.2f s" % s


def render(summary, executors, cases, sizes, repeat):
    """A table no wider than 80 columns: one row per (case, executor)."""
    headers = ["case", "executor", "median", "vs stdlib", "parent MiB", "worker MiB"]
    rows = []
    for case in cases:
        for i, e in enumerate(executors):
            s = summary[case][e]
            first = case if i == 0 else ("  " + size_label(case, sizes[case]) if i == 1 else "")
            if s["median_s"] is None:
                why = "failed: " + (s["errors"][0] if s["errors"] else "not run")
                rows.append([first, e, why[:60]])
                continue
            med = fmt_seconds(s["median_s"])
            if s["ok"] < s["runs"]:
                med += " (%d/%d ok)" % (s["ok"], s["runs"])
            ratio = "%.2fx" % s["vs_stdlib"] if s["vs_stdlib"] else "-"
            parent = "%.0f" % s["parent_peak_MiB"] if s["parent_peak_MiB"] is not None else "-"
            worker = "%.0f" % s["worker_peak_MiB"] if s["worker_peak_MiB"] is not None else "-"
            rows.append([first, e, med, ratio, parent, worker])
    # Failure rows have 3 cells; their message is not counted in the column widths.
    full = [r for r in rows if len(r) == len(headers)] + [headers]
    widths = [max(len(r[i]) for r in full) for i in range(len(headers))]
    for i in (0, 1):
        widths[i] = max(len(r[i]) for r in rows + [headers])
    right = {2, 3, 4, 5}

    def line(row):
        cells = []
        for i, c in enumerate(row):
            if len(row) == 3 and i == 2:  # a failure message runs across the number columns
                cells.append(c)
            else:
                cells.append(c.rjust(widths[i]) if i in right else c.ljust(widths[i]))
        return "  ".join(cells).rstrip()

    out = ["Median seconds over %d repeat(s); vs stdlib = stdlib time / executor time "
           "(>1: faster);" % repeat,
           "peak RSS in MiB (largest over repeats) of the measuring process and of its "
           "largest worker.", "", line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def sources_digest(folder):
    """sha256 over the package's .py files (names and contents): which code was measured,
    even when it was an uncommitted working copy."""
    import hashlib

    digest = hashlib.sha256()
    for base, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(base, name)
                digest.update(os.path.relpath(path, folder).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


def machine_info():
    info = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "max_workers": MAX_WORKERS,
        "executable": sys.executable,
    }
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        import psutil

        info["memory_total_GiB"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    versions = {}
    for mod in ("safepool", "loky", "pebble", "numpy", "psutil", "cloudpickle"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", "?")
            if mod == "safepool":
                info["safepool_path"] = os.path.dirname(m.__file__)
                info["safepool_sources_sha256"] = sources_digest(info["safepool_path"])
        except Exception as exc:
            versions[mod] = "not importable: %s" % exc
    info["versions"] = versions

    def git(*args):
        try:
            return subprocess.run(["git", "-C", ROOT] + list(args), stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, universal_newlines=True,
                                  timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    info["git_head"] = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    status = git("status", "--short")
    info["git_changed_files"] = len(status.splitlines())
    info["git_status"] = status.splitlines()
    return info


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 repeat (unless --repeat) and smaller sizes")
    p.add_argument("--repeat", type=int, default=None, help="measurements per case and "
                   "executor (default 3; --quick 1); the median is reported")
    p.add_argument("--cases", default=None,
                   help="comma-separated, from %s (default: all)" % ",".join(CASES))
    p.add_argument("--executors", default=None,
                   help="comma-separated, from %s (default: all; stdlib is always added: it "
                   "is the baseline)" % ",".join(EXECUTORS))
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds before one measurement is killed (default 600)")
    p.add_argument("--json", default=None, metavar="FILE", help="write every number here")
    p.add_argument("--safepool-from", default=None, metavar="DIR",
                   help="import safepool from DIR (which holds a safepool/ package, e.g. an "
                   "export of a commit) instead of this repository's working copy")
    p.add_argument("--one", nargs=2, metavar=("EXECUTOR", "CASE"), default=None,
                   help="internal: run one measurement in this process, print JSON lines")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args, p


def main(argv=None):
    args, parser = parse_args(argv)
    if args.one:
        executor, case = args.one
        if case not in CASES:
            parser.error("unknown case %r" % case)
        measure_one(executor, case, args.quick)  # does not return
    cases = list(CASES) if not args.cases else [c.strip() for c in args.cases.split(",")]
    executors = EXECUTORS if not args.executors else [e.strip() for e in args.executors.split(",")]
    for name, chosen, known in (("case", cases, CASES), ("executor", executors, EXECUTORS)):
        unknown = [x for x in chosen if x not in known]
        if unknown:
            parser.error("unknown %s(s) %s" % (name, ", ".join(unknown)))
    if BASELINE not in executors:
        executors = [BASELINE] + executors
    if args.safepool_from:
        args.safepool_from = os.path.abspath(args.safepool_from)
        if not os.path.isfile(os.path.join(args.safepool_from, "safepool", "__init__.py")):
            parser.error("no safepool/__init__.py in %s" % args.safepool_from)
        # The measurement processes read it at import time, before any argument parsing.
        os.environ[SAFEPOOL_FROM_ENV] = args.safepool_from
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [args.safepool_from, os.environ["PYTHONPATH"]])
        sys.path.insert(0, args.safepool_from)  # for machine_info() here
    from _bytecode import compile_safepool_and_benchmarks

    compile_safepool_and_benchmarks(
        os.path.join(args.safepool_from, "safepool") if args.safepool_from else None)
    sizes = {c: case_size(c, args.quick) for c in cases}
    info = machine_info()

    steps = plan(executors, cases, args.repeat)
    sys.stderr.write("%d measurements: %d cases x %d executors x %d repeat(s)%s\n"
                     % (len(steps), len(cases), len(executors), args.repeat,
                        " (quick)" if args.quick else ""))
    records = []
    t_start = time.monotonic()
    for i, (r, case, e) in enumerate(steps, 1):
        rec = run_one(e, case, args.quick, args.timeout)
        rec["repeat"] = r
        records.append(rec)
        if rec.get("status") == "ok":
            shown = "%s  parent %.0f MiB, worker %.0f MiB" % (
                fmt_seconds(rec["seconds"]), rec.get("parent_maxrss_MiB", float("nan")),
                rec.get("worker_peak_MiB", float("nan")))
        else:
            shown = "failed: %s" % rec.get("error")
        sys.stderr.write("[%2d/%d] r%d %-16s %-8s %s  (%.1fs)\n"
                         % (i, len(steps), r + 1, case, e, shown, rec["elapsed_total"]))
        sys.stderr.flush()
    total = time.monotonic() - t_start

    summary = summarize(records, executors, cases)
    print()
    print("Machine: %s cores, %s GiB, Python %s; repo at %s (%d changed files)"
          % (info["nproc"], info.get("memory_total_GiB", "?"), info["python"], info["git_head"],
             info["git_changed_files"]))
    print("safepool from %s (sources sha256 %s)"
          % (info.get("safepool_path"), info.get("safepool_sources_sha256", "?")[:12]))
    print(render(summary, executors, cases, sizes, args.repeat))
    print()
    print("Total time: %.0f s for %d measurements." % (total, len(records)))
    if args.json:
        saved = {k: v for k, v in vars(args).items() if k != "one"}
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": saved, "executors": executors,
                       "sizes": {c: {"n": sizes[c], "unit": SIZES[c][2],
                                     "label": size_label(c, sizes[c])} for c in cases},
                       "summary": summary, "records": records, "total_seconds": total},
                      f, indent=1, sort_keys=True)
        print("Results written to %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
