"""safepool: a hardened, drop-in replacement for ``concurrent.futures.ProcessPoolExecutor``.

Swap one import::

    from safepool import SafeProcessPoolExecutor as ProcessPoolExecutor
"""
import importlib
from typing import TYPE_CHECKING, Any, List

__version__ = "0.1.0"

# Public name -> the module that defines it. Loaded on first use (PEP 562), because every
# worker imports this package to reach ``safepool._worker``: an eager import of the executor,
# psutil and dataclasses here cost each new worker tens of milliseconds of start-up.
_EXPORTS = {
    "SafeProcessPoolExecutor": "._executor",
    "default_max_workers": "._executor",
    "PoolStats": "._stats",
    "BrokenProcessPool": ".errors",
    "WorkerLostError": ".errors",
    "PoisonTaskError": ".errors",
    "TaskTimeoutError": ".errors",
    "SoftTimeoutError": ".errors",
    "TaskPicklingError": ".errors",
    "TaskUnpicklingError": ".errors",
    "RemoteTraceback": ".errors",
    "executor": "._factory",
    "current_worker": "._worker",
    "WorkerInfo": "._worker",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'safepool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    # "X as X": an explicit re-export, which mypy --strict (no_implicit_reexport) requires.
    from ._executor import SafeProcessPoolExecutor as SafeProcessPoolExecutor
    from ._executor import default_max_workers as default_max_workers
    from ._factory import executor as executor
    from ._stats import PoolStats as PoolStats
    from ._worker import WorkerInfo as WorkerInfo
    from ._worker import current_worker as current_worker
    from .errors import BrokenProcessPool as BrokenProcessPool
    from .errors import PoisonTaskError as PoisonTaskError
    from .errors import RemoteTraceback as RemoteTraceback
    from .errors import SoftTimeoutError as SoftTimeoutError
    from .errors import TaskPicklingError as TaskPicklingError
    from .errors import TaskTimeoutError as TaskTimeoutError
    from .errors import TaskUnpicklingError as TaskUnpicklingError
    from .errors import WorkerLostError as WorkerLostError
