"""``python -m safepool`` (or the ``safepool`` console script): demo, doctor, bench.

``main(argv)`` is the console-script entry point and returns the exit status. The
subcommands live in their own modules (``demo``, ``doctor``; ``_harness`` holds what they
share), and ``bench`` hands over to ``benchmarks/run.py`` in a source checkout.
"""
import argparse
import os
import subprocess
import sys
from typing import Any, List, Optional

from safepool.cli._install import version_report

DESCRIPTION = "A hardened drop-in replacement for concurrent.futures.ProcessPoolExecutor."

DOCTOR_EPILOG = [
    "Each check is OK, WARN or FAIL.",
    [("FAIL", "something here will hurt: safepool cannot work as promised (no usable start "
              "method, limits too low to start a pool, the live self-test failed)."),
     ("WARN", "it works, but worth knowing (containers, PID 1 without init, low limits).")],
    "Exit status: 1 if any check FAILs, otherwise 0 (warnings alone exit 0).",
]

DEMO_EPILOG = [
    "Exit status: 0 when every scenario was measured (whatever it showed), 1 if some "
    "scenario could not be measured (crashed or timed out).",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``python -m safepool``.

    Every help text is wrapped to the terminal (``COLUMNS``), and each command is listed
    once, by argparse, with its one-line summary.
    """
    from safepool.cli import demo as demo_cli
    from safepool.cli import doctor as doctor_cli
    from safepool.cli._text import help_text

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m safepool", description=DESCRIPTION)
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version, where it is installed, and any copy or "
                             "folder that shadows it; then exit")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", formatter_class=raw, epilog=help_text(*DEMO_EPILOG),
        help="run real production failures (worker OOM-killed, inherited SIGTERM handler, "
             "crash at shutdown, hung task, parent killed, pool rotation) against "
             "ProcessPoolExecutor and SafeProcessPoolExecutor side by side, each in its own "
             "subprocess; print what each did and left behind (about 30-60 s)")
    demo_cli.add_arguments(demo)
    demo.set_defaults(handler=demo_cli.run_demo)

    doctor = sub.add_parser(
        "doctor", formatter_class=raw, epilog=help_text(*DOCTOR_EPILOG),
        help="check this machine for what breaks process pools (start methods, container "
             "CPU and memory limits, process and file limits, PID 1 without init, a "
             "shadowed install) and self-test safepool; exit status 1 if anything FAILs")
    doctor_cli.add_arguments(doctor)
    doctor.set_defaults(handler=doctor_cli.run_doctor)

    # Only here for the help text: main() hands "bench ..." to benchmarks/run.py untouched.
    sub.add_parser("bench", add_help=False,
                   help="run the benchmarks (benchmarks/run.py, in a source checkout only); "
                        "every argument is passed through")
    return parser


class _VersionAction(argparse.Action):
    """``--version``: the version, where this copy runs from, and whether it is shadowed.

    Not argparse's own version action, which rewraps the text into one paragraph.
    """

    def __init__(self, option_strings: List[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: Optional[str] = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        from safepool.cli._text import paragraph, terminal_width

        sys.stdout.write(paragraph(version_report(), terminal_width()))
        parser.exit()


def find_benchmarks() -> Optional[str]:
    """Path of ``benchmarks/run.py`` in the source checkout this package runs from, if any."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
