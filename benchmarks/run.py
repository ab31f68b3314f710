#!/usr/bin/env python3
"""Compare safepool with the stdlib ProcessPoolExecutor, loky and pebble.

    python benchmarks/run.py [--quick] [--repeat N] [--only NAME[,NAME]] [--executors E[,E]]
                             [--json FILE] [--write-docs] [--plot FILE.png]

Every measurement runs in a fresh process (``benchmarks/_one.py``), so executors cannot inherit
each other's warm state. Each case is repeated; within a repeat the executors run in a rotated
(or, with --order shuffle, shuffled) order so that slow drifts of machine noise hit all of them
alike. The tables show medians over the repeats and the ratio of each executor to the stdlib
baseline (``concurrent.futures.ProcessPoolExecutor`` with its default start method).

Read benchmarks/README.md for what each case measures and how to read the tables.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _bytecode import compile_safepool_and_benchmarks  # noqa: E402
from _cases import (  # noqa: E402  (needs the sys.path set-up above)
    BASELINE,
    CASES,
    EXECUTORS,
    EXTRA_EXECUTORS,
    MAX_WORKERS,
    OPTIONAL_EXECUTORS,
    case_max_repeat,
    case_size,
)

DOCS_FILE = os.path.join(ROOT, "docs", "_generated", "bench_results.rst")
ONE = os.path.join(HERE, "_one.py")


# --------------------------------------------------------------------------------------------
# Running measurements
# --------------------------------------------------------------------------------------------


def child_env():
    """Environment for measurement processes and, through inheritance, their pool workers.

    forkserver/spawn/loky workers import the task functions' module (``_tasks``) by name, so
    benchmarks/ and the repo root (for ``safepool``) must be on their path.
    """
    env = dict(os.environ)
    parts = [HERE, ROOT]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def executor_available(name):
    """Can ``name``'s package be imported? (checked in a subprocess: importing is not free)."""
    module = {"stdlib": None, "safepool": "safepool", "loky": "loky", "pebble": "pebble"}[
        name.split("-")[0]
    ]
    if module is None:
        return True, ""
    code = "import %s" % module
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=120,
    )
    if proc.returncode == 0:
        return True, ""
    lines = proc.stderr.strip().splitlines()
    return False, lines[-1] if lines else "import failed"


def session_leftovers(sid):
    """Processes still alive in the session of a finished measurement (leaked workers)."""
    try:
        import psutil
    except ImportError:
        return []
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(proc.info["pid"]) == sid:
                found.append(proc.info["pid"])
        except (OSError, psutil.Error):
            continue
    return found


def kill_session_leftovers(sid, grace=3.0):
    """Give the measurement's helpers a moment to exit by themselves, then SIGKILL the rest.

    Only processes in the measurement's own session (which this script created) are touched.
    """
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


