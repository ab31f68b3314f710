"""``map`` and ``map_unordered``: chunking, bounded look-ahead, timeouts and progress.

The iterators hold only a weak reference to the executor, so an abandoned iterator does not
keep a pool alive; closing or dropping the iterator cancels what has not started.
"""
from __future__ import annotations

import collections
import itertools
import pickle
import queue
import time
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Iterable,
    Iterator,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    cast,
)

from ._worker import run_chunk

if TYPE_CHECKING:
    from ._executor import SafeFuture, SafeProcessPoolExecutor

_T = TypeVar("_T")
#: Submits one item (the arguments of one call) or one chunk of items; returns its future.
_Submit = Callable[[Any], "Future[Any]"]


def validate(chunksize: int, buffersize: Optional[int]) -> None:
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    if buffersize is not None:
        if not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize < 1:
            raise ValueError("buffersize must be None or > 0")


def _total(iterables: Sequence[Any]) -> Optional[int]:
    try:
        return min(len(it) for it in iterables)
    except TypeError:
        return None


class _Progress:
    """Reports done/total to a callback, or to a tqdm bar when ``progress=True``."""

    def __init__(self, progress: Any, total: Optional[int]):
        self.done = 0
        self.total = total
        self.bar: Any = None
        self.callback: Optional[Callable[[int, Optional[int]], object]] = None
        if progress is True:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError("progress=True needs tqdm: pip install 'safepool[progress]', "
                                  "or pass a callback progress(done, total)") from None
            self.bar = tqdm(total=total)
        elif callable(progress):
            self.callback = progress
        elif progress:
            raise TypeError("progress must be None, True (a tqdm bar) or a callable "
                            "progress(done, total)")

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _submitter(executor: SafeProcessPoolExecutor, fn: Callable[..., Any],
               chunksize: int) -> _Submit:
    """A function that submits one item (chunksize 1) or one chunk of items."""
    ref = weakref.ref(executor)

    def submit(item: Any) -> Future[Any]:
        ex = ref()
        if ex is None:
            raise RuntimeError("the executor was garbage-collected during map()")
        if chunksize == 1:
            return ex.submit(fn, *item)
        return ex.submit(run_chunk, fn, item)

    return submit


def _items(iterables: Iterable[Iterable[Any]], chunksize: int) -> Iterator[Any]:
    args = zip(*iterables)
    if chunksize == 1:
        return args
    return iter(lambda: list(itertools.islice(args, chunksize)), [])


def _yield_results(future: Future[Any], chunked: bool, tracker: Optional[_Progress],
                   end: Optional[float] = None) -> Iterator[Any]:
    """Yield the results a finished future stands for, then raise a chunk's error.

    Each result is popped before it is yielded: a suspended generator must not keep a
    result alive (the stdlib's map guarantees it, bpo-14406: test_free_reference).
    """
    value = future.result() if end is None else future.result(end - time.monotonic())
    if chunked:
        results, error = value
        results = list(results)
    else:
        results, error = [value], None
    del value, future
    results.reverse()
    while results:
        if tracker is not None:
            tracker.advance()
        yield results.pop()
    if error is not None:
        raise pickle.loads(error)


def _abandon(futures: Iterable[Future[Any]]) -> None:
    """The iterator was closed or dropped: cancel what has not started, including tasks a
    worker holds and has not started (taken back, then cancelled)."""
    for future in futures:
        cast("SafeFuture", future)._withdraw()  # the pool's own futures


def map_ordered(executor: SafeProcessPoolExecutor, fn: Callable[..., _T],
                iterables: Tuple[Iterable[Any], ...], *, timeout: Optional[float],
                chunksize: int, buffersize: Optional[int], progress: Any) -> Iterator[_T]:
    validate(chunksize, buffersize)
    end = None if timeout is None else time.monotonic() + timeout
    submit = _submitter(executor, fn, chunksize)
    items = _items(iterables, chunksize)
    first = items if buffersize is None else itertools.islice(items, buffersize)
    futures = collections.deque(submit(item) for item in first)  # submitted now, like the stdlib
    tracker = _Progress(progress, _total(iterables)) if progress else None
    return _ordered(futures, items, submit, buffersize, end, chunksize > 1, tracker)


def _ordered(futures: Deque[Future[Any]], items: Iterator[Any], submit: _Submit,
             buffersize: Optional[int], end: Optional[float], chunked: bool,
             tracker: Optional[_Progress]) -> Iterator[Any]:
    try:
        while futures:
            if buffersize is not None:
                for item in itertools.islice(items, 1):  # keep the look-ahead full
                    futures.append(submit(item))
            yield from _yield_results(futures.popleft(), chunked, tracker, end)
    finally:
        _abandon(futures)
        if tracker is not None:
            tracker.close()


def map_unordered(executor: SafeProcessPoolExecutor, fn: Callable[..., _T],
                  iterables: Tuple[Iterable[Any], ...], *, timeout: Optional[float],
                  chunksize: int, buffersize: Optional[int], progress: Any) -> Iterator[_T]:
    validate(chunksize, buffersize)
    end = None if timeout is None else time.monotonic() + timeout
    plain_submit = _submitter(executor, fn, chunksize)
    finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()

    def submit(item: Any) -> Future[Any]:
        future = plain_submit(item)
        future.add_done_callback(finished.put)
        return future

    items = _items(iterables, chunksize)
    first = items if buffersize is None else itertools.islice(items, buffersize)
    in_flight = {submit(item) for item in first}
    tracker = _Progress(progress, _total(iterables)) if progress else None
    return _unordered(in_flight, finished, items, submit, buffersize, end, chunksize > 1,
                      tracker)


def _unordered(in_flight: Set[Future[Any]], finished: queue.SimpleQueue[Future[Any]],
               items: Iterator[Any], submit: _Submit, buffersize: Optional[int],
               end: Optional[float], chunked: bool,
               tracker: Optional[_Progress]) -> Iterator[Any]:
    try:
        while in_flight:
            try:
                if end is None:
                    future = finished.get()
                else:
                    future = finished.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise FuturesTimeoutError() from None
            in_flight.discard(future)
            if buffersize is not None:
                for item in itertools.islice(items, 1):
                    in_flight.add(submit(item))
            results = _yield_results(future, chunked, tracker)
            del future  # only the generator holds it now, and it lets go before yielding
            yield from results
    finally:
        _abandon(in_flight)
        if tracker is not None:
            tracker.close()
