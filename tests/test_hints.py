"""safepool._hints: the words for the forkserver/spawn traps, checked against real programs.

Each trap is reproduced in a child interpreter started the way a user starts it
(``python -c``, a script piped to ``python -``, the interactive interpreter, a file), and the
hint is computed there, from that interpreter's real ``__main__``.
"""
import json
import os
import subprocess
import sys
import types

import pytest

from safepool import _hints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = """\
import json
from safepool import _hints
def work():
    return 1

hints = [_hints.main_module_trap()]
print("HINTS " + json.dumps(hints))
"""


def run_python(args, stdin=None, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable] + args, input=stdin, cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    line = [line for line in result.stdout.splitlines() if "HINTS " in line][-1]
    (trap,) = json.loads(line.split("HINTS ", 1)[1])
    return trap


@pytest.mark.timeout(60)
def test_python_dash_c():
    trap = run_python(["-c", PROGRAM])
    assert "`python -c`" in trap and "a .py file" in trap


@pytest.mark.timeout(60)
def test_script_piped_to_python_dash():
    trap = run_python(["-"], stdin=PROGRAM)
    assert "standard input" in trap and "python script.py" in trap


@pytest.mark.timeout(60)
def test_interactive_interpreter():
    trap = run_python(["-i"], stdin=PROGRAM)
    assert "interactive interpreter" in trap and "a .py file" in trap


@pytest.mark.timeout(60)
def test_a_script_file_is_fine(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(PROGRAM)
    assert run_python([str(script)]) is None
    # A relative path is resolved as a starting worker resolves it.
    assert run_python(["script.py"], cwd=str(tmp_path)) is None


@pytest.mark.timeout(60)
def test_python_dash_m_is_fine(tmp_path):
    (tmp_path / "prog.py").write_text(PROGRAM)
    env_path = os.pathsep.join([str(tmp_path), ROOT])
    result = subprocess.run([sys.executable, "-m", "prog"], cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONPATH=env_path), stdout=subprocess.PIPE,
                            universal_newlines=True, timeout=60)
    assert json.loads(result.stdout.split("HINTS ", 1)[1]) == [None]


def _module(**attrs):
    module = types.ModuleType("__main__")
    module.__dict__.update(attrs)
    return module


def test_a_main_file_that_is_gone(tmp_path):
    gone = _module(__file__=str(tmp_path / "deleted.py"))
    assert "no longer exists" in _hints.main_module_trap(gone)


def test_a_pseudo_file_name():
    trap = _hints.main_module_trap(_module(__file__="<string>"))
    assert "<string>" in trap and "not from a file" in trap


def test_notebook(monkeypatch):
    import builtins

    monkeypatch.setattr(builtins, "get_ipython", lambda: None, raising=False)
    trap = _hints.main_module_trap(_module())
    assert "notebook" in trap and "from tasks import work" in trap


UNPICKLING = ("the worker could not unpickle the task __main__.work(): AttributeError: "
              "Can't get attribute 'work' on <module '__main__' (built-in)>")


def test_unpickling_hint_names_the_function_and_the_cause():
    hint = _hints.unpickling_hint(UNPICKLING, _module())  # as under python -c
    assert hint.startswith("'work' is defined in the main program.")
    assert "`python -c`" in hint


def test_unpickling_hint_with_a_main_file_points_at_the_if_main_block(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("")
    hint = _hints.unpickling_hint(
        "AttributeError: module '__mp_main__' has no attribute 'helper'",
        _module(__file__=str(script)))
    assert "'helper'" in hint and 'if __name__ == "__main__":' in hint


def test_unpickling_hint_ignores_other_errors():
    assert _hints.unpickling_hint("ModuleNotFoundError: No module named 'numpy'") is None
    assert _hints.unpickling_hint("") is None


def test_clean_remote_traceback_replaces_the_whole_name_only():
    text = ('  File "/app/job.py", line 3, in work\n'
            "__mp_main__.MyError: boom (from __mp_main__)\n"
            "x__mp_main__.A pkg.__mp_main__.B __mp_main__x")
    assert _hints.clean_remote_traceback(text) == (
        '  File "/app/job.py", line 3, in work\n'
        "__main__.MyError: boom (from __main__)\n"
        "x__mp_main__.A pkg.__mp_main__.B __mp_main__x")
    assert _hints.clean_remote_traceback("no change") == "no change"


REMOTE = """\
import concurrent.futures, multiprocessing
class MyError(Exception):
    pass
def fail():
    raise MyError("boom")
if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        try:
            ex.submit(fail).result()
        except MyError as exc:
            print(exc.__cause__.tb)
"""


@pytest.mark.timeout(60)
def test_clean_remote_traceback_on_a_real_worker_traceback(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(REMOTE)
    tb = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE,
                        universal_newlines=True, timeout=60).stdout
    assert "__mp_main__.MyError: boom" in tb  # what a spawn/forkserver worker writes
    cleaned = _hints.clean_remote_traceback(tb)
    assert "__main__.MyError: boom" in cleaned and "__mp_main__" not in cleaned


# ---- end to end: the core's error messages carry the hints ------------------------------------
# unpickling_hint() where a worker reports a task it could not unpickle (plain pickle only:
# cloudpickle_fallback=False), clean_remote_traceback() where a worker's traceback text
# becomes the RemoteTraceback.

SUBMIT_MAIN_FUNCTION = """\
from safepool import SafeProcessPoolExecutor
def work():
    return 1
with SafeProcessPoolExecutor(max_workers=1, cloudpickle_fallback=False) as ex:
    try:
        ex.submit(work).result(timeout=60)
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc)
"""


def _run_program(args, stdin=None, cwd=None):
    result = subprocess.run([sys.executable] + args, input=stdin, cwd=cwd,
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    return result.stdout


@pytest.mark.timeout(120)
def test_a_task_from_python_dash_c_fails_with_the_hint():
    out = _run_program(["-c", SUBMIT_MAIN_FUNCTION])
    assert "ERROR TaskUnpicklingError" in out
    assert "`python -c`" in out and "a .py file" in out


@pytest.mark.timeout(120)
def test_a_piped_script_keeps_its_pool_and_fails_the_task_with_the_hint(tmp_path):
    """The stdlib's workers all die re-running the 'file' <stdin>; safepool's are not asked
    to, so only the task that needs __main__ fails (with cloudpickle_fallback=False)."""
    out = _run_program(["-"], stdin=SUBMIT_MAIN_FUNCTION, cwd=str(tmp_path))
    assert "ERROR TaskUnpicklingError" in out
    assert "standard input" in out and "python script.py" in out


@pytest.mark.timeout(120)
def test_a_remote_traceback_names_the_users_main(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(REMOTE.replace("import concurrent.futures, multiprocessing",
                                     "import concurrent.futures, multiprocessing, safepool")
                      .replace("concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx)",
                               "safepool.SafeProcessPoolExecutor(1)"))
    tb = _run_program([str(script)])
    assert "MyError: boom" in tb and "__mp_main__" not in tb
