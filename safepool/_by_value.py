"""Sending what plain pickle cannot: lambdas, closures, and what ``__main__`` defines when the
workers cannot import ``__main__`` (``python -c``, ``python -``, a notebook).

Plain pickle (with ForkingPickler's reductions, as the stdlib's pool) stays the rule: it is the
fastest, and it sends a function by reference, as ProcessPoolExecutor does. cloudpickle, which
loky already brings, sends functions and classes *by value*; it is the fallback, used only
when plain pickle fails or when the payload refers to a ``__main__`` the workers cannot import.
``SafeProcessPoolExecutor(cloudpickle_fallback=False)`` turns it off.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Optional, Tuple, Type

from . import _protocol as P

if TYPE_CHECKING:
    import pickle

_main_checked: Tuple[Any, bool] = (None, True)  # (the __main__ module seen, its answer)


def main_is_importable() -> bool:
    """Can a worker import this program's ``__main__``?

    A worker started by forkserver or spawn gets ``__main__``'s functions by running its file
    again (or importing it by name, after ``python -m``). ``python -c``, ``python -`` (whose
    ``__file__`` is ``'<stdin>'``) and notebooks have no file to run: a function they define
    reaches a worker only by value. Worked out once per ``__main__`` module (every submit()
    asks).
    """
    global _main_checked
    main = sys.modules.get("__main__")
    if main is _main_checked[0]:
        return _main_checked[1]
    answer = True
    if main is not None:
        spec = getattr(main, "__spec__", None)
        if spec is None or not getattr(spec, "name", None):
            path = getattr(main, "__file__", None)
            answer = bool(path and os.path.isfile(path))
    _main_checked = (main, answer)
    return answer


def dumps(obj: Any, fallback: bool) -> bytes:
    """Pickle ``obj`` for a worker (or, in a worker, for the parent).

    Raises plain pickle's own exception when neither way works, with cloudpickle's in its
    ``cloudpickle_error`` attribute (None if the fallback is off).
    """
    try:
        payload = P.dumps(obj, out_of_band=True)
    except Exception as exc:
        if not fallback:
            raise
        try:
            return _cloudpickle_dumps(obj)
        except Exception as second:
            try:
                setattr(exc, "cloudpickle_error", second)  # noqa: B010 - ours, on any exception
            except Exception:  # an exception type without a __dict__
                pass
            raise exc from None
    # Cheap test first: the bytes are searched only when __main__ cannot be imported.
    if fallback and not main_is_importable() and b"__main__" in payload:
        try:
            return _cloudpickle_dumps(obj)
        except Exception:
            pass  # the worker will say what it could not find, as without the fallback
    return payload


_pickler_class: Optional[Type[pickle.Pickler]] = None


def _cloudpickle_dumps(obj: Any) -> bytes:
    global _pickler_class
    if _pickler_class is None:
        _pickler_class = _make_pickler_class()
    return P.dumps_with(_pickler_class, obj, out_of_band=True)


def _make_pickler_class() -> Type[pickle.Pickler]:
    """cloudpickle's Pickler, with ForkingPickler's reductions too (Connections, sockets)."""
    from collections import ChainMap
    from multiprocessing.reduction import ForkingPickler

    import cloudpickle

    class _Pickler(cloudpickle.Pickler):
        dispatch_table = ChainMap(
            ForkingPickler._extra_reducers,  # type: ignore[attr-defined]  # the stdlib's private
            cloudpickle.Pickler.dispatch_table)

    return _Pickler


def explain(exc: BaseException) -> str:
    """What to tell the user about a failed fallback, for an error message."""
    second = getattr(exc, "cloudpickle_error", None)
    if second is None:
        return ""
    return f" (cloudpickle could not send it either: {type(second).__name__}: {second})"
