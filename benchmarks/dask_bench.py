"""What a Dask cluster costs per task: DaskExecutor next to the local pool and plain Dask.

    python benchmarks/dask_bench.py [--repeat 3] [--tasks 300] [--items 20000]
                                    [--chunksize 500] [--json FILE]

Needs ``pip install 'safepool[dask]'``. Starts one ``distributed.LocalCluster`` on this machine
(2 worker processes, 1 thread each, like the local pool's ``max_workers=2``) and measures on it:

* ``local``: ``SafeProcessPoolExecutor(max_workers=2)``, no Dask at all;
* ``dask-plain``: ``Client.get_executor()``, Dask's own executor (tasks run in the Dask
  workers' threads: no crash isolation, no timeouts);
* ``dask-safepool``: ``safepool.dask.DaskExecutor`` on the same cluster (tasks run in a safepool
  pool on each Dask worker).

Cases (the median of ``--repeat`` runs, each after a warm-up):

* ``latency``: one task at a time, submit and wait: the round trip of one tiny task;
* ``overhead``: ``--tasks`` tiny tasks submitted at once, wall time per task;
* ``chunked-map``: ``map(square, range(--items), chunksize=--chunksize)``, items per second
  (``dask-plain`` gets the same chunks as tasks of a helper that maps a chunk, since its
  ``map`` has no chunking).

The figures are reported as measured and as ratios; they are never test assertions, since
they depend on the machine and on what else runs on it.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)
# Workers of the local pool and of the Dask cluster import the task functions by name.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (HERE, ROOT, os.environ.get("PYTHONPATH")) if p)

import _tasks  # noqa: E402


def square_chunk(chunk):
    """Map one chunk in one task (for ``dask-plain``, whose ``map`` does not chunk)."""
    return [_tasks.square(x) for x in chunk]


def _chunks(n, size):
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def latency(executor, args):
    rounds = 30
    started = time.perf_counter()
    for _ in range(rounds):
        executor.submit(_tasks.noop).result()
    return (time.perf_counter() - started) / rounds * 1e3, "ms per task"


def overhead(executor, args):
    started = time.perf_counter()
    futures = [executor.submit(_tasks.identity, i) for i in range(args.tasks)]
    assert [f.result() for f in futures] == list(range(args.tasks))
    return (time.perf_counter() - started) / args.tasks * 1e3, "ms per task"


def chunked_map(executor, args):
    started = time.perf_counter()
    if getattr(executor, "_plain_dask", False):
        out = [x for chunk in executor.map(square_chunk, _chunks(args.items, args.chunksize))
               for x in chunk]
    else:
        out = list(executor.map(_tasks.square, range(args.items), chunksize=args.chunksize))
    elapsed = time.perf_counter() - started
    assert out == [i * i for i in range(args.items)]
    return args.items / elapsed, "items/s"


CASES = {"latency": latency, "overhead": overhead, "chunked-map": chunked_map}


def warm_up(executor):
    executor.submit(_tasks.noop).result()  # workers started, imports done
    list(executor.map(_tasks.square, range(8)))


def measure(executors, args):
    """Interleaved: each repeat runs every case on every executor, in an order rotated by one
    per repeat, so that a slow spell of a shared machine hits every executor alike."""
    names = list(executors)
    raw = {name: {case: [] for case in CASES} for name in names}
    units = {}
    for repeat in range(args.repeat):
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for case, run in CASES.items():
            for name in order:
                value, units[case] = run(executors[name], args)
                raw[name][case].append(value)
    return {name: {case: {"median": statistics.median(values), "values": values,
                          "unit": units[case]}
                   for case, values in cases.items()}
            for name, cases in raw.items()}


def main(argv=None):
    from _bytecode import compile_safepool_and_benchmarks

    compile_safepool_and_benchmarks()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--chunksize", type=int, default=500)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)

    import distributed

    from safepool import SafeProcessPoolExecutor
    from safepool.dask import DaskExecutor

    with SafeProcessPoolExecutor(max_workers=2) as pool, \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client, DaskExecutor(client) as ours:
        client.wait_for_workers(2)
        plain = client.get_executor(pure=False)  # like ours: a task per call, never cached
        plain._plain_dask = True
        executors = {"local": pool, "dask-plain": plain, "dask-safepool": ours}
        for executor in executors.values():
            warm_up(executor)
        results = measure(executors, args)

    print(f"{'case':<12} {'unit':<12} {'local':>10} {'dask-plain':>11} {'dask-safepool':>14}"
          f" {'vs plain':>9} {'vs local':>9}")
    for case in CASES:
        unit = results["local"][case]["unit"]
        local, plain_v, ours = (results[name][case]["median"]
                                for name in ("local", "dask-plain", "dask-safepool"))
        # A ratio > 1 means dask-safepool is slower (more time per task, fewer items/s).
        if unit == "items/s":
            vs_plain, vs_local = plain_v / ours, local / ours
        else:
            vs_plain, vs_local = ours / plain_v, ours / local
        print(f"{case:<12} {unit:<12} {local:>10.3g} {plain_v:>11.3g} {ours:>14.3g}"
              f" {vs_plain:>8.2f}x {vs_local:>8.2f}x")
    print("(ratios: how many times the cost of dask-safepool is that of the other; > 1 is "
          "slower)")
    if args.json:
        info = {"python": platform.python_version(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "distributed": distributed.__version__,
                "args": vars(args), "results": results}
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
