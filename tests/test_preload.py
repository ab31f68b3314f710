"""Issue 15, item 2: what every worker imports is imported once, in the fork server
(``preload=`` and safepool's own worker module), never silently skipped."""
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
from concurrent.futures.process import BrokenProcessPool

import pytest
from conftest import wait_until

from safepool import SafeProcessPoolExecutor
from safepool._preload import BOOT_MODULE, check_modules

pytestmark = pytest.mark.timeout(120)

# safepool is imported inside the main block only: each worker imports this script as
# __mp_main__ after it forks (the stdlib's '__main__' preload does nothing before Python
# 3.14, CPython gh-126631; from 3.14 the fork server imports it), and a top-level import
# would load safepool's modules by itself, proving nothing about BOOT_MODULE.
FRESH_PROCESS = textwrap.dedent("""
    import json, os, sys

    def where_imported():
        import safepool._worker as w
        return {"worker": os.getpid(), "imported_in": w.IMPORTED_IN,
                "env": os.environ.get("SAFEPOOL_FORKSERVER_PRELOAD")}

    if __name__ == "__main__":
        import subprocess
        from multiprocessing import forkserver
        from safepool import SafeProcessPoolExecutor

        with SafeProcessPoolExecutor(2, preload=["numpy"]) as ex:
            seen = [ex.submit(where_imported).result(timeout=60) for _ in range(4)]
            server = forkserver._forkserver._forkserver_pid
            with open("/proc/%d/maps" % server) as f:
                maps = f.read()
        print(json.dumps({"server": server, "seen": seen,
                          "numpy_in_server": "_multiarray_umath" in maps,
                          "preload": forkserver._forkserver._preload_modules,
                          # what a child of ours inherits (the C environment)
                          "env_left": subprocess.run(
                              [sys.executable, "-c", "import os; print(os.environ.get("
                               "'SAFEPOOL_FORKSERVER_PRELOAD', ''))"],
                              stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()}))
""")

linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/maps"),
                                reason="reads /proc/<pid>/maps (Linux)")


def run_script(tmp_path, text, **files):
    import json

    for name, body in files.items():
        (tmp_path / name).write_text(textwrap.dedent(body))
    script = tmp_path / "main.py"
    script.write_text(text)
    out = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=100,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


STARTING_COSTS = textwrap.dedent("""
    import json, os, sys

    def loaded():
        import safepool._worker
        return {"executor": "safepool._executor" in sys.modules,
                "dataclasses": "dataclasses" in sys.modules}

    if __name__ == "__main__":
        from multiprocessing import forkserver
        from safepool import SafeProcessPoolExecutor

        with SafeProcessPoolExecutor(1) as ex:
            seen = ex.submit(loaded).result(timeout=60)
            with open("/proc/%d/maps" % forkserver._forkserver._forkserver_pid) as f:
                maps = f.read()
        print(json.dumps({"worker": seen, "parent_dataclasses": "dataclasses" in sys.modules,
                          "ctypes_in_server": "_ctypes" in maps,
                          "ctypes_builtin": "_ctypes" in sys.builtin_module_names}))
""")


@linux_only
def test_what_every_worker_would_import_is_loaded_in_the_fork_server(tmp_path):
    """Measured costs of each worker start, each moved out of it (see benchmarks/README):
    the executor's modules (a main module using safepool imports them after each fork,
    5-8 ms), ctypes and libc for the subreaper's prctl (about 2 ms), and no dataclasses at
    all until stats() is called (4-5 ms, also in the parent)."""
    report = run_script(tmp_path, STARTING_COSTS)
    # This main module imports safepool in its main block only: the worker has the
    # executor's modules because the fork server loaded them.
    assert report["worker"] == {"executor": True, "dataclasses": False}
    assert not report["parent_dataclasses"]
    if not report["ctypes_builtin"]:
        assert report["ctypes_in_server"]


@linux_only
def test_preloaded_modules_are_imported_once_in_the_fork_server(tmp_path):
    pytest.importorskip("numpy")
    report = run_script(tmp_path, FRESH_PROCESS)
    # The stdlib's own preload is kept, first; ours is one safepool module, never the user's
    # names (see the next test for why).
    assert report["preload"] == ["__main__", BOOT_MODULE]
    # The names were passed to the server only: not left to our children, nor to workers.
    assert report["env_left"] == ""
    # numpy's extension is mapped in the fork server itself: workers fork with it loaded.
    assert report["numpy_in_server"]
    # Every worker inherited safepool's worker module from the fork server: none imported it.
    for seen in report["seen"]:
        assert seen["imported_in"] == report["server"] != seen["worker"]
        assert seen["env"] is None


