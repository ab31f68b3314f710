"""soft_timeout=: SoftTimeoutError raised inside a task that runs too long, so it can clean
up; never in another task, never in safepool's own code."""
import os

import core_tasks
import pytest

from safepool import SafeProcessPoolExecutor, SoftTimeoutError, TaskTimeoutError


@pytest.mark.timeout(60)
def test_a_task_can_clean_up_when_its_soft_timeout_passes(clean_process, tmp_path):
    path = str(tmp_path / "cleaned")
    with SafeProcessPoolExecutor(1, soft_timeout=0.3) as ex:
        assert ex.submit(core_tasks.sleep_then_clean_up, 30, path).result(timeout=30) == \
            "cleaned up"
        pid = ex.submit(os.getpid).result(timeout=30)
        assert ex.submit(os.getpid).result(timeout=30) == pid  # the worker was not replaced
        stats = ex.stats()
    assert open(path).read() == "cleaned"
    assert stats.soft_timeouts == 1 and stats.workers_replaced["timeout"] == 0


@pytest.mark.timeout(60)
def test_uncaught_it_fails_the_future(clean_process):
    with SafeProcessPoolExecutor(1) as ex:
        future = ex.schedule(core_tasks.sleep_and_return, (30, 1), soft_timeout=0.3)
        with pytest.raises(SoftTimeoutError) as info:
            future.result(timeout=30)
        assert isinstance(info.value, TimeoutError)
        assert ex.submit(abs, -1).result(timeout=30) == 1


@pytest.mark.timeout(60)
def test_the_hard_timeout_still_stops_a_task_that_ignores_it(clean_process):
    with SafeProcessPoolExecutor(1) as ex:
        future = ex.schedule(core_tasks.ignore_soft_timeouts, (30,), soft_timeout=0.2,
                             timeout=1.0)
        with pytest.raises(TaskTimeoutError):
            future.result(timeout=30)


@pytest.mark.timeout(120)
def test_a_soft_timeout_never_lands_in_the_next_task(clean_process):
    """Tasks that end just around their soft deadline: a late SOFT_TIMEOUT must find no
    task of its own running, and leave the next task alone."""
    with SafeProcessPoolExecutor(2, soft_timeout=0.05) as ex:
        futures = [ex.submit(core_tasks.sleep_and_return, 0.05 if i % 2 else 0.0, i)
                   for i in range(200)]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=60))
            except SoftTimeoutError:
                outcomes.append("soft")
    # Only the 50 ms tasks may have been interrupted; every 0 ms task returned its value.
    assert all(outcomes[i] == i for i in range(0, 200, 2)), outcomes
    assert all(outcomes[i] in (i, "soft") for i in range(1, 200, 2))