def run_one(executor, case, quick, size=None):
    """One measurement in a fresh process; returns the parsed JSON record."""
    cmd = [sys.executable, ONE, "--executor", executor, "--case", case]
    if quick:
        cmd.append("--quick")
    if size is not None:
        cmd += ["--size", str(size)]
    timeout = CASES[case]["timeout"]
    t0 = time.monotonic()
    # A new session makes the measurement and everything it starts one group we can clean up.
    proc = subprocess.Popen(
        cmd,
        env=child_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = proc.communicate()
        record = {"status": "error", "value": None, "note": "timed out after %ds" % timeout}
    else:
        record = None
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                    break
                except ValueError:
                    continue
        if record is None:
            tail = (err.strip().splitlines() or ["no output"])[-1]
            record = {
                "status": "error",
                "value": None,
                "note": "exit code %s: %s" % (proc.returncode, tail),
            }
    leaked = kill_session_leftovers(proc.pid)
    record.update(executor=executor, case=case, elapsed_total=time.monotonic() - t0)
    record.setdefault("unit", CASES[case]["unit"])
    if leaked:
        record["leaked_processes"] = len(leaked)
    if record.get("status") == "error" and err:
        record.setdefault("stderr_tail", err[-1500:])
    return record


def plan(executors, cases, repeat, quick, order, seed):
    """The measurements in run order: repeat-major, executors rotated or shuffled per repeat."""
    rng = random.Random(seed)
    steps = []
    for r in range(repeat):
        for ci, case in enumerate(cases):
            limit = case_max_repeat(case, quick)
            if limit is not None and r >= limit:
                continue
            execs = list(executors)
            if order == "shuffle":
                rng.shuffle(execs)
            else:
                k = (r + ci) % len(execs)
                execs = execs[k:] + execs[:k]
            for e in execs:
                steps.append((r, case, e))
    return steps


# --------------------------------------------------------------------------------------------
# Summaries and formatting
# --------------------------------------------------------------------------------------------


def summarize(records, executors, cases):
    """{case: {executor: summary}} with the median over successful repeats and its spread."""
    out = {}
    for case in cases:
        out[case] = {}
        for e in executors:
            rs = [r for r in records if r["case"] == case and r["executor"] == e]
            values = [r["value"] for r in rs if r.get("status") == "ok" and r["value"] is not None]
            notes = sorted({r.get("note", "") for r in rs if r.get("status") != "ok"})
            statuses = sorted({r.get("status") for r in rs})
            s = {"n": len(values), "runs": len(rs), "statuses": statuses, "notes": notes}
            if values:
                med = statistics.median(values)
                s.update(median=med, min=min(values), max=max(values), values=values)
                if med and len(values) > 1:
                    s["spread_pct"] = 100.0 * (max(values) - min(values)) / 2.0 / abs(med)
            else:
                s["median"] = None
            s["leaked_processes"] = sum(r.get("leaked_processes", 0) for r in rs)
            out[case][e] = s
    return out


def compare(case, summary, executor):
    """Ratio (or difference) of ``executor`` to the baseline, or None if it cannot be formed."""
    base = summary[case].get(BASELINE, {}).get("median")
    val = summary[case][executor].get("median")
    if base is None or val is None:
        return None
    if CASES[case]["compare"] == "diff":
        return val - base
    if base == 0:
        return None
    return val / base


def fmt_value(case, value, compact=False):
    """``value`` in the case's unit; ``compact`` writes throughputs with 3 significant
    digits and a k/M suffix (``1.13M/s``), short enough for a narrow docs table."""
    unit = CASES[case]["unit"]
    if value is None:
        return "-"
    if unit == "s":
        if value < 1e-3:
            return "%.0f us" % (value * 1e6)
        if value < 1.0:
            return "%.1f ms" % (value * 1e3)
        return "%.2f s" % value
    if unit == "MB":
        return "%+.1f MB" % value
    if compact and value >= 1e6:
        return "%.3gM/s" % (value / 1e6)
    if compact and value >= 1e4:
        return "%.3gk/s" % (value / 1e3)
    return "{:,.0f}/s".format(value)


def fmt_cell(case, s, short=False, compact=False):
    if s.get("median") is None:
        if s["runs"] == 0:
            return "not run"
        note = s["notes"][0] if s["notes"] else "/".join(s["statuses"])
        if not short and len(note) > 40:
            note = note[:37] + "..."
        return note if not short else note.split(" (")[0].split(":")[0]
    text = fmt_value(case, s["median"], compact)
    if not short:
        if s.get("spread_pct") is not None and CASES[case]["compare"] == "ratio":
            text += " ±%.0f%%" % s["spread_pct"]
        if s["n"] < s["runs"]:
            text += " (%d/%d ok)" % (s["n"], s["runs"])
        if s.get("leaked_processes"):
            text += " LEAK"
    return text


def fmt_compare(case, summary, executor):
    c = compare(case, summary, executor)
    if c is None:
        base = summary[case].get(BASELINE, {})
        if base.get("median") is None and summary[case][executor].get("median") is not None:
            return "stdlib: %s" % fmt_cell(case, base, short=True)
        return "-"
    if CASES[case]["compare"] == "diff":
        return "%+.1f MB" % c
    return "%.2fx" % c


def fmt_size(case, size):
    if CASES[case]["size"] == 1:
        return "-"
    if case == "bigdata":
        return "%g MB" % (size / float(1024 * 1024))
    return "{:,}".format(size)


def case_label(case, quick, sizes):
    info = CASES[case]
    better = "higher" if info["better"] == "higher" else "lower"
    return "%s [%s, %s is better]" % (case, info["unit"], better)


def table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)), line]
    for row in rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    return "\n".join(out)


