"""Functions plain pickle cannot send (lambdas, closures, what ``__main__`` defines under
``python -c`` or ``python -``) reach the workers by value, through cloudpickle; everything
else still travels as the stdlib sends it."""
import pickle
import subprocess
import sys
import threading

import pytest
from hardening_helpers import script_env

from safepool import SafeProcessPoolExecutor, TaskPicklingError, _by_value


def _make_counter(start):
    state = {"n": start}

    def bump(k):
        state["n"] += k
        return state["n"]

    return bump


@pytest.mark.timeout(60)
def test_a_lambda_and_a_closure_run_in_a_worker(clean_process):
    with SafeProcessPoolExecutor(2) as ex:
        assert ex.submit(lambda x: x * 3, 14).result(timeout=30) == 42
        assert ex.submit(_make_counter(40), 2).result(timeout=30) == 42
        assert list(ex.map(lambda x: -x, range(5), chunksize=2)) == [0, -1, -2, -3, -4]


@pytest.mark.timeout(60)
def test_a_worker_can_return_a_lambda(clean_process):
    with SafeProcessPoolExecutor(1) as ex:
        adder = ex.submit(_make_adder, 2).result(timeout=30)
    assert adder(40) == 42


def _make_adder(k):
    return lambda x: x + k


@pytest.mark.timeout(60)
def test_without_the_fallback_a_lambda_fails_as_with_the_stdlib(clean_process):
    with SafeProcessPoolExecutor(1, cloudpickle_fallback=False) as ex:
        future = ex.submit(lambda: 1)
        with pytest.raises(TaskPicklingError, match="not a lambda") as info:
            future.result(timeout=30)
        assert isinstance(info.value, pickle.PicklingError) or isinstance(
            info.value, AttributeError)  # the original type, whatever the Python version
        assert ex.submit(abs, -1).result(timeout=30) == 1


@pytest.mark.timeout(60)
def test_what_cloudpickle_cannot_send_either_says_so_on_its_own_future(clean_process):
    with SafeProcessPoolExecutor(1) as ex:
        future = ex.submit(abs, threading.Lock())
        with pytest.raises(TypeError, match="cloudpickle could not send it either"):
            future.result(timeout=30)
        assert ex.submit(abs, -2).result(timeout=30) == 2


def test_plain_functions_still_travel_by_reference():
    payload = _by_value.dumps((abs, (-1,), {}), True)
    assert b"cloudpickle" not in payload
    assert pickle.loads(payload) == (abs, (-1,), {})
    assert b"cloudpickle" in _by_value.dumps((lambda: 1, (), {}), True)


_MAIN_PROGRAM = """
from safepool import SafeProcessPoolExecutor

class Point:
    def __init__(self, x):
        self.x = x

def move(p, dx):
    return Point(p.x + dx)

if __name__ == "__main__":
    with SafeProcessPoolExecutor(2) as ex:
        moved = ex.submit(move, Point(40), 2).result(timeout=30)
        print(type(moved) is Point, moved.x, list(ex.map(abs, [-1, -2])))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["-c", "stdin"])
def test_a_program_without_a_file_can_use_what_its_main_defines(how):
    """Under python -c, a worker could not find move() (it cannot import __main__); under
    python -, every worker died re-running the file '<stdin>' and the pool broke."""
    if how == "-c":
        out = subprocess.run([sys.executable, "-c", _MAIN_PROGRAM], capture_output=True,
                             text=True, timeout=90, env=script_env())
    else:
        out = subprocess.run([sys.executable, "-"], input=_MAIN_PROGRAM, capture_output=True,
                             text=True, timeout=90, env=script_env())
    assert out.stdout.split() == ["True", "42", "[1,", "2]"], out.stderr[-3000:]
