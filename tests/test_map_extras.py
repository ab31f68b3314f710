"""map for large and endless inputs (issue 3, items 5 and 7): buffersize, map_unordered,
errors at their place, abandoning the iterator, progress callbacks."""
import collections
import itertools

import pytest
import tasks
from conftest import wait_until

import safepool._manager
from safepool import SafeProcessPoolExecutor


class Counted:
    """An iterator that counts how many items were taken from it."""

    def __init__(self, iterable):
        self.it = iter(iterable)
        self.taken = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.it)
        self.taken += 1
        return item


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_buffersize_reads_an_endless_input_lazily(clean_process, chunksize):
    buffersize = 4
    source = Counted(itertools.count())
    with SafeProcessPoolExecutor(2) as ex:
        it = ex.map(tasks.square, source, buffersize=buffersize, chunksize=chunksize)
        # Chunks in flight: the look-ahead, plus the one being waited for.
        most_items = (buffersize + 1) * chunksize
        assert source.taken <= most_items
        results = []
        for _ in range(60):
            results.append(next(it))
            assert source.taken - len(results) <= most_items, (
                f"{source.taken} items read for {len(results)} results")
            stats = ex.stats()
            assert stats.tasks_queued + stats.tasks_running <= buffersize + 1, stats
            assert stats.tasks_submitted * chunksize <= len(results) + most_items + chunksize
        assert results == [i * i for i in range(60)]
        it.close()


@pytest.mark.timeout(60)
def test_map_unordered_yields_every_result_as_it_completes(clean_process, tmp_path):
    release = str(tmp_path / "release")
    values = ["slow"] + [f"fast{i}" for i in range(7)]
    paths = [release] + [None] * 7
    with SafeProcessPoolExecutor(2) as ex:
        it = ex.map_unordered(tasks.value_after_file, values, paths)
        # "slow" cannot finish before the file exists, and we create it only now: an ordered
        # map would block here forever.
        first_two = [next(it), next(it)]
        assert "slow" not in first_two
        open(release, "w").close()
        rest = list(it)
        assert collections.Counter(first_two + rest) == collections.Counter(values)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_unordered_with_buffersize_and_chunks(clean_process, chunksize):
    source = Counted(range(40))
    with SafeProcessPoolExecutor(2) as ex:
        results = list(ex.map_unordered(tasks.square, source, chunksize=chunksize, buffersize=3))
        assert collections.Counter(results) == collections.Counter(i * i for i in range(40))
        assert source.taken == 40


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize,buffersize", [(1, None), (3, None), (3, 2), (1, 2)])
def test_map_failed_item_raises_at_its_place(clean_process, chunksize, buffersize):
    with SafeProcessPoolExecutor(2) as ex:
        it = ex.map(tasks.fail_if_equal, range(12), [5] * 12, chunksize=chunksize,
                    buffersize=buffersize)
        got = []
        with pytest.raises(ValueError, match="item 5 is bad"):
            for value in it:
                got.append(value)
        assert got == [0, 10, 20, 30, 40]


@pytest.mark.timeout(60)
def test_map_unordered_failed_item_raises(clean_process):
    # One worker: items complete in order, so exactly those before the failed one were yielded
    # (results as they complete, then the error; none lost, none made up).
    with SafeProcessPoolExecutor(1) as ex:
        got = []
        with pytest.raises(ValueError, match="item 5 is bad"):
            for value in ex.map_unordered(tasks.fail_if_equal, range(12), [5] * 12):
                got.append(value)
        assert sorted(got) == [0, 10, 20, 30, 40]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unordered", [False, True])
def test_abandoning_the_iterator_cancels_what_has_not_started(clean_process, tmp_path,
                                                              unordered):
    release = str(tmp_path / "release")
    n = 60
    values = list(range(n))
    paths = [None, release] + [None] * (n - 2)  # item 1 holds the only worker
    with SafeProcessPoolExecutor(1) as ex:
        mapper = ex.map_unordered if unordered else ex.map
        it = mapper(tasks.value_after_file, values, paths)
        assert next(it) == 0
        it.close()
        open(release, "w").close()
        # Every task is settled: those already sent to the worker (RUNNING, as in the stdlib's
        # call queue: the one running, plus at most two messages of short tasks) ran, the
        # rest were cancelled and never ran.
        wait_until(lambda: ex.stats().tasks_queued == 0 and ex.stats().tasks_running == 0, 20,
                   message="the queue to drain")
        stats = ex.stats()
        sent_ahead = 1 + 2 * safepool._manager.MAX_BATCH
        assert stats.tasks_submitted == n
        assert stats.tasks_completed <= 1 + sent_ahead, stats
        assert stats.tasks_cancelled >= n - 1 - sent_ahead, stats
        assert stats.tasks_completed + stats.tasks_cancelled == n, stats


@pytest.mark.timeout(60)
def test_abandoning_a_buffered_map_stops_reading_the_input(clean_process):
    source = Counted(itertools.count())
    with SafeProcessPoolExecutor(2) as ex:
        it = ex.map(tasks.square, source, buffersize=3)
        assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
        it.close()
        taken = source.taken
        wait_until(lambda: ex.stats().tasks_queued == 0 and ex.stats().tasks_running == 0, 20,
                   message="the queue to drain")
        assert source.taken == taken <= 5 + 3 + 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 4])
def test_progress_callback_gets_done_and_total(clean_process, chunksize):
    calls = []
    with SafeProcessPoolExecutor(2) as ex:
        out = list(ex.map(tasks.square, range(10), chunksize=chunksize,
                          progress=lambda done, total: calls.append((done, total))))
        assert out == [i * i for i in range(10)]
        assert calls == [(i, 10) for i in range(1, 11)]

        calls.clear()
        out = list(ex.map_unordered(tasks.square, range(7), chunksize=chunksize,
                                    progress=lambda done, total: calls.append((done, total))))
        assert sorted(out) == [i * i for i in range(7)]
        assert calls == [(i, 7) for i in range(1, 8)]

        # An input without a length: the total is unknown.
        calls.clear()
        gen = (i for i in range(5))
        assert list(ex.map(tasks.square, gen, chunksize=chunksize, buffersize=2,
                           progress=lambda d, t: calls.append((d, t)))) == [0, 1, 4, 9, 16]
        assert calls == [(i, None) for i in range(1, 6)]


@pytest.mark.timeout(60)
def test_no_progress_by_default_and_bad_progress_is_refused(clean_process):
    with SafeProcessPoolExecutor(1) as ex:
        assert list(ex.map(tasks.square, range(3))) == [0, 1, 4]
        with pytest.raises(TypeError):
            list(ex.map(tasks.square, range(3), progress="yes"))
        with pytest.raises(ValueError):
            ex.map(tasks.square, range(3), buffersize=0)


@pytest.mark.timeout(60)
def test_a_chunked_map_costs_the_worker_no_import():
    """map()'s chunk runner lives in a module every worker has imported: a worker used to
    import safepool._map (and concurrent.futures) on its first chunk, 5 ms of a small map."""
    import core_tasks

    with SafeProcessPoolExecutor(1) as ex:
        assert list(ex.map(abs, range(-5, 5), chunksize=3)) == [abs(i) for i in range(-5, 5)]
        loaded = ex.submit(core_tasks.loaded_modules, "safepool").result(timeout=30)
    assert "safepool._worker" in loaded
    assert "safepool._map" not in loaded, loaded
