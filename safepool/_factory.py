"""``safepool.executor(...)``: one place that picks a local pool or a Dask cluster."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # imported when used: Dask only when there is a cluster
    from ._executor import SafeProcessPoolExecutor
    from .dask import DaskExecutor


def executor(max_workers: Optional[int] = None, *, address: Any = None,
             **options: Any) -> Union[SafeProcessPoolExecutor, DaskExecutor]:
    """A local :class:`~safepool.SafeProcessPoolExecutor`, or a
    :class:`~safepool.dask.DaskExecutor` when there is a cluster to use.

    There is one when ``address`` is given (a scheduler address such as
    ``"tcp://scheduler:8786"``, or a ``distributed.Client``) or, without it, when the
    ``DASK_SCHEDULER_ADDRESS`` environment variable is set. Dask is imported only then.
    ``max_workers`` and ``options`` (``task_timeout``, ``initializer``, ``initargs``,
    ``max_tasks_per_child``, ...) go to whichever executor is made; on a cluster,
    ``max_workers`` bounds the tasks in flight and the pool options apply to the pool on each
    Dask worker.

    Example::

        import safepool

        if __name__ == "__main__":
            with safepool.executor(max_workers=2, task_timeout=60) as pool:
                print(list(pool.map(abs, [-1, -2, 3])))
    """
    if address is None:
        address = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address is None:
        from ._executor import SafeProcessPoolExecutor

        return SafeProcessPoolExecutor(max_workers, **options)
    try:
        from .dask import DaskExecutor
    except ImportError as exc:
        raise ImportError(
            f"a Dask scheduler address was given ({address!r}) but Dask is not installed: "
            "pip install 'safepool[dask]'") from exc
    return DaskExecutor(address, max_workers=max_workers, **options)
