"""safepool on a real Dask cluster: a ``distributed.LocalCluster`` of 2 worker processes.

Skipped when distributed is not installed (``pip install 'safepool[dask]'``; ``tox -e dask``).
One cluster serves the module; each test makes its own executor (its own pools on the
workers) and checks the Dask workers by pid.
"""
import asyncio
import os
import signal
import sys
import time

import psutil
import pytest

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

import tasks  # noqa: E402
from conftest import HELPERS, leftover_children, wait_for_pid_file, wait_until  # noqa: E402

import safepool  # noqa: E402
from safepool import TaskTimeoutError, WorkerLostError  # noqa: E402
from safepool.dask import DaskExecutor, install, uninstall  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def client():
    """The module's cluster. After it closes, every process it had is gone: the Dask
    processes, and what ran under the Dask workers (pools, their fork servers), which an
    exiting Dask worker would leave to init rather than to us, so they are tracked by pid."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    seen = set()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        with distributed.Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(2)
            yield client
            seen.update(p.pid for p in psutil.Process().children(recursive=True))
            seen.update(pool_pids(client))
    seen -= before
    for pid in seen:
        wait_until(lambda pid=pid: gone(pid), message=f"process {pid} of the cluster to end")


def dask_worker_pids(client):
    return sorted(client.run(os.getpid).values())


def pool_pids(client):
    """The pids of every process under the Dask workers (their pools and helpers)."""
    out = set()
    for pid in client.run(os.getpid).values():
        out.update(p.pid for p in psutil.Process(pid).children(recursive=True))
    return out


def is_helper(pid):
    try:
        return any(h in " ".join(psutil.Process(pid).cmdline()) for h in HELPERS)
    except psutil.Error:
        return True


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Custom(Exception):
    pass


def raise_custom(x):
    raise Custom(f"custom {x}")


def test_results(client):
    with DaskExecutor(client) as ex:
        assert ex.submit(tasks.add, 1, b=2).result(timeout=60) == 3
        assert ex.schedule(tasks.square, (7,)).result(timeout=60) == 49
        assert list(ex.map(tasks.square, range(20))) == [i * i for i in range(20)]
        assert list(ex.map(tasks.add, range(30), range(30), chunksize=4, buffersize=2)) == \
            [2 * i for i in range(30)]
        assert sorted(ex.map_unordered(tasks.square, range(10), chunksize=3)) == \
            sorted(i * i for i in range(10))
        # What Dask can send, the pools run: lambdas and closures travel with cloudpickle.
        offset = 10
        assert ex.submit(lambda x: x + offset, 5).result(timeout=60) == 15
        # The tasks ran in pool processes, not in the Dask workers.
        pids = set(ex.map(tasks.getpid, range(6)))
        assert not pids & set(dask_worker_pids(client))


def test_exceptions_keep_type_and_remote_traceback(client):
    with DaskExecutor(client) as ex:
        with pytest.raises(ValueError, match="nope") as info:
            ex.submit(tasks.raise_value_error, "nope").result(timeout=60)
        assert isinstance(info.value.__cause__, safepool.RemoteTraceback)
        assert "raise_value_error" in str(info.value.__cause__)
        with pytest.raises(Custom):
            ex.submit(raise_custom, 1).result(timeout=60)
        # In a chunked map, the good results before the failed item come first.
        out = []
        with pytest.raises(ZeroDivisionError):
            for value in ex.map(tasks.reciprocal, [1, 2, 0, 4], chunksize=3):
                out.append(value)
        assert out == [1.0, 0.5]


def test_sigkill_fails_alone_and_the_dask_worker_survives(client):
    before = dask_worker_pids(client)
    with DaskExecutor(client) as ex:
        good = [ex.submit(tasks.sleep_and_return, 0.2, i) for i in range(6)]
        bad = ex.submit(tasks.kill_self)
        with pytest.raises(WorkerLostError) as info:
            bad.result(timeout=60)
        assert info.value.signal == signal.SIGKILL
        assert "kill_self" in str(info.value)
        assert [f.result(timeout=60) for f in good] == list(range(6))
        assert ex.submit(tasks.square, 3).result(timeout=60) == 9  # the pool keeps serving
        assert ex.stats().workers_replaced["crash"] == 1
    assert dask_worker_pids(client) == before


def test_timeout_stops_only_that_task_and_its_process(client, tmp_path):
    before = dask_worker_pids(client)
    path = str(tmp_path / "pid")
    with DaskExecutor(client, task_timeout=30) as ex:
        stuck = ex.schedule(tasks.park, (path,), timeout=1.0)
        pid = int(wait_for_pid_file(path))
        with pytest.raises(TaskTimeoutError):
            stuck.result(timeout=60)
        wait_until(lambda: gone(pid), message=f"timed-out task's process {pid} to be gone")
        assert ex.submit(tasks.square, 4).result(timeout=60) == 16
        assert ex.stats().workers_replaced["timeout"] == 1
    assert dask_worker_pids(client) == before


def test_shutdown_cancel_futures_cancels_what_had_not_started(client, tmp_path):
    release = str(tmp_path / "release")
    with DaskExecutor(client, max_workers=2) as ex:
        running = [ex.submit(tasks.park_until_file, str(tmp_path / f"pid{i}"), release, i)
                   for i in range(2)]
        for i in range(2):
            wait_for_pid_file(str(tmp_path / f"pid{i}"))
        queued = [ex.submit(tasks.touch, str(tmp_path / f"ran{i}")) for i in range(6)]
        assert all(f.running() for f in running)
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in queued)
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(tasks.square, 1)
        tasks.touch(release)
        assert [f.result(timeout=60) for f in running] == [0, 1]
        assert ex.shutdown(wait=True, timeout=60) is True
    assert not any(os.path.exists(tmp_path / f"ran{i}") for i in range(6))
    assert ex.stats().tasks_cancelled == 6


def test_done_callbacks_may_call_the_executor(client, tmp_path):
    """Callbacks run under no lock of the executor: one that calls it does not deadlock,
    neither from shutdown(cancel_futures=True) nor from the dispatcher thread."""
    release = str(tmp_path / "release")
    seen = []
    with DaskExecutor(client, max_workers=1) as ex:
        first = ex.submit(tasks.park_until_file, str(tmp_path / "pid"), release, 1)
        wait_for_pid_file(str(tmp_path / "pid"))
        first.add_done_callback(lambda f: seen.append(ex.stats().tasks_completed))
        queued = ex.submit(tasks.square, 2)

        def resubmit(future):
            try:
                ex.submit(tasks.square, 3)
            except RuntimeError as exc:
                seen.append(str(exc))

        queued.add_done_callback(resubmit)
        ex.shutdown(wait=False, cancel_futures=True)
        assert queued.cancelled()
        tasks.touch(release)
        assert first.result(timeout=60) == 1
    assert seen == ["cannot schedule new futures after shutdown", 1]


def test_cancel_a_queued_future(client, tmp_path):
    release = str(tmp_path / "release")
    with DaskExecutor(client, max_workers=1) as ex:
        first = ex.submit(tasks.park_until_file, str(tmp_path / "pid"), release, "first")
        wait_for_pid_file(str(tmp_path / "pid"))
        second = ex.submit(tasks.touch, str(tmp_path / "ran"), "second")
        assert second.cancel()
        assert not first.cancel()  # handed to the cluster: running
        assert ex.stats().tasks_cancelled == 1
        tasks.touch(release)
        assert first.result(timeout=60) == "first"
    assert not os.path.exists(tmp_path / "ran")


def test_cancel_running_stops_the_task_on_the_cluster(client, tmp_path):
    before = dask_worker_pids(client)
    path = str(tmp_path / "pid")
    with DaskExecutor(client, cancel_running=True) as ex:
        stuck = ex.submit(tasks.park, path)
        pid = int(wait_for_pid_file(path))
        assert stuck.running()
        assert stuck.cancel()
        assert stuck.cancelled()
        wait_until(lambda: gone(pid), message=f"cancelled task's process {pid} to be gone")
        assert ex.submit(tasks.square, 5).result(timeout=60) == 25
        wait_until(lambda: ex.stats().workers_replaced["cancel"] == 1,
                   message="the pool to count the cancelled task's process")
        assert ex.stats().tasks_cancelled == 1
    assert stuck.cancelled()  # a late outcome did not overwrite it
    assert dask_worker_pids(client) == before


def test_without_cancel_running_a_running_task_cannot_be_cancelled(client, tmp_path):
    release = str(tmp_path / "release")
    with DaskExecutor(client) as ex:
        running = ex.submit(tasks.park_until_file, str(tmp_path / "pid"), release, "done")
        wait_for_pid_file(str(tmp_path / "pid"))
        assert not running.cancel()
        tasks.touch(release)
        assert running.result(timeout=60) == "done"


def test_shutdown_timeout_stops_what_still_runs(client, tmp_path):
    before = dask_worker_pids(client)
    path = str(tmp_path / "pid")
    ex = DaskExecutor(client)
    stuck = ex.submit(tasks.park, path)
    pid = int(wait_for_pid_file(path))
    started = time.monotonic()
    assert ex.shutdown(wait=True, timeout=1.0) is False
    assert time.monotonic() - started < 30
    with pytest.raises(WorkerLostError):
        stuck.result(timeout=0)
    wait_until(lambda: gone(pid), message=f"stopped task's process {pid} to be gone")
    assert dask_worker_pids(client) == before


def test_dask_graph_tasks_in_the_pool_via_annotate(client):
    """Item 1 of the issue: a pool installed on every worker, selected per task by Dask's
    annotation; a crashing task of a graph fails alone and the rest of the graph computes."""
    before = dask_worker_pids(client)
    name = install(client, "safepool-test")
    try:
        with dask.annotate(executor=name):
            inputs = [dask.delayed(tasks.square)(i) for i in range(4)]
            crash = dask.delayed(tasks.kill_self)(dask_key_name="crash")
            total = dask.delayed(sum)(inputs, dask_key_name="total")
            pids = [dask.delayed(tasks.getpid)(i) for i in range(4)]
        total_f, crash_f, *pid_fs = client.compute([total, crash, *pids])
        assert total_f.result(timeout=60) == 0 + 1 + 4 + 9
        with pytest.raises(WorkerLostError):
            crash_f.result(timeout=60)
        assert not {f.result(timeout=60) for f in pid_fs} & set(before)
        # A function of this test module, a lambda too: Dask's cloudpickle reaches the pool.
        with dask.annotate(executor=name):
            f = client.submit(lambda x: x * 3, 5, pure=False)
        assert f.result(timeout=60) == 15
    finally:
        uninstall(client, name)
    assert dask_worker_pids(client) == before
    assert "safepool-test" not in client.run(lambda dask_worker: sorted(dask_worker.executors))


def test_stats(client):
    with DaskExecutor(client) as ex:
        assert list(ex.map(tasks.square, range(8))) == [i * i for i in range(8)]
        with pytest.raises(ValueError):
            ex.submit(tasks.raise_value_error).result(timeout=60)
        stats = ex.stats()
    assert stats.tasks_submitted == 9
    assert stats.tasks_completed == 8
    assert stats.tasks_failed == 1
    assert stats.tasks_queued == stats.tasks_running == 0
    assert stats.workers_started >= 1


def test_run_in_executor_and_as_completed(client):
    import concurrent.futures as cf

    with DaskExecutor(client) as ex:
        async def main():
            loop = asyncio.get_running_loop()
            return await asyncio.gather(*(loop.run_in_executor(ex, tasks.square, i)
                                          for i in range(4)))
        assert asyncio.run(main()) == [0, 1, 4, 9]
        futures = [ex.submit(tasks.square, i) for i in range(5)]
        done = {f.result() for f in cf.as_completed(futures, timeout=60)}
        assert done == {0, 1, 4, 9, 16}
        done, not_done = cf.wait(futures, timeout=60)
        assert not not_done


def test_terminate_workers_fails_running_tasks(client, tmp_path):
    before = dask_worker_pids(client)
    path = str(tmp_path / "pid")
    ex = DaskExecutor(client, max_workers=1)
    stuck = ex.submit(tasks.park, path)
    pid = int(wait_for_pid_file(path))
    queued = ex.submit(tasks.square, 2)
    ex.terminate_workers()
    assert queued.cancelled()
    with pytest.raises(WorkerLostError):
        stuck.result(timeout=60)
    wait_until(lambda: gone(pid), message=f"terminated task's process {pid} to be gone")
    assert dask_worker_pids(client) == before


def test_factory_picks_the_cluster(client, monkeypatch):
    address = client.scheduler.address
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with safepool.executor(max_workers=1) as local:
        assert isinstance(local, safepool.SafeProcessPoolExecutor)
    with safepool.executor(address=address) as remote:
        assert isinstance(remote, DaskExecutor)
        assert remote.submit(tasks.square, 5).result(timeout=60) == 25
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    with safepool.executor(task_timeout=30) as remote:
        assert isinstance(remote, DaskExecutor)
        assert remote.client.scheduler.address == address
        assert list(remote.map(tasks.square, [1, 2])) == [1, 4]


def test_pools_are_removed_at_shutdown(client):
    with DaskExecutor(client) as ex:
        assert list(ex.map(tasks.square, range(4))) == [0, 1, 4, 9]
        name = ex.pool_name
        assert all(name in names for names in
                   client.run(lambda dask_worker: list(dask_worker.executors)).values())
        assert [p for p in pool_pids(client) if not is_helper(p)]
    assert not any(name in names for names in
                   client.run(lambda dask_worker: list(dask_worker.executors)).values())
    # At most the Dask workers' own multiprocessing helpers (a fork server, a resource tracker:
    # they live as long as the Dask worker) remain.
    wait_until(lambda: not [p for p in pool_pids(client) if not is_helper(p)],
               message=f"pool processes of the Dask workers to end: {pool_pids(client)}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="psutil process tree")
def test_own_local_cluster_leaves_nothing_behind(tmp_path):
    """With no cluster given, the executor starts a LocalCluster and closes it at shutdown:
    every Dask process, every pool process and what the tasks started is gone after."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # the module's cluster
    path = str(tmp_path / "pids")
    with DaskExecutor(n_workers=2, threads_per_worker=1,
                      cluster_options={"dashboard_address": ":0"}) as ex:
        dask_pids = dask_worker_pids(ex.client)
        assert ex.submit(tasks.square, 6).result(timeout=60) == 36
        under_dask = pool_pids(ex.client)  # the pools' processes (and any fork server)
        assert under_dask
        stuck = ex.schedule(tasks.park_with_child, (path,), timeout=2.0)
        worker_pid, child_pid = map(int, wait_for_pid_file(path).split())
        with pytest.raises(TaskTimeoutError):
            stuck.result(timeout=60)
        with pytest.raises(WorkerLostError):
            ex.submit(tasks.kill_self).result(timeout=60)
        under_dask |= pool_pids(ex.client)
    for pid in dask_pids + [worker_pid, child_pid] + sorted(under_dask):
        wait_until(lambda pid=pid: gone(pid), message=f"process {pid} to be gone")
    left = [p for p in leftover_children() if p[0] not in before]
    deadline = time.monotonic() + 15
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in leftover_children() if p[0] not in before]
    assert not left, f"processes left behind: {left}"
