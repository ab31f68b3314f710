"""retries=: a task whose worker died under it runs again; a task that kills every worker it
runs on is a poison task; nothing else is ever run twice."""
import os

import core_tasks
import pytest

from safepool import (
    PoisonTaskError,
    SafeProcessPoolExecutor,
    TaskTimeoutError,
    WorkerLostError,
)


def runs(path):
    return len(open(path).read()) if os.path.exists(path) else 0


@pytest.mark.timeout(90)
def test_a_task_whose_worker_died_runs_again(clean_process, tmp_path):
    path = str(tmp_path / "runs")
    with SafeProcessPoolExecutor(2, retries=2) as ex:
        assert ex.submit(core_tasks.die_until, path, 2).result(timeout=60) == 3
        stats = ex.stats()
        assert [ex.submit(abs, -i).result(timeout=30) for i in range(4)] == [0, 1, 2, 3]
    assert stats.tasks_retried == 2 and stats.poison_tasks == 0
    assert stats.workers_replaced["crash"] == 2


@pytest.mark.timeout(90)
def test_a_task_that_kills_every_worker_is_a_poison_task(clean_process, tmp_path):
    path = str(tmp_path / "runs")
    with SafeProcessPoolExecutor(2) as ex:
        future = ex.schedule(core_tasks.die_until, (path, 100), retries=2)
        with pytest.raises(PoisonTaskError) as info:
            future.result(timeout=60)
        assert isinstance(info.value, WorkerLostError)
        assert len(info.value.deaths) == 3 and all(code == -9 for _, code in info.value.deaths)
        assert "3 of them" in str(info.value)
        assert ex.submit(abs, -5).result(timeout=30) == 5  # the pool keeps serving
        stats = ex.stats()
    assert runs(path) == 3
    assert stats.tasks_retried == 2 and stats.poison_tasks == 1


@pytest.mark.timeout(90)
def test_without_retries_a_lost_task_runs_once(clean_process, tmp_path):
    path = str(tmp_path / "runs")
    with SafeProcessPoolExecutor(1) as ex:
        with pytest.raises(WorkerLostError) as info:
            ex.submit(core_tasks.die_until, path, 100).result(timeout=60)
        assert not isinstance(info.value, PoisonTaskError)
    assert runs(path) == 1


@pytest.mark.timeout(90)
def test_an_exception_or_a_timeout_is_never_retried(clean_process, tmp_path):
    raised, slow = str(tmp_path / "raised"), str(tmp_path / "slow")
    with SafeProcessPoolExecutor(1, retries=3) as ex:
        with pytest.raises(ValueError):
            ex.submit(core_tasks.count_and_raise, raised).result(timeout=30)
        with pytest.raises(TaskTimeoutError):
            ex.schedule(core_tasks.count_and_sleep, (slow, 30), timeout=0.5).result(timeout=30)
        stats = ex.stats()
    assert runs(raised) == 1 and runs(slow) == 1
    assert stats.tasks_retried == 0


def test_retries_must_be_a_count():
    with pytest.raises(ValueError):
        SafeProcessPoolExecutor(1, retries=-1)
    with pytest.raises(TypeError):
        SafeProcessPoolExecutor(1, retries=1.5)
    with SafeProcessPoolExecutor(1) as ex:
        with pytest.raises(TypeError):
            ex.schedule(abs, (1,), retries="2")
