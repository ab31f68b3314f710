"""The commands' text fits an 80-column terminal, and a shadowed install is named.

Fast tests: no pool is started here (the doctor runs without its self-test, the demo's
report is laid out from measurements given to it).
"""
import json
import os
import subprocess
import sys

import pytest

from safepool.cli import _install
from safepool.cli import demo as demo_cli
from safepool.cli import doctor as doctor_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, columns=80, cwd=ROOT, code=None, pythonpath=True):
    """``python -m safepool ARGS`` (or ``python -c CODE ARGS``) with ``COLUMNS`` set."""
    env = dict(os.environ, COLUMNS=str(columns))
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in [ROOT, os.environ.get("PYTHONPATH")]
                                            if p)
    else:
        env.pop("PYTHONPATH", None)
    command = [sys.executable, "-m", "safepool"] if code is None else [sys.executable, "-c", code]
    return subprocess.run(command + list(args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)


def too_wide(text, columns):
    """Lines longer than ``columns``, except those made long by one word that could not fit
    on any line (a path: never split, so that it can be copied)."""
    return [line for line in text.splitlines() if len(line) > columns
            and not any(len(word) > columns - 30 for word in line.split())]


# ---- 80 columns -----------------------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"], ["doctor", "--help"],
                                  ["--version"], ["doctor", "--no-self-test"]])
@pytest.mark.parametrize("columns", [80, 60])
def test_output_fits_the_terminal(args, columns):
    result = run_cli(*args, columns=columns)
    assert result.returncode in (0, 1), result.stderr  # doctor: 1 if this machine FAILs
    assert result.stdout.strip()
    assert too_wide(result.stdout, columns) == []


@pytest.mark.timeout(60)
def test_help_lists_each_command_once():
    out = run_cli("--help").stdout
    for command in ("demo ", "doctor ", "bench "):
        lines = [line for line in out.splitlines() if line.strip().startswith(command)]
        assert len(lines) == 1, (command, out)


def _fake_result(ok, summary, left="0 proc, 0 zombie, +0 fd"):
    return {"ok": ok, "summary": summary, "left_behind": left}


def test_demo_report_fits_80_columns_with_long_measurements():
    long = ("killed task failed with BrokenProcessPool; 5 other tasks lost; pool BROKEN: "
            "submit() raises BrokenProcessPool; /a/very/long/path/that/cannot/be/broken/at/"
            "a/space/anywhere/at/all/in/the/middle")
    report = {"python": "3.11.7", "platform": "Linux-6.18.44-fc-v1098-x86_64-with-glibc2.36",
              "cpu_count": 2, "stdlib_start_method": "fork", "safepool_version": "0.1.0",
              "elapsed_s": 18.2,
              "scenarios": [{"name": name, "title": scenario.title,
                             "results": {"stdlib": _fake_result(False, long),
                                         "safepool": _fake_result(True, "ok")}}
                            for name, scenario in demo_cli.SCENARIOS.items()]}
    for width in (80, 60):
        text = demo_cli.format_report(report, width=width)
        assert too_wide(text, width) == []
        assert "/a/very/long/path/that/cannot/be/broken/at/" in text  # whole, copyable
        for scenario in demo_cli.SCENARIOS.values():
            assert scenario.title in text
    assert "BAD" in text and "ok" in text and "left behind: 0 proc" in text


def test_demo_width_follows_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "72")
    from safepool.cli._text import terminal_width

    assert terminal_width() == 72
    monkeypatch.setenv("COLUMNS", "300")  # capped: very long lines are hard to read
    assert terminal_width() == 100


def test_doctor_text_fits_80_columns_with_long_advice():
    checks = doctor_cli.collect(self_test=False)
    checks.append(doctor_cli.check("x", "Self-test: recovery", doctor_cli.FAIL, "x " * 200,
                                   "/an/unbreakable/path/" * 10))
    assert too_wide(doctor_cli.format_checks(checks, width=80), 80) == []


# ---- a folder that shadows the install --------------------------------------------------------

