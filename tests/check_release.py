"""The release check (``tox -e build``): does safepool build and install like a release?

1. ``python -m build``: an sdist, and a wheel built from that sdist (so the sdist is complete).
2. ``twine check --strict`` on both (the README renders on PyPI).
3. The wheel holds the package (cli, _hints included) and nothing else; the sdist holds the
   changelog; the version is the same in ``safepool/__init__.py`` (its one source), the
   file names, and the top entry of ``CHANGELOG.md``.
4. The wheel, installed in a fresh virtualenv and run from a neutral folder, reports that
   version from its site-packages and runs ``python -m safepool demo`` (exit status 0) and the
   ``safepool`` console script.
5. An editable install of a checkout named ``safepool``, used from the folder that contains
   it, still imports the real package (issue 12: the folder used to shadow the install).

Run from anywhere: ``python tests/check_release.py [--keep] [--skip-demo]``. Needs ``build``
and ``twine`` (the tox env installs them) and network or a package index for the
virtualenvs' dependencies (psutil, loky).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step(text):
    print("\n== " + text, flush=True)


def run(cmd, cwd=None, env=None, timeout=600):
    """Run ``cmd``, echoing it; return its stdout; raise SystemExit with its output on failure."""
    print("$ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)
    if result.returncode != 0:
        sys.exit("FAILED (exit status %d):\n%s" % (result.returncode, result.stdout[-6000:]))
    return result.stdout


def check(condition, message):
    if not condition:
        sys.exit("FAILED: " + message)
    print("ok: " + message, flush=True)


def source_version():
    with open(os.path.join(ROOT, "safepool", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def changelog_version():
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as f:
        return re.search(r"^## (\S+)", f.read(), re.M).group(1)


def clean_env():
    """Our environment without anything that would put the checkout on the path."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def make_venv(path):
    run([sys.executable, "-m", "venv", path])
    return os.path.join(path, "bin", "python")


def build(work):
    step("build the sdist, then the wheel from it")
    dist = os.path.join(work, "dist")
    run([sys.executable, "-m", "build", "--outdir", dist, ROOT])
    sdists = glob.glob(os.path.join(dist, "*.tar.gz"))
    wheels = glob.glob(os.path.join(dist, "*.whl"))
    check(len(sdists) == 1 and len(wheels) == 1, "one sdist and one wheel: %s"
          % sorted(os.listdir(dist)))
    return sdists[0], wheels[0]


def inspect(sdist, wheel):
    step("twine check, contents, one version")
    run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel])
    version = source_version()
    check(os.path.basename(wheel).startswith("safepool-%s-" % version),
          "the wheel is version %s (safepool/__init__.py)" % version)
    check(os.path.basename(sdist) == "safepool-%s.tar.gz" % version, "the sdist too")
    check(changelog_version() == version, "CHANGELOG.md's newest entry is %s" % version)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    check(tops == {"safepool", "safepool-%s.dist-info" % version},
          "the wheel holds only the package: %s" % sorted(tops))
    for needed in ("safepool/__init__.py", "safepool/__main__.py", "safepool/cli/demo.py",
                   "safepool/cli/doctor.py", "safepool/cli/_harness.py", "safepool/_hints.py",
                   "safepool/py.typed"):
        check(needed in names, "the wheel has " + needed)
    entry_points = zipfile.ZipFile(wheel).read(
        "safepool-%s.dist-info/entry_points.txt" % version).decode()
    check("safepool = safepool.cli:main" in entry_points, "the console script is declared")
    members = tarfile.open(sdist).getnames()
    for needed in ("CHANGELOG.md", "README.md", "setup.cfg", "pyproject.toml"):
        check("safepool-%s/%s" % (version, needed) in members, "the sdist has " + needed)


def try_wheel(work, wheel, demo):
    step("install the wheel in a fresh virtualenv and run it")
    python = make_venv(os.path.join(work, "venv-wheel"))
    run([python, "-m", "pip", "install", "--quiet", wheel], env=clean_env())
    neutral = os.path.join(work, "neutral")
    os.mkdir(neutral)
    out = " ".join(run([python, "-m", "safepool", "--version"], cwd=neutral,
                       env=clean_env()).split())  # undo the wrapping
    check(out.startswith("safepool %s (" % source_version()) and "site-packages" in out
          and "WARNING" not in out, "--version: " + out)
    script = os.path.join(os.path.dirname(python), "safepool")
    check("demo" in run([script, "--help"], cwd=neutral, env=clean_env()),
          "the safepool console script runs")
    if demo:
        out = run([python, "-m", "safepool", "demo", "--quiet"], cwd=neutral, env=clean_env(),
                  timeout=900)
        check("Worker OOM-killed mid-task" in out and "Finished in" in out,
              "python -m safepool demo ran every scenario from the installed wheel")


def try_editable(work, sdist):
    step("an editable install, used from the folder that contains the checkout")
    parent = os.path.join(work, "parent")
    os.mkdir(parent)
    with tarfile.open(sdist) as tar:
        # The "data" filter where Python has it (3.12, and security releases of older ones).
        tar.extractall(parent, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    checkout = os.path.join(parent, "safepool")  # named like a clone of the repository
    os.rename(glob.glob(os.path.join(parent, "safepool-*"))[0], checkout)
    python = make_venv(os.path.join(work, "venv-editable"))
    run([python, "-m", "pip", "install", "--quiet", "-e", checkout], env=clean_env())
    code = ("import safepool; from safepool import SafeProcessPoolExecutor; "
            "print(safepool.__file__)")
    out = run([python, "-c", code], cwd=parent, env=clean_env())
    check(os.path.join(checkout, "safepool", "__init__.py") in out,
          "from the checkout's parent folder, import safepool gets the package: " + out.strip())
    out = run([python, "-m", "safepool", "--version"], cwd=parent, env=clean_env())
    check("WARNING" not in out, "--version sees no shadowing there")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--skip-demo", action="store_true", help="do not run the demo")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="safepool-release-")
    try:
        sdist, wheel = build(work)
        inspect(sdist, wheel)
        try_wheel(work, wheel, demo=not args.skip_demo)
        try_editable(work, sdist)
    finally:
        if args.keep:
            print("work folder kept: " + work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\nrelease check passed: safepool %s" % source_version())
    return 0


if __name__ == "__main__":
    sys.exit(main())
