"""Hints for error messages: why a task or a worker failed in a way users cannot guess.

Pure functions of their arguments and of ``sys.modules['__main__']``; nothing here starts,
stops or changes anything, so they are safe to call from any thread, in the parent or in a
worker, while building an error message.

The traps they explain come from how workers start. safepool starts workers with forkserver
or spawn (never fork), and such a worker re-creates the parent's ``__main__`` by running its
file again, under the name ``__mp_main__``. That fails when the main program has no file:

* ``python -c CODE``: ``__main__`` has no file, so a function or class defined in CODE does
  not exist in a worker; the task cannot be unpickled there.
* a script piped to ``python -`` (or ``python < script.py``): ``__main__.__file__`` is
  ``'<stdin>'``, not a file (the stdlib's workers try to open it and all fail to start;
  safepool's are not asked to, see ``_process._skip_a_main_that_is_not_a_file``).
* the interactive interpreter, Jupyter or IPython: as with ``-c``, definitions made there live
  only in the parent.

And a worker that runs the main program under the name ``__mp_main__`` names the classes
defined there ``__mp_main__.MyError`` in its tracebacks, where the user wrote ``__main__``.
"""
import builtins
import os
import re
import sys
from types import ModuleType
from typing import Optional

#: How every hint ends: the one fix that works in every case.
_FIX = ("Put the function (and any class it uses) in a .py file and run that file, or import "
        "it from a module: workers started with forkserver or spawn import it by name. Or "
        "leave cloudpickle_fallback=True (the default), so that safepool sends it by value.")

_MP_MAIN = re.compile(r"(?<![\w.])__mp_main__(?!\w)")


def _main_module(main_module: Optional[ModuleType]) -> Optional[ModuleType]:
    return sys.modules.get("__main__") if main_module is None else main_module


def _in_notebook() -> bool:
    """IPython (terminal or Jupyter kernel) is running this interpreter."""
    return "get_ipython" in vars(builtins) or "ipykernel" in sys.modules


def _as_worker_sees_it(path: str) -> str:
    """The main file's path as a starting worker opens it: multiprocessing makes a relative
    path absolute against the directory the parent started in (``ORIGINAL_DIR``)."""
    if os.path.isabs(path):
        return path
    from multiprocessing import process

    return os.path.join(getattr(process, "ORIGINAL_DIR", None) or os.getcwd(), path)


def main_module_trap(main_module: Optional[ModuleType] = None) -> Optional[str]:
    """Why a worker cannot re-create ``__main__``, and what to do; None when it can.

    ``main_module`` defaults to ``sys.modules['__main__']``. None means the main program is
    a file that exists, or a module run with ``python -m``: then whatever it defines at
    module level is importable in a worker.
    """
    main = _main_module(main_module)
    if main is None:
        return None
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None) not in (None, "__main__"):
        return None  # `python -m package.module`: the worker imports it by that name
    path = getattr(main, "__file__", None)
    if path is None:
        if _in_notebook():
            return ("This program runs in a Jupyter notebook or IPython: functions and "
                    "classes defined in a cell exist only in this process, and a worker "
                    "cannot find them. " + _FIX + " For a notebook: save them in a module "
                    "next to it (e.g. tasks.py) and `from tasks import work`.")
        if hasattr(sys, "ps1") or sys.flags.interactive:
            return ("This program runs in the interactive interpreter: functions and "
                    "classes defined at the prompt exist only in this process, and a worker "
                    "cannot find them. " + _FIX)
        return ("This program was started with `python -c`, which gives the main module no "
                "file: functions and classes defined in the command exist only in this "
                "process, and a worker cannot find them. " + _FIX)
    if path == "<stdin>":
        return ("This program was read from standard input (`python -` or `python < "
                "script.py`), which leaves no file a worker could run again: functions and "
                "classes defined in it exist only in this process, and a worker cannot find "
                "them. Save the program to a file and run `python script.py`. " + _FIX)
    if path.startswith("<") and path.endswith(">"):
        return ("The main module comes from %s, not from a file: a worker cannot re-run it, "
                "so functions and classes defined there do not exist in a worker. %s"
                % (path, _FIX))
    if not os.path.exists(_as_worker_sees_it(path)):
        return ("The main program's file %s no longer exists: a worker cannot run it again "
                "to find the functions defined there. Run the program again from a file that "
                "stays in place. %s" % (path, _FIX))
    return None


#: What pickle says when a worker cannot find a name in the main module, e.g.
#: "Can't get attribute 'work' on <module '__main__' (built-in)>" (3.8-3.13), or
#: "module '__mp_main__' has no attribute 'work'" (AttributeError from elsewhere).
_MISSING_IN_MAIN = re.compile(
    r"Can't get attribute '(?P<name>[^']+)' on <module '(?:__main__|__mp_main__)'"
    r"|module '(?:__main__|__mp_main__)' has no attribute '(?P<name2>[^']+)'")


def unpickling_hint(message: str, main_module: Optional[ModuleType] = None) -> Optional[str]:
    """The hint for a task (or result) that a worker (or the parent) could not unpickle.

    ``message`` is the text of the unpickling error (``str(exc)``, or a whole remote
    traceback). Returns None unless it is the "defined in ``__main__``, missing in the worker"
    failure; then it says which name, why and what to do.
    """
    found = _MISSING_IN_MAIN.search(message)
    if found is None:
        return None
    name = found.group("name") or found.group("name2")
    why = main_module_trap(main_module)
    if why is None:
        return ("%r is defined in the main program, but the worker's copy of it does not "
                "define it: define it at module level, outside `if __name__ == "
                "\"__main__\":`, or import it from a module." % name)
    return "%r is defined in the main program. %s" % (name, why)


def clean_remote_traceback(text: str) -> str:
    """``text`` (a traceback formatted in a worker) with ``__mp_main__`` shown as ``__main__``.

    A worker runs the main program under the name ``__mp_main__``, so its tracebacks say
    ``__mp_main__.MyError: boom`` for the ``MyError`` the user defined in ``__main__``.
    Only the whole name is replaced (not ``x__mp_main__`` or ``a.__mp_main__``).
    """
    return _MP_MAIN.sub("__main__", text)
