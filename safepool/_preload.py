"""Modules imported once, in the forkserver, instead of in every worker (issue 15).

A worker started through the forkserver is a fork of it: whatever the forkserver imported, the
worker has at no cost. So before the stdlib's forkserver starts, :func:`arrange` adds to its
preload list one safepool module, :mod:`safepool._forkserver_preload`, which imports
safepool's worker module (what every worker imports, ~10 ms) and the modules a user names
with ``preload=`` (``numpy`` costs ~100 ms per worker otherwise). The user's names reach it
through an environment variable that :func:`passing_names` sets only while safepool starts
the server: they never go in the stdlib's list itself, whose imports may raise nothing but
ImportError without killing the server that every pool in the process shares.

The forkserver is one per process, shared with the stdlib and every other pool, and its
preload list is read once, when it starts. A pool created after it started cannot add to it:
its modules are then imported by each worker at start-up, exactly as without ``preload``. A
module that failed in the forkserver is imported again by each worker before its initializer
(a no-op when preloaded): one that cannot be imported fails that start with an error naming
it, as a failing initializer does.

A side effect to know: modules preloaded this way are in every process the forkserver forks
afterwards, the workers of other pools and of the stdlib's own forkserver pools included.
"""
import contextlib
import importlib
import logging
import os
import re
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

log = logging.getLogger("safepool")

#: The one module safepool puts in the stdlib's preload list (see the module's docstring).
BOOT_MODULE = "safepool._forkserver_preload"
#: The user's preload names, comma-separated, for BOOT_MODULE in the starting forkserver.
PRELOAD_ENV = "SAFEPOOL_FORKSERVER_PRELOAD"

_wanted: List[str] = []  # every pool's preload names, in order, under _forkserver_guard._lock

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
    """Have the stdlib's forkserver preload safepool's worker module and ``modules``, if
    ``ctx`` uses it and it has not started. True if they will be preloaded."""
    get_method = getattr(ctx, "get_start_method", None)
    if get_method is None or get_method() != "forkserver":
        return False
    from multiprocessing import forkserver

    from ._forkserver_guard import _lock

    server: Any = forkserver._forkserver
    # Our lock: safepool starts the forkserver under it. The server's own: the stdlib starts
    # it under that one (a stdlib pool in another thread), and we must not add to a list it
    # is reading or call "not started" a server it is starting.
    with _lock, server._lock:
        current = list(getattr(server, "_preload_modules", None) or [])
        missing = [name for name in modules if name not in _wanted]
        if BOOT_MODULE in current and not missing:
            return True
        if getattr(server, "_forkserver_pid", None) is not None:
            log.info("safepool: the forkserver was started before this pool, without %s "
                     "preloaded; each worker imports them itself",
                     ", ".join(missing or ["safepool's worker module"]))
            return False
        _wanted.extend(missing)
        if BOOT_MODULE not in current:
            # The stdlib keeps '__main__' first (a script's own module, imported once).
            server.set_forkserver_preload(current + [BOOT_MODULE])
    return True


@contextlib.contextmanager
def passing_names(server: Any) -> Iterator[None]:
    """Around ``server.ensure_running()`` (under _forkserver_guard._lock): if it will start
    the server, hand the preload names to BOOT_MODULE there through its environment, and only
    to it (it pops them; ours has the variable only while the server is spawned).

    Set in the C environment (putenv), which the stdlib's spawn of the server inherits, not
    in ``os.environ``: adding and removing a key there raced with other threads copying it
    (``dict(os.environ)``: KeyError), and it was done on every worker start."""
    if not _wanted or getattr(server, "_forkserver_pid", None) is not None:
        yield
        return
    before = os.environ.get(PRELOAD_ENV)
    os.putenv(PRELOAD_ENV, ",".join(_wanted))
    try:
        yield
    finally:
        if before is None:
            os.unsetenv(PRELOAD_ENV)
        else:
            os.putenv(PRELOAD_ENV, before)


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
