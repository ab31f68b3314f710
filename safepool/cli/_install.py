"""Which ``safepool`` does ``import safepool`` give here, and is it this one?

The trap this catches: run Python from the folder that *contains* a safepool checkout
(``~/src`` holding ``~/src/safepool``) and ``import safepool`` can find the checkout folder
itself. It has no ``__init__.py``, so Python imports it as an empty namespace package, and
``from safepool import SafeProcessPoolExecutor`` fails with "cannot import name ... (unknown
location)". An editable install made before setup.cfg set ``package_dir`` is exposed to it:
setuptools then finds the real package with an import hook that runs only after every
``sys.path`` entry (the current folder included) came up empty. Another copy of safepool
earlier on ``sys.path`` (a stale checkout on ``PYTHONPATH``) is the same problem with a
different cause.
"""
import os
import sys
from collections import namedtuple
from types import ModuleType
from typing import List, Optional

#: The ``safepool`` package directory this code runs from (``.../safepool``).
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Shadow = namedtuple("Shadow", "found kind explanation advice")


def _same(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def imported_safepool() -> Optional[ModuleType]:
    """The module ``import safepool`` gives in this process, or None if it fails."""
    try:
        import safepool
    except Exception:
        return None
    return safepool


def find_shadow(module: Optional[ModuleType], package_dir: str = PACKAGE_DIR) -> Optional[Shadow]:
    """What ``module`` (the imported ``safepool``) is instead of ``package_dir``, if anything.

    ``found`` lists the folders or files that shadow the install; ``explanation`` and
    ``advice`` are sentences for the user.
    """
    if module is None:
        return None
    location = getattr(module, "__file__", None)
    if location is None:  # a namespace package: folders named safepool without __init__.py
        found = [p for p in list(getattr(module, "__path__", [])) if not _same(p, package_dir)]
        return Shadow(
            found, "namespace",
            "`import safepool` finds %s: a folder named safepool without __init__.py (a "
            "safepool checkout?), which Python imports as an empty namespace package instead "
            "of the installed safepool in %s." % (_names(found), package_dir),
            "Run Python from another folder (this happens in the folder that contains the "
            "checkout), or rename the checkout (e.g. safepool-src), or reinstall it with "
            "`python3 -m pip install -e .` from the checkout: its editable install now puts "
            "the checkout on sys.path, where a folder cannot shadow it.")
    where = os.path.dirname(os.path.abspath(location))
    if _same(where, package_dir):
        return None
    return Shadow(
        [where], "other copy",
        "`import safepool` imports the copy in %s, not the one in %s that is running this "
        "command." % (where, package_dir),
        "Remove the other copy from sys.path (check PYTHONPATH and the current folder), or "
        "uninstall one of them with `python3 -m pip uninstall safepool`.")


def _names(paths: List[str]) -> str:
    return ", ".join(paths) if paths else "a folder named safepool"


def installed_version() -> str:
    """This copy's version, even when ``import safepool`` gives something else."""
    module = sys.modules.get("safepool")
    version = getattr(module, "__version__", None)
    if version and find_shadow(module) is None:
        return str(version)
    # Read the one version source (safepool/__init__.py) of this copy directly.
    try:
        with open(os.path.join(PACKAGE_DIR, "__init__.py"), encoding="utf-8") as f:
            for line in f:
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return "unknown"


def version_report() -> str:
    """What ``--version`` prints: the version and where it runs from, and any shadowing."""
    text = "safepool %s (%s, Python %s)\n" % (installed_version(), PACKAGE_DIR,
                                              ".".join(map(str, sys.version_info[:3])))
    shadow = find_shadow(imported_safepool())
    if shadow is not None:
        text += "\nWARNING: %s\nWhat to do: %s\n" % (shadow.explanation, shadow.advice)
    return text
