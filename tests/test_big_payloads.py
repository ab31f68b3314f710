"""Issue 9: big buffers travel through memfds (Linux), correct for every kind of buffer, and
nothing leaks: not when a worker is SIGKILLed mid-transfer, not when the parent is."""
import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import big_tasks
import psutil
import pytest
from conftest import gone, wait_until

from safepool import SafeProcessPoolExecutor, WorkerLostError
from safepool import _out_of_band as oob
from safepool import _protocol as P

np = pytest.importorskip("numpy")

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not oob.AVAILABLE, reason="memfds are Linux-only (in band elsewhere)"),
]

BIG = oob.THRESHOLD + 4096  # bytes: just over the threshold


def memfds_of(pid):
    """Descriptors and mappings of safepool memfds in process ``pid``: [(where, name)]."""
    found = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if "memfd:safepool" in target:
                found.append(("fd", target))
        with open(f"/proc/{pid}/maps") as f:
            found.extend(("map", line.split()[-2]) for line in f if "memfd:safepool" in line)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return found


def memfds_created_by(pids):
    """Every descriptor or mapping, in any process, of a memfd that one of ``pids`` made."""
    names = {f"memfd:safepool:{pid}" for pid in pids}
    found = []
    for proc in psutil.process_iter():
        for where, target in memfds_of(proc.pid):
            if any(name in target for name in names):
                found.append((proc.pid, where, target))
    return found


def dev_shm():
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def new_shm_of(before, pids):
    """/dev/shm entries made since ``before`` by safepool or by one of ``pids`` (others'
    programs, loky's semaphores say, come and go on a shared machine)."""
    return [name for name in dev_shm() - before
            if "safepool" in name or any(str(pid) in name for pid in pids)]


@pytest.fixture
def pool():
    with SafeProcessPoolExecutor(2) as ex:
        yield ex


# ---- every kind of buffer arrives as the stdlib would deliver it -------------------------------

def stdlib_roundtrip(obj):
    """What a pipe (in-band pickle) gives the other side: the reference behaviour."""
    return pickle.loads(pickle.dumps(obj, P.PROTOCOL))