# What an editable install by setuptools does for this layout when it finds the package
# with a finder placed *after* every sys.path entry: a folder named safepool in the current
# directory is then imported as an empty namespace package first. The real code is reached
# for submodules only, which is how ``safepool.cli`` still runs.
SHADOWED = r"""
import importlib.abc, importlib.util, os, sys
root = os.environ["SAFEPOOL_TEST_ROOT"]

class LateFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] != "safepool":
            return None
        base = os.path.join(root, *name.split("."))
        if os.path.isdir(base):
            return importlib.util.spec_from_file_location(
                name, os.path.join(base, "__init__.py"), submodule_search_locations=[base])
        return importlib.util.spec_from_file_location(name, base + ".py")

sys.meta_path.append(LateFinder())
# No other copy of safepool on the path (tox installs one in site-packages): only the
# current folder's, and the libraries the commands import, from a folder of links.
sys.path[:] = ([os.getcwd()]
               + [p for p in sys.path if p and not os.path.isdir(os.path.join(p, "safepool"))]
               + [os.environ["SAFEPOOL_TEST_DEPS"]])
import safepool
assert getattr(safepool, "__file__", None) is None, "the shadow did not happen"
from safepool.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def shadowing_folder(tmp_path, monkeypatch):
    """A folder named safepool without __init__.py, as a checkout is, in the current dir."""
    import importlib.util

    (tmp_path / "safepool").mkdir()
    (tmp_path / "safepool" / "README.md").write_text("a checkout\n")
    deps = tmp_path / "deps"
    deps.mkdir()
    for name in ("psutil", "loky", "cloudpickle"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            os.symlink(list(spec.submodule_search_locations)[0], str(deps / name))
    monkeypatch.setenv("SAFEPOOL_TEST_ROOT", ROOT)
    monkeypatch.setenv("SAFEPOOL_TEST_DEPS", str(deps))
    cwd = tmp_path / "cwd"  # the folder that contains the "checkout"
    cwd.mkdir()
    os.rename(str(tmp_path / "safepool"), str(cwd / "safepool"))
    return cwd


@pytest.mark.timeout(60)
def test_version_names_the_shadowing_folder(shadowing_folder):
    result = run_cli("--version", code=SHADOWED, cwd=str(shadowing_folder), pythonpath=False)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # undo the wrapping
    version = _install.installed_version()
    assert text.startswith("safepool %s (" % version) and version != "unknown"
    assert str(shadowing_folder / "safepool") in text
    assert "WARNING" in text and "Run Python from another folder" in text
    assert too_wide(result.stdout, 80) == []


@pytest.mark.timeout(120)
def test_doctor_fails_the_install_check_and_says_what_to_do(shadowing_folder):
    result = run_cli("doctor", "--no-self-test", "--json", code=SHADOWED,
                     cwd=str(shadowing_folder), pythonpath=False)
    assert result.returncode == 1, result.stderr
    checks = {c["id"]: c for c in json.loads(result.stdout)["checks"]}
    install = checks["install"]
    assert install["status"] == "FAIL"
    assert str(shadowing_folder / "safepool") in install["detail"]
    assert "namespace package" in install["detail"]
    assert "another folder" in install["advice"] and "rename" in install["advice"]


def test_no_shadow_when_the_import_is_this_copy():
    import safepool

    assert _install.find_shadow(safepool) is None
    assert "WARNING" not in _install.version_report()


def test_another_copy_is_named(tmp_path):
    import types

    other = types.ModuleType("safepool")
    other.__file__ = str(tmp_path / "old" / "safepool" / "__init__.py")
    shadow = _install.find_shadow(other)
    assert shadow.kind == "other copy"
    assert str(tmp_path / "old" / "safepool") in shadow.explanation


def test_setup_cfg_puts_the_checkout_on_sys_path_for_editable_installs():
    # setuptools' editable install adds a plain .pth path entry (which a folder on sys.path
    # cannot shadow: a regular package beats a namespace portion wherever it is found)
    # only when every package lives under package_dir[""]; see tests/check_release.py for
    # the real install.
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg["options"]["package_dir"].split() == ["=", "."]
