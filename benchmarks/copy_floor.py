"""What a 100 MiB ``bytes`` round trip cannot go below on this machine, whatever the transport.

A worker that receives ``bytes`` needs a new ``bytes`` object (it must own its memory), and so
does the parent that receives the result: two fresh allocations of the full size, each
filled by one copy, whatever carries the data. This times those steps one by one, in one
process, medians of several runs:

* a copy into memory already touched (the copy alone),
* ``pread()`` into a new ``bytes`` (what each receiving side does: fresh pages, then a copy),
* a write into a new memfd (what each sending side does: fresh shared pages, then a copy),
* a write into a memfd whose pages exist (what a reused memfd would cost instead).

and prints the floor (two receives) and today's path (two sends and two receives), next to
the stdlib's round trip measured by ``big_data.py``. Nothing here is asserted.

    python benchmarks/copy_floor.py [--mib 100] [--repeat 7]
"""
import argparse
import os
import statistics
import sys
import time


def timed(step, repeat):
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=100)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args(argv)
    if not hasattr(os, "memfd_create"):
        print("needs os.memfd_create (Linux)")
        return 1
    size = args.mib << 20
    data = os.urandom(size)
    touched = memoryview(bytearray(size))
    touched[:] = data  # every page faulted in now, not in the timed copies
    populated = os.memfd_create("populated")
    os.write(populated, data)

    def copy_only():
        touched[:] = data

    def receive():
        os.pread(populated, size, 0)

    def send_new():
        fd = os.memfd_create("new")
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def send_reused():
        os.pwrite(populated, data, 0)

    steps = [("copy into touched memory", copy_only),
             ("pread into a new bytes (receive)", receive),
             ("write into a new memfd (send)", send_new),
             ("write into a populated memfd", send_reused)]
    ms = {}
    print("%d MiB, median of %d, Python %s" % (args.mib, args.repeat, sys.version.split()[0]))
    for name, step in steps:
        ms[name] = 1e3 * timed(step, args.repeat)
        print("  %-36s %7.1f ms" % (name, ms[name]))
    receive_ms = ms["pread into a new bytes (receive)"]
    print("floor, two receives:                 %7.1f ms" % (2 * receive_ms))
    print("today, two sends and two receives:   %7.1f ms"
          % (2 * (receive_ms + ms["write into a new memfd (send)"])))
    print("with reused memfds:                  %7.1f ms"
          % (2 * (receive_ms + ms["write into a populated memfd"])))
    os.close(populated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
