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
from safepool._preload import check_modules

pytestmark = pytest.mark.timeout(120)

FRESH_PROCESS = textwrap.dedent("""
    import json, os, sys
    from multiprocessing import forkserver
    from safepool import SafeProcessPoolExecutor

    def where_imported():
        import safepool._worker as w
        return {"worker": os.getpid(), "imported_in": w.IMPORTED_IN}

    if __name__ == "__main__":
        with SafeProcessPoolExecutor(2, preload=["numpy"]) as ex:
            seen = [ex.submit(where_imported).result(timeout=60) for _ in range(4)]
            server = forkserver._forkserver._forkserver_pid
            with open("/proc/%d/maps" % server) as f:
                maps = f.read()
        print(json.dumps({"server": server, "seen": seen,
                          "numpy_in_server": "_multiarray_umath" in maps,
                          "preload": forkserver._forkserver._preload_modules}))
""")


def test_preloaded_modules_are_imported_once_in_the_fork_server(tmp_path):
    pytest.importorskip("numpy")
    import json

    script = tmp_path / "main.py"
    script.write_text(FRESH_PROCESS)
    out = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=100,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["preload"][0] == "__main__"  # the stdlib's own preload is kept, first
    assert {"safepool._worker", "numpy"} <= set(report["preload"])
    # numpy's extension is mapped in the fork server itself: workers fork with it loaded.
    assert report["numpy_in_server"]
    # Every worker inherited safepool's worker module from the fork server: none imported it.
    for seen in report["seen"]:
        assert seen["imported_in"] == report["server"] != seen["worker"]


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