ENVIRON_COPIER = textwrap.dedent("""
    import json, os, threading

    if __name__ == "__main__":
        from safepool import SafeProcessPoolExecutor

        seen, errors, stop = [], [], threading.Event()

        def copy_environ():
            while not stop.is_set():
                try:
                    if "SAFEPOOL_FORKSERVER_PRELOAD" in dict(os.environ):
                        seen.append(1)
                except KeyError as exc:  # the key went away while being copied
                    errors.append(repr(exc))

        copier = threading.Thread(target=copy_environ)
        copier.start()
        try:
            # The first pool of this process: it starts the fork server, with a preload.
            with SafeProcessPoolExecutor(1, preload=["json"], max_tasks_per_child=1) as ex:
                pids = {ex.submit(os.getpid).result(timeout=60) for _ in range(60)}
        finally:
            stop.set()
            copier.join(timeout=30)
        print(json.dumps({"starts": len(pids), "seen": len(seen), "errors": errors[:1]}))
""")


def test_starting_workers_never_touches_os_environ(tmp_path):
    """Other threads copy os.environ (subprocess, dict(os.environ)): a key added and removed
    around every worker start made those copies raise KeyError, or carry it to children."""
    report = run_script(tmp_path, ENVIRON_COPIER)
    assert report["starts"] == 60  # sixty worker starts happened
    assert report["seen"] == 0 and report["errors"] == [], report


BAD_PRELOAD = textwrap.dedent("""
    import json, os

    if __name__ == "__main__":
        from concurrent.futures.process import BrokenProcessPool
        from multiprocessing import forkserver
        from safepool import SafeProcessPoolExecutor

        report = {}
        ex = SafeProcessPoolExecutor(1, preload=["raises_at_import"])
        try:
            report["bad"] = ex.submit(os.getpid).result(timeout=60)
        except BrokenProcessPool as exc:
            report["bad"] = str(exc) + " / " + repr(exc.__cause__)
        finally:
            ex.shutdown(wait=True)
        report["server"] = forkserver._forkserver._forkserver_pid
        with SafeProcessPoolExecutor(1) as ex:
            report["other_pool"] = ex.submit(os.getpid).result(timeout=60)
        report["server_after"] = forkserver._forkserver._forkserver_pid
        print(json.dumps(report))
""")


def test_a_preload_raising_at_import_costs_its_pool_not_the_shared_fork_server(tmp_path):
    # The stdlib's fork server ignores only ImportError in its preload list: a RuntimeError
    # there killed it, and every later start of every pool in the process failed with it.
    report = run_script(tmp_path, BAD_PRELOAD, **{
        "raises_at_import.py": "raise RuntimeError('misconfigured at import')\n"})
    assert isinstance(report["bad"], str), report
    assert "raises_at_import" in report["bad"] and "misconfigured at import" in report["bad"]
    assert isinstance(report["other_pool"], int), report
    assert report["server_after"] == report["server"] is not None


def in_modules(name):
    return name in sys.modules


def test_spawn_workers_import_the_preload_modules_themselves(clean_process):
    name = "xml.dom.minidom"  # not imported by a worker otherwise
    ctx = multiprocessing.get_context("spawn")
    with SafeProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert ex.submit(in_modules, name).result(timeout=60) is False
    with SafeProcessPoolExecutor(1, mp_context=ctx, preload=[name]) as ex:
        assert ex.submit(in_modules, name).result(timeout=60) is True


def test_a_fork_server_already_running_is_said_and_workers_import_for_themselves(
        caplog, clean_process):
    name = "xml.dom.pulldom"
    ctx = multiprocessing.get_context("forkserver")
    with SafeProcessPoolExecutor(1, mp_context=ctx) as ex:
        ex.submit(in_modules, name).result(timeout=60)  # the fork server runs now
    with caplog.at_level(logging.INFO, logger="safepool"):
        with SafeProcessPoolExecutor(1, mp_context=ctx, preload=[name]) as ex:
            assert ex.submit(in_modules, name).result(timeout=60) is True
    assert any(name in r.getMessage() and "each worker imports" in r.getMessage()
               for r in caplog.records)


def test_a_preload_that_cannot_be_imported_breaks_the_pool_naming_it(clean_process):
    ex = SafeProcessPoolExecutor(1, preload=["no_such_module_for_safepool"])
    try:
        f = ex.submit(in_modules, "os")
        with pytest.raises(BrokenProcessPool) as info:
            f.result(timeout=60)
        text = str(info.value) + repr(info.value.__cause__)
        assert "no_such_module_for_safepool" in text and "preload" in text
    finally:
        ex.shutdown(wait=True)


def user_initializer(path):
    with open(path, "a") as f:
        f.write("%d\n" % os.getpid())


def test_the_user_initializer_still_runs_after_the_preload(tmp_path, clean_process):
    log = tmp_path / "init"
    with SafeProcessPoolExecutor(1, preload=["json"], initializer=user_initializer,
                                 initargs=(str(log),)) as ex:
        pid = ex.submit(os.getpid).result(timeout=60)
    wait_until(lambda: log.exists(), 10, message="the initializer's file")
    assert log.read_text().split() == [str(pid)]


@pytest.mark.parametrize("bad", ["numpy", b"numpy", [1], ["not a name"], ["a..b"], None])
def test_preload_is_checked(bad):
    with pytest.raises(ValueError, match="preload"):
        SafeProcessPoolExecutor(1, preload=bad)
    with pytest.raises(ValueError, match="preload"):
        check_modules(bad)
