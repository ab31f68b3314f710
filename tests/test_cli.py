"""Tests for ``python -m safepool``: help, bench pass-through, doctor and demo.

The doctor and demo tests run the real commands in subprocesses and check real
measurements; each command runs once per module (fixtures) to keep the suite short.
"""
import json
import os
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from safepool import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG_VARIABLE = "SAFEPOOL_CLI_TEST_TAG"


def run_cli(*args, timeout=60, env=None):
    """Run ``python -m safepool ARGS`` from the source tree; return the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in [ROOT, os.environ.get("PYTHONPATH")] if p)
    return subprocess.run([sys.executable, "-m", "safepool"] + list(args), cwd=ROOT,
                          env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)


def processes_tagged(tag):
    """Processes whose environment carries ``tag``: everything a command started."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TAG_VARIABLE) == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


# --------------------------------------------------------------------------------------------
# Help and argument handling.
# --------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_help_lists_the_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for word in ("demo", "doctor", "bench"):
        assert word in result.stdout


@pytest.mark.timeout(60)
def test_no_arguments_prints_help_and_exits_0():
    result = run_cli()
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.timeout(60)
def test_doctor_help_documents_the_exit_status():
    result = run_cli("doctor", "--help")
    assert result.returncode == 0
    assert "Exit status: 1 if any check FAILs" in result.stdout


def test_main_returns_status_instead_of_exiting(capsys):
    assert cli.main(["--help"]) == 0
    assert cli.main(["no-such-command"]) == 2
    assert "usage:" in capsys.readouterr().out


def test_bench_passes_arguments_through(tmp_path, monkeypatch, capfd):
    script = tmp_path / "run.py"
    script.write_text("import sys\nprint('ARGS', sys.argv[1:])\nsys.exit(3)\n")
    monkeypatch.setattr(cli, "find_benchmarks", lambda: str(script))
    assert cli.main(["bench", "--quick", "-k", "map"]) == 3
    assert "ARGS ['--quick', '-k', 'map']" in capfd.readouterr().out


def test_bench_without_a_source_checkout_says_so(monkeypatch, capsys):
    monkeypatch.setattr(cli, "find_benchmarks", lambda: None)
    assert cli.main(["bench"]) == 1
    assert "only in a source checkout" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def doctor():
    result = run_cli("doctor", "--json", timeout=120)
    report = json.loads(result.stdout)
    return result, report


@pytest.mark.timeout(150)
def test_doctor_json_has_every_check(doctor):
    result, report = doctor
    ids = {c["id"] for c in report["checks"]}
    assert {"python", "start_method", "cpu_count", "memory_limit", "rlimit_nproc",
            "rlimit_nofile", "pid1"} <= ids
    for c in report["checks"]:
        assert set(c) == {"id", "title", "status", "detail", "advice"}
        assert c["status"] in ("OK", "WARN", "FAIL")
    fails = [c for c in report["checks"] if c["status"] == "FAIL"]
    assert result.returncode == report["exit_status"] == (1 if fails else 0)


@pytest.mark.timeout(150)
def test_doctor_self_test_passes(doctor):
    _, report = doctor
    steps = {c["id"]: c for c in report["checks"] if c["id"].startswith("self_test")}
    assert set(steps) >= {"self_test_start", "self_test_crash", "self_test_recovery",
                          "self_test_cleanup"}, steps
    for step in steps.values():
        assert step["status"] == "OK", step


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo():
    """The full demo, once, with a tag in the environment to find anything it leaves."""
    tag = uuid.uuid4().hex
    result = run_cli("demo", "--json", timeout=200, env={TAG_VARIABLE: tag})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    return result, {s["name"]: s["results"] for s in report["scenarios"]}, tag


@pytest.mark.timeout(240)
def test_demo_measures_every_scenario(demo):
    result, scenarios, _ = demo
    assert set(scenarios) == {"oom", "sigterm", "full_queue", "hung_task", "parent_killed",
                              "rotation"}
    for name, results in scenarios.items():
        for kind in ("stdlib", "safepool"):
            r = results[kind]
            assert not r.get("error"), (name, kind, r)
            assert r["ok"] in (True, False) and r["summary"] and r["left_behind"]
        # safepool behaves, and leaves nothing behind, in every scenario.
        safe = results["safepool"]
        assert safe["ok"] is True, (name, safe["summary"], safe["left_behind"])
    # Not a terminal: one progress line per scenario run on stderr.
    assert result.stderr.count("safepool demo [") == 12


@pytest.mark.timeout(240)
def test_demo_oom_safepool_keeps_serving_stdlib_breaks(demo):
    _, scenarios, _ = demo
    safe, std = scenarios["oom"]["safepool"], scenarios["oom"]["stdlib"]
    assert safe["pool_broken"] is False
    assert safe["lost_beyond_killed"] == 0
    assert safe["first_batch"]["failed"] == 1
    assert std["pool_broken"] is True


@pytest.mark.timeout(240)
def test_demo_parent_killed_safepool_workers_exit(demo):
    _, scenarios, _ = demo
    assert scenarios["parent_killed"]["safepool"]["survivors"] == 0


@pytest.mark.timeout(240)
def test_demo_leaves_no_process_behind(demo):
    _, _, tag = demo
    assert processes_tagged(tag) == []


@pytest.mark.timeout(120)
def test_demo_text_output_fits_80_columns():
    result = run_cli("demo", "--scenario", "rotation", "--cycles", "3", timeout=100,
                     env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert "Pool rotation" in result.stdout
    assert "SafeProcessPoolExecutor" in result.stdout and "left behind:" in result.stdout
    assert [line for line in result.stdout.splitlines() if len(line) > 80] == []


# --------------------------------------------------------------------------------------------
# The demo's process handling: a scenario that hangs or leaks must not outlive the demo.
# --------------------------------------------------------------------------------------------

# A child that starts a grandchild in a new session (out of reach of killpg, like safepool's
# workers in their own process groups), reports both pids, then hangs.
HANGING_CHILD = r"""
import json, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              start_new_session=True)
sys.stderr.write("grandchild=%d\n" % grandchild.pid)
sys.stderr.flush()
print(json.dumps({"grandchild": grandchild.pid}) if "line" in sys.argv else "no json",
      flush=True)
time.sleep(600)
"""


def _grandchild(run):
    """The grandchild's pid, from the line the child wrote to stderr."""
    return int(run.stderr.split("grandchild=")[1].split()[0])


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid, timeout=5.0):
    """Assert that ``pid`` exits (or is left a zombie) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid), "process %d survived" % pid


@pytest.mark.timeout(60)
def test_run_child_kills_the_whole_tree_on_timeout():
    from safepool.cli import _harness

    run = _harness.run_child([sys.executable, "-c", HANGING_CHILD], timeout=2.0)
    assert run.timed_out and run.line is None
    assert _gone(run.pid)
    _wait_gone(_grandchild(run))


@pytest.mark.timeout(60)
def test_run_child_reports_a_child_that_does_not_exit():
    from safepool.cli import _harness

    run = _harness.run_child([sys.executable, "-c", HANGING_CHILD, "line"], timeout=20.0,
                              exit_grace=1.0)
    assert not run.timed_out and run.exit_hung
    assert json.loads(run.line)["grandchild"] == _grandchild(run)
    assert _gone(run.pid)
    _wait_gone(_grandchild(run))
