"""safepool.current_worker(): a stable slot per worker, its pid, and its task count."""
import os
import time

import core_tasks
import pytest

import safepool
from safepool import SafeProcessPoolExecutor, WorkerLostError


def test_outside_a_worker_it_is_none():
    assert safepool.current_worker() is None


@pytest.mark.timeout(90)
def test_slots_are_stable_and_a_replacement_takes_the_dead_workers_slot(clean_process):
    with SafeProcessPoolExecutor(2) as ex:
        first = [ex.submit(core_tasks.whoami, 0.3) for _ in range(2)]
        infos = [f.result(timeout=30) for f in first]
        assert sorted(slot for slot, _, _ in infos) == [0, 1]
        assert all(pid in ex._processes for _, pid, _ in infos)
        assert all(tasks_run == 1 for _, _, tasks_run in infos)
        with pytest.raises(WorkerLostError):
            ex.submit(core_tasks.die).result(timeout=30)
        seen = {}
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            for slot, pid, _ in [f.result(timeout=30) for f in
                                 [ex.submit(core_tasks.whoami, 0.2) for _ in range(2)]]:
                seen[slot] = pid
        assert sorted(seen) == [0, 1], "the replacement took the free slot, not a new one"
        assert len(set(seen.values()) - {pid for _, pid, _ in infos}) == 1


@pytest.mark.timeout(60)
def test_tasks_run_counts_this_workers_tasks(clean_process):
    with SafeProcessPoolExecutor(1) as ex:
        counts = [ex.submit(core_tasks.whoami).result(timeout=30)[2] for _ in range(3)]
    assert counts == [1, 2, 3]
    assert os.getpid() not in ex._processes
