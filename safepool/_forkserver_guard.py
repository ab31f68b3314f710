"""The forkserver safepool defaults to must never listen where another local user can reach it.

Anyone who can connect to the stdlib's forkserver socket can have it fork a process that runs
code of their choosing as our user. CPython protects the socket with the file system: a file of
mode 0600 in a private temporary directory. But on Linux, CPython 3.9.0-3.9.15 and
3.10.0-3.10.8 bound it in the *abstract* namespace instead, which has no permissions at all:
any local user could connect (CVE-2022-42919, CPython gh-97514). Distributions backport the fix
without changing the version number, so the version cannot tell; the address can.

:func:`ensure_safe_forkserver` is called before a worker is started. For a forkserver context
it makes sure the stdlib's forkserver runs and looks at the address it listens on:

* a file system address: nothing to do;
* an abstract address, and no process is using that forkserver yet: it turns abstract sockets
  off for :mod:`multiprocessing` in this process (what the upstream fix does), stops the
  forkserver and starts it again, then checks the new address;
* otherwise it raises :class:`UnsafeForkserverError`, which says why and what to do.

When no forkserver runs yet, it first asks the stdlib which address it *would* bind, and turns
abstract sockets off before the first bind, so that no abstract socket ever exists.

:func:`forkserver_report` describes the case this interpreter is in, for ``doctor``.
"""
import logging
import os
import signal
import stat
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from ._preload import passing_names

log = logging.getLogger("safepool")

CVE = "CVE-2022-42919"
#: How long a forkserver whose "alive" pipe we closed gets to exit before it is killed.
STOP_GRACE = 1.0

_lock = threading.Lock()  # one check at a time, across pools and threads
#: What safepool did in this process, for forkserver_report(): None, or a sentence.
_mitigation: Optional[str] = None


class UnsafeForkserverError(RuntimeError):
    """The stdlib's forkserver listens on an abstract Unix socket that any local user can
    connect to (CVE-2022-42919), and safepool could not move it to a private one."""


def is_abstract(address: Any) -> bool:
    """Whether a Unix socket address is in Linux's abstract namespace (starts with NUL)."""
    if isinstance(address, (bytes, bytearray)):
        return address[:1] == b"\0"
    if isinstance(address, str):
        return address[:1] == "\0"
    return False


def describe(address: Any) -> Optional[str]:
    """An address as ``ss -x`` prints it: an abstract one starts with ``@``."""
    if address is None:
        return None
    if isinstance(address, (bytes, bytearray)):
        address = bytes(address).decode("utf-8", "backslashreplace")
    return "@" + address[1:] if is_abstract(address) else str(address)


def ensure_safe_forkserver(ctx: Any) -> None:
    """Before starting a worker with ``ctx``: make sure its forkserver is not reachable by
    other users. Does nothing for other start methods. Raises UnsafeForkserverError."""
    get_method = getattr(ctx, "get_start_method", None)
    if get_method is None or get_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = forkserver._forkserver
    with _lock:
        if getattr(server, "_forkserver_pid", None) is None and is_abstract(_would_bind()):
            # Not started yet: make the very first bind a private one, or bind nothing.
            _disable_abstract_sockets("before the forkserver started")
            if is_abstract(_would_bind()):
                raise _insists_on_abstract(_would_bind())
            log.warning("safepool: %s (%s: the stdlib would have listened where any local "
                        "user can connect)", _mitigation, CVE)
        with passing_names(server):
            server.ensure_running()
        address = getattr(server, "_forkserver_address", None)
        if not is_abstract(address):
            return
        _restart_privately(server, address)


