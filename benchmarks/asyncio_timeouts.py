"""An asyncio service under tight timeouts: how many calls finish in time, and how late the
event loop gets, with the stdlib's pool and with safepool (with and without cancel_running, and with
cancel_running and one warm spare).

    python benchmarks/asyncio_timeouts.py [--calls 600] [--in-flight 4] [--budget 0.05]
                                          [--repeat 3] [--json FILE]

Each call is ``asyncio.wait_for(loop.run_in_executor(pool, task), budget)``, ``--in-flight``
at a time, on a pool of 2 workers. Tasks alternate: three instant ones, then one that sleeps
0.2 s (longer than the budget, so its call times out). What a timeout does to the pool is
the point: without ``cancel_running`` the slow task keeps its worker busy to its end; with
it, the worker is stopped and replaced, which costs a worker start.

Reported per executor: calls finished within their budget (higher is better), wall time, and
the event loop's worst lag (how late a 1 ms ticker woke, lower is better). Figures, never
assertions: they depend on the machine and on what else runs on it.
"""
import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [HERE, ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))

import _tasks  # noqa: E402


def make(name):
    if name == "stdlib":
        return concurrent.futures.ProcessPoolExecutor(2)
    import safepool

    return safepool.SafeProcessPoolExecutor(
        2, cancel_running=name.startswith("safepool-cancel"),
        spare_workers=1 if name.endswith("-spare") else 0)


async def ticker(stop, lags):
    """Wake every millisecond; record how late each wake-up was."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t0 = loop.time()
        await asyncio.sleep(0.001)
        lags.append(loop.time() - t0 - 0.001)


async def service(pool, calls, in_flight, budget):
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(in_flight)
    done = timed_out = failed = 0

    async def one(i):
        nonlocal done, timed_out, failed
        async with sem:
            seconds = 0.2 if i % 4 == 3 else 0.0
            fut = loop.run_in_executor(pool, _tasks.sleep, seconds)
            try:
                await asyncio.wait_for(fut, budget)
                done += 1
            except asyncio.TimeoutError:
                timed_out += 1
            except Exception:
                failed += 1

    await asyncio.gather(*(one(i) for i in range(calls)))
    return done, timed_out, failed


async def measure(name, calls, in_flight, budget):
    pool = make(name)
    try:
        # Warm up: every worker started.
        await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(pool, _tasks.noop)
                               for _ in range(4)))
        stop, lags = asyncio.Event(), []
        tick = asyncio.ensure_future(ticker(stop, lags))
        t0 = time.perf_counter()
        done, timed_out, failed = await service(pool, calls, in_flight, budget)
        wall = time.perf_counter() - t0
        stop.set()
        await tick
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return {"executor": name, "in_time": done, "timed_out": timed_out, "failed": failed,
            "wall_s": round(wall, 3), "worst_lag_ms": round(1e3 * max(lags or [0.0]), 2)}


def main(argv=None):
    from _bytecode import compile_safepool_and_benchmarks

    compile_safepool_and_benchmarks()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=600)
    p.add_argument("--in-flight", type=int, default=4)
    p.add_argument("--budget", type=float, default=0.05)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    names = ["stdlib", "safepool", "safepool-cancel", "safepool-cancel-spare"]
    runs = {n: [] for n in names}
    for r in range(args.repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order per repeat
            result = asyncio.run(measure(name, args.calls, args.in_flight, args.budget))
            runs[name].append(result)
            print(f"[{r + 1}/{args.repeat}] {name:22} in time {result['in_time']:4}"
                  f"/{args.calls}  worst lag {result['worst_lag_ms']:7.2f} ms"
                  f"  wall {result['wall_s']:.2f} s", flush=True)
    print(f"\nmedians over {args.repeat} runs ({args.calls} calls, {args.in_flight} in flight,"
          f" budget {args.budget * 1e3:g} ms, pool of 2):")
    print(f"{'executor':22} {'in time':>8} {'worst lag':>10} {'wall':>7}")
    summary = {}
    for name in names:
        med = {k: statistics.median(x[k] for x in runs[name])
               for k in ("in_time", "worst_lag_ms", "wall_s")}
        summary[name] = med
        print(f"{name:22} {med['in_time']:8.0f} {med['worst_lag_ms']:8.2f}ms"
              f" {med['wall_s']:6.2f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "medians": summary}, f, indent=1)


if __name__ == "__main__":
    main()
