"""Modules imported once, in the forkserver, instead of in every worker (issue 15).

A worker started through the forkserver is a fork of it: whatever the forkserver imported, the
worker has at no cost. So before the stdlib's forkserver starts, :func:`arrange` adds to its
preload list safepool's worker module (what every worker imports, ~10 ms) and the modules a
user names with ``preload=`` (``numpy`` costs ~100 ms per worker otherwise).

The forkserver is one per process, shared with the stdlib and every other pool, and its
preload list is read once, when it starts. A pool created after it started cannot add to it:
its modules are then imported by each worker at start-up, exactly as without ``preload``. The
stdlib forkserver also ignores a preload that fails to import; so each worker imports the
``preload`` modules again before its initializer (a no-op when preloaded), and a module that
cannot be imported fails that start with an error naming it, as a failing initializer does.
"""
import importlib
import logging
import re
from typing import Any, Callable, Iterable, Optional, Tuple

log = logging.getLogger("safepool")

#: What every worker imports: the target of its Process object.
WORKER_MODULE = "safepool._worker"

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def check_modules(preload: Any) -> Tuple[str, ...]:
    """``preload`` as a tuple of module names; ValueError saying what is wrong otherwise."""
    if isinstance(preload, (str, bytes)):
        raise ValueError(
            f"preload must be a list of module names, e.g. preload=[{preload!r}], "
            f"not the string {preload!r}")
    try:
        names = tuple(preload)
    except TypeError:
        raise ValueError(f"preload must be a list of module names, not {preload!r}") from None
    for name in names:
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            raise ValueError(
                f"preload must hold importable module names such as 'numpy' or 'os.path'; "
                f"{name!r} is not one")
    return names


def arrange(ctx: Any, modules: Iterable[str]) -> bool:
    """Add safepool's worker module and ``modules`` to the preload list of the stdlib's
    forkserver, if ``ctx`` uses it and it has not started. True if they will be preloaded."""
    get_method = getattr(ctx, "get_start_method", None)
    if get_method is None or get_method() != "forkserver":
        return False
    from multiprocessing import forkserver

    from ._forkserver_guard import _lock

    server = forkserver._forkserver
    wanted = [WORKER_MODULE, *modules]
    with _lock:  # the guard starts the forkserver under this lock: no start in between
        current = list(getattr(server, "_preload_modules", None) or [])
        missing = [name for name in wanted if name not in current]
        if not missing:
            return True
        if getattr(server, "_forkserver_pid", None) is not None:
            log.info("safepool: the forkserver was started before this pool, without %s "
                     "preloaded; each worker imports them itself", ", ".join(missing))
            return False
        # The stdlib keeps '__main__' first (a script's own module, imported once).
        server.set_forkserver_preload(current + missing)
    return True


class PreloadingInitializer:
    """A worker's initializer that first imports the ``preload`` modules (already imported,
    at no cost, when the forkserver preloaded them), then runs the user's initializer."""

    def __init__(self, modules: Tuple[str, ...],
                 initializer: Optional[Callable[..., Any]]) -> None:
        self.modules = modules
        self.initializer = initializer

    def __call__(self, *initargs: Any) -> None:
        for name in self.modules:
            try:
                importlib.import_module(name)
            except Exception as exc:
                raise ImportError(
                    f"preload: the worker could not import {name!r} ({exc!r}); check the "
                    f"name in preload=, or that the module imports in a fresh process") from exc
        if self.initializer is not None:
            self.initializer(*initargs)

    def __repr__(self) -> str:
        return f"PreloadingInitializer({self.modules!r}, {self.initializer!r})"