def _restart_privately(server: Any, address: Any) -> None:
    pid = server._forkserver_pid
    users = _forkserver_children(pid)
    if users is None or users:
        who = "an unknown number of processes" if users is None else (
            "process%s %s" % ("es" if len(users) > 1 else "", ", ".join(map(str, users))))
        raise UnsafeForkserverError(
            f"The multiprocessing forkserver of this interpreter (pid {pid}) listens on the "
            f"abstract Unix socket {describe(address)}, which any local user can connect to "
            f"and have code run as this user ({CVE}, CPython gh-97514). safepool would restart "
            f"it on a private socket, but it already serves {who}, started before safepool "
            "was used, which a restart would break. Fix: upgrade Python (3.9.16+, 3.10.9+, "
            "3.11+), or create the safepool executor before anything else uses the "
            "forkserver, or pass mp_context=multiprocessing.get_context('spawn').")
    _disable_abstract_sockets(f"then restarted the forkserver (pid {pid}) that listened on "
                              f"{describe(address)}")
    _stop(server)
    with passing_names(server):
        server.ensure_running()
    if is_abstract(server._forkserver_address):
        error = _insists_on_abstract(server._forkserver_address)
        _stop(server)  # never leave it listening there
        raise error
    log.warning("safepool: the multiprocessing forkserver listened on the abstract Unix socket "
                "%s, which any local user can connect to (%s); safepool turned abstract "
                "sockets off for multiprocessing in this process and restarted it on %s",
                describe(address), CVE, describe(server._forkserver_address))


def _insists_on_abstract(address: Any) -> UnsafeForkserverError:
    return UnsafeForkserverError(
        f"The multiprocessing forkserver of this interpreter binds abstract Unix sockets "
        f"({describe(address)}), which any local user can connect to and have code run as "
        f"this user ({CVE}, CPython gh-97514), even with multiprocessing.util."
        "abstract_sockets_supported turned off, so safepool refuses to use it. Fix: "
        "upgrade Python (3.9.16+, 3.10.9+, 3.11+), or pass "
        "mp_context=multiprocessing.get_context('spawn').")


def _would_bind() -> Any:
    """The address the stdlib would give a new forkserver now (binds nothing)."""
    from multiprocessing import connection

    try:
        return connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]  # private
    except Exception:  # the stdlib changed: the check after the start still applies
        return None


def _disable_abstract_sockets(why: str) -> None:
    """Make multiprocessing use file system sockets in this process, as the upstream fix does:
    the vulnerable releases pick an abstract address whenever this flag is true."""
    global _mitigation
    from multiprocessing import util

    # Final in typeshed; turning it off is the point (see above).
    util.abstract_sockets_supported = False  # type: ignore[misc]
    if _mitigation is None:
        _mitigation = f"turned abstract sockets off for multiprocessing in this process, {why}"


def _forkserver_children(pid: int) -> Optional[List[int]]:
    """The live processes the forkserver has forked (None if that cannot be known)."""
    try:
        import psutil

        return sorted(p.pid for p in psutil.Process(pid).children()
                      if p.status() != psutil.STATUS_ZOMBIE)
    except Exception:
        return None


def _stop(server: Any) -> None:
    """Stop the stdlib's forkserver and reap it, without waiting forever.

    The stdlib's own ``_stop()`` waits until every holder of the "alive" pipe has closed it,
    which a forgotten grandchild can make forever: close our end, give the server a moment to
    exit on its own, then kill it (it has no child left, and nothing to clean up).
    """
    with server._lock:
        pid, alive_fd = server._forkserver_pid, server._forkserver_alive_fd
        address = server._forkserver_address
        server._forkserver_pid = server._forkserver_alive_fd = None
        server._forkserver_address = None
    if pid is None:
        return
    try:
        os.close(alive_fd)
    except (OSError, TypeError):
        pass
    deadline = time.monotonic() + STOP_GRACE
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            break
        if done:
            break
        if time.monotonic() >= deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            break
        time.sleep(0.005)
    if address and not is_abstract(address):
        try:
            os.unlink(address)
        except OSError:
            pass


def _socket_file(address: Any) -> Dict[str, Any]:
    try:
        st, dir_st = os.stat(address), os.stat(os.path.dirname(address) or ".")
    except (OSError, TypeError, ValueError):
        return {}
    return {"socket_mode": oct(stat.S_IMODE(st.st_mode)),
            "directory_mode": oct(stat.S_IMODE(dir_st.st_mode)),
            "owner_is_us": st.st_uid == os.getuid()}