CASES = {
    "float64": lambda: np.arange(BIG // 8, dtype=np.float64),
    "int8 2-d": lambda: np.arange(BIG, dtype=np.int8).reshape(-1, 4),
    "fortran": lambda: np.asfortranarray(np.arange(BIG // 8, dtype=np.float64).reshape(-1, 8)),
    "read-only": lambda: _readonly(np.arange(BIG // 8, dtype=np.float64)),
    "non-contiguous": lambda: np.arange(BIG // 4, dtype=np.float64)[::2],
    "zero-length": lambda: np.zeros(0),
    "objects": lambda: np.array([1, "x", None] * 1000, dtype=object),
}


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_kind_of_array_arrives_as_with_the_stdlib(pool, name):
    a = CASES[name]()
    expected = big_tasks.describe(stdlib_roundtrip(a))
    got = pool.submit(big_tasks.describe, a).result(timeout=60)
    # Out of band exactly when the stdlib's pickle would offer a buffer and it is big.
    big_buffer = a.dtype != object and a.nbytes >= oob.THRESHOLD and (
        a.flags.c_contiguous or a.flags.f_contiguous)
    assert got.pop("backing") == ("memfd" if big_buffer else expected["backing"])
    expected.pop("backing")
    assert got == expected
    back = pool.submit(big_tasks.ident, a).result(timeout=60)
    assert type(back) is np.ndarray and back.dtype == a.dtype and back.shape == a.shape
    assert np.array_equal(back, a) if a.dtype != object else list(back) == list(a)
    assert back.flags.writeable == stdlib_roundtrip(a).flags.writeable
    if big_buffer:
        assert big_tasks.backing(back) == "memfd"


def test_a_received_array_is_private_to_its_receiver(pool):
    """Writable, as from a pipe; a write changes the receiver's copy only."""
    a = np.ones(BIG // 8)
    assert pool.submit(big_tasks.write_to, a, 3.0).result(timeout=60) == 3.0 * a.size
    assert float(a.sum()) == a.size
    back = pool.submit(big_tasks.ident, a).result(timeout=60)
    back[:] = 7
    assert float(a.sum()) == a.size


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "PickleBuffer", "memoryview-free"])
def test_bytes_like_payloads_both_ways(pool, kind):
    raw = os.urandom(BIG)
    obj = {"bytes": raw, "bytearray": bytearray(raw),
           "PickleBuffer": pickle.PickleBuffer(bytearray(raw)),
           "memoryview-free": [raw, {"k": bytearray(raw)}]}[kind]
    expected = stdlib_roundtrip(obj)
    got = pool.submit(big_tasks.ident, obj).result(timeout=60)
    assert type(got) is type(expected)
    assert got == expected
    assert pool.submit(big_tasks.describe, raw).result(timeout=60)["len"] == BIG


def test_big_bytes_inside_a_payload_are_lifted_out_of_band():
    """bytes and bytearray are never offered to pickle's buffer_callback; the payload lifts
    them near the top of the payload (tuple, list, dict), and only there."""
    raw = b"x" * BIG
    packed = P.dumps((big_tasks.ident, ([raw, raw], {"k": bytearray(raw)}), {}), True)
    assert type(packed) is oob.Packed
    assert len(packed) < 4096  # the stream holds no copy of them
    assert len(packed.buffers.fds) == 2  # the same object twice travels once
    received = oob.Received(bytes(packed), oob.Buffers([os.dup(fd)
                                                        for fd in packed.buffers.fds]))
    fn, (items, d), kwargs = P.loads(received)
    assert items[0] is items[1] and items[0] == raw and type(d["k"]) is bytearray
    small = P.dumps((big_tasks.ident, (b"x" * 10,), {}), True)
    assert type(small) is bytes and small == P.dumps((big_tasks.ident, (b"x" * 10,), {}))


def test_results_and_exceptions_carry_big_data(pool):
    n = BIG // 8
    back = pool.submit(big_tasks.ones, n).result(timeout=60)
    assert big_tasks.backing(back) == "memfd" and float(back.sum()) == n
    raw = pool.submit(big_tasks.make_bytes, BIG).result(timeout=60)
    assert type(raw) is bytes and raw == b"z" * BIG
    a = np.arange(n, dtype=np.float64)
    with pytest.raises(ValueError) as info:
        pool.submit(big_tasks.raise_with, a).result(timeout=60)
    assert info.value.args[0] == "carries data" and np.array_equal(info.value.args[1], a)
    assert big_tasks.backing(info.value.args[1]) == "memfd"
    with pytest.raises(ValueError) as info:
        pool.submit(big_tasks.raise_with, raw).result(timeout=60)
    assert info.value.args[1] == raw


def test_an_unsealed_memfd_is_copied_not_mapped():
    """A sender that could still shrink its memfd could kill us with SIGBUS under a mapping:
    such a buffer is read into memory of our own."""
    fd = os.memfd_create("safepool:test")
    try:
        os.write(fd, b"ab" * (BIG // 2))
        view = oob._map(fd, BIG)
        assert not isinstance(view.obj, type(None)) and bytes(view[:4]) == b"abab"
        assert type(view.obj) is bytearray
        with pytest.raises(ValueError, match="announced"):
            oob._map(fd, BIG * 2)
    finally:
        os.close(fd)


def test_big_bytes_are_read_into_their_own_object_and_a_short_one_is_refused():
    fd = os.memfd_create("safepool:test")
    try:
        os.write(fd, b"xy" * (BIG // 2))
        data = oob._deliver(fd, BIG, oob.AS_BYTES)
        assert type(data) is bytes and len(data) == BIG and data[-2:] == b"xy"
        with pytest.raises(ValueError, match="announced"):
            oob._deliver(fd, BIG * 2, oob.AS_BYTES)
    finally:
        os.close(fd)


def test_without_memfds_everything_travels_in_band(monkeypatch):
    monkeypatch.setattr(oob, "AVAILABLE", False)
    payload = P.dumps((big_tasks.ident, (np.ones(BIG // 8),), {}), True)
    assert type(payload) is bytes
    assert np.array_equal(P.loads(payload)[1][0], np.ones(BIG // 8))


def test_queued_tasks_hold_few_descriptors(tmp_path, clean_process):
    """Tasks queued behind busy workers do not each hold a memfd (and a descriptor: 1,024 is
    a common limit): beyond EAGER_MEMFDS open ones, buffers are written when sent."""
    a = np.arange(BIG // 8, dtype=np.float64)
    with SafeProcessPoolExecutor(1) as ex:
        gate = tmp_path / "go"
        blocker = ex.submit(big_tasks.wait_for_file, str(gate))
        futures = [ex.submit(big_tasks.describe, a) for _ in range(300)]
        held = len([t for where, t in memfds_of(os.getpid()) if where == "fd"])
        assert held <= 70, held  # EAGER_MEMFDS (64), and what is on its way
        gate.touch()
        assert blocker.result(timeout=60) is True
        results = [f.result(timeout=60) for f in futures]
    assert all(r["sum"] == float(a.sum()) and r["backing"] == "memfd" for r in results)
    gc.collect()
    assert memfds_of(os.getpid()) == []


def test_a_buffer_that_cannot_be_written_at_sending_time_fails_its_task_alone(
        monkeypatch, clean_process):
    monkeypatch.setattr(oob, "EAGER_MEMFDS", 0)  # every buffer is written when sent
    real = oob._memfd_with
    calls = {"n": 0}

    def flaky(view):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(24, "Too many open files")
        return real(view)

    monkeypatch.setattr(oob, "_memfd_with", flaky)
    a = np.ones(BIG // 8)
    with SafeProcessPoolExecutor(1) as ex:
        futures = [ex.submit(big_tasks.describe, a) for _ in range(3)]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=60)["sum"])
            except pickle.PicklingError as exc:
                assert "ulimit -n" in str(exc) and isinstance(exc.__cause__, OSError)
                outcomes.append("failed")
    assert outcomes == [a.size, "failed", a.size]


def test_descriptors_that_cannot_be_passed_cost_that_worker_only(monkeypatch, clean_process):
    """A worker that read a frame waits for its descriptors: if the parent cannot pass them
    (ETOOMANYREFS, say), the worker is faulted and replaced, its task fails, nothing hangs."""
    import errno

    from safepool.errors import TaskFaultError

    real = oob.send_fds
    calls = {"n": 0}

    def refuse_once(sock, fds):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ETOOMANYREFS, "Too many references")
        return real(sock, fds)

    monkeypatch.setattr(oob, "send_fds", refuse_once)
    a = np.ones(BIG // 8)
    with SafeProcessPoolExecutor(1) as ex:
        assert ex.submit(big_tasks.ident, 1).result(timeout=60) == 1
        with pytest.raises(TaskFaultError, match="descriptors"):
            ex.submit(big_tasks.describe, a).result(timeout=60)
        assert ex.submit(big_tasks.describe, a).result(timeout=60)["sum"] == a.size
        assert ex.stats().workers_replaced["crash"] == 1


# ---- nothing leaks ---------------------------------------------------------------------------

def test_thousands_of_transfers_leave_no_descriptor_or_mapping(clean_process):
    """Every transfer's memfd is closed and unmapped once its task has settled and its
    result is dropped: 2,000 round trips leave the parent as they found it."""
    me = os.getpid()
    with SafeProcessPoolExecutor(2) as ex:
        a = np.ones(BIG // 8)
        fds_before = None
        for _ in range(20):
            futures = [ex.submit(big_tasks.ident, a) for _i in range(100)]
            assert all(f.result(timeout=60).shape == a.shape for f in futures)
            del futures
            if fds_before is None:  # both workers are up now
                gc.collect()
                fds_before = psutil.Process().num_fds()
        assert ex.stats().workers_replaced == {k: 0 for k in ex.stats().workers_replaced}
        gc.collect()
        assert memfds_of(me) == []
        assert psutil.Process().num_fds() == fds_before
        workers = [p.pid for p in psutil.Process().children(recursive=True)
                   if "forkserver" not in " ".join(p.cmdline())]
        for pid in workers:
            assert len(memfds_of(pid)) <= 2, memfds_of(pid)  # at most the last task's


def test_a_worker_killed_mid_transfer_leaks_nothing(tmp_path, clean_process):
    """The worker dies at some point of sending a big result (building it, writing its
    memfd, sending it): that task fails alone, and no memfd of that worker survives it."""
    shm = dev_shm()
    with SafeProcessPoolExecutor(2) as ex:
        dead = []
        for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.05):
            f = ex.submit(big_tasks.die_while_returning, 16 << 20, delay,
                          str(tmp_path / "pids"))
            try:
                f.result(timeout=60)  # the result may have been sent before the kill
            except WorkerLostError as exc:
                dead.append(exc)
            assert ex.submit(big_tasks.ident, 5).result(timeout=60) == 5
        stats = ex.stats()
        assert stats.workers_replaced["crash"] == 6
        pids = {int(p) for p in (tmp_path / "pids").read_text().split()}
        assert len(pids) == 6
        pids.add(os.getpid())
    gc.collect()
    assert memfds_of(os.getpid()) == []
    assert memfds_created_by(pids) == []
    assert new_shm_of(shm, pids) == []


def test_a_task_whose_worker_died_is_resent_with_its_buffers(tmp_path, clean_process):
    """The parent keeps a task's memfds until it settles: a retry sends them again."""
    a = np.arange(BIG // 8, dtype=np.float64)
    with SafeProcessPoolExecutor(2, retries=1) as ex:
        assert ex.submit(big_tasks.die_first_time, str(tmp_path / "once"), a).result(
            timeout=60) == float(a.sum())
    gc.collect()
    assert memfds_of(os.getpid()) == []


PARENT = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    import big_tasks
    from safepool import SafeProcessPoolExecutor

    if __name__ == "__main__":
        ex = SafeProcessPoolExecutor(2)
        big = np.ones(4 << 20)
        held = [ex.submit(big_tasks.ident, big) for _ in range(20)]  # both ways, in flight
        held[0].result(timeout=60)
        with open({pids!r} + ".tmp", "w") as f:
            f.write(" ".join(str(p.pid) for p in ex._processes.values()))
        os.rename({pids!r} + ".tmp", {pids!r})
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_killed_parent_leaves_no_memfd_anywhere(tmp_path):
    """SIGKILL the parent while big arguments and results are in flight: its workers die with
    it (lifeline), and no process anywhere keeps a memfd made by the parent or a worker (a
    memfd's memory goes with its last descriptor and mapping; descriptors in flight go with
    the socket)."""
    pids_path = str(tmp_path / "pids")
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(tests=os.path.dirname(__file__), pids=pids_path))
    shm = dev_shm()
    proc = subprocess.Popen([sys.executable, str(script)], cwd=str(tmp_path))
    try:
        assert proc.wait(timeout=120) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open(pids_path) as f:
        workers = [int(p) for p in f.read().split()]
    assert len(workers) == 2
    wait_until(lambda: all(gone(pid) for pid in workers), 30, message="workers gone")
    assert memfds_created_by([proc.pid, *workers]) == []
    assert new_shm_of(shm, [proc.pid, *workers]) == []


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX")
def test_the_fd_socket_is_closed_with_its_worker(clean_process):
    """Each worker's descriptor socket is released when the worker is reaped (clean_process
    counts the parent's descriptors)."""
    with SafeProcessPoolExecutor(1) as ex:
        pid = ex.submit(os.getpid).result(timeout=60)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: ex.submit(os.getpid).result(timeout=60) != pid, 30,
                   message="a replacement")
        assert ex.submit(big_tasks.ident, np.ones(BIG // 8)).result(timeout=60).size == BIG // 8
