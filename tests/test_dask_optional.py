"""Dask is an optional extra: the core never imports it, and says what to install when asked
for a cluster without it. Runs in every environment, with or without distributed."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(code, **env):
    environ = dict(os.environ, PYTHONPATH=ROOT)
    environ.pop("DASK_SCHEDULER_ADDRESS", None)
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], env=environ, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)


def test_import_safepool_does_not_import_dask():
    proc = run(
        "import sys, safepool\n"
        "safepool.SafeProcessPoolExecutor, safepool.executor, safepool.WorkerLostError\n"
        "with safepool.executor(max_workers=1) as pool:\n"
        "    assert isinstance(pool, safepool.SafeProcessPoolExecutor)\n"
        "    assert pool.submit(abs, -3).result() == 3\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "assert not loaded, loaded\n"
        "assert 'safepool.dask' not in sys.modules\n"
        "print('ok')\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.strip() == b"ok"


def test_executor_names_the_extra_when_dask_is_missing():
    # Hide dask and distributed, as in an environment without the extra.
    proc = run(
        "import sys\n"
        "sys.modules['dask'] = None\n"
        "sys.modules['distributed'] = None\n"
        "import safepool\n"
        "try:\n"
        "    safepool.executor(address='tcp://127.0.0.1:1')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"safepool[dask]" in proc.stdout