def machine_info():
    import multiprocessing

    info = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "max_workers": MAX_WORKERS,
        "stdlib_default_start_method": multiprocessing.get_start_method(allow_none=False),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    versions = {}
    for mod in ("safepool", "loky", "pebble", "psutil"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", "?")
        except Exception:
            pass
    info["versions"] = versions
    try:
        commit = subprocess.run(
            ["git", "-C", ROOT, "describe", "--always", "--dirty"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            universal_newlines=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    info["commit"] = commit or "unknown"
    return info


def render_text(summary, executors, cases, info, args, sizes):
    lines = []
    lines.append(
        "Machine: %s cores, Python %s (%s), stdlib default start method: %s; max_workers=%d"
        % (
            info["cpu_count"],
            info["python"],
            info["platform"],
            info["stdlib_default_start_method"],
            MAX_WORKERS,
        )
    )
    lines.append("")
    lines.append("Medians over repeats (± = half the min-max range, relative to the median):")
    headers = ["case", "size"] + executors
    rows = []
    for case in cases:
        rows.append(
            [case_label(case, args.quick, sizes), fmt_size(case, sizes[case])]
            + [fmt_cell(case, summary[case][e]) for e in executors]
        )
    lines.append(table(headers, rows))
    lines.append("")
    others = [e for e in executors if e != BASELINE]
    lines.append(
        "Relative to %s: ratio = executor / stdlib (throughput: >1 is better; times: <1 is "
        "better); memory: difference in MB (lower is better)." % BASELINE
    )
    rows = []
    for case in cases:
        better = CASES[case]["better"]
        rows.append([case, better] + [fmt_compare(case, summary, e) for e in others])
    lines.append(table(["case", "better"] + others, rows))
    leaks = [
        (case, e, summary[case][e]["leaked_processes"])
        for case in cases
        for e in executors
        if summary[case][e].get("leaked_processes")
    ]
    if leaks:
        lines.append("")
        lines.append("LEAKED processes left alive after the measurement process exited:")
        for case, e, n in leaks:
            lines.append("  %s / %s: %d" % (case, e, n))
    return "\n".join(lines)


def rst_escape(text):
    return str(text).replace("|", "\\|").replace("*", "\\*")


def rst_cell(text):
    """One list-table cell. A cell that starts like a list item ("-", "* x", "1. x") would
    render as a bullet or a numbered list inside the table: escape its first character."""
    text = rst_escape(text)
    if not text.strip():
        return "\\-"
    if re.match(r"^(?:[-+\u2022](?:\s|$)|\d+[.)](?:\s|$)|#\.)", text):
        return "\\" + text
    return text


def render_rst(summary, executors, cases, info, args, sizes):
    """The generated docs page: one list-table of medians and ratios, then what was not
    measured and what each case does.

    The table is kept narrow enough for the docs' content column (about 740 px at 1280 px):
    no size column (each case's N is in its description below), and a cell with no number
    shows one short word, its reason listed under the table.
    """
    memory_repeats = min(args.repeat, case_max_repeat("memory", args.quick) or args.repeat)
    # This fragment is included under a "-" heading of docs/benchmarks.rst: it must not use
    # "=" or "-" underlines itself (docs/contributing-docs.rst: sub-headings use "~").
    out = [
        ".. This file is replaced by `python benchmarks/run.py --write-docs`; do not edit.",
        ".. Headings inside it, if any, must use ~ underlines (benchmarks.rst uses = and -).",
        "",
        "Measured on %s with ``python benchmarks/run.py%s``."
        % (
            info["date"],
            (" --quick" if args.quick else "") + (" --repeat %d" % args.repeat),
        ),
        "",
        "* Machine: %s cores (%s), %s" % (info["cpu_count"], info["processor"], info["platform"]),
        "* Python: %s %s; the stdlib's default start method here is ``%s``"
        % (info["implementation"], info["python"], info["stdlib_default_start_method"]),
        "* Versions: %s; safepool from commit ``%s``"
        % (", ".join("%s %s" % kv for kv in sorted(info["versions"].items())), info["commit"]),
        "* Every executor runs with ``max_workers=%d``; every measurement in a fresh process; "
        "medians over %d repeat(s) (%s for ``memory``), executors interleaved."
        % (MAX_WORKERS, args.repeat, memory_repeats),
        "",
        "Each cell shows the median and, in brackets, the ratio to ``stdlib`` "
        "(``concurrent.futures.ProcessPoolExecutor``): for throughput (``/s``) higher is "
        "better, for times lower is better. For ``memory`` the bracket holds the difference "
        "from ``stdlib`` in MB.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :stub-columns: 1",
        "",
        "   * - case",
    ]
    for e in executors:
        out.append("     - %s" % rst_cell(e))
    unmeasured = []
    for case in cases:
        info_c = CASES[case]
        out.append("   * - %s (%s, %s is better)" % (case, info_c["unit"], info_c["better"]))
        for e in executors:
            s = summary[case][e]
            if s.get("median") is None:
                cell = fmt_cell(case, s, short=True)
                full = fmt_cell(case, s)
                if full != cell:
                    unmeasured.append("``%s`` with ``%s``: %s" % (case, e, rst_escape(full)))
            else:
                cell = fmt_cell(case, s, compact=True)
                if e != BASELINE:
                    cell += " (%s)" % fmt_compare(case, summary, e)
            out.append("     - %s" % rst_cell(cell))
    out.append("")
    if unmeasured:
        out += ["Cells without a number:", ""] + ["* %s" % line for line in unmeasured] + [""]
    out += ["What the cases measure", "~~~~~~~~~~~~~~~~~~~~~~", ""]
    for case in cases:
        out.append("``%s``" % case)
        # reStructuredText from _cases.py. A description that starts with code
        # (``list(map(...))``) is shown as written: a capital letter would make the code wrong.
        text = CASES[case]["description"]
        if text[:1].isalpha():
            text = text[0].upper() + text[1:]
        if CASES[case]["size"] != 1:
            text += " (N = %s)" % fmt_size(case, sizes[case])
        out.append("   %s." % text)
    out.append("")
    return "\n".join(out)


def plot(summary, executors, cases, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("--plot needs matplotlib (pip install matplotlib); skipped\n")
        return False
    others = [e for e in executors if e != BASELINE]
    ratio_cases = [
        c
        for c in cases
        if CASES[c]["compare"] == "ratio" and any(compare(c, summary, e) for e in others)
    ]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(ratio_cases)), 4.5))
    width = 0.8 / max(1, len(others))
    for i, e in enumerate(others):
        xs, ys = [], []
        for j, case in enumerate(ratio_cases):
            c = compare(case, summary, e)
            if c is None:
                continue
            # Plot "speed-up" so that taller is always better, whatever the unit.
            xs.append(j + i * width)
            ys.append(c if CASES[case]["better"] == "higher" else 1.0 / c)
        ax.bar(xs, ys, width=width, label=e)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(others) - 1) / 2 for j in range(len(ratio_cases))])
    ax.set_xticklabels(ratio_cases, rotation=30, ha="right")
    ax.set_ylabel("speed-up vs stdlib (higher is better)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Relative to concurrent.futures.ProcessPoolExecutor")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="2 repeats and smaller sizes")
    p.add_argument("--repeat", type=int, default=None, help="repeats per measurement (default 5)")
    p.add_argument("--only", default=None, help="comma-separated case names (default: all)")
    p.add_argument(
        "--executors",
        default=None,
        help="comma-separated executors (default: %s; extra: %s)"
        % (",".join(EXECUTORS), ",".join(EXTRA_EXECUTORS)),
    )
    p.add_argument("--json", default=None, metavar="FILE", help="write raw records and medians")
    p.add_argument("--write-docs", action="store_true", help="write %s" % DOCS_FILE)
    p.add_argument("--plot", default=None, metavar="FILE.png", help="bar chart (needs matplotlib)")
    p.add_argument("--order", choices=["rotate", "shuffle"], default="rotate")
    p.add_argument("--seed", type=int, default=None, help="seed for --order shuffle")
    p.add_argument(
        "--memory-tasks",
        type=int,
        default=None,
        help="tasks for the memory case (default %s, --quick %s)"
        % ("{:,}".format(CASES["memory"]["size"]), "{:,}".format(CASES["memory"]["quick_size"])),
    )
    p.add_argument(
        "--from-json",
        default=None,
        metavar="FILE",
        help="measure nothing: render a saved --json run again (with --write-docs, --plot)",
    )
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 2 if args.quick else 5
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        cases, executors, sizes, records, info, total = load_json(args)
        args.json = None  # do not overwrite what we just read
        report(args, cases, executors, sizes, records, info, total)
        return 0
    compile_safepool_and_benchmarks()
    cases = list(CASES)
    if args.only:
        cases = [c.strip() for c in args.only.split(",") if c.strip()]
        unknown = [c for c in cases if c not in CASES]
        if unknown:
            sys.exit("unknown case(s) %s; choose from %s" % (unknown, ", ".join(CASES)))
    wanted = EXECUTORS if not args.executors else [e.strip() for e in args.executors.split(",")]
    unknown = [e for e in wanted if e not in EXECUTORS + EXTRA_EXECUTORS]
    if unknown:
        sys.exit("unknown executor(s) %s" % unknown)
    if BASELINE not in wanted:
        wanted = [BASELINE] + wanted

    executors, skipped = [], []
    for e in wanted:
        ok, why = executor_available(e)
        if ok:
            executors.append(e)
        elif e in OPTIONAL_EXECUTORS:
            skipped.append((e, why))
        else:
            # Keep it in the table: its cells will say why it failed.
            executors.append(e)
            sys.stderr.write("warning: %s is not importable (%s)\n" % (e, why))
    for e, why in skipped:
        sys.stderr.write("skipping optional executor %s: %s\n" % (e, why))

    sizes = {c: case_size(c, args.quick) for c in CASES}
    overrides = {}
    if args.memory_tasks is not None:
        overrides["memory"] = sizes["memory"] = args.memory_tasks
    records, info, total = measure(args, cases, executors, sizes, overrides)
    report(args, cases, executors, sizes, records, info, total)
    return 0


