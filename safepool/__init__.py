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
    from ._executor import SafeProcessPoolExecutor, default_max_workers  # noqa: F401
    from ._stats import PoolStats  # noqa: F401
    from ._worker import WorkerInfo, current_worker  # noqa: F401
    from .errors import (  # noqa: F401
        BrokenProcessPool,
        PoisonTaskError,
        RemoteTraceback,
        SoftTimeoutError,
        TaskPicklingError,
        TaskTimeoutError,
        TaskUnpicklingError,
        WorkerLostError,
    )
