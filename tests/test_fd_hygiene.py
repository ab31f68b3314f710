"""Issue 13, item 1: a program a task exec's holds no descriptor of the pool.

Inside a worker the pool's pipes and the stdlib's helper pipes (forkserver "alive", resource
tracker) must all be close-on-exec, so that whatever a task runs with ``subprocess``
(``close_fds=False``), ``os.system`` or ``os.posix_spawn`` sees stdin, stdout and stderr only.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import security_tasks

from safepool import SafeProcessPoolExecutor
from safepool._fd_hygiene import close_on_exec_all, open_descriptors

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="the listing program reads /proc/self/fd (Linux)")


def _only_std(found):
    extra = {fd: target for fd, target in found.items() if fd > 2}
    assert sorted(found) == [0, 1, 2], (
        f"an exec'd program inherited descriptors of the worker: {extra}")


@pytest.mark.timeout(60)
def test_subprocess_with_close_fds_false_sees_only_stdio(ctx, clean_process):
    with SafeProcessPoolExecutor(1, mp_context=ctx) as ex:
        found = ex.submit(security_tasks.fds_after_subprocess_run).result(timeout=30)
    _only_std(found)


@pytest.mark.timeout(60)
def test_os_system_sees_only_stdio(ctx, tmp_path, clean_process):
    with SafeProcessPoolExecutor(1, mp_context=ctx) as ex:
        path = str(tmp_path / "fds.json")
        found = ex.submit(security_tasks.fds_after_os_system, path).result(timeout=30)
    _only_std(found)
    assert found[1].endswith("fds.json")  # the listing really ran under the shell's redirect


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "posix_spawn"), reason="os.posix_spawn is missing")
def test_posix_spawn_sees_only_stdio(ctx, tmp_path, clean_process):
    with SafeProcessPoolExecutor(1, mp_context=ctx) as ex:
        path = str(tmp_path / "fds.json")
        found = ex.submit(security_tasks.fds_after_posix_spawn, path).result(timeout=30)
    _only_std(found)


@pytest.mark.timeout(60)
def test_a_worker_keeps_working_after_running_programs(clean_process):
    """Close-on-exec closes nothing: the same worker serves task after task, and its
    subprocesses still see nothing."""
    with SafeProcessPoolExecutor(1) as ex:
        for _ in range(3):
            _only_std(ex.submit(security_tasks.fds_after_subprocess_run).result(timeout=30))
        pids = {ex.submit(os.getpid).result(timeout=30) for _ in range(5)}
    assert len(pids) == 1


CHECK_HELPER = textwrap.dedent(r"""
    import json, os, sys
    from safepool._fd_hygiene import close_on_exec_all, open_descriptors
    if sys.argv[1] == "fallback":  # as where neither /proc/self/fd nor /dev/fd can be read
        real = os.listdir
        def listdir(path):
            if path in ("/proc/self/fd", "/dev/fd"):
                raise FileNotFoundError(path)
            return real(path)
        os.listdir = listdir
    r, w = os.pipe()
    os.set_inheritable(r, True)
    os.set_inheritable(w, True)
    kept = os.dup(w)
    os.set_inheritable(kept, True)
    std = [os.get_inheritable(fd) for fd in (0, 1, 2)]
    changed = close_on_exec_all(keep=(0, 1, 2, kept))
    os.write(w, b"x")                                  # still open and usable
    print(json.dumps({
        "changed": changed, "r": r, "w": w, "kept": kept,
        "read": os.read(r, 1).decode(),
        "inheritable": {fd: os.get_inheritable(fd) for fd in (r, w, kept)},
        "std_before": std, "std_after": [os.get_inheritable(fd) for fd in (0, 1, 2)],
        "listed": len(open_descriptors()),
    }))
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["listing", "fallback"])
def test_close_on_exec_all_closes_nothing_and_keeps_what_it_is_told(how):
    import json

    out = subprocess.run([sys.executable, "-c", CHECK_HELPER, how], stdout=subprocess.PIPE,
                         check=True, timeout=30).stdout
    got = json.loads(out)
    assert got["read"] == "x"
    assert sorted(got["changed"]) == sorted([got["r"], got["w"]])
    assert got["inheritable"] == {str(got["r"]): False, str(got["w"]): False,
                                  str(got["kept"]): True}
    assert got["std_after"] == got["std_before"]
    if how == "fallback":
        assert got["listed"] >= 256  # probed every number up to the limit


def test_open_descriptors_lists_this_process():
    r, w = os.pipe()
    try:
        fds = open_descriptors()
        assert {0, 1, 2, r, w} <= set(fds)
    finally:
        os.close(r)
        os.close(w)


def test_close_on_exec_all_is_importable_without_the_executor():
    """Workers import it at start-up: it must not pull in the executor or psutil."""
    code = ("import sys; import safepool._fd_hygiene; "
            "print(sorted(m for m in ('psutil', 'safepool._executor', 'multiprocessing') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True,
                         timeout=30).stdout
    assert out.strip() == b"[]"
    assert close_on_exec_all  # the name the worker calls