def measure(args, cases, executors, sizes, overrides):
    """Run every planned measurement; return (records, machine info, total seconds)."""
    steps = plan(executors, cases, args.repeat, args.quick, args.order, args.seed)
    info = machine_info()
    sys.stderr.write(
        "%d measurements: %d cases x %d executors x up to %d repeats%s\n"
        % (len(steps), len(cases), len(executors), args.repeat, " (quick)" if args.quick else "")
    )
    records = []
    t_start = time.monotonic()
    for i, (r, case, e) in enumerate(steps, 1):
        rec = run_one(e, case, args.quick, overrides.get(case))
        rec["repeat"] = r
        records.append(rec)
        if rec.get("status") == "ok":
            shown = fmt_value(case, rec["value"])
        else:
            shown = "%s: %s" % (rec.get("status"), rec.get("note", ""))
        sys.stderr.write(
            "[%3d/%d] r%d %-12s %-18s %s  (%.1fs)\n"
            % (i, len(steps), r + 1, case, e, shown, rec["elapsed_total"])
        )
        sys.stderr.flush()
    total = time.monotonic() - t_start
    return records, info, total


def load_json(args):
    """Re-read a --json file to render it again (tables, --write-docs, --plot) without measuring."""
    with open(args.from_json) as f:
        data = json.load(f)
    saved = data["args"]
    for key in ("quick", "repeat"):
        setattr(args, key, saved[key])
    records = data["records"]
    executors, cases = [], []
    for r in records:
        if r["executor"] not in executors:
            executors.append(r["executor"])
        if r["case"] not in cases:
            cases.append(r["case"])
    order = EXECUTORS + EXTRA_EXECUTORS
    executors.sort(key=lambda e: order.index(e) if e in order else len(order))
    cases.sort(key=list(CASES).index)
    return cases, executors, data["sizes"], records, data["machine"], data["total_seconds"]


