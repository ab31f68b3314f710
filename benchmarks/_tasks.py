"""Task functions run inside pool workers during the benchmarks.

They live in their own small module (imported as ``_tasks``) so that every start method can find
them: ``fork`` workers inherit them, while ``forkserver``/``spawn``/loky workers re-import this
module by name when they unpickle a task. ``run.py`` therefore puts ``benchmarks/`` (and the repo
root) on ``PYTHONPATH`` for every measurement process, and the workers inherit that environment.

Keep these functions trivial: the benchmarks measure the pool's overhead, not the work.
"""

import os
import time


def noop():
    """Do nothing; the cost of a task is all pool overhead."""
    return None


def identity(x):
    """Return the argument unchanged (small argument and result)."""
    return x


def square(x):
    """A tiny bit of work for the map cases (also checks results come back in order)."""
    return x * x


def echo(data):
    """Send a (big) payload straight back: measures argument + result transfer."""
    return data


def getpid():
    """Report which worker ran the task."""
    return os.getpid()


def sleep(seconds):
    """Keep a worker busy, e.g. to make the pool start all of its workers."""
    time.sleep(seconds)
    return os.getpid()
