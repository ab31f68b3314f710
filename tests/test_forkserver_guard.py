"""Issue 13, item 2: the forkserver safepool defaults to is never the CVE-2022-42919 one.

CPython 3.9.0-3.9.15 and 3.10.0-3.10.8 on Linux bound the forkserver to an abstract Unix
socket, which any local user can connect to. The interpreters here are fixed, so each test
forces that behaviour in a fresh interpreter: ``multiprocessing.connection.arbitrary_address``
is replaced by one that, like those releases, returns an abstract address for AF_UNIX while
``multiprocessing.util.abstract_sockets_supported`` is true ("vulnerable"), or always
("stubborn": an interpreter that cannot be told not to). Then the guard must move the
forkserver to a private file system socket, or refuse with an error that says why.
"""
import json
import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="abstract Unix sockets exist on Linux only")

FORCE = textwrap.dedent(r"""
    import itertools, json, os, socket, stat, sys, time
    import multiprocessing
    from multiprocessing import connection, forkserver, util

    MODE, SCENARIO = sys.argv[1], sys.argv[2]
    _numbers = itertools.count()
    _stdlib_choice = connection.arbitrary_address

    def forced_address(family):
        # The choice of the vulnerable releases: the abstract namespace whenever supported.
        if family == "AF_UNIX" and (MODE == "stubborn" or util.abstract_sockets_supported):
            return "\0listener-%d-%d" % (os.getpid(), next(_numbers))
        return _stdlib_choice(family)

    connection.arbitrary_address = forced_address
    server = forkserver._forkserver
    out = {}

    def state(prefix):
        addr = server._forkserver_address
        out[prefix + "pid"] = server._forkserver_pid
        out[prefix + "address"] = addr if addr is None or addr[:1] != "\0" else "@" + addr[1:]
        if addr and addr[:1] != "\0":
            out[prefix + "mode"] = oct(stat.S_IMODE(os.stat(addr).st_mode))
""")

SCENARIOS = {
    # The guard runs before any forkserver exists.
    "fresh": """
        from safepool._forkserver_guard import ensure_safe_forkserver
        ensure_safe_forkserver(multiprocessing.get_context("forkserver")); state("")
    """,
    # Someone started the forkserver first (abstract); nothing uses it yet.
    "idle": """
        from safepool._forkserver_guard import ensure_safe_forkserver
        forkserver.ensure_running(); state("old_")
        ensure_safe_forkserver(multiprocessing.get_context("forkserver")); state("")
        try:
            os.kill(out["old_pid"], 0); out["old_alive"] = True
        except ProcessLookupError:
            out["old_alive"] = False
    """,
    # As "idle", but another program holds the forkserver's "alive" pipe, so closing ours
    # does not stop it: the stdlib's own _stop() would wait forever here.
    "idle_held": """
        import subprocess
        from safepool._forkserver_guard import ensure_safe_forkserver
        forkserver.ensure_running(); state("old_")
        holder = subprocess.Popen(["sleep", "60"], pass_fds=[server._forkserver_alive_fd])
        began = time.monotonic()
        ensure_safe_forkserver(multiprocessing.get_context("forkserver")); state("")
        out["seconds"] = time.monotonic() - began
        try:
            os.kill(out["old_pid"], 0); out["old_alive"] = True
        except ProcessLookupError:
            out["old_alive"] = False
        holder.kill(); holder.wait()
    """,
    # Someone started the forkserver first and a process of theirs still runs from it.
    "busy": """
        from safepool._forkserver_guard import ensure_safe_forkserver, UnsafeForkserverError
        ctx = multiprocessing.get_context("forkserver")
        p = ctx.Process(target=time.sleep, args=(60,)); p.start(); state("old_")
        try:
            ensure_safe_forkserver(ctx)
        except UnsafeForkserverError as exc:
            out["error"] = str(exc)
        out["user_alive"] = p.is_alive(); state("")
        p.terminate(); p.join()
    """,
    # The stdlib binds abstract sockets whatever it is told: refuse, and leave none listening.
    "refuse": """
        from safepool._forkserver_guard import ensure_safe_forkserver, UnsafeForkserverError
        try:
            ensure_safe_forkserver(multiprocessing.get_context("forkserver"))
        except UnsafeForkserverError as exc:
            out["error"] = str(exc)
        state("")
    """,
    # Through the pool: its workers come from a forkserver on a private socket.
    "pool": """
        from safepool import SafeProcessPoolExecutor
        with SafeProcessPoolExecutor(2) as ex:
            out["results"] = list(ex.map(abs, [-1, -2, -3]))
            state("")
    """,
    # Through the pool, where no private socket can be had: futures fail and say why.
    "pool_refused": """
        from safepool import SafeProcessPoolExecutor
        with SafeProcessPoolExecutor(1) as ex:
            try:
                ex.submit(abs, -1).result(timeout=60)
            except Exception as exc:
                chain, e = [], exc
                while e is not None:
                    chain.append("%s: %s" % (type(e).__name__, e)); e = e.__cause__
                out["error"] = " <- ".join(chain)
        state("")
    """,
}


