"""Compile safepool's modules (and these benchmarks') to bytecode before measuring.

An installed wheel has its ``.pyc`` files: pip compiles them at install. A checkout run with
``PYTHONDONTWRITEBYTECODE=1`` (set on some machines, CI images among them) has none, and
every new process then compiles safepool from source: the fork server, every worker, every
replacement. That cost 20 ms of a 62 ms start here (82 ms against the stdlib's 51 ms), while
the stdlib, loky and pebble were measured from their compiled files. Python reads ``.pyc``
files even when it may not write them, so writing them once here puts every executor on the
same footing, the one users have.
"""
import compileall
import os


def compile_all(*roots):
    """Write the ``.pyc`` files of each package or folder in ``roots`` (quietly)."""
    for root in roots:
        if root and os.path.isdir(root):
            compileall.compile_dir(root, quiet=1)


def compile_safepool_and_benchmarks(safepool_dir=None):
    here = os.path.dirname(os.path.abspath(__file__))
    if safepool_dir is None:
        try:
            import safepool
        except ImportError:  # reported as unavailable by the benchmark itself
            safepool_dir = None
        else:
            safepool_dir = os.path.dirname(os.path.abspath(safepool.__file__))
    compile_all(safepool_dir, here)
