"""A randomized, stateful test of the core promises against a real pool.

Hypothesis drives one real SafeProcessPoolExecutor per example through interleavings of
submit, schedule with timeouts, cancel, abandoned maps, SIGKILLed workers, a parent thread
hogging the GIL, bursts of short tasks (so tasks are batched and pipelined), and ends it with
one of the shutdown variants. Every task records its start in a file. Then:

* every future resolves, and exactly once (its done-callbacks run once);
* no task starts twice;
* no task whose ``cancel()`` returned True ever starts;
* nothing is pending after shutdown, and no process is left behind.

Bounded: ``SAFEPOOL_STATEFUL_EXAMPLES`` examples (default 8; the soak env runs more). A
failure prints hypothesis's seed and the shortest sequence of steps that shows it.
"""
import os
import signal
import tempfile
import time

import core_tasks
import pytest
from conftest import leftover_children, no_leftovers

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from safepool import SafeProcessPoolExecutor  # noqa: E402

EXAMPLES = int(os.environ.get("SAFEPOOL_STATEFUL_EXAMPLES", "8"))
STEPS = int(os.environ.get("SAFEPOOL_STATEFUL_STEPS", "25"))
RESOLVE_BOUND = 60.0
#: How long one shutdown may take (a start stuck in the forkserver is given up after 60 s).
SHUTDOWN_BOUND = 150.0


class PoolMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="safepool-stateful-")
        self.log = os.path.join(self.dir, "starts")
        self.next_tag = 0
        self.futures = {}      # tag -> future
        self.callbacks = {}    # tag -> number of done-callback calls
        self.cancelled_ok = set()  # tags whose cancel() returned True
        self.maps = []
        self.ex = None

    @initialize(workers=st.integers(1, 3), cancel_running=st.booleans(),
                spare_workers=st.sampled_from([0, 0, 1, 2]))
    def start(self, workers, cancel_running, spare_workers):
        self.ex = SafeProcessPoolExecutor(workers, cancel_running=cancel_running,
                                          spare_workers=spare_workers)

    def _tag(self):
        self.next_tag += 1
        return f"t{self.next_tag}"

    def _track(self, tag, future):
        self.futures[tag] = future
        self.callbacks[tag] = 0

        def done(_f, tag=tag):
            self.callbacks[tag] += 1

        future.add_done_callback(done)

    @rule(seconds=st.sampled_from([0.0, 0.0, 0.001, 0.05, 0.3]))
    def submit(self, seconds):
        tag = self._tag()
        self._track(tag, self.ex.submit(core_tasks.record_start, self.log, tag, seconds))

    @rule(seconds=st.sampled_from([0.0, 0.05, 0.4]), timeout=st.sampled_from([0.1, 0.2, 1.0]))
    def schedule_with_timeout(self, seconds, timeout):
        tag = self._tag()
        self._track(tag, self.ex.schedule(core_tasks.record_start, (self.log, tag, seconds),
                                          timeout=timeout))

    @rule(n=st.integers(20, 120))
    def burst_of_short_tasks(self, n):
        for _ in range(n):
            tag = self._tag()
            self._track(tag, self.ex.submit(core_tasks.record_start, self.log, tag))

    @precondition(lambda self: self.futures)
    @rule(data=st.data())
    def cancel(self, data):
        tag = data.draw(st.sampled_from(sorted(self.futures)))
        if self.futures[tag].cancel():
            self.cancelled_ok.add(tag)

    @rule(n=st.integers(3, 30), take=st.integers(0, 2), seconds=st.sampled_from([0.0, 0.05]))
    def abandoned_map(self, n, take, seconds):
        tags = [self._tag() for _ in range(n)]
        results = self.ex.map(core_tasks.record_start, [self.log] * n, tags, [seconds] * n)
        for _ in range(take):
            next(results)
        results.close()
        self.maps.append(tags)

    @rule(behind=st.integers(1, 6))
    def timeout_while_the_manager_is_late(self, behind):
        """A task that ends just after its deadline, tasks sent behind it, and a manager thread
        that cannot run from before the deadline until after the next task started."""
        tag = self._tag()
        self._track(tag, self.ex.schedule(core_tasks.record_start, (self.log, tag, 0.25),
                                          timeout=0.2))
        for _ in range(behind):
            t = self._tag()
            self._track(t, self.ex.submit(core_tasks.record_start, self.log, t))
        time.sleep(0.1)
        core_tasks.hog_gil(0.4)

    @rule()
    def kill_a_worker(self):
        pids = list(self.ex._processes)
        if pids:
            try:
                os.kill(pids[0], signal.SIGKILL)
            except ProcessLookupError:
                pass

    @rule(seconds=st.sampled_from([0.05, 0.3]))
    def hog_the_gil(self, seconds):
        core_tasks.hog_gil(seconds)

    @invariant()
    def no_task_started_twice(self):
        starts = core_tasks.starts(self.log)
        assert len(starts) == len(set(starts)), f"started twice: {_twice(starts)}"

    def teardown(self):
        if self.ex is None:
            return
        try:
            self._shut_down_and_check()
        finally:
            self.ex.kill_workers()
            self.ex.shutdown(wait=True, timeout=SHUTDOWN_BOUND)

    def _shut_down_and_check(self):
        how = self.next_tag % 5  # varied, and reproducible from the steps
        # Every wait is bounded: a shutdown that hangs fails here (with the steps that led to
        # it) instead of hanging the run.
        bound = SHUTDOWN_BOUND
        if how == 0:
            assert self.ex.shutdown(wait=True, timeout=bound) is True, "shutdown hung"
        elif how == 1:
            assert self.ex.shutdown(wait=True, cancel_futures=True, timeout=bound) is True
        elif how == 2:
            self.ex.shutdown(wait=True, timeout=0.5)
        elif how == 3:
            self.ex.terminate_workers()
            assert self.ex.shutdown(wait=True, timeout=bound) is True, "shutdown hung"
        else:
            self.ex.shutdown(wait=False, cancel_futures=True)
            assert self.ex.shutdown(wait=True, timeout=bound) is True, "shutdown hung"
        end = time.monotonic() + RESOLVE_BOUND
        while time.monotonic() < end and not all(f.done() for f in self.futures.values()):
            time.sleep(0.01)
        pending = [t for t, f in self.futures.items() if not f.done()]
        assert not pending, f"futures still pending after shutdown: {pending}"
        # A future is done a moment before its callbacks run: wait for them, with a deadline.
        while time.monotonic() < end and not all(self.callbacks.values()):
            time.sleep(0.01)
        once = {t: n for t, n in self.callbacks.items() if n != 1}
        assert not once, f"done-callbacks not run exactly once: {once}"
        starts = core_tasks.starts(self.log)
        assert len(starts) == len(set(starts)), f"started twice: {_twice(starts)}"
        ran_cancelled = self.cancelled_ok & set(starts)
        # With cancel_running, cancel() may stop a task that is running: that one started.
        if not self.ex._cancel_running:
            assert not ran_cancelled, f"cancel() returned True, yet they started: {ran_cancelled}"
        for tag in self.cancelled_ok:
            assert self.futures[tag].cancelled()
        no_leftovers()
        assert not leftover_children()


def _twice(starts):
    return sorted({s for s in starts if starts.count(s) > 1})


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, print_blob=True,
    suppress_health_check=list(hypothesis.HealthCheck))
TestPoolMachine = pytest.mark.timeout(600)(TestPoolMachine)
