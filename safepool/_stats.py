"""The health snapshot returned by ``SafeProcessPoolExecutor.stats()``."""
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Mapping

from ._lifecycle import CAUSES as CAUSES


def _no_causes() -> Mapping[str, int]:
    return MappingProxyType({cause: 0 for cause in CAUSES})


@dataclass(frozen=True)
class PoolStats:
    """An immutable snapshot of one executor's health, taken when ``stats()`` was called.

    ``workers_replaced`` maps a cause ("crash", "timeout", "cancel", "recycle",
    "terminated") to how many workers ended for it; workers stopped by ``shutdown()`` are
    not counted there. ``late_results_dropped`` counts results that arrived for a task which
    had already timed out or been cancelled: they are dropped, never delivered twice.
    ``tasks_retried`` counts runs again after a worker died under a task (``retries``);
    ``poison_tasks`` counts tasks that failed with ``PoisonTaskError``; ``soft_timeouts``
    counts tasks told to stop by ``SoftTimeoutError`` (``soft_timeout``).
    ``log_records_forwarded`` counts workers' log records re-emitted here (``forward_logs``);
    ``log_records_dropped``, those a worker dropped because this process read too slowly.
    ``spare_workers_ready`` is how many warm spares wait (``spare_workers``; they are not in
    ``workers_alive``); ``spares_used``, how many took a lost worker's place.
    """

    workers_alive: int = 0
    workers_busy: int = 0
    workers_started: int = 0
    workers_replaced: Mapping[str, int] = field(default_factory=_no_causes)
    tasks_submitted: int = 0
    tasks_queued: int = 0
    tasks_running: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    tasks_cancelled: int = 0
    late_results_dropped: int = 0
    tasks_retried: int = 0
    poison_tasks: int = 0
    soft_timeouts: int = 0
    log_records_forwarded: int = 0
    log_records_dropped: int = 0
    spare_workers_ready: int = 0
    spares_used: int = 0

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"PoolStats({fields})"

    def to_dict(self) -> Dict[str, Any]:
        """A plain dict of every field (``workers_replaced`` as a dict too), e.g. for JSON."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["workers_replaced"] = dict(self.workers_replaced)
        return out
