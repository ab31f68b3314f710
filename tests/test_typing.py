"""The package is typed (py.typed): a type checker infers what a task returns.

``submit(f, ...)`` is a ``Future[int]`` when ``f`` returns ``int``, ``map(f, ...)`` an
``Iterator[int]``, and a wrong use of a result is an error. Runs mypy on a small snippet;
skipped where mypy is not installed (``tox -e lint`` runs ``mypy --strict safepool`` itself).
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_mypy = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                reason="mypy is not installed")

SNIPPET = '''\
import safepool
from safepool import SafeProcessPoolExecutor


def int_fn(x: int) -> int:
    return x


def main() -> None:
    with SafeProcessPoolExecutor(max_workers=1) as pool:
        reveal_type(pool.submit(int_fn, 1))  # submit
        reveal_type(pool.schedule(int_fn, (1,), timeout=5))  # schedule
        reveal_type(pool.map(int_fn, [1, 2]))  # map
        reveal_type(pool.map_unordered(int_fn, [1, 2]))  # map_unordered
        reveal_type(pool.submit(int_fn, 1).result())  # result
        pool.submit(int_fn, 1).result() + "x"  # wrong
    with safepool.executor(max_workers=1) as any_pool:
        reveal_type(any_pool.submit(int_fn, 1))  # executor().submit
        reveal_type(any_pool.map(int_fn, [1]))  # executor().map
'''


def test_the_package_is_marked_typed():
    assert os.path.isfile(os.path.join(ROOT, "safepool", "py.typed"))


@needs_mypy
@pytest.mark.timeout(120)
def test_a_type_checker_infers_what_tasks_return(tmp_path):
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    # The checkout's safepool (MYPYPATH), no config file, errors of the snippet only.
    env = dict(os.environ, MYPYPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file=", "--strict", "--follow-imports=silent",
         "--cache-dir=" + os.devnull, "--no-error-summary", "--hide-error-context", str(path)],
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=110)
    out = proc.stdout
    lines = SNIPPET.splitlines()

    def messages(marker):
        """What mypy said about the snippet's line ending with ``# marker``."""
        number = next(i for i, line in enumerate(lines, 1) if line.endswith("# " + marker))
        return [m for m in out.splitlines() if re.match(r".*snippet\.py:%d: " % number, m)]

    def revealed(marker):
        found = [m for m in messages(marker) if "Revealed type is" in m]
        assert len(found) == 1, out
        return found[0]

    # "builtins.int" (older mypy) or "int" (newer)
    future_int = re.compile(r'Revealed type is "[\w.]*Future\[(builtins\.)?int\]"')
    iterator_int = re.compile(r'Revealed type is "[\w.]*Iterator\[(builtins\.)?int\]"')
    assert future_int.search(revealed("submit")), out
    assert future_int.search(revealed("schedule")), out
    assert iterator_int.search(revealed("map")), out
    assert iterator_int.search(revealed("map_unordered")), out
    assert re.search(r'Revealed type is "(builtins\.)?int"', revealed("result")), out
    assert future_int.search(revealed("executor().submit")), out
    assert iterator_int.search(revealed("executor().map")), out
    wrong = messages("wrong")
    assert len(wrong) == 1 and "error:" in wrong[0] and "[operator]" in wrong[0], out
    # The snippet's one error: its imports from safepool are clean under --strict (the lazy
    # exports are re-exported explicitly).
    assert [m for m in out.splitlines() if "error:" in m] == wrong, out
    assert proc.returncode == 1, out