def _stdlib_would_bind() -> Dict[str, Any]:
    """What the stdlib picks with abstract sockets as it has them, and with them turned off
    (restored at once; turning them off for a moment only makes other callers safer)."""
    from multiprocessing import util

    now = _would_bind()
    out = {"abstract": is_abstract(now), "address": describe(now)}
    if is_abstract(now) and getattr(util, "abstract_sockets_supported", False):
        util.abstract_sockets_supported = False  # type: ignore[misc]  # Final in typeshed
        try:
            out["abstract_when_turned_off"] = is_abstract(_would_bind())
        finally:
            util.abstract_sockets_supported = True  # type: ignore[misc]
    return out


def forkserver_report(start: bool = False) -> Dict[str, Any]:
    """Which case this interpreter is in, for ``doctor`` (JSON-serialisable).

    ``start=True`` also starts the forkserver through :func:`ensure_safe_forkserver` and
    reports its live address. Keys: ``status`` (OK / WARN / FAIL), ``case`` (``fixed``,
    ``mitigated``, ``refused``, ``unavailable``), ``detail`` and ``advice`` for people, and the
    facts: the stdlib's choice of address, the running forkserver's pid, address and modes.
    """
    import multiprocessing
    from multiprocessing import forkserver

    report: Dict[str, Any] = {
        "id": "forkserver_socket", "title": "Forkserver socket", "cve": CVE,
        "platform_has_abstract_sockets": sys.platform.startswith("linux")
        or hasattr(sys, "getandroidapilevel"),
        "abstract_sockets_turned_off_by_safepool": _mitigation is not None,
        "mitigation": _mitigation,
    }
    if "forkserver" not in multiprocessing.get_all_start_methods():
        report.update(status="OK", case="unavailable", advice="",
                      detail="no forkserver on this platform: safepool uses spawn")
        return report
    with _lock:
        report["stdlib_would_bind"] = _stdlib_would_bind()
    if start:
        try:
            ensure_safe_forkserver(multiprocessing.get_context("forkserver"))
        except UnsafeForkserverError as exc:
            report["error"] = str(exc)
    server = forkserver._forkserver
    address = getattr(server, "_forkserver_address", None)
    report["running"] = None if getattr(server, "_forkserver_pid", None) is None else dict(
        pid=server._forkserver_pid,  # type: ignore[attr-defined]  # the stdlib's private
        address=describe(address), abstract=is_abstract(address),
        **({} if is_abstract(address) else _socket_file(address)))
    report["mitigation"] = _mitigation
    report["abstract_sockets_turned_off_by_safepool"] = _mitigation is not None
    report.update(_classify(report))
    return report


def _classify(r: Dict[str, Any]) -> Dict[str, str]:
    would, running = r["stdlib_would_bind"], r["running"]
    if r.get("error") or (running and running["abstract"]):
        return dict(status="FAIL", case="refused",
                    detail=f"the forkserver listens on an abstract Unix socket ({CVE}): "
                           "safepool refuses to start forkserver workers",
                    advice="upgrade Python (3.9.16+, 3.10.9+, 3.11+) or use "
                           "mp_context=multiprocessing.get_context('spawn')")
    if would["abstract"] and would.get("abstract_when_turned_off", True):
        return dict(status="FAIL", case="refused",
                    detail=f"this interpreter binds the forkserver to abstract Unix sockets "
                           f"({CVE}) and cannot be told not to: safepool refuses forkserver",
                    advice="upgrade Python (3.9.16+, 3.10.9+, 3.11+) or use "
                           "mp_context=multiprocessing.get_context('spawn')")
    if would["abstract"] or r["mitigation"]:
        return dict(status="WARN", case="mitigated",
                    detail=f"this interpreter's multiprocessing binds the forkserver to an "
                           f"abstract Unix socket that any local user can use ({CVE}); "
                           "safepool turns that off and checks the forkserver's address",
                    advice="upgrade Python (3.9.16+, 3.10.9+, 3.11+): a forkserver started "
                           "in this process before safepool is used stays exposed")
    live = "" if not running else f"; running as pid {running['pid']} on {running['address']}"
    return dict(status="OK", case="fixed", advice="",
                detail=f"the forkserver listens on a private file system socket{live}")
