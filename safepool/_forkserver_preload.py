"""Imported by the stdlib's fork server, never by a pool: what every worker inherits.

The fork server is one per interpreter, shared by every pool and by the stdlib. It imports
its preload list at start-up and ignores only ImportError: a module that raises anything
else there (RuntimeError, OSError, SystemExit from a misconfigured import) kills the fork
server, and with it every later worker start of every pool, the user's own stdlib pools
included. So safepool never puts a user's module in that list. It puts this module, which
imports the names it is passed (an environment variable set only while safepool starts the
server) and survives whatever they raise: a module that fails here is imported again by
each worker before its initializer, where the failure breaks that pool alone, named.
"""
import importlib
import os
import sys
from typing import Dict

from ._preload import PRELOAD_ENV

#: What failed to import here, by name (for a post-mortem in the fork server; workers fork
#: with a copy of it).
FAILED: Dict[str, str] = {}


def _import_all() -> None:
    # Popped at once: the workers forked from here must not see it.
    names = os.environ.pop(PRELOAD_ENV, "")
    # The worker's module, then the executor's: every worker imports the user's main module
    # after it forks (the stdlib's preload of '__main__' has never worked before Python
    # 3.14: CPython gh-126631), and a main module that uses safepool imports the executor's
    # modules, 5-8 ms per worker start when they are not loaded here.
    for name in ["safepool._worker", "safepool._executor", *filter(None, names.split(","))]:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: B036 - the fork server is shared: nothing may kill it
            FAILED[name] = repr(exc)
    try:
        sys.modules["safepool._worker"].load_prctl()
    except BaseException as exc:  # noqa: B036 - as above; each worker tries again itself
        FAILED["ctypes"] = repr(exc)


_import_all()
