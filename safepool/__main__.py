"""``python -m safepool`` (or the ``safepool`` console script): demo, doctor, bench.

``main(argv)`` is the console-script entry point and returns the exit status. The
subcommands live in their own modules and are imported only when used, so ``--help``
stays fast.
"""
import argparse
import os
import subprocess
import sys
from typing import List, Optional

DESCRIPTION = """\
safepool: a hardened drop-in replacement for concurrent.futures.ProcessPoolExecutor.

commands:
  demo     run real production failures (worker OOM-killed, SIGTERM handler inherited,
           crash during shutdown, hung task, parent killed, pool rotation) against
           ProcessPoolExecutor and SafeProcessPoolExecutor side by side, each in its
           own subprocess, and print what each did and left behind (about 30-60 s)
  doctor   check this machine for what breaks process pools (start methods, CPU and
           memory limits in containers, process/file limits, PID 1 without init) and
           run a live self-test of safepool; exit status 1 if anything FAILs
  bench    run the benchmarks (benchmarks/run.py; source checkout only)
"""

DOCTOR_EPILOG = """\
Each check is OK, WARN or FAIL.
  FAIL  something here will hurt: safepool cannot work as promised (no usable start
        method, limits too low to start a pool, the live self-test failed).
  WARN  it works, but worth knowing (containers, PID 1 without init, low limits).
Exit status: 1 if any check FAILs, otherwise 0 (warnings alone exit 0).
"""

DEMO_EPILOG = """\
Exit status: 0 when every scenario was measured (whatever it showed), 1 if some scenario
could not be measured (crashed or timed out).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``python -m safepool``."""
    from safepool import _cli_demo, _cli_doctor

    parser = argparse.ArgumentParser(
        prog="python -m safepool", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="safepool " + _version())
    sub = parser.add_subparsers(dest="command", title="subcommands", metavar="{demo,doctor,bench}")

    demo = sub.add_parser("demo", help="production failures: stdlib vs safepool, side by side",
                          epilog=DEMO_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _cli_demo.add_arguments(demo)
    demo.set_defaults(handler=_cli_demo.run_demo)

    doctor = sub.add_parser("doctor", help="check this environment and self-test safepool",
                            epilog=DOCTOR_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _cli_doctor.add_arguments(doctor)
    doctor.set_defaults(handler=_cli_doctor.run_doctor)

    # Only here for the help text: main() hands "bench ..." to benchmarks/run.py untouched.
    sub.add_parser("bench", help="run benchmarks/run.py (source checkout only); "
                                 "arguments are passed through", add_help=False)
    return parser


def _version() -> str:
    try:
        from safepool import __version__
    except ImportError:
        return "unknown"
    return str(__version__)


def find_benchmarks() -> Optional[str]:
    """Path of ``benchmarks/run.py`` in the source checkout this package runs from, if any."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", "run.py")
    # setup.cfg next to it tells a safepool checkout from an unrelated site-packages/benchmarks.
    if os.path.isfile(script) and os.path.isfile(os.path.join(root, "setup.cfg")):
        return script
    return None


def run_bench(args: List[str]) -> int:
    """Run the benchmark script with ``args``; return its exit status."""
    script = find_benchmarks()
    if script is None:
        sys.stderr.write(
            "safepool bench: the benchmarks are only in a source checkout of safepool "
            "(benchmarks/run.py); this copy is installed without them.\n")
        return 1
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(script))
    # Benchmark this copy of safepool, not whichever one happens to be installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH")] if p)
    return subprocess.call([sys.executable, script] + list(args), env=env)


def main(argv: Optional[List[str]] = None) -> int:
    """Console-script entry point: parse ``argv`` (default ``sys.argv[1:]``), run, return status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # "bench" passes every following argument through, including ones argparse would reject.
    if argv[:1] == ["bench"]:
        return run_bench(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: return, don't exit
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