def run(mode, scenario):
    script = FORCE + textwrap.dedent(SCENARIOS[scenario]) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-c", script, mode, scenario],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=90)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout.decode().splitlines()[-1]), proc.stderr.decode()


def reachable(address):
    """Can this process (any local user could do the same) connect to that address?"""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect("\0" + address[1:] if address.startswith("@") else address)
            return True
        except OSError:
            return False


def private(out, prefix=""):
    address = out[prefix + "address"]
    assert address and not address.startswith("@"), f"abstract forkserver socket: {address}"
    assert out[prefix + "mode"] == "0o600"


@pytest.mark.timeout(120)
def test_the_first_forkserver_is_private_from_the_start():
    out, err = run("vulnerable", "fresh")
    private(out)
    assert "CVE-2022-42919" in err  # said once, on the safepool logger


@pytest.mark.timeout(120)
def test_an_idle_abstract_forkserver_is_restarted_on_a_private_socket():
    out, _ = run("vulnerable", "idle")
    assert out["old_address"].startswith("@"), out  # the forcing works: an abstract socket
    private(out)
    assert out["pid"] != out["old_pid"]
    assert out["old_alive"] is False  # stopped and reaped
    assert not reachable(out["old_address"])


@pytest.mark.timeout(120)
def test_an_abstract_forkserver_is_stopped_even_if_another_program_holds_its_pipe():
    out, _ = run("vulnerable", "idle_held")
    assert out["old_address"].startswith("@"), out
    private(out)
    assert out["old_alive"] is False and out["seconds"] < 10, out


@pytest.mark.timeout(120)
def test_a_busy_abstract_forkserver_is_refused_and_left_to_its_users():
    out, _ = run("vulnerable", "busy")
    assert "CVE-2022-42919" in out["error"]
    assert "spawn" in out["error"] and "serves process" in out["error"], out["error"]
    assert out["user_alive"] is True
    assert out["pid"] == out["old_pid"]


@pytest.mark.timeout(120)
def test_an_interpreter_that_insists_on_abstract_sockets_is_refused():
    out, _ = run("stubborn", "refuse")
    assert "CVE-2022-42919" in out["error"] and "spawn" in out["error"], out
    assert out["pid"] is None  # the abstract forkserver it got was stopped, not left listening


@pytest.mark.timeout(120)
def test_pool_workers_come_from_a_private_forkserver():
    out, _ = run("vulnerable", "pool")
    assert out["results"] == [1, 2, 3]
    private(out)


@pytest.mark.timeout(120)
def test_a_pool_that_cannot_get_a_private_forkserver_fails_with_the_reason():
    out, _ = run("stubborn", "pool_refused")
    assert "BrokenProcessPool" in out["error"], out
    assert "UnsafeForkserverError" in out["error"] and "CVE-2022-42919" in out["error"], out
    assert out["pid"] is None


@pytest.mark.timeout(120)
def test_report_on_this_interpreter():
    from safepool._forkserver_guard import forkserver_report

    report = forkserver_report()
    json.dumps(report)
    assert report["case"] == "fixed" and report["status"] == "OK", report
    assert report["stdlib_would_bind"]["abstract"] is False


REPORT = """
    from safepool._forkserver_guard import forkserver_report
    before = forkserver_report()
    after = forkserver_report(start=True)
    out.update(before=before, after=after)
"""
SCENARIOS["report"] = REPORT


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode, before, after", [("vulnerable", "mitigated", "mitigated"),
                                                 ("stubborn", "refused", "refused")])
def test_report_on_a_forced_interpreter(mode, before, after):
    out, _ = run(mode, "report")
    assert out["before"]["case"] == before, out["before"]
    assert out["after"]["case"] == after, out["after"]
    if mode == "vulnerable":
        assert out["before"]["status"] == "WARN"
        running = out["after"]["running"]
        assert not running["abstract"] and running["socket_mode"] == "0o600", running
    else:
        assert out["after"]["status"] == "FAIL" and out["after"]["running"] is None
