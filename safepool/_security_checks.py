"""The two security checks ``doctor`` runs (issue 13), as JSON-serialisable dicts.

* ``forkserver``: which address the forkserver listens on (see ``_forkserver_guard``);
* ``exec_inheritance``: what a program a task runs with ``close_fds=False`` inherits from a
  real worker (see ``_fd_hygiene``): it must be stdin, stdout and stderr only.
"""
import os
import subprocess
import sys
from typing import Any, Dict

from ._forkserver_guard import forkserver_report

#: Prints the descriptors the program has open, as "fd target" lines. The listing's own
#: descriptor is closed again by the time fstat() runs, so it is left out.
_LISTER = (
    "import os\n"
    "for name in os.listdir('/proc/self/fd'):\n"
    "    try:\n"
    "        os.fstat(int(name))\n"
    "        print(name, os.readlink('/proc/self/fd/' + name))\n"
    "    except OSError:\n"
    "        pass\n"
)


def descriptors_an_exec_sees() -> Dict[int, str]:
    """Run in a worker: what a program started with ``close_fds=False`` finds open."""
    out = subprocess.run([sys.executable, "-c", _LISTER], close_fds=False,
                         stdout=subprocess.PIPE, check=True, timeout=30).stdout.decode()
    found = {}
    for line in out.splitlines():
        fd, _, target = line.partition(" ")
        found[int(fd)] = target
    return found


def exec_inheritance_report(timeout: float = 60.0) -> Dict[str, Any]:
    """Start a one-worker pool, have a task run a program, and report what it inherited."""
    report: Dict[str, Any] = {"id": "exec_inheritance", "title": "Task subprocesses"}
    if not os.path.isdir("/proc/self/fd"):
        report.update(status="OK", detail="not checked: needs /proc/self/fd (Linux)",
                      advice="", inherited={})
        return report
    from ._executor import SafeProcessPoolExecutor

    try:
        with SafeProcessPoolExecutor(1) as pool:
            found = pool.submit(descriptors_an_exec_sees).result(timeout=timeout)
    except Exception as exc:
        report.update(status="FAIL", inherited=None, advice="",
                      detail=f"the check could not run: {type(exc).__name__}: {exc}")
        return report
    extra = {str(fd): target for fd, target in sorted(found.items()) if fd > 2}
    report["inherited"] = extra
    if extra:
        report.update(status="FAIL", advice="report this as a safepool bug",
                      detail="a program a task runs with close_fds=False inherits descriptors "
                             "of the worker: " + ", ".join(f"{fd} ({t})"
                                                          for fd, t in extra.items()))
    else:
        report.update(status="OK", advice="",
                      detail="a program a task runs (close_fds=False) holds only fds 0, 1, 2")
    return report


def security_report(start: bool = True) -> Dict[str, Any]:
    """Both checks, for ``doctor --json``'s ``security`` section.

    ``start=False`` skips everything that starts a process: the forkserver check then reports
    only what the stdlib would do, and the subprocess check is left out.
    """
    report: Dict[str, Any] = {"forkserver": forkserver_report(start=start)}
    if start:
        report["exec_inheritance"] = exec_inheritance_report()
    return report
