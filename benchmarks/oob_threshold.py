"""Where should big buffers leave the pipe for a memfd? (safepool._out_of_band.THRESHOLD)

For each size, the round trip of a numpy array of that many bytes (sent to a worker that
returns it) with everything in band (through the pipe) and with everything out of band
(through memfds), in the same pool configuration, medians of many calls. Out of band costs
a few system calls and page mappings per buffer whatever its size; in band costs copies
proportional to the size. The threshold is set where out of band starts to win.

    python benchmarks/oob_threshold.py [--repeats 200] [--json PATH]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402  (a benchmark dependency only)

from safepool import SafeProcessPoolExecutor  # noqa: E402
from safepool import _out_of_band as oob  # noqa: E402

SIZES = [16 << 10, 64 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20, 16 << 20]
IN_BAND = 1 << 62


def set_threshold(value):
    oob.THRESHOLD = value


def ident(x):
    return x


def measure(threshold, size, repeats):
    set_threshold(threshold)
    a = np.ones(size // 8)
    with SafeProcessPoolExecutor(1, initializer=set_threshold, initargs=(threshold,)) as ex:
        for _ in range(5):
            ex.submit(ident, a).result()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            ex.submit(ident, a).result()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    if not oob.AVAILABLE:
        sys.exit("no memfds on this platform: everything travels in band here")
    rows = []
    print(f"{'size':>8} {'pipe ms':>9} {'memfd ms':>9} {'pipe/memfd':>11}")
    for size in SIZES:
        repeats = max(20, args.repeats * (1 << 20) // max(size, 1 << 20) // 4) \
            if size > (1 << 20) else args.repeats
        pipe = measure(IN_BAND, size, repeats)
        memfd = measure(1, size, repeats)
        rows.append({"bytes": size, "pipe_s": pipe, "memfd_s": memfd, "ratio": pipe / memfd})
        print(f"{size >> 10:>7}K {pipe * 1e3:>9.3f} {memfd * 1e3:>9.3f} {pipe / memfd:>11.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