def report(args, cases, executors, sizes, records, info, total):
    """Print the tables; write --json, --write-docs and --plot outputs."""
    summary = summarize(records, executors, cases)
    print()
    print(render_text(summary, executors, cases, info, args, sizes))
    print()
    print("Total time: %.0f s for %d measurements." % (total, len(records)))

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "args": vars(args),
                    "sizes": sizes,
                    "summary": summary,
                    "records": records,
                    "total_seconds": total,
                },
                f,
                indent=1,
                sort_keys=True,
            )
        print("Raw results written to %s" % args.json)
    if args.write_docs:
        os.makedirs(os.path.dirname(DOCS_FILE), exist_ok=True)
        with open(DOCS_FILE, "w") as f:
            f.write(render_rst(summary, executors, cases, info, args, sizes))
        print("Docs table written to %s" % os.path.relpath(DOCS_FILE, ROOT))
    if args.plot and plot(summary, executors, cases, args.plot):
        print("Plot written to %s" % args.plot)
    errors = [r for r in records if r.get("status") == "error"]
    if errors:
        print(
            "%d measurement(s) failed; first: %s %s: %s"
            % (len(errors), errors[0]["executor"], errors[0]["case"], errors[0].get("note"))
        )


if __name__ == "__main__":
    sys.exit(main())
