"""safepool: a hardened, drop-in replacement for ``concurrent.futures.ProcessPoolExecutor``.

Swap one import::

    from safepool import SafeProcessPoolExecutor as ProcessPoolExecutor
"""
import logging

from ._executor import SafeProcessPoolExecutor, default_max_workers
from ._stats import PoolStats
from .errors import (
    BrokenProcessPool,
    RemoteTraceback,
    TaskPicklingError,
    TaskTimeoutError,
    TaskUnpicklingError,
    WorkerLostError,
)

__version__ = "0.1.0"

__all__ = [
    "SafeProcessPoolExecutor",
    "PoolStats",
    "BrokenProcessPool",
    "WorkerLostError",
    "TaskTimeoutError",
    "TaskPicklingError",
    "TaskUnpicklingError",
    "RemoteTraceback",
    "default_max_workers",
]

# Silent by default: the application decides where safepool's warnings go.
logging.getLogger("safepool").addHandler(logging.NullHandler())
